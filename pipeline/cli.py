"""The iris-tfx command: run the pipeline, propose a schema, serve and query models."""
import argparse
import contextlib
import dataclasses
import datetime
import logging
import os
import sys
import time
import warnings
from typing import Iterator, List, Optional

from components.hyperparameters import Hyperparameters
from pipeline.beam_workers import forked_workers
from pipeline.config import DEFAULT_DATA, DEFAULT_SCHEMA, DEFAULT_WORKDIR, PipelineConfig, default_beam_args

EXIT_FAILED = 1       # a component failed (bad input, bad config, ...): nothing was pushed
EXIT_NOT_BLESSED = 3  # the run completed but the model did not pass evaluation: nothing was pushed


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Google's client libraries (pulled in by TFX) warn about Python 3.10 on import: not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")
    # serve/predict take TF Serving's own flags: hand them over untouched.
    if argv and argv[0] == "serve":
        from serving import server
        return server.main(argv[1:])
    if argv and argv[0] == "predict":
        from serving import client
        return client.main(argv[1:])
    args = _parser().parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris-tfx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the pipeline end to end (CSV -> pushed model)")
    run.add_argument("--data", default=DEFAULT_DATA, help="CSV with the Iris columns (default: %(default)s)")
    run.add_argument("--workdir", default=DEFAULT_WORKDIR,
                     help="pipeline root, ML Metadata and logs (default: %(default)s)")
    run.add_argument("--serving-dir", help="where blessed models are pushed (default: <workdir>/models/iris)")
    run.add_argument("--schema", default=DEFAULT_SCHEMA, help="curated schema (default: %(default)s)")
    run.add_argument("--runner", choices=["beam", "local"], default="beam",
                     help="orchestrator: Apache Beam (default) or TFX's LocalDagRunner")
    run.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                     help="Beam pipeline arg for the components' Beam jobs, repeatable, e.g. "
                          "--beam-arg=--runner=FlinkRunner (default: DirectRunner, multi-processing, "
                          "one worker per core)")
    run.add_argument("--accuracy-floor", type=float, default=PipelineConfig.accuracy_floor)
    run.add_argument("--epochs", type=int, default=Hyperparameters.epochs)
    run.add_argument("--cpu-replicas", type=int, default=0,
                     help="train with MirroredStrategy over N logical CPU devices")
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    run.add_argument("--verbose", action="store_true", help="show all logs instead of writing them to a file")
    run.set_defaults(handler=_run)

    schema = commands.add_parser("schema", help="schema tools")
    schema_commands = schema.add_subparsers(dest="schema_command", required=True, metavar="COMMAND")
    propose = schema_commands.add_parser(
        "propose", help="infer a schema from the data's statistics, for review against schema/schema.pbtxt")
    propose.add_argument("--data", default=DEFAULT_DATA)
    propose.add_argument("--out", default=os.path.join("schema", "proposed_schema.pbtxt"))
    propose.set_defaults(handler=_propose_schema)

    kubeflow = commands.add_parser("kubeflow", help="compile the pipeline for Kubeflow Pipelines, submit it")
    kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True, metavar="COMMAND")
    compile_ = kubeflow_commands.add_parser("compile", help="write a KFP v2 pipeline.yaml (no Resolver node)")
    compile_.add_argument("--image", required=True, help="the pipeline image (see Dockerfile), e.g. "
                          "registry.example.com/iris-tfx:0.1.0")
    compile_.add_argument("--pipeline-root", required=True, help="object-store URI or volume path for artifacts")
    compile_.add_argument("--data", required=True, help="the CSV as the pods see it (URI or volume path)")
    compile_.add_argument("--serving-dir", required=True, help="base path blessed models are pushed to, where "
                          "TF Serving reads (e.g. the iris-models volume's /models/iris)")
    compile_.add_argument("--schema", default="/iris-tfx/schema/schema.pbtxt",
                          help="the curated schema as the pods see it (default: the copy in the image)")
    compile_.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                          help="Beam pipeline arg for the components' Beam jobs, repeatable")
    compile_.add_argument("--accuracy-floor", type=float, default=PipelineConfig.accuracy_floor)
    compile_.add_argument("--output", default="pipeline.yaml")
    compile_.set_defaults(handler=_kubeflow_compile)
    submit = kubeflow_commands.add_parser("submit", help="upload and start a run with kfp.Client")
    submit.add_argument("--package", default="pipeline.yaml", help="compiled pipeline (default: %(default)s)")
    submit.add_argument("--host", help="Kubeflow Pipelines API endpoint")
    submit.add_argument("--experiment", default="iris")
    submit.add_argument("--run-name")
    submit.add_argument("--namespace")
    submit.add_argument("--dry-run", action="store_true", help="everything but the network call")
    submit.set_defaults(handler=_kubeflow_submit)

    # Listed for --help; main() dispatches them before argparse sees their flags.
    commands.add_parser("serve", help="TF Serving-compatible model server (see iris-tfx serve --help)")
    commands.add_parser("predict", help="query a model server over gRPC (see iris-tfx predict --help)")
    return parser


