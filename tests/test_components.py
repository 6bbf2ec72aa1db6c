"""Unit tests of the component code, without running the pipeline: preprocessing_fn through TF Transform,
the model builder, strategy selection, training + the exported signatures, and the anomalies report."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

from components import constants, model as model_lib, runtime, trainer, transform, validation
from components.hyperparameters import Hyperparameters
from conftest import IRIS_CSV, REPO

SCHEMA = str(REPO / "schema" / "schema.pbtxt")
LABEL_XF = constants.transformed_name(constants.LABEL_KEY)


def _raw_rows(n=None):
    with open(IRIS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return [{**{k: np.array([float(r[k])], np.float32) for k in constants.FEATURE_KEYS},
             constants.LABEL_KEY: np.array([r[constants.LABEL_KEY].encode()])} for r in rows]


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """preprocessing_fn run through TFT (analyse + transform) on all rows; the transform graph written out."""
    tmp = tmp_path_factory.mktemp("tft")
    metadata = dataset_metadata.DatasetMetadata(tfdv.load_schema_text(SCHEMA))
    rows = _raw_rows()
    with tft_beam.Context(temp_dir=str(tmp / "tmp"), force_tf_compat_v1=False):
        (data, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            transform.preprocessing_fn, output_record_batches=False)
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp / "transform_graph"))
    metadata_io.write_metadata(metadata, str(tmp / "transform_graph" / "metadata"))  # raw schema, as TFX does
    return rows, data, tft.TFTransformOutput(str(tmp / "transform_graph"))


@pytest.mark.e2e
def test_preprocessing_fn_z_scores_measurements_and_encodes_species(transformed):
    rows, data, tf_transform_output = transformed
    assert set(data[0]) == {constants.transformed_name(k) for k in constants.FEATURE_KEYS} | {LABEL_XF}
    for key in constants.FEATURE_KEYS:
        values = np.array([d[constants.transformed_name(key)] for d in data])
        raw = np.array([r[key][0] for r in rows])
        np.testing.assert_allclose(values, (raw - raw.mean()) / raw.std(), rtol=1e-4, atol=1e-5)
    vocabulary = [v.decode() for v in tf_transform_output.vocabulary_by_name(constants.LABEL_VOCABULARY)]
    assert sorted(vocabulary) == sorted(constants.CLASS_NAMES)
    assert [vocabulary[d[LABEL_XF]] for d in data] == [r[constants.LABEL_KEY][0].decode() for r in rows]


@pytest.mark.e2e
def test_preprocessing_fn_on_a_handful_of_rows():
    rows = _raw_rows(3)  # three setosa rows: the vocabulary and the statistics come from these alone
    metadata = dataset_metadata.DatasetMetadata(tfdv.load_schema_text(SCHEMA))
    with tft_beam.Context(temp_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "tft-handful"),
                          force_tf_compat_v1=False):
        (data, _), _ = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            transform.preprocessing_fn, output_record_batches=False)
    assert [d[LABEL_XF] for d in data] == [0, 0, 0]
    assert abs(sum(d[constants.transformed_name("sepal_length")] for d in data)) < 1e-5


def test_build_model_outputs_class_probabilities():
    model = model_lib.build_model(num_classes=3, hidden_units=5)
    batch = {constants.transformed_name(k): tf.constant([0.1, -1.0]) for k in constants.FEATURE_KEYS}
    probabilities = model(batch).numpy()
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("hidden").units == 5
    assert model.loss.__class__.__name__ == "SparseCategoricalCrossentropy"


def test_build_model_dropout_and_label_smoothing():
    model = model_lib.build_model(num_classes=3, dropout=0.25, label_smoothing=0.1)
    assert model.get_layer("dropout").rate == 0.25
    batch = {constants.transformed_name(k): tf.constant([0.1, -1.0]) for k in constants.FEATURE_KEYS}
    probabilities = model(batch).numpy()
    np.testing.assert_allclose(model(batch, training=False).numpy(), probabilities)  # dropout only in training
    tf.random.set_seed(0)
    assert any(not np.allclose(model(batch, training=True).numpy(), probabilities) for _ in range(5))
    labels = np.array([2, 0])
    targets = 0.9 * np.eye(3)[labels] + 0.1 / 3
    expected = np.mean(-np.sum(targets * np.log(probabilities), axis=1))
    for shape in ((2,), (2, 1)):  # the datasets' [batch] ids and TFMA's [batch, 1]
        np.testing.assert_allclose(model.loss(labels.reshape(shape), probabilities).numpy(), expected, rtol=1e-5)
    assert "dropout" not in [layer.name for layer in model_lib.build_model(num_classes=3).layers]


@pytest.mark.e2e
def test_trained_model_is_compiled_with_builtin_sparse_loss(exported):
    """Label smoothing trains the model; the SavedModel names only built-in Keras objects (TFMA reloads it)."""
    with open(os.path.join(exported, "keras_metadata.pb"), "rb") as f:
        assert model_lib.SmoothedSparseCategoricalCrossentropy.__name__.encode() not in f.read()
    reloaded = tf.keras.models.load_model(exported)
    assert type(reloaded.loss).__name__ == "SparseCategoricalCrossentropy"
    assert Hyperparameters().label_smoothing > 0 and Hyperparameters().dropout > 0


def test_cluster_workers_reads_tf_config():
    assert runtime.cluster_workers("") == []
    config = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 0}}
    assert runtime.cluster_workers(json.dumps(config)) == ["a:1", "b:2", "c:3"]


def test_default_strategy_without_gpus_or_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = runtime.select_strategy()
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1


def _run_python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter: logical devices can only be created before TensorFlow initialises."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})


@pytest.mark.e2e
def test_mirrored_strategy_over_two_logical_cpus_trains_with_a_scaled_batch():
    result = _run_python("""
        import numpy as np, tensorflow as tf
        from components import constants, runtime, trainer
        from components.hyperparameters import Hyperparameters
        strategy = runtime.select_strategy(cpu_replicas=2)
        print("STRATEGY", type(strategy).__name__, strategy.num_replicas_in_sync)
        x = {constants.transformed_name(k): np.random.RandomState(0).randn(64).astype("float32")
             for k in constants.FEATURE_KEYS}
        y = (x[constants.transformed_name("petal_length")] > 0).astype("int64")
        sizes = []
        def dataset_fn(ctx):
            sizes.append(ctx.get_per_replica_batch_size(8 * ctx.num_replicas_in_sync))
            return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(sizes[-1])
        hparams = Hyperparameters(epochs=30, cpu_replicas=2)
        model = trainer.train(strategy, dataset_fn, 64, 2, hparams)
        accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
        print("RESULT", type(model.distribute_strategy).__name__, model.distribute_strategy.num_replicas_in_sync,
              sizes[0], accuracy)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STRATEGY MirroredStrategy 2" in result.stdout
    name, replicas, per_replica_batch, accuracy = result.stdout.split("RESULT ")[1].split()
    assert (name, replicas, per_replica_batch) == ("MirroredStrategy", "2", "8")
    assert float(accuracy) > 0.9


