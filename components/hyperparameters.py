"""Hyperparameters: the Trainer's knobs, carried from PipelineConfig to run_fn as custom_config (no TF import).

The training budget (Hyperparameters.budget) bounds the work whatever the number of rows n:
  batch = the largest power of two giving at least 15 steps per epoch, within [8, 1024] per replica, with the
  learning rate scaled by sqrt(batch / 8) up to 0.05; steps = min(epochs x ceil(n / batch), max_steps);
  dropout (a regulariser for small data) is scaled by min(1, 1000 / n).
Training stops earlier when the eval split's loss (checked every round of at most 100 steps) has not improved
for `early_stopping_patience` rounds, and keeps the best round's weights; this needs an eval split of at least
1,000 examples (a smaller one is too noisy to choose weights on) and reads at most 10,000 of them.
Fisher's 150 rows (120 train) give today's 100 epochs x 15 steps of batch 8 at learning rate 0.01.
"""
import dataclasses
import json
import math
import os
from typing import Any, Dict

TRAINING_RECORD = "training.json"  # written by the Trainer in its model_run dir: what a run used and did


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the rule allows for one training run: its batch, learning rate and step bound."""
    batch_per_replica: int
    global_batch: int        # batch_per_replica x replicas in sync
    learning_rate: float
    dropout: float
    steps: int               # the most optimizer steps the run may take: a whole number of rounds
    steps_per_round: int     # steps between two checks of the eval loss (one tf.function call each)

    @property
    def rounds(self) -> int:
        return self.steps // self.steps_per_round


@dataclasses.dataclass
class Hyperparameters:
    hidden_units: int = 8
    learning_rate: float = 0.01  # at batch_size_per_replica; larger batches scale it (see budget)
    l2: float = 0.0
    dropout: float = 0.1  # on the hidden layer while training, scaled down for large data (see budget)
    dropout_examples: int = 1000  # dropout x min(1, this / n): a regulariser for small data only
    label_smoothing: float = 0.1  # training targets (1 - this) x one-hot + this / num_classes
    epochs: int = 100  # passes over the train split, unless max_steps comes first
    batch_size_per_replica: int = 8  # the smallest batch per replica (small data); global = this x replicas
    max_batch_size_per_replica: int = 1024
    min_steps_per_epoch: int = 15  # the batch grows with the data while an epoch keeps at least this many steps
    max_learning_rate: float = 0.05
    max_steps: int = 2000  # bounds the work whatever the rows: at most max_steps x batch examples are read
    max_steps_per_round: int = 100  # the eval loss is checked at least this often
    early_stopping_patience: int = 20  # rounds without a better eval loss before training stops
    early_stopping_min_eval_examples: int = 1000  # smaller eval splits: no early stopping
    max_eval_examples: int = 10000  # the early-stopping loss is computed on at most this many eval examples
    seed: int = 42
    cpu_replicas: int = 0  # >1: MirroredStrategy over this many logical CPU devices (no GPU needed)

    @classmethod
    def from_custom_config(cls, custom_config: Dict[str, Any]) -> "Hyperparameters":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (custom_config or {}).items() if k in known})

    def budget(self, num_train_examples: int, replicas: int = 1) -> Budget:
        """The training budget for this many train examples and replicas in sync (the rule in the module doc)."""
        if num_train_examples < 1 or replicas < 1 or self.epochs < 1 or self.max_steps < 1:
            raise ValueError(f"no training budget for {num_train_examples} examples, {replicas} replicas, "
                             f"{self.epochs} epochs, {self.max_steps} max steps: each must be >= 1")
        per_replica_rows = num_train_examples / (self.min_steps_per_epoch * replicas)
        power = 2 ** math.floor(math.log2(per_replica_rows)) if per_replica_rows >= 1 else 1
        batch = max(self.batch_size_per_replica, min(self.max_batch_size_per_replica, power))
        global_batch = batch * replicas
        learning_rate = min(self.learning_rate * math.sqrt(batch / self.batch_size_per_replica),
                            max(self.max_learning_rate, self.learning_rate))
        steps = min(self.epochs * math.ceil(num_train_examples / global_batch), self.max_steps)
        steps_per_round = min(math.ceil(num_train_examples / global_batch), self.max_steps_per_round, steps)
        return Budget(batch_per_replica=batch, global_batch=global_batch, learning_rate=learning_rate,
                      dropout=self.dropout * min(1.0, self.dropout_examples / num_train_examples),
                      steps=steps - steps % steps_per_round, steps_per_round=steps_per_round)


def describe_training(model_run_dir: str) -> str:
    """The run summary's line from the Trainer's TRAINING_RECORD ("" if it has none, e.g. a remote dir)."""
    path = os.path.join(model_run_dir, TRAINING_RECORD)
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        r = json.load(f)
    stopped = f", stopped early, best at step {r['best_step']}" if r["stopped_early"] else ""
    return (f"Training: steps {r['steps']} of at most {r['max_steps']}{stopped}, batch {r['global_batch']}, "
            f"learning rate {r['learning_rate']:.3g}, {r['num_train_examples']} train examples"
            + (f", early stopping on {r['num_eval_examples']} eval examples" if r["num_eval_examples"] else ""))
