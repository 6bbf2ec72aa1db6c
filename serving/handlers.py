"""The request layer both transports call (TF Serving's predict_util.cc and friends, under its gRPC service and its
HTTP handler): one request goes through named steps, parse, check its declared size, find its servable, infer,
and each step's outcome labels the request's metrics."""
import logging
from typing import Callable, Optional, Tuple

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import config as config_file, defaults, inference
from serving.errors import ServingError, invalid
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.request_log import RequestLogger
from serving.servable import Servable

log = logging.getLogger(__name__)
Infer = Callable[[Servable, object], object]  # inference.predict and co.: (servable, request) -> response


class Handlers:
    """What a transport can ask of the server: inference on a servable, model status, config reloads, with the
    request limits (--max_request_elements, --max_request_bytes) applied the same way for both transports."""

    def __init__(self, manager: ModelManager, metrics: Metrics,
                 max_request_elements: int = defaults.MAX_REQUEST_ELEMENTS,
                 max_request_bytes: int = defaults.MAX_REQUEST_BYTES, request_log: Optional[RequestLogger] = None):
        self.manager, self.metrics, self.request_log = manager, metrics, request_log
        self.max_request_elements, self.max_request_bytes = max_request_elements, max_request_bytes

    def check_limits(self, request) -> Tuple[int, int]:
        """Refuse a request declaring more than the limits, before anything is decoded; returns its declared
        (elements, bytes added by decoding)."""
        return inference.check_request(request, self.max_request_elements, self.max_request_bytes)

    def check_elements(self, elements: int) -> None:
        """Refuse decoded inputs (REST's JSON) holding more tensor elements than the limit."""
        inference.check_cost(elements, 0, self.max_request_elements, self.max_request_bytes)

    def infer(self, api: str, entrypoint: str, request, run: Infer, spec: Optional[model_pb2.ModelSpec] = None,
              parse: Optional[Callable[[], None]] = None, raw: Optional[bytes] = None):
        """One inference request: `parse()` (REST: the JSON body into `request`) and check its limits, find the
        servable of `spec` (default: request.model_spec), `run(servable, request)`; each step labels the metrics.
        With `raw` (gRPC: the request's bytes) the response is returned serialized, and both bytes are logged.
        Raises ServingError; any other exception becomes INTERNAL without touching the loaded model."""
        with self.metrics.request(api, entrypoint) as record:
            try:
                if parse is not None:
                    record.model = (spec if spec is not None else request.model_spec).name
                    parse()
                    if request is not None:  # e.g. REST classify: examples and context parsed, not yet merged
                        self.check_limits(request)
                if spec is None:
                    if not request.HasField("model_spec"):
                        raise invalid("Missing ModelSpec")
                    spec = request.model_spec
                record.model = spec.name
                servable = self.manager.servable(spec)
                record.version = servable.version_str
                response = run(servable, request)
                if raw is not None:  # serialized once, for the wire and the request log
                    response = response.SerializeToString()
                if self.request_log is not None and request is not None:  # REST Predict: log_predict_arrays
                    self.request_log.log(api, spec, servable.version, request if raw is None else raw, response)
                return response
            except ServingError as e:
                record.status = e.code.name
                raise
            except Exception as e:  # noqa: BLE001 - never let a request take the server down
                log.exception("%s failed", api)
                record.status = grpc.StatusCode.INTERNAL.name
                raise ServingError(grpc.StatusCode.INTERNAL, f"Internal error: {e}") from None  # class name: in the log

    def log_predict_arrays(self, spec: model_pb2.ModelSpec, servable: Servable, inputs, outputs) -> None:
        """REST Predict's request log: its input and output arrays, made into protos only if sampled."""
        if self.request_log is not None:
            self.request_log.log_predict_arrays(spec, servable.version, inputs, outputs)

    def refuse(self, api: str, entrypoint: str, model_name: str, error: ServingError) -> None:
        """Count a request refused before it ran (e.g. over the limits) like any failed one, and raise `error`."""
        with self.metrics.request(api, entrypoint) as record:
            record.model, record.status = model_name, error.code.name
        raise error

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus of the versions `spec` names."""
        return self.manager.status(spec)

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: serve `config` (blocks while versions load: call it off the event loop)."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid("ServerConfig is not of type ModelConfigList")
        try:
            config_file.check_logging_configs(config, "ReloadConfigRequest")
        except ValueError as e:
            raise invalid(str(e)) from None
        log.info("Reloading model config: %s", [c.name for c in config.model_config_list.config])
        self.manager.apply_config(config)
        if self.request_log is not None:
            self.request_log.update(config)
