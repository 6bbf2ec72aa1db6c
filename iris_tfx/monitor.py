"""iris-tfx monitor: skew and drift of the served traffic (the server's request logs) against the training data of
the model that answered it, with TFDV; exit 1 when found, so a scheduled job can gate a retraining on it, and 3 when
it could not judge (a scheduler retries that one)."""
import argparse
import logging
import os
import re
import sys

from components.constants import DEFAULT_WORKDIR
from iris_tfx import console

# Nothing found; skew or drift found; bad input; no verdict because something failed (ML Metadata unreachable, the
# statistics unreadable, an internal error): a verdict and bad input repeat on a retry, a failure may not.
EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
_log = logging.getLogger(__name__)
_HOST_PORT = re.compile(r"[^\s:]+:\d{1,5}")


def host_port(text: str) -> str:
    """An argparse type: HOST:PORT, else argparse's own error (exit 2)."""
    if not _HOST_PORT.fullmatch(text) or not 0 < int(text.rsplit(":", 1)[1]) < 65536:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (got {text})")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `monitor --logs PREFIX [--workdir DIR | --metadata_grpc HOST:PORT] [--since TIME]`."""
    monitor = subparsers.add_parser(
        "monitor", help="skew and drift of the logged requests against the model's training data (exit 1 if found)",
        description="Each model version in the logs is judged on its own. Exit codes: 1 skew or drift found in "
                    "any version judged; else 2 if a version has no push or training data in ML Metadata (one "
                    "error line each: the others are still judged) or on bad input (no logs, a bad time, an empty "
                    "window); else 0. 3: no verdict because something failed (ML Metadata unreachable, statistics "
                    "unreadable, an internal error).")
    monitor.add_argument("--logs", required=True, metavar="PREFIX",
                         help="the logging_config filename_prefix the server writes <PREFIX>-*.tfrecord under")
    monitor.add_argument("--workdir", default=DEFAULT_WORKDIR,
                         help="the pipeline's workdir: its ML Metadata (unless --metadata_grpc) and where the "
                              "results go, <workdir>/monitoring/<run id>/<UTC time>/ (default: %(default)s)")
    monitor.add_argument("--metadata_grpc", metavar="HOST:PORT", type=host_port,
                         help="read ML Metadata from this metadata gRPC service instead of <workdir>/metadata.sqlite")
    monitor.add_argument("--since", metavar="TIME",
                         help="only requests logged since TIME: ISO 8601 (UTC unless a zone is given) or a span "
                              "back from now (90s, 30m, 1h, 7d); drift is then checked against the window of the "
                              "same length before it (default: every logged request, no drift check)")
    monitor.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    """Prints one verdict line per feature and the species mix per model version, and where the results are."""
    from pipeline import monitor  # pylint: disable=g-import-not-at-top  (imports TensorFlow and TFDV)
    from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
    try:
        outcome = monitor.monitor(args.logs, args.workdir, args.metadata_grpc, args.since)
    except monitor.MonitorError as err:
        console.error(str(err))
        return EXIT_USAGE
    except monitor.MonitorFailure as err:
        console.error(f"{err} (no verdict, exit {EXIT_FAILED})")
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - an internal error is a failure to judge, not a verdict (exit 1)
        _log.debug("monitor failed", exc_info=True)
        console.error(f"monitor failed: {type(err).__name__}: {monitor.first_line(err)} (no verdict, exit "
                      f"{EXIT_FAILED})")
        return EXIT_FAILED
    found = False
    for result, directory in outcome.results:
        print("\n".join(monitor.verdict_lines(result)))
        print(f"Result: {directory}")
        found |= result.found
        run_id = result.data["run_id"]
        if not args.metadata_grpc and os.path.exists(PipelineConfig(workdir=args.workdir).report_path(run_id)):
            from pipeline import report  # pylint: disable=g-import-not-at-top
            try:  # the verdict stands without the report: its failure must not become exit 1 or 3
                print(f"Report: {report.write_report(args.workdir, run_id)}")
            except Exception as err:  # noqa: BLE001
                _log.debug("report not written", exc_info=True)
                print(f"iris-tfx: warning: the report of run {run_id} was not updated: {type(err).__name__}: "
                      f"{monitor.first_line(err)}", file=sys.stderr)
    for line in outcome.unknown:
        console.error(line)
    if found:
        print("Skew or drift found (exit 1).")
        return EXIT_FOUND
    if outcome.unknown:
        print(f"No skew or drift found in the versions judged; {len(outcome.unknown)} not judged (exit 2).")
        return EXIT_USAGE
    print("No skew or drift found.")
    return EXIT_OK
