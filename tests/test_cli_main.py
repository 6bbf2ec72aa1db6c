"""The iris-tfx command's assembly (iris_tfx/main.py) and the runtime preparation every entry point calls first."""
import os
import re
import subprocess
import sys

import pytest

from components import runtime
from conftest import REPO
from iris_tfx import main


def _subcommands(parser) -> list:
    """Names of the top-level commands a parser offers (as its --help lists them)."""
    return [name for action in parser._subparsers._group_actions for name in action.choices]  # pylint: disable=protected-access


def test_every_command_group_registers_its_commands():
    commands = _subcommands(main.parser())
    assert {"run", "schema", "kubeflow", "data", "serve", "predict"} <= set(commands), commands
    assert len(commands) >= len(main.COMMAND_GROUPS) and len(set(commands)) == len(commands)


@pytest.mark.parametrize("argv", [
    ["serve", "--port=8500", "--help"],
    ["serve", "-h", "--", "x"],
    ["predict", "--server", "localhost:8500", "5.1", "-3.5", "1.4", "0.2"],
    ["data", "synth", "--rows", "5", "--out", "a.csv"],
])
def test_forwarded_commands_get_their_flags_untouched(argv):
    forwarded = argv[2:] if argv[0] == "data" else argv[1:]
    assert main.parser().parse_args(argv).argv == forwarded


def test_run_flags_are_checked_by_the_run_group():
    with pytest.raises(SystemExit) as exit_:
        main.parser().parse_args(["run", "--epochs", "0"])
    assert exit_.value.code == 2


def test_prepare_sets_defaults_and_keeps_the_users_values(monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    runtime.prepare()
    runtime.prepare()  # idempotent
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.e2e
def test_preparing_and_building_the_command_line_import_no_tensorflow():
    code = ("import sys; from iris_tfx import main; from components import runtime; runtime.prepare(); "
            "main.parser(); assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_progress_says_cached_for_a_node_whose_cached_execution_is_reused(capsys):
    # TFX's launcher logs the cache hit in the node's own thread, between "running" and "finished".
    import logging
    from iris_tfx import console
    handler = console.ProgressHandler()

    def record(message, *args, thread=1):
        item = logging.LogRecord("absl", logging.INFO, __file__, 1, message, args, None)
        item.thread = thread
        handler.emit(item)

    record("node %s is running.", "Trainer", thread=1)
    record("node %s is running.", "Transform", thread=2)
    record("A cached execution %d is used.", 7, thread=2)
    record("node %s is finished.", "Transform", thread=2)
    record("node %s is finished.", "Trainer", thread=1)
    out = capsys.readouterr().out
    assert "    Transform CACHED (outputs of an earlier run with the same inputs)" in out
    assert re.search(r"^    Trainer done in \d+\.\ds$", out, re.M), out
    assert handler.finished == ["Transform", "Trainer"]
