"""The prod overlay's monitor CronJob (issue 13): `iris-tfx monitor` over the request logs the prod model servers
write, on the same volume read-only, its window (--since) equal to its schedule's period, the pipeline data and
ML Metadata where the statistics are found, a Job that fails (the alert) on a verdict without retrying it, and a
NetworkPolicy that admits nothing and lets it reach only the cluster DNS and ML Metadata."""
import argparse
import contextlib
import copy
import csv
import datetime
import json
import os
import pathlib
import re
import subprocess
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from k8s_helpers import (CONFIGMAP, DNS_NAMESPACE, DNS_PODS, MLMD_NAMESPACE, MLMD_PODS, MONITOR, MONITOR_COMMAND,
                         MONITOR_CONTAINER, MONITORED_OVERLAYS, MONITORING_PVC, OVERLAYS_DIR, PIPELINE_DATA_PVC,
                         PROJECT_IMAGE, REPO, REQUEST_LOGS_PVC, TFJOB, flags, kustomization, monitor_container,
                         monitor_pod, moved_path, one, parse_models_config, render_overlay, server_args, server_mounts,
                         serving_container, volume_mounted_at, write_serving_config)

from iris_tfx import monitor as monitor_command
from pipeline.monitor import parse_since

# The exit codes of `iris-tfx monitor` that are verdicts, in the order of the Job's FailJob rules (the Job's failure
# message names the rule's index): skew or drift found, bad input (no logged requests in the window, an unknown
# version).
VERDICT_EXIT_CODES = (monitor_command.EXIT_FOUND, monitor_command.EXIT_USAGE)


@pytest.fixture(scope="module", params=sorted(MONITORED_OVERLAYS))
def objects(request) -> List[dict]:
    """A monitored overlay as rendered."""
    return render_overlay(request.param)


def duration_seconds(since: str) -> int:
    """How far back `iris-tfx monitor --since` reaches, in seconds, as the monitor reads it; an absolute time (which a
    CronJob would repeat every run) fails."""
    now = datetime.datetime(2026, 11, 30, 12, tzinfo=datetime.timezone.utc)
    assert re.fullmatch(r"\d+[smhd]", since), f"--since {since}: a CronJob needs a span back from now, like 1h"
    return int((now - parse_since(since, now)).total_seconds())


def monitor_args(objects: List[dict]) -> argparse.Namespace:
    """The monitor container's command line as `iris-tfx` parses it (its own parser: unknown flags fail)."""
    from iris_tfx.main import parser
    container = monitor_container(objects)
    assert container["command"] == MONITOR_COMMAND
    return parser().parse_args(container["command"][1:] + container["args"])


def schedule_period_seconds(schedule: str) -> int:
    """The period of a cron schedule that runs every N minutes, hours or days at fixed offsets; other forms (several
    times a day at irregular hours, weekdays) have no single period and fail. Hand-written: no cron library is a
    dependency of the project, and only these forms make a fixed --since right."""
    minute, hour, day, month, weekday = schedule.split()
    assert (month, weekday) == ("*", "*"), f"{schedule}: months and weekdays give no single period"

    def step(field: str, unit: int) -> int:
        match = re.fullmatch(r"\*/(\d+)", field)
        return int(match.group(1)) * unit if match else 0

    if step(minute, 60):
        assert (hour, day) == ("*", "*"), schedule
        return step(minute, 60)
    assert minute.isdigit(), f"{schedule}: the minute must be fixed or */N"
    if hour == "*" or step(hour, 3600):
        assert day == "*", schedule
        return step(hour, 3600) or 3600
    assert hour.isdigit(), f"{schedule}: the hour must be fixed, * or */N"
    assert day == "*" or re.fullmatch(r"\*/\d+", day), schedule
    return step(day, 86400) or 86400


def test_schedule_periods_are_read_right():
    assert schedule_period_seconds("17 * * * *") == duration_seconds("1h") == 3600
    assert schedule_period_seconds("*/15 * * * *") == duration_seconds("15m")
    assert schedule_period_seconds("0 */6 * * *") == duration_seconds("6h")
    assert schedule_period_seconds("30 2 * * *") == duration_seconds("1d")
    for irregular in ("0 1,13 * * *", "0 2 * * 1"):
        with pytest.raises(AssertionError):
            schedule_period_seconds(irregular)


def test_cronjob_command_line_is_the_monitor_commands(objects):
    args = monitor_args(objects)
    assert (args.command, args.handler.__module__) == ("monitor", monitor_command.__name__)
    # Every flag is given as --name=value, once, and means what the command reads.
    given = flags(monitor_container(objects))
    assert {name: getattr(args, name) for name in given} == given
    assert given.keys() == {"logs", "since", "metadata_grpc", "workdir"}
    misspelt = copy.deepcopy(objects)
    monitor_container(misspelt)["args"].append("--metadata_grpc_port=8080")
    with pytest.raises(SystemExit):  # the parser refuses what the command does not know
        monitor_args(misspelt)


