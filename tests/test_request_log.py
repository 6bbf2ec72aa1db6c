"""Request logging (issue 13): the writer, rotation and disk budget in-process; then real server processes with
logging_config in their --model_config_file: every API logged at sampling 1.0, the sampling rate honoured, SIGTERM
flushing, a full queue dropping records not requests, a SIGKILL leaving readable files, the budget kept."""
import datetime
import json
import os
import pathlib
import re
import time
import urllib.request
from concurrent import futures
from typing import List

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_pb2, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from components import constants as c
from components import request_logs
from serving import config
from serving import harness as h
from serving import request_log
from serving.metrics import Metrics
from serving.tensors import ndarray_to_proto

SETOSA = [5.1, 3.5, 1.4, 0.2]


def example(values=SETOSA) -> example_pb2.Example:
    ex = example_pb2.Example()
    for k, v in zip(c.FEATURE_KEYS, values):
        ex.features.feature[k].float_list.value.append(v)
    return ex


def predict_request(model: str = "iris") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = c.SERVING_SIGNATURE
    request.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([example().SerializeToString()], dtype=tf.string))
    return request


def model_config(models) -> model_server_config_pb2.ModelServerConfig:
    """A ModelServerConfig of (name, base_path, filename_prefix, sampling_rate)."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base, prefix, rate in models:
        m = config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
        m.logging_config.log_collector_config.filename_prefix = str(prefix)
        m.logging_config.sampling_config.sampling_rate = rate
    return config


def read_logs(prefix) -> List[prediction_log_pb2.PredictionLog]:
    return [prediction_log_pb2.PredictionLog.FromString(r) for r in request_logs.read_records(str(prefix))]


def metric(text: str, name: str, **labels) -> float:
    """Sum of a Prometheus sample's values whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"(\S+?)(\{.*\})? (\S+)$", line)
        if match and match.group(1) == name and all(f'{k}="{v}"' in (match.group(2) or "") for k, v in labels.items()):
            total += float(match.group(3))
    return total


# --- in-process: the writer, rotation, budget, torn tail --------------------------------------------------------
def test_rotation_keeps_the_budget_and_removes_the_oldest(tmp_path):
    removed: List[str] = []
    file = request_log.RotatingRecordFile(str(tmp_path / "logs" / "iris"), 1000, 3000, removed.append)
    for i in range(100):
        file.write([b"%04d" % i + b"x" * 96])
        files = request_logs.log_files(str(tmp_path / "logs" / "iris"))
        total = sum(os.path.getsize(p) for p in files)
        assert total <= 3000 and (i < 30 or total > 3000 - 1044 - 116)  # within budget, and no more removed
    file.close()
    files = request_logs.log_files(str(tmp_path / "logs" / "iris"))
    assert len(files) > 1 and removed and not set(removed) & set(files)
    numbers = [int(r[:4]) for r in request_logs.read_records(str(tmp_path / "logs" / "iris"))]
    assert numbers == list(range(100 - len(numbers), 100))  # the newest records, in order: oldest files removed
    assert all(os.path.getsize(p) <= 1000 + 116 for p in files)


def test_writers_sharing_a_prefix_keep_one_budget_and_lose_no_record_to_a_removed_open_file(tmp_path):
    """Replicas on one volume write under one prefix: the budget is all writers' total, the oldest files go whoever
    wrote them (an open one too), and a writer whose open file was removed writes on in a new one, losing nothing."""
    prefix = str(tmp_path / "logs" / "iris")
    removed: List[str] = []
    replaced: List[int] = []
    a = request_log.RotatingRecordFile(prefix, 1000, 3000, removed.append, lambda path, n: replaced.append(n))
    for i in range(5):
        a.write([b"a%04d" % i + b"x" * 95])
    b = request_log.RotatingRecordFile(prefix, 1000, 3000, removed.append, lambda path, n: replaced.append(n))
    written = {b"a": 5, b"b": 0}
    for i in range(300):  # a writes slowly: its open file becomes the oldest under the prefix
        for name, file in ((b"a", a), (b"b", b)) if i % 10 == 0 else ((b"b", b),):
            file.write([name + b"%04d" % written[name] + b"x" * 95])
            written[name] += 1
            assert not file.path or os.path.exists(file.path)  # none goes on writing into a removed file
            total = sum(os.path.getsize(p) for p in request_logs.log_files(prefix))
            assert total <= 3000 + 2 * (1000 + 116), total  # the budget, plus each writer's open file
    a.close()
    b.close()
    assert replaced and removed  # a's open file was the oldest when b rotated
    for name in (b"a", b"b"):  # each writer's records that survive are its newest, without a gap
        numbers = [int(r[1:5]) for r in request_logs.read_records(prefix) if r[:1] == name]
        assert numbers == list(range(written[name] - len(numbers), written[name])) and numbers, (name, numbers)


