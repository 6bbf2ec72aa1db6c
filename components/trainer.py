"""TFX Trainer run_fn: trains the classifier under the selected strategy and exports the serving model."""
import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components import constants, model as model_lib, runtime
from components.hyperparameters import TRAINING_RECORD, Hyperparameters


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX entry point: train on the transformed train split within the budget, early-stopping on the eval
    split; export to fn_args.serving_model_dir and record what was used in <model_run_dir>/training.json."""
    hparams = Hyperparameters.from_custom_config(fn_args.custom_config)
    strategy = runtime.select_strategy(hparams.cpu_replicas)  # first: collectives need an unused runtime
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    num_examples = count_examples(fn_args.train_files)
    budget = hparams.budget(num_examples, strategy.num_replicas_in_sync)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return dataset(fn_args.data_accessor, fn_args.train_files, tf_transform_output, hparams,
                       input_context, budget.batch_per_replica)

    train_and_export(strategy, dataset_fn, num_examples, tf_transform_output, hparams,
                     fn_args.serving_model_dir, fn_args.model_run_dir,
                     early_stopping_data(fn_args.data_accessor, fn_args.eval_files, tf_transform_output, hparams,
                                         budget.global_batch), schema_path=fn_args.schema_path)


def count_examples(file_patterns: List[str], limit: Optional[int] = None) -> int:
    """Number of records (up to limit) in the GZIP'd TFRecord files matching the patterns: one cheap pass."""
    files = [f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return int((records.take(limit) if limit else records).reduce(0, lambda n, _: n + 1))


@dataclasses.dataclass
class TrainingRecord:
    """What a training run used and did: written to <model_run_dir>/training.json for the run summary
    (hyperparameters.describe_training)."""
    num_train_examples: int
    replicas: int
    batch_per_replica: int
    global_batch: int
    learning_rate: float
    dropout: float
    max_steps: int           # the budget's bound
    steps: int               # optimizer steps actually run
    num_eval_examples: int   # examples the early-stopping loss was computed on (0: no early stopping)
    stopped_early: bool
    best_step: int           # the weights kept are those after this step (== steps without early stopping)

    def write(self, directory: str) -> None:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(os.path.join(directory, TRAINING_RECORD), "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)


def train(strategy: tf.distribute.Strategy, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
          num_examples: int, num_classes: int, hparams: Hyperparameters, log_dir: Optional[str] = None
          ) -> tf.keras.Model:
    """fit() without early stopping, returning only the model."""
    return fit(strategy, dataset_fn, num_examples, num_classes, hparams, log_dir)[0]


def fit(strategy: tf.distribute.Strategy, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
        num_examples: int, num_classes: int, hparams: Hyperparameters, log_dir: Optional[str] = None,
        eval_data: Optional[Tuple[tf.data.Dataset, int]] = None) -> Tuple[tf.keras.Model, TrainingRecord]:
    """Seeds, builds the model inside the strategy (see runtime.select_strategy) and fits it within the budget.

    dataset_fn must batch by hparams.budget(num_examples, replicas).batch_per_replica. eval_data, (global
    batches, number of examples): early stopping on its loss, keeping the best round's weights."""
    if not tf.keras.__name__.startswith("tf_keras"):
        raise RuntimeError("TFX 1.16 needs Keras 2: install tf-keras and set TF_USE_LEGACY_KERAS=1 before "
                           f"TensorFlow is imported (tf.keras is {tf.keras.__name__})")
    if num_examples < 1:
        raise ValueError("there are no training examples")
    budget = hparams.budget(num_examples, strategy.num_replicas_in_sync)
    tf.keras.utils.set_random_seed(hparams.seed)
    tf.config.experimental.enable_op_determinism()
    with strategy.scope():
        model = model_lib.build_model(
            num_classes=num_classes, hidden_units=hparams.hidden_units, learning_rate=budget.learning_rate,
            l2=hparams.l2, dropout=budget.dropout, label_smoothing=hparams.label_smoothing,
            steps_per_execution=budget.steps_per_round)  # one tf.function call per round: far less overhead
    callbacks: List[tf.keras.callbacks.Callback] = (
        [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")] if log_dir else [])
    stopper = None
    if eval_data is not None:
        stopper = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=hparams.early_stopping_patience,
                                                   restore_best_weights=True)
        callbacks.append(stopper)
    def budgeted_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        """dataset_fn's batches, checked against the budget: steps x batch is the work it bounds."""
        def check(features: Dict[str, tf.Tensor], labels: tf.Tensor) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.shape(labels)[0], budget.batch_per_replica,
                    message=f"dataset_fn must batch by the budget's {budget.batch_per_replica} per replica")]):
                return features, tf.identity(labels)
        return dataset_fn(input_context).map(check)

    history = model.fit(strategy.distribute_datasets_from_function(budgeted_fn), epochs=budget.rounds,
                        steps_per_epoch=budget.steps_per_round, verbose=0, callbacks=callbacks,
                        validation_data=eval_data[0] if eval_data else None)
    rounds_run = len(history.epoch)
    best_round = stopper.best_epoch + 1 if stopper and stopper.best_weights is not None else rounds_run
    with strategy.scope():
        model_lib.compile_for_export(model)
    return model, TrainingRecord(
        num_train_examples=num_examples, replicas=strategy.num_replicas_in_sync,
        batch_per_replica=budget.batch_per_replica, global_batch=budget.global_batch,
        learning_rate=budget.learning_rate, dropout=budget.dropout, max_steps=budget.steps,
        steps=rounds_run * budget.steps_per_round,
        num_eval_examples=eval_data[1] if eval_data else 0, stopped_early=rounds_run < budget.rounds,
        best_step=best_round * budget.steps_per_round)


