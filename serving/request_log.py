"""Request logging as TF Serving defines it (per-model `logging_config`: ServerRequestLogger -> RequestLogger ->
LogCollector), which its open-source server refuses to start with: sampled requests and their responses become
`tensorflow.serving.PredictionLog` records in size-rotated TFRecord files under a total disk budget, written by one
thread from a bounded queue, so a request never waits for the disk and a full queue drops the record, not the request."""
import collections
import datetime
import functools
import itertools
import logging
import os
import random
import threading
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import logging_pb2, model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2, model_server_config_pb2

from components.request_logs import SUFFIX, file_name, log_files
from serving.metrics import Metrics
from serving.tensors import ndarray_to_proto

log = logging.getLogger(__name__)
FRAME_BYTES = 16  # TFRecord framing per record: length (8) + its CRC (4) + data CRC (4)
BATCH = 1024  # records the writer takes from the queue before one flush
# After a record arrives the writer waits this long for more, then writes and flushes them together: one wake-up
# and one write per interval instead of per request, which under load costs the event loop far less GIL time.
FLUSH_SECONDS = 0.02
# The PredictionLog field each logged API's request/response pair goes to (GetModelMetadata is not logged).
LOG_FIELDS = {"predict": "predict_log", "classify": "classify_log", "regress": "regress_log",
              "multi_inference": "multi_inference_log"}


class RotatingRecordFile:
    """TFRecord files `<prefix>-<UTC time>-<host>-<pid>-<n>.tfrecord` (TF's writer: per-record CRCs, so a reader stops
    cleanly at a torn tail), a new one past `max_file_bytes`. `max_total_bytes` is the budget of ALL files under the
    prefix, every writer's (replicas share one volume): past it the oldest are removed, whoever wrote them, and a
    writer whose open file another removed notices at its next flush and writes those records again in a new file."""

    _opened = itertools.count(1)  # file numbers unique in the process: two writers of one prefix never share a name

    def __init__(self, prefix: str, max_file_bytes: int, max_total_bytes: int, on_removed: Callable[[str], None],
                 on_replaced: Callable[[str, int], None] = lambda path, records: None):
        self.prefix, self.max_file_bytes, self.max_total_bytes = prefix, max_file_bytes, max_total_bytes
        self.on_removed, self.on_replaced = on_removed, on_replaced
        parent = os.path.dirname(prefix)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._writer: Optional[tf.io.TFRecordWriter] = None
        self.path, self.size = "", 0
        self._unchecked: List[bytes] = []  # records written to the open file since it was last seen on disk
        self._others: List[Tuple[str, int]] = self._scan()

    def _scan(self) -> List[Tuple[str, int]]:
        """Every file under the prefix but the open one (all writers'), with its size, oldest first."""
        found = []
        for path in log_files(self.prefix):
            if path != self.path:
                try:
                    found.append((path, os.path.getsize(path)))
                except FileNotFoundError:  # removed by another writer since it was listed
                    pass
        return found

    def _open(self) -> None:
        self.path = file_name(self.prefix, datetime.datetime.now(datetime.timezone.utc), next(self._opened))
        self.size = 0
        self._writer = tf.io.TFRecordWriter(self.path)

    def write(self, records: List[bytes]) -> None:
        """Append `records`, flush them to the OS (readable after a kill -9), rotate and keep the budget."""
        for record in records:
            if self._writer is None:
                self._open()
            self._writer.write(record)
            self._unchecked.append(record)
            self.size += len(record) + FRAME_BYTES
            if self.size >= self.max_file_bytes:
                self._rotate()
        if self._writer is not None:
            self._writer.flush()
            self._check()
        self._keep_budget()

    def _check(self) -> None:
        """If another writer removed the open file (its budget is the prefix's total), the records written to it
        since the last check went to an unlinked file: write them again in a new one. A stat of the name per flush
        (not fstat's st_nlink: an NFS client keeps a file it has open under a hidden name, nlink 1)."""
        if os.path.exists(self.path):
            self._unchecked = []
            return
        self._writer.close()
        self._replace()

    def _replace(self) -> None:
        """Write the open file's unchecked records again in a new file: another writer removed it while open."""
        lost, self._unchecked, path = self._unchecked, [], self.path
        self._writer, self.path, self.size = None, "", 0
        self.on_replaced(path, len(lost))
        self.write(lost)

    def _rotate(self) -> None:
        self._writer.close()
        if not os.path.exists(self.path):
            self._replace()
            return
        self._unchecked = []
        self._writer, self.path, self.size = None, "", 0
        self._others = self._scan()  # every writer's files, as they are now
        self._keep_budget()

    def _keep_budget(self) -> None:
        """Remove the oldest files but the open one while all of them (every writer's, sizes as last listed at this
        writer's start or rotation) plus the open one exceed the budget."""
        total = self.size + sum(size for _, size in self._others)
        while self._others and total > self.max_total_bytes:
            path, size = self._others.pop(0)
            total -= size
            try:
                os.remove(path)
            except FileNotFoundError:  # another writer removed it first
                continue
            self.on_removed(path)

    def close(self) -> None:
        """Flush and close the open file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Entry(NamedTuple):
    """One sampled request, queued as it was answered; the writer thread makes the PredictionLog of it."""
    config: logging_config_pb2.LoggingConfig
    spec: model_pb2.ModelSpec  # as asked (the writer logs it with `version`)
    version: int  # the version that answered
    field: str  # PredictionLog field (LOG_FIELDS)
    request: object  # the request proto or its bytes, or for REST Predict its input arrays
    response: object  # the response proto or its bytes, or for REST Predict its output arrays
    timestamp: float


def _tensor_map(target, arrays: Mapping[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        ndarray_to_proto(np.asarray(array), target[name])


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint (hand-written: protobuf's Python API has no public encoder for a tag or length)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited protobuf field: its tag, the length, the bytes."""
    return tag + _varint(len(data)) + data


