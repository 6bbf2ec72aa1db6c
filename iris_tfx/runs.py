"""iris-tfx runs: the runs recorded in a workdir's ML Metadata, newest first, and one run's summary again."""
import argparse

from components.constants import DEFAULT_WORKDIR
from iris_tfx import console

EXIT_USAGE = 2  # an unknown workdir or run id


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `runs` (the table) and `runs show ID`."""
    runs = subparsers.add_parser("runs", help="the pipeline runs recorded in a workdir, newest first "
                                              "(`runs show ID` for one run's summary and report)")
    _add_workdir(runs, DEFAULT_WORKDIR)
    runs.set_defaults(handler=_list)
    commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND")
    show = commands.add_parser("show", help="one run's summary again, its data and the path to its report")
    show.add_argument("run_id", metavar="ID", help="a run id, as `iris-tfx runs` lists it")
    _add_workdir(show, argparse.SUPPRESS)  # SUPPRESS: `runs --workdir W show ID` keeps W
    show.set_defaults(handler=_show)


def _add_workdir(parser: argparse.ArgumentParser, default: str) -> None:
    """--workdir, accepted before or after `show`."""
    parser.add_argument("--workdir", default=default,
                        help=f"the workdir of the runs (its metadata.sqlite) (default: {DEFAULT_WORKDIR})")


def _list(args: argparse.Namespace) -> int:
    """Prints the runs table."""
    from pipeline import history  # pylint: disable=g-import-not-at-top  (imports TFX)
    try:
        records = history.runs(args.workdir)
    except history.HistoryError as err:
        console.error(str(err))
        return EXIT_USAGE
    print(history.format_table(records) if records else f"No runs recorded in {args.workdir}.")
    return 0


def _show(args: argparse.Namespace) -> int:
    """Prints one run's summary, start, status, data and report path."""
    from pipeline import history  # pylint: disable=g-import-not-at-top  (imports TFX)
    try:
        record = history.show(args.workdir, args.run_id)
    except history.HistoryError as err:
        console.error(str(err))
        return EXIT_USAGE
    print(history.format_run(record, args.workdir))
    return 0
