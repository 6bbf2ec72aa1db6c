"""The Keras classifier: built for training, recompiled for export (the runtime and strategy: runtime.py)."""
import tensorflow as tf

from components import constants, runtime


def build_model(num_classes: int, hidden_units: int = 8, learning_rate: float = 0.01, l2: float = 0.0,
                dropout: float = 0.0, label_smoothing: float = 0.0, steps_per_execution: int = 1) -> tf.keras.Model:
    """One hidden layer on the four transformed measurements; softmax over the species ids.

    Compiled for training: dropout on the hidden layer and label smoothing regularise the fit (Iris'
    versicolor and virginica overlap; without them a few boundary rows drive the logits apart). Call
    compile_for_export once trained."""
    runtime.skip_autograph_for_tf_keras()
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

