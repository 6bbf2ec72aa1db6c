"""TFX Trainer run_fn: trains the classifier under the selected strategy and exports the serving model."""
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components import constants, model as model_lib
from components.hyperparameters import Hyperparameters


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX entry point: train on the transformed train split, export to fn_args.serving_model_dir."""
    hparams = Hyperparameters.from_custom_config(fn_args.custom_config)
    strategy = model_lib.select_strategy(hparams.cpu_replicas)  # first: collectives need an unused runtime
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return dataset(fn_args.data_accessor, fn_args.train_files, tf_transform_output, hparams,
                        input_context)

    train_and_export(strategy, dataset_fn, count_examples(fn_args.train_files), tf_transform_output, hparams,
                     fn_args.serving_model_dir, fn_args.model_run_dir)


def count_examples(file_patterns: List[str]) -> int:
    """Number of records in the (GZIP'd TFRecord) files matching the patterns: one cheap pass."""
    files = [f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(0, lambda n, _: n + 1))


def train(strategy: tf.distribute.Strategy, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
          num_examples: int, num_classes: int, hparams: Hyperparameters, log_dir: Optional[str] = None
          ) -> tf.keras.Model:
    """Seeds, builds the model inside the strategy (see model.select_strategy) and fits it."""
    if not tf.keras.__name__.startswith("tf_keras"):
        raise RuntimeError("TFX 1.16 needs Keras 2: install tf-keras and set TF_USE_LEGACY_KERAS=1 before "
                           f"TensorFlow is imported (tf.keras is {tf.keras.__name__})")
    if num_examples < 1:
        raise ValueError("there are no training examples")
    tf.keras.utils.set_random_seed(hparams.seed)
    tf.config.experimental.enable_op_determinism()
    steps_per_epoch = math.ceil(num_examples / (hparams.batch_size_per_replica * strategy.num_replicas_in_sync))
    with strategy.scope():
        model = model_lib.build_model(
            num_classes=num_classes, hidden_units=hparams.hidden_units, learning_rate=hparams.learning_rate,
            l2=hparams.l2, dropout=hparams.dropout, label_smoothing=hparams.label_smoothing,
            steps_per_execution=steps_per_epoch)  # one tf.function call per epoch: far less overhead
    callbacks = [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")] if log_dir else []
    model.fit(strategy.distribute_datasets_from_function(dataset_fn), epochs=hparams.epochs,
              steps_per_epoch=steps_per_epoch, verbose=0, callbacks=callbacks)
    with strategy.scope():
        model_lib.compile_for_export(model)
    return model


def train_and_export(strategy: tf.distribute.Strategy,
                     dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset], num_examples: int,
                     tf_transform_output: tft.TFTransformOutput, hparams: Hyperparameters,
                     serving_model_dir: str, log_dir: str) -> bool:
    """Trains, then exports the serving model; under multi-worker only the chief's copy is kept.

    Returns whether this task wrote serving_model_dir (False on non-chief workers)."""
    chief = is_chief(strategy)
    scratch = None if chief else tempfile.mkdtemp(prefix="iris-worker-")  # others write only to join collectives
    try:
        model = train(strategy, dataset_fn, num_examples,
                      tf_transform_output.vocabulary_size_by_name(constants.LABEL_VOCABULARY), hparams,
                      log_dir if chief else os.path.join(scratch, "logs"))
        export_serving_model(model, tf_transform_output,
                             serving_model_dir if chief else os.path.join(scratch, "model"))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return chief


def dataset(data_accessor: tfx.components.DataAccessor, file_pattern: List[str],
             tf_transform_output: tft.TFTransformOutput, hparams: Hyperparameters,
             input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Endless shuffled (seeded, reshuffled every pass) per-replica batches of this input pipeline's shard."""
    batches = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=hparams.batch_size_per_replica,  # per replica: the global batch scales with replicas
            label_key=constants.transformed_name(constants.LABEL_KEY),
            shuffle=True, shuffle_seed=hparams.seed, num_epochs=None),
        tf_transform_output.transformed_metadata.schema)
    return batches.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this is a multi-worker task other than the chief (or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def export_serving_model(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                         export_dir: str) -> None:
    """Saves the model with its serving signatures: raw features in, class probabilities and names out."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    class_names = tf.constant(tf_transform_output.vocabulary_by_name(constants.LABEL_VOCABULARY))
    raw_spec = tf_transform_output.raw_feature_spec()
    serving_spec = {k: v for k, v in raw_spec.items() if k != constants.LABEL_KEY}

    def predict(raw_features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        probabilities = model(model.tft_layer(raw_features))
        batch = tf.shape(probabilities)[0]
        return {
            constants.PROBABILITIES_OUTPUT: probabilities,
            constants.CLASSES_OUTPUT: tf.tile(class_names[tf.newaxis, :], [batch, 1]),
            constants.PREDICTED_OUTPUT: tf.gather(class_names, tf.argmax(probabilities, axis=1)),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=constants.EXAMPLES_INPUT)])
    def serve_examples(examples):
        return predict(tf.io.parse_example(examples, serving_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=constants.CLASSIFY_INPUT)])
    def classify(inputs):
        outputs = predict(tf.io.parse_example(inputs, serving_spec))
        return {constants.CLASSES_OUTPUT: outputs[constants.CLASSES_OUTPUT],
                constants.SCORES_OUTPUT: outputs[constants.PROBABILITIES_OUTPUT]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=key)
                                  for key in constants.FEATURE_KEYS])
    def serve_raw(*features):
        return predict({key: tf.reshape(value, [-1, 1])
                        for key, value in zip(constants.FEATURE_KEYS, features)})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=constants.EXAMPLES_INPUT)])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    model.save(export_dir, save_format="tf", signatures={
        constants.SERVING_SIGNATURE: serve_examples.get_concrete_function(),
        constants.CLASSIFY_SIGNATURE: classify.get_concrete_function(),
        constants.RAW_SIGNATURE: serve_raw.get_concrete_function(),
        constants.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
    })
    _set_method_name(export_dir, constants.CLASSIFY_SIGNATURE, tf.saved_model.CLASSIFY_METHOD_NAME)


def _set_method_name(export_dir: str, signature: str, method_name: str) -> None:
    """TF2's SavedModel writer marks every signature 'predict'; TF Serving's Classify needs 'classify'."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(path, "rb").read())
    saved_model.meta_graphs[0].signature_def[signature].method_name = method_name
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())
