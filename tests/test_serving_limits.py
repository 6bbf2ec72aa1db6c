"""Limits of the model server against hostile clients (issue 9): request cost bounded by what a request declares,
metrics labels bounded to configured models, model management that can be disabled or confined to given roots.
Real server processes on loopback over the pipeline's pushed SavedModel."""
import os
import pathlib
import threading

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from components import constants as c
from serving import harness as h
from test_serving import SETOSA, State, http, predict_request, rpc_error, versions_state, wait_for

# Real server processes over the pipeline's model; the request-cost arithmetic is tested in test_serving_units.py.
pytestmark = pytest.mark.e2e
METRICS = "/monitoring/prometheus/metrics"


def shorthand_request(rows: int) -> predict_pb2.PredictRequest:
    """serving_raw Predict whose four float inputs declare [rows] with one value each: TF's repeat-the-last-value
    shorthand makes `rows` examples out of a few bytes."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = c.RAW_SIGNATURE
    for key, value in zip(c.FEATURE_KEYS, SETOSA):
        proto = request.inputs[key]
        proto.dtype = types_pb2.DT_FLOAT
        proto.tensor_shape.dim.add().size = rows
        proto.float_val.append(value)
    return request


def rss_bytes(proc: h.ServerProcess) -> int:
    """Resident set size of the server process, from /proc."""
    for line in pathlib.Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def reload_request(name: str, base_path: str) -> model_management_pb2.ReloadConfigRequest:
    """A HandleReloadConfigRequest serving one model from base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return model_management_pb2.ReloadConfigRequest(config=config)


def metric_lines(proc: h.ServerProcess, prefix: str):
    """Lines of the server's Prometheus page starting with prefix."""
    status, text = http(proc.rest_url + METRICS)
    assert status == 200
    return [line for line in text.splitlines() if line.startswith(prefix)]


# --- a server confined to a models root, default request limits ----------------------------------------------
@pytest.fixture(scope="module")
def guarded(pushed_model, tmp_path_factory):
    """A server whose base paths must lie under <tmp>/models, and a loadable model outside it."""
    root = tmp_path_factory.mktemp("limits")
    roots, outside = root / "models", root / "outside"
    h.copy_version(pushed_model, roots / "iris", 1)
    h.copy_version(pushed_model, outside / "iris", 7)  # a loadable model the roots must keep out
    proc = h.ServerProcess([f"--model_base_path={roots / 'iris'}", f"--model_base_path_roots={roots}"],
                           root / "server.log").wait_ready()
    proc.roots, proc.outside = roots, outside
    yield proc
    assert proc.stop() == 0, proc.log()


