"""The training budget: a pure rule (no TensorFlow) that keeps Fisher's settings and bounds the work for any
number of rows; and one real pipeline run on ~30,000 synthetic rows that is blessed, pushed and kept to it."""
import dataclasses
import glob
import json
import math
import subprocess
import sys

import pytest

from components.hyperparameters import Budget, Hyperparameters, describe_training
from conftest import FAST_BEAM, REPO, iris_tfx

SIZES = [1, 7, 64, 120, 121, 239, 240, 1_000, 15_360, 24_000, 120_000, 1_200_000, 10_000_000]


def test_fisher_keeps_todays_settings():
    # 150 rows -> 120 train: 100 epochs of 15 steps of batch 8 at learning rate 0.01, dropout 0.1.
    assert Hyperparameters().budget(120) == Budget(batch_per_replica=8, global_batch=8, learning_rate=0.01,
                                                   dropout=0.1, steps=1500, steps_per_round=15)
    # Two replicas: per-replica batch 8 (global 16), 8 steps per epoch, as before the budget.
    assert Hyperparameters().budget(120, replicas=2) == Budget(batch_per_replica=8, global_batch=16,
                                                               learning_rate=0.01, dropout=0.1, steps=800,
                                                               steps_per_round=8)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_budget_bounds_the_work_whatever_the_rows(n, replicas):
    h = Hyperparameters()
    b = h.budget(n, replicas)
    assert b.global_batch == b.batch_per_replica * replicas
    assert h.batch_size_per_replica <= b.batch_per_replica <= h.max_batch_size_per_replica
    assert b.batch_per_replica & (b.batch_per_replica - 1) == 0  # a power of two
    assert 1 <= b.steps <= min(h.max_steps, h.epochs * math.ceil(n / b.global_batch))
    assert b.steps % b.steps_per_round == 0 and b.steps_per_round <= h.max_steps_per_round
    assert b.steps * b.global_batch <= h.max_steps * h.max_batch_size_per_replica * replicas
    assert h.learning_rate <= b.learning_rate <= h.max_learning_rate
    assert b.dropout == pytest.approx(h.dropout * min(1.0, h.dropout_examples / n))
    if b.batch_per_replica > h.batch_size_per_replica:  # grown: an epoch still has min_steps_per_epoch steps
        assert n / b.global_batch >= h.min_steps_per_epoch
    if b.batch_per_replica < h.max_batch_size_per_replica:  # and it is the largest such power of two
        assert n / (2 * b.global_batch) < h.min_steps_per_epoch


def test_batch_and_learning_rate_grow_with_the_data_until_capped():
    h = Hyperparameters()
    budgets = [h.budget(n) for n in SIZES]
    assert [b.global_batch for b in budgets] == sorted(b.global_batch for b in budgets)
    assert [b.learning_rate for b in budgets] == sorted(b.learning_rate for b in budgets)
    assert h.budget(1_920).global_batch == 128 and h.budget(1_920).learning_rate == pytest.approx(0.04)
    assert h.budget(1_200_000) == Budget(batch_per_replica=1024, global_batch=1024, learning_rate=0.05,
                                         dropout=pytest.approx(1e-4 / 1.2), steps=2000, steps_per_round=100)
    assert h.budget(10_000_000).steps == h.budget(120_000).steps == 2000  # beyond a size: no more work


def test_epochs_still_bound_small_data_and_a_user_rate_is_never_lowered():
    assert Hyperparameters(epochs=1).budget(120).steps == 15
    assert Hyperparameters(epochs=3).budget(24_000) == Budget(
        batch_per_replica=1024, global_batch=1024, learning_rate=0.05, dropout=pytest.approx(0.1 / 24),
        steps=72, steps_per_round=24)
    assert Hyperparameters(learning_rate=0.2).budget(1_000_000).learning_rate == 0.2


@pytest.mark.parametrize("kwargs", [dict(num_train_examples=0), dict(num_train_examples=10, replicas=0)])
def test_budget_rejects_nothing_to_train_on(kwargs):
    with pytest.raises(ValueError, match="no training budget .* must be >= 1"):
        Hyperparameters().budget(**kwargs)
    with pytest.raises(ValueError, match="0 epochs"):
        Hyperparameters(epochs=0).budget(120)


def test_from_custom_config_carries_the_budget_fields():
    h = Hyperparameters(max_steps=300, max_batch_size_per_replica=64, early_stopping_patience=3)
    assert Hyperparameters.from_custom_config({**dataclasses.asdict(h), "unknown": 1}) == h
    assert Hyperparameters.from_custom_config({"epochs": 7}) == Hyperparameters(epochs=7)


@pytest.mark.e2e
def test_rule_imports_no_tensorflow():
    code = "import sys, components.hyperparameters as h; h.Hyperparameters().budget(9); print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "'tensorflow'" not in result.stdout


def test_summary_line_reads_the_trainers_record(tmp_path):
    assert describe_training(str(tmp_path)) == ""
    record = dict(num_train_examples=24000, replicas=1, batch_per_replica=1024, global_batch=1024,
                  learning_rate=0.05, dropout=0.004, max_steps=1992, steps=936, num_eval_examples=6000,
                  stopped_early=True, best_step=696)
    (tmp_path / "training.json").write_text(json.dumps(record))
    assert describe_training(str(tmp_path)) == (
        "Training: steps 936 of at most 1992, stopped early, best at step 696, batch 1024, learning rate 0.05, "
        "24000 train examples, early stopping on 6000 eval examples")
    (tmp_path / "training.json").write_text(json.dumps({**record, "stopped_early": False, "num_eval_examples": 0,
                                                        "steps": 1500, "max_steps": 1500, "global_batch": 8,
                                                        "learning_rate": 0.01, "num_train_examples": 120}))
    assert describe_training(str(tmp_path)) == "Training: steps 1500 of at most 1500, batch 8, learning rate 0.01, " \
                                               "120 train examples"


@pytest.mark.e2e
def test_run_on_30000_synthetic_rows_is_blessed_pushed_and_kept_to_the_budget(tmp_path):
    from pipeline import synth
    data = tmp_path / "synthetic.csv"
    assert synth.main(["--rows", "30000", "--seed", "1", "--out", str(data)]) == 0
    workdir = tmp_path / "work"
    result = iris_tfx("run", "--data", str(data), "--workdir", str(workdir), *FAST_BEAM, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Model blessed: yes" in result.stdout
    versions = list((workdir / "models" / "iris").iterdir())
    assert len(versions) == 1 and (versions[0] / "saved_model.pb").is_file()
    (record_path,) = glob.glob(str(workdir / "pipeline_root" / "Trainer" / "model_run" / "*" / "training.json"))
    with open(record_path) as f:
        record = json.load(f)
    budget = Hyperparameters().budget(record["num_train_examples"])
    assert 22_000 < record["num_train_examples"] < 26_000  # the 4/5 train split
    assert (record["global_batch"], record["learning_rate"]) == (budget.global_batch, budget.learning_rate)
    assert 0 < record["best_step"] <= record["steps"] <= budget.steps == record["max_steps"]
    assert record["steps"] * record["global_batch"] <= 2000 * 1024
    assert record["num_eval_examples"] >= 1000  # the eval split was used for early stopping
    assert f"Training: steps {record['steps']} of at most {record['max_steps']}" in result.stdout  # in the summary
