"""A refused CSV names the lines holding each offending value, once: the reader's row finder, the gate's message
from real TFDV anomalies of the curated schema, and `iris-tfx run` on bad files."""
import gzip
import pathlib
from typing import Dict, List

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_data_validation.statistics import stats_impl, stats_options
from tensorflow_metadata.proto.v0 import schema_pb2

from components import constants
from components import example_gen
from components import validation
from conftest import FAST_BEAM, IRIS_CSV, REPO, iris_tfx

HEADER, *ROWS = IRIS_CSV.read_text().splitlines()


def bad_csv(tmp_path: pathlib.Path, changes: Dict[int, Dict[str, str]], name: str = "bad.csv") -> pathlib.Path:
    """data/iris.csv with the given values replaced, keyed by the file's line number (the header is line 1)."""
    rows = [row.split(",") for row in ROWS]
    columns = HEADER.split(",")
    for line, values in changes.items():
        for column, value in values.items():
            rows[line - 2][columns.index(column)] = value
    path = tmp_path / name
    path.write_text("\n".join([HEADER] + [",".join(row) for row in rows]) + "\n")
    return path


# --- the reader's row finder ----------------------------------------------------------------------------------
ABOVE_20 = example_gen.RowCheck("sepal_length", "is above 20", lambda values: pc.greater(values, 20))


def test_find_rows_gives_lines_and_values_as_written(tmp_path):
    path = tmp_path / "x.csv"
    # Quoted header, blank lines (skipped by the reader), CRLF line ends, values as a user typed them.
    path.write_bytes(b'"sepal_length","sepal_width","petal_length","petal_width","species"\r\n'
                     b"5.1,3.5,1.4,0.2,setosa\r\n\r\n"
                     b"500,3.5,1.4,0.2,setosa\r\n"
                     b"4.9,3.0,1.4,0.2,setosa\r\n\r\n\r\n"
                     b"5e2,3.0,1.4,0.2,setosa\r\n"
                     b"21.5,3.0,1.4,0.2,setosa\r\n")
    (finding,) = example_gen.find_rows(str(path), [ABOVE_20], limit=2)
    assert finding.lines == ((4, "500"), (8, "5e2")) and finding.count == 3
    (finding,) = example_gen.find_rows(str(path), [ABOVE_20], limit=5)
    assert finding.lines == ((4, "500"), (8, "5e2"), (9, "21.5"))


def test_find_rows_reads_gzip_bom_and_an_index_column(tmp_path):
    path = tmp_path / "x.csv.gz"
    rows = [row.replace("2.6,6.9,2.3,", "2.6,6.9,23,") for row in ROWS]  # one row: a lost decimal point
    line = 2 + next(i for i, (row, typed) in enumerate(zip(ROWS, rows)) if row != typed)
    text = '\ufeff"",' + HEADER + "\n" + "\n".join(f'"{i}",{row}' for i, row in enumerate(rows, 1)) + "\n"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    missing = example_gen.RowCheck("species", "is empty", pc.is_null)
    wide = example_gen.RowCheck("petal_width", "is above 6", lambda values: pc.greater(values, 6))
    assert [(f.lines, f.count) for f in example_gen.find_rows(str(path), [missing, wide])] == [
        ((), 0), (((line, "23"),), 1)]


def test_a_header_repeated_inside_the_file_is_named(tmp_path):
    path = tmp_path / "joined.csv"
    path.write_text("\n".join([HEADER] + ROWS[:60] + [HEADER] + ROWS[60:]) + "\n")
    assert example_gen.find_problem(str(path)) == (
        f"{path} line 62 repeats the header (were two CSV files joined?): remove it")


