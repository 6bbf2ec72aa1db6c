"""REST API of TF Serving (model_servers/http_rest_api_handler.cc, util/json_tensor.cc) and the Prometheus
endpoint, on aiohttp's low-level HTTP server (asyncio, C llhttp parser) with orjson (JSON parsing and writing
in C, numpy arrays written directly): maintained, and 3-4x less CPU per request than the stdlib equivalents."""
import asyncio
import base64
import logging
import re
import socket
from concurrent.futures import Executor
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import orjson
from aiohttp import web, web_protocol
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2, regression_pb2)

from serving import inference
from serving.errors import ServingError, invalid
from serving.grpc_service import call
from serving.manager import ModelManager
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from serving.tensors import columns_to_json, json_column, json_to_ndarray, rows_to_json

log = logging.getLogger(__name__)
_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_RE = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_RE = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version:
        spec.version.value = int(version)
    elif label:
        spec.version_label = label
    return spec


def _parse(body: bytes) -> Dict[str, Any]:
    """The request's JSON object; orjson refuses numbers beyond a double (e.g. a 5001-digit integer), invalid
    UTF-8 and nesting deeper than 1024, each with its offset."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(doc, dict):
        raise invalid("JSON Parse error: Is not object")
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' key must be a string value.")
    return doc


def _json_type(value: Any) -> str:
    """A JSON value's type as JSON names it (never a Python class name)."""
    return {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _scalar_columns(rows: List[Any], names: List[str], infos) -> Optional[Dict[str, np.ndarray]]:
    """The row format's common case (every row an object of the same scalar inputs) as one array per input, built
    from a column of values at once; None for anything else, which the per-element path decodes or explains."""
    try:  # a list, a string or an object missing a name fails here; extra names fail the length check
        columns = {n: [row[n] for row in rows] for n in names}
    except (KeyError, TypeError, IndexError):
        return None
    if set(map(len, rows)) != {len(names)}:
        return None
    inputs = {}
    for n in names:
        column = json_column(columns[n], infos[n].dtype)
        if column is None:
            return None
        inputs[n] = column
    return inputs


def predict_inputs(doc: Dict[str, Any], infos) -> Tuple[Dict[str, np.ndarray], bool]:
    """Tensors from the row ('instances') or columnar ('inputs') format; returns (inputs, is_row_format)."""
    if "instances" in doc and "inputs" in doc:
        raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    names = sorted(infos)
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list):
            raise invalid("Excepting 'instances' to be an list/array")
        if not rows:
            raise invalid("No values in 'instances' array")
        if not (isinstance(rows[0], dict) and not _is_b64(rows[0])):
            if len(names) > 1:
                raise invalid("instances is a plain list, but expecting list of objects as multiple input "
                              "tensors required as per tensorinfo_map")
            return {names[0]: json_to_ndarray(rows, infos[names[0]].dtype)}, True
        fast = _scalar_columns(rows, names, infos)
        if fast is not None:
            return fast, True
        columns: Dict[str, list] = {n: [] for n in names}
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or _is_b64(row):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            if set(row) != set(names):
                raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                              f"{orjson.dumps(row).decode()} keys must be equal to: {','.join(names)}")
            for n in names:
                try:
                    columns[n].append(json_to_ndarray(row[n], infos[n].dtype))
                except ServingError as e:
                    raise invalid(f"Failed to process element: {i} key: {n} of 'instances' list. "
                                  f"Error: {e.message}") from None
        inputs = {}
        for n, items in columns.items():
            if any(a.shape != items[0].shape for a in items):
                bad = next(a for a in items if a.shape != items[0].shape)
                raise invalid(f"Expecting tensor size: {items[0].size} but got: {bad.size}"
                              if bad.size != items[0].size else
                              f"Expecting shape {list(items[0].shape)} but got: {list(bad.shape)}")
            inputs[n] = np.stack(items)
        return inputs, True
    if "inputs" in doc:
        value = doc["inputs"]
        if not isinstance(value, dict) or _is_b64(value):
            if len(names) > 1:
                raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                              "required as per tensorinfo_map")
            return {names[0]: json_to_ndarray(value, infos[names[0]].dtype)}, False
        inputs = {}
        for n in names:
            if n not in value:
                raise invalid(f"Missing named input: {n} in 'inputs' object.")
            inputs[n] = json_to_ndarray(value[n], infos[n].dtype)
        return inputs, False
    raise invalid("Missing 'inputs' or 'instances' key")


def _feature(name: str, value: Any, feature: feature_pb2.Feature) -> None:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, int):  # bool too, as TF Serving
            if not -(1 << 63) <= v < (1 << 63):
                raise invalid(f"Feature: {name} has an integer out of the int64 range")
            kind, v = "int64_list", int(v)
        elif isinstance(v, float):
            kind = "float_list"
        elif isinstance(v, str):
            kind, v = "bytes_list", v.encode("utf-8")
        elif _is_b64(v):
            kind, v = "bytes_list", base64.b64decode(v["b64"])
        else:
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {current.split('_')[0]}")
        getattr(feature, kind).value.append(v)


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        _feature(name, content, example.features.feature[name])
    return example


