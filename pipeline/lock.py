"""One run per workdir: the lock `iris-tfx run` holds, and who holds it (for the run history's `running`)."""
import contextlib
import datetime
import fcntl
import os
import re
import time
from typing import Iterator, Optional

from pipeline.config import PipelineConfig

_LINE = "pid {pid}, started {started}\n"  # what the holder writes into the lock file
_PID = re.compile(r"^pid (\d+),")


class WorkdirBusy(Exception):
    """Another process holds the workdir's lock."""


def _lock_holder(descriptor: int, wait_seconds: float = 2.0) -> str:
    """The holder's 'pid N, started T' line. It writes that line just after taking the lock, so a run refused in
    that instant waits briefly for it rather than naming no one."""
    deadline = time.monotonic() + wait_seconds
    while True:
        holder = os.pread(descriptor, 256, 0).decode(errors="replace").strip()
        if holder or time.monotonic() > deadline:
            return holder or "starting up"
        time.sleep(0.02)


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """One run per workdir: an exclusive flock on <workdir>/iris-tfx.lock for the whole run. The kernel
    releases it when this process ends, however it ends, so a lock is never stale."""
    os.makedirs(workdir, exist_ok=True)
    path = PipelineConfig(workdir=workdir).lock_path
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(descriptor)
            raise WorkdirBusy(f"--workdir {workdir}: another iris-tfx run is using it ({holder}); "
                              "wait for it to finish or use another --workdir") from None
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, _LINE.format(pid=os.getpid(), started=now).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)  # whoever takes the lock next writes its own pid
    finally:
        os.close(descriptor)


def holder_pid(workdir: str) -> Optional[int]:
    """The pid written by the run holding the workdir's lock (None if no run wrote one). Reads the file instead of
    trying the lock, which could make a run starting at that moment exit busy."""
    try:
        with open(PipelineConfig(workdir=workdir).lock_path, encoding="utf-8") as f:
            match = _PID.match(f.read())
    except OSError:
        return None
    return int(match.group(1)) if match else None
