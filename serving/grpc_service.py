"""gRPC PredictionService and ModelService servicers over the ModelManager (tensorflow-serving-api stubs)."""
import logging
from typing import Callable, Optional

import grpc
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from serving import inference
from serving.errors import ServingError, invalid
from serving.manager import ModelManager
from serving.metrics import Metrics

log = logging.getLogger(__name__)


def call(manager: ModelManager, metrics: Metrics, api: str, entrypoint: str, request,
         fn: Callable, spec=None, prepare: Optional[Callable[[], None]] = None):
    """Run prepare() (e.g. JSON parsing), resolve the servable for spec (default: request.model_spec), run
    fn(servable, request) and record metrics. Raises ServingError; any other exception becomes INTERNAL
    without touching the loaded model."""
    with metrics.observe(api, entrypoint) as info:
        try:
            if prepare is not None:
                info[0] = (spec if spec is not None else request.model_spec).name
                prepare()
            if spec is None:
                if not request.HasField("model_spec"):
                    raise invalid("Missing ModelSpec")
                spec = request.model_spec
            info[0] = spec.name
            servable = manager.servable(spec)
            info[1] = str(servable.version)
            return fn(servable, request)
        except ServingError as e:
            info[2] = e.code.name
            raise
        except Exception as e:  # noqa: BLE001 - never let a request take the server down
            log.exception("%s failed", api)
            info[2] = grpc.StatusCode.INTERNAL.name
            raise ServingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}") from None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, metrics: Metrics):
        self.manager, self.metrics = manager, metrics

    def _run(self, api: str, request, context, fn, spec=None):
        try:
            return call(self.manager, self.metrics, api, "grpc", request, fn, spec)
        except ServingError as e:
            context.abort(e.code, e.message)

    def Predict(self, request, context):
        return self._run("predict", request, context, inference.predict)

    def Classify(self, request, context):
        return self._run("classify", request, context, inference.classify)

    def Regress(self, request, context):
        return self._run("regress", request, context, inference.regress)

    def MultiInference(self, request, context):
        if not request.tasks:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Expected at least one task.")
        return self._run("multi_inference", request, context, inference.multi_inference,
                         request.tasks[0].model_spec)

    def GetModelMetadata(self, request, context):
        if request.HasField("model_spec"):  # fields are checked before the model is looked up, as in TF Serving
            try:
                inference.check_metadata_request(request)
            except ServingError as e:
                context.abort(e.code, e.message)
        return self._run("get_model_metadata", request, context, inference.metadata)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, metrics: Metrics):
        self.manager, self.metrics = manager, metrics

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        try:
            return self.manager.status(request.model_spec)
        except ServingError as e:
            context.abort(e.code, e.message)

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        if request.config.WhichOneof("config") != "model_config_list":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ServerConfig is not of type ModelConfigList")
        log.info("Reloading model config: %s", [c.name for c in request.config.model_config_list.config])
        try:
            self.manager.apply_config(request.config)
        except ServingError as e:
            context.abort(e.code, e.message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response
