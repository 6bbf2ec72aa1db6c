"""CsvExampleGen's executor here: reads exactly the one CSV file named (plain or gzip'd, BOM, quotes, CRLF) with
pyarrow, encodes tf.Examples with tfx-bsl's vectorised encoder, and reports a bad file in one line.

TFX's own CsvExampleGen executor parses and converts every row in Python (~5,000 rows/s) and treats the data
path as a glob pattern with {SPAN}-style placeholders; this one keeps its component, artifacts (gzip'd TFRecord
splits), TFX's hash split and input fingerprint caching (the driver is unchanged: `literal_input` escapes the
path it globs).
"""
import csv
import dataclasses
import gzip
import logging
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs  # pylint: disable=unused-import  (pa.fs)
from pyarrow import csv as pa_csv
from google.protobuf.internal.encoder import _VarintBytes
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor, _PartitionFn
from tfx.types import artifact_utils
from tfx.dsl.io import fileio
from tfx.types import standard_component_specs
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

from components import constants

# Features in key order: a tf.Example serialized deterministically (what TFX hashes to split) lists them so.
SORTED_COLUMNS: Tuple[str, ...] = tuple(sorted(constants.CSV_COLUMNS))
BLOCK_BYTES = 1 << 20        # pyarrow reads (and Beam distributes) ~45,000 Iris rows at a time
MAX_FIELD_CHARS = 100        # no measurement or species name is longer; longer fields are refused
GZIP_MAGIC = b"\x1f\x8b"
# Other compressed or binary formats a user might pass by mistake, by their leading bytes.
OTHER_FORMATS = {b"PK\x03\x04": "a zip archive", b"BZh": "bzip2-compressed", b"\xfd7zXZ\x00": "xz-compressed",
                 b"\x28\xb5\x2f\xfd": "zstd-compressed", b"PAR1": "a Parquet file", b"\x89PNG": "a PNG image",
                 b"%PDF": "a PDF document"}
_GLOB_SPECIAL = re.compile(r"([\[*?{])")
# Custom property of the Examples artifact naming the CSV file read, so that later steps can point at its lines.
SOURCE_FILE_PROPERTY = "source_file"


class CsvInputError(ValueError):
    """A data file that cannot be read as the Iris CSV; the message is one line: file, line, what is wrong."""


def literal_pattern(path_part: str) -> str:
    """A glob matching exactly path_part: escapes glob characters and TFX's {SPAN}/{VERSION}/{YYYY} placeholders
    (`[`, `*`, `?`, `{` become `[[]`, `[*]`, ...; a backslash becomes `\\\\`, TensorFlow's glob escape)."""
    return _GLOB_SPECIAL.sub(r"[\1]", path_part.replace("\\", "\\\\"))


def literal_input(data_path: str) -> Tuple[str, str]:
    """ExampleGen's (input_base, split pattern) for exactly the file data_path, taken literally."""
    if "://" not in data_path:
        data_path = os.path.abspath(data_path)
    directory, name = data_path.rsplit("/", 1)
    return literal_pattern(directory or "/"), literal_pattern(name)


def input_file(exec_properties: Dict[str, Any]) -> str:
    """The one file ExampleGen's input config names (the same glob the driver fingerprinted)."""
    from tfx.proto import example_gen_pb2  # pylint: disable=g-import-not-at-top
    from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top
    config = proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                       example_gen_pb2.Input())
    pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], config.splits[0].pattern)
    files = fileio.glob(pattern)
    if len(files) != 1:
        raise CsvInputError(f"{pattern}: {'no such file' if not files else f'names {len(files)} files'} "
                            "(expected exactly one CSV file)")
    return files[0]


# --- reading -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Header:
    """The header row: names for pyarrow (an unnamed first column, R's row names or pandas' index, is skipped)."""
    names: Tuple[str, ...]


def _open(path: str) -> Tuple[Any, bool]:
    """The open binary file and whether it is gzip'd (by its magic bytes, whatever its name)."""
    raw = fileio.open(path, "rb")
    magic = raw.read(6)
    raw.seek(0)
    for prefix, kind in OTHER_FORMATS.items():
        if magic.startswith(prefix):
            raw.close()
            raise CsvInputError(f"{path}: the file is {kind}, not CSV text (a gzip'd CSV is accepted)")
    return raw, magic.startswith(GZIP_MAGIC)


