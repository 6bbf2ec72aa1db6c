"""The Kubernetes overlays (k8s/overlays) as `kubectl kustomize` renders them: every built-in object validated by
kubernetes-validate in strict mode against a pinned Kubernetes version, kustomizations Debian's kubectl reads,
one namespace per overlay, selectors and references that resolve, locked-down pods with resources, and sizes."""
import kubernetes_validate
import pytest
import yaml

from k8s_helpers import (CUSTOM_KINDS, DEPLOYMENT, K8S, K8S_VERSION, KUSTOMIZE_V2_FIELDS, MONITOR, MONITORED_OVERLAYS,
                         OVERLAYS_DIR, TFJOB, assert_container_locked_down, available_overlays, dockerfile_user,
                         kustomization, monitor_pod, one, OverlayError, overlay_kinds, overlay_pvcs, quantity, render,
                         render_overlay, serving_container, validate_builtin)


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
    assert kinds == overlay_kinds(overlay)
    namespace = kustomization(OVERLAYS_DIR / overlay)["namespace"]
    assert one(objects, "Namespace")["metadata"]["name"] == namespace
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"} == overlay_pvcs(overlay)
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"} == {DEPLOYMENT, TFJOB} | (
        {MONITOR} if overlay in MONITORED_OVERLAYS else set())


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
    assert validated == overlay_kinds(overlay) - CUSTOM_KINDS
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
    # Nor the monitor's, which its own NetworkPolicy selects (and no other policy does).
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if overlay in MONITORED_OVERLAYS:
        cronjob = one(objects, "CronJob", MONITOR)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= cronjob.items()
        assert [p["metadata"]["name"] for p in policies
                if p["spec"]["podSelector"]["matchLabels"].items() <= cronjob.items()] == [MONITOR]
    # Every ConfigMap and claim a pod uses is in the rendering.
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pods = [deployment["spec"]["template"]["spec"]] + [
        r["template"]["spec"] for r in one(objects, "TFJob")["spec"]["tfReplicaSpecs"].values()] + (
        [monitor_pod(objects)] if overlay in MONITORED_OVERLAYS else [])
    for pod in pods:
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names


@pytest.mark.parametrize("overlay", available_overlays())
def test_security_context_and_resources(overlay):
    objects = render_overlay(overlay)
    deployment = one(objects, "Deployment", DEPLOYMENT)
    job = one(objects, "TFJob", TFJOB)
    pods = [("serving", deployment["spec"]["template"]["spec"])] + [
        (name, r["template"]["spec"]) for name, r in job["spec"]["tfReplicaSpecs"].items()] + (
        [("monitor", monitor_pod(objects))] if overlay in MONITORED_OVERLAYS else [])
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
