"""The REST transport against a real server process: deadlines (408) for trickling clients, framing that is never
confused, JSON errors without Python class names, one-read responses (TCP_NODELAY, headers and body in one
write), and a SIGTERM drain under load on both transports."""
import json
import socket
import threading
import time
from typing import List, Optional, Tuple

import grpc
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from components import constants as c
from serving import harness as h

pytestmark = [pytest.mark.timeout(300), pytest.mark.e2e]  # real server processes over the pipeline's model
DEADLINE_S = 1.5  # --rest_api_timeout_in_ms of the test server: header and body deadlines
ROW = dict(zip(c.FEATURE_KEYS, [5.1, 3.5, 1.4, 0.2]))
PREDICT_BODY = json.dumps({"signature_name": c.RAW_SIGNATURE, "instances": [ROW]}).encode()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("rest-transport")
    h.copy_version(model, root / "iris", 1)
    proc = h.ServerProcess([f"--model_base_path={root / 'iris'}", "--file_system_poll_wait_seconds=0",
                            f"--rest_api_timeout_in_ms={int(DEADLINE_S * 1000)}", "--max_request_bytes=1000000"],
                           root / "server.log").wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def connect(port: int, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def request_bytes(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def read_response(sock: socket.socket, buffer: bytes = b"") -> Tuple[int, dict, bytes, bytes]:
    """One HTTP/1.1 response read off `sock`: (status, headers, body, bytes read past it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buffer!r}")
        buffer += chunk
    head, rest = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length], rest[length:]


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def get_status(port: int) -> Tuple[int, float]:
    """A fresh connection's GET /v1/models/iris: (HTTP status, seconds)."""
    start = time.monotonic()
    with connect(port, timeout=10) as s:
        s.sendall(request_bytes("GET", "/v1/models/iris"))
        status = read_response(s)[0]
    return status, time.monotonic() - start


class Trickler(threading.Thread):
    """A client sending `head` whole, then `trickle` one byte every 0.2 s, until the server answers or closes."""

    def __init__(self, port: int, head: bytes, trickle: bytes):
        super().__init__(daemon=True)
        self.sock = connect(port, timeout=30)
        self.head, self.trickle = head, trickle
        self.answer: Optional[bytes] = None
        self.elapsed = 0.0

    def run(self) -> None:
        start = time.monotonic()
        self.sock.sendall(self.head)
        self.sock.settimeout(0.2)
        data = b""
        for byte in self.trickle:
            try:
                self.sock.sendall(bytes([byte]))
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            data += chunk
            if not chunk or b"\r\n\r\n" in data:
                break
        self.sock.settimeout(5)
        try:
            data += read_all(self.sock)
        except OSError:
            pass
        self.answer, self.elapsed = data, time.monotonic() - start
        self.sock.close()


def test_trickling_clients_do_not_block_others_and_get_408(server):
    slow_headers = [Trickler(server.rest_port, b"POST /v1/models/iris:predict HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200)
                    for _ in range(20)]
    slow_bodies = [Trickler(server.rest_port, request_bytes("POST", "/v1/models/iris:predict")
                            .replace(b"Content-Length: 0", f"Content-Length: {len(PREDICT_BODY)}".encode()),
                            PREDICT_BODY * 10) for _ in range(20)]
    for t in slow_headers + slow_bodies:
        t.start()
    time.sleep(0.5)
    for _ in range(5):  # everyone else is served meanwhile, REST and metrics
        assert get_status(server.rest_port)[0] == 200
        with connect(server.rest_port) as s:
            s.sendall(request_bytes("GET", "/monitoring/prometheus/metrics"))
            assert read_response(s)[0] == 200
    for t in slow_headers + slow_bodies:
        t.join(30)
        assert t.answer is not None and t.answer.startswith(b"HTTP/1.1 408 "), t.answer
        assert t.elapsed < DEADLINE_S + 3
    assert b"Timed out reading the request headers" in slow_headers[0].answer
    assert b"Timed out reading the request body" in slow_bodies[0].answer


def test_content_length_larger_than_the_body_ends_in_408_within_the_deadline(server):
    with connect(server.rest_port) as s:
        start = time.monotonic()
        s.sendall(request_bytes("POST", "/v1/models/iris:predict", PREDICT_BODY)
                  .replace(f"Content-Length: {len(PREDICT_BODY)}".encode(), b"Content-Length: 100000"))
        status, headers, body, _ = read_response(s)
        assert time.monotonic() - start < DEADLINE_S + 2
    assert status == 408 and headers["connection"].lower() == "close"
    assert json.loads(body) == {"error": f"Timed out reading the request body ({DEADLINE_S:g} s)"}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_body_is_never_a_second_request(server, method):
    """The body is a whole request of its own; it must not be answered: one answer per request sent."""
    smuggled = request_bytes("GET", "/v1/models/smuggled")
    with connect(server.rest_port) as s:
        s.sendall(request_bytes(method, "/v1/models/iris", smuggled) +
                  request_bytes("GET", "/v1/models/iris", extra="Connection: close\r\n"))
        data = read_all(s)
    assert data.count(b"HTTP/1.1 ") == 2 and b"smuggled" not in data, data
    status, _, body, rest = read_response(socket_from(data))
    if method == "GET":
        assert status == 200 and "model_version_status" in json.loads(body)
    else:
        assert status == 400 and json.loads(body) == {"error": f"Malformed request: {method} /v1/models/iris"}
    assert read_response(socket_from(rest))[0] == 200


class socket_from:  # noqa: N801 - a bytes buffer standing in for a socket in read_response
    def __init__(self, data: bytes):
        self.data = data

    def recv(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


@pytest.mark.parametrize("body, where", [
    (b'{"signature_name": "' + c.RAW_SIGNATURE.encode() + b'", "instances": [{"sepal_length": 1' + b"0" * 5000 +
     b', "sepal_width": 1.0, "petal_length": 1.0, "petal_width": 1.0}]}', ":predict"),
    (b'{"examples": [{"sepal_length": ' + b"9" * 5001 + b"}]}", ":classify"),
    (b'{"examples": [{"sepal_length": 18446744073709551615}]}', ":classify"),
    (b'{"examples": [{"sepal_length": null}]}', ":classify"),
])
def test_bad_numbers_are_400_without_python_texts(server, body, where):
    with connect(server.rest_port) as s:
        s.sendall(request_bytes("POST", "/v1/models/iris" + where, body))
        status, headers, answer, _ = read_response(s)
    error = json.loads(answer)["error"]
    assert status == 400 and headers["content-type"].startswith("application/json"), answer
    for python in ("Exceeds the limit", "Error:", "NoneType", "Traceback", "ValueError"):
        assert python not in error, error


def test_malformed_http_is_a_json_400(server):
    with connect(server.rest_port) as s:
        s.sendall(b"GET /v1/models/iris HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        status, _, answer, _ = read_response(s)
    assert status == 400 and json.loads(answer)["error"].startswith("Malformed HTTP request")


def test_responses_arrive_in_one_read_on_a_kept_alive_connection(server):
    """Headers and body leave in one write on a TCP_NODELAY socket: the first read holds the whole answer (a
    split write meets the client's delayed ACK, ~40 ms per request)."""
    with connect(server.rest_port) as s:
        for body in (b"", PREDICT_BODY, PREDICT_BODY):
            s.sendall(request_bytes("POST" if body else "GET",
                                    "/v1/models/iris:predict" if body else "/v1/models/iris", body))
            first = s.recv(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            assert first.startswith(b"HTTP/1.1 200 ") and len(rest) == length, first


@pytest.mark.parametrize("batching", [False, True])
def test_sigterm_drains_both_transports_and_refuses_new_connections(model, tmp_path, batching):
    """Under load on both transports (with batching, every request waits 1 s in the batch queue), every request
    sent before SIGTERM completes, none is cancelled; new connections are refused at once; the process exits 0
    within --drain_seconds."""
    h.copy_version(model, tmp_path / "iris", 1)
    (tmp_path / "batching.config").write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 1000000 }")
    extra = ["--enable_batching", f"--batching_parameters_file={tmp_path / 'batching.config'}"] if batching else []
    proc = h.ServerProcess([f"--model_base_path={tmp_path / 'iris'}", "--file_system_poll_wait_seconds=0",
                            "--drain_seconds=20", *extra], tmp_path / "server.log").wait_ready()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    example = example_pb2.Example()
    for k, v in ROW.items():
        example.features.feature[k].float_list.value.append(v)
    request.inputs[c.EXAMPLES_INPUT].dtype = 7  # DT_STRING
    request.inputs[c.EXAMPLES_INPUT].tensor_shape.dim.add().size = 1
    request.inputs[c.EXAMPLES_INPUT].string_val.append(example.SerializeToString())
    outcomes: List[Tuple[float, str]] = []  # (when the request was sent, outcome)
    signalled: List[float] = []

    def grpc_client() -> None:
        with grpc.insecure_channel(proc.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while True:
                sent = time.monotonic()
                try:
                    stub.Predict(request, timeout=30)
                    outcomes.append((sent, "OK"))
                except grpc.RpcError as e:  # UNAVAILABLE: not received; anything else lost a received call
                    outcomes.append((sent, "refused" if e.code() == grpc.StatusCode.UNAVAILABLE else e.code().name))
                    return

    def rest_client() -> None:
        while True:
            sent = time.monotonic()
            try:
                s = connect(proc.rest_port)
            except ConnectionRefusedError:
                outcomes.append((sent, "refused"))
                return
            with s:
                try:
                    s.sendall(request_bytes("POST", "/v1/models/iris:predict", PREDICT_BODY))
                    status = read_response(s)[0]
                    outcomes.append((sent, "OK" if status == 200 else str(status)))
                except OSError as e:
                    outcomes.append((sent, type(e).__name__))
    threads = [threading.Thread(target=f, daemon=True) for f in (grpc_client,) * 6 + (rest_client,) * 6]
    try:
        for t in threads:
            t.start()
        time.sleep(3)
        proc.terminate()
        signalled.append(time.monotonic())
        time.sleep(0.1)
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError):  # a new connection is refused at once, not left hanging
            connect(proc.rest_port, timeout=5).close()
        assert time.monotonic() - start < 0.5
        for t in threads:
            t.join(30)
        assert proc.proc.wait(25) == 0, proc.log()
    finally:
        proc.stop()
    timeline = sorted((round(sent - signalled[0], 4), o) for sent, o in outcomes)
    # sent before the signal: received, so completed; sent after it: completed or refused, and refused once the
    # gRPC listener closed too (a call sent in the 0.25 s settle window may end CANCELLED: not received before)
    assert {o for t, o in timeline if t < 0} == {"OK"}, timeline
    assert {o for t, o in timeline if t >= 0} <= {"OK", "refused", "CANCELLED"}, timeline
    assert {o for t, o in timeline if t > 0.5} <= {"refused"}, timeline
    assert "refused" in {o for t, o in timeline} and "Server stopped" in proc.log()
    if batching:  # each client had a request waiting in the batch queue at the signal
        assert sum(sent < signalled[0] < sent + 1 for sent, o in outcomes) >= 12


def test_expect_100_continue_is_answered(server):
    """curl sends `Expect: 100-continue` with bodies over 1 KiB and waits a second for the interim answer."""
    with connect(server.rest_port) as s:
        s.sendall(request_bytes("POST", "/v1/models/iris:predict", extra="Expect: 100-continue\r\n")
                  .replace(b"Content-Length: 0", f"Content-Length: {len(PREDICT_BODY)}".encode()))
        s.settimeout(0.9)
        interim = s.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.settimeout(30)
        s.sendall(PREDICT_BODY)
        status, _, body, _ = read_response(s)
    assert status == 200 and json.loads(body)["predictions"][0][c.PREDICTED_OUTPUT] == "setosa"