def test_shorthand_request_refused_before_decoding(guarded):
    """The issue's 155-byte request declaring 4 x 10^6 elements is refused, naming the flag, without RSS growth."""
    request = shorthand_request(1_000_000)  # 4 x 10^6 elements declared
    assert request.ByteSize() < 200
    before = rss_bytes(guarded)
    with grpc.insecure_channel(guarded.grpc_target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        for _ in range(3):
            err = rpc_error(stub.Predict, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "4000000" in err.details() and "500000 (--max_request_elements)" in err.details(), err.details()
        assert rss_bytes(guarded) - before < 50 << 20  # decoding it alone would add ~780 MB
        assert stub.Predict(shorthand_request(3), timeout=30).outputs[c.PREDICTED_OUTPUT].string_val == [b"setosa"] * 3
    refused = metric_lines(guarded, ':tensorflow:serving:request_count_total{API="predict",entrypoint="grpc",'
                                    'model_name="iris",model_version="",status="INVALID_ARGUMENT"}')
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 3  # refusals are counted like other errors


def test_unknown_model_names_share_one_label(guarded):
    """20,000 made-up model names (gRPC) and 20 (REST) are counted under model_name="<unknown>"."""
    names = 20_000
    with grpc.insecure_channel(guarded.grpc_target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        for start in range(0, names, 500):  # 500 in flight at a time (the server takes 1024 at most)
            calls = [stub.Predict.future(predict_request([SETOSA], model=f"made-up-{i}"), timeout=120)
                     for i in range(start, start + 500)]
            for call in calls:
                assert call.exception().code() == grpc.StatusCode.NOT_FOUND
    for i in range(20):
        assert http(f"{guarded.rest_url}/v1/models/rest-made-up-{i}:predict", {"instances": [1.0]})[0] == 404
    status, text = http(guarded.rest_url + METRICS)
    assert status == 200 and "made-up" not in text and len(text) < 64 << 10, len(text)
    unknown = [line for line in text.splitlines() if line.startswith(':tensorflow:serving:request_count_total{')
               and 'model_name="<unknown>"' in line and 'status="NOT_FOUND"' in line]
    counts = {('entrypoint="grpc"' in line): float(line.rsplit(" ", 1)[1]) for line in unknown}
    assert counts == {True: names, False: 20}  # still counted, under one label per API/entrypoint/status


def test_reload_outside_the_roots_refused(guarded):
    """Absolute, '..' and symlink escapes from the roots are refused and the served model stays."""
    link = guarded.roots / "link"
    link.symlink_to(guarded.outside / "iris", target_is_directory=True)
    escapes = ["/etc", str(guarded.outside / "iris"), f"{guarded.roots}/../outside/iris", str(link)]
    with grpc.insecure_channel(guarded.grpc_target) as ch:
        models = model_service_pb2_grpc.ModelServiceStub(ch)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        for path in escapes:
            err = rpc_error(models.HandleReloadConfigRequest, reload_request("iris", path))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (path, err.details())
            assert f"base_path {path} resolves to" in err.details()
            assert f"outside --model_base_path_roots={guarded.roots}" in err.details()
            assert versions_state(models) == {1: (State.AVAILABLE, "")}  # the served model is untouched
            assert stub.Predict(predict_request([SETOSA]), timeout=30).model_spec.version.value == 1
        # Inside the roots a reload works; a version directory symlinked out of them is not loaded.
        (guarded.roots / "other").mkdir()
        (guarded.roots / "other" / "3").symlink_to(guarded.outside / "iris" / "7", target_is_directory=True)
        config = reload_request("iris", str(guarded.roots / "iris")).config
        config.model_config_list.config.add(name="other", base_path=str(guarded.roots / "other"))
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
        assert versions_state(models) == {1: (State.AVAILABLE, "")}
        assert rpc_error(models.GetModelStatus, _status_request("other")).code() == grpc.StatusCode.NOT_FOUND
        models.HandleReloadConfigRequest(reload_request("iris", str(guarded.roots / "iris")), timeout=120)
    assert "Version 3 of model other resolves to" in guarded.log()


def test_rest_example_context_expansion_refused(guarded):
    """REST classify merges the context into every example: 1,000 empty examples and a 100 kB context would
    decode to 100 MB from a 100 kB body."""
    context = dict(zip(c.FEATURE_KEYS, SETOSA), padding="x" * 100_000)
    status, body = http(f"{guarded.rest_url}/v1/models/iris:classify",
                        {"signature_name": c.CLASSIFY_SIGNATURE, "context": context, "examples": [{}] * 1000})
    assert status == 400 and "(--max_request_bytes)" in body["error"], body
    status, body = http(f"{guarded.rest_url}/v1/models/iris:classify",
                        {"signature_name": c.CLASSIFY_SIGNATURE, "context": context, "examples": [{}] * 3})
    assert status == 200 and len(body["results"]) == 3, body


def test_warmup_requests_within_the_limits(guarded, pushed_model):
    """A version whose warm-up replays a request over the limits fails to load (the served one stays)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    version = h.copy_version(pushed_model, guarded.roots / "warm", 1)
    (version / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
            request=shorthand_request(1_000_000))).SerializeToString())
    config = reload_request("iris", str(guarded.roots / "iris")).config
    config.model_config_list.config.add(name="warm", base_path=str(guarded.roots / "warm"))
    with grpc.insecure_channel(guarded.grpc_target) as ch:
        models = model_service_pb2_grpc.ModelServiceStub(ch)
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
        state, message = versions_state(models, "warm")[1]
        assert state == State.END and "(--max_request_elements)" in message, message
        assert versions_state(models) == {1: (State.AVAILABLE, "")}
        models.HandleReloadConfigRequest(reload_request("iris", str(guarded.roots / "iris")), timeout=120)


def _status_request(name: str):
    """GetModelStatusRequest for every version of a model."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return request


def test_config_file_outside_the_roots_is_a_startup_error(pushed_model, tmp_path):
    """A config file naming a base path outside the roots stops the server at start with one clear line."""
    roots, outside = tmp_path / "models", tmp_path / "elsewhere"
    roots.mkdir()
    h.copy_version(pushed_model, outside, 1)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "iris" base_path: "{roots}/../elsewhere" }} }}')
    proc = h.ServerProcess([f"--model_config_file={config}", f"--model_base_path_roots={roots}"],
                           tmp_path / "server.log")
    try:
        with pytest.raises(RuntimeError, match="server exited with 1"):
            proc.wait_ready()
    finally:
        proc.stop()
    assert (f"Failed to start server: Model iris: base_path {roots}/../elsewhere resolves to "
            f"{os.path.realpath(outside)}, outside --model_base_path_roots={roots}") in proc.log(), proc.log()


