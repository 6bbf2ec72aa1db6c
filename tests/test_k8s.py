"""Offline checks of the Kubernetes manifests (k8s/) and the pipeline image (Dockerfile).

Each overlay is rendered by `kubectl kustomize` (Debian's kubernetes-client, or any kubectl; $KUBECTL
names another binary), every built-in object is validated by kubernetes-validate in strict mode against a
pinned Kubernetes version, the custom resources (TFJob, InferenceService) against schemas of their
required fields written here, and ports, model name and paths are cross-checked between the manifests,
the ConfigMap's models.config, serving.defaults, the local server's flags and the pipeline image.
The rendered manifests and the Dockerfile are also scanned by checkov (from `make setup`'s .venv-scan):
any finding that is not in ACCEPTED_FINDINGS, with its reason, fails.
"""
import ast
import copy
import functools
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Set, Tuple

import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import defaults

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


# --- rendering ----------------------------------------------------------------------------------

class OverlayError(ValueError):
    """An overlay name that k8s/overlays does not have."""


def available_overlays() -> List[str]:
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def kubectl() -> str:
    name = os.environ.get("KUBECTL", "kubectl")
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it (Debian: `apt-get install -y kubernetes-client`) or set "
                    "KUBECTL to a kubectl binary; the manifests are rendered with `kubectl kustomize`")
    return path


@functools.lru_cache(maxsize=None)
def _render(directory: str) -> Tuple[dict, ...]:
    proc = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"`kubectl kustomize {directory}` failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(directory: pathlib.Path) -> List[dict]:
    """The objects `kubectl kustomize DIRECTORY` renders (deep copies: tests may change them)."""
    return copy.deepcopy(list(_render(str(directory))))


def render_overlay(name: str) -> List[dict]:
    if name not in available_overlays():
        raise OverlayError(f"unknown overlay {name!r}: k8s/overlays has {', '.join(available_overlays())}")
    return render(OVERLAYS_DIR / name)


def one(objects: List[dict], kind: str, name: str = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kustomization(directory: pathlib.Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def serving_container(objects: List[dict]) -> dict:
    pod = one(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == SERVING_CONTAINER)


def runs_tf_serving(container: dict) -> bool:
    """Whether the serving container runs tensorflow/serving (else the project image's `iris-tfx serve`)."""
    return container["image"].partition(":")[0] == SERVING_IMAGE


def flags(container: dict) -> Dict[str, str]:
    out = {}
    for arg in container.get("args", []):
        assert arg.startswith("--") and "=" in arg, f"write tensorflow_model_server flags as --name=value: {arg}"
        name, value = arg[2:].split("=", 1)
        assert name not in out, f"flag --{name} given twice"
        out[name] = value
    return out


def mount_of_volume(container: dict, volume: str) -> dict:
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


def quantity(value) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"unparsed quantity {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


# --- TF Serving's text-format messages ---------------------------------------------------------------

def batching_parameters_class():
    """tensorflow.serving.BatchingParameters: from TF Serving's generated module when installed, else from a
    descriptor of session_bundle_config.proto's BatchingParameters declared here (tensorflow-serving-api does
    not ship that proto), in a private pool."""
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    fdp = descriptor_pb2.FileDescriptorProto(name="test_k8s/session_bundle_config.proto",
                                             package="tensorflow.serving", syntax="proto3",
                                             dependency=[wrappers.name])
    f = descriptor_pb2.FieldDescriptorProto
    msg = fdp.message_type.add(name="BatchingParameters")
    for number, name, wrapper in [(1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                  (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                  (5, "thread_pool_name", "StringValue")]:
        msg.field.add(name=name, number=number, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                      type_name=".google.protobuf." + wrapper)
    msg.field.add(name="allowed_batch_sizes", number=6, type=f.TYPE_INT64, label=f.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def parse_batching(text: str):
    return text_format.Parse(text, batching_parameters_class()())


# --- schemas of the custom resources' required fields ------------------------------------------------

DNS_1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CONTAINER = {
    "type": "object", "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_1123}, "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
    },
}
POD_TEMPLATE = {
    "type": "object", "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["containers"],
                 "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER}}},
    },
}
# kubeflow.org/v1 TFJob as the Training Operator's CRD (kubeflow.org_tfjobs.yaml) defines it: spec requires
# tfReplicaSpecs, a map from replica type to ReplicaSpec whose pod template requires containers; the
# operator configures the container named "tensorflow" (TF_CONFIG, port tfjob-port).
TFJOB_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "TFJob"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": DNS_1123}}},
        "spec": {
            "type": "object", "required": ["tfReplicaSpecs"], "additionalProperties": False,
            "properties": {
                "enableDynamicWorker": {"type": "boolean"},
                "successPolicy": {"type": "string"},
                "runPolicy": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                        "backoffLimit": {"type": "integer", "minimum": 0},
                        "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                        "schedulingPolicy": {"type": "object"},
                        "suspend": {"type": "boolean"},
                        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    },
                },
                "tfReplicaSpecs": {
                    "type": "object", "minProperties": 1,
                    "propertyNames": {"enum": ["Chief", "Master", "PS", "Worker", "Evaluator"]},
                    "additionalProperties": {
                        "type": "object", "required": ["template"], "additionalProperties": False,
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0},
                            "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                            "template": {
                                "allOf": [POD_TEMPLATE, {"properties": {"spec": {"properties": {"containers": {
                                    "contains": {"properties": {"name": {"const": "tensorflow"}}}}}}}}],
                            },
                        },
                    },
                },
            },
        },
    },
}
# serving.kserve.io/v1beta1 InferenceService with a predictor `model` (ModelSpec: modelFormat, storageUri,
# runtimeVersion and container fields).
INFERENCE_SERVICE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": DNS_1123}}},
        "spec": {
            "type": "object", "required": ["predictor"],
            "properties": {"predictor": {
                "type": "object", "required": ["model"],
                "properties": {
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "model": {
                        "type": "object", "required": ["modelFormat", "storageUri"],
                        "properties": {
                            "modelFormat": {"type": "object", "required": ["name"],
                                            "properties": {"name": {"type": "string"},
                                                           "version": {"type": "string"}}},
                            "runtime": {"type": "string"},
                            "runtimeVersion": {"type": "string"},
                            "storageUri": {"type": "string", "pattern": r"^(pvc|gs|s3|https?|hdfs|webhdfs)://."},
                            "resources": {"type": "object"},
                        },
                    },
                },
            }},
        },
    },
}


