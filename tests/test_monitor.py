"""iris-tfx monitor (issue 13): reading logged requests (raw feature tensors and tf.Examples alike) without a server;
then a real server logging real traffic over the session run's pushed model, and the real command judging it
against that run's training statistics found through ML Metadata: Fisher's rows pass, each shift is flagged on
exactly the features that moved, an empty window is refused, and drift is found between two windows."""
import csv
import datetime
import json
import os
import pathlib
import shutil
import time
import urllib.request
from typing import Dict, List

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, prediction_log_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from components import constants as c
from components import request_logs
from pipeline import monitor
from serving import harness as h
from serving.client import IrisClient
from conftest import IRIS_CSV, iris_tfx

ROWS: List[Dict[str, float]] = [{k: float(row[k]) for k in c.FEATURE_KEYS}
                                for row in csv.DictReader(open(IRIS_CSV, encoding="utf-8"))]
SPECIES: List[str] = [row[c.LABEL_KEY] for row in csv.DictReader(open(IRIS_CSV, encoding="utf-8"))]
SHIFTS = {  # traffic name -> (rows, the measurements that moved)
    "x10": ([{k: v * 10 for k, v in r.items()} for r in ROWS], set(c.FEATURE_KEYS)),
    "setosa": ([r for r, s in zip(ROWS, SPECIES) if s == "setosa"], set(c.FEATURE_KEYS)),
    "widths": ([{k: v * 1.5 if k.endswith("width") else v for k, v in r.items()} for r in ROWS],
               {"sepal_width", "petal_width"}),
}


def example(row: Dict[str, float]) -> example_pb2.Example:
    ex = example_pb2.Example()
    for k, v in row.items():
        ex.features.feature[k].float_list.value.append(v)
    return ex


def column(batch, name: str) -> list:
    return [None if v is None else v[0] for v in batch.column(name).to_pylist()]


def read(*logs: prediction_log_pb2.PredictionLog):
    """The logs' examples as the batch TFDV gets, and their predicted species."""
    traffic = monitor.Traffic("iris", 1)
    for log in logs:
        traffic.add(0, monitor.parse_log(log))
    batch = traffic.record_batch()
    return batch, [None if s is None else s.decode() for s in column(batch, c.LABEL_KEY)]


# --- reading logs, no server ---------------------------------------------------------------------------------------
def test_predict_logs_with_raw_features_or_examples_read_alike():
    raw = prediction_log_pb2.PredictionLog()
    for k in c.FEATURE_KEYS:
        raw.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto([r[k] for r in ROWS[:2]], tf.float32))
    raw.predict_log.response.outputs[c.PREDICTED_OUTPUT].CopyFrom(tf.make_tensor_proto([b"setosa", b"virginica"]))
    batch, predicted = read(raw)
    assert column(batch, "sepal_length") == pytest.approx([5.1, 4.9]) and predicted == ["setosa", "virginica"]

    examples = prediction_log_pb2.PredictionLog()
    examples.predict_log.request.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(
        [example(r).SerializeToString() for r in ROWS[:2]] + [example({"sepal_width": 3.0}).SerializeToString()]))
    outputs = examples.predict_log.response.outputs  # no `species` output: the class of highest probability
    outputs[c.PROBABILITIES_OUTPUT].CopyFrom(tf.make_tensor_proto([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0, 0, 1.0]]))
    outputs[c.CLASSES_OUTPUT].CopyFrom(tf.make_tensor_proto([[s.encode() for s in c.CLASS_NAMES]] * 3))
    batch, predicted = read(examples)
    assert column(batch, "sepal_length") == pytest.approx([5.1, 4.9, None], nan_ok=True)
    assert column(batch, "sepal_width") == pytest.approx([3.5, 3.0, 3.0])
    assert predicted == ["versicolor", "setosa", "virginica"]
    batch, predicted = read(raw, examples, raw)  # one batch for TFDV, each example beside its prediction
    assert column(batch, "petal_length") == pytest.approx([1.4, 1.4, None, 1.4, 1.4, 1.4, 1.4], nan_ok=True)
    assert predicted == ["versicolor", "setosa", "virginica"] + ["setosa", "virginica"] * 2
    empty = prediction_log_pb2.PredictionLog()  # an empty batch: no examples, not a request that cannot be read
    for k in c.FEATURE_KEYS:
        empty.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto([], tf.float32))
    assert all(a.shape == (0, 1) for a in monitor.parse_log(empty).raw.values())


