"""Run history: real runs recorded in ML Metadata (the session's good run, then a refused CSV on a copy of its
workdir) listed by `iris-tfx runs`, one run shown again; and each run's status from its summary."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Tuple

import pytest

from conftest import FAST_BEAM, IRIS_CSV, iris_tfx
from pipeline import history
from pipeline import summary as summary_lib

RUN_ID = r"\d{8}-\d{6}\.\d{6}"  # BeamDagRunner's pipeline_run_id: %Y%m%d-%H%M%S.%f


@pytest.fixture(scope="module")
def two_runs(pipeline_run, tmp_path_factory) -> Tuple[pathlib.Path, subprocess.CompletedProcess]:
    """The good run's workdir, copied, plus a run refused at CsvExampleGen (a non-number): good, then failed."""
    root = tmp_path_factory.mktemp("history")
    workdir = root / "work"
    shutil.copytree(pipeline_run.workdir, workdir)
    bad = root / "bad.csv"
    bad.write_text("sepal_length,sepal_width,petal_length,petal_width,species\n5.1,wide,1.4,0.2,setosa\n")
    failed = iris_tfx("run", "--workdir", str(workdir), "--data", str(bad), *FAST_BEAM, timeout=600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    return workdir, failed


@pytest.mark.e2e
def test_runs_lists_every_run_newest_first(pipeline_run, two_runs):
    workdir, _ = two_runs
    records = history.runs(str(workdir))
    assert [r.status for r in records] == ["failed", "complete"]
    failed, good = records
    assert failed.summary.started_ms > good.summary.started_ms
    assert good.run_id in pipeline_run.result.stdout  # the id the run's own summary printed
    assert good.summary.blessed and good.accuracy == pytest.approx(
        float(re.search(r"sparse_categorical_accuracy \[overall\]\s+([\d.]+)", pipeline_run.result.stdout).group(1)),
        abs=1e-4)
    assert good.pushed_version == pipeline_run.versions()[0]
    assert good.summary.data_path == str(IRIS_CSV)
    assert f"total_bytes:{IRIS_CSV.stat().st_size}," in good.summary.fingerprint
    assert failed.summary.data_path == str(workdir.parent / "bad.csv") and failed.pushed_version is None
    assert history.pushed_by(records) == {good.pushed_version: good}

    result = iris_tfx("runs", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "id", "started", "status", "accuracy", "blessed", "pushed", "data",
                                "fingerprint"]
    assert re.match(rf"{re.escape(failed.run_id)} +.* UTC +failed +- +- +- +{re.escape(str(workdir.parent))}"
                    r"/bad\.csv +-$", lines[1]), lines[1]
    assert re.match(rf"{re.escape(good.run_id)} +.* UTC +complete +{good.accuracy:.4f} +yes +"
                    rf"{good.pushed_version} +{re.escape(str(IRIS_CSV))} +[0-9a-f]{{8}}$", lines[2]), lines[2]
    assert re.fullmatch(RUN_ID, good.run_id)


@pytest.mark.e2e
def test_runs_show_gives_the_summary_again_and_the_report_path(pipeline_run, two_runs):
    workdir, failed_run = two_runs
    good = history.runs(str(workdir))[1]
    result = iris_tfx("runs", "show", good.run_id, "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("Model blessed: yes", f"Pushed: {pipeline_run.serving_dir}/{good.pushed_version}",
                 "Status: complete", f"Data: {IRIS_CSV} (span 0, fingerprint split:single_split,num_files:1,"):
        assert line in out, out
    assert re.search(r"^  sparse_categorical_accuracy \[overall\]\s+[\d.]+$", out, re.M), out
    assert f"Report: {workdir}/reports/{good.run_id}.html" in out
    failed = iris_tfx("runs", "--workdir", str(workdir), "show", history.runs(str(workdir))[0].run_id)
    assert re.search(r"^  CsvExampleGen +FAILED ", failed.stdout, re.M) and "Status: failed" in failed.stdout
    # TFX records no message for a component that raised: the run stored its own, so it is still known later.
    assert re.search(r"^CsvExampleGen failed: .*/bad\.csv line 2: sepal_width 'wide' is not a number$",
                     failed.stdout, re.M), failed.stdout


@pytest.mark.e2e
def test_runs_refuses_an_unknown_workdir_or_id(two_runs, tmp_path):
    workdir, _ = two_runs
    unknown = iris_tfx("runs", "show", "20000101-000000.000000", "--workdir", str(workdir))
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        f"iris-tfx: error: no run '20000101-000000.000000' in --workdir {workdir} (newest runs: ")
    for missing, why in ((tmp_path / "nowhere", "no such directory"), (tmp_path, "no runs recorded")):
        result = iris_tfx("runs", "--workdir", str(missing))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith(f"iris-tfx: error: --workdir {missing}: {why}")
    assert not (tmp_path / "metadata.sqlite").exists()  # looking did not create an empty store


