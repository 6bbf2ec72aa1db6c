"""The training job of the overlays (a Kubeflow TFJob): its schema, the standalone trainer it runs with its flags and
volumes, the project image, and the NetworkPolicy that keeps its workers to each other and DNS."""
import copy
import os
import subprocess
import sys

import jsonschema
import pytest

from k8s_helpers import (CONFIGMAP, DEPLOYMENT, OVERLAYS_DIR, PROJECT_IMAGE, REPO, TFJOB, TRAIN_FLAGS, TRAIN_MODULE,
                         available_overlays, kustomization, one, parse_models_config, render_overlay, volume_mounted_at)
from k8s_schemas import TFJOB_SCHEMA


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


@pytest.mark.e2e
def test_the_standalone_trainer_takes_the_tfjobs_flags():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", TRAIN_MODULE, "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in TRAIN_FLAGS:
        assert flag in proc.stdout


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
