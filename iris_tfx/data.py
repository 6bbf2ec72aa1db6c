"""iris-tfx data synth: an Iris-like CSV of any size (pipeline/synth.py owns its flags)."""
import argparse
from typing import List

from iris_tfx import flags


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `data synth`, forwarded to synth's own parser (so `iris-tfx data synth --help` is its help)."""
    data = subparsers.add_parser("data", help="data tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    flags.add_forwarded(data_commands, "synth", "write an Iris-like CSV of any size (see iris-tfx data synth --help)",
                        _synth)


def _synth(argv: List[str]) -> int:
    """Runs pipeline/synth.py's command line (numpy only: imported when used)."""
    from pipeline import synth  # pylint: disable=g-import-not-at-top
    return synth.main(argv)
