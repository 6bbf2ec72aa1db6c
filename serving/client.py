"""`iris-tfx predict` and IrisClient: query a TF Serving-compatible server (ours or the real one) over gRPC.

Needs no TensorFlow: tensorflow_serving.apis' modules import tensorflow.core.*_pb2, and importing anything in the
tensorflow package runs tensorflow/__init__.py (~5 s, CUDA plugin errors on stderr). The client reads the same
installed messages' descriptors without running those modules (TFServingApi) and makes its own classes from them.
"""
import argparse
import ast
import csv
import functools
import importlib
import importlib.machinery
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from components import constants as c
from serving import defaults
from components.schema_bounds import Bounds, Violation

Row = Union[Mapping[str, float], Sequence[float]]
CHUNK_ROWS = 1000  # rows per Predict request when a CSV file has many
REPO_SCHEMA = pathlib.Path(__file__).resolve().parents[1] / c.DEFAULT_SCHEMA  # --schema's default, run elsewhere
# The generated modules holding TF Serving's services (and, through their imports, every message they use).
SERVICE_MODULES = ("tensorflow_serving.apis.prediction_service_pb2", "tensorflow_serving.apis.model_service_pb2",
                   "tensorflow.core.example.example_pb2")
# numpy types of the tensor dtypes the model answers with (TF Serving never puts strings in tensor_content).
NUMPY_TYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_STRING": object}


class ServingClientError(Exception):
    """A failed query, with a message meant for the user (server down, model missing, bad input...)."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.code = code


# --- TF Serving's API, without running TensorFlow ------------------------------------------------------------

def _module_source(module: str) -> pathlib.Path:
    """The source file of an installed module, found without importing (so running) the packages above it."""
    spec, path = None, None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None:
            raise ImportError(f"{module} is not installed (tensorflow-serving-api and tensorflow provide it)")
        path = spec.submodule_search_locations
    return pathlib.Path(spec.origin)


def _generated_module(module: str) -> Tuple[bytes, List[str]]:
    """A protoc-generated module's serialized FileDescriptorProto and the *_pb2 modules it imports, read from
    its source. Written here because protobuf has no reader for them: they are meant to be executed."""
    tree = ast.parse(_module_source(module).read_bytes())
    imports = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            imports += [node.module] if node.module.endswith("_pb2") else [
                f"{node.module}.{alias.name}" for alias in node.names if alias.name.endswith("_pb2")]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name == "AddSerializedFile":  # protoc >= 3.20: DESCRIPTOR = pool.AddSerializedFile(b'...')
            return node.args[0].value, imports
        if name == "FileDescriptor":  # older protoc: FileDescriptor(..., serialized_pb=b'...' or _b('...'))
            value = next(k.value for k in node.keywords if k.arg == "serialized_pb")
            return (value.value if isinstance(value, ast.Constant) else value.args[0].value.encode("latin1")), imports
    raise ImportError(f"{module}: no serialized descriptor found in {_module_source(module)}")


class TFServingApi:
    """TF Serving's messages and RPC methods, made from the installed generated modules' descriptors in a
    descriptor pool of its own: TensorFlow's default pool and classes stay untouched if it is imported too."""

    def __init__(self, modules: Sequence[str] = SERVICE_MODULES):
        self.pool = descriptor_pool.DescriptorPool()
        self._factory = message_factory.MessageFactory(self.pool)
        self._added: set = set()
        for module in modules:
            self._add(module)

    def _add(self, module: str) -> None:
        """Adds a module's file to the pool after the files it depends on."""
        if module in self._added:
            return
        self._added.add(module)
        if module.startswith("google.protobuf."):  # protobuf's well-known types: real modules, no TensorFlow
            self.pool.AddSerializedFile(importlib.import_module(module).DESCRIPTOR.serialized_pb)
            return
        serialized, imports = _generated_module(module)
        for dependency in imports:
            self._add(dependency)
        self.pool.AddSerializedFile(serialized)

    def message(self, full_name: str) -> type:
        """The class of a message, e.g. 'tensorflow.serving.PredictRequest'."""
        return self._factory.GetPrototype(self.pool.FindMessageTypeByName(full_name))

    def dtype(self, name: str) -> int:
        """A tensorflow.DataType value by name, e.g. 'DT_STRING'."""
        return self.pool.FindEnumTypeByName("tensorflow.DataType").values_by_name[name].number

    def method(self, channel: grpc.Channel, service: str, name: str) -> grpc.UnaryUnaryMultiCallable:
        """A callable for one RPC, as a generated stub has it: request message in, response message out."""
        method = self.pool.FindServiceByName(service).FindMethodByName(name)
        return channel.unary_unary(f"/{service}/{name}",
                                   request_serializer=self._factory.GetPrototype(method.input_type).SerializeToString,
                                   response_deserializer=self._factory.GetPrototype(method.output_type).FromString)


