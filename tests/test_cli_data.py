"""The data-facing CLI commands as a user runs them: `iris-tfx data synth` and `iris-tfx schema propose`."""
import csv
import gzip

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from components import constants
from conftest import IRIS_CSV, iris_tfx

pytestmark = pytest.mark.e2e  # every test here starts iris-tfx or training processes


def test_data_synth_writes_the_rows_asked_for(tmp_path):
    out = tmp_path / "synthetic.csv.gz"
    result = iris_tfx("data", "synth", "--rows", "300", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote 300 rows to {out}" in result.stdout
    with gzip.open(out, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and set(rows[0]) == set(constants.CSV_COLUMNS)
    result = iris_tfx("data", "synth", "--rows", "0", "--out", str(out))
    assert result.returncode == 2 and "--rows 0: must be at least 1" in result.stderr, result.stderr


def test_schema_propose_takes_the_data_path_literally(tmp_path):
    """`iris[1].csv` is that file, not a pattern matching `iris1.csv` (a one-row file without 'virginica')."""
    literal = tmp_path / "iris[1].csv"
    literal.write_bytes(IRIS_CSV.read_bytes())
    (tmp_path / "iris1.csv").write_text(",".join(constants.CSV_COLUMNS) + "\n5.1,3.5,1.4,0.2,setosa\n")
    out = tmp_path / "proposed.pbtxt"
    result = iris_tfx("schema", "propose", "--data", str(literal), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    schema = text_format.Parse(out.read_text(), schema_pb2.Schema())
    assert {f.name for f in schema.feature} == set(constants.CSV_COLUMNS)
    assert set(schema.string_domain[0].value) == set(constants.CLASS_NAMES)
    (tmp_path / "bad.csv").write_text("sepal_length;sepal_width;petal_length;petal_width;species\n")
    result = iris_tfx("schema", "propose", "--data", str(tmp_path / "bad.csv"), "--out", str(out))
    assert result.returncode == 1 and "separated by ';'" in result.stderr and "Traceback" not in result.stderr
