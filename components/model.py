"""The Keras classifier and the tf.distribute strategy it is built under."""
import json
import os
from typing import List

import tensorflow as tf

from components import constants


def build_model(num_classes: int, hidden_units: int = 8, learning_rate: float = 0.01, l2: float = 0.0,
                dropout: float = 0.0, label_smoothing: float = 0.0, steps_per_execution: int = 1) -> tf.keras.Model:
    """One hidden layer on the four transformed measurements; softmax over the species ids.

    Compiled for training: dropout on the hidden layer and label smoothing regularise the fit (Iris'
    versicolor and virginica overlap; without them a few boundary rows drive the logits apart). Call
    compile_for_export once trained."""
    skip_autograph_for_tf_keras()
    inputs = {
        constants.transformed_name(key): tf.keras.layers.Input(
            shape=(), name=constants.transformed_name(key), dtype=tf.float32)
        for key in constants.FEATURE_KEYS
    }
    x = tf.stack(list(inputs.values()), axis=-1)
    regularizer = tf.keras.regularizers.L2(l2) if l2 else None
    x = tf.keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regularizer, name="hidden")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer,
                                    name="probabilities")(x)
    model = tf.keras.Model(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=(SmoothedSparseCategoricalCrossentropy(label_smoothing) if label_smoothing
              else tf.keras.losses.SparseCategoricalCrossentropy()),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        steps_per_execution=steps_per_execution)
    return model


def compile_for_export(model: tf.keras.Model) -> None:
    """Recompiles a trained model with the plain sparse cross-entropy and accuracy (same optimizer).

    The Evaluator (TFMA) reloads the SavedModel with tf.keras, in processes that never import this
    module, and computes its compiled loss and metrics on the integer species labels: the saved
    training config must name only built-in Keras objects. Label smoothing, like dropout, is a
    training-time regulariser, not part of the model's evaluation loss."""
    model.compile(optimizer=model.optimizer, loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])


@tf.keras.utils.register_keras_serializable(package="iris")
class SmoothedSparseCategoricalCrossentropy(tf.keras.losses.Loss):
    """Cross-entropy of integer labels against targets (1 - label_smoothing) x one-hot + label_smoothing / K.

    tf.keras' SparseCategoricalCrossentropy has no label_smoothing; CategoricalCrossentropy's needs one-hot
    labels, and the datasets (and TFMA) carry integer ids."""

    def __init__(self, label_smoothing: float, name: str = "smoothed_sparse_categorical_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels = tf.reshape(tf.cast(y_true, tf.int32), tf.shape(y_pred)[:-1])  # [batch] or [batch, 1]
        return tf.keras.losses.categorical_crossentropy(
            tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype), y_pred,
            label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def skip_autograph_for_tf_keras() -> None:
    """TF 2.16 tells AutoGraph to leave `keras` alone but not `tf_keras` (Keras 2), so every first
    trace transpiles Keras' own source: ~10 s per model on these CPUs. Same rule, for tf_keras."""
    from tensorflow.python.autograph.core import config  # pylint: disable=g-import-not-at-top
    rule = config.DoNotConvert("tf_keras")
    if str(rule) not in map(str, config.CONVERSION_RULES):
        config.CONVERSION_RULES = (rule,) + config.CONVERSION_RULES


def cluster_workers(tf_config: str) -> List[str]:
    """Addresses of the chief and workers named by a TF_CONFIG JSON string (empty if none)."""
    cluster = json.loads(tf_config or "{}").get("cluster", {})
    return list(cluster.get("chief", [])) + list(cluster.get("worker", []))


def select_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """MultiWorkerMirrored if TF_CONFIG names >1 worker, else Mirrored over GPUs (or N logical CPUs), else default."""
    if len(cluster_workers(os.environ.get("TF_CONFIG", ""))) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()  # all visible GPUs
    if cpu_replicas > 1:
        return tf.distribute.MirroredStrategy(logical_cpus(cpu_replicas))
    return tf.distribute.get_strategy()


def logical_cpus(count: int) -> List[str]:
    """Names of `count` logical CPU devices, splitting the physical CPU if TF is not yet initialised."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < count:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError as err:  # the runtime is initialised: devices can no longer change
            raise RuntimeError(
                f"cannot create {count} logical CPU devices: TensorFlow was initialised before the "
                f"strategy was chosen ({err}); set cpu_replicas before any TensorFlow work runs") from err
    return [device.name for device in tf.config.list_logical_devices("CPU")[:count]]
