"""In-process tests of serving/'s parts that need no server process and no trained model: version policies,
options from flags, JSON <-> tensors, REST input parsing, TensorProto decoding, request cost, the request layer's
metrics, batching and the inline/pool split."""
import asyncio
import threading
from concurrent import futures
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2
from tensorflow_serving.config import model_server_config_pb2

from components import constants as c
from serving import config, defaults, rest_api, tensors
from serving.errors import ServingError
from serving.options import ServerOptions
from test_serving import SETOSA, predict_request
from test_serving_limits import shorthand_request


def model_config(policy: str = "", versions=()) -> model_server_config_pb2.ModelConfig:
    """A ModelConfig whose version policy is `policy` (all, specific with `versions`, latest with n=versions[0])."""
    config_ = model_server_config_pb2.ModelConfig(name="iris", base_path="/m")
    if policy == "all":
        config_.model_version_policy.all.SetInParent()
    elif policy == "specific":
        config_.model_version_policy.specific.versions.extend(versions)
    elif policy == "latest":
        config_.model_version_policy.latest.num_versions = versions[0]
    return config_


# --- version policy --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy, versions, candidates, want", [
    ("", (), [3, 1, 2], [3]),                      # no policy: the latest
    ("latest", (2,), [3, 1, 7, 2], [3, 7]),
    ("latest", (5,), [2, 1], [1, 2]),
    ("latest", (0,), [2, 1], [2]),                 # num_versions unset: 1
    ("all", (), [3, 1, 2], [1, 2, 3]),
    ("specific", (1, 4), [3, 1, 2], [1]),          # a version not (yet) on disk is not aspired
    ("specific", (1,), [], []),
])
def test_aspired_versions_follow_the_policy(policy, versions, candidates, want):
    from serving.policy import aspired
    assert aspired(model_config(policy, versions), candidates) == want


# --- options from flags ----------------------------------------------------------------------------------------
def test_options_defaults_are_tf_servings():
    options = config.parse_flags([])
    assert options == ServerOptions()
    assert (options.port, options.rest_api_port, options.model_name) == (8500, 8501, c.MODEL_NAME)
    assert options.grpc_max_threads == defaults.GRPC_THREADS_PER_CORE * defaults.cpu_count()
    assert options.enable_model_management and not options.enable_batching and options.model_base_path_roots == ()


def test_options_from_flags_are_typed():
    options = config.parse_flags(["--port", "9000", "--rest_api_port=0", "--enable_batching",
                                  "--batching_parameters_file=b.txt", "--enable_model_management=false",
                                  "--model_base_path_roots=/models, /srv/models,", "--max_request_elements=7",
                                  "--rest_api_timeout_in_ms=1500", "--file_system_poll_wait_seconds=0.5",
                                  "--model_config_file=m.config", "--model_config_file_poll_wait_seconds=60"])
    assert (options.port, options.rest_api_port, options.max_request_elements) == (9000, 0, 7)
    assert options.enable_batching is True and options.enable_model_management is False
    assert options.model_base_path_roots == ("/models", "/srv/models")
    assert options.rest_timeout_seconds == 1.5 and options.file_system_poll_wait_seconds == 0.5
    assert (options.inline_max_elements, options.inline_max_bytes) == (-1, -1)  # batching: all in the pool
    unbatched = config.parse_flags([])
    assert (unbatched.inline_max_elements, unbatched.inline_max_bytes) == (
        defaults.INLINE_MAX_REQUEST_ELEMENTS, defaults.INLINE_MAX_REQUEST_BYTES)
    assert config.parse_flags(["--rest_api_timeout_in_ms=0"]).rest_timeout_seconds == 3600.0


@pytest.mark.parametrize("argv, message", [
    (["--model_config_file_poll_wait_seconds=5"], "--model_config_file_poll_wait_seconds needs --model_config_file"),
    (["--batching_parameters_file=b.txt"], "--batching_parameters_file needs --enable_batching"),
    (["--max_request_elements=0"], "expected a positive integer, got '0'"),
    (["--enable_batching=maybe"], "expected true or false, got 'maybe'"),
])
def test_bad_flags_exit_2_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        config.parse_flags(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_model_server_config_from_flags_or_file(tmp_path):
    single = config.model_server_config(config.parse_flags(["--model_name=m", "--model_base_path=/b"]))
    (model,) = single.model_config_list.config
    assert (model.name, model.base_path, model.model_version_policy.latest.num_versions) == ("m", "/b", 1)
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "x" base_path: "/x" } }')
    from_file = config.model_server_config(config.parse_flags([f"--model_config_file={path}", "--model_name=m"]))
    assert [m.name for m in from_file.model_config_list.config] == ["x"]