def train_and_export(strategy: tf.distribute.Strategy,
                     dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset], num_examples: int,
                     tf_transform_output: tft.TFTransformOutput, hparams: Hyperparameters,
                     serving_model_dir: str, log_dir: str,
                     eval_data: Optional[Tuple[tf.data.Dataset, int]] = None, schema_path: Optional[str] = None) -> bool:
    """Trains, then exports the serving model (with the schema at schema_path, if given) and the TrainingRecord (in
    log_dir); under multi-worker only the chief's copies are kept. Returns whether this task wrote serving_model_dir
    (False on non-chief workers)."""
    chief = is_chief(strategy)
    scratch = None if chief else tempfile.mkdtemp(prefix="iris-worker-")  # others write only to join collectives
    try:
        model, record = fit(strategy, dataset_fn, num_examples,
                            tf_transform_output.vocabulary_size_by_name(constants.LABEL_VOCABULARY), hparams,
                            log_dir if chief else os.path.join(scratch, "logs"), eval_data)
        export_serving_model(model, tf_transform_output,
                             serving_model_dir if chief else os.path.join(scratch, "model"), schema_path)
        record.write(log_dir if chief else os.path.join(scratch, "logs"))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return chief


def dataset(data_accessor: tfx.components.DataAccessor, file_pattern: List[str],
            tf_transform_output: tft.TFTransformOutput, hparams: Hyperparameters,
            input_context: tf.distribute.InputContext, batch_per_replica: int) -> tf.data.Dataset:
    """Endless shuffled (seeded, reshuffled every pass) per-replica batches of this input pipeline's shard."""
    batches = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_per_replica,  # per replica: the global batch scales with replicas
            label_key=constants.transformed_name(constants.LABEL_KEY),
            shuffle=True, shuffle_seed=hparams.seed, num_epochs=None),
        tf_transform_output.transformed_metadata.schema)
    return batches.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def early_stopping_data(data_accessor: tfx.components.DataAccessor, file_pattern: List[str],
                        tf_transform_output: tft.TFTransformOutput, hparams: Hyperparameters, global_batch: int
                        ) -> Optional[Tuple[tf.data.Dataset, int]]:
    """(batches, count) of the first max_eval_examples eval examples, cached so every round's loss is on the
    same examples; None (no early stopping) below early_stopping_min_eval_examples. Sharded by data: a small
    eval split may be a single file."""
    num_examples = count_examples(file_pattern, limit=hparams.max_eval_examples) if file_pattern else 0
    if num_examples < hparams.early_stopping_min_eval_examples:
        return None
    batches = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=global_batch, label_key=constants.transformed_name(constants.LABEL_KEY),
            shuffle=False, num_epochs=1),
        tf_transform_output.transformed_metadata.schema)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # A known number of batches: Keras then re-reads the same examples every round (steps_per_execution > 1
    # also needs it).
    return (batches.unbatch().take(num_examples).batch(global_batch).cache()
            .apply(tf.data.experimental.assert_cardinality(math.ceil(num_examples / global_batch)))
            .with_options(options), num_examples)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this is a multi-worker task other than the chief (or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def export_serving_model(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                         export_dir: str, schema_path: Optional[str] = None) -> None:
    """Saves the model with its serving signatures: raw features in, class probabilities and names out; with
    schema_path, the schema goes along in assets.extra/ (the server checks requests against its bounds)."""
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
    if schema_path:
        extra = os.path.join(export_dir, constants.ASSETS_EXTRA)
        tf.io.gfile.makedirs(extra)
        tf.io.gfile.copy(schema_path, os.path.join(extra, constants.SCHEMA_ASSET), overwrite=True)


def _set_method_name(export_dir: str, signature: str, method_name: str) -> None:
    """TF2's SavedModel writer marks every signature 'predict'; TF Serving's Classify needs 'classify'."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(path, "rb").read())
    saved_model.meta_graphs[0].signature_def[signature].method_name = method_name
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())
