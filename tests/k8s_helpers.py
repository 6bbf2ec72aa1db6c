"""What the Kubernetes tests share: the names the manifests (k8s/) use, rendering by `kubectl kustomize`, lookups in
the rendered objects, TF Serving's text-format config files, strict validation of built-in kinds and the Dockerfile.

Each overlay is rendered by `kubectl kustomize` (Debian's kubernetes-client, or any kubectl; $KUBECTL names another
binary), once per directory; tests get deep copies.
"""
import copy
import functools
import os
import pathlib
import re
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.config import BatchingParameters

REPO = pathlib.Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
BASE = K8S / "base"
OVERLAYS_DIR = K8S / "overlays"
KSERVE = K8S / "kserve"

# The Kubernetes version the manifests are validated against (bundled by kubernetes-validate 1.37).
K8S_VERSION = "1.30.0"

SERVING_IMAGE = "tensorflow/serving"
DEPLOYMENT = "iris-serving"
SERVING_CONTAINER = "model-server"
CONFIGMAP = "iris-serving-config"
MODELS_PVC = "iris-models"
TFJOB = "iris-train"
TRAIN_MODULE = "components.train_standalone"
TRAIN_FLAGS = ("--transformed-examples", "--transform-graph", "--output")
PROJECT_IMAGE = "iris-tfx"  # the image name in the base, replaced by each overlay's `images:`
PROJECT_SERVER_COMMAND = ["iris-tfx", "serve"]  # the project's drop-in for tensorflow_model_server
# The prod overlay's lockdown (flags of `iris-tfx serve` that tensorflow_model_server does not have).
LOCKDOWN_FLAGS = {"enable_model_management": "false", "model_base_path_roots": "/models"}
# Request logging (prod's models.config logging_config) and its monitor (the prod overlay's CronJob).
REQUEST_LOGS_PVC = "iris-request-logs"
PIPELINE_DATA_PVC = "iris-pipeline-data"
MONITORING_PVC = "iris-monitoring"
MONITOR = "iris-monitor"
MONITOR_CONTAINER = "monitor"
MONITOR_COMMAND = ["iris-tfx", "monitor"]
# Flags of `iris-tfx serve` for the request log's files (serving/config.py), beside TF Serving's.
REQUEST_LOG_FLAGS = {"request_log_queue_size", "request_log_file_max_bytes", "request_log_max_total_bytes"}
# Kubeflow Pipelines' ML Metadata gRPC server (its manifests: Service metadata-grpc-service, pods
# component: metadata-grpc-server, port 8080) and the cluster DNS, the monitor's only destinations.
MLMD_NAMESPACE = {"kubernetes.io/metadata.name": "kubeflow"}
MLMD_PODS = {"component": "metadata-grpc-server"}
DNS_NAMESPACE = {"kubernetes.io/metadata.name": "kube-system"}
DNS_PODS = {"k8s-app": "kube-dns"}
# NetworkPolicy: the label of client pods (and of namespaces whose labelled pods are clients), and Prometheus.
CLIENT_LABEL = {"iris-tfx/serving-client": "true"}
PROMETHEUS_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}
PROMETHEUS_PODS = {"app.kubernetes.io/name": "prometheus"}

# Flags of tensorflow_model_server (tensorflow_serving/model_servers/main.cc) that a manifest may use.
TF_SERVING_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "enable_batching", "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "model_config_file", "model_config_file_poll_wait_seconds", "model_name", "model_base_path",
    "max_num_load_retries", "load_retry_interval_micros", "file_system_poll_wait_seconds",
    "flush_filesystem_caches", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments", "grpc_max_threads",
    "enable_model_warmup", "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph",
}

# Kustomization fields known to kustomize v2.0.3, the one built into Debian 12's kubectl (1.20).
KUSTOMIZE_V2_FIELDS = {
    "apiVersion", "kind", "namespace", "namePrefix", "nameSuffix", "commonLabels", "commonAnnotations",
    "resources", "bases", "crds", "configMapGenerator", "secretGenerator", "generatorOptions",
    "patchesStrategicMerge", "patchesJson6902", "images", "vars", "configurations",
}

