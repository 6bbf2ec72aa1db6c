"""Loading one version, as TF Serving's SavedModelBundle source adapter: the SavedModel in its own Session, then
its warm-up requests (assets.extra/tf_serving_warmup_requests) replayed within the request limits."""
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import defaults, inference
from serving.errors import invalid
from serving.servable import Servable

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


@dataclass(frozen=True)
class LoaderOptions:
    """What every version is loaded with: Session options, batching (None: off) and the request limits."""
    session_config: tf.compat.v1.ConfigProto
    batching_parameters: Optional[object] = None  # config.BatchingParameters
    max_request_elements: int = defaults.MAX_REQUEST_ELEMENTS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES


def load(name: str, version: int, path: str, options: LoaderOptions,
         on_batch: Optional[Callable[[int], None]] = None) -> Tuple[Servable, int]:
    """A loaded, warmed-up version and how many warm-up requests it replayed; on any failure nothing stays loaded."""
    servable = Servable(name, version, path, options.session_config, options.batching_parameters, on_batch)
    try:
        return servable, warm_up(servable, options.max_request_elements, options.max_request_bytes)
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
