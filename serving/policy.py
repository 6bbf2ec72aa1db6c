"""What a version policy serves, and what makes a version directory complete: TF Serving's rules, without
TensorFlow, for the manager and for `iris-tfx models` (which must stay quick: no TensorFlow import)."""
from typing import List, Sequence

from tensorflow_serving.config import model_server_config_pb2

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")  # a version directory without one is incomplete


def aspired(config: model_server_config_pb2.ModelConfig, candidates: Sequence[int]) -> List[int]:
    """Versions the model's version policy wants loaded (default: the latest one), ascending."""
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return sorted(candidates)
    if kind == "specific":
        return sorted(set(candidates) & set(policy.specific.versions))
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return sorted(candidates)[-n:]
