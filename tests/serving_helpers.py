"""Test helpers for the serving tests: server processes on loopback, version copies, and a stand-in SavedModel
following the Trainer's serving contract (used until tests/conftest.py provides `pushed_model`)."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from components import constants as c  # noqa: E402


def build_contract_model(export_dir: str) -> pathlib.Path:
    """Export a tiny SavedModel with the same signatures, inputs and outputs as the Trainer's export."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    class_names = tf.constant(list(c.CLASS_NAMES))
    weights = tf.constant([[0.5, -0.2, -0.3], [1.0, 0.0, -1.0], [-2.0, 0.5, 1.5], [-2.0, 0.3, 2.0]])
    bias = tf.constant([2.0, 1.5, -3.5])
    spec = {k: tf.io.FixedLenFeature([], tf.float32) for k in c.FEATURE_KEYS}

    def outputs(features):
        x = tf.stack([tf.cast(features[k], tf.float32) for k in c.FEATURE_KEYS], axis=1)
        probs = tf.nn.softmax(tf.matmul(x, weights) + bias)
        classes = tf.tile(tf.expand_dims(class_names, 0), [tf.shape(probs)[0], 1])
        species = tf.gather(class_names, tf.argmax(probs, axis=1))
        return {c.PROBABILITIES_OUTPUT: probs, c.CLASSES_OUTPUT: classes, c.PREDICTED_OUTPUT: species}

    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=c.EXAMPLES_INPUT)])
    def serve(examples):
        return outputs(tf.io.parse_example(examples, spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=c.CLASSIFY_INPUT)])
    def classify(inputs):
        out = outputs(tf.io.parse_example(inputs, spec))
        return {c.CLASSES_OUTPUT: out[c.CLASSES_OUTPUT], c.SCORES_OUTPUT: out[c.PROBABILITIES_OUTPUT]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=k) for k in c.FEATURE_KEYS])
    def raw(sepal_length, sepal_width, petal_length, petal_width):
        return outputs(dict(zip(c.FEATURE_KEYS, (sepal_length, sepal_width, petal_length, petal_width))))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=c.EXAMPLES_INPUT)])
    def transform(examples):
        parsed = tf.io.parse_example(examples, spec)
        return {c.transformed_name(k): v for k, v in parsed.items()}

    module.serve, module.classify, module.raw, module.transform = serve, classify, raw, transform
    tf.saved_model.save(module, export_dir, signatures={
        c.SERVING_SIGNATURE: serve, c.CLASSIFY_SIGNATURE: classify,
        c.RAW_SIGNATURE: raw, c.TRANSFORM_SIGNATURE: transform})
    pb_path = os.path.join(export_dir, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved.ParseFromString(f.read())
    saved.meta_graphs[0].signature_def[c.CLASSIFY_SIGNATURE].method_name = "tensorflow/serving/classify"
    with open(pb_path, "wb") as f:
        f.write(saved.SerializeToString())
    return pathlib.Path(export_dir)


if __name__ == "__main__":
    import sys
    print(build_contract_model(sys.argv[1]))


# --- running real server processes on loopback -----------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_version(model_dir: pathlib.Path, base: pathlib.Path, version: int, like_tfx: bool = False) -> pathlib.Path:
    """Copy a pushed SavedModel to base/<version>: atomically (copy aside, then rename), or like_tfx as TFX's
    Pusher does it in place (everything but saved_model.pb first, saved_model.pb last)."""
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(version)
    if like_tfx:
        shutil.copytree(model_dir, target, ignore=lambda d, names: [n for n in names if n == "saved_model.pb"])
        time.sleep(1.5)  # let the server poll the incomplete directory at least once
        shutil.copy2(model_dir / "saved_model.pb", target / "saved_model.pb")
        return target
    tmp = base / f".tmp-{version}"
    shutil.copytree(model_dir, tmp)
    os.rename(tmp, target)
    return target


class ServerProcess:
    """`python -m serving.server` on 127.0.0.1 with free ports; stop() sends SIGTERM and waits."""

    def __init__(self, args: List[str], log_path: pathlib.Path):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--host=127.0.0.1", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", *args], cwd=str(REPO), env=env,
            stdout=self._log, stderr=subprocess.STDOUT)
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> "ServerProcess":
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> Optional[int]:
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code
