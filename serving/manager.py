"""Model lifecycle as TF Serving's ServerCore: version policies, labels, file-system polling, load + warm-up
of a new version before the old one is unloaded, failed versions never replacing working ones."""
import logging
import os
import posixpath
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import defaults, inference
from serving.errors import ServingError, failed_precondition, invalid, not_found
from serving.servable import Servable

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass
class VersionState:
    version: int
    path: str
    state: int = State.START
    error: Optional[ServingError] = None
    servable: Optional[Servable] = None
    fingerprint: Optional[Tuple] = None  # of the directory that failed to load; retried once it changes


@dataclass
class ManagedModel:
    config: model_server_config_pb2.ModelConfig
    versions: Dict[int, VersionState]
    labels: Dict[str, int]
    available: Dict[int, Servable] = field(default_factory=dict)  # the AVAILABLE versions, for lookups


def _fingerprint(path: str) -> Tuple:
    """(file, size, mtime) of everything under a version directory, via tf.io.gfile (works on GCS/S3 too)."""
    entries = []
    for root, _, files in tf.io.gfile.walk(path):
        for f in files:
            try:
                st = tf.io.gfile.stat(os.path.join(root, f))
            except tf.errors.OpError:
                continue
            entries.append((os.path.relpath(os.path.join(root, f), path), st.length, st.mtime_nsec))
    return tuple(sorted(entries))


def list_versions(base_path: str) -> Dict[int, str]:
    """Integer-named sub-directories of a model's base path (TF Serving's FileSystemStoragePathSource)."""
    try:
        names = tf.io.gfile.listdir(base_path)
    except tf.errors.OpError:
        return {}
    found = {}
    for name in names:
        name = name.rstrip("/")
        path = os.path.join(base_path, name)
        if name.isdigit() and tf.io.gfile.isdir(path):
            found[int(name)] = path
    return found


def aspired(config: model_server_config_pb2.ModelConfig, candidates: List[int]) -> List[int]:
    """Versions the model's version policy wants loaded (default: the latest one)."""
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return sorted(candidates)
    if kind == "specific":
        return sorted(set(candidates) & set(policy.specific.versions))
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return sorted(candidates)[-n:]


def _resolved(path: str) -> str:
    """A path with symlinks and '..' resolved: realpath locally, normalised for URLs (gs://, s3://: no symlinks)."""
    scheme, sep, rest = path.partition("://")
    if sep and scheme != "file":
        return scheme + sep + posixpath.normpath("/" + rest).lstrip("/")
    return os.path.realpath(rest if sep else path)


