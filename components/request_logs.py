"""The request log files' names and reading, shared by the server that writes them (serving/request_log.py) and the
monitor that reads them (pipeline/monitor.py): `<prefix>-<UTC stamp>-<host>-<pid>-<n>.tfrecord`, TFRecord files of
serialized `tensorflow.serving.PredictionLog`s. The host is in the name because replicas writing to one shared volume
all run as pid 1 in their containers."""
import datetime
import glob
import logging
import os
import re
import socket
from typing import Iterator, List, Optional

import tensorflow as tf

log = logging.getLogger(__name__)
SUFFIX = ".tfrecord"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # UTC, microseconds: names sort by creation time
# The stamp right after the prefix: `-20261130T140003.123456Z-`.
_STAMP = re.compile(r"-(\d{8}T\d{6}\.\d{6}Z)-")
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")  # anything else in a host name becomes "_" in a file name
MAX_HOST_CHARS = 63  # a DNS label's limit; keeps names short whatever the host name is


def safe_host(host: Optional[str] = None) -> str:
    """This host's name (or `host`) as a file-name part: letters, digits, '.', '-'; others become '_'."""
    name = _UNSAFE.sub("_", host if host is not None else socket.gethostname())[:MAX_HOST_CHARS].strip(".")
    return name or "unknown"


def file_name(prefix: str, when: datetime.datetime, n: int, host: Optional[str] = None,
              pid: Optional[int] = None) -> str:
    """The name of this process's `n`th log file under `prefix`, opened at `when` (UTC)."""
    stamp = when.astimezone(datetime.timezone.utc).strftime(STAMP_FORMAT)
    return f"{prefix}-{stamp}-{safe_host(host)}-{os.getpid() if pid is None else pid}-{n:06d}{SUFFIX}"


def log_files(prefix: str) -> List[str]:
    """The log files written under `prefix`, oldest first (their names sort by creation time); files of another
    prefix that merely starts with this one (`iris-canary` for `iris`) are not among them."""
    start = len(prefix)
    return sorted(p for p in glob.glob(glob.escape(prefix) + "-*" + SUFFIX) if _STAMP.match(p, start))


def file_time(path: str) -> datetime.datetime:
    """The UTC time a log file was opened, from its name (its records are no older), so a reader can skip files."""
    stamps = _STAMP.findall(os.path.basename(path))
    if not stamps:
        raise ValueError(f"{path}: not a request log file name (<prefix>-<UTC stamp>-<host>-<pid>-<n>{SUFFIX})")
    return datetime.datetime.strptime(stamps[-1], STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


def read_records(prefix: str) -> Iterator[bytes]:
    """Every whole record under `prefix`, oldest first, with TF's reader (CRC-checked); a file's torn tail (a
    server killed mid-write) ends that file quietly."""
    for path in log_files(prefix):
        try:
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                yield record
        except tf.errors.DataLossError as e:
            log.warning("%s: stopped at a torn or corrupt record: %s", path, e.message.splitlines()[0])
