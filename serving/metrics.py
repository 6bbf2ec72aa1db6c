"""Prometheus metrics (prometheus_client), exported at TF Serving's /monitoring/prometheus/metrics."""
import time
from contextlib import contextmanager
from typing import Dict, FrozenSet, Iterable, Iterator, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# model_name of requests for models the server is not configured with: one label value for all of them, so
# clients cannot grow the metrics page with made-up names (TF Serving labels the raw name: unbounded).
UNKNOWN_MODEL = "<unknown>"
_LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RequestRecord:
    """What one request's metrics are labelled with, filled in as the request goes: the model it names, the version
    that served it ("" if none did) and its status code name."""
    __slots__ = ("model", "version", "status")

    def __init__(self) -> None:
        self.model, self.version, self.status = "", "", "OK"


class Metrics:
    """Request counts by model/version/API/entrypoint/status, latency histograms, loaded versions; request metrics
    label only configured models (set_models), the others as UNKNOWN_MODEL."""

    def __init__(self) -> None:
        self._models: FrozenSet[str] = frozenset()
        self.registry = CollectorRegistry()
        self.requests = Counter(":tensorflow:serving:request_count", "Requests by model, version, API and status.",
                                ["model_name", "model_version", "API", "entrypoint", "status"],
                                registry=self.registry)
        self.latency = Histogram(":tensorflow:serving:request_latency", "Request latency in seconds.",
                                 ["model_name", "API", "entrypoint"], buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.loaded = Gauge(":tensorflow:serving:model_version_loaded", "1 for each loaded model version.",
                            ["model_name", "model_version"], registry=self.registry)
        self.in_flight = Gauge(":tensorflow:serving:requests_in_flight", "Requests being processed.",
                               ["entrypoint"], registry=self.registry)
        self.batch_sizes = Histogram(":tensorflow:serving:batching_session:processed_batch_size",
                                     "Examples per batch run by the batch scheduler.", ["model_name"],
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
                                     registry=self.registry)
        self.loads = Counter(":tensorflow:serving:load_attempt_count", "Model version loads by outcome.",
                             ["model_name", "status"], registry=self.registry)
        self.request_logs = Counter(":tensorflow:serving:request_log_count",
                                    "Sampled requests for the request log by model and outcome (written, dropped: "
                                    "queue full, error: not written).", ["model_name", "status"],
                                    registry=self.registry)
        self.request_log_files_removed = Counter(":tensorflow:serving:request_log_files_removed",
                                                 "Request log files removed to keep the disk budget.",
                                                 registry=self.registry)
        self.out_of_domain = Counter(":tensorflow:serving:input_out_of_domain_count",
                                     "Request feature values outside the bounds of the model's schema (SERVING "
                                     "environment), by model and feature (--input_validation).",
                                     ["model_name", "feature"], registry=self.registry)
        self._children: Dict[Tuple, object] = {}  # (metric, *label values) -> labelled child; labels() is slow

    def _child(self, metric, *labels: str):
        """metric.labels(*labels), cached: the request path needs it three times per request."""
        child = self._children.get((metric, *labels))
        if child is None:
            child = self._children[(metric, *labels)] = metric.labels(*labels)
        return child

    @contextmanager
    def request(self, api: str, entrypoint: str) -> Iterator[RequestRecord]:
        """Counts a request in flight and times it; the body fills the RequestRecord the count is labelled with."""
        record = RequestRecord()
        start = time.perf_counter()
        in_flight = self._child(self.in_flight, entrypoint)
        in_flight.inc()
        try:
            yield record
        finally:
            in_flight.dec()
            model = record.model if record.model in self._models else UNKNOWN_MODEL
            self._child(self.latency, model, api, entrypoint).observe(time.perf_counter() - start)
            self._child(self.requests, model, record.version, api, entrypoint, record.status).inc()

    def set_models(self, names: Iterable[str]) -> None:
        """The model names requests are labelled with (the configured ones); replaced whole, so thread-safe."""
        self._models = frozenset(names)

    def set_loaded(self, model: str, version: int, loaded: bool) -> None:
        """The model_version_loaded gauge: 1 while a version is AVAILABLE, absent otherwise."""
        if loaded:
            self.loaded.labels(model, str(version)).set(1)
        else:
            try:
                self.loaded.remove(model, str(version))
            except KeyError:
                pass

    def load_attempt(self, model: str, status: str) -> None:
        """One more load of a version of `model`, by outcome ("ok" or "error")."""
        self.loads.labels(model, status).inc()

    def request_logged(self, model: str, status: str) -> None:
        """One sampled request for the request log: "written", "dropped" (queue full) or "error"."""
        self._child(self.request_logs, model, status).inc()

    def request_log_file_removed(self) -> None:
        """One request log file removed to keep the disk budget."""
        self.request_log_files_removed.inc()

    def input_out_of_domain(self, model: str, feature: str, count: int) -> None:
        """`count` more values of `feature` outside the schema's bounds in requests for `model` (features come from
        the model's schema, so they are bounded like the model names)."""
        self._child(self.out_of_domain, model if model in self._models else UNKNOWN_MODEL, feature).inc(count)

    def exposition(self) -> bytes:
        """The Prometheus text page."""
        return generate_latest(self.registry)
