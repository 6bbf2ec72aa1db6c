"""The iris-tfx command: run the pipeline, propose a schema, serve and query models.

Exit codes of `iris-tfx run`:
  0    a model was pushed (by this run or, with unchanged inputs, by an earlier one)
  1    the run failed (bad input, unwritable directory, a component error): nothing was pushed
  2    bad command line (e.g. --epochs 0): nothing was started
  3    the run completed but the Evaluator did not bless the model: nothing was pushed
  4    another iris-tfx run is using the same --workdir (one run per workdir at a time): nothing was started
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: Beam workers stopped, temp files removed, and one line
       says what was pushed (only a Pusher that finished before the signal pushes anything)
"""
import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, List, Optional, Set

import psutil

from components import runtime
from components.hyperparameters import Hyperparameters
from pipeline import beam_workers
from pipeline.beam_workers import forked_workers
from pipeline.config import (DEFAULT_DATA, DEFAULT_SCHEMA, DEFAULT_WORKDIR, PipelineConfig, default_beam_args,
                             default_serving_dir)

EXIT_FAILED = 1       # a component failed (bad input, bad config, ...): nothing was pushed
EXIT_NOT_BLESSED = 3  # the run completed but the model did not pass evaluation: nothing was pushed
EXIT_BUSY = 4         # another run holds the workdir's lock: this one did nothing


def main(argv: Optional[List[str]] = None) -> int:
    runtime.prepare()  # first: before anything imports TensorFlow
    argv = sys.argv[1:] if argv is None else argv
    # serve/predict take TF Serving's own flags: hand them over untouched.
    if argv and argv[0] == "serve":
        from serving import server
        return server.main(argv[1:])
    if argv and argv[0] == "predict":
        from serving import client
        return client.main(argv[1:])
    if argv[:2] == ["data", "synth"]:
        from pipeline import synth
        return synth.main(argv[2:])
    args = _parser().parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris-tfx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the pipeline end to end (CSV -> pushed model)",
                              epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
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
    run.add_argument("--accuracy-floor", type=_fraction, default=PipelineConfig.accuracy_floor,
                     help="overall eval accuracy the model needs to be blessed, in [0, 1] (default: %(default)s)")
    run.add_argument("--epochs", type=_integer_at_least(1), default=Hyperparameters.epochs,
                     help="training epochs, >= 1 (default: %(default)s)")
    run.add_argument("--cpu-replicas", type=_integer_at_least(0), default=0,
                     help="train with MirroredStrategy over N logical CPU devices (0 or 1: no MirroredStrategy)")
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
    compile_.add_argument("--accuracy-floor", type=_fraction, default=PipelineConfig.accuracy_floor,
                          help="overall eval accuracy the model needs to be pushed, in [0, 1] (default: %(default)s)")
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
    data = commands.add_parser("data", help="data tools")
    data.add_subparsers(dest="data_command", required=True, metavar="COMMAND").add_parser(
        "synth", help="write an Iris-like CSV of any size (see iris-tfx data synth --help)")
    commands.add_parser("serve", help="TF Serving-compatible model server (see iris-tfx serve --help)")
    commands.add_parser("predict", help="query a model server over gRPC (see iris-tfx predict --help)")
    return parser


def _integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, else argparse's own error (exit 2) naming the valid range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum} (got {text})")
        return value
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a finite number in [0, 1] (an accuracy), else argparse's own error (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] (got {text})")
    return value


def _run(args: argparse.Namespace) -> int:
    error = _check_inputs(args)
    if error:
        print(f"iris-tfx: error: {error}\nNo model was pushed.", file=sys.stderr)
        return EXIT_FAILED
    progress = _ProgressHandler()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_workdir_lock(args.workdir))
        except _WorkdirBusy as busy:
            print(f"iris-tfx: error: {busy}\nNothing was started.", file=sys.stderr)
            return EXIT_BUSY
        temp_dir = held.enter_context(_private_temp_dir())
        held.enter_context(_stopped_on_signals(
            progress, args.serving_dir or default_serving_dir(args.workdir), temp_dir))
        return _run_locked(args, progress)