def fill_examples_request(doc: Dict[str, Any], request, method: str) -> None:
    request.model_spec.signature_name = doc.get("signature_name", "")
    if "examples" not in doc:
        raise invalid(f"When method is {method}, key 'examples' is expected and was not found")
    if not isinstance(doc["examples"], list):
        raise invalid("Expecting 'examples' value to be an list/array")
    if not doc["examples"]:
        raise invalid("'examples' value is an empty array")
    if "context" in doc:
        target = request.input.example_list_with_context
        target.context.CopyFrom(_example(doc["context"]))
    else:
        target = request.input.example_list
    target.examples.extend(_example(e) for e in doc["examples"])


class RestApi:
    """Routes one request to TF Serving's REST semantics; returns (HTTP status, JSON-able body)."""

    def __init__(self, manager: ModelManager, metrics: Metrics):
        self.manager, self.metrics = manager, metrics

    def handle(self, method: str, path: str, body: bytes) -> Tuple[int, Any]:
        try:
            return 200, self._route(method, path, body)
        except ServingError as e:
            return e.http_status, {"error": e.message}

    def _route(self, method: str, path: str, body: bytes) -> Any:
        match = PREDICT_RE.fullmatch(path) if method == "POST" else None
        if match:
            name, version, label, verb = match.groups()
            spec = _model_spec(name, version, label)
            return getattr(self, "_" + verb.lower())(spec, body)
        match = STATUS_RE.fullmatch(path) if method == "GET" else None
        if match:
            name, version, label, meta = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            spec = _model_spec(name, version, label)
            if meta:
                request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec,
                                                                         metadata_field=["signature_def"])
                response = call(self.manager, self.metrics, "get_model_metadata", "rest", request, inference.metadata)
                return {"model_spec": _to_json(response.model_spec),
                        "metadata": {"signature_def": _to_json(_signature_map(response))}}
            return _to_json(self.manager.status(spec))
        raise invalid(f"Malformed request: {method} {path}")

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        doc: Dict[str, Any] = {}

        def parse() -> None:
            doc.update(_parse(body))
            spec.signature_name = doc.get("signature_name", "")

        def run(servable, _request) -> Any:
            name = spec.signature_name or inference.DEFAULT_SIGNATURE
            if name not in servable.signatures:
                raise invalid(f'Serving signature name: "{name}" not found in signature def')
            inputs, rows = predict_inputs(doc, servable.signatures[name].inputs)
            inference.check_cost(sum(a.size for a in inputs.values()), 0, self.manager.max_request_elements,
                                 self.manager.max_request_bytes)  # JSON has no shorthand: bytes bound the decoding
            outputs = inference.run_predict(servable, name, inputs, [])
            return {"predictions": rows_to_json(outputs)} if rows else {"outputs": columns_to_json(outputs)}
        return call(self.manager, self.metrics, "predict", "rest", None, run, spec, parse)

    def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        response = call(self.manager, self.metrics, "classify", "rest", request, inference.classify,
                        prepare=lambda: fill_examples_request(_parse(body), request, "classify"))
        return {"results": [[[c.label, c.score] for c in row.classes]
                            for row in response.result.classifications]}

    def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        request = regression_pb2.RegressionRequest(model_spec=spec)
        response = call(self.manager, self.metrics, "regress", "rest", request, inference.regress,
                        prepare=lambda: fill_examples_request(_parse(body), request, "regress"))
        return {"results": [r.value for r in response.result.regressions]}


def _to_json(message) -> Dict[str, Any]:
    """Proto JSON as TF Serving prints it: proto field names, default values included."""
    return json_format.MessageToDict(message, including_default_value_fields=True, preserving_proto_field_name=True)


def _signature_map(response: get_model_metadata_pb2.GetModelMetadataResponse):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return signature_map


def _json_response(status: int, doc: Any, close: bool = False) -> web.Response:
    response = web.Response(status=status, body=orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
                            content_type="application/json")
    if close:
        response.force_close()
    return response