@functools.lru_cache(maxsize=None)
def _tags(field: str) -> Tuple[bytes, bytes, bytes, bytes]:
    """The wire tags of PredictionLog's log_metadata and `field`, and of that log's request and response (numbers
    from the descriptors): a message field's tag is its number << 3 | 2 (length-delimited)."""
    fields = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name
    sub = fields[field].message_type.fields_by_name
    numbers = (fields["log_metadata"].number, fields[field].number, sub["request"].number, sub["response"].number)
    return tuple(_varint(number << 3 | 2) for number in numbers)


def _serialized(message) -> bytes:
    """A request or response as bytes (gRPC hands over some already serialized)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class RequestLogger:
    """The server's request logger: `update(config)` takes each model's logging_config, `log(...)` samples a
    request and queues it (never blocks), one daemon thread writes; `close()` (the SIGTERM drain) writes what is
    queued and closes the files."""

    def __init__(self, metrics: Metrics, queue_size: int, max_file_bytes: int, max_total_bytes: int):
        self.metrics, self.max_file_bytes, self.max_total_bytes = metrics, max_file_bytes, max_total_bytes
        # model -> its logging config and sampling rate (a proto's fields are slow to read per request); replaced
        # whole, so read without a lock
        self._configs: Dict[str, Tuple[logging_config_pb2.LoggingConfig, float]] = {}
        # A deque and an Event, not a queue.Queue: its put (a lock, a condition) was most of a request's cost.
        self._queue: "collections.deque[Optional[_Entry]]" = collections.deque()
        self._queue_size = queue_size
        self._queued = threading.Event()  # set when there is something for the writer
        self._files: Dict[str, RotatingRecordFile] = {}  # writer thread only
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._metadata_cache: Dict[tuple, Tuple[logging_config_pb2.LoggingConfig, bytes]] = {}  # writer thread only
        self._metadata_second = -1
        self._prefixes: Dict[int, Tuple[logging_config_pb2.LoggingConfig, str]] = {}  # writer thread only

    def update(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Log the models whose config has a logging_config with a filename_prefix and a sampling rate > 0."""
        configs = {m.name: m.logging_config for m in config.model_config_list.config
                   if m.logging_config.log_collector_config.filename_prefix
                   and m.logging_config.sampling_config.sampling_rate > 0}
        for name, c in configs.items():
            if self._configs.get(name, (None,))[0] != c:
                log.info("Logging requests of model %s: sampling rate %g, files %s-*%s", name,
                         c.sampling_config.sampling_rate, c.log_collector_config.filename_prefix, SUFFIX)
        self._configs = {name: (c, c.sampling_config.sampling_rate) for name, c in configs.items()}
        with self._lock:
            if configs and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
                self._thread.start()

    def sampled(self, model: str) -> Optional[logging_config_pb2.LoggingConfig]:
        """The model's logging config if this request is to be logged (one dict look-up when it is not)."""
        logged = self._configs.get(model)
        if logged is None:
            return None
        config, rate = logged
        return config if rate >= 1 or random.random() < rate else None

    def log(self, api: str, spec: model_pb2.ModelSpec, version: int, request, response) -> None:
        """Queue the request/response of a logged API if sampled; a full queue drops it (counted)."""
        field = LOG_FIELDS.get(api)
        config = self.sampled(spec.name) if field else None
        if config is not None:
            self._put(config, spec, version, field, request, response)

    def log_predict_arrays(self, spec: model_pb2.ModelSpec, version: int, inputs: Mapping[str, np.ndarray],
                           outputs: Mapping[str, np.ndarray]) -> None:
        """REST Predict: the arrays are queued and turned into PredictRequest/Response protos by the writer."""
        config = self.sampled(spec.name)
        if config is not None:
            self._put(config, spec, version, "predict_log", inputs, outputs)

    def _put(self, config, spec: model_pb2.ModelSpec, version: int, field: str, request, response) -> None:
        if len(self._queue) >= self._queue_size:  # racing threads may overshoot by a few: harmless
            self.metrics.request_logged(spec.name, "dropped")
            return
        self._queue.append(_Entry(config, spec, version, field, request, response, time.time()))
        if not self._queued.is_set():  # the writer clears it before taking what is queued: nothing is missed
            self._queued.set()

    def record(self, entry: _Entry) -> bytes:
        """The serialized PredictionLog of one entry, assembled from the serialized metadata, request and response
        (what SerializeToString of the whole message would give, without copying the request into a new one)."""
        metadata_tag, field_tag, request_tag, response_tag = _tags(entry.field)
        if isinstance(entry.request, Mapping):  # REST Predict's arrays
            spec = model_pb2.ModelSpec()
            spec.CopyFrom(entry.spec)
            spec.version.value = entry.version
            request = predict_pb2.PredictRequest(model_spec=spec)
            _tensor_map(request.inputs, entry.request)
            response = predict_pb2.PredictResponse(model_spec=spec)
            _tensor_map(response.outputs, entry.response)
            entry = entry._replace(request=request, response=response)
        body = _field(request_tag, _serialized(entry.request)) + _field(response_tag, _serialized(entry.response))
        return _field(metadata_tag, self._metadata(entry)) + _field(field_tag, body)

    def _metadata(self, entry: _Entry) -> bytes:
        """The serialized LogMetadata of an entry, made once per model, signature, version and second."""
        second = int(entry.timestamp)
        if second != self._metadata_second:
            self._metadata_cache, self._metadata_second = {}, second
        key = (id(entry.config), entry.spec.name, entry.spec.signature_name, entry.version)
        cached = self._metadata_cache.get(key)
        if cached is None or cached[0] is not entry.config:  # `is`: an id may be reused after a config reload
            meta = logging_pb2.LogMetadata()
            meta.model_spec.CopyFrom(entry.spec)
            meta.model_spec.version.value = entry.version  # the version that answered (clears a label)
            meta.sampling_config.CopyFrom(entry.config.sampling_config)
            meta.saved_model_tags.append(tf.saved_model.SERVING)
            meta.timestamp_secs = second
            cached = self._metadata_cache[key] = (entry.config, meta.SerializeToString())
        return cached[1]

    def _removed(self, path: str) -> None:
        log.warning("Request log over its disk budget (%d bytes): removed the oldest file %s",
                    self.max_total_bytes, path)
        self.metrics.request_log_file_removed()

    def _replaced(self, path: str, records: int) -> None:
        log.warning("Request log file %s was removed while open (by another server sharing its prefix, whose budget is "
                    "all writers' total): its last %d records are written again in a new file", path, records)

    def _prefix(self, config: logging_config_pb2.LoggingConfig) -> str:
        """A config's filename_prefix, read from the proto once per config."""
        cached = self._prefixes.get(id(config))
        if cached is None or cached[0] is not config:  # `is`: an id may be reused after a config reload
            cached = self._prefixes[id(config)] = (config, config.log_collector_config.filename_prefix)
        return cached[1]

    def _file(self, prefix: str) -> RotatingRecordFile:
        file = self._files.get(prefix)
        if file is None:
            file = self._files[prefix] = RotatingRecordFile(prefix, self.max_file_bytes, self.max_total_bytes,
                                                            self._removed, self._replaced)
        return file

    def _run(self) -> None:
        """The writer thread: take what is queued (up to BATCH), write each prefix's records, flush; until None."""
        done = False
        while not done:
            self._queued.wait()
            self._queued.clear()
            if self._queue and self._queue[0] is not None:
                time.sleep(FLUSH_SECONDS)
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            if self._queue:  # more than a batch: go round again at once
                self._queued.set()
            done = None in batch
            by_prefix: Dict[str, List[Tuple[str, bytes]]] = {}
            for entry in batch:
                if entry is not None:
                    try:
                        record = self.record(entry)
                    except Exception as e:  # noqa: BLE001 - one bad record must not stop the writer
                        log.error("Request log: cannot make the record of a %s request: %s", entry.spec.name, e)
                        self.metrics.request_logged(entry.spec.name, "error")
                        continue
                    by_prefix.setdefault(self._prefix(entry.config), []).append((entry.spec.name, record))
            for prefix, items in by_prefix.items():
                try:
                    self._file(prefix).write([data for _, data in items])
                    outcome = "written"
                except Exception as e:  # noqa: BLE001 - a disk problem must never reach the requests
                    log.error("Request log %s: cannot write %d records: %s", prefix, len(items), e)
                    outcome = "error"
                for model, _ in items:
                    self.metrics.request_logged(model, outcome)
        for file in self._files.values():
            file.close()

    def close(self, timeout: float = 30) -> None:
        """Write everything queued, close the files and stop the writer thread (waits at most `timeout`)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.append(None)
        self._queued.set()
        thread.join(timeout)