def _arrow_stream(path: str) -> pa.NativeFile:
    """The file as pyarrow's own input stream (local, gs://, s3://, hdfs://): read in C++, no Python file calls."""
    if "://" not in path:
        return pa.OSFile(path)
    filesystem, inner_path = pa.fs.FileSystem.from_uri(path)
    return filesystem.open_input_stream(inner_path)


def _lines(path: str) -> Iterator[str]:
    """The file's lines as text, a UTF-8 byte-order mark dropped; undecodable or binary bytes are refused."""
    raw, gzipped = _open(path)
    with gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw as stream:
        try:
            for number, raw_line in enumerate(stream, start=1):
                try:
                    line = raw_line.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise CsvInputError(f"{path} line {number}: not UTF-8 text (byte 0x{raw_line[err.start]:02x} "
                                        f"at column {err.start + 1}); save the CSV as UTF-8") from None
                if "\x00" in line:
                    raise CsvInputError(f"{path} line {number}: binary data (a NUL byte), not CSV text")
                yield line
        except (OSError, EOFError) as err:  # a corrupt or truncated gzip stream
            raise CsvInputError(f"{path}: not a readable gzip file ({err})") from None


def read_header(path: str, rows: Optional[Iterator[List[str]]] = None) -> Header:
    """Checks the header row: exactly constants.CSV_COLUMNS, in any order, comma-separated."""
    rows = rows if rows is not None else csv.reader(_lines(path))
    try:
        names = [name.strip() for name in next(rows)]
    except StopIteration:
        raise CsvInputError(f"{path}: the file is empty (expected a header row and data rows)") from None
    except csv.Error as err:
        raise CsvInputError(f"{path} line 1: {err}") from None
    where = f"{path} line 1 (the header)"
    if len(names) == 1 and names[0] not in constants.CSV_COLUMNS:
        separator = next((s for s in ";\t|" if s in names[0]), None)
        if separator:
            raise CsvInputError(f"{where}: columns are separated by {separator!r}; the CSV must use commas")
    columns = names[1:] if names and names[0] == "" else names
    for name in columns:
        if columns.count(name) > 1:
            raise CsvInputError(f"{where}: column {name!r} appears {columns.count(name)} times")
    expected = ", ".join(constants.CSV_COLUMNS)
    unknown = [name for name in columns if name not in constants.CSV_COLUMNS]
    if unknown:
        raise CsvInputError(f"{where}: unexpected column {_shown(unknown[0])} (expected exactly: {expected})")
    missing = [name for name in constants.CSV_COLUMNS if name not in columns]
    if missing:
        raise CsvInputError(f"{where}: column {missing[0]!r} is missing (expected exactly: {expected})")
    return Header(names=tuple(names))


