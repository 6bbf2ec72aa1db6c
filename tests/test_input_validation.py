"""Inputs checked against the schema's bounds at serving time: the bounds read from a schema, the check on arrays (in
float32) and on serialized tf.Examples (in the graph, named in Python when flagged), warn/reject/off, and end to end
with the pipeline's pushed model (which carries its schema in assets.extra/) in real server processes, over gRPC, REST
and `iris-tfx predict`."""
import json
import subprocess
import urllib.error
import urllib.request
from typing import Dict, List

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2, prediction_service_pb2_grpc)

from components import constants as c, schema_bounds as sb
from serving import client, config, harness as h, input_validation as iv, loader
from serving.errors import ServingError
from serving.metrics import UNKNOWN_MODEL, Metrics
from serving.servable import CHECK_OUTPUT, SignatureInfo, session_config

SCHEMA = h.REPO / c.DEFAULT_SCHEMA
SETOSA = [5.1, 3.5, 1.4, 0.2]
MILLIMETRES = [500.0, 300.0, 100.0, 100.0]  # the unit mistake: every value above its maximum
OUT_OF_DOMAIN = ":tensorflow:serving:input_out_of_domain_count"


def example(values) -> example_pb2.Example:
    ex = example_pb2.Example()
    for k, v in zip(c.FEATURE_KEYS, values):
        ex.features.feature[k].float_list.value.append(v)
    return ex


def serialized(*rows) -> np.ndarray:
    return np.array([example(r).SerializeToString() for r in rows], dtype=object)


def messages(violations) -> List[str]:
    return [v.message() for v in violations]


@pytest.fixture(scope="module")
def bounds() -> iv.Bounds:
    return iv.Bounds.from_file(str(SCHEMA))


# --- bounds from a schema -------------------------------------------------------------------------------------
def test_bounds_are_the_float_domains_of_the_serving_environment(bounds):
    assert bounds.names == c.FEATURE_KEYS  # species: not_in_environment SERVING
    assert bounds.bounds["sepal_length"] == sb.Bound(0.5, 20.0, True, True)
    assert bounds.bounds["petal_width"].max == pytest.approx(6.0)


def test_environments_named_domains_and_open_bounds():
    schema = text_format.Parse("""
        default_environment: "TRAINING" default_environment: "SERVING"
        feature { name: "a" type: FLOAT float_domain { min: 1 } }
        feature { name: "b" type: FLOAT domain: "shared" }
        feature { name: "c" type: FLOAT float_domain { max: 2 } in_environment: "TRAINING" }
        feature { name: "d" type: FLOAT float_domain { disallow_inf: true } }
        feature { name: "e" type: INT int_domain { min: 0 } }
        float_domain { name: "shared" min: -1 max: 1 disallow_nan: true }
        """, schema_pb2.Schema())
    bounds = iv.Bounds.from_schema(schema)
    assert bounds.names == ("a", "b", "d")
    assert bounds.bounds["a"] == sb.Bound(1.0, None, False, False)
    assert bounds.bounds["b"] == sb.Bound(-1.0, 1.0, True, False)
    values = {"a": np.array([np.inf, np.nan, 0.0]), "b": np.array([0.5, np.nan, 2.0]),
              "d": np.array([-np.inf, 1e30, np.inf])}
    assert messages(bounds.check_columns(values)) == [
        "d = -inf is infinite, which the schema disallows (example 0)",
        "b = nan is NaN, which the schema disallows (example 1)",
        "a = 0 is below the schema's minimum 1.0 (example 2)",
        "b = 2 is above the schema's maximum 1.0 (example 2)",
        "d = inf is infinite, which the schema disallows (example 2)"]
    assert iv.Bounds.from_schema(schema, "TRAINING").names == ("a", "b", "c", "d")