def outside_roots(path: str, roots: Sequence[str]) -> Optional[str]:
    """None when `path` resolves under one of `roots` (or there are none), else where it resolves to."""
    if not roots:
        return None
    real = _resolved(path)
    for root in roots:
        top = _resolved(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return None
    return real


def _spec_string(name: str, version: Optional[int]) -> str:
    return f"Specific({name}, {version})" if version is not None else f"Latest({name})"


class ModelManager:
    """Holds every configured model's versions; all public methods are thread-safe. Also holds the request size
    limits every transport and the warm-up apply (inference.check_request)."""

    def __init__(self, session_config, batching_parameters=None, metrics=None,
                 allow_version_labels_for_unavailable_models: bool = False, base_path_roots: Sequence[str] = (),
                 max_request_elements: int = defaults.MAX_REQUEST_ELEMENTS,
                 max_request_bytes: int = defaults.MAX_REQUEST_BYTES):
        self._session_config = session_config
        self._roots = tuple(base_path_roots)
        self.max_request_elements, self.max_request_bytes = max_request_elements, max_request_bytes
        self._batching = batching_parameters
        self._metrics = metrics
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._models: Dict[str, ManagedModel] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._incomplete: Set[Tuple[str, int]] = set()
        self._outside: Set[Tuple[str, int]] = set()  # versions symlinked out of the roots, logged once

    # --- configuration -------------------------------------------------------------------------------
    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Add, update and remove models, load what their policies aspire, then set version labels."""
        configs = list(config.model_config_list.config)
        names = [c.name for c in configs]
        for c in configs:
            if not c.name or not c.base_path:
                raise invalid(f"Model config needs a name and a base_path: {c}")
            if names.count(c.name) > 1:
                raise invalid(f"Illegal to list model {c.name} multiple times in config list")
            if c.model_platform not in ("", "tensorflow"):
                raise invalid(f"Model {c.name} requested unsupported platform {c.model_platform}")
            real = outside_roots(c.base_path, self._roots)
            if real is not None:
                raise ServingError(grpc.StatusCode.PERMISSION_DENIED,
                                   f"Model {c.name}: base_path {c.base_path} resolves to {real}, outside "
                                   f"--model_base_path_roots={','.join(self._roots)}")
        with self._poll_lock:
            with self._lock:
                # Models no longer listed, or moved to another base path, have all their versions unloaded.
                removed = [self._models.pop(n) for n, m in list(self._models.items())
                           if n not in names or m.config.base_path != configs[names.index(n)].base_path]
                for c in configs:
                    if c.name in self._models:
                        self._models[c.name].config = c
                    else:
                        self._models[c.name] = ManagedModel(c, {}, {})
                if self._metrics:  # removed models keep their label until their versions are unloaded
                    self._metrics.set_models(set(names) | {m.config.name for m in removed})
            self._poll_locked()  # load new models and versions before unloading the removed ones
            for model in removed:
                for st in list(model.versions.values()):
                    if st.state == State.AVAILABLE:
                        self._unload(model, st)
            if self._metrics:
                self._metrics.set_models(names)
            self._set_labels(configs)

    def _set_labels(self, configs) -> None:
        with self._lock:
            for c in configs:
                model = self._models[c.name]
                for label, version in c.version_labels.items():
                    st = model.versions.get(version)
                    if not self._allow_unavailable_labels and (st is None or st.state != State.AVAILABLE):
                        raise failed_precondition(
                            f"Request to assign label to version {version} of model {c.name}, which is not "
                            "currently available for inference")
            for c in configs:
                self._models[c.name].labels = dict(c.version_labels)

    # --- polling and loading -------------------------------------------------------------------------
    def poll(self) -> None:
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            try:
                self._poll_model(model)
            except Exception:  # noqa: BLE001 - a bad base path must not stop the other models
                log.exception("Polling model %s failed", model.config.name)

    def _failed(self, model: ManagedModel, version: int, path: str) -> bool:
        st = model.versions.get(version)
        return st is not None and st.error is not None and st.fingerprint == _fingerprint(path)

    def _poll_model(self, model: ManagedModel) -> None:
        found = list_versions(model.config.base_path)
        for version, path in list(found.items()):
            real = outside_roots(path, self._roots)  # a version directory symlinked out of the roots
            if real is not None:
                if (model.config.name, version) not in self._outside:
                    log.error("Version %d of model %s resolves to %s, outside --model_base_path_roots; not loaded",
                              version, model.config.name, real)
                    self._outside.add((model.config.name, version))
                del found[version]
            elif not any(tf.io.gfile.exists(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
                # TFX's Pusher writes saved_model.pb last: until then the version is still being copied.
                if (model.config.name, version) not in self._incomplete:
                    log.warning("Version %d of model %s has no saved_model.pb yet; waiting for it", version,
                                model.config.name)
                    self._incomplete.add((model.config.name, version))
                del found[version]
        if not found:
            log.warning("No versions of servable %s found under base path %s", model.config.name,
                        model.config.base_path)
        for version in reversed(aspired(model.config, [v for v, p in found.items()
                                                        if not self._failed(model, v, p)])):
            st = model.versions.get(version)
            if st is None or st.state != State.AVAILABLE:
                self._load(model, version, found[version])
        keep = set(aspired(model.config, [v for v, p in found.items() if not self._failed(model, v, p)]))
        for st in list(model.versions.values()):
            if st.state == State.AVAILABLE and st.version not in keep:
                self._unload(model, st)

    def _load(self, model: ManagedModel, version: int, path: str) -> None:
        name = model.config.name
        st = VersionState(version, path, State.LOADING)
        with self._lock:
            model.versions[version] = st
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        fingerprint = _fingerprint(path)
        try:
            on_batch = self._metrics.batch_sizes.labels(name).observe if self._metrics else None
            servable = Servable(name, version, path, self._session_config, self._batching, on_batch)
            try:
                warmed = warm_up(servable, self.max_request_elements, self.max_request_bytes)
            except BaseException:
                servable.unload()
                raise
        except Exception as e:  # noqa: BLE001 - any failure leaves the working versions in place
            error = e if isinstance(e, ServingError) else ServingError(grpc.StatusCode.UNKNOWN, str(e))
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, error.message)
            with self._lock:
                st.state, st.error, st.fingerprint = State.END, error, fingerprint
            if self._metrics:
                self._metrics.load_attempt(name, "error")
            return
        if warmed:
            log.info("Finished reading warmup data for model %s version %d: %d requests", name, version, warmed)
        with self._lock:
            st.servable, st.state, st.error = servable, State.AVAILABLE, None
            model.available[version] = servable
        if self._metrics:
            self._metrics.load_attempt(name, "ok")
            self._metrics.set_loaded(name, version, True)
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _unload(self, model: ManagedModel, st: VersionState) -> None:
        name = model.config.name
        with self._lock:
            st.state = State.UNLOADING
            servable, st.servable = st.servable, None
            model.available.pop(st.version, None)
        if servable is not None:
            servable.unload()  # in-flight requests keep their reference and finish on it
        with self._lock:
            st.state = State.END
        if self._metrics:
            self._metrics.set_loaded(name, st.version, False)
        log.info("Unloaded servable version {name: %s version: %d}", name, st.version)

    def start_polling(self, interval: float) -> None:
        if interval > 0:
            self._start_thread(interval, self.poll, "fs-poll")

    def start_config_polling(self, interval: float, read_config) -> None:
        def reload() -> None:
            try:
                self.apply_config(read_config())
            except Exception as e:  # noqa: BLE001 - keep serving the previous config
                log.error("Reloading model config failed: %s", e)
        if interval > 0:
            self._start_thread(interval, reload, "config-poll")

    def _start_thread(self, interval: float, fn, name: str) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                fn()
        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    # --- lookups -------------------------------------------------------------------------------------
    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """The version a request's ModelSpec asks for: specific version, label, or latest available."""
        which = spec.WhichOneof("version_choice")
        with self._lock:
            model = self._models.get(spec.name)
            version: Optional[int] = None
            if which == "version":
                version = spec.version.value
            elif which == "version_label":
                if model is None or spec.version_label not in model.labels:
                    raise invalid(f"Unrecognized servable version label: {spec.version_label}")
                version = model.labels[spec.version_label]
            if model is not None:
                available = model.available
                if version is None and available:
                    return available[max(available)]
                if version in available:
                    return available[version]
        raise not_found(f"Servable not found for request: {_spec_string(spec.name, version)}")

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        with self._lock:
            model = self._models.get(spec.name)
            states = sorted(model.versions.values(), key=lambda s: s.version) if model else []
            if spec.HasField("version"):
                states = [s for s in states if s.version == spec.version.value]
                if not states:
                    raise not_found(f"Could not find version {spec.version.value} of model {spec.name}")
            elif spec.version_label:
                if model is None or spec.version_label not in model.labels:
                    raise invalid(f"Unrecognized servable version label: {spec.version_label}")
                states = [s for s in states if s.version == model.labels[spec.version_label]]
            if not states:
                raise not_found(f"Could not find any versions of model {spec.name}")
            for s in states:
                entry = response.model_version_status.add(version=s.version, state=s.state)
                entry.status.SetInParent()  # error_code OK is printed, as TF Serving always sets it
                if s.error is not None:
                    entry.status.error_code = s.error.code.value[0]
                    entry.status.error_message = s.error.message
        return response

    def loaded(self) -> List[Tuple[str, int]]:
        with self._lock:
            return [(n, v) for n, m in self._models.items() for v, s in m.versions.items()
                    if s.state == State.AVAILABLE]


def warm_up(servable: Servable, max_elements: int = defaults.MAX_REQUEST_ELEMENTS,
            max_bytes: int = defaults.MAX_REQUEST_BYTES) -> int:
    """Replay assets.extra/tf_serving_warmup_requests (PredictionLog TFRecords), each within the request limits;
    any failure fails the load."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind is not None:
            inference.check_request(getattr(entry, kind).request, max_elements, max_bytes)
        if kind == "predict_log":
            inference.predict(servable, entry.predict_log.request)
        elif kind == "classify_log":
            inference.classify(servable, entry.classify_log.request)
        elif kind == "regress_log":
            inference.regress(servable, entry.regress_log.request)
        elif kind == "multi_inference_log":
            inference.multi_inference(servable, entry.multi_inference_log.request)
        else:
            raise invalid(f"Unsupported log_type for warmup: {kind}")
    return count