def read_record_batches(path: str, block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """The data rows, SORTED_COLUMNS as float32 measurements and a species string, a block at a time.
    Empty cells are nulls. Raises CsvInputError (without saying where: see find_problem) on a bad file."""
    header = read_header(path)
    rows = 0
    raw, gzipped = _open(path)
    raw.close()
    options = dict(
        read_options=pa_csv.ReadOptions(column_names=list(header.names), skip_rows=1, block_size=block_bytes),
        convert_options=pa_csv.ConvertOptions(
            column_types={**{key: pa.float32() for key in constants.FEATURE_KEYS}, constants.LABEL_KEY: pa.string()},
            include_columns=list(SORTED_COLUMNS), null_values=[""], strings_can_be_null=True))
    with _arrow_stream(path) as stream:
        try:
            for batch in pa_csv.open_csv(pa.CompressedInputStream(stream, "gzip") if gzipped else stream, **options):
                label = pc.utf8_trim_whitespace(batch.column(constants.LABEL_KEY))
                longest = pc.max(pc.binary_length(label)).as_py()
                if longest is not None and longest > MAX_FIELD_CHARS:
                    raise CsvInputError(f"{path}: a {constants.LABEL_KEY} value of {longest} characters")
                rows += batch.num_rows
                yield pa.RecordBatch.from_arrays(
                    [batch.column(key) for key in SORTED_COLUMNS[:-1]] + [label], list(SORTED_COLUMNS))
        except (pa.ArrowInvalid, OSError) as err:
            raise CsvInputError(f"{path}: {str(err).splitlines()[0]}") from None
    if rows == 0:
        raise CsvInputError(f"{path}: no data rows (only a header)")


def find_problem(path: str) -> Optional[str]:
    """The first problem in the file, as one line naming the file, the line and what is wrong; None if none.
    Written by hand because pyarrow 10's CSV errors say neither the file nor the line."""
    lines = _lines(path)
    rows = csv.reader(lines)
    data_rows = 0
    try:
        header = read_header(path, rows)
        for row in rows:
            if not row:
                continue  # blank lines are skipped, as pyarrow does
            data_rows += 1
            where = f"{path} line {rows.line_num}"
            if tuple(value.strip() for value in row) == header.names:
                return f"{where} repeats the header (were two CSV files joined?): remove it"
            if len(row) != len(header.names):
                return (f"{where}: {len(row)} fields, expected {len(header.names)} like the header "
                        f"(is a value quoted wrongly, or a comma inside a number?)")
            for name, value in zip(header.names, row):
                if name == "":
                    continue
                if len(value) > MAX_FIELD_CHARS:
                    return f"{where}: {name} is a field of {len(value):,} characters (at most {MAX_FIELD_CHARS})"
                if "\n" in value or "\r" in value:
                    return f"{where}: {name} {_shown(value)} has a line break inside quotes"
                if name in constants.FEATURE_KEYS and value.strip() and not _is_number(value):
                    return f"{where}: {name} {_shown(value)} is not a number"
    except CsvInputError as err:
        return str(err)
    except csv.Error as err:
        if "field limit" in str(err):
            return f"{path} line {rows.line_num}: a field of more than {csv.field_size_limit():,} characters"
        return f"{path} line {rows.line_num}: {err}"
    if data_rows == 0:
        return f"{path}: no data rows (only a header)"
    return None


def _is_number(value: str) -> bool:
    """Whether pyarrow's float conversion accepts the value (the same vectorised parser on one cell)."""
    try:
        pc.cast(pa.array([value.strip()]), pa.float32())
        return True
    except pa.ArrowInvalid:
        return False


def _shown(value: str) -> str:
    """A value quoted for a message, long ones cut."""
    return repr(value) if len(value) <= 40 else repr(value[:40]) + f"... ({len(value):,} characters)"


@dataclasses.dataclass(frozen=True)
class RowCheck:
    """A rule on one column's values: `offends` maps a block's column to True where a row breaks `rule`."""
    column: str
    rule: str
    offends: Callable[[pa.Array], pa.Array]


@dataclasses.dataclass(frozen=True)
class RowFinding:
    """The rows breaking one RowCheck: the first few as (line number, the value as written), and how many in all."""
    check: RowCheck
    lines: Tuple[Tuple[int, str], ...]
    count: int


def find_rows(path: str, checks: Sequence[RowCheck], limit: int = 5) -> List[RowFinding]:
    """The rows breaking each check, read as the pipeline reads them (read_record_batches), with their lines."""
    first: List[List[int]] = [[] for _ in checks]
    counts = [0] * len(checks)
    offset = 0
    for batch in read_record_batches(path):
        for i, check in enumerate(checks):
            mask = pc.fill_null(check.offends(batch.column(check.column)), False)
            rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
            counts[i] += len(rows)
            first[i].extend((rows[:limit - len(first[i])] + offset).tolist())
        offset += batch.num_rows
    names = read_header(path).names
    where = _data_lines(path, {row for rows in first for row in rows})
    return [RowFinding(check, tuple((where[row][0], where[row][1][names.index(check.column)]) for row in rows), count)
            for check, rows, count in zip(checks, first, counts)]


def _data_lines(path: str, rows: Set[int]) -> Dict[int, Tuple[int, List[str]]]:
    """Line number and fields of the given data rows (counted from 0 as read_record_batches yields them)."""
    found: Dict[int, Tuple[int, List[str]]] = {}
    reader = csv.reader(_lines(path))
    read_header(path, reader)
    index = 0
    for fields in reader:
        if len(found) == len(rows):
            break
        if not fields:
            continue  # blank lines are skipped, as pyarrow does
        if index in rows:
            found[index] = (reader.line_num, fields)
        index += 1
    return found


# --- encoding ------------------------------------------------------------------------------------

def as_lists(values: pa.Array) -> pa.LargeListArray:
    """One value per row as the encoder's list column; a null becomes an empty list (an empty feature),
    which is what TFX's CSV executor writes for an empty cell."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
    flat = values.drop_null()
    if pa.types.is_string(flat.type):
        flat = flat.cast(pa.large_binary())
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat)


def serialize_examples(encoder: RecordBatchToExamplesEncoder, batch: pa.RecordBatch) -> List[bytes]:
    """tf.Examples byte-identical to their deterministic serialization (features in key order), so TFX's
    sha256 split puts each row where TFX's CsvExampleGen does. The encoder writes the feature map in hash order
    (a different order each run), so each column is encoded alone and the rows' features are framed here."""
    parts = [encoder.encode(pa.RecordBatch.from_arrays([as_lists(batch.column(key))], [key]))
             for key in SORTED_COLUMNS]
    examples = []
    # Each one-feature Example is b"\x0a" <length> <feature entry>; no field is long enough for a 2-byte length.
    for row in zip(*parts):
        entries = b"".join([part[2:] for part in row])
        examples.append(b"\x0a" + _VarintBytes(len(entries)) + entries)
    return examples


class _WriteSplits(beam.DoFn):
    """A block of rows -> tf.Examples in each split's gzip'd TFRecord file for that block (numbered, so a retried
    block rewrites its own files). Each example goes to the split TFX's own partition function gives it. Done
    per block here, not with TFX's per-example Partition and WriteSplit: Beam's per-element cost was most of the
    time (benchmarks/example_gen_benchmark.py)."""

    def __init__(self, split_uris: List[str], split_config: Any) -> None:
        self._split_uris = split_uris
        self._split_config = split_config
        self._buckets = list(np.cumsum([split.hash_buckets for split in split_config.splits]))

    def setup(self) -> None:
        self._encoder = RecordBatchToExamplesEncoder()

    def process(self, numbered_batch: Tuple[int, pa.RecordBatch]) -> Iterator[int]:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only in Beam workers)
        number, batch = numbered_batch
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        writers = [tf.io.TFRecordWriter(os.path.join(uri, f"data_tfrecord-{number:05d}.gz"), options)
                   for uri in self._split_uris]
        try:
            for example in serialize_examples(self._encoder, batch):
                writers[_PartitionFn(example, len(writers), self._buckets, self._split_config)].write(example)
        finally:
            for writer in writers:
                writer.close()
        yield batch.num_rows


