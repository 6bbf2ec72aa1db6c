"""iris-tfx run: the pipeline end to end, one run per workdir, stopped cleanly by SIGINT/SIGTERM.

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
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Iterator, Optional, Set, Tuple

import psutil

from components import runtime
from components.constants import DEFAULT_DATA, DEFAULT_SCHEMA, DEFAULT_WORKDIR, default_serving_dir
from components.hyperparameters import Hyperparameters
from iris_tfx import console, flags
from pipeline import beam_workers
from pipeline.config import PipelineConfig
from pipeline.lock import WorkdirBusy, workdir_lock

EXIT_FAILED = 1       # a component failed (bad input, bad config, ...): nothing was pushed
EXIT_NOT_BLESSED = 3  # the run completed but the model did not pass evaluation: nothing was pushed
EXIT_BUSY = 4         # another run holds the workdir's lock: this one did nothing


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `run`: its flags, and the exit codes above as the epilog of its --help."""
    run = subparsers.add_parser("run", help="run the pipeline end to end (CSV -> pushed model)",
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
    run.add_argument("--accuracy-floor", type=flags.fraction, default=PipelineConfig.accuracy_floor,
                     help="overall eval accuracy the model needs to be blessed, in [0, 1] (default: %(default)s)")
    run.add_argument("--epochs", type=flags.integer_at_least(1), default=Hyperparameters.epochs,
                     help="training epochs, >= 1 (default: %(default)s)")
    run.add_argument("--cpu-replicas", type=flags.integer_at_least(0), default=0,
                     help="train with MirroredStrategy over N logical CPU devices "
                          "(default: 0; 0 or 1: no MirroredStrategy)")
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    run.add_argument("--verbose", action="store_true", help="show all logs instead of writing them to a file")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    """Checks the inputs, takes the workdir's lock, then runs with signals handled and a private temp dir."""
    error = _check_inputs(args)
    if error:
        console.error(error, "No model was pushed.")
        return EXIT_FAILED
    progress = console.ProgressHandler()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(workdir_lock(args.workdir))
        except WorkdirBusy as busy:
            console.error(str(busy), "Nothing was started.")
            return EXIT_BUSY
        temp_dir = held.enter_context(_private_temp_dir())
        held.enter_context(_stopped_on_signals(
            progress, args.serving_dir or default_serving_dir(args.workdir), temp_dir))
        return _run_locked(args, progress)


def _run_locked(args: argparse.Namespace, progress: "console.ProgressHandler") -> int:
    """The run itself, while this process holds the workdir's lock."""
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S.%f")  # TFX's own runners' format
    log_path = os.path.join(args.workdir, "logs", f"run-{run_id}.log")
    print(f"Running the pipeline on {args.data} with the {args.runner} runner"
          + ("" if args.verbose else f" (logs: {log_path})"), flush=True)
    started = time.monotonic()
    with contextlib.nullcontext() if args.verbose else console.logs_to(log_path):
        summary, failure = _run_pipeline(args, progress, run_id)
        from pipeline.summary import without_beam_suffix  # pylint: disable=g-import-not-at-top  (imports TFX)
        reason = without_beam_suffix(str(failure)) if failure is not None else None
        report, report_error = _write_report(args.workdir, run_id, reason) if summary else (None, None)
    print()
    print(summary.format() if summary else "No run recorded.")
    print(f"Total wall time: {time.monotonic() - started:.1f}s")
    if report:
        print(f"Report: {report}")
    if report_error:
        console.error(f"the report could not be written: {report_error}")
    if failure is not None:
        failed = summary.failed if summary else []
        for message in [f"{node.node} failed: {node.message or reason}" for node in failed] or [reason]:
            print(file=sys.stderr)
            console.error(message)
        print("No model was pushed.", file=sys.stderr)
        return EXIT_FAILED
    if not summary.pushed_path:
        print("\niris-tfx: the model was not blessed by the Evaluator; nothing was pushed.", file=sys.stderr)
        return EXIT_NOT_BLESSED
    return 0


def _write_report(workdir: str, run_id: str, failure: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """The run's HTML report's path, or why it could not be drawn: that never changes the run's exit code. Called
    while stderr goes to the run's log, where the report's libraries log too."""
    from pipeline import report  # pylint: disable=g-import-not-at-top  (imports matplotlib)
    try:
        return report.write_report(workdir, run_id, failure=failure), None
    except Exception as err:  # pylint: disable=broad-except
        return None, str(err)


def _run_pipeline(args: argparse.Namespace, progress: "console.ProgressHandler", run_id: str):
    """Runs the pipeline with the chosen runner; returns its summary and the exception if it failed."""
    config = PipelineConfig(
        data_path=args.data, schema_path=args.schema, workdir=args.workdir, serving_dir=args.serving_dir,
        accuracy_floor=args.accuracy_floor, enable_cache=not args.no_cache,
        training=dataclasses.replace(Hyperparameters(), epochs=args.epochs, cpu_replicas=args.cpu_replicas),
        beam_pipeline_args=flags.beam_args(args.beam_arg))
    console.say(f"  pipeline root {config.pipeline_root}, models pushed to {config.push_dir}")
    console.say("  starting: importing TensorFlow and TFX, forking the Beam workers (10-40 s)...")
    failure = None
    # Started before TensorFlow is imported here, so the Beam workers' imports happen meanwhile.
    with beam_workers.forked_workers(config.beam_pipeline_args), console.progress(progress):
        from pipeline import runners  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
        try:
            if args.cpu_replicas > 1:
                runtime.logical_cpus(args.cpu_replicas)  # before any TensorFlow work: devices cannot change later
            runners.RUNNERS[args.runner](config, run_id)
        except Exception as err:  # pylint: disable=broad-except  (reported by the caller, with MLMD's record)
            failure = err
    from pipeline.summary import record_failure, summarize, without_beam_suffix  # pylint: disable=g-import-not-at-top
    if not os.path.exists(config.metadata_path):
        return None, failure
    if failure is not None:
        try:
            record_failure(config.metadata_path, run_id, without_beam_suffix(str(failure)))
        except Exception as err:  # pylint: disable=broad-except  (the component's error matters more)
            logging.warning("could not record the failure in ML Metadata: %s", err)
    summary = summarize(config.metadata_path, config.pipeline_name, run_id=run_id)
    return summary, failure


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
def _stopped_on_signals(progress: console.ProgressHandler, serving_dir: str, temp_dir: str) -> Iterator[None]:
    """While active, SIGINT/SIGTERM stop the run: Beam workers and child processes killed, temp_dir removed,
    one line on what was pushed, exit 128 + signal (130, 143). A thread does it, woken through the signal
    wakeup fd at once, since the main thread may be inside TensorFlow or Beam code that delays Python handlers;
    the main thread's own handler only parks it, so the pipeline takes no further step meanwhile."""
    before = _versions(serving_dir)
    terminal = os.dup(2)  # the terminal, even while stderr goes to the log file
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
            os.write(terminal, (_stop_run(signum, where, pushed, serving_dir, before, temp_dir) + "\n").encode())
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
        for descriptor in (wake_read, terminal):
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


def _interrupted_at(progress: console.ProgressHandler) -> str:
    """Where the run was when interrupted, for the one-line report."""
    if progress.running:
        return "during " + ", ".join(progress.running)
    if progress.finished:
        return "after " + progress.finished[-1]
    return "before any component ran"

