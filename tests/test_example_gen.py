"""The ExampleGen executor (components/example_gen.py): CSV as spreadsheets and R/pandas write it, exactly the file
named, the same tf.Examples and splits as TFX's CsvExampleGen, and one clear line for each bad file."""
import csv
import gzip
import io
import os
import pathlib
import re
import zipfile

import pytest

from components import constants
from components import example_gen
from conftest import FAST_BEAM, IRIS_CSV, iris_tfx

IRIS_TEXT = IRIS_CSV.read_text()
IRIS_LINES = IRIS_TEXT.strip().split("\n")


def _rows(lines):
    return "\n".join(lines) + "\n"


def _quoted(lines):
    """Every header name and field in double quotes (pandas' QUOTE_ALL)."""
    return _rows([",".join(f'"{field}"' for field in line.split(",")) for line in lines])


def _r_write_csv(lines):
    """R's write.csv: quoted header and strings, row names in an unnamed first column."""
    header = '"",' + ",".join(f'"{name}"' for name in lines[0].split(","))
    body = [f'"{i}",' + line.rsplit(",", 1)[0] + f',"{line.rsplit(",", 1)[1]}"' for i, line in enumerate(lines[1:], 1)]
    return _rows([header] + body)


def _with_line(line_number: int, old: str, new: str) -> str:
    lines = list(IRIS_LINES)
    lines[line_number - 1] = lines[line_number - 1].replace(old, new, 1)
    return _rows(lines)


ACCEPTED = {  # file name -> bytes: each must read as data/iris.csv does
    "bom.csv": IRIS_TEXT.encode("utf-8-sig"),  # Excel's "CSV UTF-8"
    "quoted.csv": _quoted(IRIS_LINES).encode(),
    "crlf.csv": "\r\n".join(IRIS_LINES).encode() + b"\r\n",
    "r_write_csv.csv": _r_write_csv(IRIS_LINES).encode(),
    "iris.csv.gz": gzip.compress(IRIS_TEXT.encode()),
    "gzipped_without_suffix.csv": gzip.compress(IRIS_TEXT.encode()),
    "spaces_and_blank_lines.csv": ("\n".join(", ".join(line.split(",")) for line in IRIS_LINES) + "\n\n\n").encode(),
    "all_at_once.csv.gz": gzip.compress(b"\xef\xbb\xbf" + _quoted(IRIS_LINES).replace("\n", "\r\n").encode()),
}


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("iris.csv", IRIS_TEXT)
    return buffer.getvalue()


REFUSED = {  # case -> (file bytes, the message after "<path>")
    "non_numeric": (_with_line(9, "3.4", "wide").encode(), " line 9: sepal_width 'wide' is not a number"),
    "megabyte_field": (_with_line(4, "3.2", "x" * (1 << 20)).encode(),
                       " line 4: a field of more than 131,072 characters"),
    "long_species": (_with_line(10, "setosa", "s" * 200).encode(),
                     " line 10: species is a field of 200 characters (at most 100)"),
    "semicolons": (IRIS_TEXT.replace(",", ";").encode(),
                   " line 1 (the header): columns are separated by ';'; the CSV must use commas"),
    "tabs": (IRIS_TEXT.replace(",", "\t").encode(),
             " line 1 (the header): columns are separated by '\\t'; the CSV must use commas"),
    "binary": (bytes(range(256)) * 16, " line 1: binary data (a NUL byte), not CSV text"),
    "latin1": (_with_line(3, "setosa", "s\u00e9tosa").encode("latin-1"),
               " line 3: not UTF-8 text (byte 0xe9 at column 18); save the CSV as UTF-8"),
    "zip": (_zip_bytes(), ": the file is a zip archive, not CSV text (a gzip'd CSV is accepted)"),
    "truncated_gzip": (gzip.compress(IRIS_TEXT.encode())[:300], ": not a readable gzip file"),
    "extra_field": (_with_line(7, "setosa", "setosa,7").encode(),
                    " line 7: 6 fields, expected 5 like the header (is a value quoted wrongly, or a comma inside "
                    "a number?)"),
    "missing_column": (IRIS_TEXT.replace(",petal_width", "").encode(),
                       " line 1 (the header): column 'petal_width' is missing (expected exactly: sepal_length, "
                       "sepal_width, petal_length, petal_width, species)"),
    "extra_column": (IRIS_TEXT.replace(",species", ",species,colour", 1).encode(),
                     " line 1 (the header): unexpected column 'colour' (expected exactly: sepal_length, "
                     "sepal_width, petal_length, petal_width, species)"),
    "duplicate_column": (IRIS_TEXT.replace("sepal_width", "sepal_length", 1).encode(),
                         " line 1 (the header): column 'sepal_length' appears 2 times"),
    "header_only": ((IRIS_LINES[0] + "\n").encode(), ": no data rows (only a header)"),
    "empty": (b"", ": the file is empty (expected a header row and data rows)"),
}


