"""TensorFlow Serving in the overlays: ports, model name and paths cross-checked between the manifests, the
ConfigMap's models.config and batching file, serving.defaults, the local server's flags and the client; the
serving NetworkPolicy; the image and the prod lockdown, and the prod model server run for real."""
import copy
import importlib.metadata
import json
import pathlib
from typing import Dict, List, Set, Tuple

import pytest
from google.protobuf import text_format

from k8s_helpers import (BASE, CLIENT_LABEL, CONFIGMAP, DEPLOYMENT, LOCKDOWN_FLAGS, MODELS_PVC, MONITORED_OVERLAYS,
                         OVERLAYS_DIR, PROJECT_IMAGE, PROJECT_SERVER_COMMAND, PROMETHEUS_NAMESPACE, PROMETHEUS_PODS,
                         REQUEST_LOG_FLAGS, REQUEST_LOGS_PVC, SERVING_IMAGE, TF_SERVING_FLAGS, available_overlays,
                         configmap_files, flags, kustomization, mount_of_volume, one, parse_batching,
                         parse_models_config, quantity, render_overlay, runs_tf_serving, server_args, server_mounts,
                         serving_container, volume_mounted_at, write_serving_config)
from serving import defaults


@pytest.mark.parametrize("overlay", available_overlays())
def test_ports_and_model_name_agree_with_serving_defaults(overlay):
    objects = render_overlay(overlay)
    container = serving_container(objects)
    args = flags(container)
    known = TF_SERVING_FLAGS if runs_tf_serving(container) else TF_SERVING_FLAGS | set(LOCKDOWN_FLAGS) | REQUEST_LOG_FLAGS
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
def test_models_config_and_paths_agree(overlay, tmp_path):
    objects = render_overlay(overlay)
    configmap = one(objects, "ConfigMap", CONFIGMAP)
    # The ConfigMap holds exactly the files of k8s/base (or the overlay's own models.config), which the local server
    # can read as they are.
    assert configmap["data"] == {key: path.read_text() for key, path in configmap_files(overlay).items()}
    assert set(configmap["data"]) == {"models.config", "batching_parameters.txt"}
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


