"""End-to-end tests of the TF Serving-compatible server and client: real server processes on loopback,
real gRPC (tensorflow-serving-api stubs) and HTTP, the pipeline's pushed SavedModel."""
import base64
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from components import constants as c
from conftest import wait_for
from serving import harness as h
from serving.client import IrisClient, ServingClientError

# Real server processes over the pipeline's model; the in-process tests are in test_serving_units.py.
pytestmark = [pytest.mark.timeout(300), pytest.mark.e2e]
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [7.7, 3.0, 6.1, 2.3]
State = get_model_status_pb2.ModelVersionStatus.State

# --- helpers ------------------------------------------------------------------------------------------------
def example(values) -> example_pb2.Example:
    ex = example_pb2.Example()
    for k, v in zip(c.FEATURE_KEYS, values):
        ex.features.feature[k].float_list.value.append(v)
    return ex


def predict_request(rows, model="iris", signature=c.SERVING_SIGNATURE, version=None, label=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[c.EXAMPLES_INPUT].CopyFrom(
        tf.make_tensor_proto([example(r).SerializeToString() for r in rows], dtype=tf.string))
    return request


def rpc_error(fn, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=30)
    return info.value


def http(url: str, body=None, method=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if r.headers.get_content_type() == "application/json" else raw.decode())
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw.startswith(b"{") else raw.decode()


def write_warmup(version_dir: pathlib.Path) -> None:
    extra = version_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as w:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
            request=predict_request([SETOSA])))
        w.write(log.SerializeToString())


def versions_state(models_stub, name="iris"):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: (s.state, s.status.error_message)
            for s in models_stub.GetModelStatus(request, timeout=10).model_version_status}


# --- the main server: a config file with two models, version policies and labels --------------------------
MODEL_CONFIG = """
model_config_list {{
  config {{
    name: "iris"  base_path: "{base}"  model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: {stable} }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "iris_all"  base_path: "{base}"
    model_version_policy {{ all {{}} }}
  }}
}}
"""


