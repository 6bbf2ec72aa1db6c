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
from typing import Dict, Iterator, List, Optional

import tensorflow as tf

log = logging.getLogger(__name__)
SUFFIX = ".tfrecord"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # UTC, microseconds: names sort by creation time
# The stamp right after the prefix: `-20261130T140003.123456Z-`.
_STAMP = re.compile(r"-(\d{8}T\d{6}\.\d{6}Z)-")
# After the prefix, the whole rest of a log file's name: the stamp, the writer (`<host>-<pid>`, group 1) and the
# file's number.
_WRITER = re.compile(r"-\d{8}T\d{6}\.\d{6}Z-(.+-\d+)-\d+" + re.escape(SUFFIX) + "$")
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
    prefix that merely starts with this one (`iris-canary` for `iris`), or not named as the writer names them
    (`iris-<stamp>-x.tfrecord`), are not among them."""
    start = len(prefix)
    return sorted(p for p in glob.glob(glob.escape(prefix) + "-*" + SUFFIX) if _WRITER.match(p, start))


def file_time(path: str) -> datetime.datetime:
    """The UTC time a log file was opened, from its name (its records are no older), so a reader can skip files."""
    stamps = _STAMP.findall(os.path.basename(path))
    if not stamps:
        raise ValueError(f"{path}: not a request log file name (<prefix>-<UTC stamp>-<host>-<pid>-<n>{SUFFIX})")
    return datetime.datetime.strptime(stamps[-1], STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


def _writers(prefix: str, files: List[str]) -> List[str]:
    """Each file's writer (`<host>-<pid>` in its name); a process numbers its files in one sequence."""
    return [_WRITER.match(path, len(prefix)).group(1) for path in files]


def read_records(prefix: str, since: Optional[datetime.datetime] = None) -> Iterator[bytes]:
    """Every whole record under `prefix`, oldest file first, with TF's reader (CRC-checked); a file's torn tail (a
    server killed mid-write) ends that file quietly, and a file removed since it was listed (a writer keeping the
    budget) is skipped. With `since`, only the files that can hold records from `since` on: a file is skipped when a
    later file of the same writer (host and pid in its name) was opened before `since`, since that writer had
    finished it by then."""
    files = log_files(prefix)
    skip = set()
    if since is not None:
        opened_next: Dict[str, datetime.datetime] = {}  # writer -> when its next file was opened
        for path, writer in reversed(list(zip(files, _writers(prefix, files)))):
            if writer in opened_next and opened_next[writer] < since:
                skip.add(path)
            opened_next[writer] = file_time(path)
    for path in files:
        if path in skip:
            continue
        try:  # TF's CRC-checked record reader without tf.data's eager cost per element (about 1 ms a record)
            yield from tf.compat.v1.io.tf_record_iterator(path)
        except (tf.errors.NotFoundError, FileNotFoundError):
            log.info("%s: removed since it was listed (the disk budget), skipped", path)
        except tf.errors.DataLossError as e:
            log.warning("%s: stopped at a torn or corrupt record: %s", path, e.message.splitlines()[0])