class Executor(BaseExampleGenExecutor):
    """TFX's CsvExampleGen executor, reading with pyarrow, encoding with tfx-bsl and writing a block at a time."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # pylint: disable=invalid-name
        raise NotImplementedError("GenerateExamplesByBeam writes the splits itself")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,  # pylint: disable=invalid-name
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.pvalue.PCollection]:
        """Reads, splits and writes; returns no PCollection for TFX's Do to write (it still records the splits)."""
        from tfx.proto import example_gen_pb2  # pylint: disable=g-import-not-at-top
        from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top
        output_config = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], example_gen_pb2.Output())
        if not output_config.split_config.splits:
            raise ValueError("this ExampleGen executor needs an output split config (e.g. train/eval hash buckets)")
        split_uris = [artifact_utils.get_split_uri(self._examples, split.name)
                      for split in output_config.split_config.splits]
        for uri in split_uris:
            fileio.makedirs(uri)
        path = input_file(exec_properties)
        read_header(path)  # a wrong header fails here, before any worker starts
        _ = (pipeline
             | "CsvFile" >> beam.Create([path])
             | "ReadCsv" >> beam.FlatMap(lambda p: enumerate(read_record_batches(p)))
             | "Distribute" >> beam.Reshuffle()
             | "WriteSplits" >> beam.ParDo(_WriteSplits(split_uris, output_config.split_config)))
        return {}

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # pylint: disable=invalid-name
        """Runs TFX's Do; if it fails, the file is checked again here to report its first problem in one line
        (Beam wraps a worker's exception in its traceback). The examples record the file they came from."""
        self._examples = output_dict[standard_component_specs.EXAMPLES_KEY]
        path = input_file(exec_properties)
        try:
            super().Do(input_dict, output_dict, exec_properties)
        except Exception:  # pylint: disable=broad-except  (re-raised unless the file explains it)
            problem = find_problem(path)
            if problem is None:
                raise
            logging.exception("CsvExampleGen failed on a bad input file")
            raise CsvInputError(problem) from None
        for examples in self._examples:
            examples.set_string_custom_property(SOURCE_FILE_PROPERTY, path)