def test_monitor_runs_on_the_log_prefix_the_servers_write(objects):
    container = monitor_container(objects)
    pod = monitor_pod(objects)
    args = flags(container)
    # The project image of the overlay, the one whose `iris-tfx serve` writes the logs.
    (image,) = [i for i in kustomization(OVERLAYS_DIR / "prod")["images"] if i["name"] == PROJECT_IMAGE]
    assert container["image"] == serving_container(objects)["image"] == f"{image['newName']}:{image['newTag']}"
    config = parse_models_config(one(objects, "ConfigMap", CONFIGMAP)["data"]["models.config"])
    prefixes = {m.logging_config.log_collector_config.filename_prefix for m in config.model_config_list.config}
    assert prefixes == {args["logs"]}
    # The same claim at the same path as in the serving pods (read-write there), read-only here, both as mount and
    # as claim.
    volume, mount = volume_mounted_at(pod, container, args["logs"])
    serving_pod = one(objects, "Deployment", "iris-serving")["spec"]["template"]["spec"]
    serving_volume, serving_mount = volume_mounted_at(serving_pod, serving_container(objects), args["logs"])
    assert volume["persistentVolumeClaim"] == {"claimName": REQUEST_LOGS_PVC, "readOnly": True}
    assert serving_volume["persistentVolumeClaim"]["claimName"] == REQUEST_LOGS_PVC
    assert mount["mountPath"] == serving_mount["mountPath"] and mount.get("readOnly") is True
    assert not serving_mount.get("readOnly")


