"""What the user sees of a command: progress lines, logs sent to a file, failure messages."""
import contextlib
import logging
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Set


def say(line: str) -> None:
    """One line on the console now (stdout, flushed: it interleaves with the progress lines)."""
    print(line, flush=True)


def error(message: str, consequence: Optional[str] = None) -> None:
    """The one-line `iris-tfx: error: ...` on stderr, then what it means for the user (e.g. nothing pushed)."""
    print(f"iris-tfx: error: {message}" + (f"\n{consequence}" if consequence else ""), file=sys.stderr)


class ProgressHandler(logging.Handler):
    """Turns TFX's 'node X is running/finished' log records into one console line per component."""
    _START = ("node %s is running.", "Component %s is running.")
    _END = ("node %s is finished.", "Component %s is finished.")
    _CACHED = "A cached execution %d is used."  # TFX's launcher, in the node's own thread, between the two

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._started = {}
        self._node_of_thread: Dict[int, str] = {}
        self._cached: Set[str] = set()
        self.finished: List[str] = []  # in order: what an interrupted run reports

    @property
    def running(self) -> List[str]:
        return [node for node in list(self._started) if node not in self.finished]  # list(): another thread adds

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in self._START:
            self._started[record.args[0]] = time.monotonic()
            self._node_of_thread[record.thread] = record.args[0]
            say(f"  > {record.args[0]} running...")
        elif record.msg == self._CACHED and record.thread in self._node_of_thread:
            self._cached.add(self._node_of_thread[record.thread])
        elif record.msg in self._END:
            seconds = time.monotonic() - self._started.get(record.args[0], time.monotonic())
            self.finished.append(record.args[0])
            say(f"    {record.args[0]} CACHED (outputs of an earlier run with the same inputs)"
                if record.args[0] in self._cached else f"    {record.args[0]} done in {seconds:.1f}s")


@contextlib.contextmanager
def progress(handler: ProgressHandler) -> Iterator[None]:
    """While active, TFX's absl log records feed the progress handler (whatever else they are written to)."""
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("absl").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("absl").removeHandler(handler)


@contextlib.contextmanager
def logs_to(path: str) -> Iterator[None]:
    """Sends everything written to stderr (Python, TensorFlow's C++ and Beam's worker processes) to path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)

