"""`iris-tfx models`, `models pin` and `models label` against a real model server polling the config file they
write: two pushed versions, Predict requests without pause while versions are pinned, labelled and rolled back."""
import pathlib
import re
import threading
from typing import Callable, Set

import pytest

import grpc
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2
from google.protobuf import text_format

from components import constants
from conftest import iris_tfx, wait_for
from iris_tfx import models as models_command
from serving.harness import ServerProcess, copy_version

pytestmark = pytest.mark.timeout(900)
SETOSA = dict(zip(constants.FEATURE_KEYS, (5.1, 3.5, 1.4, 0.2)))
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


@pytest.fixture(scope="module")
def versions(pushed_model, tmp_path_factory):
    """A serving dir holding the pipeline's pushed version (old) and a copy of it as the next version (new)."""
    root = tmp_path_factory.mktemp("models")
    base = root / "iris"
    old = int(pushed_model.name)
    copy_version(pushed_model, base, old)
    copy_version(pushed_model, base, old + 1)
    return root, base, old, old + 1


def models(*args: str, config: pathlib.Path, base: pathlib.Path):
    """`iris-tfx models ...` on the test's config file and serving dir."""
    return iris_tfx("models", *args, "--config", str(config), "--serving-dir", str(base), timeout=600)


def predict_request(label: str = "") -> predict_pb2.PredictRequest:
    example = example_pb2.Example()
    for key, value in SETOSA.items():
        example.features.feature[key].float_list.value.append(value)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = constants.MODEL_NAME
    if label:  # a oneof: even "" would ask for a label
        request.model_spec.version_label = label
    request.inputs[constants.EXAMPLES_INPUT].CopyFrom(
        tf.make_tensor_proto([example.SerializeToString()], dtype=tf.string))
    return request


@pytest.mark.e2e
def test_pin_and_label_refuse_versions_that_cannot_be_served(versions):
    root, base, old, new = versions
    config = root / "refused.config"
    result = models("pin", str(new + 1), config=config, base=base)
    assert result.returncode == 2 and not config.exists()
    assert result.stderr.strip() == (f"iris-tfx: error: version {new + 1} is not in {base} (versions there: {old}, "
                                     f"{new}); {config} is unchanged")
    assert models("pin", str(new), config=config, base=base).returncode == 0
    before = config.read_text()
    for args, error in (
            (("pin", str(old), "7"), f"version 7 is not in {base}"),
            (("label", "stable", str(old)), f"version {old} is not served under {config}'s version policy (it serves "
                                            f"{new}): a label can only name a loaded version; first `iris-tfx models "
                                            f"pin {old} {new} --config {config}`")):
        result = models(*args, config=config, base=base)
        assert result.returncode == 2, result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"iris-tfx: error: {error}")
        assert config.read_text() == before


@pytest.mark.e2e
def test_pin_label_and_rollback_on_a_running_server_without_a_failed_request(pipeline_run, versions):
    root, base, old, new = versions
    config = root / "models.config"
    assert models("pin", str(new), config=config, base=base).returncode == 0
    parsed = text_format.Parse(config.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = parsed.model_config_list.config
    assert (model.name, model.base_path, list(model.model_version_policy.specific.versions)) == (
        constants.MODEL_NAME, str(base), [new])
    server = ServerProcess([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"],
                           root / "server.log").wait_ready()
    stop, failures, seen, lock = threading.Event(), [], [], threading.Lock()

    def load() -> None:
        """Unlabelled Predicts without pause; every answer's version, every failure."""
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    response = stub.Predict(predict_request(), timeout=30)
                    ok = response.outputs[constants.PREDICTED_OUTPUT].string_val == [b"setosa"]
                    with lock:
                        (seen.append(response.model_spec.version.value) if ok else failures.append(str(response)))
                except grpc.RpcError as err:
                    with lock:
                        failures.append(f"{err.code()}: {err.details()}")

    def serving_now(version: int) -> Callable[[], bool]:
        """True once the last answers all came from `version`."""
        def check() -> bool:
            with lock:
                return len(seen) >= 5 and set(seen[-5:]) == {version}
        return check

    channel = grpc.insecure_channel(server.grpc_target)
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def available() -> Set[int]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = constants.MODEL_NAME
        return {s.version for s in status.GetModelStatus(request, timeout=10).model_version_status
                if s.state == AVAILABLE}

    def labelled(label: str) -> int:
        try:
            return predict.Predict(predict_request(label), timeout=10).model_spec.version.value
        except grpc.RpcError:
            return -1  # the label is not set yet

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(serving_now(new), "traffic on the pinned newer version", failures=failures)
        # Rollback: pin the older version; the server loads it, then unloads the newer one.
        assert models("pin", str(old), config=config, base=base).returncode == 0
        wait_for(lambda: available() == {old} and serving_now(old)(), "the switch to the older version")
        # Both served, `stable` on the older: labelled requests reach it, unlabelled ones the newest.
        assert models("pin", str(old), str(new), config=config, base=base).returncode == 0
        wait_for(lambda: available() == {old, new} and serving_now(new)(), "both versions served")
        result = models("label", "stable", str(old), config=config, base=base)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: labelled("stable") == old, "version_label stable to reach the older version")
        assert serving_now(new)()
        # `iris-tfx models` shows each version's run, the config's pins and label, and what the server serves.
        listing = iris_tfx("models", "--workdir", str(pipeline_run.workdir), "--serving-dir", str(base),
                           "--config", str(config), "--server", server.grpc_target, timeout=600)
        assert listing.returncode == 0, listing.stderr
        rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:]}
        assert rows[str(old)].split()[1] in pipeline_run.result.stdout  # the run id that pushed it
        assert rows[str(old)].endswith("pinned, label stable  AVAILABLE"), listing.stdout
        assert rows[str(new)].split()[1:5] == ["-", "-", "-", "-"] and re.search(r" pinned +AVAILABLE$", rows[str(new)])
        # Roll back again: only the older version, its label kept.
        assert models("pin", str(old), config=config, base=base).returncode == 0
        wait_for(lambda: available() == {old} and serving_now(old)(), "the rollback to the older version")
        assert labelled("stable") == old
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        channel.close()
        code = server.stop()
    assert failures == [], failures[:5]
    assert {old, new} <= set(seen) and len(seen) > 50
    assert code == 0, server.log()


def test_config_file_is_replaced_whole(tmp_path):
    """The server never reads a half-written file: the new text lands by rename, no temp file is left."""
    path = tmp_path / "models.config"
    path.write_text("old")
    inode = path.stat().st_ino
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="iris", base_path="/models/iris").version_labels["stable"] = 3
    models_command.write_config(str(path), config)
    assert text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig()) == config
    assert path.stat().st_ino != inode and sorted(p.name for p in tmp_path.iterdir()) == ["models.config"]
