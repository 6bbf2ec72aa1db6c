"""Which versions are served, as TF Serving's AspiredVersionsManager: version policies and labels over what the
source finds, a new version loaded (and warmed up) before the old one is unloaded, a version that fails to load
never replacing a working one, and the status and servable lookups of requests."""
import logging
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import loader
from serving.errors import ServingError, failed_precondition, invalid, not_found
from serving.metrics import Metrics
from serving.policy import aspired
from serving.servable import Servable
from serving.source import Fingerprint, VersionSource, fingerprint

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionState:
    """One version's lifecycle state, its load error and the directory fingerprint that error belongs to."""
    version: int
    path: str
    state: int = State.START
    error: Optional[ServingError] = None
    servable: Optional[Servable] = None
    fingerprint: Optional[Fingerprint] = None  # of the directory that failed to load; retried once it changes


@dataclass
class ManagedModel:
    """A configured model: its config, every version seen, its labels and the AVAILABLE versions."""
    config: model_server_config_pb2.ModelConfig
    versions: Dict[int, VersionState]
    labels: Dict[str, int]
    available: Dict[int, Servable] = field(default_factory=dict)  # the AVAILABLE versions, for lookups


def _spec_string(name: str, version: Optional[int]) -> str:
    """A ModelSpec as TF Serving's error messages print it."""
    return f"Specific({name}, {version})" if version is not None else f"Latest({name})"


class ModelManager:
    """Holds every configured model's versions; all public methods are thread-safe. Versions come from `source`
    and are loaded with `loader_options`."""

    def __init__(self, source: VersionSource, loader_options: loader.LoaderOptions, metrics: Optional[Metrics] = None,
                 allow_version_labels_for_unavailable_models: bool = False):
        self._source = source
        self._loader_options = loader_options
        self._metrics = metrics
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._models: Dict[str, ManagedModel] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()

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
            self._source.check_base_path(c.name, c.base_path)
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
        """Look for new and removed versions of every model and load/unload accordingly (the poller's call)."""
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
        """The version failed to load and its directory has not changed since."""
        st = model.versions.get(version)
        return st is not None and st.error is not None and st.fingerprint == fingerprint(path)

    def _poll_model(self, model: ManagedModel) -> None:
        """Load the aspired versions (newest first), then unload the AVAILABLE ones no longer aspired."""
        found = self._source.versions(model.config.name, model.config.base_path)
        candidates = [v for v, p in found.items() if not self._failed(model, v, p)]
        wanted = aspired(model.config, candidates)
        failed = set()
        for version in reversed(wanted):
            if not self._ensure_loaded(model, version, found[version]):
                failed.add(version)
        if failed:  # e.g. latest: the next older version takes a failed one's place, and stays if it is loaded
            wanted = aspired(model.config, [v for v in candidates if v not in failed])
        keep = set(wanted)
        for st in list(model.versions.values()):
            if st.state == State.AVAILABLE and st.version not in keep:
                self._unload(model, st)

    def _ensure_loaded(self, model: ManagedModel, version: int, path: str) -> bool:
        """Load the version unless it is AVAILABLE; False if loading it failed."""
        st = model.versions.get(version)
        return (st is not None and st.state == State.AVAILABLE) or self._load(model, version, path)

    def _load(self, model: ManagedModel, version: int, path: str) -> bool:
        """Load and warm up one version; a failure is recorded in its state (and status), never raised."""
        name = model.config.name
        st = VersionState(version, path, State.LOADING)
        with self._lock:
            model.versions[version] = st
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        directory = fingerprint(path)
        try:
            on_batch = self._metrics.batch_sizes.labels(name).observe if self._metrics else None
            servable, warmed = loader.load(name, version, path, self._loader_options, on_batch)
        except Exception as e:  # noqa: BLE001 - any failure leaves the working versions in place
            error = e if isinstance(e, ServingError) else ServingError(grpc.StatusCode.UNKNOWN, str(e))
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, error.message)
            with self._lock:
                st.state, st.error, st.fingerprint = State.END, error, directory
            if self._metrics:
                self._metrics.load_attempt(name, "error")
            return False
        if warmed:
            log.info("Finished reading warmup data for model %s version %d: %d requests", name, version, warmed)
        with self._lock:
            st.servable, st.state, st.error = servable, State.AVAILABLE, None
            model.available[version] = servable
        if self._metrics:
            self._metrics.load_attempt(name, "ok")
            self._metrics.set_loaded(name, version, True)
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
        return True

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
        """GetModelStatus: the state (and load error) of the versions the spec names, all by default."""
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