def _iris_values(batches):
    """Rows as (features..., species) tuples in file order, from the reader's record batches."""
    columns = {key: [] for key in example_gen.SORTED_COLUMNS}
    for batch in batches:
        for key in columns:
            columns[key] += batch.column(key).to_pylist()
    return list(zip(*[columns[key] for key in constants.CSV_COLUMNS]))


@pytest.fixture(scope="module")
def plain_values():
    return _iris_values(example_gen.read_record_batches(str(IRIS_CSV)))


def test_plain_file_reads_as_floats_and_species(plain_values):
    with open(IRIS_CSV, newline="") as f:
        expected = [(*(float(r[k]) for k in constants.FEATURE_KEYS), r[constants.LABEL_KEY]) for r in csv.DictReader(f)]
    assert [v[4] for v in plain_values] == [e[4] for e in expected]
    assert [x for v in plain_values for x in v[:4]] == pytest.approx([x for e in expected for x in e[:4]], abs=1e-6)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepts_csv_as_tools_export_it(name, tmp_path, plain_values):
    path = tmp_path / name
    path.write_bytes(ACCEPTED[name])
    assert _iris_values(example_gen.read_record_batches(str(path))) == plain_values
    assert example_gen.find_problem(str(path)) is None


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_a_bad_file_in_one_line(case, tmp_path):
    content, message = REFUSED[case]
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(example_gen.CsvInputError):
        for _ in example_gen.read_record_batches(str(path)):
            pass
    problem = example_gen.find_problem(str(path))
    assert problem is not None and problem.startswith(f"{path}{message}"), problem
    assert "\n" not in problem and len(problem) < 300, problem


# --- exactly the file named ----------------------------------------------------------------------

LITERAL_NAMES = ["iris[1].csv", "iris*.csv", "iris?.csv", "iris {x}.csv", "irís ünïcode.csv", "iris-{SPAN}.csv",
                 "iris-{YYYY}-{MM}-{DD}.csv", "iris-{SPAN}-{VERSION}.csv", "back\\slash.csv", "[!a]].csv"]
LOOK_ALIKES = ["iris1.csv", "irisx.csv", "iris-1.csv", "iris-2020-01-01.csv", "iris-1-1.csv", "backslash.csv",
               "b].csv"]


@pytest.mark.parametrize("directory", ["plain", "dir[1] {SPAN}*?"])
def test_literal_input_names_exactly_one_file_for_tfx(directory, tmp_path):
    from tfx.components.example_gen import utils
    from tfx.proto import example_gen_pb2
    base = tmp_path / directory
    base.mkdir()
    (tmp_path / "dir1 {SPAN}xx").mkdir()  # what the directory's glob characters would match
    for name in LITERAL_NAMES + LOOK_ALIKES:
        (base / name).write_text(name)
        (tmp_path / "dir1 {SPAN}xx" / name).write_text(name)
    for name in LITERAL_NAMES:
        input_base, pattern = example_gen.literal_input(str(base / name))
        split = example_gen_pb2.Input.Split(name="single_split", pattern=pattern)
        # What TFX's driver does: resolve {SPAN}/{VERSION}/dates, fingerprint the files the pattern globs.
        fingerprint, span, version = utils.calculate_splits_fingerprint_span_and_version(input_base, [split])
        assert (span, version, split.pattern) == (0, None, pattern), name
        # Each file holds its own name, so the size tells which file was fingerprinted.
        assert f",num_files:1,total_bytes:{len(name.encode())}," in fingerprint, (name, fingerprint)
        config = example_gen_pb2.Input(splits=[split])
        from tfx.utils import proto_utils
        assert example_gen.input_file({"input_base": input_base, "input_config": proto_utils.proto_to_json(config)}
                                      ) == str(base / name)


# --- the same tf.Examples and splits as TFX's CsvExampleGen ---------------------------------------