def _run_locked(args: argparse.Namespace, progress: "_ProgressHandler") -> int:
    """The run itself, while this process holds the workdir's lock."""
    log_path = os.path.join(args.workdir, "logs", datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S.log"))
    print(f"Running the pipeline on {args.data} with the {args.runner} runner"
          + ("" if args.verbose else f" (logs: {log_path})"), flush=True)
    started = time.monotonic()
    with contextlib.nullcontext() if args.verbose else _logs_to(log_path):
        summary, failure = _run_pipeline(args, progress)
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


def _run_pipeline(args: argparse.Namespace, progress: "_ProgressHandler"):
    """Runs the pipeline with the chosen runner; returns its summary and the exception if it failed."""
    config = PipelineConfig(
        data_path=args.data, schema_path=args.schema, workdir=args.workdir, serving_dir=args.serving_dir,
        accuracy_floor=args.accuracy_floor, enable_cache=not args.no_cache,
        training=dataclasses.replace(Hyperparameters(), epochs=args.epochs, cpu_replicas=args.cpu_replicas),
        beam_pipeline_args=_beam_args(args))
    _console(f"  pipeline root {config.pipeline_root}, models pushed to {config.push_dir}")
    failure = None
    started_ms = int(time.time() * 1000)  # after taking the workdir's lock: no other run's records are newer
    # Started before TensorFlow is imported here, so the Beam workers' imports happen meanwhile.
    with forked_workers(config.beam_pipeline_args), _progress(progress):
        from pipeline import runners  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
        try:
            if args.cpu_replicas > 1:
                runtime.logical_cpus(args.cpu_replicas)  # before any TensorFlow work: devices cannot change later
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
    for flag, path in (("--workdir", args.workdir), ("--serving-dir", args.serving_dir)):
        error = _unwritable(path) if path else None
        if error:
            return f"{flag} {path}: {error}"
    if not args.serving_dir:  # the default, under the workdir
        error = _unwritable(default_serving_dir(args.workdir))
        if error:
            return f"the serving dir {default_serving_dir(args.workdir)} (default; see --serving-dir): {error}"
    return None


def _unwritable(path: str) -> Optional[str]:
    """Why this directory (created later if missing) cannot be written, by creating a probe file in it or its
    nearest existing parent; None if it can, or if it is a remote URI (left to its filesystem)."""
    if "://" in path:
        return None
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".iris-tfx-probe-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror})"
    return None


class _WorkdirBusy(Exception):
    """Another process holds the workdir's lock."""


def _lock_holder(descriptor: int, wait_seconds: float = 2.0) -> str:
    """The holder's 'pid N, started T' line. It writes that line just after taking the lock, so a run refused in
    that instant waits briefly for it rather than naming no one."""
    deadline = time.monotonic() + wait_seconds
    while True:
        holder = os.pread(descriptor, 256, 0).decode(errors="replace").strip()
        if holder or time.monotonic() > deadline:
            return holder or "starting up"
        time.sleep(0.02)


@contextlib.contextmanager
def _workdir_lock(workdir: str) -> Iterator[None]:
    """One run per workdir: an exclusive flock on <workdir>/iris-tfx.lock for the whole run. The kernel
    releases it when this process ends, however it ends, so a lock is never stale."""
    os.makedirs(workdir, exist_ok=True)
    path = PipelineConfig(workdir=workdir).lock_path
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(descriptor)
            raise _WorkdirBusy(f"--workdir {workdir}: another iris-tfx run is using it ({holder}); "
                               "wait for it to finish or use another --workdir") from None
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}, started {now}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)  # whoever takes the lock next writes its own pid
    finally:
        os.close(descriptor)


class _ProgressHandler(logging.Handler):
    """Turns TFX's 'node X is running/finished' log records into one console line per component."""
    _START = ("node %s is running.", "Component %s is running.")
    _END = ("node %s is finished.", "Component %s is finished.")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._started = {}
        self.finished: List[str] = []  # in order: what an interrupted run reports

    @property
    def running(self) -> List[str]:
        return [node for node in list(self._started) if node not in self.finished]  # list(): another thread adds

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in self._START:
            self._started[record.args[0]] = time.monotonic()
            _console(f"  > {record.args[0]} running...")
        elif record.msg in self._END:
            seconds = time.monotonic() - self._started.get(record.args[0], time.monotonic())
            self.finished.append(record.args[0])
            _console(f"    {record.args[0]} done in {seconds:.1f}s")


@contextlib.contextmanager
def _progress(handler: _ProgressHandler) -> Iterator[None]:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("absl").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("absl").removeHandler(handler)


