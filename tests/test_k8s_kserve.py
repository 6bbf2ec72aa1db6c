"""The optional KServe InferenceService (k8s/kserve): its schema, the same model and claim as the overlays'
model server, a locked-down container, and overlays that do not need KServe."""
import copy
import importlib.metadata

import jsonschema
import pytest

from k8s_helpers import (CONFIGMAP, DEPLOYMENT, KSERVE, assert_container_locked_down, available_overlays, one,
                         parse_models_config, render, render_overlay, serving_container, volume_mounted_at)
from k8s_schemas import INFERENCE_SERVICE_SCHEMA
from serving import defaults


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
