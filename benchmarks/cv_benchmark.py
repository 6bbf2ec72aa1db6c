"""Model quality as the tutorial reports it: 10-fold cross-validation, shuffled and seeded, repeated.

Each fold runs the pipeline's own preprocessing_fn through TF Transform (analysed on the fold's
training rows only) and trains with the Trainer's own code (components.trainer.train), then
prints the mean and standard deviation of test accuracy over all folds.
Usage: python benchmarks/cv_benchmark.py [--repeats 10] [--folds 10] [--processes 2]
"""
import argparse
import csv
import dataclasses
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components import constants  # noqa: E402
from components.hyperparameters import Hyperparameters  # noqa: E402

Rows = List[Dict[str, np.ndarray]]


def load_rows(path: str) -> Rows:
    with open(path, newline="") as f:
        return [{k: np.array([float(r[k])], np.float32) for k in constants.FEATURE_KEYS}
                | {constants.LABEL_KEY: np.array([r[constants.LABEL_KEY].encode()])}
                for r in csv.DictReader(f)]


def folds(n: int, k: int, repeats: int, seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: `repeats` shuffles, each cut into k folds (like sklearn's RepeatedKFold)."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(repeats):
        parts = np.array_split(rng.permutation(n), k)
        result += [(np.concatenate(parts[:i] + parts[i + 1:]), parts[i]) for i in range(k)]
    return result


def evaluate_fold(args) -> float:
    rows, train_idx, test_idx, schema_path, overrides = args
    import tensorflow as tf
    import tensorflow_data_validation as tfdv
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
    from components import trainer, transform

    schema = tfdv.load_schema_text(schema_path)
    metadata = dataset_metadata.DatasetMetadata(schema)
    with tempfile.TemporaryDirectory() as tmp, tft_beam.Context(temp_dir=tmp, force_tf_compat_v1=False):
        (train_data, _), transform_fn = (
            ([rows[i] for i in train_idx], metadata) | tft_beam.AnalyzeAndTransformDataset(
                transform.preprocessing_fn, output_record_batches=False))
        test_data, _ = (([rows[i] for i in test_idx], metadata), transform_fn) | tft_beam.TransformDataset(
            output_record_batches=False)
        _, transformed_metadata = transform_fn
    label = constants.transformed_name(constants.LABEL_KEY)

    def columns(data):
        return ({k: np.array([d[k] for d in data], np.float32) for k in data[0] if k != label},
                np.array([d[label] for d in data], np.int64))

    x, y = columns(train_data)
    hparams = Hyperparameters.from_custom_config(overrides)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=hparams.seed)
                .repeat().batch(ctx.get_per_replica_batch_size(hparams.batch_size_per_replica)))

    model = trainer.train(tf.distribute.get_strategy(), dataset_fn, len(y), len(constants.CLASS_NAMES), hparams)
    tx, ty = columns(test_data)
    return float(np.mean(np.argmax(model.predict(tx, verbose=0), axis=1) == ty))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/iris.csv")
    parser.add_argument("--schema", default="schema/schema.pbtxt")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a Trainer hyperparameter, e.g. --set epochs=200")
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args()
    rows = load_rows(args.data)
    defaults = Hyperparameters()
    overrides = {name: type(getattr(defaults, name))(value)
                 for name, value in (item.split("=", 1) for item in args.set)}
    print(f"hyperparameters: {dataclasses.replace(defaults, **overrides)}")
    jobs = [(rows, tr, te, args.schema, overrides) for tr, te in folds(len(rows), args.folds, args.repeats, args.seed)]
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(args.processes, maxtasksperchild=10) as pool:
        scores = pool.map(evaluate_fold, jobs, chunksize=1)
    print(f"{args.repeats} x {args.folds}-fold cross-validation on {len(rows)} rows "
          f"({len(scores)} models, {time.monotonic() - started:.0f}s)")
    print(f"accuracy: {100 * np.mean(scores):.2f}% ({100 * np.std(scores):.2f}%)  "
          f"[tutorial: 97.33% (4.42%); linear SVM / LDA about 98%]")


if __name__ == "__main__":
    main()
