"""Shared fixtures: one real pipeline run (the `iris-tfx run` command) for every test that needs a model.

pytest loads this file before any test module: runtime.prepare() here comes before anything imports TensorFlow,
and the processes the tests start inherit its environment."""
import os
import pathlib
import re
import shutil
import subprocess
import time
from typing import Callable, List, Sequence, Tuple

import pytest

from components import runtime
from serving import harness

runtime.prepare()  # first statement: none of the imports above imports TensorFlow

REPO = pathlib.Path(__file__).resolve().parent.parent
IRIS_CSV = REPO / "data" / "iris.csv"
# Bad-input runs stop before training: Beam's in-memory mode starts no worker processes at all.
FAST_BEAM = ["--beam-arg=--direct_running_mode=in_memory"]
ANY_URL = re.compile(r"https?://", re.I)  # a report must fetch nothing


def iris_tfx_command() -> str:
    """The installed console command (serving/harness.py finds it for the server tests too)."""
    command = harness.iris_tfx_command()
    assert command, "iris-tfx is not installed in this virtualenv: run make setup"
    return command[0]


def wait_for(predicate: Callable[[], bool], what: str = "condition", timeout: float = 120,
             failures: Sequence[str] = ()) -> None:
    """Polls predicate every 0.2 s until it holds; fails naming what was awaited (and a few failed requests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"; failed requests: {list(failures[:3])}" if failures
                                                              else ""))


def iris_tfx(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs the installed console command in the repo, as a user would."""
    return subprocess.run([iris_tfx_command(), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


class PipelineRun:
    def __init__(self, workdir: pathlib.Path, result: subprocess.CompletedProcess):
        self.workdir = workdir
        self.result = result
        self.serving_dir = workdir / "models" / "iris"

    def versions(self) -> List[str]:
        return sorted(p.name for p in self.serving_dir.iterdir()) if self.serving_dir.exists() else []


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> PipelineRun:
    """The whole pipeline, run once with the default (multi-processing Beam) settings on data/iris.csv."""
    workdir = tmp_path_factory.mktemp("pipeline")
    run = PipelineRun(workdir, iris_tfx("run", "--workdir", str(workdir), timeout=900))
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    return run


@pytest.fixture(scope="session")
def pushed_model(pipeline_run) -> pathlib.Path:
    """The version directory (<base>/<version>) the pipeline pushed."""
    versions = pipeline_run.versions()
    assert len(versions) == 1, versions
    return pipeline_run.serving_dir / versions[0]


@pytest.fixture(scope="module")
def model(request) -> pathlib.Path:
    """The pipeline's pushed model; IRIS_TFX_TEST_MODEL_DIR=<base>/<version> reuses one an earlier run pushed."""
    path = os.environ.get("IRIS_TFX_TEST_MODEL_DIR")
    return pathlib.Path(path) if path else request.getfixturevalue("pushed_model")


def run_chromium(page: pathlib.Path, tmp_path: pathlib.Path, *mode: str) -> Tuple[str, str]:
    """Chromium, headless, on the file with the network cut off (its own empty network namespace when the
    machine allows one) and background fetching disabled: (stdout, the console lines it logged)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (make setup installs Debian's chromium)"
    isolated = subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    offline = ["unshare", "--net"] if isolated else []
    result = subprocess.run(
        offline + [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0", *mode,
                   page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, "\n".join(line for line in result.stderr.splitlines() if ":CONSOLE" in line)


def figures_in(dom: str) -> dict:
    """Each <figure id="figure-NAME"> of the dumped DOM -> whether it holds a drawn <svg> with content."""
    return {name: bool(re.search(r"<svg[^>]*>.*<(path|text|g)\b", body, re.S))
            for name, body in re.findall(r'<figure id="figure-([^"]+)"[^>]*>(.*?)</figure>', dom, re.S)}
