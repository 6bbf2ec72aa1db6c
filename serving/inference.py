"""Predict, Classify, Regress, MultiInference and metadata on a loaded Servable, following TF Serving's
predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc and get_model_metadata_impl.cc."""
import math
from typing import Dict, List, Mapping, Tuple

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, inference_pb2, input_pb2,
                                     model_pb2, predict_pb2, regression_pb2)

from serving.errors import ServingError, failed_precondition, invalid
from serving.servable import Servable, SignatureInfo
from serving.tensors import dtype_enum, dtype_name, ndarray_to_proto, proto_to_ndarray, shape_string

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"


# --- request cost, from what a request declares (its bytes say little: TF's repeat-the-last-value shorthand) ---

def tensor_cost(proto: tensor_pb2.TensorProto, alias: str) -> Tuple[int, int]:
    """(elements, bytes added by decoding) of a TensorProto, from its shape alone: a 4-byte float_val can declare
    [1000000]; a string repeated by the shorthand is copied once per element."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise invalid(f"tensor parsing error: {alias}")
    elements = math.prod(dims)
    if proto.dtype == types_pb2.DT_STRING and 0 < len(proto.string_val) < elements:
        return elements, (elements - len(proto.string_val)) * len(proto.string_val[-1])
    return elements, 0


def input_cost(inp: input_pb2.Input) -> Tuple[int, int]:
    """(examples, bytes added by decoding) of an Input: the context is merged into a copy of every example."""
    if inp.WhichOneof("kind") == "example_list_with_context":
        n = len(inp.example_list_with_context.examples)
        return n, n * inp.example_list_with_context.context.ByteSize()
    return len(inp.example_list.examples), 0


def request_cost(request) -> Tuple[int, int]:
    """(tensor elements plus examples, bytes added by decoding) an inference request declares; nothing decoded."""
    if isinstance(request, predict_pb2.PredictRequest):
        costs = [tensor_cost(proto, alias) for alias, proto in request.inputs.items()]
        return sum(e for e, _ in costs), sum(b for _, b in costs)
    if isinstance(request, (classification_pb2.ClassificationRequest, regression_pb2.RegressionRequest,
                            inference_pb2.MultiInferenceRequest)):
        return input_cost(request.input)
    return 0, 0


def check_cost(elements: int, expanded_bytes: int, max_elements: int, max_bytes: int) -> None:
    """Refuse (INVALID_ARGUMENT: retrying cannot help) a request whose declared size is over a limit."""
    if elements > max_elements:
        raise invalid(f"Request declares {elements} tensor elements and examples, more than the limit of "
                      f"{max_elements} (--max_request_elements)")
    if expanded_bytes > max_bytes:
        raise invalid(f"Request expands by {expanded_bytes} bytes when decoded (repeated strings or example "
                      f"context), more than the limit of {max_bytes} (--max_request_bytes)")


def check_request(request, max_elements: int, max_bytes: int) -> Tuple[int, int]:
    """check_cost on request_cost(request), before any decoding; returns the cost. For REST classify/regress
    too (JSON has no shorthand but has example context)."""
    elements, expanded = request_cost(request)
    check_cost(elements, expanded, max_elements, max_bytes)
    return elements, expanded


def fill_model_spec(spec: model_pb2.ModelSpec, servable: Servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


def _signature_name(spec: model_pb2.ModelSpec) -> str:
    return spec.signature_name or DEFAULT_SIGNATURE


def _join(keys) -> str:
    return ",".join(sorted(keys))


def check_inputs(signature: SignatureInfo, inputs: Mapping[str, np.ndarray]) -> None:
    """Input names, dtypes and static shapes against the SignatureDef (what Session::Run would reject)."""
    expected = signature.inputs
    if len(inputs) != len(expected):
        extra, missing = set(inputs) - set(expected), set(expected) - set(inputs)
        raise invalid(
            f"input size does not match signature: {len(inputs)}!={len(expected)} "
            f"len({{{_join(inputs)}}}) != len({{{_join(expected)}}}). Sent extra: {{{_join(extra)}}}. "
            f"Missing but required: {{{_join(missing)}}}.")
    for alias in inputs:
        if alias not in expected:
            raise invalid(f"input tensor alias not found in signature: {alias}. Inputs expected to be in the "
                          f"set {{{_join(expected)}}}.")
    for i, alias in enumerate(sorted(inputs)):
        (dtype, want), array = expected[alias], inputs[alias]
        got = dtype_enum(array.dtype)
        if got != dtype:
            raise invalid(f"Expects arg[{i}] to be {dtype_name(dtype)} but {dtype_name(got)} is provided "
                          f"(input '{alias}')")
        if want is not None and (len(want) != array.ndim or any(w >= 0 and w != g for w, g in zip(want, array.shape))):
            raise invalid(f"input '{alias}' has shape {shape_string(array.shape)} but the signature expects "
                          f"{shape_string(want)}")


def _find_signature(servable: Servable, name: str) -> SignatureInfo:
    info = servable.signature_info.get(name)
    if info is None:
        raise failed_precondition(f'Serving signature key "{name}" not found.')
    return info


def run_predict(servable: Servable, signature_name: str, inputs: Dict[str, np.ndarray],
                output_filter: List[str]) -> Dict[str, np.ndarray]:
    """Validate and run a predict-style call; returns the fetched outputs by alias."""
    signature = _find_signature(servable, signature_name)
    if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise ServingError(grpc.StatusCode.INTERNAL,
                           "Expected prediction signature method_name to be one of {"
                           f"{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
    check_inputs(signature, inputs)
    outputs = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                          f"set {{{_join(signature.outputs)}}}.")
        if alias in outputs:
            raise invalid(f"duplicate output tensor alias: {alias}")
        outputs.append(alias)
    return servable.run(signature_name, inputs, outputs or signature.outputs)


def predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    name = _signature_name(request.model_spec)
    _find_signature(servable, name)
    inputs = {alias: proto_to_ndarray(proto, alias) for alias, proto in request.inputs.items()}
    outputs = run_predict(servable, name, inputs, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, name)
    for alias, array in outputs.items():
        ndarray_to_proto(array, response.outputs[alias])
    return response


def serialized_examples(inp: input_pb2.Input) -> np.ndarray:
    """Input proto -> serialized tf.Examples, merging the context into each example."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in inp.example_list.examples]
    elif kind == "example_list_with_context":
        context = inp.example_list_with_context.context
        examples = []
        for e in inp.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(e)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return np.array(examples, dtype=object)


