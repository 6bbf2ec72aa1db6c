"""iris-tfx schema propose: the schema TFDV infers from the data, to review against the curated one."""
import argparse
import os

from components.constants import DEFAULT_DATA, DEFAULT_SCHEMA
from iris_tfx import console

EXIT_FAILED = 1  # the data could not be read


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `schema propose`."""
    schema = subparsers.add_parser("schema", help="schema tools")
    schema_commands = schema.add_subparsers(dest="schema_command", required=True, metavar="COMMAND")
    propose = schema_commands.add_parser(
        "propose", help="infer a schema from the data's statistics, for review against schema/schema.pbtxt")
    propose.add_argument("--data", default=DEFAULT_DATA, help="CSV to infer the schema from (default: %(default)s)")
    propose.add_argument("--out", default=os.path.join("schema", "proposed_schema.pbtxt"),
                         help="where to write the proposed schema, for review (default: %(default)s)")
    propose.set_defaults(handler=_propose)


def _propose(args: argparse.Namespace) -> int:
    """Infers a schema from fresh statistics of the data, read with the pipeline's own CSV reader."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(args.data):
        console.error(f"--data {args.data}: no such file")
        return EXIT_FAILED
    from components.example_gen import CsvInputError, read_record_batches  # pylint: disable=g-import-not-at-top
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    try:  # the pipeline's own reader: the path taken literally, gzip/BOM/quotes accepted, one-line errors
        frame = pa.Table.from_batches(list(read_record_batches(args.data))).to_pandas()
    except CsvInputError as err:
        console.error(str(err))
        return EXIT_FAILED
    statistics = tfdv.generate_statistics_from_dataframe(frame)
    tfdv.write_schema_text(tfdv.infer_schema(statistics), args.out)
    print(f"Wrote a schema inferred from {args.data} to {args.out}.\n"
          f"Review it against {DEFAULT_SCHEMA} (e.g. diff -u {DEFAULT_SCHEMA} {args.out}); the curated "
          "schema keeps hand-set bounds, the species domain and the SERVING environment.")
    return 0

