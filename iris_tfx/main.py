"""The iris-tfx command: run the pipeline, see its runs and reports, manage model versions, serve and query."""
import argparse
import importlib
import sys
from typing import List, Optional

from components import runtime

# The command groups, in --help order: one line each; each module's register(subparsers) adds its commands.
COMMAND_GROUPS = (
    "iris_tfx.run",
    "iris_tfx.schema",
    "iris_tfx.kubeflow",
    "iris_tfx.data",
    "iris_tfx.serve",
    "iris_tfx.runs",
    "iris_tfx.models",
    "iris_tfx.report",
    "iris_tfx.monitor",
)
# Commands whose logs are read as logs (a run's log file, a server's output): TensorFlow's warnings stay in them.
LOGGING_COMMANDS = ("run", "serve")


def main(argv: Optional[List[str]] = None) -> int:
    """The console script: prepares TensorFlow's runtime, then runs the command's handler; returns its exit code."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)  # imports no TensorFlow
    runtime.prepare(quiet=args.command not in LOGGING_COMMANDS)  # before any command imports TensorFlow
    return args.handler(args)


def parser() -> argparse.ArgumentParser:
    """The whole command line, each group registered by its own module."""
    root = argparse.ArgumentParser(prog="iris-tfx", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_GROUPS:
        importlib.import_module(module).register(commands)
    return root


if __name__ == "__main__":
    sys.exit(main())