def validate_builtin(obj: dict) -> None:
    """Strict validation of a built-in object; a kind kubernetes-validate has no schema for is a failure."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- the overlays -------------------------------------------------------------------------------------

def test_dev_and_prod_overlays_exist():
    assert {"dev", "prod"} <= set(available_overlays())


def test_unknown_overlay_gets_a_clear_error():
    with pytest.raises(OverlayError, match=r"unknown overlay 'staging': k8s/overlays has dev, prod"):
        render_overlay("staging")


def test_kustomize_failure_is_reported(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match="kubectl kustomize"):
        render(tmp_path)


def test_pinned_kubernetes_version_is_bundled():
    # validate() silently falls back to an older schema set; the pinned version must be one it has.
    from kubernetes_validate.utils import all_versions
    assert K8S_VERSION in all_versions()


def test_kustomizations_use_only_fields_of_debians_kubectl():
    files = sorted(K8S.rglob("kustomization.yaml"))
    assert len(files) >= 4, files
    for path in files:
        spec = yaml.safe_load(path.read_text())
        assert set(spec) <= KUSTOMIZE_V2_FIELDS, f"{path}: {set(spec) - KUSTOMIZE_V2_FIELDS}"
        for entry in spec.get("resources", []):  # kustomize v2.0.3 takes directories only under `bases`
            assert (path.parent / entry).is_file(), f"{path}: resources entry {entry} is not a file"


@pytest.mark.parametrize("overlay", available_overlays())
def test_overlay_renders_its_objects_in_its_namespace(overlay):
    objects = render_overlay(overlay)
    kinds = {o["kind"] for o in objects}
    assert kinds == OVERLAY_KINDS
    namespace = kustomization(OVERLAYS_DIR / overlay)["namespace"]
    assert one(objects, "Namespace")["metadata"]["name"] == namespace
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"} == {
        MODELS_PVC, "iris-pipeline-data"}


def test_overlays_have_their_own_namespaces():
    namespaces = [kustomization(OVERLAYS_DIR / o)["namespace"] for o in available_overlays()]
    assert len(set(namespaces)) == len(namespaces)


@pytest.mark.parametrize("overlay", available_overlays())
def test_builtin_objects_validate_strictly(overlay):
    validated = set()
    for obj in render_overlay(overlay):
        if obj["kind"] not in CUSTOM_KINDS:
            validate_builtin(obj)
            validated.add(obj["kind"])
    assert validated == OVERLAY_KINDS - CUSTOM_KINDS
    # The TFJob's pod template is a core/v1 PodTemplateSpec: validate it as one.
    for replica_type, replica in one(render_overlay(overlay), "TFJob")["spec"]["tfReplicaSpecs"].items():
        validate_builtin({"apiVersion": "v1", "kind": "PodTemplate",
                          "metadata": {"name": f"{TFJOB}-{replica_type.lower()}"}, "template": replica["template"]})


def test_strict_validation_rejects_an_unknown_field():
    deployment = one(render_overlay("prod"), "Deployment", DEPLOYMENT)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment)


def test_validation_fails_on_a_kind_without_schema():
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_builtin(one(render_overlay("dev"), "TFJob"))


@pytest.mark.parametrize("overlay", available_overlays())
def test_tfjob_matches_its_schema_and_runs_the_standalone_trainer(overlay):
    objects = render_overlay(overlay)
    job = one(objects, "TFJob", TFJOB)
    jsonschema.validate(job, TFJOB_SCHEMA)
    assert job["spec"]["runPolicy"]["suspend"] is True, "applying an overlay must not start a training run"
    workers = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert workers["replicas"] >= 2, "multi-worker training needs two workers or more"
    pod = workers["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "tensorflow")
    assert container["command"] == ["python", "-m", TRAIN_MODULE]
    args = container["args"]
    assert [a for a in args if a.startswith("--")] == list(TRAIN_FLAGS)
    values = {flag: args[args.index(flag) + 1] for flag in TRAIN_FLAGS}
    assert all(not v.startswith("--") for v in values.values()), values
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("TF_USE_LEGACY_KERAS") == "1"
    # Inputs on a mounted volume, the output on a writable one; every claim is a PVC of the overlay.
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for flag, path in values.items():
        volume, mount = volume_mounted_at(pod, container, path)
        assert volume["persistentVolumeClaim"]["claimName"] in claims
        if flag == "--output":
            assert not mount.get("readOnly", False) and not volume["persistentVolumeClaim"].get("readOnly", False)
    # The output must not land in the served model directory, where TF Serving would load it unevaluated.
    served = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"])
    served_base = served.model_config_list.config[0].base_path
    assert not (values["--output"] + "/").startswith(served_base.rstrip("/") + "/")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert ports == {"tfjob-port": 2222}


def test_tfjob_schema_rejects_broken_jobs():
    job = one(render_overlay("dev"), "TFJob", TFJOB)
    jsonschema.validate(job, TFJOB_SCHEMA)
    no_image = copy.deepcopy(job)
    del no_image["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"]
    renamed = copy.deepcopy(job)
    renamed["spec"]["tfReplicaSpecs"]["Workers"] = renamed["spec"]["tfReplicaSpecs"].pop("Worker")
    wrong_container = copy.deepcopy(job)
    wrong_container["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    no_specs = copy.deepcopy(job)
    del no_specs["spec"]["tfReplicaSpecs"]
    for broken in (no_image, renamed, wrong_container, no_specs):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, TFJOB_SCHEMA)


@pytest.mark.parametrize("overlay", available_overlays())
def test_tfjob_runs_the_overlays_project_image(overlay):
    (image,) = [i for i in kustomization(OVERLAYS_DIR / overlay)["images"] if i["name"] == PROJECT_IMAGE]
    job = one(render_overlay(overlay), "TFJob", TFJOB)
    for replica in job["spec"]["tfReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_the_standalone_trainer_takes_the_tfjobs_flags():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", TRAIN_MODULE, "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in TRAIN_FLAGS:
        assert flag in proc.stdout


# --- TensorFlow Serving ---------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", available_overlays())
def test_ports_and_model_name_agree_with_serving_defaults(overlay):
    objects = render_overlay(overlay)
    container = serving_container(objects)
    args = flags(container)
    known = TF_SERVING_FLAGS if runs_tf_serving(container) else TF_SERVING_FLAGS | set(LOCKDOWN_FLAGS)
    assert set(args) <= known, set(args) - known
    assert int(args["port"]) == defaults.GRPC_PORT
    assert int(args["rest_api_port"]) == defaults.REST_PORT
    ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]}
    assert ports == {"grpc": (defaults.GRPC_PORT, "TCP"), "http": (defaults.REST_PORT, "TCP")}

    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == f"/v1/models/{defaults.MODEL_NAME}"
    assert readiness["port"] in (defaults.REST_PORT, "http")
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["tcpSocket"]["port"] in (defaults.GRPC_PORT, "grpc"), probe

    service = one(objects, "Service", DEPLOYMENT)
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(by_name) == {"grpc", "http"}
    assert by_name["grpc"]["port"] == defaults.GRPC_PORT and by_name["http"]["port"] == defaults.REST_PORT
    for name, port in by_name.items():
        assert port["targetPort"] in (name, ports[name][0])


def network_policy_problems(policy: dict) -> List[str]:
    """What lets a serving NetworkPolicy admit more than labelled clients (gRPC, REST) and Prometheus (REST), or
    lets the pods connect anywhere; empty when it is as intended."""
    problems = []
    if set(policy.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append(f"policyTypes {policy.get('policyTypes')}: both Ingress and Egress must be restricted")
    if policy.get("egress"):
        problems.append(f"egress rules {policy['egress']}: the serving pods need no egress at all")
    admitted: Dict[str, Set[Tuple[str, int]]] = {}
    for rule in policy.get("ingress", []):
        if not rule.get("from"):
            problems.append(f"ingress rule without `from` admits any source: {rule}")
        if not rule.get("ports"):
            problems.append(f"ingress rule without ports admits every port: {rule}")
        ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
        for peer in rule.get("from", []):
            if "ipBlock" in peer or not peer.get("podSelector", {}).get("matchLabels"):
                problems.append(f"peer {peer} is not limited to labelled pods")
                continue
            namespaces = peer.get("namespaceSelector")
            if namespaces is not None and not namespaces.get("matchLabels"):
                problems.append(f"peer {peer} selects pods in every namespace")
            key = json.dumps(peer, sort_keys=True)
            admitted[key] = admitted.get(key, set()) | ports
    serving_ports = {("TCP", defaults.GRPC_PORT), ("TCP", defaults.REST_PORT)}
    expected = {json.dumps(peer, sort_keys=True): ports for peer, ports in [
        ({"podSelector": {"matchLabels": CLIENT_LABEL}}, serving_ports),
        ({"namespaceSelector": {"matchLabels": CLIENT_LABEL}, "podSelector": {"matchLabels": CLIENT_LABEL}},
         serving_ports),
        ({"namespaceSelector": {"matchLabels": PROMETHEUS_NAMESPACE}, "podSelector": {"matchLabels": PROMETHEUS_PODS}},
         {("TCP", defaults.REST_PORT)}),
    ]}
    if admitted != expected:
        problems.append(f"admitted peers and ports {admitted} differ from {expected}")
    return problems


@pytest.mark.parametrize("overlay", available_overlays())
def test_training_workers_reach_only_each_other_and_dns(overlay):
    objects = render_overlay(overlay)
    policy = one(objects, "NetworkPolicy", TFJOB)["spec"]
    workers = one(objects, "TFJob", TFJOB)["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
    serving = one(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["metadata"]["labels"]
    selector = policy["podSelector"]["matchLabels"]
    assert selector.items() <= workers.items() and not selector.items() <= serving.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    worker_port = [{"protocol": "TCP", "port": 2222}]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": selector}}], "ports": worker_port}]
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    assert policy["egress"] == [{"to": [{"podSelector": {"matchLabels": selector}}], "ports": worker_port},
                                {"to": [dns], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]


@pytest.mark.parametrize("overlay", available_overlays())
def test_network_policy_admits_only_clients_and_prometheus_and_no_egress(overlay):
    objects = render_overlay(overlay)
    policy = one(objects, "NetworkPolicy", DEPLOYMENT)["spec"]
    assert network_policy_problems(policy) == []
    # Prometheus scrapes the REST port, where the model server exposes its metrics.
    assert flags(serving_container(objects))["rest_api_port"] == str(defaults.REST_PORT)
    # The checks catch the holes the policy once had (any source, any destination).
    for break_policy in (lambda p: p["ingress"][0].pop("from"), lambda p: p.update(policyTypes=["Ingress"]),
                         lambda p: p["ingress"][1]["from"][0].pop("podSelector"),
                         lambda p: p["ingress"][0]["from"][1].update(namespaceSelector={}),
                         lambda p: p.update(egress=[{}]), lambda p: p["ingress"][1]["ports"].append({"port": 8500})):
        broken = copy.deepcopy(policy)
        break_policy(broken)
        assert network_policy_problems(broken), broken


@pytest.mark.parametrize("overlay", available_overlays())
def test_selectors_and_references_resolve(overlay):
    objects = render_overlay(overlay)
    deployment = one(objects, "Deployment", DEPLOYMENT)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert one(objects, "Service", DEPLOYMENT)["spec"]["selector"].items() <= labels.items()
    for kind, path in (("PodDisruptionBudget", ("selector",)), ("NetworkPolicy", ("podSelector",))):
        spec = one(objects, kind, DEPLOYMENT)["spec"]
        assert spec[path[0]]["matchLabels"].items() <= labels.items()
    target = one(objects, "HorizontalPodAutoscaler", DEPLOYMENT)["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", DEPLOYMENT)
    # The TFJob's pods must not be picked up by the serving Service.
    job_labels = one(objects, "TFJob")["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()
    # Every ConfigMap and claim a pod uses is in the rendering.
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pods = [deployment["spec"]["template"]["spec"]] + [
        r["template"]["spec"] for r in one(objects, "TFJob")["spec"]["tfReplicaSpecs"].values()]
    for pod in pods:
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names


@pytest.mark.parametrize("overlay", available_overlays())
def test_models_config_and_paths_agree(overlay, tmp_path):
    objects = render_overlay(overlay)
    configmap = one(objects, "ConfigMap", CONFIGMAP)
    # The ConfigMap holds exactly the files of k8s/base, which the local server can read as they are.
    assert configmap["data"] == {"models.config": (BASE / "models.config").read_text(),
                                 "batching_parameters.txt": (BASE / "batching_parameters.txt").read_text()}
    deployment = one(objects, "Deployment", DEPLOYMENT)
    pod = deployment["spec"]["template"]["spec"]
    container = serving_container(objects)
    args = flags(container)
    assert args["enable_batching"] == "true"
    assert int(args["model_config_file_poll_wait_seconds"]) > 0
    for flag, key in (("model_config_file", "models.config"), ("batching_parameters_file", "batching_parameters.txt")):
        volume, mount = volume_mounted_at(pod, container, args[flag])
        assert volume["configMap"]["name"] == CONFIGMAP
        assert args[flag] == mount["mountPath"].rstrip("/") + "/" + key
        assert mount.get("readOnly") is True

    config = parse_models_config(configmap["data"]["models.config"])
    (model,) = config.model_config_list.config
    assert model.name == defaults.MODEL_NAME
    assert model.model_platform == "tensorflow"
    models_volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == MODELS_PVC)
    models_mount = mount_of_volume(container, models_volume["name"])
    assert models_mount.get("readOnly") is True
    assert model.base_path == models_mount["mountPath"].rstrip("/") + "/" + defaults.MODEL_NAME
    # The local server (serving.config) takes the very same flags and files.
    from serving import config as local
    (tmp_path / "etc").mkdir()
    for key, text in configmap["data"].items():
        (tmp_path / "etc" / key).write_text(text)
    local_args = [a.replace(mount_of_volume(container, "config")["mountPath"], str(tmp_path / "etc"))
                  for a in container["args"]]
    parsed = local.parse_flags(local_args)
    assert (parsed.port, parsed.rest_api_port) == (defaults.GRPC_PORT, defaults.REST_PORT)
    assert parsed.enable_batching is True
    assert local.read_model_server_config(parsed.model_config_file) == config
    local_batching = local.read_batching_parameters(parsed.batching_parameters_file)
    expected = parse_batching(configmap["data"]["batching_parameters.txt"])
    assert text_format.MessageToString(local_batching) == text_format.MessageToString(expected) != ""


def test_client_defaults_reach_the_service_through_a_port_forward(monkeypatch):
    # README: `kubectl port-forward svc/iris-serving 8500:8500`, then `iris-tfx predict` with its defaults.
    import inspect
    from serving import client
    objects = render_overlay("prod")
    service_ports = {p["name"]: p["port"] for p in one(objects, "Service", DEPLOYMENT)["spec"]["ports"]}
    (model,) = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"]
                                   ).model_config_list.config
    api = inspect.signature(client.IrisClient.__init__).parameters
    seen = []

    class Recorder:
        def __init__(self, target, model_name, *args, **kwargs):
            seen.append((target, model_name))
            raise client.ServingClientError("recorded")

    monkeypatch.setattr(client, "IrisClient", Recorder)
    assert client.main(["5.1", "3.5", "1.4", "0.2"]) != 0
    for target, model_name in [(api["target"].default, api["model_name"].default)] + seen:
        host, _, port = target.rpartition(":")
        assert host == "localhost" and int(port) == service_ports["grpc"] == defaults.GRPC_PORT
        assert model_name == model.name == defaults.MODEL_NAME
    assert len(seen) == 1


def test_config_files_parse_as_tf_serving_messages():
    config = parse_models_config((BASE / "models.config").read_text())
    assert config.WhichOneof("config") == "model_config_list"
    (model,) = config.model_config_list.config
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    batching = parse_batching((BASE / "batching_parameters.txt").read_text())
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert batching.HasField(field), field
    assert batching.max_batch_size.value >= 1 and batching.num_batch_threads.value >= 1


def test_config_parsers_reject_malformed_files():
    with pytest.raises(text_format.ParseError):
        parse_models_config('model_config_list { config { nmae: "iris" } }')
    with pytest.raises(text_format.ParseError):
        parse_batching("max_batch_size: 32")  # a wrapper message, not a scalar


@pytest.mark.parametrize("overlay", available_overlays())
def test_serving_image_is_tf_serving_at_the_api_version_or_the_project_image(overlay):
    container = serving_container(render_overlay(overlay))
    if runs_tf_serving(container):
        assert container["image"] == f"{SERVING_IMAGE}:{importlib.metadata.version('tensorflow-serving-api')}"
        assert container["command"] == ["/usr/bin/tensorflow_model_server"]
    else:  # the pipeline image of the overlay (the TFJob's), whose console command is the project's server
        (image,) = [i for i in kustomization(OVERLAYS_DIR / overlay)["images"] if i["name"] == PROJECT_IMAGE]
        assert container["image"] == f"{image['newName']}:{image['newTag']}"
        assert container["command"] == PROJECT_SERVER_COMMAND
        scripts = importlib.metadata.entry_points(group="console_scripts")
        assert [e.value for e in scripts if e.name == PROJECT_SERVER_COMMAND[0]] == ["pipeline.cli:main"]


def test_prod_locks_down_model_management_and_model_paths():
    # TF Serving cannot do this (no such flags), hence `iris-tfx serve` in prod (overlays/prod/model-server-patch.yaml).
    from serving import config as local
    objects = render_overlay("prod")
    container = serving_container(objects)
    assert not runs_tf_serving(container) and container["command"] == PROJECT_SERVER_COMMAND
    args = flags(container)
    assert {name: args.get(name) for name in LOCKDOWN_FLAGS} == LOCKDOWN_FLAGS
    # The server's own parser reads them as: management off, base paths confined to the models volume.
    parsed = local.parse_flags(container["args"])
    assert parsed.enable_model_management is False
    assert tuple(parsed.model_base_path_roots) == (LOCKDOWN_FLAGS["model_base_path_roots"],)
    pod = one(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    (root,) = parsed.model_base_path_roots
    volume, mount = volume_mounted_at(pod, container, root)
    assert mount["mountPath"] == root and mount.get("readOnly") is True
    assert volume["persistentVolumeClaim"]["claimName"] == MODELS_PVC
    # What models.config serves lies under the root, so the lockdown does not lock the served model out.
    (model,) = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"]
                                   ).model_config_list.config
    assert model.base_path.startswith(root.rstrip("/") + "/")


@pytest.mark.parametrize("overlay", available_overlays())
def test_security_context_and_resources(overlay):
    objects = render_overlay(overlay)
    deployment = one(objects, "Deployment", DEPLOYMENT)
    job = one(objects, "TFJob", TFJOB)
    pods = [("serving", deployment["spec"]["template"]["spec"])] + [
        (name, r["template"]["spec"]) for name, r in job["spec"]["tfReplicaSpecs"].items()]
    uid, gid = dockerfile_user()
    for name, pod in pods:
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        # The image's own user, so files the image prepared for it (see the Dockerfile) stay its own.
        assert (pod_security.get("runAsUser"), pod_security.get("runAsGroup")) == (uid, gid), name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            assert_container_locked_down(pod, container, name)
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert 0 < quantity(request) <= quantity(limit), (name, resource, request, limit)


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


def test_overlays_size_serving_as_intended():
    sizes = {}
    for overlay in available_overlays():
        objects = render_overlay(overlay)
        replicas = one(objects, "Deployment", DEPLOYMENT)["spec"]["replicas"]
        hpa = one(objects, "HorizontalPodAutoscaler", DEPLOYMENT)["spec"]
        pdb = one(objects, "PodDisruptionBudget", DEPLOYMENT)["spec"]
        # Applying the overlay must not fight the autoscaler: it starts at the HPA's minimum.
        assert replicas == hpa["minReplicas"] <= hpa["maxReplicas"], overlay
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        # The budget must let at least one pod be evicted (else node drains block forever).
        assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb), overlay
        if "minAvailable" in pdb:
            assert 1 <= pdb["minAvailable"] < hpa["minReplicas"], overlay
        else:
            assert pdb["maxUnavailable"] >= 1, overlay
        requests = quantity(serving_container(objects)["resources"]["requests"]["cpu"])
        sizes[overlay] = (replicas, hpa, pdb, requests)
    dev, prod = sizes["dev"], sizes["prod"]
    assert dev[0] == 1
    assert prod[0] > dev[0] and prod[1]["maxReplicas"] > prod[1]["minReplicas"] > 1
    assert prod[2].get("minAvailable", 0) >= 1
    assert prod[3] > dev[3]


# --- KServe (optional) --------------------------------------------------------------------------------

def test_kserve_inference_service_serves_the_pushed_model():
    (isvc,) = render(KSERVE)
    jsonschema.validate(isvc, INFERENCE_SERVICE_SCHEMA)
    assert isvc["metadata"]["name"] == defaults.MODEL_NAME  # KServe's TF Serving runtime names the model so
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    assert model["runtimeVersion"] == importlib.metadata.version("tensorflow-serving-api")
    # pvc://<claim>/<path>: the same claim and the same directory as models.config's base_path on its mount.
    objects = render_overlay("prod")
    claim, _, path = model["storageUri"][len("pvc://"):].partition("/")
    assert ("PersistentVolumeClaim", claim) in {(o["kind"], o["metadata"]["name"]) for o in objects}
    container = serving_container(objects)
    pod = one(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    base_path = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"]
                                    ).model_config_list.config[0].base_path
    volume, mount = volume_mounted_at(pod, container, base_path)
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert "/" + path == base_path[len(mount["mountPath"].rstrip("/")):]
    broken = copy.deepcopy(isvc)
    del broken["spec"]["predictor"]["model"]["modelFormat"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, INFERENCE_SERVICE_SCHEMA)


def test_kserve_model_server_is_locked_down():
    (isvc,) = render(KSERVE)
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    # On the container (Knative accepts container securityContext fields without feature flags).
    assert_container_locked_down(predictor, model, "kserve")
    security = model["securityContext"]
    assert security.get("runAsNonRoot") is True and security.get("runAsUser", 0) > 0
    assert security.get("seccompProfile") == {"type": "RuntimeDefault"}
    assert predictor.get("automountServiceAccountToken") is False


def test_overlays_do_not_need_kserve():
    for overlay in available_overlays():
        assert not [o for o in render_overlay(overlay) if o["apiVersion"].startswith("serving.kserve.io/")]


# --- the pipeline image --------------------------------------------------------------------------------

def dockerfile_instructions() -> List[Tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_builds_on_tfx_with_the_locked_project():
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    tfx_version = importlib.metadata.version("tfx")
    assert froms == [f"tensorflow/tfx:{tfx_version}"]
    envs = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert re.search(r"(^|\s)TF_USE_LEGACY_KERAS=1(\s|$)", envs), envs
    copies = [rest.split() for keyword, rest in instructions if keyword in ("COPY", "ADD")]
    assert any(parts[0] == "." for parts in copies), "the repository is copied into the image"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install (-c|-r|--constraint|--requirement)[ =]requirements\.lock \.", runs), runs
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert f"tfx=={tfx_version}" in lock, "the lock pins the TFX of the base image"
    # The image checks at build time that the component code imports by module path.
    for module, function in (("components.transform", "preprocessing_fn"), ("components.trainer", "run_fn")):
        assert module in runs and function in runs
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, (module, function)


def dockerfile_user() -> Tuple[int, int]:
    """The numeric uid and gid of the image's last USER instruction (a name would not prove non-root)."""
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile sets no USER: the image would run as root"
    match = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert match, f"USER {users[-1]}: give a numeric uid:gid, so that Kubernetes' runAsNonRoot can verify it"
    return int(match.group(1)), int(match.group(2))


