"""The gRPC client without TensorFlow: its messages are TF Serving's own (byte for byte), its tensor decoding agrees
with tf.make_ndarray, and `iris-tfx predict` answers from a real server with TensorFlow never imported."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

from components import constants as c
from serving import harness as h
from serving.client import IrisClient, ServingClientError, tensor_to_array, tf_serving_api

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [7.7, 3.0, 6.1, 2.3]


def as_client_tensor(proto: tensor_pb2.TensorProto):
    """A TensorProto made by TensorFlow, parsed by the client's own class (as it would arrive over the wire)."""
    return tf_serving_api().message("tensorflow.TensorProto").FromString(proto.SerializeToString())


def test_predict_request_is_tf_servings_own():
    expected = predict_pb2.PredictRequest()
    expected.model_spec.name = c.MODEL_NAME
    expected.model_spec.signature_name = c.SERVING_SIGNATURE
    expected.model_spec.version_label = "stable"
    examples = [tf.train.Example(features=tf.train.Features(feature={
        key: tf.train.Feature(float_list=tf.train.FloatList(value=[value])) for key, value in zip(c.FEATURE_KEYS, row)
    })) for row in [SETOSA, VIRGINICA]]
    expected.inputs[c.EXAMPLES_INPUT].CopyFrom(
        tf.make_tensor_proto([e.SerializeToString() for e in examples], dtype=tf.string))

    with IrisClient("127.0.0.1:1", label="stable") as client:  # no call is made: a channel connects lazily
        (ours,) = client.predict_requests([SETOSA, dict(zip(c.FEATURE_KEYS, VIRGINICA))])
    received = predict_pb2.PredictRequest.FromString(ours.SerializeToString())  # as TF Serving reads it
    # A tf.Example's feature map has no fixed byte order: compare the examples as messages, then the rest.
    assert [tf.train.Example.FromString(e) for e in received.inputs[c.EXAMPLES_INPUT].string_val] == examples
    for request in (received, expected):
        request.inputs[c.EXAMPLES_INPUT].ClearField("string_val")
    assert received == expected


@pytest.mark.parametrize("proto", [
    tf.make_tensor_proto(np.array([[0.25, 0.5, 0.25], [0.1, 0.2, 0.7]], np.float32)),  # tensor_content
    tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum, float_val=[0.25, 0.5, 0.25, 0.1, 0.2, 0.7],
                           tensor_shape=tf.TensorShape([2, 3]).as_proto()),  # TF Serving's typed fields
    tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum, float_val=[0.5, 0.25],
                           tensor_shape=tf.TensorShape([2, 3]).as_proto()),  # the last value repeated
    tf.make_tensor_proto(np.array([0.125, 2.5], np.float64)),
    tf.make_tensor_proto([[b"setosa", b"versicolor"], [b"virginica", b"setosa"]], dtype=tf.string),
    tf.make_tensor_proto([b"setosa"], dtype=tf.string),
], ids=["content", "typed", "shorthand", "double", "strings", "one-string"])
def test_tensors_decode_like_make_ndarray(proto):
    expected = tf.make_ndarray(proto)
    decoded = tensor_to_array(as_client_tensor(proto))
    assert decoded.shape == expected.shape and decoded.tolist() == expected.tolist()


def test_unexpected_tensor_dtype_is_one_clear_error():
    with pytest.raises(ServingClientError, match="DT_INT32"):
        tensor_to_array(as_client_tensor(tf.make_tensor_proto([1, 2], dtype=tf.int32)))


# --- against a real server ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(pushed_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    h.copy_version(pushed_model, root / "iris", 1)
    proc = h.ServerProcess([f"--model_base_path={root / 'iris'}"], root / "server.log").wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def light_env() -> dict:
    """The user's environment: no TF log-level setting inherited from the test process."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_USE_LEGACY_KERAS")}
    return dict(env, PYTHONPATH=str(h.REPO))


@pytest.mark.e2e
def test_python_client_never_imports_tensorflow(server):
    code = textwrap.dedent(f"""
        import sys
        from serving.client import IrisClient
        with IrisClient({server.grpc_target!r}) as client:
            species = [p.species for p in client.predict([{SETOSA!r}, {VIRGINICA!r}])]
            state = client.status().model_version_status[0].state
            signatures = client.metadata().metadata["signature_def"].type_url
        print(species, state, signatures)
        heavy = sorted(m for m in ("tensorflow", "tensorflow_serving", "tfx", "apache_beam") if m in sys.modules)
        assert not heavy, heavy
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=light_env(),
                            cwd=str(h.REPO), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("] ")[0] == "['setosa', 'virginica'", result.stdout
    assert "SignatureDefMap" in result.stdout and result.stderr == ""


@pytest.mark.e2e
def test_iris_tfx_predict_is_quiet_and_light(server):
    command = h.iris_tfx_command() or pytest.fail("the iris-tfx console command is not installed")
    # -X importtime lists every module the command imports, on stderr.
    result = subprocess.run([sys.executable, "-X", "importtime", *command, "predict", "--server", server.grpc_target,
                             *map(str, SETOSA)], capture_output=True, text=True, env=light_env(), cwd=str(h.REPO),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split("\t")[:2] == ["1", "setosa"], result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    assert "numpy" in imported  # the listing is real
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "tfx", "apache_beam")]
    noise = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert noise == [], noise