def test_file_names_carry_time_host_and_pid_and_a_prefix_sees_only_its_own(tmp_path):
    when = datetime.datetime(2026, 11, 30, 14, 0, 3, 123456, tzinfo=datetime.timezone.utc)
    name = request_logs.file_name(str(tmp_path / "iris"), when, 2, host="pod/ä b:1-x", pid=1)
    assert os.path.basename(name) == "iris-20261130T140003.123456Z-pod___b_1-x-1-000002.tfrecord"
    assert request_logs.file_time(name) == when
    assert request_logs.safe_host("..") == "unknown" and len(request_logs.safe_host("h" * 300)) == 63
    file = request_log.RotatingRecordFile(str(tmp_path / "iris"), 1 << 20, 1 << 30, lambda p: None)
    file.write([b"one"])
    file.close()
    canary = request_log.RotatingRecordFile(str(tmp_path / "iris-canary"), 1 << 20, 1 << 30, lambda p: None)
    canary.write([b"two"])
    canary.close()
    (path,) = request_logs.log_files(str(tmp_path / "iris"))
    assert re.search(f"-{re.escape(request_logs.safe_host())}-{os.getpid()}-" + r"\d{6}\.tfrecord$", path), path
    assert abs(request_logs.file_time(path) - datetime.datetime.now(datetime.timezone.utc)).total_seconds() < 60
    assert list(request_logs.read_records(str(tmp_path / "iris"))) == [b"one"]
    with pytest.raises(ValueError, match="not a request log file name"):
        request_logs.file_time(str(tmp_path / "iris.tfrecord"))


def write_file(prefix: str, when: datetime.datetime, host: str, records: List[bytes]) -> str:
    """One log file as writer `host` (pid 1) would name it, opened at `when`."""
    path = request_logs.file_name(prefix, when, 1, host=host, pid=1)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def test_since_skips_files_their_writer_had_finished_and_a_removed_file_is_skipped(tmp_path):
    prefix = str(tmp_path / "iris")
    t = datetime.datetime(2026, 11, 30, 14, 0, tzinfo=datetime.timezone.utc)
    minutes = lambda n: t + datetime.timedelta(minutes=n)  # noqa: E731
    write_file(prefix, minutes(0), "a", [b"a0"])  # a's next file opened before `since`: finished, skipped
    write_file(prefix, minutes(1), "a", [b"a1"])  # a's next file opened after `since`: may hold later records
    write_file(prefix, minutes(3), "a", [b"a3"])
    write_file(prefix, minutes(0), "b", [b"b0"])  # b's last file: still open at `since`
    write_file(prefix, minutes(1), "c", [b"c1"])  # c's next file opened exactly at `since`: read
    write_file(prefix, minutes(2), "c", [b"c2"])
    stray = write_file(prefix, minutes(0), "d", [b"d0"]).replace("-d-1-000001", "-x")  # not the writer's pattern
    os.rename(stray.replace("-x", "-d-1-000001"), stray)
    assert stray not in request_logs.log_files(prefix)
    assert sorted(request_logs.read_records(prefix, since=minutes(2))) == [b"a1", b"a3", b"b0", b"c1", b"c2"]
    assert sorted(request_logs.read_records(prefix)) == [b"a0", b"a1", b"a3", b"b0", b"c1", b"c2"]
    records = request_logs.read_records(prefix)
    assert next(records) == b"a0"  # the files are listed; then a writer keeping the budget removes one
    os.remove(request_logs.log_files(prefix)[1])
    assert sorted(records) == [b"a1", b"a3", b"c1", b"c2"]


