"""checkov (from `make setup`'s .venv-scan) scans the rendered manifests, the TFJob's and the InferenceService's pods
and the Dockerfile: any finding that is not in ACCEPTED_FINDINGS, with its reason, fails."""
import functools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Tuple

import pytest
import yaml

from k8s_helpers import (DEPLOYMENT, KSERVE, MONITOR, OVERLAYS_DIR, REPO, SERVING_IMAGE, TFJOB, available_overlays,
                         kustomization, one, render, render_overlay)

# checkov is a process of its own (a few seconds to a minute).
pytestmark = pytest.mark.e2e

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
    ("CKV_K8S_43", f"CronJob/{MONITOR}"): _DIGEST,
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
                ("kubernetes", f"Pod/{TFJOB}-worker"), ("kubernetes", "Pod/iris-predictor"),
                ("kubernetes", f"CronJob/{MONITOR}")}
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