def test_examples_decoded_in_chunks_keep_their_order_and_predictions(monkeypatch):
    logs = []
    for i in range(0, 20, 5):  # alternately 2 rows as raw tensors and 3 as tf.Examples, each with its species
        raw = prediction_log_pb2.PredictionLog()
        for k in c.FEATURE_KEYS:
            raw.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto([r[k] for r in ROWS[i:i + 2]], tf.float32))
        raw.predict_log.response.outputs[c.PREDICTED_OUTPUT].CopyFrom(tf.make_tensor_proto(SPECIES[i:i + 2]))
        examples = prediction_log_pb2.PredictionLog()
        examples.predict_log.request.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(
            [example(r).SerializeToString() for r in ROWS[i + 2:i + 5]]))
        examples.predict_log.response.outputs[c.PREDICTED_OUTPUT].CopyFrom(tf.make_tensor_proto(SPECIES[i + 2:i + 5]))
        logs += [raw, examples]
    whole, predicted = read(*logs)
    monkeypatch.setattr(monitor, "DECODE_CHUNK", 2)
    chunked, chunked_predicted = read(*logs)
    assert chunked.num_rows == whole.num_rows == 20 and chunked_predicted == predicted
    for name in c.FEATURE_KEYS:  # the same rows beside the same predictions, however they were decoded
        assert sorted(zip(column(chunked, name), chunked_predicted)) == sorted(zip(column(whole, name), predicted))


def test_classify_and_multi_inference_logs_merge_the_context_and_take_the_best_class():
    log = prediction_log_pb2.PredictionLog()
    request = log.classify_log.request
    request.input.example_list_with_context.context.CopyFrom(example({"sepal_length": 6.0, "petal_length": 4.0}))
    request.input.example_list_with_context.examples.add().CopyFrom(example({"sepal_length": 5.0}))
    request.input.example_list_with_context.examples.add().CopyFrom(example({"sepal_width": 2.0}))
    for scores in ((0.2, 0.5, 0.3), (0.9, 0.05, 0.05)):
        classification = log.classify_log.response.result.classifications.add()
        for name, score in zip(c.CLASS_NAMES, scores):
            classification.classes.add(label=name, score=score)
    batch, predicted = read(log)
    assert column(batch, "sepal_length") == pytest.approx([5.0, 6.0])  # the example's own value wins
    assert column(batch, "petal_length") == pytest.approx([4.0, 4.0]) and predicted == ["versicolor", "setosa"]

    multi = prediction_log_pb2.PredictionLog()
    multi.multi_inference_log.request.input.example_list.examples.add().CopyFrom(example(ROWS[0]))
    result = multi.multi_inference_log.response.results.add()
    result.classification_result.CopyFrom(log.classify_log.response.result)
    batch, predicted = read(multi)
    assert column(batch, "petal_width") == pytest.approx([0.2]) and predicted[0] == "versicolor"