# --- status from a run's records (the recorded states; the lock holder is this test's own process) -------------
def _summary(*states: str, started_ms: int = 2_000_000_000_000) -> summary_lib.RunSummary:
    nodes = ["CsvExampleGen", "Trainer", history.LAST_NODE][:len(states)]
    return summary_lib.RunSummary("r", [summary_lib.NodeResult(n, s, 1.0) for n, s in zip(nodes, states)],
                                  started_ms=started_ms)


def test_status_of_a_run():
    assert history.record(_summary("COMPLETE", "CACHED", "COMPLETE")).status == "complete"
    assert history.record(_summary("COMPLETE", "FAILED")).status == "failed"
    # Stopped between components (no node left RUNNING), or in one: interrupted unless its process still runs.
    assert history.record(_summary("COMPLETE", "COMPLETE"), newest=True).status == "interrupted"
    assert history.record(_summary("COMPLETE", "RUNNING"), newest=True).status == "interrupted"
    assert history.record(_summary("COMPLETE", "RUNNING"), newest=True, holder_started_ms=1).status == "running"
    # Only the newest run can be the lock holder's; a holder started after the run is another process.
    assert history.record(_summary("COMPLETE", "RUNNING"), newest=False, holder_started_ms=1).status == "interrupted"
    assert history.record(_summary("RUNNING", started_ms=1), newest=True,
                          holder_started_ms=2).status == "interrupted"


def test_summary_says_anomalies_once_and_only_when_the_data_was_checked():
    stopped = summary_lib.RunSummary("r", [summary_lib.NodeResult("CsvExampleGen", "FAILED", 1.0, "line 2: bad")])
    assert "Anomalies" not in stopped.format()  # stopped before ExampleValidator: nothing was checked
    checked = summary_lib.RunSummary("r", [summary_lib.NodeResult("AnomaliesGate", "COMPLETE", 1.0)], anomalies="")
    assert "Anomalies: none" in checked.format()
    refused = summary_lib.RunSummary("r", [summary_lib.NodeResult("AnomaliesGate", "FAILED", 1.0, "x.csv line 9: ..")],
                                     anomalies="split 'train': feature 'sepal_length': Unexpectedly high value")
    text = refused.format()  # the gate's message (with the CSV lines) follows; TFDV's words would repeat it
    assert "Anomalies: the AnomaliesGate refused the data (its message follows the summary)" in text
    assert "Unexpectedly high" not in text


def test_lock_holder_is_read_from_the_lock_file(tmp_path):
    lock = tmp_path / "iris-tfx.lock"
    assert history._lock_holder_started_ms(str(tmp_path)) is None  # no lock file: no run
    lock.write_text(f"pid {os.getpid()}, started 2026-01-01 00:00:00 UTC\n")
    import psutil  # pylint: disable=g-import-not-at-top
    assert history._lock_holder_started_ms(str(tmp_path)) == int(psutil.Process().create_time() * 1000)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    lock.write_text(f"pid {finished.stdout.strip()}, started 2026-01-01 00:00:00 UTC\n")
    assert history._lock_holder_started_ms(str(tmp_path)) is None  # that process has ended
    lock.write_text("")  # what a finished run leaves
    assert history._lock_holder_started_ms(str(tmp_path)) is None


@pytest.mark.e2e
def test_one_run_id_names_the_log_the_summary_the_report_and_the_history(pipeline_run):
    out = pipeline_run.result.stdout
    run_id = re.search(rf"^Run ({RUN_ID})$", out, re.M).group(1)
    assert re.search(rf"\(logs: .*/logs/run-{re.escape(run_id)}\.log\)", out), out.splitlines()[0]
    assert (pipeline_run.workdir / "logs" / f"run-{run_id}.log").is_file()
    report = pipeline_run.workdir / "reports" / f"{run_id}.html"
    assert f"Report: {report}" in out and report.is_file()
    assert history.runs(str(pipeline_run.workdir))[0].run_id == run_id