@pytest.mark.e2e
def test_logical_cpus_after_initialisation_is_a_clear_error():
    result = _run_python("""
        import tensorflow as tf
        from components import runtime
        tf.constant(1.0) + 1  # initialises the runtime with one CPU device
        runtime.logical_cpus(2)
    """)
    assert result.returncode != 0 and "cannot create 2 logical CPU devices" in result.stderr


@pytest.fixture(scope="module")
def exported(transformed, tmp_path_factory):
    """A model trained by trainer.train_and_export on the transformed rows, exported with its signatures."""
    _, data, tf_transform_output = transformed
    x = {k: np.array([d[k] for d in data], np.float32) for k in data[0] if k != LABEL_XF}
    y = np.array([d[LABEL_XF] for d in data], np.int64)
    hparams = Hyperparameters()

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(150, seed=1).repeat().batch(
            ctx.get_per_replica_batch_size(hparams.batch_size_per_replica))

    export_dir = str(tmp_path_factory.mktemp("export") / "model")
    trainer.train_and_export(tf.distribute.get_strategy(), dataset_fn, len(y), tf_transform_output, hparams,
                             export_dir,
                             str(tmp_path_factory.mktemp("logs")))
    return export_dir


def _examples(rows, with_label=False):
    def feature(key, value):
        if key == constants.LABEL_KEY:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value[0]]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value[0])]))
    keys = constants.CSV_COLUMNS if with_label else constants.FEATURE_KEYS
    return tf.constant([tf.train.Example(features=tf.train.Features(feature={
        k: feature(k, r[k]) for k in keys})).SerializeToString() for r in rows])


