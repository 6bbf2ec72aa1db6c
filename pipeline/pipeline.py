"""create_pipeline: the pure factory that wires every TFX component from a PipelineConfig."""
import dataclasses

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec

from components import constants
from components import example_gen as example_gen_executor
from components.baseline import CANDIDATE_KEY, PreviousBlessedModelStrategy
from components.validation import AnomaliesGate
from pipeline.config import PipelineConfig, sqlite_metadata

PREPROCESSING_FN = "components.transform.preprocessing_fn"
RUN_FN = "components.trainer.run_fn"


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    """CsvExampleGen -> StatisticsGen -> ImportSchemaGen -> ExampleValidator -> AnomaliesGate ->
    Transform -> Trainer -> [Resolver: the previous blessed model] -> Evaluator -> Pusher."""
    input_base, pattern = example_gen_executor.literal_input(config.data_path)  # exactly that file, no glob
    example_gen = FileBasedExampleGen(  # CsvExampleGen itself takes no custom executor in TFX 1.16
        input_base=input_base,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="single_split", pattern=pattern)]),
        output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
            tfx.proto.SplitConfig.Split(name="train", hash_buckets=4),
            tfx.proto.SplitConfig.Split(name="eval", hash_buckets=1)])),
        custom_executor_spec=executor_spec.BeamExecutorSpec(example_gen_executor.Executor)).with_id("CsvExampleGen")
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = AnomaliesGate(statistics=statistics_gen.outputs["statistics"],
                         anomalies=example_validator.outputs["anomalies"],
                         examples=example_gen.outputs["examples"])  # to name the CSV lines of a refused value

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        # Nothing reads Transform's own pre/post-transform statistics (three more TFDV passes over the data,
        # StatisticsGen and the gate already check the input), nor its analyzer cache (cached runs skip Transform).
        disable_statistics=True, disable_analyzer_cache=True)
    transform.add_upstream_node(gate)  # nothing is transformed, trained or pushed from anomalous data

    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=dataclasses.asdict(config.training))

    components = [example_gen, statistics_gen, schema_gen, example_validator, gate, transform, trainer]
    baseline = None
    if config.use_resolver:
        resolver = tfx.dsl.Resolver(
            strategy_class=PreviousBlessedModelStrategy,
            **{CANDIDATE_KEY: trainer.outputs["model"]},
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("baseline_model_resolver")
        components.append(resolver)
        baseline = resolver.outputs["model"]

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline, eval_config=eval_config(config.accuracy_floor, baseline is not None))
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.push_dir)))
    components += [evaluator, pusher]

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=sqlite_metadata(config.metadata_path),
        beam_pipeline_args=list(config.beam_pipeline_args))


def eval_config(accuracy_floor: float, compare_to_baseline: bool) -> tfma.EvalConfig:
    """Overall and per-species accuracy, a confusion matrix, an accuracy floor and no regression."""
    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_floor}))
    if compare_to_baseline:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -1e-10}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=constants.SERVING_SIGNATURE,
            prediction_key=constants.PROBABILITIES_OUTPUT,
            label_key=constants.transformed_name(constants.LABEL_KEY),
            preprocessing_function_names=[constants.TRANSFORM_SIGNATURE])],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[constants.LABEL_KEY])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy", threshold=threshold),
            tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        ])],
        # Not also the model's compiled loss and accuracy: TFMA would reload the model with tf.keras and run a
        # second Keras accuracy on every example (a third of the Evaluator's time) for a duplicate and a loss.
        options=tfma.Options(include_default_metrics={"value": False}))
