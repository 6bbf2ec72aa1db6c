"""REST API of TF Serving (model_servers/http_rest_api_handler.cc, util/json_tensor.cc) and the Prometheus
endpoint, on the stdlib ThreadingHTTPServer (no HTTP framework is a dependency of this project)."""
import base64
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_pb2, regression_pb2)

from serving import inference
from serving.errors import ServingError, invalid
from serving.grpc_service import call
from serving.manager import ModelManager
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from serving.tensors import columns_to_json, json_to_ndarray, rows_to_json

log = logging.getLogger(__name__)
_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_RE = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
DISCARD_LIMIT = 1 << 30  # an oversized body is read and dropped up to this size, then the connection is closed
STATUS_RE = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version:
        spec.version.value = int(version)
    elif label:
        spec.version_label = label
    return spec


def _parse(body: bytes) -> Dict[str, Any]:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
    except json.JSONDecodeError as e:
        raise invalid(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: document nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid("JSON Parse error: Is not object")
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' key must be a string value.")
    return doc


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


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
        columns: Dict[str, list] = {n: [] for n in names}
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or _is_b64(row):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            if set(row) != set(names):
                raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                              f"{json.dumps(row)} keys must be equal to: {','.join(names)}")
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
        if isinstance(v, bool) or (isinstance(v, int) and not isinstance(v, bool)):
            kind, v = "int64_list", int(v)
        elif isinstance(v, float):
            kind = "float_list"
        elif isinstance(v, str):
            kind, v = "bytes_list", v.encode("utf-8")
        elif _is_b64(v):
            kind, v = "bytes_list", base64.b64decode(v["b64"])
        else:
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {type(v).__name__}")
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {current.split('_')[0]}")
        getattr(feature, kind).value.append(v)


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {type(value).__name__}")
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


class RestServer(ThreadingHTTPServer):
    """HTTP/1.1 server; at most `max_active` requests run at once; shutdown() waits for in-flight ones."""
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], api: RestApi, metrics: Metrics, metrics_path: Optional[str],
                 max_body: int, max_active: int, timeout: Optional[float] = None):
        self.api, self.metrics, self.metrics_path, self.max_body = api, metrics, metrics_path, max_body
        self.slots = threading.BoundedSemaphore(max(1, max_active))
        self.active = 0
        self.active_lock = threading.Condition()
        self.draining = False
        # Socket timeout per connection: idle or trickling clients cannot hold a thread forever.
        super().__init__(address, type("_Handler", (_Handler,), {"timeout": timeout}))

    def drain(self, timeout: float) -> None:
        self.draining = True
        self.shutdown()
        deadline = time.monotonic() + timeout
        with self.active_lock:
            while self.active and time.monotonic() < deadline:
                self.active_lock.wait(deadline - time.monotonic())
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RestServer

    def log_message(self, fmt: str, *args: Any) -> None:  # access log at debug level only
        log.debug("%s - %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, indent=None, separators=(",", ":")).encode())

    def _serve(self, method: str) -> None:
        with self.server.active_lock:
            self.server.active += 1
        try:
            with self.server.slots:
                self._dispatch(method)
        finally:
            with self.server.active_lock:
                self.server.active -= 1
                self.server.active_lock.notify_all()

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        body = b""
        if method == "POST":
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                return self._json(411, {"error": "Content-Length is required"})
            if int(length) > self.server.max_body:
                self.close_connection = True
                self._discard(int(length))  # in small chunks, never held: lets the client read the answer
                return self._json(413, {"error": f"Request body of {length} bytes exceeds the limit of "
                                                 f"{self.server.max_body} bytes"})
            body = self.rfile.read(int(length))
        if method == "GET" and self.server.metrics_path and path == self.server.metrics_path:
            return self._send(200, self.server.metrics.exposition(), METRICS_CONTENT_TYPE)
        if not path.lower().startswith("/v1/"):
            return self._json(404, {"error": f"Not found: {method} {path}"})
        status, doc = self.server.api.handle(method, path, body)
        self._json(status, doc)

    def _discard(self, length: int) -> None:
        remaining = min(length, DISCARD_LIMIT)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

