"""Benchmark of `iris-tfx serve`: gRPC and REST Predict latency/throughput against the same signature in-process.

    python benchmarks/serving_benchmark.py [--model_dir <base>/<version>] [--seconds 5] [--load_generator h2load]
                                           [--server_repo DIR]

Starts the server (batching off, then on) on loopback and drives it with a gRPC load generator on the same
machine: h2load (nghttp2, C) when it is on PATH, else grpc.aio in --client_procs processes. Prints p50/p99 latency
and req/s for Predict with 1 example at concurrency 1, 8, 32; examples/s with 256-example requests; the
in-process time of the signature and the server/in-process ratio; and the server's CPU time per request (robust
to other load). A last "floor" run drives a grpc.aio server that only parses the request and answers the same
PredictResponse: what Python gRPC alone allows on this machine under the same load.
REST rows (h2load --h1, HTTP/1.1 keep-alive, one request in flight per connection) send the `serving_raw` JSON
row format with 1 and 256 instances; the "trickle" row times fresh `GET /v1/models/iris` connections while 100
clients trickle request bodies. --server_repo runs the server of another checkout (e.g. a `git worktree` of an
older commit) to compare in the same sitting.
The "log off"/"log on" rows: one server serving the model under two names, one with a `logging_config` at sampling
1.0 (every request written as a PredictionLog), driven alternately at concurrency 8, --log_rounds times (--rows
logging: only these). The machine's other load moves req/s by more than logging's cost: compare the server CPU us/req
of the two rows too, and alternate several times.
"""
import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's modules, imported inside the functions below

PREDICT = "/tensorflow.serving.PredictionService/Predict"
ROW = [5.1, 3.5, 1.4, 0.2]


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


def _call(target: str, payload: bytes) -> bytes:
    """One Predict call with serialized request and response."""
    import grpc
    with grpc.insecure_channel(target) as channel:
        return channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)(payload, timeout=30)


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


