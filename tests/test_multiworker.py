"""Two real training workers (MultiWorkerMirroredStrategy over loopback, each with its own TF_CONFIG) run the
standalone trainer on the pipeline's Transform output: worker 0 alone writes a model that meets the floor."""
import glob
import json
import os
import subprocess
import sys

import portpicker
import pytest
import tensorflow as tf

from components import constants
from conftest import REPO

pytestmark = pytest.mark.e2e  # every test here starts iris-tfx or training processes


def _eval_examples(workdir):
    files = glob.glob(str(workdir / "pipeline_root" / "CsvExampleGen" / "examples" / "*" / "Split-eval" / "*.gz"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = [tf.train.Example.FromString(r).features.feature[constants.LABEL_KEY].bytes_list.value[0].decode()
              for r in records]
    return records, labels


def test_two_workers_train_to_the_accuracy_floor(pipeline_run, tmp_path):
    transform = pipeline_run.workdir / "pipeline_root" / "Transform"
    (examples,) = glob.glob(str(transform / "transformed_examples" / "*"))
    (graph,) = glob.glob(str(transform / "transform_graph" / "*"))
    cluster = [f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(2)]
    output = tmp_path / "model"
    workers = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "components.train_standalone", "--transformed-examples", examples,
             "--transform-graph", graph, "--output", str(output)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, err[-3000:]
    assert "model written to" in results[0][0]
    assert "the chief (worker 0) writes the model" in results[1][0]
    # Worker 1 wrote only to a temporary dir, and cleaned it up.
    assert not list((tmp_path / "tmp1").iterdir())
    records, labels = _eval_examples(pipeline_run.workdir)
    serve = tf.saved_model.load(str(output)).signatures[constants.SERVING_SIGNATURE]
    predicted = [s.decode() for s in serve(**{constants.EXAMPLES_INPUT: tf.constant(records)})[
        constants.PREDICTED_OUTPUT].numpy()]
    accuracy = sum(p == l for p, l in zip(predicted, labels)) / len(labels)
    assert accuracy >= 0.9, (accuracy, predicted, labels)