def _versions(serving_dir: str) -> Set[str]:
    """The model versions (integer-named directories) in a local serving dir."""
    if "://" in serving_dir or not os.path.isdir(serving_dir):
        return set()
    return {name for name in os.listdir(serving_dir) if name.isdigit()}


@contextlib.contextmanager
def _private_temp_dir() -> Iterator[str]:
    """A temp folder (TMPDIR) for all this run and its child processes create (Beam, TensorFlow, the Beam worker
    zygote), removed at the end: a run leaves no temp files behind, interrupted or not."""
    path = tempfile.mkdtemp(prefix="iris-tfx-run-")
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = path
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _stopped_on_signals(progress: _ProgressHandler, serving_dir: str, temp_dir: str) -> Iterator[None]:
    """While active, SIGINT/SIGTERM stop the run: Beam workers and child processes killed, temp_dir removed,
    one line on what was pushed, exit 128 + signal (130, 143). A thread does it, woken through the signal
    wakeup fd at once, since the main thread may be inside TensorFlow or Beam code that delays Python handlers;
    the main thread's own handler only parks it, so the pipeline takes no further step meanwhile."""
    before = _versions(serving_dir)
    console = os.dup(2)  # the terminal, even while stderr goes to the log file
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)

    def stop() -> None:
        signum = 0
        while signum not in (signal.SIGINT, signal.SIGTERM):  # the wakeup fd gets every handled signal
            received = os.read(wake_read, 1)
            if not received:
                return  # the run ended normally
            signum = received[0]
        try:
            where, pushed = _interrupted_at(progress), "Pusher" in progress.finished  # as the signal came
            os.write(console, (_stop_run(signum, where, pushed, serving_dir, before, temp_dir) + "\n").encode())
        finally:
            os._exit(128 + signum)  # pylint: disable=protected-access  (no unwinding through Beam's threads)

    watcher = threading.Thread(target=stop, name="iris-tfx-signals", daemon=True)
    watcher.start()
    handlers = {signum: signal.signal(signum, _park) for signum in (signal.SIGINT, signal.SIGTERM)}
    previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.close(wake_write)  # the watcher reads end-of-file and returns
        watcher.join()
        for descriptor in (wake_read, console):
            os.close(descriptor)


def _park(*_) -> None:
    """The main thread's signal handler: take no further pipeline step while the watcher thread ends the run."""
    threading.Event().wait()


def _stop_run(signum: int, where: str, pushed: bool, serving_dir: str, before: Set[str], temp_dir: str) -> str:
    """Stops what the run started and removes its temp folder; returns the line saying what was pushed."""
    beam_workers.stop_workers()
    for child in psutil.Process().children(recursive=True):  # Beam's worker relays, anything else started
        with contextlib.suppress(psutil.Error):
            child.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)
    line = f"iris-tfx: interrupted by {signal.Signals(signum).name} {where}: "
    new = sorted(_versions(serving_dir) - before)
    if new and pushed:
        return line + "pushed " + ", ".join(os.path.join(serving_dir, version) for version in new) + "."
    if new:  # the Pusher was copying: a half-written version must never be served
        for version in new:
            shutil.rmtree(os.path.join(serving_dir, version), ignore_errors=True)
        return line + f"nothing was pushed (removed the incomplete version {', '.join(new)})."
    return line + "nothing was pushed."


def _interrupted_at(progress: _ProgressHandler) -> str:
    """Where the run was when interrupted, for the one-line report."""
    if progress.running:
        return "during " + ", ".join(progress.running)
    if progress.finished:
        return "after " + progress.finished[-1]
    return "before any component ran"


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
    from components.example_gen import CsvInputError, read_record_batches  # pylint: disable=g-import-not-at-top
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    try:  # the pipeline's own reader: the path taken literally, gzip/BOM/quotes accepted, one-line errors
        frame = pa.Table.from_batches(list(read_record_batches(args.data))).to_pandas()
    except CsvInputError as err:
        print(f"iris-tfx: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    statistics = tfdv.generate_statistics_from_dataframe(frame)
    tfdv.write_schema_text(tfdv.infer_schema(statistics), args.out)
    print(f"Wrote a schema inferred from {args.data} to {args.out}.\n"
          f"Review it against {DEFAULT_SCHEMA} (e.g. diff -u {DEFAULT_SCHEMA} {args.out}); the curated "
          "schema keeps hand-set bounds, the species domain and the SERVING environment.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