def test_a_torn_tail_is_read_up_to_the_last_whole_record(tmp_path):
    file = request_log.RotatingRecordFile(str(tmp_path / "iris"), 1 << 20, 1 << 30, lambda p: None)
    file.write([b"record %d" % i for i in range(10)])
    file.close()
    (path,) = request_logs.log_files(str(tmp_path / "iris"))
    with open(path, "r+b") as f:  # what a kill in the middle of a write leaves
        f.truncate(os.path.getsize(path) - 5)
    assert list(request_logs.read_records(str(tmp_path / "iris"))) == [b"record %d" % i for i in range(9)]


def test_logger_writes_prediction_logs_with_metadata_and_drops_when_full(tmp_path):
    metrics = Metrics()
    logger = request_log.RequestLogger(metrics, queue_size=100_000, max_file_bytes=1 << 20, max_total_bytes=1 << 30)
    logger.update(model_config([("iris", tmp_path, tmp_path / "iris", 1.0), ("off", tmp_path, tmp_path / "o", 0)]))
    request = predict_request()
    response = predict_pb2.PredictResponse()
    response.outputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    for _ in range(50):
        logger.log("predict", request.model_spec, 7, request, response)
        logger.log("get_model_metadata", request.model_spec, 7, request, response)  # not a logged API
        logger.log("predict", model_pb2.ModelSpec(name="off"), 7, request, response)  # sampling 0
    logger.close()
    logs = read_logs(tmp_path / "iris")
    assert len(logs) == 50 and not request_logs.log_files(str(tmp_path / "o"))
    meta = logs[0].log_metadata
    assert (meta.model_spec.name, meta.model_spec.version.value, meta.sampling_config.sampling_rate,
            list(meta.saved_model_tags)) == ("iris", 7, 1.0, ["serve"])
    assert logs[0].predict_log.request.inputs == request.inputs and logs[0].predict_log.response == response
    assert metric(metrics.exposition().decode(), ":tensorflow:serving:request_log_count_total", status="written") == 50

    tiny = request_log.RequestLogger(metrics, queue_size=1, max_file_bytes=1 << 20, max_total_bytes=1 << 30)
    tiny.update(model_config([("tiny", tmp_path, tmp_path / "tiny", 1.0)]))
    spec = model_pb2.ModelSpec(name="tiny")
    for _ in range(2000):  # far faster than one thread can serialize and write them
        tiny.log("predict", spec, 1, request, response)
    tiny.close()
    page = metrics.exposition().decode()
    dropped = metric(page, ":tensorflow:serving:request_log_count_total", model_name="tiny", status="dropped")
    assert dropped > 0 and len(read_logs(tmp_path / "tiny")) + dropped == 2000


def message_built(field: str, spec: model_pb2.ModelSpec, version: int, rate: float, request, response,
                  when: int) -> prediction_log_pb2.PredictionLog:
    """The PredictionLog built field by field, as the writer did before it assembled records from bytes."""
    record = prediction_log_pb2.PredictionLog()
    meta = record.log_metadata
    meta.model_spec.CopyFrom(spec)
    meta.model_spec.version.value = version
    meta.sampling_config.sampling_rate = rate
    meta.saved_model_tags.append("serve")
    meta.timestamp_secs = when
    getattr(record, field).request.CopyFrom(request)
    getattr(record, field).response.CopyFrom(response)
    return record