def test_image_runs_as_a_high_numeric_non_root_user():
    instructions = dockerfile_instructions()
    uid, gid = dockerfile_user()
    assert uid >= 10000 and gid >= 10000, "above the host's system and user ids (checkov CKV_K8S_40)"
    # The user switch comes after every RUN (installs need root) and is the last word on the user.
    last_run = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "RUN")
    assert [k for k, _ in instructions[last_run:]].count("USER") == 1 and instructions[-1][0] == "USER"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(rf"useradd [^&]*--uid {uid} --gid {gid}", runs), "the user exists in /etc/passwd"


def test_dockerignore_keeps_the_context_to_the_sources():
    patterns = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".venv-scan", ".git", "iris-tfx-work"} <= patterns
    assert any("__pycache__" in p for p in patterns)
    for needed in ("components", "pipeline", "serving", "requirements.lock", "Dockerfile"):
        assert needed not in patterns


# --- the scanner: checkov over the rendered manifests and the Dockerfile --------------------------------

SCAN_LOCK = REPO / "requirements-scan.lock"
_DIGEST = ("images by pinned tag, not digest: the project image is built and pushed per registry and "
           "tensorflow/serving is mirrored, so digests are known at deploy time only; pin them there with "
           "`images: [{name, digest}]` in the overlay")