def raw_traffic(rows: List[Dict[str, float]], species: List[str]) -> monitor.Traffic:
    """Rows as one logged request of raw features, each with its (predicted) species."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    traffic = monitor.Traffic("iris", 1)
    traffic.add(0, monitor.Parsed([], {k: np.array([[r[k]] for r in rows], "float32") for k in c.FEATURE_KEYS},
                                  list(species)))
    return traffic


def test_the_anomalies_are_the_traffics_not_the_training_datas():
    import tensorflow_data_validation as tfdv  # pylint: disable=import-outside-toplevel
    from tensorflow_metadata.proto.v0 import anomalies_pb2  # pylint: disable=import-outside-toplevel
    schema = tfdv.load_schema_text(str(pathlib.Path(__file__).parents[1] / c.DEFAULT_SCHEMA))
    # Training data with a sepal length beyond the schema's bound: the run's own anomaly, not the traffic's.
    trained = [{**r, "sepal_length": 25.0} if i == 0 else r for i, r in enumerate(ROWS)]
    training = monitor.TrainingRun("run", "uri", monitor.statistics_of(raw_traffic(trained, SPECIES).record_batch()),
                                   schema)
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
    result = monitor.compare(raw_traffic(ROWS, SPECIES), training, None, "logs", None, now)
    assert dict(result.anomalies.anomaly_info) == {} and not result.anomalies.HasField("dataset_anomaly_info")
    result = monitor.compare(raw_traffic(SHIFTS["x10"][0], SPECIES), training, None, "logs", None, now)
    reasons = {name: {tfdv_reason.type for tfdv_reason in info.reason}
               for name, info in result.anomalies.anomaly_info.items()}
    assert sorted(reasons) == sorted(c.FEATURE_KEYS)  # the skew of each, and the traffic's own broken bound
    assert anomalies_pb2.AnomalyInfo.FLOAT_TYPE_BIG_FLOAT in reasons["sepal_length"]
    assert [f["out_of_domain"] for f in result.data["features"]] == [150, 150, 113, 100]  # x10 above max
    odd = [{**r, "sepal_length": v} for r, v in zip(ROWS, (float("nan"), float("inf"), 25.0, 20.0, 0.5, 0.49))]
    result = monitor.compare(raw_traffic(odd, SPECIES), training, None, "logs", None, now)
    assert [f["out_of_domain"] for f in result.data["features"]] == [4, 0, 0, 0]  # by the server's rules


def test_one_row_in_millimetres_among_fishers_is_counted_not_skew():
    """TFDV's JSD compares histograms over each side's own range: one 500 would put Fisher's rows in one bucket."""
    import tensorflow_data_validation as tfdv  # pylint: disable=import-outside-toplevel
    schema = tfdv.load_schema_text(str(pathlib.Path(__file__).parents[1] / c.DEFAULT_SCHEMA))
    training = monitor.TrainingRun("run", "uri", monitor.statistics_of(raw_traffic(ROWS, SPECIES).record_batch()),
                                   schema)
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
    mistyped = ROWS + [{"sepal_length": 500.0, "sepal_width": 300.0, "petal_length": 100.0, "petal_width": 100.0}]
    result = monitor.compare(raw_traffic(mistyped, SPECIES + SPECIES[:1]), training, None, "logs", None, now)
    features = result.data["features"]
    assert [f["verdict"] for f in features] == ["ok"] * 4, features
    assert [f["out_of_domain"] for f in features] == [1, 1, 1, 1]
    assert [f["outside_training_range"] for f in features] == [1, 1, 1, 1]
    assert set(result.anomalies.anomaly_info) == set(c.FEATURE_KEYS)  # the bounds broken, said by TFDV


def write_logs(prefix: pathlib.Path, host: str, opened: datetime.datetime, logs) -> None:
    """A log file as the server names and writes it."""
    path = request_logs.file_name(str(prefix), opened, 1, host=host, pid=1)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def logged(version: int, when: float, row: Dict[str, float]) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name, log.log_metadata.model_spec.version.value = "iris", version
    log.log_metadata.timestamp_secs = int(when)
    log.classify_log.request.input.example_list.examples.add().CopyFrom(example(row))
    return log


def test_traffic_is_grouped_by_version_and_window_and_times_parse(tmp_path):
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
    t = now.timestamp()
    write_logs(tmp_path / "iris", "a", now - datetime.timedelta(hours=3),
               [logged(1, t - 3 * 3600 + i, ROWS[i]) for i in range(3)])
    write_logs(tmp_path / "iris", "a", now - datetime.timedelta(minutes=50),
               [logged(1, t - 3000, ROWS[3]), logged(2, t - 60, ROWS[4]), logged(2, t - 30, ROWS[5])])
    start = monitor.parse_since("1h", now)
    assert start == now - datetime.timedelta(hours=1)
    traffic = monitor.read_traffic(str(tmp_path / "iris"), start)
    assert sorted(traffic) == [("iris", 1), ("iris", 2)]
    assert traffic[("iris", 1)].examples == 1 and traffic[("iris", 2)].records == 2
    assert column(traffic[("iris", 2)].record_batch(), "sepal_length") == pytest.approx([5.0, 5.4])
    assert monitor.read_traffic(str(tmp_path / "iris"), None, start)[("iris", 1)].examples == 3
    before, after = monitor.read_windows(str(tmp_path / "iris"), [now - datetime.timedelta(hours=3), start])
    assert sorted(before) == [("iris", 1)] and before[("iris", 1)].examples == 3  # one pass, split by time
    assert sorted(after) == [("iris", 1), ("iris", 2)] and after[("iris", 1)].examples == 1
    assert after[("iris", 2)].examples == 2
    assert monitor.parse_since("2026-11-30T11:30:00", now) == now - datetime.timedelta(minutes=30)
    assert monitor.parse_since("2026-11-30T12:30:00+01:00", now) == now - datetime.timedelta(minutes=30)
    for bad, words in (("yesterday", "neither an ISO 8601 time"), ("2027-01-01", "in the future")):
        with pytest.raises(monitor.MonitorError, match=f"--since '?{bad}'? .*{words}"):
            monitor.parse_since(bad, now)