def test_records_assembled_from_bytes_parse_as_the_message_built_ones(tmp_path):
    """gRPC hands the logger a request's bytes as received and the response serialized: the record made of them
    is read by TF's reader and parses as the PredictionLog built message by message (protos and REST's arrays)."""
    spec = model_pb2.ModelSpec(name="iris", signature_name=c.SERVING_SIGNATURE)
    spec.version_label = "stable"  # logged as the version that answered
    small = predict_request()
    small.model_spec.CopyFrom(spec)
    large = predict_request()  # > 16 KiB: lengths take three varint bytes
    large.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([example().SerializeToString()] * 2000))
    response = predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(name="iris"))
    response.outputs[c.PROBABILITIES_OUTPUT].CopyFrom(tf.make_tensor_proto([[0.9, 0.05, 0.05]]))
    response.outputs[c.PREDICTED_OUTPUT].CopyFrom(tf.make_tensor_proto([b"setosa"]))
    classify = classification_pb2.ClassificationRequest(model_spec=spec)
    classify.input.example_list.examples.add().CopyFrom(example())
    classified = classification_pb2.ClassificationResponse()
    classified.result.classifications.add().classes.add(label="setosa", score=0.9)
    regress = regression_pb2.RegressionRequest(model_spec=spec, input=classify.input)
    regressed = regression_pb2.RegressionResponse()
    regressed.result.regressions.add(value=1.5)
    multi = inference_pb2.MultiInferenceRequest(input=classify.input)
    multi.tasks.add(model_spec=spec, method_name="tensorflow/serving/classify")
    answered = inference_pb2.MultiInferenceResponse()
    answered.results.add(classification_result=classified.result)
    cases = [("predict", "predict_log", small, response), ("predict", "predict_log", large, response),
             ("classify", "classify_log", classify, classified), ("regress", "regress_log", regress, regressed),
             ("multi_inference", "multi_inference_log", multi, answered)]
    logger = request_log.RequestLogger(Metrics(), 100, 1 << 20, 1 << 30)
    logger.update(model_config([("iris", tmp_path, tmp_path / "iris", 1.0)]))
    start = int(time.time())
    for api, _, request, answer in cases:
        logger.log(api, spec, 7, request.SerializeToString(), answer.SerializeToString())  # gRPC: bytes
        logger.log(api, spec, 7, request, answer)  # protos
    inputs = {name: np.array([value], np.float32) for name, value in zip(c.FEATURE_KEYS, SETOSA)}
    logger.log_predict_arrays(spec, 7, inputs, {c.PROBABILITIES_OUTPUT: np.array([[0.9, 0.05, 0.05]], np.float32)})
    logger.close()
    end = int(time.time())
    (path,) = request_logs.log_files(str(tmp_path / "iris"))
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert len(logs) == 2 * len(cases) + 1
    for log in logs:
        assert start <= log.log_metadata.timestamp_secs <= end
    versioned = model_pb2.ModelSpec(name="iris", signature_name=c.SERVING_SIGNATURE)
    versioned.version.value = 7
    rest_request = predict_pb2.PredictRequest(model_spec=versioned)  # REST's arrays, as the server encodes them
    for name, array in inputs.items():
        ndarray_to_proto(array, rest_request.inputs[name])
    rest_response = predict_pb2.PredictResponse(model_spec=versioned)
    ndarray_to_proto(np.array([[0.9, 0.05, 0.05]], np.float32), rest_response.outputs[c.PROBABILITIES_OUTPUT])
    expected = [message_built(field, spec, 7, 1.0, request, answer, logs[0].log_metadata.timestamp_secs)
                for _, field, request, answer in cases for _ in range(2)]
    expected.append(message_built("predict_log", spec, 7, 1.0, rest_request, rest_response,
                                  logs[0].log_metadata.timestamp_secs))
    for log, want in zip(logs, expected):
        log.log_metadata.timestamp_secs = want.log_metadata.timestamp_secs
        assert str(log) == str(want), log.WhichOneof("log_type")