# Findings accepted on purpose: (check id, "<Kind>/<name>" of a scanned object or "Dockerfile") -> reason.
# Any other finding fails test_scanner_reports_only_accepted_findings.
ACCEPTED_FINDINGS = {
    ("CKV_K8S_43", f"Deployment/{DEPLOYMENT}"): _DIGEST,
    ("CKV_K8S_43", f"Pod/{TFJOB}-worker"): _DIGEST,
    ("CKV_K8S_43", "Pod/iris-predictor"): _DIGEST,
    ("CKV_K8S_8", f"Pod/{TFJOB}-worker"): "a training worker serves nothing a liveness probe could ask; the "
                                          "operator restarts a failed worker (restartPolicy: OnFailure)",
    ("CKV_K8S_9", f"Pod/{TFJOB}-worker"): "a training worker takes no traffic, so readiness means nothing",
    ("CKV_K8S_8", "Pod/iris-predictor"): "KServe's TF Serving runtime and Knative probe the model server they run",
    ("CKV_K8S_9", "Pod/iris-predictor"): "KServe's TF Serving runtime and Knative probe the model server they run",
    ("CKV_K8S_29", "Pod/iris-predictor"): "a pod-level securityContext needs Knative's kubernetes.podspec-securitycontext "
                                          "feature (off by default); the same settings are on the container",
    ("CKV2_K8S_6", "Pod/iris-predictor"): "KServe's traffic comes through Knative's activator and the cluster's ingress "
                                          "gateway, whose namespaces and labels belong to the KServe installation, "
                                          "which is where its NetworkPolicies live",
    ("CKV_DOCKER_2", "Dockerfile"): "no HEALTHCHECK: Kubernetes ignores it (the Deployment has its own probes) and "
                                    "the image's batch uses (pipeline components, TFJob workers) have nothing to check",
}