@pytest.mark.e2e
def test_examples_and_splits_are_those_of_tfx_csv_example_gen(tmp_path):
    import tensorflow as tf
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils
    data = tmp_path / "in" / "iris (copy).csv.gz"
    data.parent.mkdir()
    data.write_bytes(gzip.compress(_with_line(5, "3.1", "").encode()))  # an empty cell: an empty feature
    input_base, pattern = example_gen.literal_input(str(data))
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=4),
        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)]))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "out")
    executor = example_gen.Executor(example_gen.Executor.Context(
        beam_pipeline_args=FAST_BEAM[0:1], tmp_dir=str(tmp_path / "tmp")))
    executor.Do({}, {"examples": [examples]}, {
        "input_base": input_base,
        "input_config": proto_utils.proto_to_json(example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=pattern)])),
        "output_config": proto_utils.proto_to_json(output_config)})
    written = {split: sorted(r.numpy() for r in tf.data.TFRecordDataset(
        [str(p) for p in (tmp_path / "out" / f"Split-{split}").glob("*.gz")], compression_type="GZIP"))
        for split in ("train", "eval")}

    # What TFX's CSV executor builds from each row (float_list / bytes_list, empty cell = empty list), and
    # where TFX's own partition function puts it.
    expected = {"train": [], "eval": []}
    for row in csv.DictReader(io.StringIO(_with_line(5, "3.1", ""))):
        example = tf.train.Example()
        for key in constants.FEATURE_KEYS:
            example.features.feature[key].float_list.value.extend([float(row[key])] if row[key] else [])
        example.features.feature[constants.LABEL_KEY].bytes_list.value.append(row[constants.LABEL_KEY].encode())
        split = ("train", "eval")[_PartitionFn(example, 2, [4, 5], output_config.split_config)]
        expected[split].append(example.SerializeToString(deterministic=True))
    assert written == {split: sorted(values) for split, values in expected.items()}
    assert 20 <= len(written["eval"]) <= 40


@pytest.mark.e2e
def test_executor_reports_a_bad_file_in_one_line(tmp_path):
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils
    data = tmp_path / "bad.csv"
    data.write_text(_with_line(9, "3.4", "wide"))
    input_base, pattern = example_gen.literal_input(str(data))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "out")
    executor = example_gen.Executor(example_gen.Executor.Context(
        beam_pipeline_args=FAST_BEAM[0:1], tmp_dir=str(tmp_path / "tmp")))
    with pytest.raises(example_gen.CsvInputError) as raised:
        executor.Do({}, {"examples": [examples]}, {
            "input_base": input_base,
            "input_config": proto_utils.proto_to_json(example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="single_split", pattern=pattern)])),
            "output_config": proto_utils.proto_to_json(example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=4),
                        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)])))})
    assert str(raised.value) == f"{data} line 9: sepal_width 'wide' is not a number"


# --- end to end ----------------------------------------------------------------------------------

@pytest.mark.e2e
def test_run_reads_the_file_named_not_a_glob_match(tmp_path):
    # The scenario: iris[1].csv beside iris1.csv. iris[1].csv is bad here, so reading iris1.csv instead
    # (as a glob would) shows as a successful run.
    data_dir = tmp_path / "dir"
    data_dir.mkdir()
    (data_dir / "iris1.csv").write_text(IRIS_TEXT)
    (data_dir / "iris[1].csv").write_text(_with_line(9, "3.4", "wide"))
    result = iris_tfx("run", "--data", str(data_dir / "iris[1].csv"), "--workdir", str(tmp_path / "work"),
                      *FAST_BEAM)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"iris-tfx: error: CsvExampleGen failed: {data_dir / 'iris[1].csv'} line 9: sepal_width 'wide' is not "
            "a number\nNo model was pushed.") in result.stderr, result.stderr


@pytest.mark.e2e
def test_run_on_a_gzipped_excel_style_csv_pushes_a_model(tmp_path):
    # gzip'd, with a byte-order mark, quoted header and fields and CRLF, under a name with glob characters,
    # beside a look-alike that is not a CSV at all.
    data_dir = tmp_path / "exports [2024]"
    data_dir.mkdir()
    data = data_dir / "iris [1]*.csv.gz"
    data.write_bytes(ACCEPTED["all_at_once.csv.gz"])
    (data_dir / "iris 1x.csv.gz").write_bytes(b"not a csv")
    workdir = tmp_path / "work"
    result = iris_tfx("run", "--data", str(data), "--workdir", str(workdir), "--epochs", "20", *FAST_BEAM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\s+CsvExampleGen\s+COMPLETE\s", result.stdout, re.M), result.stdout
    assert "Model blessed: yes" in result.stdout, result.stdout
    assert len(os.listdir(workdir / "models" / "iris")) == 1
    eval_files = list(pathlib.Path(workdir).glob("pipeline_root/CsvExampleGen/examples/*/Split-eval/*.gz"))
    assert eval_files, os.listdir(workdir / "pipeline_root")