def logging_problems(objects: List[dict]) -> List[str]:
    """What is wrong with an overlay's request logging: tensorflow/serving given a logging_config (it refuses to start:
    "No request-logger-creator provided"), or `iris-tfx serve`'s logs not going to the read-write request logs
    volume, its config differing from the base's in more than the logging_config, or a disk budget the volume cannot
    hold for every replica; empty when it is as intended."""
    problems = []
    container = serving_container(objects)
    pod = one(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    config = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"])
    logged = [m for m in config.model_config_list.config if m.HasField("logging_config")]
    if runs_tf_serving(container):
        problems += [f"model {m.name!r} has a logging_config, which tensorflow/serving refuses" for m in logged]
        problems += [f"tensorflow/serving is given the request log flag --{name}" for name in
                     set(flags(container)) & REQUEST_LOG_FLAGS]
        return problems
    if not logged:
        problems.append("no model of models.config has a logging_config")
    for model in logged:
        prefix = model.logging_config.log_collector_config.filename_prefix
        if not 0 < model.logging_config.sampling_config.sampling_rate <= 1:
            problems.append(f"model {model.name!r}: sampling_rate {model.logging_config.sampling_config.sampling_rate}")
        mounts = [m for m in container.get("volumeMounts", []) if prefix.startswith(m["mountPath"].rstrip("/") + "/")]
        if not mounts:
            problems.append(f"model {model.name!r}: {prefix} is on no volume (the root filesystem is read-only)")
            continue
        volume, mount = volume_mounted_at(pod, container, prefix)
        if volume.get("persistentVolumeClaim", {}).get("claimName") != REQUEST_LOGS_PVC or mount.get("readOnly"):
            problems.append(f"model {model.name!r}: {prefix} is not on the read-write {REQUEST_LOGS_PVC} volume")
    unlogged = parse_models_config(str(config))
    for model in unlogged.model_config_list.config:
        model.ClearField("logging_config")
    if unlogged != parse_models_config((BASE / "models.config").read_text()):
        problems.append("models.config differs from k8s/base/models.config in more than its logging_config")
    from serving import config as local
    parsed = local.parse_flags(container["args"])
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    if REQUEST_LOGS_PVC in claims:
        # The budget is every writer's files together; each server may overshoot it by its open file: every replica
        # the HPA may run, and the one a rolling update adds, at once.
        deployment = one(objects, "Deployment", DEPLOYMENT)["spec"]
        replicas = one(objects, "HorizontalPodAutoscaler", DEPLOYMENT)["spec"]["maxReplicas"] + int(
            deployment["strategy"]["rollingUpdate"]["maxSurge"])
        size = quantity(claims[REQUEST_LOGS_PVC]["spec"]["resources"]["requests"]["storage"])
        if size < parsed.request_log_max_total_bytes + replicas * parsed.request_log_file_max_bytes:
            problems.append(f"{REQUEST_LOGS_PVC} ({size:.0f} bytes) cannot hold the budget of "
                            f"{parsed.request_log_max_total_bytes} bytes and an open file for each of {replicas} "
                            "replicas")
        if "ReadWriteMany" not in claims[REQUEST_LOGS_PVC]["spec"]["accessModes"]:
            problems.append(f"{REQUEST_LOGS_PVC} is not ReadWriteMany: replicas on several nodes write it")
    for name in ("request_log_file_max_bytes", "request_log_max_total_bytes"):
        if name not in flags(container):
            problems.append(f"--{name} is not set: the server's default is not sized for the volume")
    return problems


@pytest.mark.parametrize("overlay", available_overlays())
def test_requests_are_logged_only_by_the_server_that_honours_logging_config(overlay):
    objects = render_overlay(overlay)
    assert logging_problems(objects) == []
    # Requests are logged (and monitored) exactly where the project's server runs.
    assert (overlay in MONITORED_OVERLAYS) == (not runs_tf_serving(serving_container(objects)))


def test_logging_checks_catch_a_misplaced_or_refused_logging_config():
    prod, dev = render_overlay("prod"), render_overlay("dev")
    prod_config = one(prod, "ConfigMap", CONFIGMAP)["data"]["models.config"]
    one(dev, "ConfigMap", CONFIGMAP)["data"]["models.config"] = prod_config
    assert any("tensorflow/serving refuses" in p for p in logging_problems(dev))

    def broken(change) -> List[str]:
        objects = copy.deepcopy(prod)
        change(objects)
        return logging_problems(objects)

    def logs_mount(objects) -> dict:
        return mount_of_volume(serving_container(objects), "request-logs")

    assert any("read-write" in p for p in broken(lambda o: logs_mount(o).update(readOnly=True)))
    assert any("on no volume" in p for p in broken(lambda o: logs_mount(o).update(mountPath="/var/logs")))
    assert any("more than its logging_config" in p for p in broken(lambda o: one(o, "ConfigMap", CONFIGMAP)[
        "data"].update({"models.config": prod_config.replace('"/models/iris"', '"/models/other"')})))
    assert any("cannot hold" in p for p in broken(lambda o: one(o, "HorizontalPodAutoscaler", DEPLOYMENT)[
        "spec"].update(maxReplicas=100)))  # 1 GiB and 101 open files of 16 MiB

    def budget(objects, total: int) -> None:
        args = serving_container(objects)["args"]
        args[args.index("--request_log_max_total_bytes=1073741824")] = f"--request_log_max_total_bytes={total}"

    assert any("cannot hold" in p for p in broken(lambda o: budget(o, 2 << 30)))
    assert any("--request_log_max_total_bytes is not set" in p for p in broken(lambda o: serving_container(o)[
        "args"].remove("--request_log_max_total_bytes=1073741824")))


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
        assert [e.value for e in scripts if e.name == PROJECT_SERVER_COMMAND[0]] == ["iris_tfx.main:main"]


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


# --- the prod overlay's model server, run for real ------------------------------------------------------

@pytest.mark.e2e
def test_prod_model_server_serves_its_configmap_and_refuses_model_management(model, tmp_path):
    """`iris-tfx serve` with the rendered prod container's flags and ConfigMap files (the mounts moved under
    tmp_path; ports chosen by the helper): it accepts models.config's logging_config, serves its model, logs sampled
    requests under the moved logs volume, and answers UNIMPLEMENTED to HandleReloadConfigRequest, even for the very
    config it serves."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, prediction_log_pb2
    from components import constants, request_logs
    from serving import harness as h
    from serving.client import IrisClient

    objects = render_overlay("prod")
    container = serving_container(objects)
    mounts = server_mounts(container, tmp_path)
    config = write_serving_config(objects, mounts)
    (served,) = config.model_config_list.config
    h.copy_version(model, pathlib.Path(served.base_path), 1)
    logged = served.logging_config
    assert logged.sampling_config.sampling_rate > 0, "prod's models.config logs no requests"
    assert logged.log_collector_config.filename_prefix.startswith(str(tmp_path / "logs") + "/")
    args = server_args(container, mounts)
    assert f"--model_base_path_roots={tmp_path / 'models'}" in args and "--enable_model_management=false" in args

    server = h.ServerProcess(args, tmp_path / "server.log", use_console_command=True).wait_ready()
    try:
        with IrisClient(server.grpc_target, model_name=served.name) as client:
            (row,) = client.predict([[5.1, 3.5, 1.4, 0.2]])  # Fisher's first sample, in FEATURE_KEYS order
            assert row.species == constants.CLASS_NAMES[0], row
            # Enough requests that at the configured sampling rate some are logged (none: p < 1e-8).
            sent = int(20 / logged.sampling_config.sampling_rate)
            for _ in range(sent):
                client.predict([[5.1, 3.5, 1.4, 0.2]])
        request = model_management_pb2.ReloadConfigRequest(config=config)
        with grpc.insecure_channel(server.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
    finally:
        assert server.stop() == 0, server.log()  # SIGTERM writes what is still queued
    records = list(request_logs.read_records(logged.log_collector_config.filename_prefix))
    assert 1 <= len(records) < sent, (len(records), sent)
    print(f"{len(records)} of {sent + 1} requests logged at sampling rate {logged.sampling_config.sampling_rate:g}; "
          f"{sum(map(len, records)) / len(records):.0f} bytes a record (+16 framing)")
    for record in records:
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        assert (entry.log_metadata.model_spec.name, entry.log_metadata.model_spec.version.value) == (served.name, 1)
        assert entry.log_metadata.sampling_config == logged.sampling_config
        assert entry.predict_log.response.outputs[constants.PREDICTED_OUTPUT].string_val == [b"setosa"]