def scanner() -> str:
    """checkov from `make setup`'s .venv-scan ($CHECKOV names another binary)."""
    name = os.environ.get("CHECKOV", str(REPO / ".venv-scan" / "bin" / "checkov"))
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"checkov not found at {name}: run `make setup` (it installs checkov into .venv-scan from "
                    "requirements-scan.lock) or set CHECKOV to a checkov binary")
    return path


def pod_of_tfjob_replica(job: dict, replica_type: str) -> dict:
    """A replica's pod template as the Pod the Training Operator creates from it (checkov skips custom kinds)."""
    template = job["spec"]["tfReplicaSpecs"][replica_type]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template.get("metadata", {}), "name": f"{job['metadata']['name']}-{replica_type.lower()}",
                         "namespace": job["metadata"].get("namespace", "default")},
            "spec": template["spec"]}


def pod_of_inference_service(isvc: dict, namespace: str) -> dict:
    """The predictor Pod KServe creates: the runtime's image (tensorflow/serving:<runtimeVersion>) in a container
    with the model's container fields, and the predictor's pod fields."""
    predictor = isvc["spec"]["predictor"]
    model_only = {"modelFormat", "runtime", "runtimeVersion", "storageUri", "protocolVersion", "storage"}
    container = {k: v for k, v in predictor["model"].items() if k not in model_only}
    container.update(name="kserve-container", image=f"{SERVING_IMAGE}:{predictor['model']['runtimeVersion']}")
    pod_fields = {"automountServiceAccountToken", "securityContext", "volumes", "serviceAccountName",
                  "nodeSelector", "tolerations", "affinity", "imagePullSecrets"}
    spec = {k: v for k, v in predictor.items() if k in pod_fields}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{isvc['metadata']['name']}-predictor", "namespace": namespace,
                         "labels": isvc["metadata"].get("labels", {})},
            "spec": {**spec, "containers": [container]}}