CUSTOM_KINDS = {"TFJob", "InferenceService"}
SERVING_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                 "ConfigMap"}
OVERLAY_KINDS = SERVING_KINDS | {"Namespace", "PersistentVolumeClaim", "TFJob"}
OVERLAY_PVCS = {MODELS_PVC, PIPELINE_DATA_PVC}
# The overlays whose model server (`iris-tfx serve`) logs requests, with the monitor CronJob, its NetworkPolicy and
# volumes: dev runs tensorflow/serving, which refuses a logging_config.
MONITORED_OVERLAYS = {"prod"}


def overlay_kinds(overlay: str) -> set:
    """The kinds an overlay renders: the base's, plus the monitor's CronJob where requests are logged."""
    return OVERLAY_KINDS | ({"CronJob"} if overlay in MONITORED_OVERLAYS else set())


def overlay_pvcs(overlay: str) -> set:
    """The claims an overlay renders: the base's, plus the request logs and monitor results where logged."""
    return OVERLAY_PVCS | ({REQUEST_LOGS_PVC, MONITORING_PVC} if overlay in MONITORED_OVERLAYS else set())


# --- rendering ----------------------------------------------------------------------------------

class OverlayError(ValueError):
    """An overlay name that k8s/overlays does not have."""


def available_overlays() -> List[str]:
    """The overlay directories under k8s/overlays (each with a kustomization.yaml)."""
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def kubectl() -> str:
    """The kubectl binary that renders the manifests; a clear failure when there is none."""
    name = os.environ.get("KUBECTL", "kubectl")
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it (Debian: `apt-get install -y kubernetes-client`) or set "
                    "KUBECTL to a kubectl binary; the manifests are rendered with `kubectl kustomize`")
    return path


@functools.lru_cache(maxsize=None)
def _render(directory: str) -> Tuple[dict, ...]:
    """Renders once per directory (kubectl takes a fraction of a second each time)."""
    proc = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"`kubectl kustomize {directory}` failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(directory: pathlib.Path) -> List[dict]:
    """The objects `kubectl kustomize DIRECTORY` renders (deep copies: tests may change them)."""
    return copy.deepcopy(list(_render(str(directory))))


def render_overlay(name: str) -> List[dict]:
    """The rendered objects of one overlay by name; an unknown name is a clear error."""
    if name not in available_overlays():
        raise OverlayError(f"unknown overlay {name!r}: k8s/overlays has {', '.join(available_overlays())}")
    return render(OVERLAYS_DIR / name)


def one(objects: List[dict], kind: str, name: Optional[str] = None) -> dict:
    """The single object of KIND (and NAME); anything but exactly one fails the test."""
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kustomization(directory: pathlib.Path) -> dict:
    """DIRECTORY's kustomization.yaml as written (not rendered)."""
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def serving_container(objects: List[dict]) -> dict:
    """The model server container of the serving Deployment."""
    pod = one(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == SERVING_CONTAINER)