def test_a_record_that_is_not_a_prediction_log_is_one_warning_and_skipped(tmp_path, caplog):
    now = datetime.datetime.now(datetime.timezone.utc)
    path = request_logs.file_name(str(tmp_path / "iris"), now, 1, host="a", pid=1)
    with tf.io.TFRecordWriter(path) as writer:  # a whole, CRC-checked record whose bytes are no PredictionLog
        writer.write(logged(1, now.timestamp(), ROWS[0]).SerializeToString())
        writer.write(b"\x0a\xff")
        writer.write(logged(1, now.timestamp(), ROWS[1]).SerializeToString())
    traffic = monitor.read_traffic(str(tmp_path / "iris"), None)
    assert traffic[("iris", 1)].examples == 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records
            if r.levelname == "WARNING" and r.name == monitor.__name__] == [
        f"{tmp_path / 'iris'}: skipped a record that is not a PredictionLog"]


def test_no_log_files_is_one_line_and_exit_2(tmp_path, capsys):
    from iris_tfx import main  # pylint: disable=import-outside-toplevel
    assert main.main(["monitor", "--logs", str(tmp_path / "none"), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"iris-tfx: error: --logs {tmp_path / 'none'}: no request log files") and \
        len(err.strip().splitlines()) == 1
    assert main.main(["monitor", "--logs", "x", "--since", "soon"]) == 2
    assert "--since 'soon' is neither" in capsys.readouterr().err


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("iris-tfx: error: ")]


