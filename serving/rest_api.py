"""TF Serving's REST API as a handler of (method, path, body) -> (HTTP status, JSON-able answer), without any
HTTP server (model_servers/http_rest_api_handler.cc): routes, the JSON request formats into tensors and protos
(util/json_tensor.cc), and the answers, over the request handlers shared with gRPC."""
import base64
import logging
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import orjson
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, model_pb2, regression_pb2

from serving import inference
from serving.errors import ServingError, invalid
from serving.handlers import Handlers
from serving.tensors import columns_to_json, json_column, json_to_ndarray, rows_to_json

log = logging.getLogger(__name__)
ENTRYPOINT = "rest"  # the metrics' entrypoint label
_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_RE = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_RE = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
    """The ModelSpec of a URL's /v1/models/<name>[/versions/<v>|/labels/<l>]."""
    spec = model_pb2.ModelSpec(name=name)
    if version:
        spec.version.value = int(version)
    elif label:
        spec.version_label = label
    return spec


def parse_json_body(body: bytes) -> Dict[str, Any]:
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
    """TF Serving's {"b64": ...} object for binary strings."""
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
    """Append a JSON value (scalar or list) to a tf.Example feature, its list type set by the first value."""
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
    """A tf.Example from a JSON object of features."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        _feature(name, content, example.features.feature[name])
    return example


def fill_examples_request(doc: Dict[str, Any], request, method: str) -> None:
    """The body of :classify/:regress (examples, optional context) into a Classification/RegressionRequest."""
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

    def __init__(self, handlers: Handlers):
        self.handlers = handlers

    def handle(self, method: str, path: str, body: bytes) -> Tuple[int, Any]:
        """The answer to one request: 200 and its JSON, or the error's HTTP status and {"error": message}."""
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
                response = self.handlers.infer("get_model_metadata", ENTRYPOINT, request, inference.metadata)
                return {"model_spec": _to_json(response.model_spec),
                        "metadata": {"signature_def": _to_json(_signature_map(response))}}
            return _to_json(self.handlers.status(spec))
        raise invalid(f"Malformed request: {method} {path}")

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        doc: Dict[str, Any] = {}

        def parse() -> None:
            doc.update(parse_json_body(body))
            spec.signature_name = doc.get("signature_name", "")

        def run(servable, _request) -> Any:
            name = spec.signature_name or inference.DEFAULT_SIGNATURE
            if name not in servable.signatures:
                raise invalid(f'Serving signature name: "{name}" not found in signature def')
            inputs, rows = predict_inputs(doc, servable.signatures[name].inputs)
            # JSON has no repeat-the-last-value shorthand: its bytes bound the decoding, the elements are counted
            self.handlers.check_elements(sum(a.size for a in inputs.values()))
            outputs = inference.run_predict(servable, name, inputs, [])
            self.handlers.log_predict_arrays(spec, servable, inputs, outputs)
            return {"predictions": rows_to_json(outputs)} if rows else {"outputs": columns_to_json(outputs)}
        return self.handlers.infer("predict", ENTRYPOINT, None, run, spec, parse)

    def _classify(self, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        response = self.handlers.infer("classify", ENTRYPOINT, request, inference.classify,
                                       parse=lambda: fill_examples_request(parse_json_body(body), request, "classify"))
        return {"results": [[[c.label, c.score] for c in row.classes]
                            for row in response.result.classifications]}

    def _regress(self, spec: model_pb2.ModelSpec, body: bytes) -> Any:
        request = regression_pb2.RegressionRequest(model_spec=spec)
        response = self.handlers.infer("regress", ENTRYPOINT, request, inference.regress,
                                       parse=lambda: fill_examples_request(parse_json_body(body), request, "regress"))
        return {"results": [r.value for r in response.result.regressions]}


def _to_json(message) -> Dict[str, Any]:
    """Proto JSON as TF Serving prints it: proto field names, default values included."""
    return json_format.MessageToDict(message, including_default_value_fields=True, preserving_proto_field_name=True)


def _signature_map(response: get_model_metadata_pb2.GetModelMetadataResponse):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return signature_map
