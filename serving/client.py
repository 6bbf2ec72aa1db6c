"""`iris-tfx predict` and IrisClient: query a TF Serving-compatible server (ours or the real one) over gRPC."""
import argparse
import csv
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal

import grpc  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)

from components import constants as c  # noqa: E402
from serving import defaults  # noqa: E402

Row = Union[Mapping[str, float], Sequence[float]]
CHUNK_ROWS = 1000  # rows per Predict request when a CSV file has many


class ServingClientError(Exception):
    """A failed query, with a message meant for the user (server down, model missing, bad input...)."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.code = code


@dataclass
class Prediction:
    species: str
    probabilities: Dict[str, float]


class IrisClient:
    """Python API: `IrisClient("localhost:8500").predict([{"sepal_length": 5.1, ...}])`."""

    def __init__(self, target: str = f"localhost:{defaults.GRPC_PORT}", model_name: str = defaults.MODEL_NAME,
                 version: Optional[int] = None, label: Optional[str] = None, timeout: float = 10.0):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        self.target, self.model_name, self.version, self.label, self.timeout = (
            target, model_name, version, label, timeout)
        self._channel = grpc.insecure_channel(target)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "IrisClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, spec, signature: str = "") -> None:
        spec.name = self.model_name
        spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label:
            spec.version_label = self.label

    def _call(self, method, request):
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

    def predict(self, rows: Iterable[Row]) -> List[Prediction]:
        """Species and class probabilities for each row (feature dict, or the four values in FEATURE_KEYS order)."""
        import tensorflow as tf
        examples = [_example(row).SerializeToString() for row in rows]
        results: List[Prediction] = []
        for start in range(0, len(examples), CHUNK_ROWS):
            request = predict_pb2.PredictRequest()
            self._spec(request.model_spec, c.SERVING_SIGNATURE)
            request.inputs[c.EXAMPLES_INPUT].CopyFrom(
                tf.make_tensor_proto(examples[start:start + CHUNK_ROWS], dtype=tf.string))
            response = self._call(self._predict.Predict, request)
            probabilities = tf.make_ndarray(response.outputs[c.PROBABILITIES_OUTPUT])
            classes = tf.make_ndarray(response.outputs[c.CLASSES_OUTPUT])
            species = tf.make_ndarray(response.outputs[c.PREDICTED_OUTPUT])
            for p, names, s in zip(probabilities, classes, species):
                results.append(Prediction(s.decode(), {n.decode(): float(v) for n, v in zip(names, p)}))
        return results

    def status(self) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return self._call(self._models.GetModelStatus, request)

    def metadata(self) -> get_model_metadata_pb2.GetModelMetadataResponse:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        return self._call(self._predict.GetModelMetadata, request)


def _example(row: Row):
    from tensorflow.core.example import example_pb2
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
    example = example_pb2.Example()
    for key, value in zip(c.FEATURE_KEYS, values):
        try:
            example.features.feature[key].float_list.value.append(float(value))
        except (TypeError, ValueError):
            raise ServingClientError(f"{key} must be a number, got {value!r}") from None
    return example


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
        "Classify iris measurements with a TensorFlow Serving-compatible server over gRPC."))
    p.add_argument("values", nargs="*", help=f"measurements, {len(c.FEATURE_KEYS)} per row: "
                                             f"{' '.join(c.FEATURE_KEYS)} (commas or spaces)")
    p.add_argument("--csv", help="CSV file with a header naming the features; one prediction per row")
    p.add_argument("--server", default=f"localhost:{defaults.GRPC_PORT}", help="host:port of the gRPC server")
    p.add_argument("--model", default=defaults.MODEL_NAME)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int)
    which.add_argument("--label", help="version label, e.g. stable or canary")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.values and not args.csv:
        p.error("give measurements or --csv FILE")
    try:
        rows: List[Row] = _rows_from_values(args.values) if args.values else []
        if args.csv:
            rows += read_csv(args.csv)
        with IrisClient(args.server, args.model, args.version, args.label, args.timeout) as client:
            predictions = client.predict(rows)
    except ServingClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = list(predictions[0].probabilities) if predictions else list(c.CLASS_NAMES)
    print("row\tspecies\t" + "\t".join(names))
    for i, pred in enumerate(predictions, 1):
        print(f"{i}\t{pred.species}\t" + "\t".join(f"{pred.probabilities[n]:.4f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