def test_monitor_reads_the_pipeline_data_and_writes_only_its_results(objects):
    container = monitor_container(objects)
    pod = monitor_pod(objects)
    args = flags(container)
    # --workdir (where monitoring/<run id>/<time>/ go) is the one read-write claim.
    volume, mount = volume_mounted_at(pod, container, args["workdir"])
    assert volume.get("persistentVolumeClaim") == {"claimName": MONITORING_PVC} and not mount.get("readOnly")
    writable = {m["name"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {mount["name"], "tmp"}
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    # The pipeline data read-only, where the training workers read it too (the statistics URIs ML Metadata records
    # are paths on it).
    data = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == PIPELINE_DATA_PVC]
    (data_mount,) = [m for m in container["volumeMounts"] if m["name"] == data[0]["name"]]
    assert data[0]["persistentVolumeClaim"].get("readOnly") is True and data_mount.get("readOnly") is True
    worker = one(objects, "TFJob", TFJOB)["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    worker_volume = next(v for v in worker["volumes"]
                         if v.get("persistentVolumeClaim", {}).get("claimName") == PIPELINE_DATA_PVC)
    worker_mount = next(m for m in worker["containers"][0]["volumeMounts"] if m["name"] == worker_volume["name"])
    assert data_mount["mountPath"] == worker_mount["mountPath"]


def test_monitor_window_is_its_schedule_and_runs_never_overlap(objects):
    cronjob = one(objects, "CronJob", MONITOR)["spec"]
    job = cronjob["jobTemplate"]["spec"]
    period = schedule_period_seconds(cronjob["schedule"])
    # Consecutive runs judge consecutive windows: --since is the period.
    assert duration_seconds(flags(monitor_container(objects))["since"]) == period
    assert cronjob["timeZone"] == "Etc/UTC"
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert 0 < job["activeDeadlineSeconds"] < period
    assert 0 < cronjob["startingDeadlineSeconds"] < period
    # Failed Jobs are the alert's signal and its evidence: kept; a few successful ones for their logs.
    assert cronjob["failedJobsHistoryLimit"] >= 1 and cronjob["successfulJobsHistoryLimit"] >= 1
    assert "ttlSecondsAfterFinished" not in job  # it would delete failed Jobs before an alert sees them


def retried_exit_codes(job: dict, codes: Set[int]) -> Set[int]:
    """Which of `codes` the Job's podFailurePolicy would retry (not fail the Job on at once) while backoffLimit allows."""
    retried = set(codes)
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        on = rule.get("onExitCodes")
        if rule["action"] == "FailJob" and on and on.get("containerName") in (None, MONITOR_CONTAINER):
            values = set(on["values"])
            retried -= values if on["operator"] == "In" else codes - values
    return retried


def test_a_verdict_fails_the_job_at_once_and_a_crash_is_retried(objects):
    job = one(objects, "CronJob", MONITOR)["spec"]["jobTemplate"]["spec"]
    # podFailurePolicy needs restartPolicy Never; a restarted container would rerun the same verdict.
    assert monitor_pod(objects)["restartPolicy"] == "Never"
    assert retried_exit_codes(job, set(VERDICT_EXIT_CODES)) == set()
    assert retried_exit_codes(job, {137, 139, 3}) == {137, 139, 3} and job["backoffLimit"] >= 1
    # One rule per verdict, so the Job's failure message ("... matching FailJob rule at index N") tells which.
    fail_rules = [r["onExitCodes"] for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert [(r["operator"], r["values"]) for r in fail_rules] == [("In", [code]) for code in VERDICT_EXIT_CODES]
    ignored = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "Ignore"]
    assert [c["type"] for r in ignored for c in r["onPodConditions"]] == ["DisruptionTarget"]
    broken = copy.deepcopy(job)
    broken["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] = [3]
    assert retried_exit_codes(broken, set(VERDICT_EXIT_CODES)) == {VERDICT_EXIT_CODES[0]}


def monitor_policy_problems(policy: dict, mlmd_port: int) -> List[str]:
    """What lets the monitor's NetworkPolicy admit any connection or reach more than the cluster DNS and ML Metadata's
    gRPC port; empty when it is as intended."""
    problems = []
    if set(policy.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append(f"policyTypes {policy.get('policyTypes')}: both Ingress and Egress must be restricted")
    if policy.get("ingress"):
        problems.append(f"ingress rules {policy['ingress']}: nothing connects to the monitor")
    reached: Dict[str, Set[Tuple[str, int]]] = {}
    for rule in policy.get("egress", []):
        if not rule.get("to") or not rule.get("ports"):
            problems.append(f"egress rule {rule} reaches any destination or port")
        for peer in rule.get("to", []):
            if "ipBlock" in peer or not peer.get("podSelector", {}).get("matchLabels") or not peer.get(
                    "namespaceSelector", {}).get("matchLabels"):
                problems.append(f"peer {peer} is not limited to labelled pods in a named namespace")
            key = json.dumps(peer, sort_keys=True)
            reached[key] = reached.get(key, set()) | {(p.get("protocol", "TCP"), p.get("port")) for p in
                                                      rule.get("ports", [])}
    expected = {
        json.dumps({"namespaceSelector": {"matchLabels": DNS_NAMESPACE}, "podSelector": {"matchLabels": DNS_PODS}},
                   sort_keys=True): {("UDP", 53), ("TCP", 53)},
        json.dumps({"namespaceSelector": {"matchLabels": MLMD_NAMESPACE}, "podSelector": {"matchLabels": MLMD_PODS}},
                   sort_keys=True): {("TCP", mlmd_port)},
    }
    if reached != expected:
        problems.append(f"reached peers and ports {reached} differ from {expected}")
    return problems


def test_monitor_network_policy_admits_nothing_and_reaches_only_dns_and_ml_metadata(objects):
    policy = one(objects, "NetworkPolicy", MONITOR)["spec"]
    pod_labels = one(objects, "CronJob", MONITOR)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # --metadata_grpc names ML Metadata's Service as <service>.<namespace>:<port>: the namespace and port the policy
    # lets the pods reach (the Service's port is its pods' port in Kubeflow Pipelines' manifests).
    host, _, port = flags(monitor_container(objects))["metadata_grpc"].rpartition(":")
    service, _, namespace = host.partition(".")
    assert (service, {"kubernetes.io/metadata.name": namespace}) == ("metadata-grpc-service", MLMD_NAMESPACE)
    assert monitor_policy_problems(policy, int(port)) == []
    for break_policy in (lambda p: p.update(ingress=[{}]), lambda p: p.update(policyTypes=["Egress"]),
                         lambda p: p["egress"][1]["to"][0].pop("namespaceSelector"),
                         lambda p: p["egress"][1]["ports"].append({"port": 443}),
                         lambda p: p["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
                         lambda p: p["egress"][0].pop("ports")):
        broken = copy.deepcopy(policy)
        break_policy(broken)
        assert monitor_policy_problems(broken, int(port)), broken
    assert monitor_policy_problems(policy, int(port) + 1)


# --- the CronJob's command run for real on what the prod server logged ------------------------------------------

@contextlib.contextmanager
def metadata_service(sqlite_path: str) -> Iterator[str]:
    """ML Metadata's gRPC MetadataStoreService over a pipeline's SQLite store at 127.0.0.1:<port>, for --metadata_grpc.
    Kubeflow runs metadata_store_server, which is not on PyPI; this serves the same C++ store (ml-metadata's own
    binding) through the same service definition, method for method (hand-written: ml-metadata ships no server)."""
    from concurrent import futures
    import grpc
    from ml_metadata import errors
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_service_pb2 as service_pb2
    from pipeline.config import sqlite_metadata
    store = metadata_store.MetadataStore(sqlite_metadata(sqlite_path))
    service = service_pb2.DESCRIPTOR.services_by_name["MetadataStoreService"]

    def method(name: str, response_class: type):
        def call(request, context):
            response = response_class()
            try:
                store._call(name, request, response)  # pylint: disable=protected-access  (the binding's dispatch)
            except errors.StatusError as e:
                context.abort(next(c for c in grpc.StatusCode if c.value[0] == e.error_code), e.message)
            return response
        return call

    handlers = {}
    for m in service.methods:
        request_class, response_class = (getattr(service_pb2, m.input_type.name),
                                         getattr(service_pb2, m.output_type.name))
        handlers[m.name] = grpc.unary_unary_rpc_method_handler(
            method(m.name, response_class), request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # one SQLite connection, one caller at a time
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service.full_name, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def pipeline_workdir(request) -> pathlib.Path:
    """A pipeline workdir with a pushed model and its ML Metadata: the session's run, or IRIS_TFX_TEST_WORKDIR (one an
    earlier `iris-tfx run` made with the current schema)."""
    path = os.environ.get("IRIS_TFX_TEST_WORKDIR")
    return pathlib.Path(path) if path else request.getfixturevalue("pipeline_run").workdir


def fisher_rows(factor: float) -> List[List[float]]:
    """data/iris.csv's measurements, each multiplied by FACTOR."""
    from components import constants
    with open(REPO / constants.DEFAULT_DATA, newline="") as f:
        return [[float(row[k]) * factor for k in constants.FEATURE_KEYS] for row in csv.DictReader(f)]


@pytest.mark.e2e
def test_cronjob_command_finds_the_skew_in_what_the_prod_server_logged(pipeline_workdir, tmp_path):
    """The prod server (rendered flags and ConfigMap, volumes moved under tmp_path) answers Fisher's rows x10 and logs
    them at prod's sampling rate; the CronJob's own command line (paths moved; ML Metadata served over gRPC from the
    run's store) finds skew on all four measurements and exits 1, which fails the Job at once (the alert)."""
    from components import constants
    from serving import harness as h
    from serving.client import IrisClient

    objects = render_overlay("prod")
    container = serving_container(objects)
    mounts = server_mounts(container, tmp_path)
    config = write_serving_config(objects, mounts)
    (served,) = config.model_config_list.config
    (version,) = sorted((pipeline_workdir / "models" / constants.MODEL_NAME).iterdir())[-1:]
    h.copy_version(version, pathlib.Path(served.base_path), int(version.name))  # the version ML Metadata knows
    server = h.ServerProcess(server_args(container, mounts), tmp_path / "server.log", use_console_command=True)
    try:
        server.wait_ready()
        rows = fisher_rows(10.0)
        sent = int(40 / served.logging_config.sampling_config.sampling_rate)  # ~40 logged
        with IrisClient(server.grpc_target, model_name=served.name) as client:
            for i in range(sent):
                client.predict([rows[i % len(rows)]])
    finally:
        assert server.stop() == 0, server.log()

    monitor = monitor_container(objects)
    # The CronJob's volumes: the logs where the server wrote them, the results on a fresh directory.
    job_mounts = {mount_of(monitor, REQUEST_LOGS_PVC, objects): tmp_path / "logs",
                  mount_of(monitor, MONITORING_PVC, objects): tmp_path / "monitoring"}
    (tmp_path / "monitoring").mkdir()
    with metadata_service(str(pipeline_workdir / "metadata.sqlite")) as target:
        args = [f"--{name}={target if name == 'metadata_grpc' else moved_path(value, job_mounts)}"
                for name, value in flags(monitor).items()]
        proc = subprocess.run(h.iris_tfx_command() + monitor["command"][1:] + args, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    job = one(objects, "CronJob", MONITOR)["spec"]["jobTemplate"]["spec"]
    assert proc.returncode == VERDICT_EXIT_CODES[0], proc.stdout + proc.stderr
    assert retried_exit_codes(job, {proc.returncode}) == set()
    (result,) = (tmp_path / "monitoring").glob("*/*/*/result.json")
    data = json.loads(result.read_text())
    assert data["found"] is True and data["model"] == {"name": served.name, "version": int(version.name)}
    skewed = {f["name"] for f in data["features"] if f["skew"]["found"]}
    assert skewed >= set(constants.FEATURE_KEYS), (skewed, proc.stdout)
    print(proc.stdout)


def mount_of(container: dict, claim: str, objects: List[dict]) -> str:
    """The mount path of the monitor pod's volume of CLAIM."""
    volume = next(v for v in monitor_pod(objects)["volumes"]
                  if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