@functools.lru_cache(maxsize=None)
def tf_serving_api() -> TFServingApi:
    """The one TFServingApi of this process (built on first use: ~40 ms)."""
    return TFServingApi()


def tensor_to_array(tensor: Message) -> np.ndarray:
    """A float, double or string TensorProto as an array, read like tf.make_ndarray (which needs TensorFlow):
    tensor_content, one typed value per element, or TF's shorthand of fewer values (the last one repeated)."""
    dtype = tensor.DESCRIPTOR.fields_by_name["dtype"].enum_type.values_by_number.get(tensor.dtype)
    dtype_name = dtype.name if dtype is not None else f"dtype {tensor.dtype}"
    if dtype_name not in NUMPY_TYPES:
        raise ServingClientError(f"the server answered a {dtype_name} tensor; expected {', '.join(NUMPY_TYPES)}")
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    numpy_type = NUMPY_TYPES[dtype_name]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, numpy_type).reshape(shape)
    values = list({"DT_FLOAT": tensor.float_val, "DT_DOUBLE": tensor.double_val,
                   "DT_STRING": tensor.string_val}[dtype_name])
    size = math.prod(shape)
    if values and len(values) < size:
        values += values[-1:] * (size - len(values))
    return np.array(values, dtype=numpy_type).reshape(shape)


# --- the client ---------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """One row's answer: the most probable species and each species' probability."""
    species: str
    probabilities: Dict[str, float]


