"""Conversions between numpy arrays, TensorProtos (TF Serving's AsProtoField layout) and TF Serving's JSON."""
import base64
import functools
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid

# Repeated field of TensorProto holding each dtype's values; tf.make_tensor_proto writes tensor_content
# instead, while TF Serving answers with the typed fields (Tensor::AsProtoField), which clients may read.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
    """TF's DataTypeString: DT_FLOAT -> 'float'."""
    return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() else str(dtype)


def shape_string(shape: Tuple[int, ...]) -> str:
    return "[" + ",".join("?" if d is None or d < 0 else str(d) for d in shape) + "]"


@functools.lru_cache(maxsize=None)
def dtype_enum(dtype: np.dtype) -> int:
    """The TF DataType of a numpy dtype: DT_STRING for bytes, str and object arrays, DT_INVALID if TF has none."""
    if dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return tf.as_dtype(dtype).as_datatype_enum
    except TypeError:
        return types_pb2.DT_INVALID


# dtypes decoded with numpy directly (tf.make_ndarray costs ~4x more); the others go through tf.make_ndarray.
_NUMPY_FAST = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
               types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_STRING: object}


def proto_to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """A request's TensorProto as an array: tensor_content or exactly one typed value per element via numpy,
    anything else (other dtypes, TF's repeat-the-last-value shorthand) via tf.make_ndarray."""
    dtype = _NUMPY_FAST.get(proto.dtype)
    if dtype is not None and not proto.tensor_shape.unknown_rank:
        shape = [d.size for d in proto.tensor_shape.dim]
        size = math.prod(shape) if min(shape, default=0) >= 0 else -1
        if proto.tensor_content:
            if dtype is not object and len(proto.tensor_content) == size * np.dtype(dtype).itemsize:
                return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
        else:
            values = getattr(proto, _VALUE_FIELDS[proto.dtype])
            if len(values) == size:
                array = np.array(list(values), object) if dtype is object else np.fromiter(values, dtype, size)
                return array.reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except Exception:  # noqa: BLE001 - any malformed proto is the client's error
        raise invalid(f"tensor parsing error: {alias}") from None


def ndarray_to_proto(array: np.ndarray, proto: Optional[tensor_pb2.TensorProto] = None) -> tensor_pb2.TensorProto:
    """Fill `proto` (e.g. response.outputs[alias], avoiding a copy) or a new TensorProto with array's values."""
    proto = tensor_pb2.TensorProto() if proto is None else proto
    array = np.asarray(array)
    dtype = dtype_enum(array.dtype)
    field = _VALUE_FIELDS.get(dtype)
    if field is None:
        proto.CopyFrom(tf.make_tensor_proto(array))
        return proto
    proto.dtype = dtype
    for d in array.shape:
        proto.tensor_shape.dim.add().size = d
    values = array.ravel().tolist()
    if dtype == types_pb2.DT_STRING and not all(type(v) is bytes for v in values):
        values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    getattr(proto, field).extend(values)
    return proto


# --- JSON (TF Serving's util/json_tensor.cc); hand-written: no library speaks this format. ---

def _json_type(value: Any) -> str:
    return {bool: "Bool", int: "Number", float: "Number", str: "String", list: "Array", dict: "Object",
            type(None): "Null"}.get(type(value), type(value).__name__)


def _decode_leaf(value: Any, dtype: int) -> Any:
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise invalid(f"Unable to base64 decode: {value['b64'][:64]}") from None
    elif dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and dtype not in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE,
                                                        types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
            raise invalid(f"JSON Value: {value} not formatted correctly for {dtype_name(dtype)} type.")
        return value
    raise invalid(f"JSON Value: {value!r} Type: {_json_type(value)} is not of expected type: "
                  f"{dtype_name(dtype)}")


def _dense(value: Any, dtype: int) -> Tuple[List[int], List[Any]]:
    """Shape and flat leaves of a JSON value; fails on ragged lists as TF Serving does."""
    if not isinstance(value, list):
        return [], [_decode_leaf(value, dtype)]
    if not value:
        return [0], []
    shapes, leaves = zip(*(_dense(v, dtype) for v in value))
    if any(s != shapes[0] for s in shapes):
        other = next(s for s in shapes if s != shapes[0])
        raise invalid(f"Expecting shape {shape_string(tuple(shapes[0]))} but got: {shape_string(tuple(other))} "
                      "(ragged lists are not supported)")
    return [len(value)] + shapes[0], [x for chunk in leaves for x in chunk]


