"""Beam's multi-processing DirectRunner with workers forked from the pre-imported zygote (pipeline.beam_workers)."""
import os
import subprocess
import sys
import tempfile

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline import beam_workers

MULTI = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(autouse=True)
def workers_import_this_module(monkeypatch):
    """Beam workers unpickle _worker_facts by reference: they need this folder on their path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                    os.environ.get("PYTHONPATH")])))


def _worker_facts(x: int):
    """Runs in a Beam worker: the element, the worker's pid, its parent's command line, TF already imported?"""
    import os as os_  # pylint: disable=reimported,g-import-not-at-top  (runs in the worker)
    import sys as sys_  # pylint: disable=reimported,g-import-not-at-top
    with open(f"/proc/{os_.getppid()}/cmdline", "rb") as f:
        parent = f.read().replace(b"\0", b" ").decode()
    return x * x, os_.getpid(), parent, "tensorflow" in sys_.modules


def _facts(tmp_path, name, args):
    """Runs a small Beam job with these args; returns (pid, parent, tf_loaded) for each element, checked."""
    out = str(tmp_path / name)
    with beam.Pipeline(argv=args) as p:
        facts = p | beam.Create(list(range(20))) | beam.Map(_worker_facts)
        assert_that(facts | beam.Map(lambda f: f[0]), equal_to([x * x for x in range(20)]))
        _ = facts | beam.Map(lambda f: repr(f[1:])) | beam.io.WriteToText(out)
    return [eval(line) for f in tmp_path.glob(f"{name}*")  # pylint: disable=eval-used  (our own tuples)
            for line in f.read_text().splitlines()]


@pytest.mark.parametrize("args, expected", [
    ([], False),
    (["--direct_running_mode=multi_processing"], True),
    (["--direct_running_mode", "multi_processing", "--direct_num_workers=2"], True),
    (["--direct_running_mode=in_memory"], False),
    (["--runner=FlinkRunner", "--direct_running_mode=multi_processing"], False),
    (["--runner=DirectRunner", "--direct_running_mode=multi_processing"], True),
])
def test_only_the_multi_processing_direct_runner_uses_the_zygote(args, expected):
    assert beam_workers.uses_subprocess_workers(args) is expected


@pytest.mark.e2e
def test_workers_are_forked_from_the_zygote_and_compute_right(tmp_path):
    with beam_workers.forked_workers(MULTI):
        facts = _facts(tmp_path, "forked", MULTI)
    assert {pid for pid, _, _ in facts}.isdisjoint({os.getpid()})
    parents = {parent for _, parent, _ in facts}
    assert all("pipeline.beam_workers serve" in parent for parent in parents), parents
    assert all(tf_loaded for _, _, tf_loaded in facts), "the zygote should have imported TensorFlow already"


@pytest.mark.e2e
def test_a_long_temp_dir_still_forks_workers(tmp_path, monkeypatch):
    """A TMPDIR too long for a Unix socket path (108 bytes) puts the zygote's socket in the abstract namespace."""
    long_dir = tmp_path / ("t" * 120)
    long_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))
    with beam_workers.forked_workers(MULTI):
        facts = _facts(tmp_path, "long", MULTI)
    assert all("pipeline.beam_workers serve" in parent for _, parent, _ in facts)


@pytest.mark.e2e
def test_outside_the_context_beam_starts_its_own_workers(tmp_path):
    with beam_workers.forked_workers(MULTI):
        pass  # registers the handler; it must fall back to Beam's own command once the zygote is gone
    facts = _facts(tmp_path, "plain", MULTI)
    assert all("beam_workers" not in parent for _, parent, _ in facts)
    assert not any(tf_loaded for _, _, tf_loaded in facts)


@pytest.mark.e2e
def test_zygote_stops_with_the_context():
    with beam_workers.forked_workers(MULTI):
        path = beam_workers._socket_path  # pylint: disable=protected-access
        assert path and os.path.exists(path)
    assert beam_workers._socket_path is None  # pylint: disable=protected-access
    assert not os.path.exists(path)
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "pipeline.beam_workers serve"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "", "the zygote outlived forked_workers()"


@pytest.mark.e2e
def test_relay_without_a_zygote_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.beam_workers", "relay", str(tmp_path / "none.sock")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot reach the worker zygote" in result.stderr