# --- JSON <-> tensors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, dtype, want, want_dtype", [
    ([[1, 2.5], [3, 4]], types_pb2.DT_FLOAT, [[1.0, 2.5], [3.0, 4.0]], np.float32),
    (7, types_pb2.DT_INT64, 7, np.int64),
    ([], types_pb2.DT_FLOAT, [], np.float32),
    (["a", {"b64": "YWJj"}], types_pb2.DT_STRING, [b"a", b"abc"], object),
    ([[True], [False]], types_pb2.DT_BOOL, [[True], [False]], np.bool_),
])
def test_json_to_ndarray(value, dtype, want, want_dtype):
    array = tensors.json_to_ndarray(value, dtype)
    assert array.dtype == want_dtype and array.tolist() == want


@pytest.mark.parametrize("value, dtype, message", [
    ([[1, 2], [3]], types_pb2.DT_FLOAT, "Expecting shape [2] but got: [1] (ragged lists are not supported)"),
    ([1.5], types_pb2.DT_INT32, "JSON Value: 1.5 not formatted correctly for int32 type."),
    (["x"], types_pb2.DT_FLOAT, "JSON Value: 'x' Type: String is not of expected type: float"),
    ([True], types_pb2.DT_FLOAT, "Type: Bool is not of expected type: float"),
    ({"b64": "not base64!"}, types_pb2.DT_STRING, "Unable to base64 decode"),
    ([1 << 70], types_pb2.DT_INT64, "JSON value out of range for int64"),
])
def test_json_to_ndarray_errors(value, dtype, message):
    with pytest.raises(ServingError) as info:
        tensors.json_to_ndarray(value, dtype)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.message


def test_json_column_is_the_fast_path_for_plain_scalars_only():
    assert tensors.json_column([1, 2.5], types_pb2.DT_FLOAT).tolist() == [1.0, 2.5]
    assert tensors.json_column(["a"], types_pb2.DT_STRING).tolist() == [b"a"]
    for values, dtype in (([1, "x"], types_pb2.DT_FLOAT), ([True], types_pb2.DT_FLOAT), ([1.5], types_pb2.DT_INT64),
                          ([[1]], types_pb2.DT_FLOAT), ([1 << 70], types_pb2.DT_INT64)):
        assert tensors.json_column(values, dtype) is None  # json_to_ndarray decodes or explains these


def test_outputs_to_json_rows_and_columns():
    outputs = {"species": np.array([b"setosa", b"virginica"], dtype=object),
               "probabilities": np.array([[0.5, 0.5], [0.25, 0.75]], np.float32),
               "raw_bytes": np.array([b"\xff", b"a"], dtype=object)}
    rows = tensors.rows_to_json(outputs)
    assert [r["species"] for r in rows] == ["setosa", "virginica"]
    assert rows[1]["probabilities"] == [0.25, 0.75] and rows[0]["raw_bytes"] == {"b64": "/w=="}
    columns = tensors.columns_to_json(outputs)
    assert columns["species"] == ["setosa", "virginica"] and columns["probabilities"].tolist() == [[0.5, 0.5],
                                                                                                    [0.25, 0.75]]
    assert tensors.columns_to_json({"only": np.array([1, 2], np.int64)}).tolist() == [1, 2]
    with pytest.raises(ServingError, match="different batch sizes or are scalars"):
        tensors.rows_to_json({"a": np.array([1, 2]), "b": np.array([1])})


# --- REST input parsing ----------------------------------------------------------------------------------------
FLOAT = meta_graph_pb2.TensorInfo(dtype=types_pb2.DT_FLOAT)
RAW_INPUTS = {k: FLOAT for k in c.FEATURE_KEYS}


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"[1]", "JSON Parse error: Is not object"),
    (b'{"a": ', "JSON Parse error: "),
    (b'{"signature_name": 3}', "'signature_name' key must be a string value."),
])
def test_rest_body_parse_errors(body, message):
    with pytest.raises(ServingError) as info:
        rest_api.parse_json_body(body)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.message.startswith(message)


