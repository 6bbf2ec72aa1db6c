"""iris-tfx report: a run's report, one self-contained HTML page (graph, data, training, evaluation, outcome)."""
import argparse

from components.constants import DEFAULT_WORKDIR
from iris_tfx import console

EXIT_USAGE = 2  # no metadata in the workdir, or no run by that id


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `report [--workdir DIR] [--run ID]`."""
    report = subparsers.add_parser(
        "report", help="write a run's report to <workdir>/reports/<run id>.html: one HTML page that opens offline")
    report.add_argument("--workdir", default=DEFAULT_WORKDIR,
                        help="the workdir of the run (its metadata.sqlite) (default: %(default)s)")
    report.add_argument("--run", metavar="ID", help="the run id, as `iris-tfx runs` lists it (default: the latest run)")
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    """Writes the page and prints its path."""
    from pipeline import report  # pylint: disable=g-import-not-at-top  (imports TFX)
    try:
        path = report.write_report(args.workdir, args.run)
    except report.ReportError as err:
        console.error(str(err))
        return EXIT_USAGE
    print(f"Report: {path}")
    return 0
