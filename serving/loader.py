"""Loading one version, as TF Serving's SavedModelBundle source adapter: the SavedModel in its own Session, then
its warm-up requests (assets.extra/tf_serving_warmup_requests) replayed within the request limits; then, with
--input_validation, the bounds of the schema it carries (assets.extra/schema.pbtxt) put in front of its requests."""
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from components import constants
from components.schema_bounds import Bounds
from serving import defaults, inference
from serving.errors import invalid
from serving.input_validation import COLUMN, EXAMPLES, InputValidator, Plan, Reporter
from serving.servable import Servable, SignatureInfo

log = logging.getLogger(__name__)
WARMUP_FILE = os.path.join(constants.ASSETS_EXTRA, "tf_serving_warmup_requests")
SCHEMA_FILE = os.path.join(constants.ASSETS_EXTRA, constants.SCHEMA_ASSET)
MAX_WARMUP_RECORDS = 1000


@dataclass(frozen=True)
class LoaderOptions:
    """What every version is loaded with: Session options, batching (None: off) and the request limits."""
    session_config: tf.compat.v1.ConfigProto
    batching_parameters: Optional[object] = None  # config.BatchingParameters
    max_request_elements: int = defaults.MAX_REQUEST_ELEMENTS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    input_validation: str = "off"  # --input_validation: off, warn or reject
    reporter: Optional[Reporter] = None  # counts and logs what input validation finds (the server's metrics)


def load(name: str, version: int, path: str, options: LoaderOptions,
         on_batch: Optional[Callable[[int], None]] = None) -> Tuple[Servable, int]:
    """A loaded, warmed-up version and how many warm-up requests it replayed; on any failure nothing stays loaded."""
    servable = Servable(name, version, path, options.session_config, options.batching_parameters, on_batch)
    try:
        warmed = warm_up(servable, options.max_request_elements, options.max_request_bytes)
        servable.validator = input_validator(servable, options.input_validation, options.reporter or Reporter())
        return servable, warmed
    except BaseException:
        servable.unload()
        raise


def warm_up(servable: Servable, max_elements: int = defaults.MAX_REQUEST_ELEMENTS,
            max_bytes: int = defaults.MAX_REQUEST_BYTES) -> int:
    """Replay the PredictionLog TFRecords of WARMUP_FILE, each within the request limits; any failure fails the
    load. Returns how many were replayed."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind is not None:
            inference.check_request(getattr(entry, kind).request, max_elements, max_bytes)
        if kind == "predict_log":
            inference.predict(servable, entry.predict_log.request)
        elif kind == "classify_log":
            inference.classify(servable, entry.classify_log.request)
        elif kind == "regress_log":
            inference.regress(servable, entry.regress_log.request)
        elif kind == "multi_inference_log":
            inference.multi_inference(servable, entry.multi_inference_log.request)
        else:
            raise invalid(f"Unsupported log_type for warmup: {kind}")
    return count


def signature_plan(signature: SignatureInfo, bounds: Bounds) -> Plan:
    """Which inputs of a signature carry the bounded features: float inputs named after a feature (serving_raw),
    and serialized tf.Examples (the inputs of classify/regress signatures, or named 'examples' as in Predict)."""
    plan = []
    for alias, (dtype, _) in sorted(signature.inputs.items()):
        if alias in bounds.index and dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
            plan.append((alias, COLUMN))
        elif dtype == types_pb2.DT_STRING and (alias == constants.EXAMPLES_INPUT or signature.method_name in (
                inference.CLASSIFY_METHOD, inference.REGRESS_METHOD)):
            plan.append((alias, EXAMPLES))
    return tuple(plan)


def input_validator(servable: Servable, mode: str, reporter: Reporter) -> Optional[InputValidator]:
    """The check of the version's requests against the bounds of its SCHEMA_FILE; None when the mode is off or the
    version carries no schema (said once, in the log). A schema that does not parse fails the load."""
    if mode == "off":
        return None
    path = os.path.join(servable.path, SCHEMA_FILE)
    if not tf.io.gfile.exists(path):
        log.info("Model %s version %d has no %s: its inputs are not checked (--input_validation=%s)",
                 servable.name, servable.version, SCHEMA_FILE, mode)
        return None
    try:
        bounds = Bounds.from_text(tf.io.gfile.GFile(path).read(), path)
    except ValueError as e:
        raise invalid(str(e)) from None
    plans: Dict[str, Plan] = {name: signature_plan(info, bounds) for name, info in servable.signature_info.items()}
    if not bounds or not any(plans.values()):
        log.info("Model %s version %d: %s bounds no input of its signatures: its inputs are not checked",
                 servable.name, servable.version, SCHEMA_FILE)
        return None
    for name, plan in plans.items():
        examples = [a for a, kind in plan if kind == EXAMPLES]
        if examples:  # serialized examples: checked in the Session run that answers the request
            servable.add_input_check(name, examples, bounds.names, bounds.lo, bounds.hi, bounds.nan_ok)
    log.info("Model %s version %d: inputs checked against the bounds of %s in %s (--input_validation=%s)",
             servable.name, servable.version, ", ".join(bounds.names), SCHEMA_FILE, mode)
    return InputValidator(servable.name, bounds, mode, plans, example_pb2.Example.FromString, reporter)