def test_rest_predict_inputs_row_and_columnar_formats():
    rows = [dict(zip(c.FEATURE_KEYS, SETOSA)), dict(zip(c.FEATURE_KEYS, [1, 2, 3, 4]))]
    inputs, row_format = rest_api.predict_inputs({"instances": rows}, RAW_INPUTS)
    assert row_format and {k: v.tolist() for k, v in inputs.items()} == {
        k: [pytest.approx(a), float(b)] for k, a, b in zip(c.FEATURE_KEYS, SETOSA, [1, 2, 3, 4])}
    assert all(v.dtype == np.float32 for v in inputs.values())
    nested = [{k: [v, v] for k, v in row.items()} for row in rows]  # not scalars: the per-element path
    inputs, _ = rest_api.predict_inputs({"instances": nested}, RAW_INPUTS)
    assert inputs[c.FEATURE_KEYS[0]].shape == (2, 2)
    inputs, row_format = rest_api.predict_inputs({"inputs": {k: [v] for k, v in rows[0].items()}}, RAW_INPUTS)
    assert not row_format and inputs[c.FEATURE_KEYS[0]].tolist() == [pytest.approx(SETOSA[0])]
    single = {"x": FLOAT}
    assert rest_api.predict_inputs({"instances": [[1, 2], [3, 4]]}, single)[0]["x"].shape == (2, 2)
    assert rest_api.predict_inputs({"inputs": [1, 2, 3]}, single)[0]["x"].shape == (3,)


@pytest.mark.parametrize("doc, message", [
    ({"instances": [], "inputs": {}}, "expecting only one of 'inputs' or 'instances' keys to exist"),
    ({}, "Missing 'inputs' or 'instances' key"),
    ({"instances": {}}, "Excepting 'instances' to be an list/array"),
    ({"instances": []}, "No values in 'instances' array"),
    ({"instances": [1.0]}, "instances is a plain list, but expecting list of objects"),
    ({"instances": [{"sepal_length": 1.0}]}, "Failed to process element: 0 of 'instances' list. JSON object: "
                                             '{"sepal_length":1.0} keys must be equal to: '),
    ({"instances": [dict.fromkeys(c.FEATURE_KEYS, 1.0), [1.0]]}, "Expecting object but got list at item 1"),
    ({"instances": [dict.fromkeys(c.FEATURE_KEYS, [1.0]), dict.fromkeys(c.FEATURE_KEYS, [1.0, 2.0])]},
     "Expecting tensor size: 1 but got: 2"),
    ({"instances": [dict(dict.fromkeys(c.FEATURE_KEYS, 1.0), petal_width="x")]},
     "Failed to process element: 0 key: petal_width of 'instances' list. Error: JSON Value: 'x'"),
    ({"inputs": {"sepal_length": [1.0]}}, "Missing named input: "),
    ({"inputs": [1.0]}, "inputs is a plain value/list, but expecting an object"),
])
def test_rest_predict_input_errors(doc, message):
    with pytest.raises(ServingError) as info:
        rest_api.predict_inputs(doc, RAW_INPUTS)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.message


def test_rest_examples_request():
    request = classification_pb2.ClassificationRequest()
    rest_api.fill_examples_request({"signature_name": "s", "context": {"a": "x", "n": [1, 2]},
                                    "examples": [{"f": 1.5}, {"f": [2.0, 3.0], "b": {"b64": "YQ=="}}]},
                                   request, "classify")
    examples = request.input.example_list_with_context
    assert request.model_spec.signature_name == "s" and len(examples.examples) == 2
    assert examples.context.features.feature["n"].int64_list.value == [1, 2]
    assert examples.examples[1].features.feature["f"].float_list.value == [2.0, 3.0]
    assert examples.examples[1].features.feature["b"].bytes_list.value == [b"a"]
    for doc, message in (({}, "When method is classify, key 'examples' is expected and was not found"),
                         ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
                         ({"examples": []}, "'examples' value is an empty array"),
                         ({"examples": [1]}, "Example must be JSON object but got JSON number"),
                         ({"examples": [{"f": [1, "a"]}]},
                          "Unexpected element type in feature: f expecting type: int64"),
                         ({"examples": [{"f": None}]}, "Feature: f has element with unexpected JSON type: null"),
                         ({"examples": [{"f": 1 << 64}]}, "Feature: f has an integer out of the int64 range")):
        with pytest.raises(ServingError) as info:
            rest_api.fill_examples_request(doc, classification_pb2.ClassificationRequest(), "classify")
        assert info.value.message == message


