"""Server-side batching of concurrent Run() calls, with TF Serving's BatchingParameters semantics."""
import concurrent.futures
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Hashable, List, Mapping, Optional, Tuple

import grpc
import numpy as np

from serving import defaults
from serving.errors import ServingError, invalid

Arrays = Dict[str, np.ndarray]


class _Task:
    __slots__ = ("inputs", "size", "future", "enqueued")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int):
        self.inputs, self.size = inputs, size
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.enqueued = time.monotonic()


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The 0th dimension shared by all inputs (errors worded as TF Serving's BatchingSession)."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop() if sizes else 0


class BatchScheduler:
    """Queues tasks per key (signature, inputs, shapes); num_batch_threads workers run merged batches."""

    def __init__(self, params, run: Callable[[Hashable, Arrays], Arrays], name: str,
                 on_batch: Optional[Callable[[int], None]] = None):
        def value(field: str, default: int) -> int:
            return getattr(params, field).value if params.HasField(field) else default
        self.max_batch_size = value("max_batch_size", defaults.BATCH_MAX_SIZE)
        self.timeout = value("batch_timeout_micros", defaults.BATCH_TIMEOUT_MICROS) / 1e6
        self.max_enqueued = value("max_enqueued_batches", defaults.BATCH_MAX_ENQUEUED) * self.max_batch_size
        self.split_large = params.HasField("enable_large_batch_splitting") and params.enable_large_batch_splitting.value
        threads = value("num_batch_threads", defaults.cpu_count())
        self._run = run
        self._on_batch = on_batch
        self._queues: Dict[Hashable, Deque[_Task]] = {}
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{name}-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def run(self, key: Hashable, inputs: Mapping[str, np.ndarray]) -> Arrays:
        size = batch_size(inputs)
        if size > self.max_batch_size:
            if self.split_large:
                return self._run(key, dict(inputs))
            raise invalid(f"Task size {size} is larger than maximum input batch size {self.max_batch_size}")
        task = _Task(inputs, size)
        with self._cond:
            closed = self._closed
            if not closed:
                if self._queued + size > self.max_enqueued:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was submitted is full")
                full_key = (key, tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(inputs.items())))
                self._queues.setdefault(full_key, deque()).append(task)
                self._queued += size
                self._cond.notify()
        if closed:  # the version is being unloaded, but this request holds it (as a TF Serving handle would):
            return self._run(key, dict(inputs))  # finish it unbatched rather than fail it
        return task.future.result()

    def close(self) -> None:
        """Stop accepting tasks; workers finish what is queued, then exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> Tuple[Hashable, List[_Task]]:
        with self._cond:
            while True:
                if not self._queues:
                    if self._closed:
                        return None, []
                    self._cond.wait()
                    continue
                full_key, queue = min(self._queues.items(), key=lambda kv: kv[1][0].enqueued)
                pending = sum(t.size for t in queue)
                wait = queue[0].enqueued + self.timeout - time.monotonic()
                if pending < self.max_batch_size and wait > 0 and not self._closed:
                    self._cond.wait(wait)
                    continue
                tasks, total = [], 0
                while queue and total + queue[0].size <= self.max_batch_size:
                    total += queue[0].size
                    tasks.append(queue.popleft())
                if not queue:
                    del self._queues[full_key]
                self._queued -= total
                return full_key[0], tasks

    def _work(self) -> None:
        while True:
            key, tasks = self._take()
            if not tasks:
                return
            try:
                names = tasks[0].inputs.keys()
                merged = {n: np.concatenate([t.inputs[n] for t in tasks]) if len(tasks) > 1 else tasks[0].inputs[n]
                          for n in names}
                if self._on_batch is not None:
                    self._on_batch(sum(t.size for t in tasks))
                outputs = self._run(key, merged)
                start = 0
                for t in tasks:
                    t.future.set_result({k: v[start:start + t.size] if v.ndim else v for k, v in outputs.items()})
                    start += t.size
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
                for t in tasks:
                    if not t.future.done():
                        t.future.set_exception(e)
