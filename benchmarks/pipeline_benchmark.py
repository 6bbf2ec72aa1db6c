"""Cold and cached wall time of `iris-tfx run` end to end, with per-component times from ML Metadata.

Usage: python benchmarks/pipeline_benchmark.py [--reruns 1] [-- extra iris-tfx run args]
Run 1 starts from an empty workdir; later runs reuse its cache: every component but the resolver is
CACHED and nothing new is pushed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's modules, imported inside main


def main() -> None:
    from components import runtime  # pylint: disable=g-import-not-at-top  (this checkout, on sys.path above)
    runtime.prepare()  # before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=1)
    parser.add_argument("run_args", nargs="*", help="extra arguments for iris-tfx run (after --)")
    args = parser.parse_args()
    from pipeline.summary import summarize  # pylint: disable=g-import-not-at-top

    workdir = tempfile.mkdtemp(prefix="iris-bench-")
    command = [os.path.join(os.path.dirname(sys.executable), "iris-tfx"), "run", "--workdir", workdir,
               *args.run_args]
    results = []
    try:
        for run in range(1 + args.reruns):
            started = time.monotonic()
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            seconds = time.monotonic() - started
            if result.returncode != 0:
                sys.exit(f"run {run + 1} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
            results.append((seconds, summarize(os.path.join(workdir, "metadata.sqlite"), "iris")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    names = [n.node for n in results[0][1].nodes]
    labels = ["cold"] + [f"re-run {i}" for i in range(1, len(results))]
    print(f"{'component':<32}" + "".join(f"{label:>16}" for label in labels))
    for name in names:
        cells = []
        for _, summary in results:
            node = next((n for n in summary.nodes if n.node == name), None)
            cells.append(f"{node.seconds:>8.1f}s {node.status[:6]:<6}" if node else f"{'-':>16}")
        print(f"{name:<32}" + "".join(cells))
    print(f"{'end-to-end wall time (CLI)':<32}" + "".join(f"{s:>15.1f}s" for s, _ in results))
    print(f"cores: {os.cpu_count()}; args: {' '.join(args.run_args) or '(defaults)'}")


if __name__ == "__main__":
    main()