@pytest.fixture(scope="module")
def server(pushed_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = root / "iris"
    for v in (1, 2, 3):
        h.copy_version(pushed_model, base, v)
    write_warmup(base / "2")
    config = root / "models.config"
    config.write_text(MODEL_CONFIG.format(base=base, stable=1))
    proc = h.ServerProcess([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                            "--file_system_poll_wait_seconds=1", "--max_request_bytes=1000000"],
                           root / "server.log").wait_ready()
    proc.config, proc.base = config, base
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def test_predict_serving_default_on_pipeline_model(stub):
    response = stub.Predict(predict_request([SETOSA, VIRGINICA]), timeout=30)
    probs = tf.make_ndarray(response.outputs[c.PROBABILITIES_OUTPUT])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert list(response.outputs[c.PROBABILITIES_OUTPUT].float_val)  # typed fields, as TF Serving's AsProtoField
    classes = tf.make_ndarray(response.outputs[c.CLASSES_OUTPUT])
    assert [x.decode() for x in classes[0]] == list(c.CLASS_NAMES)
    species = [s.decode() for s in tf.make_ndarray(response.outputs[c.PREDICTED_OUTPUT])]
    assert species == ["setosa", "virginica"]
    assert response.model_spec.name == "iris" and response.model_spec.version.value == 2
    assert response.model_spec.signature_name == c.SERVING_SIGNATURE


def test_predict_output_filter_and_raw_signature(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = c.RAW_SIGNATURE
    for i, key in enumerate(c.FEATURE_KEYS):
        request.inputs[key].CopyFrom(tf.make_tensor_proto([SETOSA[i], VIRGINICA[i]], dtype=tf.float32))
    request.output_filter.append(c.PREDICTED_OUTPUT)
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs) == [c.PREDICTED_OUTPUT]
    assert list(response.outputs[c.PREDICTED_OUTPUT].string_val) == [b"setosa", b"virginica"]


def test_versions_and_labels_select_the_servable(stub):
    assert stub.Predict(predict_request([SETOSA], version=1), timeout=30).model_spec.version.value == 1
    assert stub.Predict(predict_request([SETOSA], label="stable"), timeout=30).model_spec.version.value == 1
    assert stub.Predict(predict_request([SETOSA], label="canary"), timeout=30).model_spec.version.value == 2
    assert stub.Predict(predict_request([SETOSA], model="iris_all"), timeout=30).model_spec.version.value == 3
    request = predict_request([SETOSA], model="iris_all", version=1)
    assert stub.Predict(request, timeout=30).model_spec.version.value == 1


def test_warmup_requests_replayed_before_serving(server):
    assert "Finished reading warmup data for model iris version 2: 1 requests" in server.log()


def test_model_status_follows_version_policy(models):
    assert versions_state(models) == {1: (State.AVAILABLE, ""), 2: (State.AVAILABLE, "")}
    assert set(versions_state(models, "iris_all")) == {1, 2, 3}
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "iris"
    request.model_spec.version_label = "canary"
    assert [s.version for s in models.GetModelStatus(request, timeout=10).model_version_status] == [2]
    request.model_spec.version.value = 3
    err = rpc_error(models.GetModelStatus, request)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "Could not find version 3 of model iris" in err.details()


def test_classify(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = c.CLASSIFY_SIGNATURE
    request.input.example_list.examples.extend([example(SETOSA), example(VIRGINICA)])
    response = stub.Classify(request, timeout=30)
    rows = [{cl.label: cl.score for cl in row.classes} for row in response.result.classifications]
    assert list(rows[0]) == list(c.CLASS_NAMES)
    assert max(rows[0], key=rows[0].get) == "setosa" and max(rows[1], key=rows[1].get) == "virginica"
    # example_list_with_context: the context's features merged into every example
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = c.CLASSIFY_SIGNATURE
    ctx = request.input.example_list_with_context
    ctx.context.CopyFrom(example(SETOSA))
    partial = example_pb2.Example()
    partial.features.feature["petal_length"].float_list.value.append(6.1)
    partial.features.feature["petal_width"].float_list.value.append(2.3)
    ctx.examples.append(partial)
    assert len(stub.Classify(request, timeout=30).result.classifications) == 1


def test_regress_without_regression_signature_answers_like_tf_serving(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "iris"
    request.input.example_list.examples.append(example(SETOSA))
    err = rpc_error(stub.Regress, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                             "Was: tensorflow/serving/predict")
    request.model_spec.signature_name = "nope"
    assert "No signature was found with the name: nope" in rpc_error(stub.Regress, request).details()


def test_multi_inference(stub):
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add()
    task.model_spec.name = "iris"
    task.model_spec.signature_name = c.CLASSIFY_SIGNATURE
    task.method_name = "tensorflow/serving/classify"
    request.input.example_list.examples.extend([example(SETOSA), example(VIRGINICA)])
    response = stub.MultiInference(request, timeout=30)
    result = response.results[0]
    assert result.model_spec.signature_name == c.CLASSIFY_SIGNATURE
    assert len(result.classification_result.classifications) == 2
    dup = request.tasks.add()
    dup.CopyFrom(task)
    err = rpc_error(stub.MultiInference, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Duplicate evaluation of signature" in err.details()


def test_get_model_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "iris"
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    sigs = signatures.signature_def
    assert {c.SERVING_SIGNATURE, c.CLASSIFY_SIGNATURE, c.RAW_SIGNATURE} <= set(sigs)
    assert sigs[c.CLASSIFY_SIGNATURE].method_name == "tensorflow/serving/classify"
    assert set(sigs[c.RAW_SIGNATURE].inputs) == set(c.FEATURE_KEYS)
    assert response.model_spec.version.value == 2
    request.metadata_field[:] = ["signature_def", "graph"]
    err = rpc_error(stub.GetModelMetadata, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Metadata field graph is not supported" in err.details()


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("mutate, code, message", [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(iris, 9)"),
    (lambda r: setattr(r.model_spec, "version_label", "gold"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: gold"),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (lambda r: r.inputs.pop(c.EXAMPLES_INPUT), grpc.StatusCode.INVALID_ARGUMENT,
     "Missing but required: {examples}"),
    (lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0])), grpc.StatusCode.INVALID_ARGUMENT,
     "Sent extra: {extra}"),
    (lambda r: r.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([1.0, 2.0])),
     grpc.StatusCode.INVALID_ARGUMENT, "to be string but float is provided"),
    (lambda r: r.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([[b"a"], [b"b"]])),
     grpc.StatusCode.INVALID_ARGUMENT, "has shape [2,1] but the signature expects [?]"),
    (lambda r: r.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([b"not an example"])),
     grpc.StatusCode.INVALID_ARGUMENT, ""),
    (lambda r: r.ClearField("model_spec"), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "output tensor alias not found in signature: nope"),
])
def test_bad_predict_requests_get_tf_serving_codes(stub, mutate, code, message):
    request = predict_request([SETOSA])
    mutate(request)
    err = rpc_error(stub.Predict, request)
    assert err.code() == code and message in err.details(), err.details()
    # the loaded model is not poisoned
    assert stub.Predict(predict_request([SETOSA]), timeout=30).outputs[c.PREDICTED_OUTPUT].string_val == [b"setosa"]