def _method_signature(servable: Servable, spec: model_pb2.ModelSpec, method: str,
                      kind: str) -> Tuple[str, meta_graph_pb2.SignatureDef]:
    name = _signature_name(spec)
    if name not in servable.signatures:
        raise invalid(f"No signature was found with the name: {name}")
    signature = servable.signatures[name]
    if signature.method_name != method:
        raise invalid(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
    return name, signature


def _classify_outputs(signature: meta_graph_pb2.SignatureDef) -> List[str]:
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise failed_precondition(f"No classification inputs found in SignatureDef: {signature}")
    outputs = [o for o in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if o in signature.outputs]
    if not outputs:
        raise invalid(f"Expected classification signature outputs to contain at least one of "
                      f"{{{CLASSIFY_CLASSES}, {CLASSIFY_SCORES}}}. Signature was: {signature}")
    return outputs


def _classification_result(outputs: Mapping[str, np.ndarray], n: int) -> classification_pb2.ClassificationResult:
    classes, scores = outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES)
    for alias, array in ((CLASSIFY_CLASSES, classes), (CLASSIFY_SCORES, scores)):
        if array is not None and (array.ndim != 2 or array.shape[0] != n):
            raise invalid(f"Expected Tensor shape: [{n} num_classes] but got {shape_string(array.shape)} "
                          f"for output '{alias}'")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape: {shape_string(classes.shape)} vs "
                      f"{shape_string(scores.shape)}")
    result = classification_pb2.ClassificationResult()
    for i in range(n):
        row = result.classifications.add()
        k = (classes if classes is not None else scores).shape[1]
        for j in range(k):
            cls = row.classes.add()
            if classes is not None:
                cls.label = classes[i, j].decode("utf-8", errors="replace") if isinstance(classes[i, j], bytes) \
                    else str(classes[i, j])
            if scores is not None:
                cls.score = float(scores[i, j])
    return result