def _run(args: argparse.Namespace) -> int:
    error = _check_inputs(args)
    if error:
        print(f"iris-tfx: error: {error}\nNo model was pushed.", file=sys.stderr)
        return EXIT_FAILED
    log_path = os.path.join(args.workdir, "logs", datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S.log"))
    print(f"Running the pipeline on {args.data} with the {args.runner} runner"
          + ("" if args.verbose else f" (logs: {log_path})"))
    started = time.monotonic()
    with contextlib.nullcontext() if args.verbose else _logs_to(log_path):
        summary, failure = _run_pipeline(args)
    print()
    print(summary.format() if summary else "No run recorded.")
    print(f"Total wall time: {time.monotonic() - started:.1f}s")
    if failure is not None:
        from pipeline.summary import without_beam_suffix  # pylint: disable=g-import-not-at-top  (imports TFX)
        reason = without_beam_suffix(str(failure))
        failed = summary.failed if summary else []
        for node in failed:
            print(f"\niris-tfx: error: {node.node} failed: {node.message or reason}", file=sys.stderr)
        if not failed:
            print(f"\niris-tfx: error: {reason}", file=sys.stderr)
        print("No model was pushed.", file=sys.stderr)
        return EXIT_FAILED
    if not summary.pushed_path:
        print("\niris-tfx: the model was not blessed by the Evaluator; nothing was pushed.", file=sys.stderr)
        return EXIT_NOT_BLESSED
    return 0


def _run_pipeline(args: argparse.Namespace):
    """Runs the pipeline with the chosen runner; returns its summary and the exception if it failed."""
    config = PipelineConfig(
        data_path=args.data, schema_path=args.schema, workdir=args.workdir, serving_dir=args.serving_dir,
        accuracy_floor=args.accuracy_floor, enable_cache=not args.no_cache,
        training=dataclasses.replace(Hyperparameters(), epochs=args.epochs, cpu_replicas=args.cpu_replicas),
        beam_pipeline_args=_beam_args(args))
    _console(f"  pipeline root {config.pipeline_root}, models pushed to {config.push_dir}")
    failure = None
    started_ms = int(time.time() * 1000)
    # Started before TensorFlow is imported here, so the Beam workers' imports happen meanwhile.
    with forked_workers(config.beam_pipeline_args), _progress():
        from pipeline import runners  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
        try:
            if args.cpu_replicas > 1:
                from components.model import logical_cpus  # pylint: disable=g-import-not-at-top
                logical_cpus(args.cpu_replicas)  # before any TensorFlow work: devices cannot change later
            runners.RUNNERS[args.runner](config)
        except Exception as err:  # pylint: disable=broad-except  (reported by the caller, with MLMD's record)
            failure = err
    from pipeline.summary import summarize  # pylint: disable=g-import-not-at-top
    summary = summarize(config.metadata_path, config.pipeline_name, started_ms) if os.path.exists(
        config.metadata_path) else None
    return summary, failure


def _beam_args(args: argparse.Namespace) -> List[str]:
    """The user's --beam-arg list, or DirectRunner in multi-processing mode on the local cores."""
    return args.beam_arg if args.beam_arg is not None else default_beam_args()


def _console(line: str) -> None:
    print(line, flush=True)


def _check_inputs(args: argparse.Namespace) -> Optional[str]:
    """Problems TFX would report only deep inside a component, caught before anything starts."""
    for flag, path in (("--data", args.data), ("--schema", args.schema)):
        if "://" not in path and not os.path.isfile(path):
            return f"{flag} {path}: no such file"
    if "://" not in args.data and os.path.getsize(args.data) == 0:
        return f"--data {args.data}: the file is empty (expected a header row and data rows)"
    return None


class _ProgressHandler(logging.Handler):
    """Turns TFX's 'node X is running/finished' log records into one console line per component."""
    _START = ("node %s is running.", "Component %s is running.")
    _END = ("node %s is finished.", "Component %s is finished.")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._started = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in self._START:
            self._started[record.args[0]] = time.monotonic()
            _console(f"  > {record.args[0]} running...")
        elif record.msg in self._END:
            seconds = time.monotonic() - self._started.get(record.args[0], time.monotonic())
            _console(f"    {record.args[0]} done in {seconds:.1f}s")


@contextlib.contextmanager
def _progress() -> Iterator[None]:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.INFO)
    handler = _ProgressHandler()
    logging.getLogger("absl").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("absl").removeHandler(handler)


@contextlib.contextmanager
def _logs_to(path: str) -> Iterator[None]:
    """Sends everything written to stderr (Python, TensorFlow's C++ and Beam's worker processes) to path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _kubeflow_compile(args: argparse.Namespace) -> int:
    from pipeline import kubeflow  # pylint: disable=g-import-not-at-top
    config = PipelineConfig(
        data_path=args.data, schema_path=args.schema, serving_dir=args.serving_dir,
        pipeline_root_uri=args.pipeline_root, accuracy_floor=args.accuracy_floor,
        beam_pipeline_args=_beam_args(args))
    try:
        path = kubeflow.compile_pipeline(config, args.image, args.output)
    except ValueError as err:
        print(f"iris-tfx: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Wrote {path} (image {args.image}, pipeline root {args.pipeline_root}); "
          f"submit it with: iris-tfx kubeflow submit --package {path} --host URL")
    return 0


def _kubeflow_submit(args: argparse.Namespace) -> int:
    from pipeline import kubeflow  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(args.package):
        print(f"iris-tfx: error: --package {args.package}: no such file (run iris-tfx kubeflow compile first)",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        print(kubeflow.submit(args.package, args.host, args.experiment, args.run_name, args.namespace,
                              args.dry_run))
    except Exception as err:  # pylint: disable=broad-except  (connection, auth and spec errors alike)
        print(f"iris-tfx: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _propose_schema(args: argparse.Namespace) -> int:
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(args.data):
        print(f"iris-tfx: error: --data {args.data}: no such file", file=sys.stderr)
        return EXIT_FAILED
    statistics = tfdv.generate_statistics_from_csv(args.data)
    tfdv.write_schema_text(tfdv.infer_schema(statistics), args.out)
    print(f"Wrote a schema inferred from {args.data} to {args.out}.\n"
          f"Review it against {DEFAULT_SCHEMA} (e.g. diff -u {DEFAULT_SCHEMA} {args.out}); the curated "
          "schema keeps hand-set bounds, the species domain and the SERVING environment.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