def monitor_pod(objects: List[dict]) -> dict:
    """The pod spec of the monitor CronJob's Jobs."""
    return one(objects, "CronJob", MONITOR)["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def monitor_container(objects: List[dict]) -> dict:
    """The container that runs `iris-tfx monitor` in the monitor CronJob's pods."""
    return next(c for c in monitor_pod(objects)["containers"] if c["name"] == MONITOR_CONTAINER)


def runs_tf_serving(container: dict) -> bool:
    """Whether the serving container runs tensorflow/serving (else the project image's `iris-tfx serve`)."""
    return container["image"].partition(":")[0] == SERVING_IMAGE


def flags(container: dict) -> Dict[str, str]:
    """A container's args as {flag: value}; each must be --name=value, given once."""
    out = {}
    for arg in container.get("args", []):
        assert arg.startswith("--") and "=" in arg, f"write tensorflow_model_server flags as --name=value: {arg}"
        name, value = arg[2:].split("=", 1)
        assert name not in out, f"flag --{name} given twice"
        out[name] = value
    return out


def mount_of_volume(container: dict, volume: str) -> dict:
    """The one mount of VOLUME in CONTAINER."""
    mounts = [m for m in container.get("volumeMounts", []) if m["name"] == volume]
    assert len(mounts) == 1, f"volume {volume} is mounted {len(mounts)} times in {container['name']}"
    return mounts[0]


def volume_mounted_at(pod: dict, container: dict, path: str) -> Tuple[dict, dict]:
    """The volume (and its mount) whose mountPath contains PATH (the longest such mount)."""
    mounts = [m for m in container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume of {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume, mount


_QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}


def quantity(value: object) -> float:
    """A Kubernetes quantity ('500m', '1Gi', 2) as a number, to compare requests with limits."""
    match = _QUANTITY.match(str(value))
    assert match, f"unparsed quantity {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


# --- TF Serving's text-format messages ---------------------------------------------------------------

def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    """A models.config text as TF Serving parses it."""
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def parse_batching(text: str) -> BatchingParameters:
    """A batching_parameters file as TF Serving parses it (the descriptor serving/ declares; the
    tensorflow-serving-api wheel does not ship session_bundle_config.proto)."""
    return text_format.Parse(text, BatchingParameters())


def configmap_files(overlay: str) -> Dict[str, pathlib.Path]:
    """The files of the serving ConfigMap in OVERLAY: the base's generator files, each replaced by the overlay's own
    file of that name if it has one (its generator merges it over the base's)."""
    (generator,) = [g for g in kustomization(BASE)["configMapGenerator"] if g["name"] == CONFIGMAP]
    files = {}
    for name in generator["files"]:
        own = OVERLAYS_DIR / overlay / name
        files[name] = own if own.is_file() else BASE / name
    return files


def validate_builtin(obj: dict) -> None:
    """Strict validation of a built-in object; a kind kubernetes-validate has no schema for is a failure."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- the prod model server run for real, its volumes moved to local directories -----------------------------------

def moved_path(path: str, mounts: Dict[str, pathlib.Path]) -> str:
    """PATH with the mount path it lies under (a key of MOUNTS) replaced by that mount's local directory."""
    for mount, local in mounts.items():
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return str(local) + path[len(mount.rstrip("/")):]
    return path


def server_mounts(container: dict, root: pathlib.Path) -> Dict[str, pathlib.Path]:
    """The serving container's config, models and (if mounted) request logs mount paths -> directories under ROOT."""
    names = {"config": "etc", "models": "models", "request-logs": "logs"}
    return {m["mountPath"]: root / names[m["name"]] for m in container["volumeMounts"] if m["name"] in names}


def write_serving_config(objects: List[dict], mounts: Dict[str, pathlib.Path]) -> model_server_config_pb2.ModelServerConfig:
    """The serving ConfigMap's files written where its mount is moved to, models.config's base paths and log prefixes
    moved too; returns that models.config."""
    configmap = one(objects, "ConfigMap", CONFIGMAP)["data"]
    config = parse_models_config(configmap["models.config"])
    for model in config.model_config_list.config:
        model.base_path = moved_path(model.base_path, mounts)
        collector = model.logging_config.log_collector_config
        collector.filename_prefix = moved_path(collector.filename_prefix, mounts)
    etc = pathlib.Path(moved_path(mount_of_volume(serving_container(objects), "config")["mountPath"], mounts))
    etc.mkdir(parents=True)
    (etc / "models.config").write_text(text_format.MessageToString(config))
    (etc / "batching_parameters.txt").write_text(configmap["batching_parameters.txt"])
    return config


def server_args(container: dict, mounts: Dict[str, pathlib.Path]) -> List[str]:
    """The serving container's flags with their paths moved, without the ports (the test harness picks free ones)."""
    return [f"--{name}={moved_path(value, mounts)}" for name, value in flags(container).items()
            if name not in ("port", "rest_api_port")]


# --- the pipeline image and locked-down containers ---------------------------------------------------------

def dockerfile_instructions() -> List[Tuple[str, str]]:
    """The Dockerfile as (KEYWORD, rest) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_user() -> Tuple[int, int]:
    """The numeric uid and gid of the image's last USER instruction (a name would not prove non-root)."""
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile sets no USER: the image would run as root"
    match = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert match, f"USER {users[-1]}: give a numeric uid:gid, so that Kubernetes' runAsNonRoot can verify it"
    return int(match.group(1)), int(match.group(2))


def assert_container_locked_down(pod: dict, container: dict, name: str) -> None:
    """Non-root, no privilege escalation, no capabilities, a read-only root filesystem with an emptyDir /tmp."""
    security = container.get("securityContext", {})
    assert security.get("allowPrivilegeEscalation") is False, name
    assert security.get("capabilities", {}).get("drop") == ["ALL"] and not security["capabilities"].get("add"), name
    assert security.get("readOnlyRootFilesystem") is True, name
    assert security.get("privileged", False) is False, name
    assert (security.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")) is True, name
    tmp_volume, _ = volume_mounted_at(pod, container, "/tmp")
    assert "emptyDir" in tmp_volume, name

