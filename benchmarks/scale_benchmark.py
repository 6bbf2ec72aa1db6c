"""How the pipeline's cost grows with the rows: cold `iris-tfx run`s at 150 / 15k / 150k / 1.5M rows.

For each size it prints wall time and rows/s per component and in all, the peak RSS of the whole process tree
(the CLI, its Beam worker zygote and every forked worker), the Trainer's steps and batch (from its
training.json), and the eval accuracy next to that of a Gaussian (QDA) classifier fitted with numpy to the same
train split (the data's near-optimal accuracy). The last line compares the time per row at the largest size
with the next one (<= 1.0: the cost grows linearly or better).

Usage: python benchmarks/scale_benchmark.py [--sizes 150,15000,150000,1500000] [--seed 0] [-- extra run args]
Size 150 is Fisher's data/iris.csv; the others are `iris-tfx data synth` CSVs (written before timing starts).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's modules, imported inside the functions below

FISHER_ROWS = 150
COMPONENTS = ("CsvExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator")


class TreeRss:
    """Samples the summed RSS of a process and all its descendants every `interval` s; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.root, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            total = 0
            try:
                for proc in [self.root] + self.root.children(recursive=True):
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass  # exited between listing and reading
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def split_arrays(workdir: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Features [n, 4] and species ids [n] of one ExampleGen split, read back from its tf.Example files."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only after the runs)
    from components import constants  # pylint: disable=g-import-not-at-top
    files = glob.glob(os.path.join(workdir, "pipeline_root", "CsvExampleGen", "examples", "*", f"Split-{split}", "*"))
    spec = {k: tf.io.FixedLenFeature([], tf.float32) for k in constants.FEATURE_KEYS}
    spec[constants.LABEL_KEY] = tf.io.FixedLenFeature([], tf.string)
    xs, ys = [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536).map(
            lambda b: tf.io.parse_example(b, spec)):
        xs.append(np.stack([batch[k].numpy() for k in constants.FEATURE_KEYS], axis=1))
        ys.append(np.array([constants.CLASS_NAMES.index(s.decode()) for s in batch[constants.LABEL_KEY].numpy()]))
    return np.concatenate(xs), np.concatenate(ys)


def training_record(workdir: str) -> Dict[str, float]:
    paths = glob.glob(os.path.join(workdir, "pipeline_root", "Trainer", "model_run", "*", "training.json"))
    if not paths:
        return {}
    with open(max(paths, key=os.path.getmtime)) as f:
        return json.load(f)


def run_once(rows: int, data: str, run_args: List[str]) -> Dict[str, object]:
    """One cold run in a fresh workdir; returns its figures."""
    from pipeline import synth  # pylint: disable=g-import-not-at-top
    from pipeline.summary import summarize  # pylint: disable=g-import-not-at-top
    workdir = tempfile.mkdtemp(prefix=f"iris-scale-{rows}-")
    command = [os.path.join(os.path.dirname(sys.executable), "iris-tfx"), "run", "--data", data,
               "--workdir", workdir, *run_args]
    try:
        started = time.monotonic()
        with open(os.path.join(tempfile.gettempdir(), f"iris-scale-{rows}.out"), "w") as out:
            proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            rss = TreeRss(proc.pid)
            code = proc.wait()
            peak = rss.stop()
        seconds = time.monotonic() - started
        summary = summarize(os.path.join(workdir, "metadata.sqlite"), "iris")
        if code != 0 or summary is None:
            sys.exit(f"{rows} rows: iris-tfx run exited {code}; see {out.name}")
        times = {n.node: n.seconds for n in summary.nodes}
        accuracy = summary.metrics["sparse_categorical_accuracy [overall]"].new
        train_x, train_y = split_arrays(workdir, "train")
        eval_x, eval_y = split_arrays(workdir, "eval")
        return {"rows": rows, "seconds": seconds, "times": times, "peak_rss": peak,
                "training": training_record(workdir), "accuracy": accuracy,
                "qda": synth.qda_accuracy(train_x, train_y, eval_x, eval_y), "eval_rows": len(eval_y)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(result: Dict[str, object]) -> None:
    rows, times, training = result["rows"], result["times"], result["training"]
    print(f"\n== {rows:,} rows: {result['seconds']:.1f} s end to end ({rows / result['seconds']:,.0f} rows/s), "
          f"peak RSS of the process tree {result['peak_rss'] / 2**30:.2f} GiB")
    for name in COMPONENTS:
        seconds = times.get(name)
        if seconds:
            print(f"  {name:<16} {seconds:>8.1f} s {rows / seconds:>12,.0f} rows/s")
    others = sum(times.values()) - sum(times.get(n, 0) for n in COMPONENTS)
    print(f"  {'other components':<16} {others:>8.1f} s")
    if training:
        print(f"  training: {training.get('steps')} steps (bound {training.get('max_steps')}), global batch "
              f"{training.get('global_batch')}, learning rate {training.get('learning_rate'):.4g}, "
              f"stopped early: {training.get('stopped_early')}")
    print(f"  eval accuracy {result['accuracy']:.4f} vs QDA {result['qda']:.4f} on the same {result['eval_rows']:,} "
          f"eval rows (difference {100 * (result['accuracy'] - result['qda']):+.2f} points)")


def main(argv: Optional[List[str]] = None) -> None:
    from components import runtime  # pylint: disable=g-import-not-at-top  (this checkout, on sys.path above)
    runtime.prepare()  # before anything imports TensorFlow
    from pipeline import synth  # pylint: disable=g-import-not-at-top
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="150,15000,150000,1500000", help="comma-separated row counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("run_args", nargs="*", help="extra arguments for iris-tfx run (after --)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    data_dir = tempfile.mkdtemp(prefix="iris-scale-data-")
    results = []
    try:
        model = synth.fit()
        for rows in sizes:
            if rows == FISHER_ROWS:
                data = os.path.join(REPO, "data", "iris.csv")
            else:
                data = os.path.join(data_dir, f"synthetic-{rows}.csv")
                synth.write_csv(synth.chunks(model, rows, args.seed), data)
            results.append(run_once(rows, data, args.run_args))
            report(results[-1])
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\ncores: {os.cpu_count()}; args: {' '.join(args.run_args) or '(defaults)'}")
    if len(results) >= 2:
        last, previous = results[-1], results[-2]
        ratio = (last["seconds"] / last["rows"]) / (previous["seconds"] / previous["rows"])
        print(f"time per row at {last['rows']:,} rows / at {previous['rows']:,} rows: {ratio:.2f}")


if __name__ == "__main__":
    main()