def test_oversized_grpc_request_refused(stub):
    rows = [SETOSA] * 30000  # ~1.3 MB > --max_request_bytes=1000000
    err = rpc_error(stub.Predict, predict_request(rows))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- in-process: tensor decoding, where gRPC handlers run ----------------------------------------------------
# --- REST ---------------------------------------------------------------------------------------------------
def test_rest_status_and_metadata(server):
    status, body = http(f"{server.rest_url}/v1/models/iris")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in ("1", "2")]}
    status, body = http(f"{server.rest_url}/v1/models/iris/labels/stable")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    status, body = http(f"{server.rest_url}/v1/models/iris/versions/1/metadata")
    assert status == 200 and body["model_spec"] == {"name": "iris", "version": "1", "signature_name": ""}
    assert body["metadata"]["signature_def"]["signature_def"][c.RAW_SIGNATURE]["method_name"] == \
        "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar(server):
    url = f"{server.rest_url}/v1/models/iris:predict"
    instances = [dict(zip(c.FEATURE_KEYS, SETOSA)), dict(zip(c.FEATURE_KEYS, VIRGINICA))]
    status, body = http(url, {"signature_name": c.RAW_SIGNATURE, "instances": instances})
    assert status == 200, body
    assert [p[c.PREDICTED_OUTPUT] for p in body["predictions"]] == ["setosa", "virginica"]
    assert body["predictions"][0][c.CLASSES_OUTPUT] == list(c.CLASS_NAMES)
    assert abs(sum(body["predictions"][0][c.PROBABILITIES_OUTPUT]) - 1) < 1e-4
    columns = {k: [SETOSA[i], VIRGINICA[i]] for i, k in enumerate(c.FEATURE_KEYS)}
    status, body = http(url, {"signature_name": c.RAW_SIGNATURE, "inputs": columns})
    assert status == 200 and body["outputs"][c.PREDICTED_OUTPUT] == ["setosa", "virginica"]
    b64 = base64.b64encode(example(VIRGINICA).SerializeToString()).decode()
    status, body = http(f"{server.rest_url}/v1/models/iris/labels/canary:predict", {"instances": [{"b64": b64}]})
    assert status == 200 and body["predictions"][0][c.PREDICTED_OUTPUT] == "virginica"


def test_rest_classify(server):
    examples = [dict(zip(c.FEATURE_KEYS, SETOSA)), dict(zip(c.FEATURE_KEYS, VIRGINICA))]
    status, body = http(f"{server.rest_url}/v1/models/iris/versions/1:classify",
                        {"signature_name": c.CLASSIFY_SIGNATURE, "examples": examples})
    assert status == 200, body
    assert [label for label, _ in body["results"][0]] == list(c.CLASS_NAMES)
    assert max(body["results"][1], key=lambda p: p[1])[0] == "virginica"


