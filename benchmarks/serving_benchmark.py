"""Benchmark of `iris-tfx serve`: gRPC Predict latency/throughput against the same signature called in-process.

    python benchmarks/serving_benchmark.py [--model_dir <base>/<version>] [--seconds 5]

Starts the server (batching off, then on) on loopback and drives it with a gRPC load generator on the same
machine (grpc.aio in --client_procs processes, pre-serialized requests). Prints p50/p99 latency and req/s for
Predict with 1 example at concurrency 1, 8, 32; examples/s with 256-example requests; the in-process time of the
signature and the server/in-process ratio; and the server's CPU time per request (robust to other load).
"""
import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PREDICT = "/tensorflow.serving.PredictionService/Predict"
ROW = [5.1, 3.5, 1.4, 0.2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _examples(n: int) -> List[bytes]:
    from tensorflow.core.example import example_pb2
    from components import constants as c
    ex = example_pb2.Example()
    for k, v in zip(c.FEATURE_KEYS, ROW):
        ex.features.feature[k].float_list.value.append(v)
    return [ex.SerializeToString()] * n


def _request_bytes(n: int, model: str) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from components import constants as c
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[c.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(_examples(n), dtype=tf.string))
    return request.SerializeToString()


def _client(target: str, payload: bytes, concurrency: int, seconds: float, queue) -> None:
    """One load-generator process: `concurrency` coroutines sending `payload` back to back for `seconds`."""
    import grpc

    async def run() -> Tuple[List[float], int]:
        latencies: List[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
            await call(payload, timeout=30)  # connect
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    start = time.perf_counter()
                    try:
                        await call(payload, timeout=30)
                        latencies.append(time.perf_counter() - start)
                    except grpc.aio.AioRpcError:
                        errors += 1
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors
    queue.put(asyncio.run(run()))


def load(target: str, payload: bytes, concurrency: int, seconds: float, procs: int) -> Dict[str, float]:
    procs = max(1, min(procs, concurrency))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_client, args=(target, payload, concurrency // procs + (i < concurrency % procs),
                                                  seconds, queue)) for i in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    n = len(latencies)
    return {"p50_ms": latencies[n // 2] * 1e3, "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
            "rps": n / seconds, "errors": errors}


class Server:
    def __init__(self, base: str, batching: Optional[str], log_path: str, extra: List[str]):
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        args = [sys.executable, "-m", "serving.server", "--host=127.0.0.1", f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}", f"--model_base_path={base}", "--model_name=iris",
                "--file_system_poll_wait_seconds=0", *extra]
        if batching:
            args += ["--enable_batching", f"--batching_parameters_file={batching}"]
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONPATH=REPO))
        self.target = f"127.0.0.1:{self.grpc_port}"
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for _ in range(600):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited, see {log_path}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(0.2)
        raise RuntimeError(f"server not ready, see {log_path}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def in_process(model_dir: str, n: int, seconds: float) -> float:
    """Median seconds of one Session run of serving_default on n examples, in this process."""
    import numpy as np
    import tensorflow as tf
    from components import constants as c
    from serving.servable import Servable, session_config
    from serving import defaults
    servable = Servable("iris", 1, model_dir, session_config(defaults.INTRA_OP_THREADS, defaults.INTER_OP_THREADS))
    inputs = {c.EXAMPLES_INPUT: np.array(_examples(n), dtype=object)}
    outputs = sorted(servable.signatures[c.SERVING_SIGNATURE].outputs)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        servable.run(c.SERVING_SIGNATURE, inputs, outputs)
        times.append(time.perf_counter() - start)
    del tf
    return float(np.median(times))


def _cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (Linux /proc), to report server CPU per request despite other load."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def _latest_version(base: str) -> str:
    versions = [int(v) for v in os.listdir(base) if v.isdigit()]
    if not versions:
        raise SystemExit(f"no version directories under {base}; run `iris-tfx run` first or pass --model_dir")
    return os.path.join(base, str(max(versions)))


def main(argv: Optional[List[str]] = None) -> int:
    from serving import defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_dir", help="a pushed version directory (default: latest under the default push dir)")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each load run")
    p.add_argument("--client_procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--batch_examples", type=int, default=256)
    p.add_argument("--server_arg", action="append", default=[], help="extra server flag, e.g. --grpc_max_threads=4")
    args = p.parse_args(argv)
    model_dir = os.path.abspath(args.model_dir or _latest_version(os.path.join(REPO, defaults.MODEL_BASE_PATH)))
    work = tempfile.mkdtemp(prefix="serving-bench-")
    base = os.path.join(work, "iris")
    os.makedirs(base)
    os.symlink(model_dir, os.path.join(base, "1"))
    batching = os.path.join(work, "batching.config")
    with open(batching, "w") as f:
        f.write("max_batch_size { value: 1024 }\nbatch_timeout_micros { value: 0 }\n"
                "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 64 }\n")
    one, many = _request_bytes(1, "iris"), _request_bytes(args.batch_examples, "iris")
    t1 = in_process(model_dir, 1, 3.0)
    tn = in_process(model_dir, args.batch_examples, 3.0)
    print(f"model: {model_dir}   cores: {defaults.cpu_count()}   {args.seconds:g}s per run")
    print(f"in-process serving_default: 1 example {t1 * 1e3:.3f} ms; {args.batch_examples} examples "
          f"{tn * 1e3:.3f} ms = {args.batch_examples / tn:,.0f} examples/s")
    print(f"{'batching':9} {'examples':>8} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'examples/s':>11} "
          f"{'errors':>6} {'p50/in-proc':>11} {'server CPU us/req':>17}")
    for label, params in (("off", None), ("on", batching)):
        server = Server(base, params, os.path.join(work, f"server-{label}.log"), args.server_arg)
        try:
            runs = [(1, conc, one, t1) for conc in (1, 8, 32)] + [(args.batch_examples, 8, many, tn)]
            for n, conc, payload, t_in in runs:
                cpu = _cpu_seconds(server.proc.pid)
                r = load(server.target, payload, conc, args.seconds, args.client_procs)
                cpu_us = (_cpu_seconds(server.proc.pid) - cpu) / max(1.0, r["rps"] * args.seconds) * 1e6
                print(f"{label:9} {n:8d} {conc:5d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['rps']:9,.0f} "
                      f"{r['rps'] * n:11,.0f} {r['errors']:6d} {r['p50_ms'] / 1e3 / t_in:11.1f} {cpu_us:17,.0f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