def json_to_ndarray(value: Any, dtype: int) -> np.ndarray:
    shape, leaves = _dense(value, dtype)
    np_dtype = object if dtype == types_pb2.DT_STRING else tf.as_dtype(dtype).as_numpy_dtype
    try:
        return np.array(leaves, dtype=np_dtype).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise invalid(f"JSON value out of range for {dtype_name(dtype)}: {e}") from None


@functools.lru_cache(maxsize=None)
def _numpy_dtype(dtype: int) -> np.dtype:
    """numpy dtype of a TF DataType (tf.as_dtype(...).as_numpy_dtype costs ~10 us per call)."""
    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype)


# JSON scalar types accepted without conversion by each dtype family (bool is not a number here, as in TF Serving).
_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
_SCALAR_TYPES = {types_pb2.DT_STRING: frozenset({str}), types_pb2.DT_BOOL: frozenset({bool}),
                 **{d: frozenset({float, int}) for d in _FLOATS}}
_INT_TYPES = frozenset({int})


def json_column(values: List[Any], dtype: int) -> Optional[np.ndarray]:
    """One input's scalar values across rows as one array (a single np.asarray: the row format's common case),
    or None when any value is not a plain scalar of the dtype's JSON type, for json_to_ndarray to explain."""
    if not set(map(type, values)) <= _SCALAR_TYPES.get(dtype, _INT_TYPES):
        return None
    if dtype == types_pb2.DT_STRING:
        return np.array([v.encode("utf-8") for v in values], dtype=object)
    try:
        return np.asarray(values, dtype=_numpy_dtype(dtype))
    except (OverflowError, ValueError, TypeError):
        return None


def _leaf_to_json(value: Any, b64: bool) -> Any:
    if isinstance(value, bytes):
        if b64:
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", errors="replace")
    return value


class _Decoded(dict):
    """bytes -> str, each distinct value decoded once: outputs repeat a few class names many times."""

    def __missing__(self, key: Any) -> Any:
        value = self[key] = _leaf_to_json(key, False)
        return value


# dtypes orjson writes itself from numpy arrays (OPT_SERIALIZE_NUMPY), without Python objects per value.
_ORJSON_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                                 np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_))


def ndarray_to_json(array: np.ndarray, alias: str) -> Any:
    """What orjson (OPT_SERIALIZE_NUMPY) writes as TF Serving's JSON: numeric arrays as they are, strings as nested
    lists; string outputs named '*_bytes' are base64 objects, as in TF Serving."""
    array = np.asarray(array)
    if array.dtype in _ORJSON_DTYPES:
        return np.ascontiguousarray(array) if array.ndim else array.item()
    if array.dtype.kind not in "OSU":
        return array.tolist()
    values = array.ravel().tolist()
    flat = ([_leaf_to_json(v, True) for v in values] if alias.endswith("_bytes")
            else list(map(_Decoded().__getitem__, values)))
    if array.ndim <= 1:
        return flat if array.ndim else flat[0]
    nested = np.empty(len(flat), dtype=object)  # filled, not np.array(flat): that would look into dict values
    nested[:] = flat
    return nested.reshape(array.shape).tolist()


def rows_to_json(outputs: Mapping[str, np.ndarray]) -> Any:
    """Row ("instances") format: one entry per example; an object of named outputs when there are several."""
    converted = {k: ndarray_to_json(v, k) for k, v in outputs.items()}
    if len(converted) == 1:
        return next(iter(converted.values()))
    sizes = {k: np.asarray(v).shape[:1] for k, v in outputs.items()}
    if any(len(s) == 0 for s in sizes.values()) or len(set(sizes.values())) != 1:
        raise invalid("Output tensors have different batch sizes or are scalars; "
                      "use the columnar ('inputs') format for this signature")
    # numeric outputs as Python lists: a per-row numpy view costs orjson twice as much
    columns = [v.tolist() if isinstance(v, np.ndarray) else v for v in converted.values()]
    return [dict(zip(converted, row)) for row in zip(*columns)]


def columns_to_json(outputs: Mapping[str, np.ndarray]) -> Any:
    converted: Dict[str, Any] = {k: ndarray_to_json(v, k) for k, v in outputs.items()}
    return next(iter(converted.values())) if len(converted) == 1 else converted
