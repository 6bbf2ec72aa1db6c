"""Synthetic Iris rows for users and tests: class-conditional Gaussians fitted to Fisher's data, streamed to CSV.

iris-tfx data synth --rows N [--seed S] [--out PATH]    (python -m pipeline.synth ... does the same)
Each species gets the mean and full covariance of its 50 rows in data/iris.csv; draws are rounded to 0.1 cm,
draws outside the schema's float_domain bounds are drawn again (not clipped), classes are balanced (row i
has species i % 3 before each chunk is shuffled), the output depends only on N and the seed, and rows are
written chunk by chunk (memory does not grow with N). A path ending in .gz is gzip-compressed.
Also here: qda_accuracy, the accuracy of a quadratic discriminant (the Bayes rule for such data) to compare
a trained model with. Imports numpy, pyarrow and tensorflow_metadata only (no TensorFlow).
"""
import argparse
import csv
import dataclasses
import os
import sys
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from components import constants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FISHER_CSV = os.path.join(REPO, "data", "iris.csv")
SCHEMA = os.path.join(REPO, "schema", "schema.pbtxt")
CHUNK_ROWS = 100_000


@dataclasses.dataclass(frozen=True)
class ClassGaussians:
    """Per-species mean [k, d] and covariance [k, d, d] of the features, with per-feature bounds [d]."""
    means: np.ndarray
    covariances: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def read_csv(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Features [n, 4] (in constants.FEATURE_KEYS order) and species ids [n] (constants.CLASS_NAMES order)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[k]) for k in constants.FEATURE_KEYS] for r in rows])
    y = np.array([constants.CLASS_NAMES.index(r[constants.LABEL_KEY]) for r in rows])
    return x, y


def schema_bounds(schema_path: str = SCHEMA) -> Tuple[np.ndarray, np.ndarray]:
    """Each feature's float_domain [min, max] from the curated schema (the bounds ExampleValidator enforces)."""
    from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
    from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=g-import-not-at-top
    with open(schema_path) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    domains = {feature.name: feature.float_domain for feature in schema.feature}
    return (np.array([domains[k].min for k in constants.FEATURE_KEYS]),
            np.array([domains[k].max for k in constants.FEATURE_KEYS]))


def fit(data_path: str = FISHER_CSV, schema_path: str = SCHEMA) -> ClassGaussians:
    """Class-conditional Gaussians fitted to a CSV (Fisher's by default), bounded by the schema."""
    x, y = read_csv(data_path)
    classes = range(len(constants.CLASS_NAMES))
    lower, upper = schema_bounds(schema_path)
    return ClassGaussians(means=np.stack([x[y == c].mean(axis=0) for c in classes]),
                          covariances=np.stack([np.cov(x[y == c], rowvar=False) for c in classes]),
                          lower=lower, upper=upper)


def sample(model: ClassGaussians, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One feature row per label, rounded to 0.1 cm; rows outside the bounds are drawn again until none is."""
    x = np.empty((len(labels), len(model.lower)))
    todo = np.arange(len(labels))
    while len(todo):
        for c in np.unique(labels[todo]):
            rows = todo[labels[todo] == c]
            x[rows] = rng.multivariate_normal(model.means[c], model.covariances[c], size=len(rows))
        x[todo] = np.round(x[todo], 1)
        inside = np.all((x[todo] >= model.lower) & (x[todo] <= model.upper), axis=1)
        todo = todo[~inside]
    return x


def chunks(model: ClassGaussians, rows: int, seed: int, chunk_rows: int = CHUNK_ROWS
           ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(features, species ids) in chunks of at most chunk_rows: balanced, deterministic for (rows, seed)."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk_rows):
        labels = rng.permutation(np.arange(start, min(rows, start + chunk_rows)) % len(model.means))
        yield sample(model, labels, rng), labels


def write_csv(batches: Iterator[Tuple[np.ndarray, np.ndarray]], path: str) -> int:
    """Streams (features, ids) chunks to a CSV (gzip'd if path ends with .gz); returns the rows written."""
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
    names = pa.array(constants.CLASS_NAMES)
    written = 0
    with pa.output_stream(path, compression="gzip" if path.endswith(".gz") else None) as sink:
        sink.write((",".join(constants.CSV_COLUMNS) + "\n").encode())
        for x, labels in batches:
            # Formatted from integer tenths, not floats: always one decimal ("4.0", never "4" or "4.000001"),
            # so CsvExampleGen infers FLOAT columns even for a handful of rows; pyarrow 10's CSV writer would
            # quote every string, hence the joins.
            tenths = np.rint(x * 10).astype(np.int64)
            columns = [pc.binary_join_element_wise(pa.array(t // 10).cast(pa.string()),
                                                   pa.array(t % 10).cast(pa.string()), ".") for t in tenths.T]
            lines = pc.binary_join_element_wise(*columns, names.take(pa.array(labels)), ",")
            text = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
            sink.write(text[0].as_buffer())
            sink.write(b"\n")
            written += len(labels)
    return written


def qda_accuracy(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray) -> float:
    """Eval accuracy of quadratic discriminant analysis (class Gaussians and priors fitted on the train split)."""
    classes = np.unique(train_y)
    scores = []
    for c in classes:
        xc = train_x[train_y == c]
        mean, cov = xc.mean(axis=0), np.cov(xc, rowvar=False)
        _, logdet = np.linalg.slogdet(cov)
        centred = eval_x - mean
        mahalanobis = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(cov), centred)
        scores.append(np.log(len(xc) / len(train_x)) - 0.5 * (logdet + mahalanobis))
    return float(np.mean(classes[np.argmax(np.stack(scores, axis=1), axis=1)] == eval_y))


def default_out(rows: int, seed: int) -> str:
    """Under the default (git-ignored) work directory."""
    return os.path.join("iris-tfx-work", "data", f"synthetic-{rows}-seed{seed}.csv")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`iris-tfx data synth`: writes the CSV and prints where, or one error line (exit 2) on bad arguments."""
    parser = argparse.ArgumentParser(prog="iris-tfx data synth", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="number of data rows (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same rows and seed, same file (default: %(default)s)")
    parser.add_argument("--out", help="CSV path, .csv.gz to compress (default iris-tfx-work/data/"
                                      "synthetic-<rows>-seed<seed>.csv)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows {args.rows}: must be at least 1")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be a non-negative integer")
    out = args.out or default_out(args.rows, args.seed)
    if os.path.isdir(out):
        parser.error(f"--out {out}: is a directory; give a file path")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    written = write_csv(chunks(fit(), args.rows, args.seed), out)
    print(f"wrote {written} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
