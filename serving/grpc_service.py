"""gRPC PredictionService and ModelService servicers over the ModelManager (tensorflow-serving-api stubs), for a
grpc.aio server: cheap handlers run on the event loop, slow or blocking ones (large requests, batching queues,
model loads) in a thread pool."""
import asyncio
import functools
import logging
from concurrent.futures import Executor
from typing import Callable, Optional

import grpc
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from serving import defaults, inference
from serving.errors import ServingError, invalid
from serving.manager import ModelManager
from serving.metrics import Metrics

log = logging.getLogger(__name__)


def call(manager: ModelManager, metrics: Metrics, api: str, entrypoint: str, request,
         fn: Callable, spec=None, prepare: Optional[Callable[[], None]] = None):
    """Run prepare() (e.g. JSON parsing) and check the request it built against the manager's size limits,
    resolve the servable for spec (default: request.model_spec), run fn(servable, request) and record metrics.
    Raises ServingError; any other exception becomes INTERNAL without touching the loaded model."""
    with metrics.observe(api, entrypoint) as info:
        try:
            if prepare is not None:
                info[0] = (spec if spec is not None else request.model_spec).name
                prepare()
                if request is not None:  # e.g. REST classify: examples and context parsed, not yet merged
                    inference.check_request(request, manager.max_request_elements, manager.max_request_bytes)
            if spec is None:
                if not request.HasField("model_spec"):
                    raise invalid("Missing ModelSpec")
                spec = request.model_spec
            info[0] = spec.name
            servable = manager.servable(spec)
            info[1] = servable.version_str
            return fn(servable, request)
        except ServingError as e:
            info[2] = e.code.name
            raise
        except Exception as e:  # noqa: BLE001 - never let a request take the server down
            log.exception("%s failed", api)
            info[2] = grpc.StatusCode.INTERNAL.name
            raise ServingError(grpc.StatusCode.INTERNAL, f"Internal error: {e}") from None  # class name: in the log


def _raise(error: ServingError) -> None:
    """A prepare() for call() that refuses the request: call() records the refusal in the metrics."""
    raise error


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Refuses a request declaring more than the limits before decoding it; runs it on the event loop when it is
    small in declared elements and in bytes (no thread hop: the Session run of a few examples takes well under a
    millisecond), else in `pool`, where it does not hold up the other requests; with `batching`, every request
    waits for its batch in the pool."""

    def __init__(self, manager: ModelManager, metrics: Metrics, pool: Executor, batching: bool = False):
        self.manager, self.metrics, self.pool = manager, metrics, pool
        self.inline_max_bytes = -1 if batching else defaults.INLINE_MAX_REQUEST_BYTES
        self.inline_max_elements = -1 if batching else defaults.INLINE_MAX_REQUEST_ELEMENTS

    async def _run(self, api: str, request, context, fn, spec=None):
        args = (self.manager, self.metrics, api, "grpc", request, fn, spec)
        try:
            try:
                elements, expanded = inference.check_request(request, self.manager.max_request_elements,
                                                             self.manager.max_request_bytes)  # the limits, once
            except ServingError as e:  # refused through call(), so it is counted like any other error
                return call(*args, prepare=functools.partial(_raise, e))
            if elements <= self.inline_max_elements and request.ByteSize() + expanded <= self.inline_max_bytes:
                return call(*args)
            return await asyncio.get_running_loop().run_in_executor(self.pool, call, *args)
        except ServingError as e:
            await context.abort(e.code, e.message)

    async def Predict(self, request, context):
        return await self._run("predict", request, context, inference.predict)

    async def Classify(self, request, context):
        return await self._run("classify", request, context, inference.classify)

    async def Regress(self, request, context):
        return await self._run("regress", request, context, inference.regress)

    async def MultiInference(self, request, context):
        if not request.tasks:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Expected at least one task.")
        return await self._run("multi_inference", request, context, inference.multi_inference,
                               request.tasks[0].model_spec)

    async def GetModelMetadata(self, request, context):
        if request.HasField("model_spec"):  # fields are checked before the model is looked up, as in TF Serving
            try:
                inference.check_metadata_request(request)
            except ServingError as e:
                await context.abort(e.code, e.message)
        return await self._run("get_model_metadata", request, context, inference.metadata)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Model status, and config reloads unless model management is disabled (--enable_model_management=false)."""

    def __init__(self, manager: ModelManager, metrics: Metrics, pool: Executor, enable_management: bool = True):
        self.manager, self.metrics, self.pool = manager, metrics, pool
        self.enable_management = enable_management

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        if not request.HasField("model_spec"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        try:
            return self.manager.status(request.model_spec)
        except ServingError as e:
            await context.abort(e.code, e.message)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        if not self.enable_management:  # UNIMPLEMENTED: "not supported/enabled in this service" (gRPC's codes)
            log.warning("Refused HandleReloadConfigRequest from %s: model management is disabled", context.peer())
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "Model management is disabled on this server (--enable_model_management=false)")
        if request.config.WhichOneof("config") != "model_config_list":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ServerConfig is not of type ModelConfigList")
        log.info("Reloading model config: %s", [c.name for c in request.config.model_config_list.config])
        try:  # loads and warms up models: in the pool, the event loop keeps serving
            await asyncio.get_running_loop().run_in_executor(self.pool, self.manager.apply_config, request.config)
        except ServingError as e:
            await context.abort(e.code, e.message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response