def scan_inputs(directory: pathlib.Path) -> None:
    """Write what is deployed into DIRECTORY: each overlay as rendered, the TFJob's and the InferenceService's pods
    (in the prod namespace), and the Dockerfile. The base alone is never applied (overlays set the namespace)."""
    for overlay in available_overlays():
        objects = render_overlay(overlay)
        pods = [pod_of_tfjob_replica(one(objects, "TFJob", TFJOB), r)
                for r in one(objects, "TFJob", TFJOB)["spec"]["tfReplicaSpecs"]]
        (directory / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects + pods))
    namespace = kustomization(OVERLAYS_DIR / "prod")["namespace"]
    (directory / "kserve.yaml").write_text(yaml.safe_dump_all([pod_of_inference_service(o, namespace)
                                                               for o in render(KSERVE)]))
    shutil.copy(REPO / "Dockerfile", directory / "Dockerfile")


def finding_subject(check_type: str, resource: str) -> str:
    """'<Kind>/<name>' of a Kubernetes resource as checkov names it (Kind.namespace.name), or 'Dockerfile'."""
    if check_type == "dockerfile":
        return "Dockerfile"
    kind, _, rest = resource.partition(".")
    return f"{kind}/{rest.partition('.')[2]}"


@functools.lru_cache(maxsize=1)
def scan() -> Tuple[Tuple[Tuple[str, str, str], ...], Tuple[Tuple[str, str], ...], Tuple[str, ...]]:
    """Runs checkov once: its (check id, subject, file) findings, the (framework, subject)s it checked, versions."""
    with tempfile.TemporaryDirectory(prefix="iris-checkov-") as tmp:
        scan_inputs(pathlib.Path(tmp))
        proc = subprocess.run([scanner(), "--directory", tmp, "--framework", "kubernetes", "dockerfile",
                               "--output", "json", "--skip-download", "--soft-fail"],
                              capture_output=True, text=True, timeout=600)
    try:
        reports = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"checkov failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-1000:]}")
    findings, checked, versions = set(), set(), set()
    for report in reports if isinstance(reports, list) else [reports]:
        framework = report.get("check_type", "")
        versions.add(report.get("summary", {}).get("checkov_version", ""))
        results = report.get("results", {})
        for outcome in ("passed_checks", "failed_checks"):
            for result in results.get(outcome, []):
                subject = finding_subject(framework, result["resource"])
                checked.add((framework, subject))
                if outcome == "failed_checks":
                    findings.add((result["check_id"], subject, result["file_path"]))
    return tuple(sorted(findings)), tuple(sorted(checked)), tuple(sorted(versions))