# --- the gate's message, from real TFDV anomalies of the curated schema -----------------------------------------
def gate_message(path: pathlib.Path) -> List[str]:
    """What AnomaliesGate says of the CSV: TFDV's statistics of the features ExampleGen encodes from what its
    reader reads (rows split in two like train/eval), validated against schema/schema.pbtxt; in memory."""
    schema = text_format.Parse((REPO / "schema" / "schema.pbtxt").read_text(), schema_pb2.Schema())
    table = pa.Table.from_batches(list(example_gen.read_record_batches(str(path))))
    features = pa.RecordBatch.from_arrays(
        [example_gen.as_lists(table.column(name).combine_chunks()) for name in table.column_names], table.column_names)
    rows = pa.array(range(features.num_rows))
    splits = {"train": pc.not_equal(pc.bit_wise_and(rows, 3), 0), "eval": pc.equal(pc.bit_wise_and(rows, 3), 0)}
    statistics = {split: stats_impl.generate_statistics_in_memory(features.filter(mask), stats_options.StatsOptions())
                  for split, mask in splits.items()}
    anomalies = {split: tfdv.validate_statistics(stats, schema) for split, stats in statistics.items()}
    with pytest.raises(validation.DataValidationError) as refused:
        validation.check_data(statistics, anomalies, str(path))
    return str(refused.value).splitlines()


@pytest.mark.parametrize("changes, expected", [
    ({11: {"sepal_length": "500"}}, ["{path} line 11: sepal_length '500' is above the schema's maximum 20"]),
    ({11: {"sepal_length": "500"}, 12: {"sepal_length": "501"}, 42: {"petal_length": "-1"}}, [
        "{path} lines 11, 12: sepal_length is above the schema's maximum 20 ('500', '501')",
        "{path} line 42: petal_length '-1' is below the schema's minimum 0.05"]),
    ({21: {"sepal_width": ""}}, ["{path} line 21: sepal_width is empty (the schema requires a value)"]),
    ({41: {"species": "setosaa"}},
     ["{path} line 41: species 'setosaa' is not one of 'setosa', 'versicolor', 'virginica'"]),
    ({30: {"petal_width": "nan"}}, ["{path} line 30: petal_width 'nan' is NaN (not allowed by the schema)"]),
    ({line: {"sepal_width": "0.1"} for line in range(2, 12)}, [
        "{path} lines 2, 3, 4, 5, 6 and 5 more: sepal_width is below the schema's minimum 0.5 "
        "('0.1', '0.1', '0.1', '0.1', '0.1', ...)"]),
], ids=["out-of-range", "two-rules", "missing", "unknown-species", "nan", "many-rows"])
def test_gate_names_the_lines_of_each_problem_once(changes, expected, tmp_path):
    path = bad_csv(tmp_path, changes)
    assert gate_message(path) == ["the data does not match the schema:"] + [e.format(path=path) for e in expected]


def test_gate_keeps_tfdvs_words_for_what_no_row_shows(tmp_path):
    # Every setosa relabelled: no row breaks a rule, the split lacks a species (the schema's unique_constraints).
    path = tmp_path / "two.csv"
    path.write_text("\n".join([HEADER] + [row.replace("setosa", "versicolor") for row in ROWS]) + "\n")
    message = gate_message(path)
    assert message[0] == "the data cannot train a classifier of every species:" and str(path) not in "".join(message)


# --- iris-tfx run, as a user meets it --------------------------------------------------------------------------
@pytest.mark.e2e
def test_run_names_the_line_of_an_out_of_range_value_once(tmp_path):
    path = bad_csv(tmp_path, {11: {"sepal_length": "500"}, 77: {constants.LABEL_KEY: "setosaa"}})
    result = iris_tfx("run", "--data", str(path), "--workdir", str(tmp_path / "work"), *FAST_BEAM)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    for line in (f"{path} line 11: sepal_length '500' is above the schema's maximum 20",
                 f"{path} line 77: species 'setosaa' is not one of 'setosa', 'versicolor', 'virginica'"):
        assert output.count(line) == 1, output
    assert "Unexpectedly high value" not in output and "No model was pushed." in result.stderr  # each problem once