def _summary(latencies: List[float], errors: int, seconds: float) -> Dict[str, float]:
    latencies = sorted(latencies)
    n = len(latencies)
    return {"p50_ms": latencies[n // 2] * 1e3 if n else float("nan"),
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
            "rps": n / seconds, "done": n, "errors": errors}


def load_python(target: str, payload: bytes, concurrency: int, seconds: float, procs: int) -> Dict[str, float]:
    """grpc.aio clients in `procs` processes (each costs about as much CPU per request as the server)."""
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
    return _summary([x for lat, _ in results for x in lat], sum(e for _, e in results), seconds)


def load_h2load(target: str, payload: bytes, concurrency: int, seconds: float) -> Dict[str, float]:
    """h2load (nghttp2's HTTP/2 load generator, in C: a few % of the server's CPU per request) sending `payload`
    as gRPC unary calls: POST with a length-prefixed message. It does not read gRPC status trailers, so `errors`
    counts HTTP failures only; the caller checks the calls against the server's request_count."""
    clients = min(concurrency, 4)
    with tempfile.TemporaryDirectory() as work:
        body, log = os.path.join(work, "request"), os.path.join(work, "log")
        with open(body, "wb") as f:
            f.write(b"\0" + len(payload).to_bytes(4, "big") + payload)  # gRPC message: not compressed, length
        subprocess.run(["h2load", f"--duration={round(seconds * 1000)}ms", f"--clients={clients}",
                        f"--max-concurrent-streams={-(-concurrency // clients)}", "-H", "content-type: application/grpc",
                        "-H", "te: trailers", f"--data={body}", f"--log-file={log}", f"http://{target}{PREDICT}"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(log) as f:
            rows = [line.split("\t") for line in f if line.strip()]  # start us, HTTP status, duration us
    latencies = [int(r[2]) / 1e6 for r in rows if r[1] == "200"]
    return _summary(latencies, len(rows) - len(latencies), seconds)


def load_h2load_rest(url: str, body: bytes, concurrency: int, seconds: float) -> Dict[str, float]:
    """h2load over HTTP/1.1 (--h1): `concurrency` keep-alive connections, each POSTing the JSON `body` back to back;
    errors are non-200 answers (the caller also checks the server's request_count)."""
    with tempfile.TemporaryDirectory() as work:
        path, log = os.path.join(work, "request.json"), os.path.join(work, "log")
        with open(path, "wb") as f:
            f.write(body)
        subprocess.run(["h2load", "--h1", f"--duration={round(seconds * 1000)}ms", f"--clients={concurrency}",
                        "--max-concurrent-streams=1", "-H", "content-type: application/json", f"--data={path}",
                        f"--log-file={log}", url], check=True, stdout=subprocess.DEVNULL)
        with open(log) as f:
            rows = [line.split("\t") for line in f if line.strip()]
    latencies = [int(r[2]) / 1e6 for r in rows if r[1] == "200"]
    return _summary(latencies, len(rows) - len(latencies), seconds)


def _rest_body(n: int) -> bytes:
    import json
    from components import constants as c
    return json.dumps({"signature_name": c.RAW_SIGNATURE,
                       "instances": [dict(zip(c.FEATURE_KEYS, ROW))] * n}).encode()


def trickle(rest_port: int, clients: int, probes: int, timeout: float = 5.0) -> Dict[str, float]:
    """Times `probes` fresh connections, one after the other, doing `GET /v1/models/iris` (each capped at `timeout`
    s), first alone, then while `clients` connections trickle a request body (one byte every 100 ms of a declared
    1 MB)."""
    async def probe() -> Optional[float]:
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", rest_port), timeout)
            writer.write(b"GET /v1/models/iris HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), timeout - (time.perf_counter() - start))
            writer.close()
            return time.perf_counter() - start if b" 200 " in line else None
        except (OSError, asyncio.TimeoutError):
            return None

    async def trickler(stop: asyncio.Event, held: List[asyncio.StreamWriter]) -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", rest_port)
            held.append(writer)
            writer.write(b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: b\r\nContent-Length: 1000000\r\n\r\n")
            while not stop.is_set():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.1)
        except OSError:
            pass

    async def run() -> Tuple[List[Optional[float]], List[Optional[float]], int]:
        alone = [await probe() for _ in range(probes)]
        stop, held = asyncio.Event(), []
        tasks = [asyncio.ensure_future(trickler(stop, held)) for _ in range(clients)]
        await asyncio.sleep(1.0)  # every trickler connected and sending
        loaded = [await probe() for _ in range(probes)]
        stop.set()
        for writer in held:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        return alone, loaded, len(held)
    alone, loaded, connected = asyncio.run(run())

    def p50(times: List[Optional[float]]) -> float:
        ok = sorted(t for t in times if t is not None)
        return ok[len(ok) // 2] * 1e3 if ok else float("nan")
    return {"alone_p50_ms": p50(alone), "p50_ms": p50(loaded),
            "max_ms": max((t for t in loaded if t is not None), default=float("nan")) * 1e3,
            "failed": sum(t is None for t in loaded), "tricklers": connected}


def _ok_predicts(rest_port: int) -> int:
    """Predict calls the server answered OK, from its Prometheus request_count (h2load reads no gRPC status)."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    from serving import defaults
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{defaults.PROMETHEUS_PATH}", timeout=30) as r:
        text = r.read().decode()
    return int(sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name.endswith("request_count_total") and s.labels.get("API") == "predict"
                   and s.labels.get("status") == "OK"))


def _floor_server(response: bytes, queue) -> None:
    """A grpc.aio PredictionService, registered as the model server registers its own, whose Predict answers a fixed
    PredictResponse: the work every Python gRPC server does (parse, dispatch, serialize), none of the model's."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    fixed = predict_pb2.PredictResponse.FromString(response)

    class Floor(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            return fixed

    async def run() -> None:
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Floor(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        queue.put(port)
        await server.wait_for_termination()
    asyncio.run(run())


def in_process(model_dir: str, n: int, seconds: float) -> float:
    """Median seconds of one Session run of serving_default on n examples, in this process."""
    import numpy as np
    import tensorflow as tf
    from components import constants as c
    from serving import defaults
    from serving.servable import Servable, session_config
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


def request_logging(args, harness, base: str, work: str, run, t1: float) -> None:
    """Predict at concurrency 8 against one server: model `iris` not logged, `iris_logged` (the same version
    directory) logged at sampling 1.0; alternated --log_rounds times so both see the same machine load."""
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=g-import-not-at-top
    config = model_server_config_pb2.ModelServerConfig()
    log_dir = os.path.join(work, "request-log")
    for name in ("iris", "iris_logged"):
        model = config.model_config_list.config.add(name=name, base_path=base, model_platform="tensorflow")
        if name == "iris_logged":
            model.logging_config.log_collector_config.filename_prefix = os.path.join(log_dir, "iris")
            model.logging_config.sampling_config.sampling_rate = 1.0
    path = os.path.join(work, "logging.config")
    with open(path, "w") as f:
        f.write(str(config))
    server = harness.ServerProcess([f"--model_config_file={path}", "--file_system_poll_wait_seconds=0",
                                    *args.server_arg], os.path.join(work, "server-logging.log"),
                                   repo=args.server_repo).wait_ready(timeout=300)
    rows: Dict[str, List[Tuple[float, float]]] = {"log off": [], "log on": []}
    try:
        for _ in range(args.log_rounds):
            for label, model in (("log off", "iris"), ("log on", "iris_logged")):
                rows[label].append(run(label, server.proc.pid, server.grpc_target, None, 1, 8,
                                       _request_bytes(1, model), t1))
    finally:
        server.stop()
    logged = sum(os.path.getsize(os.path.join(log_dir, f)) for f in os.listdir(log_dir))
    print(f"request log: {logged:,} bytes in {len(os.listdir(log_dir))} files", flush=True)
    (off_rps, off_cpu), (on_rps, on_cpu) = [[sum(x) / len(x) for x in zip(*rows[k])] for k in ("log off", "log on")]
    print(f"log on vs off (means of {args.log_rounds}): req/s {(on_rps / off_rps - 1) * 100:+.1f}%, server CPU "
          f"{on_cpu - off_cpu:+,.0f} us/req ({(on_cpu / off_cpu - 1) * 100:+.1f}%)", flush=True)


def check_cost(model_dir: str, n: int, rounds: int = 7) -> float:
    """Seconds the input check (--input_validation=warn) adds to one in-process Servable.run of n in-bounds examples
    (the same loaded version with and without its validator, alternated; medians)."""
    import numpy as np
    from components import constants as c
    from serving import loader
    from serving.servable import session_config
    servable, _ = loader.load("iris", 1, model_dir, loader.LoaderOptions(session_config(1, 1), input_validation="warn"))
    validator, examples = servable.validator, np.array(_examples(n), dtype=object)
    outputs = sorted(servable.signatures[c.SERVING_SIGNATURE].outputs)
    times: Dict[bool, List[float]] = {False: [], True: []}
    for _ in range(rounds):
        for checked in (False, True):
            servable.validator = validator if checked else None
            start = time.perf_counter()
            for _ in range(200):
                servable.run(c.SERVING_SIGNATURE, {c.EXAMPLES_INPUT: examples.copy()}, outputs)  # a new array each
            times[checked].append((time.perf_counter() - start) / 200)
    servable.unload()
    return float(np.median(times[True]) - np.median(times[False]))


def input_validation_rows(args, harness, base: str, work: str, run, t1: float, rounds: int = 4) -> None:
    """Predict at concurrency 8 (in-bounds values) against two servers of the same version, --input_validation=off
    and =warn (the default), alternated `rounds` times so both see the same machine load."""
    from components import constants as c  # pylint: disable=g-import-not-at-top
    if not os.path.exists(os.path.join(base, "1", c.ASSETS_EXTRA, c.SCHEMA_ASSET)):
        print("validation rows: skipped (the model carries no assets.extra/schema.pbtxt)", flush=True)
        return
    one, many = (check_cost(os.path.join(base, "1"), n) * 1e6 for n in (1, args.batch_examples))
    print(f"in-process cost of the input check (warn, in bounds) per Servable.run: 1 example {one:+.1f} us; "
          f"{args.batch_examples} examples {many:+.1f} us", flush=True)
    servers = {}
    try:
        for mode in ("off", "warn"):
            servers[mode] = harness.ServerProcess(
                [f"--model_base_path={base}", "--model_name=iris", "--file_system_poll_wait_seconds=0",
                 f"--input_validation={mode}", *args.server_arg], os.path.join(work, f"server-validation-{mode}.log"),
                repo=args.server_repo).wait_ready(timeout=300)
        for i in range(rounds):  # each mode first in every other round: neither always meets the later load
            for mode in ("off", "warn") if i % 2 == 0 else ("warn", "off"):
                run(f"check {mode}", servers[mode].proc.pid, servers[mode].grpc_target, None, 1, 8,
                    _request_bytes(1, "iris"), t1)
    finally:
        for server in servers.values():
            server.stop()


def main(argv: Optional[List[str]] = None) -> int:
    """Run every row and print the table; returns the exit code."""
    from components import runtime  # pylint: disable=g-import-not-at-top  (this checkout, on sys.path above)
    runtime.prepare()  # before anything imports TensorFlow (the spawned load generators inherit it)
    from serving import defaults, harness  # pylint: disable=g-import-not-at-top
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_dir", help="a pushed version directory (default: latest under the default push dir)")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each load run")
    p.add_argument("--load_generator", choices=("h2load", "python"),
                   default="h2load" if shutil.which("h2load") else "python",
                   help="h2load (Debian's nghttp2-client, installed by `make setup`; default when on PATH) or "
                        "grpc.aio clients")
    p.add_argument("--client_procs", type=int, default=2, help="processes of the python load generator")
    p.add_argument("--batch_examples", type=int, default=256)
    p.add_argument("--server_arg", action="append", default=[], help="extra server flag, e.g. --grpc_max_threads=4")
    p.add_argument("--server_repo", default=REPO, help="checkout whose serving/ is benchmarked (default: this one)")
    p.add_argument("--trickle_clients", type=int, default=100)
    p.add_argument("--rows", choices=("all", "logging", "validation"), default="all",
                   help="every row, or only the request-logging rows (Predict at concurrency 8, logging off vs on)")
    p.add_argument("--log_rounds", type=int, default=2, help="times the log off/on rows alternate")
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
    print(f"model: {model_dir}   cores: {defaults.cpu_count()}   {args.seconds:g}s per run   "
          f"load generator: {args.load_generator}")
    print(f"in-process serving_default: 1 example {t1 * 1e3:.3f} ms; {args.batch_examples} examples "
          f"{tn * 1e3:.3f} ms = {args.batch_examples / tn:,.0f} examples/s")
    print(f"{'batching':9} {'examples':>8} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'examples/s':>11} "
          f"{'errors':>6} {'p50/in-proc':>11} {'server CPU us/req':>17}")

    def run(label: str, pid: int, target: str, rest_port: Optional[int], n: int, conc: int, payload: bytes,
            t_in: Optional[float], rest: bool = False) -> Tuple[float, float]:
        """One row: prints it, returns (req/s, server CPU us/req)."""
        cpu, ok = _cpu_seconds(pid), _ok_predicts(rest_port) if rest_port else 0
        if rest:
            r = load_h2load_rest(f"http://127.0.0.1:{rest_port}/v1/models/iris:predict", payload, conc, args.seconds)
        elif args.load_generator == "h2load":
            r = load_h2load(target, payload, conc, args.seconds)
        else:
            r = load_python(target, payload, conc, args.seconds, args.client_procs)
        cpu_us = (_cpu_seconds(pid) - cpu) / max(1, r["done"]) * 1e6
        if rest_port:  # calls that got an HTTP answer but not an OK gRPC status
            r["errors"] += max(0, r["done"] - (_ok_predicts(rest_port) - ok))
        ratio = f"{r['p50_ms'] / 1e3 / t_in:11.1f}" if t_in else f"{'-':>11}"
        print(f"{label:9} {n:8d} {conc:5d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['rps']:9,.0f} "
              f"{r['rps'] * n:11,.0f} {r['errors']:6d} {ratio} {cpu_us:17,.0f}", flush=True)
        return r["rps"], cpu_us

    if args.rows == "validation":  # only the input-validation rows: Predict at concurrency 8, check off vs warn
        input_validation_rows(args, harness, base, work, run, t1)
        return 0
    if args.rows == "logging":
        request_logging(args, harness, base, work, run, t1)
        return 0
    response = b""
    loads = [(1, conc, one, t1) for conc in (1, 8, 32)] + [(args.batch_examples, 8, many, tn)]
    rest_loads = [(1, conc, _rest_body(1), t1) for conc in (1, 32)] + \
        [(args.batch_examples, conc, _rest_body(args.batch_examples), tn) for conc in (1, 8)]
    trickled: Dict[str, float] = {}
    for label, params in (("off", None), ("on", batching)):
        flags = [f"--model_base_path={base}", "--model_name=iris", "--file_system_poll_wait_seconds=0",
                 *(["--enable_batching", f"--batching_parameters_file={params}"] if params else []), *args.server_arg]
        server = harness.ServerProcess(flags, os.path.join(work, f"server-{label}.log"),
                                       repo=args.server_repo).wait_ready(timeout=300)
        try:
            response = response or _call(server.grpc_target, one)
            for n, conc, payload, t_in in loads:
                run(label, server.proc.pid, server.grpc_target, server.rest_port, n, conc, payload, t_in)
            for n, conc, payload, t_in in rest_loads if params is None else []:
                run("REST off", server.proc.pid, server.grpc_target, server.rest_port, n, conc, payload, t_in,
                    rest=True)
            if params is None:
                trickled = trickle(server.rest_port, args.trickle_clients, probes=10)
        finally:
            server.stop()
    print(f"trickle: fresh GET /v1/models/iris p50 {trickled['alone_p50_ms']:.2f} ms alone; with "
          f"{trickled['tricklers']} clients trickling request bodies p50 {trickled['p50_ms']:.2f} ms, max "
          f"{trickled['max_ms']:.2f} ms, {trickled['failed']} of 10 not answered within 5 s", flush=True)
    if os.path.exists(os.path.join(args.server_repo, "serving", "request_log.py")):
        request_logging(args, harness, base, work, run, t1)
    else:  # a --server_repo from before request logging would serve both models unlogged
        print("log rows: skipped (the --server_repo server has no request logging)", flush=True)
    if os.path.exists(os.path.join(args.server_repo, "serving", "input_validation.py")):
        input_validation_rows(args, harness, base, work, run, t1)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    floor = ctx.Process(target=_floor_server, args=(response, queue), daemon=True)
    floor.start()
    try:
        target = f"127.0.0.1:{queue.get(timeout=120)}"
        for conc in (1, 8, 32):
            run("floor", floor.pid, target, None, 1, conc, one, None)
    finally:
        floor.terminate()
        floor.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
