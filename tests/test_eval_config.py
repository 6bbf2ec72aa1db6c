"""The Evaluator's config, run by TFMA on the pipeline's own model and eval split, gives exactly the metrics a
plain numpy count of the model's predictions gives: example count, accuracy overall and per species, the confusion
matrix, and a passing no-regression check against an identical baseline. Also the Beam components' settings that
save time: no TFX dependency package built per component, no statistics from Transform."""
import glob

import numpy as np
import pytest

from components import constants
from pipeline.pipeline import eval_config

FLOOR = 0.5


@pytest.fixture(scope="module")
def eval_examples(pipeline_run):
    """The eval split CsvExampleGen wrote in the session's pipeline run, as raw records and parsed values."""
    import tensorflow as tf
    pattern = str(pipeline_run.workdir / "pipeline_root" / "CsvExampleGen" / "examples" / "*" / "Split-eval" / "*")
    files = sorted(glob.glob(pattern))
    assert files, pattern
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    examples = [tf.train.Example.FromString(r) for r in records]
    labels = np.array([e.features.feature[constants.LABEL_KEY].bytes_list.value[0].decode() for e in examples])
    return pattern, records, labels


@pytest.fixture(scope="module")
def tfma_result(pushed_model, eval_examples, tmp_path_factory):
    """TFMA's own run of eval_config (candidate plus the same model as baseline, as the Evaluator gets it)."""
    import tensorflow_model_analysis as tfma
    pattern, _, _ = eval_examples
    config = tfma.utils.update_eval_config_with_defaults(eval_config(FLOOR, True), has_baseline=True)
    models = [tfma.default_eval_shared_model(eval_saved_model_path=str(pushed_model), model_name=spec.name,
                                             eval_config=config) for spec in config.model_specs]
    output = str(tmp_path_factory.mktemp("tfma"))
    tfma.run_model_analysis(eval_shared_model=models, eval_config=config, data_location=pattern,
                            file_format="tfrecords", output_path=output)
    candidate = next(spec.name for spec in config.model_specs if not spec.is_baseline)
    return tfma.load_eval_result(output, model_name=candidate), tfma.load_validation_result(output)


def _expected(pushed_model, eval_examples):
    """Labels, the model's most probable class per example and its class order, from the serving signature."""
    import tensorflow as tf
    _, records, labels = eval_examples
    serve = tf.saved_model.load(str(pushed_model)).signatures[constants.SERVING_SIGNATURE]
    outputs = serve(**{constants.EXAMPLES_INPUT: tf.constant(records)})
    predicted = np.array([p.decode() for p in outputs[constants.PREDICTED_OUTPUT].numpy()])
    return labels, predicted, [c.decode() for c in outputs[constants.CLASSES_OUTPUT].numpy()[0]]


def _metric(slicing_metrics, slice_key, name):
    for key, metrics in slicing_metrics:
        if key == slice_key:
            return metrics[""][""][name]["doubleValue"]
    raise AssertionError(f"no slice {slice_key} in {[k for k, _ in slicing_metrics]}")


@pytest.mark.e2e
def test_metrics_equal_a_plain_count_of_the_predictions(pushed_model, eval_examples, tfma_result):
    result, validation = tfma_result
    labels, predicted, _ = _expected(pushed_model, eval_examples)
    assert _metric(result.slicing_metrics, (), "example_count") == len(labels)
    assert _metric(result.slicing_metrics, (), "sparse_categorical_accuracy") == pytest.approx(
        np.mean(labels == predicted))
    for species in constants.CLASS_NAMES:
        rows = labels == species
        key = ((constants.LABEL_KEY, species),)
        assert _metric(result.slicing_metrics, key, "example_count") == rows.sum()
        assert _metric(result.slicing_metrics, key, "sparse_categorical_accuracy") == pytest.approx(
            np.mean(predicted[rows] == species))
    # The same model as baseline: no regression, so the model validates (floor 0.5 is met by any trained model).
    assert validation.validation_ok, validation


@pytest.mark.e2e
def test_confusion_matrix_counts_each_label_and_prediction_pair(pushed_model, eval_examples, tfma_result):
    result, _ = tfma_result
    labels, predicted, classes = _expected(pushed_model, eval_examples)
    assert result.plots, "TFMA wrote no plots"
    (plots,) = [p for key, p in result.plots if key == ()]
    (matrix,) = plots[""][""]["multiClassConfusionMatrixAtThresholds"]["matrices"]
    counted = {(e.get("actualClassId", 0), e.get("predictedClassId", 0)): e["numWeightedExamples"]
               for e in matrix["entries"]}
    expected = {}
    for label, prediction in zip(labels, predicted):
        pair = (classes.index(label), classes.index(prediction))
        expected[pair] = expected.get(pair, 0) + 1
    assert counted == expected


def test_default_beam_args_build_no_tfx_package_per_component(tmp_path):
    from tfx.components.statistics_gen import executor
    from tfx.dsl.components.base import base_beam_executor
    from pipeline.config import default_beam_args
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=default_beam_args(),
                                                          tmp_dir=str(tmp_path))
    beam_args = executor.Executor(context)._beam_pipeline_args  # what the executor's Beam job gets
    assert not [arg for arg in beam_args if arg.startswith("--extra_package")], beam_args


@pytest.mark.e2e
def test_transform_writes_no_statistics(pipeline_run):
    transform = pipeline_run.workdir / "pipeline_root" / "Transform"
    assert list(transform.glob("transformed_examples/*/Split-train/*"))
    for output in ("pre_transform_stats", "post_transform_stats", "post_transform_anomalies",
                   "updated_analyzer_cache"):
        assert not [p for p in transform.glob(f"{output}/*/**/*") if p.is_file()], output