def _regression_result(outputs: Mapping[str, np.ndarray], n: int) -> regression_pb2.RegressionResult:
    out = outputs[REGRESS_OUTPUTS]
    if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                      f"{shape_string(out.shape)}")
    if out.shape[0] != n:
        raise invalid(f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
    if out.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {out.dtype}")
    result = regression_pb2.RegressionResult()
    for value in out.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


def _regress_outputs(signature: meta_graph_pb2.SignatureDef) -> List[str]:
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise failed_precondition(f"No regression inputs found in SignatureDef: {signature}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise failed_precondition(f"No regression outputs found in SignatureDef: {signature}")
    return [REGRESS_OUTPUTS]


def _run_examples(servable: Servable, name: str, signature: meta_graph_pb2.SignatureDef, examples: np.ndarray,
                  outputs: List[str]) -> Dict[str, np.ndarray]:
    alias = next(iter(signature.inputs))
    check_inputs(servable.signature_info[name], {alias: examples})
    return servable.run(name, {alias: examples}, outputs)


def classify(servable: Servable, request: classification_pb2.ClassificationRequest
             ) -> classification_pb2.ClassificationResponse:
    name, signature = _method_signature(servable, request.model_spec, CLASSIFY_METHOD, "classification")
    outputs = _classify_outputs(signature)
    examples = serialized_examples(request.input)
    response = classification_pb2.ClassificationResponse()
    fill_model_spec(response.model_spec, servable, name)
    values = _run_examples(servable, name, signature, examples, outputs)
    response.result.CopyFrom(_classification_result(values, len(examples)))
    return response


def regress(servable: Servable, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    name, signature = _method_signature(servable, request.model_spec, REGRESS_METHOD, "regression")
    outputs = _regress_outputs(signature)
    examples = serialized_examples(request.input)
    response = regression_pb2.RegressionResponse()
    fill_model_spec(response.model_spec, servable, name)
    values = _run_examples(servable, name, signature, examples, outputs)
    response.result.CopyFrom(_regression_result(values, len(examples)))
    return response


def multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest
                    ) -> inference_pb2.MultiInferenceResponse:
    """All tasks share one input and run in one Session call, as TF Serving's TensorFlowMultiInferenceRunner."""
    if not request.tasks:
        raise invalid("Expected at least one task.")
    seen, plan, input_names = set(), [], set()
    for task in request.tasks:
        if task.model_spec.name != request.tasks[0].model_spec.name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = _signature_name(task.model_spec)
        if name in seen:
            raise invalid(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        if name not in servable.signatures:
            raise invalid(f"Requested signature not found in model graph: {name}")
        signature = servable.signatures[name]
        if task.method_name == CLASSIFY_METHOD:
            outputs = _classify_outputs(signature)
        elif task.method_name == REGRESS_METHOD:
            outputs = _regress_outputs(signature)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {task.method_name}")
        if signature.method_name != task.method_name:
            raise invalid(f"Unsupported signature method_name: {task.method_name} does not match signature "
                          f"{name} method_name {signature.method_name}")
        input_names.add(next(iter(signature.inputs.values())).name)
        plan.append((task, name, signature, outputs))
    if len(input_names) != 1:
        raise invalid("Input tensor must be the same for all Signatures.")
    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, name, signature, outputs in plan:
        values = _run_examples(servable, name, signature, examples, outputs)
        result = response.results.add()
        fill_model_spec(result.model_spec, servable, name)
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classification_result(values, len(examples)))
        else:
            result.regression_result.CopyFrom(_regression_result(values, len(examples)))
    return response


SIGNATURE_DEF_FIELD = "signature_def"


def check_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid(f"Metadata field {field} is not supported")


def metadata(servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    check_metadata_request(request)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signatures.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response