def test_scanner_is_the_locked_checkov():
    pinned = [line for line in SCAN_LOCK.read_text().splitlines() if line.startswith("checkov==")]
    assert len(pinned) == 1, "requirements-scan.lock pins checkov"
    _, _, versions = scan()
    assert versions == (pinned[0].split("==")[1],)


def test_scanner_checks_every_deployed_object_and_the_dockerfile():
    _, checked, _ = scan()
    expected = {("dockerfile", "Dockerfile"), ("kubernetes", f"Deployment/{DEPLOYMENT}"),
                ("kubernetes", f"Pod/{TFJOB}-worker"), ("kubernetes", "Pod/iris-predictor")}
    assert expected <= set(checked), expected - set(checked)


def test_scanner_reports_only_accepted_findings():
    findings, _, _ = scan()
    unexpected = [f"{check} {subject} ({path})" for check, subject, path in findings
                  if (check, subject) not in ACCEPTED_FINDINGS]
    assert not unexpected, "checkov findings (fix them, or accept one in ACCEPTED_FINDINGS with its reason):\n" + \
        "\n".join(unexpected)
    # Nothing is accepted without a reason, and no acceptance outlives its finding.
    assert all(len(reason) > 20 for reason in ACCEPTED_FINDINGS.values())
    stale = set(ACCEPTED_FINDINGS) - {(check, subject) for check, subject, _ in findings}
    assert not stale, f"accepted findings checkov no longer reports (remove them): {sorted(stale)}"