@pytest.mark.e2e
def test_signatures_return_probabilities_and_class_names(exported):
    rows = [_raw_rows()[i] for i in (0, 50, 100)]
    signatures = tf.saved_model.load(exported).signatures
    assert set(signatures) == {constants.SERVING_SIGNATURE, constants.CLASSIFY_SIGNATURE,
                               constants.RAW_SIGNATURE, constants.TRANSFORM_SIGNATURE}
    served = signatures[constants.SERVING_SIGNATURE](**{constants.EXAMPLES_INPUT: _examples(rows)})
    assert [s.decode() for s in served[constants.PREDICTED_OUTPUT].numpy()] == ["setosa", "versicolor", "virginica"]
    probabilities = served[constants.PROBABILITIES_OUTPUT].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    classes = served[constants.CLASSES_OUTPUT].numpy()
    assert classes.shape == (3, 3) and sorted(c.decode() for c in classes[0]) == sorted(constants.CLASS_NAMES)
    # the class named at argmax of probabilities is the predicted species
    assert [classes[i][np.argmax(p)] for i, p in enumerate(probabilities)] == list(
        served[constants.PREDICTED_OUTPUT].numpy())

    raw = signatures[constants.RAW_SIGNATURE](**{k: tf.constant([r[k][0] for r in rows])
                                                 for k in constants.FEATURE_KEYS})
    np.testing.assert_allclose(raw[constants.PROBABILITIES_OUTPUT].numpy(), probabilities, rtol=1e-5)

    classified = signatures[constants.CLASSIFY_SIGNATURE](**{constants.CLASSIFY_INPUT: _examples(rows)})
    np.testing.assert_allclose(classified[constants.SCORES_OUTPUT].numpy(), probabilities, rtol=1e-5)
    assert (classified[constants.CLASSES_OUTPUT].numpy() == classes).all()

    transformed_features = signatures[constants.TRANSFORM_SIGNATURE](
        **{constants.EXAMPLES_INPUT: _examples(rows, with_label=True)})
    assert set(transformed_features) == {constants.transformed_name(k) for k in constants.CSV_COLUMNS}
    label_ids = transformed_features[LABEL_XF].numpy()
    assert [classes[0][i].decode() for i in label_ids] == ["setosa", "versicolor", "virginica"]


@pytest.mark.e2e
def test_classification_signature_has_tf_serving_method_name(exported):
    from tensorflow.core.protobuf import saved_model_pb2
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        signature_defs = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0].signature_def
    assert signature_defs[constants.CLASSIFY_SIGNATURE].method_name == "tensorflow/serving/classify"
    assert signature_defs[constants.SERVING_SIGNATURE].method_name == "tensorflow/serving/predict"
    assert set(signature_defs[constants.RAW_SIGNATURE].inputs) == set(constants.FEATURE_KEYS)


@pytest.mark.e2e
def test_training_is_deterministic(transformed):
    _, data, _ = transformed
    x = {k: np.array([d[k] for d in data], np.float32) for k in data[0] if k != LABEL_XF}
    y = np.array([d[LABEL_XF] for d in data], np.int64)
    hparams = Hyperparameters(epochs=5)

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(150, seed=3).repeat().batch(8)

    first = trainer.train(tf.distribute.get_strategy(), dataset_fn, len(y), 3, hparams)
    second = trainer.train(tf.distribute.get_strategy(), dataset_fn, len(y), 3, hparams)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_describe_anomalies_names_feature_and_problem():
    schema = tfdv.load_schema_text(SCHEMA)
    rows = "sepal_length,sepal_width,petal_length,petal_width,species\n5.1,3.5,-1.4,0.2,daisy\n"
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "iris-describe-anomalies.csv")
    with open(path, "w") as f:
        f.write(rows)
    anomalies = tfdv.validate_statistics(tfdv.generate_statistics_from_csv(path), schema)
    report = validation.describe_anomalies({"train": anomalies})
    assert "split 'train': feature 'petal_length':" in report and "daisy" in report
    assert validation.describe_anomalies({"train": anomalies_pb2.Anomalies()}) == ""
