"""Rows/s and peak memory of the ExampleGen executor: this project's (pyarrow + tfx-bsl) against TFX's own CSV one.

Writes a synthetic Iris CSV per row count (pipeline.synth), then runs each executor's Do alone, each in a fresh
process, on that file with the train 4 / eval 1 hash split, under the same Beam args and forked Beam workers as
`iris-tfx run`. Peak RSS is the largest sum over the process and its Beam workers, sampled every 0.2 s.

Usage: nice -n 10 python benchmarks/example_gen_benchmark.py [--rows 150000 1500000] [--executor new old]
           [--mode multi_processing in_memory] [--data-dir DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's modules, imported inside the functions below

EXECUTORS = {"new": "components.example_gen.Executor",
             "old": "tfx.components.example_gen.csv_example_gen.executor.Executor"}


def _beam_args(mode: str) -> List[str]:
    """The CLI's default Beam args for multi_processing; in_memory runs the job in this process."""
    from pipeline.config import default_beam_args  # pylint: disable=g-import-not-at-top
    return default_beam_args() if mode == "multi_processing" else ["--direct_running_mode=in_memory"]


class _PeakRss:
    """Samples the RSS of this process and all its descendants (the forked Beam workers are the zygote's)."""

    def __init__(self) -> None:
        import psutil  # pylint: disable=g-import-not-at-top
        self._psutil = psutil
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        me = self._psutil.Process()
        total = 0
        for process in [me] + me.children(recursive=True):
            try:
                total += process.memory_info().rss
            except self._psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._total())

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_one(executor_name: str, data: str, mode: str) -> Dict[str, float]:
    """Runs one executor's Do on data; returns its wall time and the peak RSS."""
    import importlib  # pylint: disable=g-import-not-at-top
    from pipeline.beam_workers import forked_workers  # pylint: disable=g-import-not-at-top
    beam_args = _beam_args(mode)
    with forked_workers(beam_args):
        from tfx.proto import example_gen_pb2  # pylint: disable=g-import-not-at-top
        from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
        from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top
        from components.example_gen import literal_input  # pylint: disable=g-import-not-at-top
        module, _, name = EXECUTORS[executor_name].rpartition(".")
        executor_class = getattr(importlib.import_module(module), name)
        input_base, pattern = literal_input(data)
        with tempfile.TemporaryDirectory(prefix="example_gen_benchmark-") as out:
            examples = standard_artifacts.Examples()
            examples.uri = os.path.join(out, "examples")
            executor = executor_class(executor_class.Context(beam_pipeline_args=beam_args, tmp_dir=out))
            properties = {
                "input_base": input_base,
                "input_config": proto_utils.proto_to_json(example_gen_pb2.Input(splits=[
                    example_gen_pb2.Input.Split(name="single_split", pattern=pattern)])),
                "output_config": proto_utils.proto_to_json(example_gen_pb2.Output(
                    split_config=example_gen_pb2.SplitConfig(splits=[
                        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=4),
                        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)])))}
            with _PeakRss() as rss:
                started = time.monotonic()
                executor.Do({}, {"examples": [examples]}, properties)
                seconds = time.monotonic() - started
    return {"seconds": seconds, "peak_rss_mb": rss.peak / 2**20}


def main() -> int:
    from components import runtime  # pylint: disable=g-import-not-at-top  (this checkout, on sys.path above)
    runtime.prepare()  # before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[150_000, 1_500_000])
    parser.add_argument("--executor", nargs="+", choices=sorted(EXECUTORS), default=["new", "old"])
    parser.add_argument("--mode", nargs="+", choices=["multi_processing", "in_memory"],
                        default=["multi_processing", "in_memory"])
    parser.add_argument("--data-dir", default=os.path.join(REPO, "iris-tfx-work", "data"))
    parser.add_argument("--one", nargs=3, metavar=("EXECUTOR", "DATA", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0
    print(f"{'rows':>10} {'executor':>8} {'mode':>16} {'seconds':>9} {'rows/s':>9} {'peak RSS MB':>12}", flush=True)
    for rows in args.rows:
        data = os.path.join(args.data_dir, f"synthetic-{rows}-seed0.csv")
        if not os.path.exists(data):
            subprocess.run([sys.executable, "-m", "pipeline.synth", "--rows", str(rows), "--out", data],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        for mode in args.mode:
            for executor_name in args.executor:
                result = subprocess.run([sys.executable, __file__, "--one", executor_name, data, mode],
                                        cwd=REPO, capture_output=True, text=True)
                if result.returncode != 0:
                    print(f"{rows:>10} {executor_name:>8} {mode:>16} failed: {result.stderr[-2000:]}", flush=True)
                    continue
                figures = json.loads(result.stdout.strip().splitlines()[-1])
                print(f"{rows:>10} {executor_name:>8} {mode:>16} {figures['seconds']:>9.1f} "
                      f"{rows / figures['seconds']:>9,.0f} {figures['peak_rss_mb']:>12,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