def test_bad_logging_config_and_flags_are_refused_with_one_line(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(str(model_config([("iris", tmp_path, tmp_path / "log", 1.5)])))
    with pytest.raises(ValueError, match=r"model 'iris': logging_config sampling_rate 1.5 is not in \[0, 1\]"):
        config.read_model_server_config(str(path))
    path.write_text(str(model_config([("iris", tmp_path, "", 0.5)])))
    with pytest.raises(ValueError, match="model 'iris': logging_config has no log_collector_config filename_prefix"):
        config.read_model_server_config(str(path))
    with pytest.raises(SystemExit):
        config.parse_flags(["--request_log_file_max_bytes=10", "--request_log_max_total_bytes=5"])
    assert config.parse_flags(["--request_log_queue_size=3"]).request_log_queue_size == 3


# --- real servers ----------------------------------------------------------------------------------------------
def start(tmp_path: pathlib.Path, model: pathlib.Path, models, *flags: str) -> h.ServerProcess:
    """A server over a copy of the pushed model, serving `models` (name, prefix, rate) from its config file."""
    base = tmp_path / "models"
    h.copy_version(model, base, 1)
    config = tmp_path / "models.config"
    config.write_text(str(model_config([(name, base, prefix, rate) for name, prefix, rate in models])))
    return h.ServerProcess([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0", *flags],
                           tmp_path / "server.log").wait_ready()


def rest(server: h.ServerProcess, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(server.rest_url + path, data=data), timeout=60) as r:
        return r.status, r.read().decode()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_every_api_logged_sampling_honoured_sigterm_flushes(tmp_path, model):
    all_prefix, part_prefix = tmp_path / "logs" / "all", tmp_path / "logs" / "part"
    server = start(tmp_path, model, [("iris", all_prefix, 1.0), ("iris30", part_prefix, 0.3)])
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(predict_request(), timeout=30)
            classify = classification_pb2.ClassificationRequest()
            classify.model_spec.name, classify.model_spec.signature_name = "iris", c.CLASSIFY_SIGNATURE
            classify.input.example_list.examples.add().CopyFrom(example())
            stub.Classify(classify, timeout=30)
            multi = inference_pb2.MultiInferenceRequest()
            task = multi.tasks.add()
            task.model_spec.name, task.model_spec.signature_name = "iris", c.CLASSIFY_SIGNATURE
            task.method_name = "tensorflow/serving/classify"
            multi.input.example_list.examples.add().CopyFrom(example())
            stub.MultiInference(multi, timeout=30)
            assert rest(server, "/v1/models/iris:predict",
                        {"signature_name": c.RAW_SIGNATURE, "instances": [dict(zip(c.FEATURE_KEYS, SETOSA))]})[0] == 200
            assert rest(server, "/v1/models/iris:classify", {"examples": [dict(zip(c.FEATURE_KEYS, SETOSA))],
                                                              "signature_name": c.CLASSIFY_SIGNATURE})[0] == 200
            rest(server, "/v1/models/iris/metadata")  # not logged
            with futures.ThreadPoolExecutor(8) as pool:
                sampled = list(pool.map(lambda _: stub.Predict(predict_request("iris30"), timeout=30), range(600)))
                # Large requests in flight, SIGTERM: every one answered during the drain is in the log.
                big = predict_request()
                big.inputs[c.EXAMPLES_INPUT].CopyFrom(
                    tf.make_tensor_proto([example().SerializeToString()] * 1000, dtype=tf.string))
                pending = [pool.submit(stub.Predict, big, timeout=60) for _ in range(200)]
                pending[10].result()
                server.terminate()
                futures.wait(pending)
                assert server.proc.wait(60) == 0, server.log()
        answered = sum(1 for f in pending if f.exception() is None)
        assert len(sampled) == 600 and answered > 10
    finally:
        assert server.stop() == 0, server.log()
    logs = read_logs(all_prefix)
    kinds = [log.WhichOneof("log_type") for log in logs]
    assert kinds[:5] == ["predict_log", "classify_log", "multi_inference_log", "predict_log", "classify_log"]
    assert len(logs) == 5 + answered, (len(logs), answered)
    rest_predict = logs[3].predict_log
    assert rest_predict.request.inputs[c.FEATURE_KEYS[0]].float_val[0] == pytest.approx(SETOSA[0])
    assert rest_predict.response.outputs[c.PROBABILITIES_OUTPUT].float_val
    assert logs[0].log_metadata.model_spec.version.value == 1
    assert logs[0].predict_log.response.outputs[c.PROBABILITIES_OUTPUT].float_val
    part = len(read_logs(part_prefix))
    assert 600 * 0.3 - 5 * (600 * 0.3 * 0.7) ** 0.5 < part < 600 * 0.3 + 5 * (600 * 0.3 * 0.7) ** 0.5, part


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_full_queue_drops_records_not_requests_and_the_budget_holds(tmp_path, model):
    prefix = tmp_path / "logs" / "iris"
    server = start(tmp_path, model, [("iris", prefix, 1.0)], "--request_log_queue_size=1",
                   "--request_log_file_max_bytes=4000", "--request_log_max_total_bytes=12000")
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: stub.Predict(predict_request(), timeout=30), range(1500)))
        assert len(answers) == 1500  # every request answered (an error would have raised)
        page = rest(server, "/monitoring/prometheus/metrics")[1]
    finally:
        assert server.stop() == 0, server.log()
    assert metric(page, ":tensorflow:serving:request_count_total", model_name="iris", API="predict",
                  status="OK") == 1500
    dropped = metric(page, ":tensorflow:serving:request_log_count_total", model_name="iris", status="dropped")
    assert dropped > 0, page
    assert metric(page, ":tensorflow:serving:request_log_files_removed_total") > 0
    assert "removed the oldest file" in server.log()
    files = request_logs.log_files(str(prefix))
    assert len(files) > 1 and sum(os.path.getsize(p) for p in files) <= 12000