@pytest.mark.parametrize("path, body, code, message", [
    ("/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("/v1/models/iris/versions/7:predict", {"instances": [1]}, 404, "Specific(iris, 7)"),
    ("/v1/models/iris/labels/gold:predict", {"instances": [1]}, 400, "Unrecognized servable version label: gold"),
    ("/v1/models/iris:predict", b'{"instances": [', 400, "JSON Parse error"),
    ("/v1/models/iris:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("/v1/models/iris:predict", {"signature_name": "nope", "instances": [1]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/iris:predict", {"signature_name": c.RAW_SIGNATURE}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/iris:predict", {"signature_name": c.RAW_SIGNATURE, "instances": [1.0]}, 400,
     "instances is a plain list, but expecting list of objects"),
    ("/v1/models/iris:predict", {"signature_name": c.RAW_SIGNATURE, "inputs": {"sepal_length": [1.0]}}, 400,
     "Missing named input: petal_length in 'inputs' object."),
    ("/v1/models/iris:predict", {"signature_name": c.RAW_SIGNATURE, "instances": [
        {"sepal_length": "x", "sepal_width": 1.0, "petal_length": 1.0, "petal_width": 1.0}]}, 400,
     "is not of expected type: float"),
    ("/v1/models/iris:predict", {"signature_name": c.RAW_SIGNATURE, "inputs": {
        "sepal_length": [[1.0]], "sepal_width": [1.0], "petal_length": [1.0], "petal_width": [1.0]}}, 400,
     "has shape [1,1] but the signature expects [?]"),
    ("/v1/models/iris:classify", {"signature_name": c.CLASSIFY_SIGNATURE}, 400,
     "key 'examples' is expected and was not found"),
    ("/v1/models/iris:regress", {"examples": [{"sepal_length": 1.0}]}, 400,
     "Expected regression signature method_name to be tensorflow/serving/regress"),
    ("/v1/models/iris/versions/x:predict", {"instances": [1]}, 400, "Malformed request"),
])
def test_rest_errors(server, path, body, code, message):
    status, answer = http(server.rest_url + path, body)
    assert status == code and message in answer["error"], answer


def test_rest_oversized_body_refused(server):
    status, answer = http(f"{server.rest_url}/v1/models/iris:predict", b"[" + b" " * 1_100_000 + b"]")
    assert status == 413 and "exceeds the limit" in answer["error"]


def test_prometheus_metrics(server, stub):
    stub.Predict(predict_request([SETOSA]), timeout=30)
    rpc_error(stub.Predict, predict_request([SETOSA], model="nope"))
    assert http(f"{server.rest_url}/v1/models/iris:predict", b"{not json")[0] == 400
    status, text = http(server.rest_url + "/monitoring/prometheus/metrics")
    assert status == 200
    assert ':tensorflow:serving:request_count_total{API="predict",entrypoint="grpc",model_name="iris",' \
           'model_version="2",status="OK"}' in text
    assert 'model_name="<unknown>",model_version="",status="NOT_FOUND"}' in text  # unconfigured names: one label
    # malformed JSON is counted too, before any version is resolved
    assert ':tensorflow:serving:request_count_total{API="predict",entrypoint="rest",model_name="iris",' \
           'model_version="",status="INVALID_ARGUMENT"}' in text
    assert ':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="grpc",le="0.001",' \
           'model_name="iris"}' in text
    for version in ("1", "2"):
        assert f':tensorflow:serving:model_version_loaded{{model_name="iris",model_version="{version}"}} 1.0' in text


def test_serving_benchmark_h2load_calls_are_checked_against_the_servers_count(server):
    """The benchmark's C load generator (h2load) sends real gRPC calls; as it reads no gRPC status, the benchmark
    counts them against the server's request_count, which must tell answered-OK calls from failed ones."""
    from benchmarks import serving_benchmark as bench
    before = bench._ok_predicts(server.rest_port)
    good = bench.load_h2load(server.grpc_target, predict_request([SETOSA]).SerializeToString(), 4, 1)
    assert good["done"] > 0 and good["errors"] == 0 and good["p50_ms"] > 0
    ok = bench._ok_predicts(server.rest_port)
    assert good["done"] <= ok - before <= good["done"] + 4  # + calls in flight when h2load's time was up
    bad = bench.load_h2load(server.grpc_target, predict_request([SETOSA], model="nope").SerializeToString(), 1, 0.5)
    assert bad["done"] > 0  # HTTP 200 with grpc-status NOT_FOUND in the trailers
    assert bench._ok_predicts(server.rest_port) == ok


# --- client -------------------------------------------------------------------------------------------------
def test_python_client(server):
    with IrisClient(server.grpc_target) as client:
        predictions = client.predict([dict(zip(c.FEATURE_KEYS, SETOSA)), VIRGINICA])
        assert [p.species for p in predictions] == ["setosa", "virginica"]
        assert set(predictions[0].probabilities) == set(c.CLASS_NAMES)
        assert client.status().model_version_status[0].state == State.AVAILABLE
    with IrisClient(server.grpc_target, label="stable") as client:
        assert client.metadata().model_spec.version.value == 1
    with pytest.raises(ServingClientError, match="not served"), IrisClient(server.grpc_target, "nope") as client:
        client.predict([SETOSA])


def run_cli(*args):
    """`iris-tfx predict ...` as a user runs it."""
    command = h.iris_tfx_command()
    command = command + ["predict"] if command else [sys.executable, "-m", "serving.client"]
    env = dict(os.environ, PYTHONPATH=str(h.REPO))
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=str(h.REPO), timeout=120)


