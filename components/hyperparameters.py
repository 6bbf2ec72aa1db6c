"""Hyperparameters: the Trainer's knobs, carried from PipelineConfig to run_fn as custom_config (no TF import)."""
import dataclasses
from typing import Any, Dict


@dataclasses.dataclass
class Hyperparameters:
    hidden_units: int = 8
    learning_rate: float = 0.01
    l2: float = 0.0
    dropout: float = 0.1  # on the hidden layer while training
    label_smoothing: float = 0.1  # training targets (1 - this) x one-hot + this / num_classes
    epochs: int = 100
    batch_size_per_replica: int = 8  # global batch = this x replicas in sync
    seed: int = 42
    cpu_replicas: int = 0  # >1: MirroredStrategy over this many logical CPU devices (no GPU needed)

    @classmethod
    def from_custom_config(cls, custom_config: Dict[str, Any]) -> "Hyperparameters":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (custom_config or {}).items() if k in known})