def written(server: h.ServerProcess) -> float:
    return metric(rest(server, "/monitoring/prometheus/metrics")[1], ":tensorflow:serving:request_log_count_total",
                  status="written")


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_sigkill_leaves_readable_logs(tmp_path, model):
    prefix = tmp_path / "logs" / "iris"
    server = start(tmp_path, model, [("iris", prefix, 1.0)])
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: stub.Predict(predict_request(), timeout=30), range(200)))
                deadline = time.monotonic() + 60
                while written(server) < 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert written(server) == 200
                pending = [pool.submit(stub.Predict, predict_request(), timeout=30) for _ in range(200)]
                server.proc.kill()  # SIGKILL while requests are in flight
                futures.wait(pending)
    finally:
        server.stop()
    files = request_logs.log_files(str(prefix))
    for path in files[:-1]:  # finished files: TF's own reader, record by record, without a CRC error
        assert all(prediction_log_pb2.PredictionLog.FromString(r).predict_log.request.inputs
                   for r in tf.data.TFRecordDataset(path).as_numpy_iterator())
    logs = read_logs(prefix)  # the open file too, up to a torn tail if the kill left one
    assert 200 <= len(logs) <= 400 and all(log.predict_log.response.outputs for log in logs)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_unparsable_request_bytes_answer_invalid_argument_and_are_not_logged(tmp_path, model):
    prefix = tmp_path / "logs" / "iris"
    server = start(tmp_path, model, [("iris", prefix, 1.0)])
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            for method, request_type in (("Predict", "PredictRequest"), ("Classify", "ClassificationRequest"),
                                         ("MultiInference", "MultiInferenceRequest"),
                                         ("GetModelMetadata", "GetModelMetadataRequest")):
                call = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}",
                                           request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
                with pytest.raises(grpc.RpcError) as caught:
                    call(b"\xff\xff\xff not a protobuf", timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, caught.value.details())
                assert caught.value.details() == ("Could not parse the request (18 bytes): not a valid "
                                                  f"tensorflow.serving.{request_type}")
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request(), timeout=30).outputs  # the server still answers
    finally:
        assert server.stop() == 0, server.log()
    assert len(read_logs(prefix)) == 1