# --- the request layer -----------------------------------------------------------------------------------------
def handlers_without_models(**limits):
    """Real Handlers over a real ModelManager that serves nothing (no model configured), with fresh Metrics."""
    from serving.handlers import Handlers
    from serving.loader import LoaderOptions
    from serving.manager import ModelManager
    from serving.metrics import Metrics
    from serving.servable import session_config
    from serving.source import VersionSource
    metrics = Metrics()
    manager = ModelManager(VersionSource(), LoaderOptions(session_config(1, -1)), metrics)
    return Handlers(manager, metrics, **limits), metrics


def request_count(metrics, **labels) -> float:
    """The request_count sample with these labels (0 if absent)."""
    return metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", labels) or 0.0


def test_each_request_step_labels_its_metrics():
    """A request whose model is not served is labelled with the model it named (if configured), no version and
    NOT_FOUND; one refused before it ran, with its status; a request without ModelSpec counts as <unknown>."""
    handlers, metrics = handlers_without_models(max_request_elements=2)
    metrics.set_models(["iris"])
    with pytest.raises(ServingError) as info:
        handlers.infer("predict", "grpc", predict_request([SETOSA]), lambda servable, request: None)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    labels = dict(API="predict", entrypoint="grpc", model_version="")
    assert request_count(metrics, model_name="iris", status="NOT_FOUND", **labels) == 1
    with pytest.raises(ServingError, match=r"declares 3 tensor elements .* limit of 2 \(--max_request_elements\)") \
            as over:
        handlers.check_limits(predict_request([SETOSA] * 3))
    with pytest.raises(ServingError) as refused:
        handlers.refuse("predict", "grpc", "iris", over.value)
    assert refused.value is over.value
    assert request_count(metrics, model_name="iris", status="INVALID_ARGUMENT", **labels) == 1
    with pytest.raises(ServingError, match="Missing ModelSpec"):
        handlers.infer("predict", "grpc", predict_pb2.PredictRequest(), lambda servable, request: None)
    assert request_count(metrics, model_name="<unknown>", status="INVALID_ARGUMENT", **labels) == 1


def test_bad_config_exits_nonzero(tmp_path):
    """An unreadable model config file: the server does not start (exit 1)."""
    from serving import server as server_module
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'iris' base_path: ")
    assert server_module.main([f"--model_config_file={bad}", "--port=0", "--rest_api_port=0"]) == 1
    assert server_module.main([f"--model_config_file={tmp_path / 'missing.config'}", "--port=0"]) == 1


# --- TensorProtos, request cost, inline or pool, batching ---------------------------------------------------
def _float_proto(values, shape):
    proto = tf.make_tensor_proto(0.0, dtype=tf.float32)
    proto.ClearField("float_val")
    proto.tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
    proto.float_val.extend(values)
    return proto


@pytest.mark.parametrize("proto", [
    tf.make_tensor_proto([b"a", b"bc", b""]),                                  # string_val
    tf.make_tensor_proto(np.arange(12, dtype=np.float32).reshape(3, 4)),       # tensor_content
    tf.make_tensor_proto(np.arange(6, dtype=np.int64).reshape(2, 3)),
    tf.make_tensor_proto(np.array([[True, False]])),
    tf.make_tensor_proto(np.zeros((0, 4), np.float64)),                        # empty
    tf.make_tensor_proto(7, dtype=tf.int32),                                   # scalar
    _float_proto([1.0, 2.0, 3.0, 4.0], [2, 2]),                                # typed field, one value per element
    _float_proto([5.0], [2, 3]),                                               # TF's repeat-the-last-value shorthand
    tf.make_tensor_proto(np.array([1.5, 2.5], np.float16)),                    # dtypes left to tf.make_ndarray
    tf.make_tensor_proto(np.array([[1, 2]], np.uint8)),
])
def test_tensor_protos_decode_like_tf_make_ndarray(proto):
    from serving.tensors import proto_to_ndarray
    got, want = proto_to_ndarray(proto, "x"), tf.make_ndarray(proto)
    assert got.dtype == want.dtype and got.shape == want.shape and got.tolist() == want.tolist()


