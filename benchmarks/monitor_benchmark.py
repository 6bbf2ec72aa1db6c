"""`iris-tfx monitor`'s cost by window size: N synthetic single-row Predict requests (Fisher's rows as serialized
tf.Examples, as IrisClient sends them) written by the server's own RequestLogger under a temporary prefix, judged
against a real pushed model's ML Metadata; the monitor runs in a child process so its wall time, CPU and peak RSS are
its own. `--repo` runs another checkout's monitor (e.g. a git worktree of an older commit) for before/after figures.

  nice -n 10 .venv/bin/python benchmarks/monitor_benchmark.py --workdir WORKDIR [--sizes 1000,30000,100000]"""
import argparse
import csv
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components import runtime  # noqa: E402  pylint: disable=wrong-import-position

runtime.prepare(quiet=True)  # before TensorFlow is imported

from components import constants as c  # noqa: E402  pylint: disable=wrong-import-position


def pushed_version(workdir: pathlib.Path) -> int:
    """The newest version the pipeline pushed under WORKDIR (ML Metadata knows it)."""
    versions = sorted(int(p.name) for p in (workdir / "models" / c.MODEL_NAME).iterdir() if p.name.isdigit())
    if not versions:
        sys.exit(f"{workdir}: no pushed model under models/{c.MODEL_NAME} (run `iris-tfx run --workdir` first)")
    return versions[-1]


def write_logs(prefix: str, version: int, n: int) -> None:
    """N logged Predict requests of one row each, through the server's RequestLogger (its writer thread, its files)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import model_pb2, predict_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel
    from serving.metrics import Metrics  # pylint: disable=import-outside-toplevel
    from serving.request_log import RequestLogger  # pylint: disable=import-outside-toplevel
    with open(REPO / c.DEFAULT_DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pairs = []  # one request/response per Fisher row, reused: the logger serializes each when it writes
    for row in rows:
        example = example_pb2.Example()
        for k in c.FEATURE_KEYS:
            example.features.feature[k].float_list.value.append(float(row[k]))
        spec = model_pb2.ModelSpec(name=c.MODEL_NAME, signature_name=c.SERVING_SIGNATURE)
        request = predict_pb2.PredictRequest(model_spec=spec)
        request.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([example.SerializeToString()]))
        response = predict_pb2.PredictResponse(model_spec=spec)
        response.outputs[c.PREDICTED_OUTPUT].CopyFrom(tf.make_tensor_proto([row[c.LABEL_KEY].encode()]))
        response.outputs[c.PROBABILITIES_OUTPUT].CopyFrom(tf.make_tensor_proto(np.full((1, 3), 1 / 3, "float32")))
        pairs.append((spec, request, response))
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=c.MODEL_NAME)
    model.logging_config.log_collector_config.filename_prefix = prefix
    model.logging_config.sampling_config.sampling_rate = 1.0
    logger = RequestLogger(Metrics(), queue_size=n + 1, max_file_bytes=64 << 20, max_total_bytes=1 << 40)
    logger.update(config)
    for i in range(n):
        spec, request, response = pairs[i % len(pairs)]
        logger.log("predict", spec, version, request, response)
    logger.close(timeout=600)


def run_monitor(repo: pathlib.Path, prefix: str, workdir: pathlib.Path) -> Dict[str, float]:
    """The monitor of `repo` as a child process: its exit code, wall seconds, CPU seconds and peak RSS (MB)."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    command = [sys.executable, "-c", "import sys; from iris_tfx.main import main; sys.exit(main())",
               "monitor", "--logs", prefix, "--workdir", str(workdir)]
    start = time.monotonic()
    child = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (not the maximum over all children)
    wall = time.monotonic() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):
        sys.exit(f"monitor exited {child.returncode}:\n{output.decode(errors='replace')[-3000:]}")
    return {"exit": child.returncode, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024}


def main(argv: List[str] = None) -> int:
    """Writes each size's logs, runs the monitor over them and prints one row per size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=pathlib.Path,
                        help="a pipeline workdir with a pushed model and its metadata.sqlite (not written to)")
    parser.add_argument("--sizes", default="1000,30000,100000", help="logged requests per run, comma-separated")
    parser.add_argument("--repo", type=pathlib.Path, default=REPO, help="the checkout whose monitor runs")
    args = parser.parse_args(argv)
    version = pushed_version(args.workdir)
    print(f"monitor of {args.repo} over model {c.MODEL_NAME} version {version} ({args.workdir})")
    print(f"{'requests':>9} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'requests/s':>11}")
    rows = []
    for n in sorted(int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="monitor-benchmark-") as tmp:
            work = pathlib.Path(tmp) / "work"
            work.mkdir()  # results go here; the statistics ML Metadata names stay where the run wrote them
            shutil.copy(args.workdir / "metadata.sqlite", work)
            prefix = str(pathlib.Path(tmp) / "logs" / c.MODEL_NAME)
            os.makedirs(os.path.dirname(prefix))
            write_logs(prefix, version, n)
            r = run_monitor(args.repo, prefix, work)
        print(f"{n:>9} {r['wall']:>8.1f} {r['cpu']:>8.1f} {r['rss_mb']:>12.0f} {n / r['wall']:>11.0f}", flush=True)
        rows.append((n, r))
    if len(rows) > 1:  # the start-up (TensorFlow, TFDV: ~0.9 GB, ~12 s CPU) is in every row: the slope is the cost
        (n0, r0), (n1, r1) = rows[0], rows[-1]
        print(f"per logged request beyond the first {n0}: {(r1['rss_mb'] - r0['rss_mb']) * 1024 / (n1 - n0):.2f} KB "
              f"peak RSS, {(r1['cpu'] - r0['cpu']) * 1e6 / (n1 - n0):.0f} us CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