def test_each_version_ml_metadata_has_no_push_of_is_one_line_and_exit_2(tmp_path, capsys):
    from ml_metadata.metadata_store import metadata_store  # pylint: disable=import-outside-toplevel
    from iris_tfx import main  # pylint: disable=import-outside-toplevel
    from pipeline.config import sqlite_metadata  # pylint: disable=import-outside-toplevel
    metadata_store.MetadataStore(sqlite_metadata(str(tmp_path / "metadata.sqlite")))  # a real, empty store
    now = time.time()
    write_logs(tmp_path / "iris", "a", datetime.datetime.now(datetime.timezone.utc),
               [logged(7, now, ROWS[0]), logged(8, now, ROWS[1])])
    assert main.main(["monitor", "--logs", str(tmp_path / "iris"), "--workdir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert [line.split(" answered")[0] for line in error_lines(captured.err)] == [
        "iris-tfx: error: model iris version 7", "iris-tfx: error: model iris version 8"], captured.err
    assert all(f"--workdir {tmp_path}'s ML Metadata records no push" in line for line in error_lines(captured.err))
    assert "2 not judged (exit 2)" in captured.out


def test_a_version_pushed_under_the_models_name_is_preferred_to_the_same_version_of_another():
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=import-outside-toplevel

    def pushed(destination: str, version: int, done: int = 1) -> metadata_store_pb2.Artifact:
        artifact = metadata_store_pb2.Artifact(uri=destination)
        artifact.custom_properties["pushed_destination"].string_value = destination
        artifact.custom_properties["pushed_version"].string_value = str(version)
        artifact.custom_properties["pushed"].int_value = done
        return artifact
    iris, canary = pushed("/m/iris/5", 5), pushed("/m/iris-canary/5/", 5)
    artifacts = [canary, iris, pushed("/m/iris/6", 6), pushed("/m/iris/5", 5, done=0)]
    assert monitor.pushes_of(artifacts, "iris", 5) == [iris]
    assert monitor.pushes_of(artifacts, "iris-canary", 5) == [canary]
    assert monitor.pushes_of(artifacts, "fisher", 5) == [canary, iris]  # served under another name: the version
    assert monitor.pushes_of(artifacts, "iris", 7) == []


def test_unreachable_metadata_is_one_line_and_exit_3_not_a_verdict(tmp_path):
    write_logs(tmp_path / "iris", "a", datetime.datetime.now(datetime.timezone.utc), [logged(1, time.time(), ROWS[0])])
    result = iris_tfx("monitor", "--logs", str(tmp_path / "iris"), "--metadata_grpc", "127.0.0.1:1",
                      "--workdir", str(tmp_path))
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = error_lines(result.stderr)  # among TensorFlow's start-up noise (the test environment's log level)
    assert "ML Metadata (the metadata service 127.0.0.1:1)" in line and "Traceback" not in result.stderr


def test_a_result_directory_appears_only_when_complete(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2  # pylint: disable=import-outside-toplevel
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
    data = {"run_id": "run", "serving_statistics": "serving_statistics.pb", "previous_statistics": None,
            "anomalies": "anomalies.pbtxt", "found": False}
    parent = tmp_path / c.MONITORING_DIR / "run"
    broken = monitor.Result({**data, "features": {"not JSON"}}, statistics_pb2.DatasetFeatureStatisticsList(), None,
                            anomalies_pb2.Anomalies())
    with pytest.raises(TypeError):  # fails after the protos were written: nothing is left, under any name
        monitor.write_result(broken, str(tmp_path), now)
    assert os.listdir(parent) == []
    good = monitor.Result(data, broken.serving, None, broken.anomalies)
    assert monitor.write_result(good, str(tmp_path), now) == str(parent / "20261130T120000Z")
    assert os.listdir(parent) == ["20261130T120000Z"]
    assert sorted(os.listdir(parent / "20261130T120000Z")) == ["anomalies.pbtxt", "result.json",
                                                               "serving_statistics.pb"]


def test_a_small_window_gets_its_verdict_and_a_line_saying_it_is_unreliable():
    def lines(examples: int) -> List[str]:
        data = {"model": {"name": "iris", "version": 1}, "run_id": "run", "examples": examples, "records": examples,
                "window": {"first": "a", "last": "b"},
                "features": [{"name": k, "verdict": "ok", "skew": {"distance": 0.1, "threshold": 0.3, "found": False},
                              "drift": None, "out_of_domain": 0} for k in c.FEATURE_KEYS],
                "species_mix": {"serving": {}, "training": {}, "distance": 0.05, "threshold": 0.25, "found": False}}
        return monitor.verdict_lines(monitor.Result(data, None, None, None))
    small = lines(monitor.MIN_RELIABLE_EXAMPLES - 1)
    assert [line.split()[:2] for line in small[1:5]] == [[k, "ok"] for k in c.FEATURE_KEYS]
    assert [line for line in small if "unreliable" in line] == [
        f"  (only {monitor.MIN_RELIABLE_EXAMPLES - 1} examples: below {monitor.MIN_RELIABLE_EXAMPLES} the distances "
        "are unreliable, random windows of the training data itself reach JSD ~0.2)"]
    assert not [line for line in lines(monitor.MIN_RELIABLE_EXAMPLES) if "unreliable" in line]


# --- a real server, real logs, the real command ---------------------------------------------------------------------
def rest_predict(server: h.ServerProcess, model: str, rows: List[Dict[str, float]]) -> None:
    body = json.dumps({"signature_name": c.RAW_SIGNATURE, "instances": rows}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{server.rest_url}/v1/models/{model}:predict", data=body),
                                timeout=60) as response:
        assert response.status == 200


def classify(server: h.ServerProcess, model: str, rows: List[Dict[str, float]]) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = model, c.CLASSIFY_SIGNATURE
    for row in rows:
        request.input.example_list.examples.add().CopyFrom(example(row))
    with grpc.insecure_channel(server.grpc_target) as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=60)


def grpc_predict(server: h.ServerProcess, model: str, rows: List[Dict[str, float]]) -> None:
    with IrisClient(server.grpc_target, model_name=model, timeout=60) as client:
        assert len(client.predict(rows)) == len(rows)


@pytest.fixture(scope="module")
def traffic(pipeline_run, pushed_model, tmp_path_factory):
    """A server over the session run's pushed version (its own version number, so ML Metadata knows it) logging
    each model name to its own prefix; Fisher's rows and each shift sent through different APIs; a workdir with a
    copy of the run's ML Metadata and report (the statistics it names stay where the run wrote them)."""
    root = tmp_path_factory.mktemp("monitor")
    h.copy_version(pushed_model, root / "models", int(pushed_model.name))
    config = model_server_config_pb2.ModelServerConfig()
    names = ["fisher", "drift", *SHIFTS]
    for name in names:
        m = config.model_config_list.config.add(name=name, base_path=str(root / "models"), model_platform="tensorflow")
        m.logging_config.log_collector_config.filename_prefix = str(root / "logs" / name)
        m.logging_config.sampling_config.sampling_rate = 1.0
    (root / "models.config").write_text(str(config))
    workdir = root / "work"
    (workdir / "reports").mkdir(parents=True)
    shutil.copy(pipeline_run.workdir / "metadata.sqlite", workdir)
    for report in (pipeline_run.workdir / "reports").glob("*.html"):
        shutil.copy(report, workdir / "reports")
    server = h.ServerProcess([f"--model_config_file={root / 'models.config'}"], root / "server.log").wait_ready()
    try:
        grpc_predict(server, "fisher", ROWS[:75])  # serialized tf.Examples
        rest_predict(server, "fisher", ROWS[75:])  # raw features
        rest_predict(server, "x10", SHIFTS["x10"][0])
        classify(server, "setosa", SHIFTS["setosa"][0])
        grpc_predict(server, "widths", SHIFTS["widths"][0])
        grpc_predict(server, "drift", ROWS)  # the earlier window: Fisher's rows ...
        time.sleep(2)
        since = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(1.1)
        grpc_predict(server, "drift", SHIFTS["widths"][0])  # ... then the widths +50%
    finally:
        assert server.stop() == 0, server.log()
    return {"root": root, "workdir": workdir, "since": since, "version": int(pushed_model.name)}


def run_monitor(traffic, name: str, *flags: str):
    """The installed command on one model's logs; its exit code, output and the result.json it wrote."""
    result = iris_tfx("monitor", "--logs", str(traffic["root"] / "logs" / name), "--workdir",
                      str(traffic["workdir"]), *flags)
    lines = [line for line in result.stdout.splitlines() if line.startswith("Result: ")]
    data = json.loads((pathlib.Path(lines[-1].split(" ", 1)[1]) / "result.json").read_text()) if lines else None
    return result, data


def flagged(data, kind: str = "skew") -> set:
    return {f["name"] for f in data["features"] if f[kind] and f[kind]["found"]}


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_fishers_rows_as_traffic_show_no_skew(traffic):
    result, data = run_monitor(traffic, "fisher")
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["model"] == {"name": "fisher", "version": traffic["version"]}
    assert (data["records"], data["examples"]) == (2, 150) and data["found"] is False
    assert [f["verdict"] for f in data["features"]] == ["ok"] * 4 and flagged(data) == set()
    assert all(f["drift"] is None and f["out_of_domain"] == 0 for f in data["features"])
    assert not data["species_mix"]["found"] and data["species_mix"]["distance"] < 0.1
    directory = pathlib.Path(result.stdout.split("Result: ")[1].split()[0])
    assert directory.parent.name == data["run_id"] and directory.parent.parent == traffic["workdir"] / "monitoring"
    assert os.path.isfile(data["training_statistics"]) and "Split-train" in data["training_statistics"]
    assert (directory / "serving_statistics.pb").is_file() and (directory / "anomalies.pbtxt").is_file()
    for name in c.FEATURE_KEYS:
        assert any(line.split()[:2] == [name, "ok"] for line in result.stdout.splitlines()), result.stdout
    assert f"Report: {traffic['workdir'] / 'reports' / data['run_id']}.html" in result.stdout
    assert "No skew or drift found." in result.stdout


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_each_shift_is_skew_on_exactly_the_features_that_moved(traffic, shift):
    result, data = run_monitor(traffic, shift)
    assert result.returncode == 1, result.stdout + result.stderr
    assert flagged(data) == SHIFTS[shift][1], result.stdout
    assert data["examples"] == len(SHIFTS[shift][0]) and data["found"] is True
    for f in data["features"]:
        assert f["verdict"] == ("skew" if f["name"] in SHIFTS[shift][1] else "ok")
    if shift == "x10":  # 10x sepal lengths break the schema's bound (20 cm): counted, and in TFDV's anomalies
        assert data["features"][0]["out_of_domain"] == 150
    # The predicted mix moves with only setosa sent (all setosa) and x10 (a third setosa, the rest virginica); widths
    # +50% move some versicolor to virginica, within the threshold (measured 0.054 against 0.25).
    assert data["species_mix"]["found"] == (shift != "widths"), data["species_mix"]
    if shift == "setosa":
        assert data["species_mix"]["serving"] == {"setosa": 1.0}
    assert "Skew or drift found (exit 1)." in result.stdout


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_window_with_no_traffic_is_exit_2_and_drift_needs_two_windows(traffic):
    result, _ = run_monitor(traffic, "fisher", "--since", traffic["since"].isoformat())
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("iris-tfx: error: ")]
    assert errors == [f"iris-tfx: error: --logs {traffic['root'] / 'logs' / 'fisher'}: no logged examples since "
                      f"{traffic['since']:%Y-%m-%dT%H:%M:%SZ} (files: 1)"], result.stderr

    result, data = run_monitor(traffic, "drift", "--since", traffic["since"].isoformat())
    assert result.returncode == 1, result.stdout + result.stderr
    assert data["examples"] == 150 and data["previous_statistics"] == "previous_statistics.pb"
    assert flagged(data, "drift") == {"sepal_width", "petal_width"} == flagged(data, "skew"), result.stdout
    assert data["since"] == traffic["since"].strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_version_without_a_push_does_not_stop_the_others_being_judged(traffic, tmp_path):
    prefix = tmp_path / "fisher"
    for path in request_logs.log_files(str(traffic["root"] / "logs" / "fisher")):
        shutil.copy(path, tmp_path)
    unknown = logged(1, time.time(), ROWS[0])
    unknown.log_metadata.model_spec.name = "fisher"
    write_logs(prefix, "b", datetime.datetime.now(datetime.timezone.utc), [unknown])  # version 1: pushed by no run
    result = iris_tfx("monitor", "--logs", str(prefix), "--workdir", str(traffic["workdir"]))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("iris-tfx: error: model fisher version 1 answered the logged requests, but --workdir ")
    assert f"Model fisher version {traffic['version']} (run " in result.stdout and "Result: " in result.stdout
    assert "1 not judged (exit 2)" in result.stdout


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_unreadable_statistics_or_results_are_exit_3_with_one_line(traffic, tmp_path):
    from ml_metadata.metadata_store import metadata_store  # pylint: disable=import-outside-toplevel
    from pipeline.config import sqlite_metadata  # pylint: disable=import-outside-toplevel
    logs = str(traffic["root"] / "logs" / "fisher")
    gone = tmp_path / "gone"  # the statistics ML Metadata names are not there (a volume not mounted)
    shutil.copy(traffic["workdir"] / "metadata.sqlite", tmp_path)
    store = metadata_store.MetadataStore(sqlite_metadata(str(tmp_path / "metadata.sqlite")))
    moved = store.get_artifacts_by_type("ExampleStatistics")
    for artifact in moved:
        artifact.uri = str(gone / str(artifact.id))
    store.put_artifacts(moved)
    del store
    result = iris_tfx("monitor", "--logs", logs, "--workdir", str(tmp_path))
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = error_lines(result.stderr)
    assert "cannot read the training statistics" in line and str(gone) in line and "Traceback" not in result.stderr

    (tmp_path / "monitoring").unlink(missing_ok=True)
    work = tmp_path / "work"  # an internal error: the results cannot be written (a file where their directory goes)
    work.mkdir()
    shutil.copy(traffic["workdir"] / "metadata.sqlite", work)
    (work / c.MONITORING_DIR).write_text("")
    result = iris_tfx("monitor", "--logs", logs, "--workdir", str(work))
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("iris-tfx: error: monitor failed: ") and "Traceback" not in result.stderr