def test_malformed_tensor_proto_is_a_client_error():
    from serving.errors import ServingError
    from serving.tensors import proto_to_ndarray
    short = tf.make_tensor_proto(np.arange(4, dtype=np.float32))
    short.tensor_content = short.tensor_content[:-1]  # not a whole number of floats
    negative = _float_proto([1.0, 2.0], [2, 1])
    negative.tensor_shape.dim[0].size = negative.tensor_shape.dim[1].size = -2  # (-2) * (-2) == 4 elements?
    negative_content = tf.make_tensor_proto(np.arange(4, dtype=np.float32).reshape(2, 2))
    negative_content.tensor_shape.dim[0].size = negative_content.tensor_shape.dim[1].size = -2
    for bad in (short, negative, negative_content):
        with pytest.raises(ServingError) as info:
            proto_to_ndarray(bad, "x")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.message == "tensor parsing error: x"


@pytest.mark.parametrize("batching", [False, True])
def test_small_grpc_requests_run_on_the_event_loop_large_ones_in_the_pool(batching):
    from serving.grpc_service import PredictionService
    from serving.handlers import Handlers
    from serving.metrics import Metrics
    manager = SimpleNamespace(servable=lambda spec: SimpleNamespace(version_str="1"))
    options = ServerOptions(enable_batching=batching)
    small = predict_request([SETOSA])
    large = predict_request([SETOSA] * (defaults.INLINE_MAX_REQUEST_BYTES // 64))  # ~90 bytes per example
    assert large.ByteSize() > defaults.INLINE_MAX_REQUEST_BYTES >= small.ByteSize()

    async def threads():
        loop_thread = threading.current_thread()
        with futures.ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
            service = PredictionService(Handlers(manager, Metrics(), 1 << 30, 1 << 30), pool,
                                        options.inline_max_elements, options.inline_max_bytes)
            ran = [await service._run("predict", r, None, lambda servable, request: threading.current_thread())
                   for r in (small, large)]
        return ["loop" if t is loop_thread else t.name.split("_")[0] for t in ran]
    assert asyncio.run(threads()) == (["pool", "pool"] if batching else ["loop", "pool"])


def test_request_cost_is_read_from_declared_shapes():
    """Elements and decoding expansion come from shapes and counts: shorthand, repeated strings, example context."""
    from serving.errors import ServingError
    from serving.inference import check_request, request_cost
    assert request_cost(shorthand_request(1_000_000)) == (4_000_000, 0)
    assert request_cost(predict_request([SETOSA] * 3)) == (3, 0)
    strings = predict_pb2.PredictRequest()
    proto = strings.inputs[c.EXAMPLES_INPUT]
    proto.dtype = types_pb2.DT_STRING
    proto.tensor_shape.dim.add().size = 1000
    proto.string_val.extend([b"a", b"x" * 100])
    assert request_cost(strings) == (1000, 998 * 100)  # the last string repeated 998 times
    classify = classification_pb2.ClassificationRequest()
    examples = classify.input.example_list_with_context
    examples.context.features.feature["a"].bytes_list.value.append(b"y" * 1000)
    for _ in range(50):
        examples.examples.add()
    assert request_cost(classify) == (50, 50 * examples.context.ByteSize())  # the context copied into each
    with pytest.raises(ServingError, match=r"expands by 99800 bytes .* 1000 \(--max_request_bytes\)"):
        check_request(strings, 10_000, 1000)
    proto.tensor_shape.dim[0].size = -1
    with pytest.raises(ServingError, match="tensor parsing error: examples"):
        request_cost(strings)


def test_batch_scheduler_finishes_requests_that_reach_it_after_unload_began():
    """A request that got a version just before it was unloaded still completes (TF Serving's handles)."""
    from serving.batching import BatchScheduler  # pylint: disable=g-import-not-at-top
    from serving.config import BatchingParameters  # pylint: disable=g-import-not-at-top
    batches = []

    def run(key, inputs):
        batches.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}
    scheduler = BatchScheduler(BatchingParameters(), run, "test")
    x = np.arange(3, dtype=np.float32)
    assert scheduler.run("k", {"x": x})["y"].tolist() == [0, 2, 4]
    scheduler.close()
    assert scheduler.run("k", {"x": x})["y"].tolist() == [0, 2, 4]
    assert batches == [3, 3]