class IrisClient:
    """Python API: `IrisClient("localhost:8500").predict([{"sepal_length": 5.1, ...}])`. Messages are TF Serving's
    (same fields and wire format) but classes of the client's own descriptor pool (see TFServingApi)."""

    def __init__(self, target: str = f"localhost:{defaults.GRPC_PORT}", model_name: str = defaults.MODEL_NAME,
                 version: Optional[int] = None, label: Optional[str] = None, timeout: float = 10.0):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        self.target, self.model_name, self.version, self.label, self.timeout = (
            target, model_name, version, label, timeout)
        self.api = tf_serving_api()
        self._channel = grpc.insecure_channel(target)
        self._predict = self.api.method(self._channel, "tensorflow.serving.PredictionService", "Predict")
        self._metadata = self.api.method(self._channel, "tensorflow.serving.PredictionService", "GetModelMetadata")
        self._status = self.api.method(self._channel, "tensorflow.serving.ModelService", "GetModelStatus")

    def close(self) -> None:
        """Closes the gRPC channel."""
        self._channel.close()

    def __enter__(self) -> "IrisClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, spec: Message, signature: str = "") -> None:
        spec.name = self.model_name
        spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label:
            spec.version_label = self.label

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: Message) -> Message:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: grpc.RpcError) -> ServingClientError:
        code, details = e.code(), e.details()
        which = f"model '{self.model_name}'" + (f" version {self.version}" if self.version is not None else "") + (
            f" label '{self.label}'" if self.label else "")
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServingClientError(f"cannot reach a model server at {self.target}: is it running? ({details})",
                                      code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServingClientError(f"no answer from {self.target} within {self.timeout:g}s", code)
        if code == grpc.StatusCode.NOT_FOUND:
            return ServingClientError(f"{which} is not served by {self.target}: {details}", code)
        return ServingClientError(f"{code.name} from {self.target} for {which}: {details}", code)

    def predict_requests(self, rows: Iterable[Row]) -> List[Message]:
        """PredictRequests of CHUNK_ROWS rows each, as serialized tf.Examples in the string tensor that
        tf.make_tensor_proto(examples, tf.string) makes."""
        example_class = self.api.message("tensorflow.Example")
        examples = [_example(example_class, row).SerializeToString() for row in rows]
        requests = []
        for start in range(0, len(examples), CHUNK_ROWS):
            request = self.api.message("tensorflow.serving.PredictRequest")()
            self._spec(request.model_spec, c.SERVING_SIGNATURE)
            tensor = request.inputs[c.EXAMPLES_INPUT]
            tensor.dtype = self.api.dtype("DT_STRING")
            tensor.tensor_shape.dim.add().size = len(examples[start:start + CHUNK_ROWS])
            tensor.string_val.extend(examples[start:start + CHUNK_ROWS])
            requests.append(request)
        return requests

    def predict(self, rows: Iterable[Row]) -> List[Prediction]:
        """Species and class probabilities for each row (feature dict, or the four values in FEATURE_KEYS order)."""
        results: List[Prediction] = []
        for request in self.predict_requests(rows):
            response = self._call(self._predict, request)
            try:
                outputs = [tensor_to_array(response.outputs[key])
                           for key in (c.PROBABILITIES_OUTPUT, c.CLASSES_OUTPUT, c.PREDICTED_OUTPUT)]
            except ValueError as e:  # a shape that does not match the values
                raise ServingClientError(f"{self.target} answered a malformed tensor: {e}") from None
            for p, names, s in zip(*outputs):
                results.append(Prediction(s.decode(), {n.decode(): float(v) for n, v in zip(names, p)}))
        return results

    def status(self) -> Message:
        """The model's GetModelStatusResponse (tensorflow.serving)."""
        request = self.api.message("tensorflow.serving.GetModelStatusRequest")()
        self._spec(request.model_spec)
        return self._call(self._status, request)

    def metadata(self) -> Message:
        """The model's GetModelMetadataResponse with its signature_def (tensorflow.serving)."""
        request = self.api.message("tensorflow.serving.GetModelMetadataRequest")(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        return self._call(self._metadata, request)


def _example(example_class: type, row: Row) -> Message:
    """One row as a tf.Example of the four float features."""
    example = example_class()
    for key, value in zip(c.FEATURE_KEYS, row_values(row)):
        example.features.feature[key].float_list.value.append(value)
    return example


def row_values(row: Row) -> List[float]:
    """A row's four values in FEATURE_KEYS order, as floats; ServingClientError naming a missing or bad one."""
    if isinstance(row, Mapping):
        missing = [k for k in c.FEATURE_KEYS if k not in row]
        if missing:
            raise ServingClientError(f"row {dict(row)} lacks {', '.join(missing)}")
        values = [row[k] for k in c.FEATURE_KEYS]
    else:
        values = list(row)
        if len(values) != len(c.FEATURE_KEYS):
            raise ServingClientError(f"expected {len(c.FEATURE_KEYS)} values ({', '.join(c.FEATURE_KEYS)}), "
                                     f"got {len(values)}: {values}")
    numbers = []
    for key, value in zip(c.FEATURE_KEYS, values):
        try:
            numbers.append(float(value))
        except (TypeError, ValueError):
            raise ServingClientError(f"{key} must be a number, got {value!r}") from None
    return numbers


def out_of_bounds(bounds: Bounds, rows: Sequence[Row]) -> Dict[int, List[Violation]]:
    """The values outside the schema's bounds (SERVING environment), by row index (from 0)."""
    if not rows or not bounds:
        return {}
    matrix = np.array([row_values(row) for row in rows], dtype=np.float64)
    found: Dict[int, List[Violation]] = {}
    for v in bounds.check_columns({key: matrix[:, j] for j, key in enumerate(c.FEATURE_KEYS)}):
        found.setdefault(v.example, []).append(v)
    return found


def read_bounds(path: Optional[str]) -> Optional[Bounds]:
    """The bounds of --schema; by default those of the project's schema (in the working directory, else beside
    this package), or None when there is none."""
    if path is not None:
        return Bounds.from_file(path)
    for candidate in (pathlib.Path(c.DEFAULT_SCHEMA), REPO_SCHEMA):
        if candidate.is_file():
            return Bounds.from_file(str(candidate))
    return None


def read_csv(path: str) -> List[Dict[str, str]]:
    """Rows of a CSV file with a header naming the four features (other columns are ignored)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [k for k in c.FEATURE_KEYS if k not in (reader.fieldnames or [])]
        if missing:
            raise ServingClientError(f"{path}: header lacks {', '.join(missing)}")
        return [{k: row[k] for k in c.FEATURE_KEYS} for row in reader]


def _rows_from_values(values: List[str]) -> List[List[str]]:
    flat = [v for item in values for v in item.replace(",", " ").split()]
    n = len(c.FEATURE_KEYS)
    if len(flat) % n:
        raise ServingClientError(f"give {n} values per row ({' '.join(c.FEATURE_KEYS)}); got {len(flat)} values")
    return [flat[i:i + n] for i in range(0, len(flat), n)]


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `iris-tfx predict`; returns the process exit code."""
    p = argparse.ArgumentParser(prog="iris-tfx predict", description=(
        "Classify iris measurements with a TensorFlow Serving-compatible server over gRPC (iris-tfx serve or "
        "tensorflow_model_server); prints one line per row: species and each species' probability."),
        epilog="example: iris-tfx predict 5.1 3.5 1.4 0.2  (exit codes: 0 answered, 1 failed, 2 bad command line)")
    p.add_argument("values", nargs="*", help=f"measurements in cm, {len(c.FEATURE_KEYS)} per row: "
                                             f"{' '.join(c.FEATURE_KEYS)} (commas or spaces)")
    p.add_argument("--csv", help="CSV file with a header naming the features (other columns are ignored); "
                                 "one prediction per row, after those given as values")
    p.add_argument("--server", default=f"localhost:{defaults.GRPC_PORT}",
                   help="host:port of the server's gRPC API (default: %(default)s)")
    p.add_argument("--model", default=defaults.MODEL_NAME, help="model name on the server (default: %(default)s)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="model version to query (default: the server's latest)")
    which.add_argument("--label", help="version label to query, as the server's model config assigns "
                                       "(e.g. stable, canary; default: none, the latest version)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait per request (default: %(default)s)")
    p.add_argument("--schema", help="schema whose bounds (SERVING environment) rows are checked against: a warning "
                                    f"line under each value outside them (default: {c.DEFAULT_SCHEMA})")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.values and not args.csv:
        p.error("give measurements or --csv FILE")
    try:
        rows: List[Row] = _rows_from_values(args.values) if args.values else []
        if args.csv:
            rows += read_csv(args.csv)
        bounds = read_bounds(args.schema)
        warnings = out_of_bounds(bounds, rows) if bounds is not None else {}
        with IrisClient(args.server, args.model, args.version, args.label, args.timeout) as client:
            predictions = client.predict(rows)
    except ServingClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # an unreadable --csv or --schema file
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = list(predictions[0].probabilities) if predictions else list(c.CLASS_NAMES)
    print("row\tspecies\t" + "\t".join(names))
    for i, pred in enumerate(predictions, 1):
        print(f"{i}\t{pred.species}\t" + "\t".join(f"{pred.probabilities[n]:.4f}" for n in names))
        for v in warnings.get(i - 1, ()):
            print(f"\twarning: {v.message(with_example=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
