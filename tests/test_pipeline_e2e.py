"""End to end: `iris-tfx run` on the shipped data pushes a blessed model that predicts known samples;
bad input stops the run with a clear message, a non-zero exit code and no new model version."""
import csv
import io
import pathlib
import re
import shutil

import pytest

from components import constants
from conftest import FAST_BEAM, IRIS_CSV, iris_tfx

pytestmark = pytest.mark.e2e  # every test here starts iris-tfx or training processes

# (row number in data/iris.csv counting from 1, expected species): one clear sample of each class.
KNOWN_SAMPLES = [(1, "setosa"), (51, "versicolor"), (101, "virginica"), (150, "virginica")]


def _iris_rows():
    with open(IRIS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def test_run_pushes_a_blessed_model_in_tf_serving_layout(pipeline_run):
    out = pipeline_run.result.stdout
    versions = pipeline_run.versions()
    assert len(versions) == 1 and versions[0].isdigit()
    version_dir = pipeline_run.serving_dir / versions[0]
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    for component in ("CsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate",
                      "Transform", "Trainer", "baseline_model_resolver", "Evaluator", "Pusher"):
        assert re.search(rf"^\s+{component}\s+COMPLETE\s+[\d.]+s$", out, re.M), (component, out)
    assert "Anomalies: none" in out
    assert "Model blessed: yes" in out
    assert f"Pushed: {version_dir} (version {versions[0]})" in out
    accuracy = float(re.search(r"sparse_categorical_accuracy \[overall\]\s+([\d.]+)", out).group(1))
    assert accuracy >= 0.9
    for species in constants.CLASS_NAMES:
        assert f"sparse_categorical_accuracy [species={species}]" in out
    # TensorBoard logs in the Trainer's run dir.
    assert list(pipeline_run.workdir.glob("pipeline_root/Trainer/model_run/*/train/events.out.tfevents.*"))


def test_pushed_model_predicts_known_samples(pushed_model):
    import tensorflow as tf
    rows = _iris_rows()
    examples = [tf.train.Example(features=tf.train.Features(feature={
        key: tf.train.Feature(float_list=tf.train.FloatList(value=[float(rows[n - 1][key])]))
        for key in constants.FEATURE_KEYS})).SerializeToString() for n, _ in KNOWN_SAMPLES]
    serve = tf.saved_model.load(str(pushed_model)).signatures[constants.SERVING_SIGNATURE]
    outputs = serve(**{constants.EXAMPLES_INPUT: tf.constant(examples)})
    predicted = [s.decode() for s in outputs[constants.PREDICTED_OUTPUT].numpy()]
    assert predicted == [species for _, species in KNOWN_SAMPLES]
    assert outputs[constants.PROBABILITIES_OUTPUT].shape == (len(KNOWN_SAMPLES), len(constants.CLASS_NAMES))


def test_rerun_with_unchanged_inputs_uses_the_cache(pipeline_run):
    # Same workdir, serving dir and settings (Beam args are part of the cache key): every component is
    # reused, the Evaluator and Pusher included, so the served model is not pushed again as a new version.
    before = pipeline_run.versions()
    result = iris_tfx("run", "--workdir", str(pipeline_run.workdir))
    assert result.returncode == 0, result.stdout + result.stderr
    for component in ("CsvExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert re.search(rf"^\s+{component}\s+CACHED\s", result.stdout, re.M), (component, result.stdout)
        assert re.search(rf"^    {component} CACHED \(outputs of an earlier run", result.stdout, re.M), result.stdout
        assert f"{component} done in" not in result.stdout  # the Resolver is never cached: it runs every time
    assert pipeline_run.versions() == before
    assert f"Pushed: nothing new; this model is {pipeline_run.serving_dir / before[-1]}" in result.stdout


def test_unblessed_model_is_not_pushed(pipeline_run, served_model_dir):
    before = sorted(p.name for p in served_model_dir.iterdir())
    # One epoch (seeded, so always the same model) leaves the eval accuracy below a floor of 1.0.
    result = iris_tfx("run", "--workdir", str(pipeline_run.workdir), "--serving-dir", str(served_model_dir),
                      "--accuracy-floor", "1.0", "--epochs", "1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Model blessed: no" in result.stdout
    assert "threshold not met: sparse_categorical_accuracy [overall]" in result.stdout
    assert "not blessed" in result.stderr
    assert sorted(p.name for p in served_model_dir.iterdir()) == before


# --- bad input ------------------------------------------------------------------------------------

def _csv(rows, columns=constants.CSV_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _with(row_index: int, **changes) -> str:
    rows = _iris_rows()
    rows[row_index].update(changes)
    return _csv(rows)


BAD_INPUTS = {
    "missing_column": (lambda: _csv(_iris_rows(), [c for c in constants.CSV_COLUMNS if c != "petal_width"]),
                       ["petal_width"]),
    "extra_column": (lambda: _csv([dict(r, colour="blue") for r in _iris_rows()],
                                  constants.CSV_COLUMNS + ("colour",)), ["colour"]),
    "empty_file": (lambda: "", ["empty"]),
    "header_only": (lambda: _csv([]), ["no data rows"]),
    "non_numeric_measurement": (lambda: _with(7, sepal_width="wide"), ["sepal_width"]),
    "negative_measurement": (lambda: _with(60, petal_length="-1.4"), ["petal_length", "low"]),
    "absurd_measurement": (lambda: _with(120, sepal_length="58"), ["sepal_length", "above the schema's maximum"]),
    "unknown_species": (lambda: _with(30, species="daisy"), ["species", "daisy"]),
    "missing_label": (lambda: _with(90, species=""), ["species"]),
    # Stopped at the gate, not by a TFMA traceback in the Evaluator.
    "single_species": (lambda: _csv([r for r in _iris_rows() if r[constants.LABEL_KEY] == "setosa"]),
                       ["AnomaliesGate failed", "split 'eval': species 'versicolor' has 0 examples", "add rows of"]),
    # Files the ExampleGen executor refuses: one line naming the file and the line (components/example_gen.py).
    "semicolon_separated": (lambda: _csv(_iris_rows()).replace(",", ";"),
                            ["CsvExampleGen failed: ", "iris.csv line 1 (the header): columns are separated by ';'"]),
    "megabyte_field": (lambda: _with(3, species="v" * (1 << 20)),
                       ["CsvExampleGen failed: ", "iris.csv line 5: a field of more than 131,072 characters"]),
    "binary_file": (lambda: bytes(range(256)) * 64, ["CsvExampleGen failed: ", "iris.csv line 1: binary data"]),
    "not_utf8": (lambda: _with(4, species="s\u00e9tosa").encode("latin-1"),
                 ["CsvExampleGen failed: ", "iris.csv line 6: not UTF-8 text"]),
}


@pytest.fixture(scope="module")
def served_model_dir(pushed_model, tmp_path_factory) -> pathlib.Path:
    """A serving base dir that already holds the good model, which bad runs must leave alone."""
    base = tmp_path_factory.mktemp("served") / "iris"
    shutil.copytree(pushed_model, base / pushed_model.name)
    return base


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_the_run_without_pushing(case, served_model_dir, tmp_path):
    make_csv, expected_words = BAD_INPUTS[case]
    data = tmp_path / "data" / "iris.csv"
    data.parent.mkdir()
    content = make_csv()
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sorted(p.name for p in served_model_dir.iterdir())
    result = iris_tfx("run", "--data", str(data), "--workdir", str(tmp_path / "work"),
                      "--serving-dir", str(served_model_dir), *FAST_BEAM)
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr
    assert "error" in error and "No model was pushed." in error, error
    assert "[while running" not in error, error  # Beam's suffix only repeats the component's name
    assert "Traceback" not in result.stdout + error, error
    for word in expected_words:
        assert word in error, (word, error)
    assert sorted(p.name for p in served_model_dir.iterdir()) == before
    assert not re.search(r"^\s+(Trainer|Pusher)\s+COMPLETE", result.stdout, re.M), result.stdout