# --- the prod overlay's model server, run for real ------------------------------------------------------

def test_prod_model_server_serves_its_configmap_and_refuses_model_management(pushed_model, tmp_path):
    """`iris-tfx serve` with the rendered prod container's flags and ConfigMap files (the mounts moved under
    tmp_path; ports chosen by the helper): it serves models.config's model and answers UNIMPLEMENTED to
    HandleReloadConfigRequest, even for the very config it serves."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    import serving_helpers as h
    from components import constants
    from serving.client import IrisClient

    objects = render_overlay("prod")
    container = serving_container(objects)
    mounts = {mount_of_volume(container, "config")["mountPath"]: tmp_path / "etc",
              mount_of_volume(container, "models")["mountPath"]: tmp_path / "models"}

    def moved(path: str) -> str:
        for mount, local in mounts.items():
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                return str(local) + path[len(mount.rstrip("/")):]
        return path

    config = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"])
    for model in config.model_config_list.config:
        model.base_path = moved(model.base_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "models.config").write_text(text_format.MessageToString(config))
    (tmp_path / "etc" / "batching_parameters.txt").write_text(
        one(objects, "ConfigMap", CONFIGMAP)["data"]["batching_parameters.txt"])
    (served,) = config.model_config_list.config
    h.copy_version(pushed_model, pathlib.Path(served.base_path), 1)
    args = [f"--{name}={moved(value)}" for name, value in flags(container).items()
            if name not in ("port", "rest_api_port")]
    assert f"--model_base_path_roots={tmp_path / 'models'}" in args and "--enable_model_management=false" in args

    server = h.ServerProcess(args, tmp_path / "server.log", use_console_command=True).wait_ready()
    try:
        with IrisClient(server.grpc_target, model_name=served.name) as client:
            (row,) = client.predict([[5.1, 3.5, 1.4, 0.2]])  # Fisher's first sample, in FEATURE_KEYS order
        assert row.species == constants.CLASS_NAMES[0], row
        request = model_management_pb2.ReloadConfigRequest(config=config)
        with grpc.insecure_channel(server.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
    finally:
        assert server.stop() == 0, server.log()
