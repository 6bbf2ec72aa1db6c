"""The gRPC transport: PredictionService and ModelService servicers (tensorflow-serving-api stubs) over the request
handlers, for a grpc.aio server. Cheap requests run on the event loop, slow or blocking ones (large requests,
batching queues, model loads) in a thread pool."""
import asyncio
import logging
from concurrent.futures import Executor
from typing import Optional

import grpc
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2, prediction_service_pb2_grpc, regression_pb2)

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

    async def _run(self, api: str, request, context, run: Infer, spec=None, raw: Optional[bytes] = None):
        handlers = self.handlers
        try:
            try:
                elements, expanded = handlers.check_limits(request)  # the limits, once
            except ServingError as e:
                handlers.refuse(api, ENTRYPOINT, (spec if spec is not None else request.model_spec).name, e)
            size = len(raw) if raw is not None else request.ByteSize()
            if elements <= self.inline_max_elements and size + expanded <= self.inline_max_bytes:
                return handlers.infer(api, ENTRYPOINT, request, run, spec, raw=raw)
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, lambda: handlers.infer(api, ENTRYPOINT, request, run, spec, raw=raw))
        except ServingError as e:
            await context.abort(e.code, e.message)

    # `raw`: the request as received (add_prediction_service); the answer is then the response serialized.
    async def Predict(self, request, context, raw: Optional[bytes] = None):
        return await self._run("predict", request, context, inference.predict, raw=raw)

    async def Classify(self, request, context, raw: Optional[bytes] = None):
        return await self._run("classify", request, context, inference.classify, raw=raw)

    async def Regress(self, request, context, raw: Optional[bytes] = None):
        return await self._run("regress", request, context, inference.regress, raw=raw)

    async def MultiInference(self, request, context, raw: Optional[bytes] = None):
        if not request.tasks:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Expected at least one task.")
        return await self._run("multi_inference", request, context, inference.multi_inference,
                               request.tasks[0].model_spec, raw=raw)

    async def GetModelMetadata(self, request, context):
        if request.HasField("model_spec"):  # fields are checked before the model is looked up, as in TF Serving
            try:
                inference.check_metadata_request(request)
            except ServingError as e:
                await context.abort(e.code, e.message)
        return await self._run("get_model_metadata", request, context, inference.metadata)


async def _parse(raw: bytes, request_type, context):
    """The request parsed from its bytes; unparsable bytes answer INVALID_ARGUMENT, as TF Serving does (gRPC's
    own deserializer would answer UNKNOWN "Unexpected DecodeError")."""
    try:
        return request_type.FromString(raw)
    except DecodeError:  # its text only repeats the type's name
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Could not parse the request ({len(raw)} bytes): not "
                                                              f"a valid {request_type.DESCRIPTOR.full_name}")


def _from_bytes(method, request_type, with_raw: bool = True):
    """A servicer method taking the request's bytes: parsed here, and handed over with them if `with_raw`."""
    async def handle(raw: bytes, context):
        request = await _parse(raw, request_type, context)
        return await (method(request, context, raw) if with_raw else method(request, context))
    return handle


def add_prediction_service(service: PredictionService, server) -> None:
    """add_PredictionServiceServicer_to_server, except that the logged APIs get the request's bytes as received
    and answer bytes: a logged request's PredictionLog is assembled from those bytes, without copying the request
    or serializing the response a second time (what request logging cost at sampling 1.0 came from)."""
    logged = {"Predict": (service.Predict, predict_pb2.PredictRequest),
              "Classify": (service.Classify, classification_pb2.ClassificationRequest),
              "Regress": (service.Regress, regression_pb2.RegressionRequest),
              "MultiInference": (service.MultiInference, inference_pb2.MultiInferenceRequest)}
    methods = {name: grpc.unary_unary_rpc_method_handler(_from_bytes(method, request_type))
               for name, (method, request_type) in logged.items()}
    methods["GetModelMetadata"] = grpc.unary_unary_rpc_method_handler(
        _from_bytes(service.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest, with_raw=False),
        response_serializer=get_model_metadata_pb2.GetModelMetadataResponse.SerializeToString)
    name = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, methods),))


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
