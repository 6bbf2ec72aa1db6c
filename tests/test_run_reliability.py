"""`iris-tfx run` reliability: flag values checked, unwritable directories found before any work, one run per
workdir at a time, and an interrupted run stops its Beam workers, removes its temp folder and says what it pushed."""
import contextlib
import os
import pathlib
import queue
import re
import signal
import subprocess
import threading
import time
from typing import List

import psutil
import pytest

from conftest import FAST_BEAM, REPO, iris_tfx, iris_tfx_command

PUSHED = re.compile(r"^Pushed: (\S+) \(version (\d+)\)$", re.M)


# --- command-line values ----------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("flag, value, expected", [
    ("--epochs", "-5", "argument --epochs: must be an integer >= 1 (got -5)"),
    ("--epochs", "0", "argument --epochs: must be an integer >= 1 (got 0)"),
    ("--accuracy-floor", "nan", "argument --accuracy-floor: must be a number in [0, 1] (got nan)"),
    ("--accuracy-floor", "1.5", "argument --accuracy-floor: must be a number in [0, 1] (got 1.5)"),
    ("--accuracy-floor", "-1", "argument --accuracy-floor: must be a number in [0, 1] (got -1)"),
    ("--cpu-replicas", "-3", "argument --cpu-replicas: must be an integer >= 0 (got -3)"),
])
def test_out_of_range_values_are_refused(flag, value, expected, tmp_path):
    workdir = tmp_path / "work"
    result = iris_tfx("run", "--workdir", str(workdir), flag, value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert not workdir.exists()


@pytest.mark.e2e
def test_kubeflow_compile_refuses_an_accuracy_floor_above_one(tmp_path):
    output = tmp_path / "pipeline.yaml"
    result = iris_tfx("kubeflow", "compile", "--image", "registry.example.com/iris-tfx:0.1.0",
                      "--pipeline-root", "gs://bucket/root", "--data", "gs://bucket/iris.csv",
                      "--serving-dir", "/models/iris", "--accuracy-floor", "1.5", "--output", str(output))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "argument --accuracy-floor: must be a number in [0, 1] (got 1.5)" in result.stderr
    assert not output.exists()


# --- unwritable directories -------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("flag", ["--workdir", "--serving-dir"])
def test_a_directory_under_a_file_fails_before_any_component(flag, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dirs = {"--workdir": str(tmp_path / "work"), "--serving-dir": str(tmp_path / "models"), flag: str(blocker / "x")}
    result = iris_tfx("run", *[part for item in dirs.items() for part in item], *FAST_BEAM)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"iris-tfx: error: {flag} {blocker / 'x'}: {blocker} is not a directory\n" in result.stderr
    assert "No model was pushed." in result.stderr
    assert "running" not in result.stdout and not (tmp_path / "work").exists()


@pytest.mark.e2e
def test_a_serving_dir_that_cannot_be_written_fails_before_any_component(tmp_path):
    # Even root cannot create files in /proc, so the probe file fails where chmod would not.
    result = iris_tfx("run", "--workdir", str(tmp_path / "work"), "--serving-dir", "/proc/iris-tfx-test/iris",
                      *FAST_BEAM)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "iris-tfx: error: --serving-dir /proc/iris-tfx-test/iris: cannot write in /proc" in result.stderr
    assert "running" not in result.stdout and not (tmp_path / "work").exists()


# --- one run per workdir ----------------------------------------------------------------------------

def _versions(serving_dir: pathlib.Path) -> List[str]:
    return sorted(p.name for p in serving_dir.iterdir()) if serving_dir.exists() else []


@pytest.mark.e2e
def test_two_runs_started_together_on_one_workdir(tmp_path):
    workdir = tmp_path / "work"
    command = [iris_tfx_command(), "run", "--workdir", str(workdir), *FAST_BEAM]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(p, *p.communicate(timeout=900)) for p in processes]
    finished = [r for r in results if r[0].returncode != 4]
    refused = [r for r in results if r[0].returncode == 4]
    assert len(finished) == 1 and len(refused) == 1, [(p.returncode, out, err) for p, out, err in results]
    (winner, out, err), (_, refused_out, refused_err) = finished[0], refused[0]
    assert winner.returncode == 0, out + err
    assert re.search(rf"another iris-tfx run is using it \(pid {winner.pid}, started [\d-]+ [\d:]+ UTC\)",
                     refused_err), refused_err
    assert "Nothing was started." in refused_err and "Run " not in refused_out
    path, version = PUSHED.search(out).groups()
    assert _versions(workdir / "models" / "iris") == [version] and path == str(workdir / "models" / "iris" / version)
    # The lock is gone with the winner: a run with unchanged inputs reuses everything and pushes nothing new.
    again = iris_tfx("run", "--workdir", str(workdir), *FAST_BEAM)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Pushed: nothing new; this model is {path} (version {version})" in again.stdout
    assert _versions(workdir / "models" / "iris") == [version]


# --- interruption -----------------------------------------------------------------------------------

class _Run:
    """A real `iris-tfx run` in the background, its stdout read line by line."""

    def __init__(self, tmp_path: pathlib.Path, *args: str) -> None:
        self.temp = tmp_path / "tmp"  # where the run's temp folders go
        self.temp.mkdir()
        self.workdir = tmp_path / "work"
        self.process = subprocess.Popen(
            [iris_tfx_command(), "run", "--workdir", str(self.workdir), *args], cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, TMPDIR=str(self.temp)))
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()

    def wait_for_line(self, text: str) -> None:
        while True:
            line = self.lines.get(timeout=600)
            if text in line:
                return

    def descendants(self) -> List[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def forked_worker_started(self) -> bool:
        """Whether a Beam worker forked by the zygote (a grandchild running pipeline.beam_workers) is running."""
        for process in self.descendants():
            with contextlib.suppress(psutil.Error):
                if process.ppid() != self.process.pid and "pipeline.beam_workers" in " ".join(process.cmdline()):
                    return True
        return False

    def interrupt(self, signum: int) -> str:
        """Sends signum; returns the run's stderr once it has exited."""
        self.process.send_signal(signum)
        self.process.wait(timeout=60)
        return self.process.stderr.read()


def _still_running(processes: List[psutil.Process]) -> List[psutil.Process]:
    """Those still running after a few seconds (zombies, killed but not reaped by init, count as stopped)."""
    _, alive = psutil.wait_procs(processes, timeout=5)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_a_run_refused_while_the_holder_writes_its_line_still_names_it(tmp_path):
    # The holder writes "pid N, started T" just after taking the lock; a run refused in between waits for it.
    import fcntl
    from iris_tfx import run
    (tmp_path / "work").mkdir()
    path = tmp_path / "work" / "iris-tfx.lock"
    with open(path, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        writer = threading.Timer(0.3, lambda: (holder.write("pid 1, started 2026-11-30 10:00:00 UTC\n"),
                                               holder.flush()))
        writer.start()
        with pytest.raises(run.WorkdirBusy, match=r"another iris-tfx run is using it \(pid 1, started"):
            with run.workdir_lock(str(tmp_path / "work")):
                pass
        writer.join()


@pytest.mark.e2e
def test_sigterm_stops_the_beam_workers_and_removes_their_temp_folder(tmp_path):
    run = _Run(tmp_path)  # the default multi-processing Beam: a zygote that forks worker processes
    run.wait_for_line("> CsvExampleGen running...")
    while not run.forked_worker_started():
        assert run.process.poll() is None, run.process.stderr.read()
        time.sleep(0.2)
    assert list(run.temp.glob("iris-tfx-run-*/iris-tfx-workers-*"))
    children = run.descendants()
    err = run.interrupt(signal.SIGTERM)
    assert run.process.returncode == 143, err
    assert re.search(r"^iris-tfx: interrupted by SIGTERM during \w+: nothing was pushed\.$", err, re.M), err
    assert not _still_running(children)
    assert not list(run.temp.iterdir())  # the workers' folder (iris-tfx-workers-*) and Beam's and TF's
    assert not (run.workdir / "models" / "iris").exists()


@pytest.mark.e2e
def test_sigint_during_training_pushes_nothing_and_a_rerun_succeeds(tmp_path):
    run = _Run(tmp_path, *FAST_BEAM)
    run.wait_for_line("> Trainer running...")
    err = run.interrupt(signal.SIGINT)
    assert run.process.returncode == 130, err
    assert re.search(r"^iris-tfx: interrupted by SIGINT during Trainer: nothing was pushed\.$", err, re.M), err
    assert not list(run.temp.iterdir())
    serving_dir = run.workdir / "models" / "iris"
    assert _versions(serving_dir) == []
    again = iris_tfx("run", "--workdir", str(run.workdir), *FAST_BEAM)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^\s+Trainer\s+COMPLETE\s", again.stdout, re.M), again.stdout
    path, version = PUSHED.search(again.stdout).groups()
    assert _versions(serving_dir) == [version] and path == str(serving_dir / version)
