"""The gRPC transport: PredictionService and ModelService servicers (tensorflow-serving-api stubs) over the request
handlers, for a grpc.aio server. Cheap requests run on the event loop, slow or blocking ones (large requests,
batching queues, model loads) in a thread pool."""
import asyncio
import logging
from concurrent.futures import Executor

import grpc
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from serving import defaults, inference
from serving.errors import ServingError
from serving.handlers import Handlers, Infer

log = logging.getLogger(__name__)
ENTRYPOINT = "grpc"  # the metrics' entrypoint label


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Refuses a request declaring more than the limits before decoding it; runs it on the event loop when it is
    small in declared elements and in bytes (no thread hop: the Session run of a few examples takes well under a
    millisecond), else in `pool`, where it does not hold up the other requests (ServerOptions.inline_max_*: with
    batching, every request waits for its batch in the pool)."""

    def __init__(self, handlers: Handlers, pool: Executor,
                 inline_max_elements: int = defaults.INLINE_MAX_REQUEST_ELEMENTS,
                 inline_max_bytes: int = defaults.INLINE_MAX_REQUEST_BYTES):
        self.handlers, self.pool = handlers, pool
        self.inline_max_elements, self.inline_max_bytes = inline_max_elements, inline_max_bytes

    async def _run(self, api: str, request, context, run: Infer, spec=None):
        handlers = self.handlers
        try:
            try:
                elements, expanded = handlers.check_limits(request)  # the limits, once
            except ServingError as e:
                handlers.refuse(api, ENTRYPOINT, (spec if spec is not None else request.model_spec).name, e)
            if elements <= self.inline_max_elements and request.ByteSize() + expanded <= self.inline_max_bytes:
                return handlers.infer(api, ENTRYPOINT, request, run, spec)
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, handlers.infer, api, ENTRYPOINT, request, run, spec)
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

    def __init__(self, handlers: Handlers, pool: Executor, enable_management: bool = True):
        self.handlers, self.pool = handlers, pool
        self.enable_management = enable_management

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        if not request.HasField("model_spec"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        try:
            return self.handlers.status(request.model_spec)
        except ServingError as e:
            await context.abort(e.code, e.message)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        if not self.enable_management:  # UNIMPLEMENTED: "not supported/enabled in this service" (gRPC's codes)
            log.warning("Refused HandleReloadConfigRequest from %s: model management is disabled", context.peer())
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "Model management is disabled on this server (--enable_model_management=false)")
        try:  # loads and warms up models: in the pool, the event loop keeps serving
            await asyncio.get_running_loop().run_in_executor(self.pool, self.handlers.reload_config, request.config)
        except ServingError as e:
            await context.abort(e.code, e.message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response