def test_a_schema_that_does_not_parse_names_the_file(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text("feature { name: ")
    with pytest.raises(ValueError, match=f"{path}: not a tensorflow_metadata Schema"):
        iv.Bounds.from_file(str(path))


# --- the check on arrays and on serialized tf.Examples --------------------------------------------------------
def test_raw_arrays_in_bounds_pass_and_each_value_out_is_named(bounds):
    ok = {k: np.array([v, v], np.float32) for k, v in zip(c.FEATURE_KEYS, SETOSA)}
    assert bounds.check_columns(ok) == []
    bad = dict(ok, sepal_length=np.array([5.1, 500], np.float32), petal_width=np.array([[0.01], [0.2]], np.float32))
    assert messages(bounds.check_columns(bad)) == [
        "petal_width = 0.01 is below the schema's minimum 0.05 (example 0)",
        "sepal_length = 500 is above the schema's maximum 20.0 (example 1)"]
    empty = {"sepal_length": np.zeros([0], np.float32), "petal_width": np.zeros([0, 1], np.float32)}
    assert bounds.check_columns(empty) == []  # an empty batch: nothing to check, not an error
    assert messages(bounds.check_columns({"sepal_length": np.float32(500)})) == [  # a scalar is one example
        "sepal_length = 500 is above the schema's maximum 20.0 (example 0)"]


def test_values_are_compared_as_the_model_sees_them_in_float32(bounds):
    # petal_width's minimum is written 0.05, stored as the float32 0.0500000007: a double 0.05 (or 0.049999999, the
    # same float32) is what the model gets from 0.05 and is in bounds; 0.0499 is not
    values = np.array([0.05, 0.049999999, 0.0499, 1e300])
    assert messages(bounds.check_columns({"petal_width": values})) == [
        "petal_width = 0.0499 is below the schema's minimum 0.05 (example 2)",
        "petal_width = 1e+300 is above the schema's maximum 6.0 (example 3)"]
    assert client.out_of_bounds(bounds, [[5.1, 3.5, 1.4, 0.05], [0.5, 0.5, 0.05, 0.05]]) == {}


def test_examples_values_named_each_with_its_example(bounds):
    def check(examples):
        return bounds.check_examples(examples, example_pb2.Example.FromString)
    assert check(serialized(SETOSA, SETOSA)) == []
    ragged = example(SETOSA)  # second values, one out of bounds, and a NaN
    ragged.features.feature["sepal_width"].float_list.value.append(3.6)
    ragged.features.feature["petal_width"].float_list.value.append(-3)
    ragged.features.feature["petal_length"].float_list.value[0] = float("nan")
    missing = example(SETOSA)  # missing values: presence is not checked here, the model answers it
    del missing.features.feature["sepal_width"], missing.features.feature["petal_width"]
    found = check(np.array([example(SETOSA).SerializeToString(), example(MILLIMETRES).SerializeToString(),
                            ragged.SerializeToString(), missing.SerializeToString()], dtype=object))
    assert messages(found) == [
        "sepal_length = 500 is above the schema's maximum 20.0 (example 1)",
        "sepal_width = 300 is above the schema's maximum 10.0 (example 1)",
        "petal_length = 100 is above the schema's maximum 15.0 (example 1)",
        "petal_width = 100 is above the schema's maximum 6.0 (example 1)",
        "petal_length = nan is NaN, which the schema disallows (example 2)",
        "petal_width = -3 is below the schema's minimum 0.05 (example 2)"]


# --- warn, reject, the reporter --------------------------------------------------------------------------------
class Clock:
    """A settable time source for the reporter's once-a-minute log."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def validator(bounds: iv.Bounds, mode: str, counted: Dict, clock=None) -> iv.InputValidator:
    def count(model: str, feature: str, n: int) -> None:
        counted[(model, feature)] = counted.get((model, feature), 0) + n
    plans = {c.SERVING_SIGNATURE: ((c.EXAMPLES_INPUT, iv.EXAMPLES),),
             c.RAW_SIGNATURE: tuple((k, iv.COLUMN) for k in c.FEATURE_KEYS)}
    reporter = iv.Reporter(count, clock=clock or Clock())
    return iv.InputValidator("iris", bounds, mode, plans, example_pb2.Example.FromString, reporter)


def test_reject_names_feature_value_bound_and_example(bounds):
    counted: Dict = {}
    check = validator(bounds, "reject", counted)
    check.check_flagged(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(SETOSA)}, False)  # named: none out
    with pytest.raises(ServingError) as info:
        check.check_flagged(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(SETOSA, MILLIMETRES)}, False)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sepal_length = 500 is above the schema's maximum 20.0 (example 1)" in info.value.message
    assert counted == {("iris", k): 1 for k in c.FEATURE_KEYS}


def test_warn_counts_every_value_logs_once_a_minute_and_a_shared_input_once(bounds, caplog):
    counted: Dict = {}
    clock = Clock()
    check = validator(bounds, "warn", counted, clock)
    two_bad = {k: np.array([v, v], np.float32) for k, v in zip(c.FEATURE_KEYS, SETOSA)}
    two_bad["petal_width"] = np.array([9.0, 7.0], np.float32)
    with caplog.at_level("WARNING", logger=iv.__name__):
        check.check(c.RAW_SIGNATURE, two_bad)
        check.check(c.RAW_SIGNATURE, two_bad)
        clock.now = iv.LOG_INTERVAL_SECONDS + 1
        check.check(c.RAW_SIGNATURE, two_bad)
    assert counted == {("iris", "petal_width"): 6}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "petal_width = 9 is above the schema's maximum 6.0" in lines[0], lines
    examples = serialized(MILLIMETRES)  # MultiInference runs each task on the same examples: counted once
    check.check_flagged(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: examples}, False)
    check.check_flagged(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: examples}, False)
    assert counted[("iris", "sepal_length")] == 1
    check.check_flagged(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(MILLIMETRES)}, True)  # graph: in bounds
    check.check(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(MILLIMETRES)})  # examples: not before the run
    check.check("transform_features", {c.EXAMPLES_INPUT: examples})  # no plan for this signature: not checked
    assert counted[("iris", "sepal_length")] == 1


def test_signature_plans_find_examples_and_raw_features(bounds):
    def info(method: str, **inputs) -> SignatureInfo:
        return SignatureInfo(method, {a: (d, (-1,)) for a, d in inputs.items()}, ("out",))
    assert loader.signature_plan(info(loader.inference.PREDICT_METHOD, examples=types_pb2.DT_STRING), bounds) == \
        ((c.EXAMPLES_INPUT, iv.EXAMPLES),)
    assert loader.signature_plan(info(loader.inference.CLASSIFY_METHOD, inputs=types_pb2.DT_STRING), bounds) == \
        ((c.CLASSIFY_INPUT, iv.EXAMPLES),)
    raw = {k: types_pb2.DT_FLOAT for k in c.FEATURE_KEYS}
    assert loader.signature_plan(info(loader.inference.PREDICT_METHOD, text=types_pb2.DT_STRING, **raw), bounds) \
        == tuple(sorted((k, iv.COLUMN) for k in c.FEATURE_KEYS))


def test_metric_labels_only_configured_models_and_the_flag_defaults_to_warn():
    metrics = Metrics()
    metrics.set_models(["iris"])
    metrics.input_out_of_domain("iris", "sepal_length", 3)
    metrics.input_out_of_domain("made-up", "sepal_length", 1)
    page = metrics.exposition().decode()
    assert f'{OUT_OF_DOMAIN}_total{{feature="sepal_length",model_name="iris"}} 3.0' in page
    assert f'model_name="{UNKNOWN_MODEL}"' in page and 'model_name="made-up"' not in page
    assert config.parse_flags([]).input_validation == "warn"
    assert config.parse_flags(["--input_validation=reject"]).input_validation == "reject"
    with pytest.raises(SystemExit):
        config.parse_flags(["--input_validation=maybe"])


def test_predict_rows_out_of_bounds(bounds):
    found = client.out_of_bounds(bounds, [SETOSA, [str(v) for v in MILLIMETRES], dict(zip(c.FEATURE_KEYS, SETOSA))])
    assert list(found) == [1] and len(found[1]) == 4
    assert found[1][0].message(with_example=False) == "sepal_length = 500 is above the schema's maximum 20.0"


def test_examples_not_in_a_vector_are_checked_in_the_graph_too(tmp_path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    path = tmp_path / "1"  # a real SavedModel whose examples input is [n, 1]: it answers how many it got
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        examples = tf.compat.v1.placeholder(tf.string, [None, 1])
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map={
            c.SERVING_SIGNATURE: tf.compat.v1.saved_model.predict_signature_def(
                {c.EXAMPLES_INPUT: examples}, {"n": tf.size(examples)})})
        builder.save()
    (path / c.ASSETS_EXTRA).mkdir()
    nan_allowed = "float_domain { min: 0.05 max: 6.0 disallow_inf: true }"  # petal_width: NaN allowed here
    (path / c.ASSETS_EXTRA / c.SCHEMA_ASSET).write_text(SCHEMA.read_text().replace(
        "float_domain { min: 0.05 max: 6.0 disallow_nan: true disallow_inf: true }", nan_allowed))
    servable, _ = loader.load("tiny", 1, str(path), loader.LoaderOptions(session_config(1, 1),
                                                                          input_validation="reject"))
    try:
        assert servable.run(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(SETOSA, SETOSA).reshape(2, 1)},
                            ["n"]) == {"n": 2}
        key = (c.SERVING_SIGNATURE, (c.EXAMPLES_INPUT,), ("n", CHECK_OUTPUT))  # the graph's verdict itself
        nan = serialized(SETOSA, [5.1, 3.5, 1.4, float("nan")]).reshape(2, 1)
        assert servable._run_key(key, {c.EXAMPLES_INPUT: nan})[CHECK_OUTPUT]  # noqa: SLF001 - an allowed NaN: in
        with pytest.raises(ServingError, match=r"petal_width = 0.01 is below the schema's minimum 0.05 \(example 1\)"):
            servable.run(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(SETOSA, [5.1, 3.5, 1.4, 0.01]).reshape(
                2, 1)}, ["n"])
    finally:
        servable.unload()


# --- end to end: the pushed model, real servers ---------------------------------------------------------------
def metric_values(server: h.ServerProcess) -> Dict[str, float]:
    """The out-of-domain counts by feature, from the server's Prometheus page."""
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=30) as r:
        text = r.read().decode()
    return {s.labels["feature"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == OUT_OF_DOMAIN + "_total"}


def predict_request(rows, model: str = "iris") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs[c.EXAMPLES_INPUT]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = len(rows)
    tensor.string_val.extend(example(r).SerializeToString() for r in rows)
    return request


def rest_raw(server: h.ServerProcess, rows, model: str = "iris"):
    body = json.dumps({"signature_name": c.RAW_SIGNATURE,
                       "instances": [dict(zip(c.FEATURE_KEYS, r)) for r in rows]}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{server.rest_url}/v1/models/{model}:predict", body),
                                    timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def base(pushed_model, tmp_path_factory):
    """The pushed version, and a copy of it without the schema (a model exported before input validation)."""
    root = tmp_path_factory.mktemp("validation")
    h.copy_version(pushed_model, root / "iris", 1)
    bare = h.copy_version(pushed_model, root / "bare", 1)
    (bare / c.ASSETS_EXTRA / c.SCHEMA_ASSET).unlink()
    config_file = root / "models.config"
    config_file.write_text(f'model_config_list {{ config {{ name: "iris" base_path: "{root / "iris"}" }} '
                           f'config {{ name: "bare" base_path: "{root / "bare"}" }} }}')
    return root


def start(base, mode: str) -> h.ServerProcess:
    return h.ServerProcess([f"--model_config_file={base / 'models.config'}", "--file_system_poll_wait_seconds=0",
                            f"--input_validation={mode}"], base / f"server-{mode}.log").wait_ready()


@pytest.mark.e2e
def test_the_pushed_model_carries_the_trainers_schema(pushed_model):
    carried = pushed_model / c.ASSETS_EXTRA / c.SCHEMA_ASSET
    assert carried.is_file()
    assert iv.Bounds.from_file(str(carried)).bounds == iv.Bounds.from_file(str(SCHEMA)).bounds


@pytest.mark.e2e
def test_examples_are_checked_in_the_session_run_that_answers(pushed_model):
    counted: Dict = {}
    servable, _ = loader.load("iris", 1, str(pushed_model), loader.LoaderOptions(
        session_config(1, 1), input_validation="reject", reporter=iv.Reporter(
            lambda model, feature, n: counted.__setitem__(feature, counted.get(feature, 0) + n))))
    try:
        assert (c.EXAMPLES_INPUT, iv.EXAMPLES) in servable.validator.plans[c.SERVING_SIGNATURE]
        outputs = [c.PREDICTED_OUTPUT]
        answer = servable.run(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(SETOSA, SETOSA)}, outputs)
        assert list(answer) == outputs and list(answer[c.PREDICTED_OUTPUT]) == [b"setosa"] * 2
        nan = [5.1, float("nan"), 1.4, 0.2]
        with pytest.raises(ServingError, match=r"sepal_width = nan is NaN, which the schema disallows \(example 1\)"):
            servable.run(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(SETOSA, nan)}, outputs)
        with pytest.raises(ServingError, match=r"sepal_length = 500 is above the schema's maximum 20.0 \(example 0\)"):
            servable.run(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: serialized(MILLIMETRES)}, outputs)
        assert counted == {"sepal_length": 1, "sepal_width": 2, "petal_length": 1, "petal_width": 1}
    finally:
        servable.unload()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_reject_answers_invalid_argument_over_grpc_and_400_over_rest(base):
    server = start(base, "reject")
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request([SETOSA]), timeout=30).outputs[c.PREDICTED_OUTPUT].string_val == \
                [b"setosa"]
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(predict_request([SETOSA, MILLIMETRES]), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "sepal_length = 500 is above the schema's maximum 20.0 (example 1)" in info.value.details()
            classify = classification_pb2.ClassificationRequest()
            classify.model_spec.name, classify.model_spec.signature_name = "iris", c.CLASSIFY_SIGNATURE
            classify.input.example_list.examples.add().CopyFrom(example(MILLIMETRES))
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(classify, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "(example 0)" in info.value.details()
            assert stub.Predict(predict_request([MILLIMETRES], "bare"), timeout=30)  # no schema: not checked
        status, answer = rest_raw(server, [SETOSA, [5.1, 3.5, 1.4, -0.2]])
        assert status == 400, answer
        assert "petal_width = -0.2 is below the schema's minimum 0.05 (example 1)" in answer["error"]
        assert rest_raw(server, [SETOSA])[0] == 200
        assert metric_values(server)["petal_width"] == 3  # Predict, Classify and REST each counted
    finally:
        assert server.stop() == 0, server.log()
    log = server.log()
    assert "Model bare version 1 has no assets.extra/schema.pbtxt: its inputs are not checked" in log


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_warn_answers_and_counts_each_value_off_counts_nothing(base):
    warn, off = start(base, "warn"), start(base, "off")
    try:
        for server in (warn, off):
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                answer = stub.Predict(predict_request([SETOSA, MILLIMETRES, MILLIMETRES]), timeout=30)
                assert len(answer.outputs[c.PREDICTED_OUTPUT].string_val) == 3
                multi = inference_pb2.MultiInferenceRequest()
                task = multi.tasks.add(method_name=loader.inference.CLASSIFY_METHOD)
                task.model_spec.name, task.model_spec.signature_name = "iris", c.CLASSIFY_SIGNATURE
                multi.input.example_list.examples.add().CopyFrom(example([5.1, 3.5, 1.4, 60.0]))
                assert len(stub.MultiInference(multi, timeout=30).results) == 1
                stub.Predict(predict_request([MILLIMETRES], "bare"), timeout=30)
            assert rest_raw(server, [[5.1, 3.5, 1.4, 0.0]])[0] == 200
        assert metric_values(warn) == {"sepal_length": 2, "sepal_width": 2, "petal_length": 2, "petal_width": 4}
        assert metric_values(off) == {}
        result = subprocess.run([*h.iris_tfx_command(), "predict", "--server", warn.grpc_target,
                                 *map(str, SETOSA + MILLIMETRES)], capture_output=True, text=True, cwd=str(h.REPO),
                                timeout=120)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[1].startswith("1\t") and lines[2].startswith("2\t"), lines
        assert lines[3:] == ["\twarning: sepal_length = 500 is above the schema's maximum 20.0",
                             "\twarning: sepal_width = 300 is above the schema's maximum 10.0",
                             "\twarning: petal_length = 100 is above the schema's maximum 15.0",
                             "\twarning: petal_width = 100 is above the schema's maximum 6.0"], lines
        assert metric_values(warn)["sepal_length"] == 3  # the server counted predict's row too
    finally:
        for server in (warn, off):
            assert server.stop() == 0, server.log()
    assert "petal_width = 100 is above the schema's maximum 6.0" in warn.log()


def test_predict_schema_flag_errors_in_one_line(tmp_path):
    missing = tmp_path / "nope.pbtxt"
    result = subprocess.run([*h.iris_tfx_command(), "predict", "--server", "127.0.0.1:1", "--schema", str(missing),
                             *map(str, SETOSA)], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and str(missing) in result.stderr, result.stderr
