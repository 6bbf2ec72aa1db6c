"""Shared fixtures: one real pipeline run (the `iris-tfx run` command) for every test that needs a model.

pytest loads this file before any test module: runtime.prepare() here comes before anything imports TensorFlow,
and the processes the tests start inherit its environment."""
import os
import pathlib
import shutil
import subprocess
import sys
from typing import List

import pytest

from components import runtime

runtime.prepare()  # first statement: none of the imports above imports TensorFlow

REPO = pathlib.Path(__file__).resolve().parent.parent
IRIS_CSV = REPO / "data" / "iris.csv"
# Bad-input runs stop before training: Beam's in-memory mode starts no worker processes at all.
FAST_BEAM = ["--beam-arg=--direct_running_mode=in_memory"]


def iris_tfx_command() -> str:
    """The installed console command."""
    return shutil.which("iris-tfx") or os.path.join(os.path.dirname(sys.executable), "iris-tfx")


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
