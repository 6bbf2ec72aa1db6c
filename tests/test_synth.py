"""The synthetic data generator: deterministic per seed, inside the schema's bounds, balanced, streamed in
chunks, without TensorFlow; its CSV passes the pipeline's own validation (TFDV against the curated schema)."""
import collections
import csv
import gzip
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from components import constants
from conftest import IRIS_CSV, REPO
from pipeline import synth

SCHEMA = REPO / "schema" / "schema.pbtxt"


def _rows(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_file_other_seed_other_rows(tmp_path):
    paths = [tmp_path / name for name in ("a.csv", "b.csv", "c.csv")]
    for path, seed in zip(paths, (5, 5, 6)):
        assert synth.main(["--rows", "2000", "--seed", str(seed), "--out", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_values_are_tenths_inside_the_schema_bounds_and_classes_balanced(tmp_path):
    path = tmp_path / "s.csv.gz"
    assert synth.main(["--rows", "30001", "--seed", "2", "--out", str(path)]) == 0
    rows = _rows(path)
    assert len(rows) == 30001 and list(rows[0]) == list(constants.CSV_COLUMNS)
    lower, upper = synth.schema_bounds(str(SCHEMA))
    values = np.array([[float(r[k]) for k in constants.FEATURE_KEYS] for r in rows])
    assert (values >= lower).all() and (values <= upper).all()
    assert all(re.fullmatch(r"\d+\.\d", r[k]) for r in rows[:2000] for k in constants.FEATURE_KEYS)
    counts = collections.Counter(r[constants.LABEL_KEY] for r in rows)
    assert sorted(counts) == sorted(constants.CLASS_NAMES) and max(counts.values()) - min(counts.values()) <= 1


def test_draws_outside_the_bounds_are_drawn_again_not_clipped():
    # Bounds that cut through Fisher's setosa petals: every kept value is inside, and none piles up on a bound.
    model = synth.fit(str(IRIS_CSV), str(SCHEMA))
    tight = synth.ClassGaussians(model.means, model.covariances, np.array([0.5, 0.5, 1.4, 0.05]), model.upper)
    x = synth.sample(tight, np.zeros(5000, dtype=int), np.random.default_rng(0))
    assert (x[:, 2] >= 1.4).all()
    assert np.mean(x[:, 2] == 1.4) < 1.5 * np.mean(x[:, 2] == 1.5)  # truncated, not a spike at the bound


def test_fitted_to_fishers_class_means():
    x, y = synth.read_csv(str(IRIS_CSV))
    model = synth.fit(str(IRIS_CSV), str(SCHEMA))
    sx, sy = map(np.concatenate, zip(*synth.chunks(model, 30_000, seed=4)))
    for c in range(len(constants.CLASS_NAMES)):
        np.testing.assert_allclose(sx[sy == c].mean(axis=0), x[y == c].mean(axis=0), atol=0.03)


def test_rows_are_streamed_in_bounded_chunks(tmp_path):
    model = synth.fit(str(IRIS_CSV), str(SCHEMA))
    sizes = [len(labels) for _, labels in synth.chunks(model, 25_001, seed=0, chunk_rows=10_000)]
    assert sizes == [10_000, 10_000, 5_001]
    tracemalloc.start()
    written = synth.write_csv(synth.chunks(model, 300_000, seed=0, chunk_rows=10_000), str(tmp_path / "big.csv"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert written == 300_000 and len((tmp_path / "big.csv").read_bytes().splitlines()) == 300_001
    assert peak < 300_000 * 4 * 8 / 5  # far below the 9.6 MB the features of all rows would need


def test_qda_accuracy_is_the_bayes_rule_on_synthetic_data():
    model = synth.fit(str(IRIS_CSV), str(SCHEMA))
    x, y = map(np.concatenate, zip(*synth.chunks(model, 12_000, seed=3)))
    accuracy = synth.qda_accuracy(x[:9_000], y[:9_000], x[9_000:], y[9_000:])
    assert 0.96 <= accuracy <= 0.995  # versicolor and virginica overlap: neither perfect nor poor
    fisher_x, fisher_y = synth.read_csv(str(IRIS_CSV))
    assert synth.qda_accuracy(fisher_x, fisher_y, fisher_x, fisher_y) == pytest.approx(0.98)  # known: 3 errors


@pytest.mark.e2e
def test_bad_arguments_are_one_clear_line(tmp_path):
    for args, message in ((["--rows", "0"], "--rows 0: must be at least 1"),
                          (["--rows", "5", "--out", str(tmp_path)], "is a directory")):
        result = subprocess.run([sys.executable, "-m", "pipeline.synth", *args], cwd=REPO, capture_output=True,
                                text=True)
        assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]


@pytest.mark.e2e
def test_generator_imports_no_tensorflow(tmp_path):
    code = (f"import sys; from pipeline import synth; synth.main(['--rows', '10', '--out', r'{tmp_path / 'x.csv'}']);"
            "print(sorted(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "'tensorflow'" not in result.stdout and "wrote 10 rows" in result.stdout


@pytest.mark.e2e
def test_synthetic_csv_passes_the_pipelines_validation(tmp_path):
    import tensorflow_data_validation as tfdv
    path = tmp_path / "s.csv"
    assert synth.main(["--rows", "3000", "--seed", "9", "--out", str(path)]) == 0
    schema = tfdv.load_schema_text(str(SCHEMA))
    statistics = tfdv.generate_statistics_from_csv(str(path))
    anomalies = tfdv.validate_statistics(statistics, schema)
    assert not anomalies.anomaly_info, anomalies
    assert statistics.datasets[0].num_examples == 3000
