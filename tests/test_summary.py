"""The run summary shows the new model's figures, the baseline's beside them (labelled), and the bounds missed:
a real good run, then a real second run training 2 epochs only (a worse candidate against a real baseline)."""
import pathlib
import re
import shutil
import subprocess
from typing import Tuple

import pytest

from components import constants
from conftest import iris_tfx
from pipeline import summary as summary_lib

# Every test needs the session's pipeline run and a second real run.
pytestmark = pytest.mark.e2e

ACCURACY = "sparse_categorical_accuracy"


@pytest.fixture(scope="module")
def worse_candidate(pipeline_run, tmp_path_factory) -> Tuple[pathlib.Path, subprocess.CompletedProcess]:
    """`iris-tfx run --epochs 2` on a copy of the good run's workdir: same settings otherwise, so the data
    components are cached and the good model is the baseline. MLMD holds absolute URIs, so the copy reads
    the good run's cached artifacts in place but writes only under its own directory."""
    workdir = tmp_path_factory.mktemp("worse_candidate") / "work"
    shutil.copytree(pipeline_run.workdir, workdir)
    return workdir, iris_tfx("run", "--workdir", str(workdir), "--epochs", "2", timeout=900)


def _evaluations(workdir: pathlib.Path):
    """The Evaluator's output directories under a workdir, oldest execution first."""
    return sorted((workdir / "pipeline_root" / "Evaluator" / "evaluation").iterdir(), key=lambda p: int(p.name))


def test_summary_shows_the_new_model_beside_the_labelled_baseline(pipeline_run, worse_candidate):
    _, result = worse_candidate
    assert result.returncode == 3, result.stdout + result.stderr  # completed, not blessed, nothing pushed
    out = result.stdout
    good = float(re.search(rf"^  {ACCURACY} \[overall\]\s+([\d.]+)$", pipeline_run.result.stdout, re.M).group(1))
    assert "Evaluation (eval split, new model vs baseline = the previous blessed model):" in out
    assert re.search(r"^  metric \[slice\]\s+new model\s+baseline\s+change$", out, re.M), out
    new, baseline, change = map(float, re.search(
        rf"^  {ACCURACY} \[overall\]\s+([\d.]+)\s+([\d.]+)\s+([-+][\d.]+)$", out, re.M).groups())
    assert baseline == good and new < good, out  # the 2-epoch model is worse than the good one it is compared to
    assert change == pytest.approx(new - baseline, abs=2e-4)
    for species in constants.CLASS_NAMES:
        assert re.search(rf"^  {ACCURACY} \[species={species}\]\s+[\d.]+\s+[\d.]+\s+[-+][\d.]+$", out, re.M), out
    # Both models see the same examples: the count has no change column, and no "(change vs baseline)" row.
    assert re.search(r"^  example_count \[overall\]\s+(\d+)\s+\1\s+-$", out, re.M), out
    assert "change vs baseline" not in out
    assert f"threshold not met: {ACCURACY} [overall] {new:.4f} < floor 0.9\n" in out
    assert (f"threshold not met: {ACCURACY} [overall] change {change:+.4f} < 0 allowed "
            f"(baseline {baseline:.4f})") in out
    assert "Model blessed: no" in out


def test_read_evaluation_places_each_value_by_its_model(pipeline_run, worse_candidate):
    workdir, _ = worse_candidate
    first_rows, first_failures = summary_lib.read_evaluation(str(_evaluations(pipeline_run.workdir)[0]))
    rows, failures = summary_lib.read_evaluation(str(_evaluations(workdir)[-1]))
    # The good run had no baseline: only the new model's values.
    assert first_failures == []
    assert all(row.baseline is None and row.change is None for row in first_rows.values())
    # The second run's baseline is the good model: its values are the good run's own, on every slice.
    slices = ["overall"] + [f"species={species}" for species in constants.CLASS_NAMES]
    for slice_name in slices:
        row, good = rows[f"{ACCURACY} [{slice_name}]"], first_rows[f"{ACCURACY} [{slice_name}]"]
        assert row.baseline == good.new, slice_name
        assert row.change == pytest.approx(row.new - row.baseline), slice_name
        count = rows[f"example_count [{slice_name}]"]
        assert count.new == count.baseline == first_rows[f"example_count [{slice_name}]"].new > 0
        assert count.change is None
    overall = rows[f"{ACCURACY} [overall]"]
    assert overall.new < overall.baseline
    # The thresholds apply to every slice: a floor of 0.9 on the new model and no drop from the baseline.
    expected = []
    for slice_name in slices:
        row = rows[f"{ACCURACY} [{slice_name}]"]
        if row.new < 0.9:
            expected.append(f"{ACCURACY} [{slice_name}] {row.new:.4f} < floor 0.9")
        if row.change < 0:
            expected.append(f"{ACCURACY} [{slice_name}] change {row.change:+.4f} < 0 allowed "
                            f"(baseline {row.baseline:.4f})")
    assert f"{ACCURACY} [overall] {overall.new:.4f} < floor 0.9" in expected
    assert sorted(failures) == sorted(expected)
