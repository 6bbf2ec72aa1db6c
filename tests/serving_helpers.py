"""Test helpers for the serving tests: a stand-in SavedModel following the Trainer's serving contract."""
import os
import pathlib

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