def _error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for answers written outside a request."""
    body = orjson.dumps({"error": message})
    reason = {400: "Bad Request", 408: "Request Timeout"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


class _Connection(web_protocol.RequestHandler):
    """aiohttp's connection protocol with a header deadline that answers 408 (aiohttp only closes idle
    connections) and JSON error bodies for requests llhttp cannot parse; relies on aiohttp 3.14's internals
    (`_process_keepalive`, `_request_in_progress`, `_payload_parser`), pinned in requirements.lock."""

    def __init__(self, manager: web.Server, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.partial = False  # bytes of a request arrived and its headers are not complete yet

    def data_received(self, data: bytes) -> None:
        if data and not self._request_in_progress and self._payload_parser is None:
            self.partial = True
        super().data_received(data)

    def _process_keepalive(self) -> None:
        # The keep-alive timer runs from the connection's start and from each response to the next request's
        # headers; when it fires while a request's headers are still coming in, that client was too slow: 408.
        if self.partial and self.transport is not None and not self._request_in_progress and not self._force_close:
            now, close_time = self._loop.time(), self._next_keepalive_close_time
            if now >= close_time and self._waiter is not None and not self._waiter.done():
                self.transport.write(_error_bytes(408, "Timed out reading the request headers"))
        super()._process_keepalive()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        """TF Serving's {"error": ...} body instead of aiohttp's text, without tracebacks or class names."""
        if status == 500:
            log.error("REST request failed", exc_info=exc)
            text = "Internal error"
        else:
            text = f"Malformed HTTP request: {(message or getattr(exc, 'message', '') or '').splitlines()[0]}"
        return _json_response(status, {"error": text}, close=True)


class _WebServer(web.Server):
    """aiohttp's low-level server making `_Connection`s; requests may have bodies up to `max_body` bytes."""

    def __init__(self, handler, max_body: int, **kwargs: Any):
        super().__init__(handler, request_factory=self._request, **kwargs)
        self.max_body = max_body

    def _request(self, message, payload, protocol, writer, task) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop, client_max_size=self.max_body)

    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._loop, **self._kwargs)


class RestServer:
    """HTTP/1.1 REST server on the running event loop. Small requests run on the loop (a few hundred
    microseconds of CPU, no thread hop), requests with bodies over `inline_max_bytes` in `pool`, so they never
    stall the small ones of either transport. Each connection gets `timeout` seconds for a request's headers
    (from its first byte or the previous response) and `timeout` for its body, else 408; idle keep-alive
    connections close after `timeout`."""

    def __init__(self, api: RestApi, metrics: Metrics, metrics_path: Optional[str], max_body: int,
                 timeout: float, pool: Executor, inline_max_bytes: int):
        self.api, self.metrics, self.metrics_path, self.max_body = api, metrics, metrics_path, max_body
        self.timeout, self.pool, self.inline_max_bytes = timeout, pool, inline_max_bytes
        self.draining = False
        self._web: Optional[_WebServer] = None
        self._listener: Optional[asyncio.AbstractServer] = None
        self._socket: Optional[socket.socket] = None
        self._accepted: List[asyncio.Task] = []

    async def start(self, host: str, port: int, backlog: int) -> int:
        """Listen on host:port; returns the bound port."""
        self._web = _WebServer(self._handle, self.max_body, keepalive_timeout=self.timeout, access_log=None,
                               lingering_time=min(self.timeout, 10.0))
        # Our own listening socket, so that stop_listening() can take the connections the kernel already accepted.
        self._socket = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        self._socket.setblocking(False)
        self._listener = await asyncio.get_running_loop().create_server(self._web, sock=self._socket)
        return self._socket.getsockname()[1]

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused from now on; the ones the kernel already
        accepted (in the backlog) are served like the others."""
        if self._listener is None or self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            conn.setblocking(False)
            self._accepted.append(loop.create_task(loop.connect_accepted_socket(self._web, conn)))
        self._listener.close()

    async def drain(self, timeout: float) -> None:
        """Let every request already received finish (up to `timeout`), close idle connections, then all."""
        self.stop_listening()
        if self._web is None:
            return
        await asyncio.gather(*self._accepted, return_exceptions=True)
        if self._accepted:
            await asyncio.sleep(0.05)  # connections taken from the backlog: their request is on its way
        for _ in range(2):  # let the loop read requests already in the connections' socket buffers
            await asyncio.sleep(0)
        self._web.pre_shutdown()  # idle connections close now, busy ones after their response
        await self._web.shutdown(timeout)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request.protocol.partial = False
        try:
            if request.content_length is not None and request.content_length > self.max_body:
                return self._too_large(request.content_length)
            if request.body_exists and request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s for this
                request.writer.output_size = 0  # the response proper has not started (as aiohttp's web app does)
            # every method's body is read (never parsed as a next request), within the body deadline
            body = await asyncio.wait_for(request.read(), self.timeout) if request.body_exists else b""
        except asyncio.TimeoutError:
            return _json_response(408, {"error": f"Timed out reading the request body ({self.timeout:g} s)"},
                                  close=True)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        method, path = request.method, request.raw_path.split("?", 1)[0]
        if method == "GET" and self.metrics_path and path == self.metrics_path:
            response = web.Response(body=self.metrics.exposition())
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        elif not path.lower().startswith("/v1/"):
            response = _json_response(404, {"error": f"Not found: {method} {path}"})
        else:
            if len(body) <= self.inline_max_bytes:
                status, doc = self.api.handle(method, path, body)
            else:
                status, doc = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.api.handle, method, path, body)
            response = _json_response(status, doc)
        if self.draining:
            response.force_close()
        return response

    def _too_large(self, length: Optional[int]) -> web.Response:
        size = f"of {length} bytes " if length is not None else ""
        return _json_response(413, {"error": f"Request body {size}exceeds the limit of {self.max_body} bytes"},
                              close=True)
