"""JSON schemas of the required fields of the custom resources the manifests use (TFJob, InferenceService), as
their operators' CRDs define them: kubernetes-validate has schemas for built-in kinds only."""

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