def test_cli_predict_values_and_csv(server, tmp_path):
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text(",".join(c.CSV_COLUMNS) + "\n" + ",".join(map(str, SETOSA)) + ",setosa\n" +
                        ",".join(map(str, VIRGINICA)) + ",virginica\n")
    result = run_cli("--server", server.grpc_target, "--label", "canary", ",".join(map(str, VIRGINICA)),
                     "--csv", str(csv_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["row", "species", *c.CLASS_NAMES]
    assert [line.split("\t")[1] for line in lines[1:]] == ["virginica", "setosa", "virginica"]


def test_cli_clear_errors(server):
    missing = run_cli("--server", server.grpc_target, "--model", "nope", *map(str, SETOSA))
    assert missing.returncode == 1 and "model 'nope' is not served" in missing.stderr
    down = run_cli("--server", f"127.0.0.1:{h.free_port()}", "--timeout", "5", *map(str, SETOSA))
    assert down.returncode == 1 and "cannot reach a model server" in down.stderr


def test_model_config_file_is_polled(server):
    """Runs last on this server: moves the `stable` label to version 2 by rewriting the config file."""
    server.config.write_text(MODEL_CONFIG.format(base=server.base, stable=2))

    def stable_version():
        return http(f"{server.rest_url}/v1/models/iris/labels/stable")[1]["model_version_status"][0]["version"]
    wait_for(lambda: stable_version() == "2", what="label moved by the polled config file")


# --- lifecycle: hot reload under load, broken versions, config reload, batching, SIGTERM drain ---------------
BATCHING = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 20000 }
num_batch_threads { value: 2 }
max_enqueued_batches { value: 100 }
"""


@pytest.fixture(scope="module")
def live(pushed_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    base = root / "iris"
    h.copy_version(pushed_model, base, 1)
    (root / "batching.config").write_text(BATCHING)
    proc = h.ServerProcess([f"--model_base_path={base}", "--model_name=iris", "--file_system_poll_wait_seconds=1",
                            "--enable_batching", f"--batching_parameters_file={root / 'batching.config'}"],
                           root / "server.log").wait_ready()
    proc.base = base
    yield proc
    assert proc.stop() == 0, proc.log()


def test_hot_reload_under_load_and_broken_version(live, pushed_model):
    stop, failures, versions_seen, lock = threading.Event(), [], set(), threading.Lock()

    def load(kind: str) -> None:
        with grpc.insecure_channel(live.grpc_target) as ch:
            s = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            while not stop.is_set():
                try:
                    if kind == "grpc":
                        r = s.Predict(predict_request([SETOSA, VIRGINICA]), timeout=30)
                        ok = list(r.outputs[c.PREDICTED_OUTPUT].string_val) == [b"setosa", b"virginica"]
                        version = r.model_spec.version.value
                    else:
                        status, body = http(f"{live.rest_url}/v1/models/iris:predict", {
                            "signature_name": c.RAW_SIGNATURE, "instances": [dict(zip(c.FEATURE_KEYS, SETOSA))]})
                        ok = status == 200 and body["predictions"][0][c.PREDICTED_OUTPUT] == "setosa"
                        version = 0 if ok else f"{status} {body}"
                    with lock:
                        (versions_seen.add(version) if ok else failures.append(f"{kind}: {version}"))
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    with lock:
                        failures.append(repr(e))

    threads = [threading.Thread(target=load, args=(k,)) for k in ("grpc",) * 6 + ("rest",) * 2]
    for t in threads:
        t.start()
    try:
        with grpc.insecure_channel(live.grpc_target) as ch:
            models = model_service_pb2_grpc.ModelServiceStub(ch)
            wait_for(lambda: 1 in versions_seen, what="traffic on version 1")
            h.copy_version(pushed_model, live.base, 2, like_tfx=True)
            wait_for(lambda: versions_state(models).get(1, (0,))[0] == State.END
                     and versions_state(models)[2][0] == State.AVAILABLE, what="swap to version 2")
            wait_for(lambda: 2 in versions_seen, what="traffic on version 2")
            broken = live.base / "3"
            broken.mkdir()
            (broken / "saved_model.pb").write_bytes(b"definitely not a SavedModel")
            wait_for(lambda: 3 in versions_state(models), what="version 3 attempted")
            state, message = versions_state(models)[3]
            assert state == State.END and message
            assert versions_state(models)[2][0] == State.AVAILABLE
            time.sleep(1.5)  # a few more polls: the broken version is not retried and never replaces version 2
            assert versions_state(models)[2][0] == State.AVAILABLE
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert versions_seen >= {1, 2} and 3 not in versions_seen
    assert "Loading servable: {name: iris version: 3} failed" in live.log()
    assert "Version 2 of model iris has no saved_model.pb yet" in live.log()
    assert "Loading servable: {name: iris version: 2} failed" not in live.log()


def test_batching_merges_concurrent_requests(live):
    results, errors = {}, []

    def one(i: int) -> None:
        rows = [SETOSA if (i + j) % 2 else VIRGINICA for j in range(i % 3 + 1)]
        try:
            with grpc.insecure_channel(live.grpc_target) as ch:
                r = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(predict_request(rows), timeout=30)
            results[i] = ([s.decode() for s in r.outputs[c.PREDICTED_OUTPUT].string_val],
                          ["setosa" if row is SETOSA else "virginica" for row in rows])
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 24
    assert all(got == want for got, want in results.values())  # each request gets back its own rows
    _, text = http(live.rest_url + "/monitoring/prometheus/metrics")
    counts = {line.split("le=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_bucket")}
    assert counts["+Inf"] > counts["1.0"]  # some batches merged more than one example
    big = [SETOSA] * 65  # larger than max_batch_size
    with grpc.insecure_channel(live.grpc_target) as ch:
        err = rpc_error(prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict, predict_request(big))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 65 is larger than maximum input batch size 64" in err.details()


def test_reload_config_request(live):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name="iris", base_path=str(live.base), model_platform="tensorflow")
    model.model_version_policy.all.SetInParent()
    model.version_labels["stable"] = 1
    with grpc.insecure_channel(live.grpc_target) as ch:
        models = model_service_pb2_grpc.ModelServiceStub(ch)
        response = models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                    timeout=120)
        assert response.status.error_code == 0
        states = versions_state(models)
        assert states[1][0] == State.AVAILABLE and states[2][0] == State.AVAILABLE and states[3][0] == State.END
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        assert stub.Predict(predict_request([SETOSA], label="stable"), timeout=30).model_spec.version.value == 1
        model.version_labels["canary"] = 3  # the broken version: refused, as TF Serving refuses it
        err = rpc_error(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(config=config))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 3 of model iris" in err.details()


def test_sigterm_drains_in_flight_requests(pushed_model, tmp_path):
    base = tmp_path / "iris"
    h.copy_version(pushed_model, base, 1)
    (tmp_path / "batching.config").write_text("max_batch_size { value: 1000 } batch_timeout_micros { value: 3000000 }")
    proc = h.ServerProcess([f"--model_base_path={base}", "--enable_batching",
                            f"--batching_parameters_file={tmp_path / 'batching.config'}"],
                           tmp_path / "server.log", use_console_command=True).wait_ready()  # `iris-tfx serve`
    try:
        outcome = {}

        def slow() -> None:  # waits in the batch queue for batch_timeout_micros
            with grpc.insecure_channel(proc.grpc_target) as ch:
                try:
                    r = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(predict_request([SETOSA]),
                                                                                      timeout=60)
                    outcome["species"] = list(r.outputs[c.PREDICTED_OUTPUT].string_val)
                except grpc.RpcError as e:
                    outcome["error"] = e
        thread = threading.Thread(target=slow)
        thread.start()
        wait_for(lambda: ':tensorflow:serving:requests_in_flight{entrypoint="grpc"} 1.0'
                 in http(proc.rest_url + "/monitoring/prometheus/metrics")[1], what="request in flight")
        proc.terminate()
        thread.join(60)
        assert outcome == {"species": [b"setosa"]}
        assert proc.proc.wait(60) == 0
        assert "Server stopped" in proc.log()
    finally:
        proc.stop()