# --- a server with model management disabled and a raised element limit -------------------------------------
def test_rest_predict_element_limit(guarded):
    """REST predict counts its decoded elements against the same limit as gRPC (default 500,000)."""
    rows = 500_000 // len(c.FEATURE_KEYS) + 1
    url = f"{guarded.rest_url}/v1/models/iris:predict"

    def columns(n: int):
        return {"signature_name": c.RAW_SIGNATURE, "inputs": {k: [v] * n for k, v in zip(c.FEATURE_KEYS, SETOSA)}}
    status, body = http(url, columns(rows))
    assert status == 400 and "(--max_request_elements)" in body["error"], body
    status, body = http(url, columns(2))
    assert status == 200 and len(body["outputs"][c.PREDICTED_OUTPUT]) == 2, body


@pytest.fixture(scope="module")
def locked(pushed_model, tmp_path_factory):
    """A server with model management disabled and room for 2M-element requests."""
    root = tmp_path_factory.mktemp("locked")
    h.copy_version(pushed_model, root / "iris", 1)
    proc = h.ServerProcess([f"--model_base_path={root / 'iris'}", "--enable_model_management=false",
                            "--max_request_elements=2000000"], root / "server.log").wait_ready()
    proc.base = root / "iris"
    yield proc
    assert proc.stop() == 0, proc.log()


def test_reload_refused_when_model_management_is_disabled(locked):
    """Any reload, even of the served path, is UNIMPLEMENTED naming the flag; the model stays."""
    with grpc.insecure_channel(locked.grpc_target) as ch:
        models = model_service_pb2_grpc.ModelServiceStub(ch)
        for path in ("/etc", str(locked.base)):
            err = rpc_error(models.HandleReloadConfigRequest, reload_request("iris", path))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "--enable_model_management=false" in err.details()
        assert versions_state(models) == {1: (State.AVAILABLE, "")}


def test_large_allowed_request_does_not_stall_other_clients(locked):
    """A 2M-element request the limit allows takes the server a second or more: it runs in the pool, so small
    requests are answered while it is still in flight on the server."""
    in_flight = ':tensorflow:serving:requests_in_flight{entrypoint="grpc"}'
    outcome = {}

    def large() -> None:
        with grpc.insecure_channel(locked.grpc_target, [("grpc.max_receive_message_length", -1)]) as ch:
            response = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(shorthand_request(500_000),
                                                                                    timeout=240)
            outcome["rows"] = len(response.outputs[c.PREDICTED_OUTPUT].string_val)
    thread = threading.Thread(target=large)
    thread.start()
    try:
        wait_for(lambda: outcome or metric_lines(locked, in_flight) == [f"{in_flight} 1.0"],
                 what="large request in flight")
        assert not outcome, "the metrics page only answered after the large request: the event loop was blocked"
        with grpc.insecure_channel(locked.grpc_target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            assert stub.Predict(predict_request([SETOSA]), timeout=60).outputs[c.PREDICTED_OUTPUT].string_val \
                == [b"setosa"]
        assert metric_lines(locked, in_flight) == [f"{in_flight} 1.0"]  # answered while the large one runs
    finally:
        thread.join(240)
    assert outcome == {"rows": 500_000}
