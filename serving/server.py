"""`iris-tfx serve`: a drop-in for tensorflow_model_server (gRPC + REST) over the pushed SavedModels."""
import asyncio
import logging
import os
import signal
import sys
from concurrent import futures
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # kernels log every rejected bad request at WARNING

import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_health.v1.health import aio as health_aio  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402
from tensorflow_serving.apis import (model_service_pb2, model_service_pb2_grpc, prediction_service_pb2,  # noqa: E402
                                     prediction_service_pb2_grpc)

from serving import config, defaults  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.grpc_service import ModelService, PredictionService  # noqa: E402
from serving.manager import ModelManager  # noqa: E402
from serving.metrics import Metrics  # noqa: E402
from serving.rest import RestApi, RestServer  # noqa: E402
from serving.servable import session_config  # noqa: E402

log = logging.getLogger("serving")
REST_BACKLOG = 1024  # pending REST connections the kernel queues (asyncio's default of 100 makes bursts wait)
# On SIGTERM, gRPC core cancels (CANCELLED) the calls it has received but grpc.aio has not yet asked for (it asks
# for one at a time, from the event loop, which is busy with inline requests under load); this long the loop keeps
# picking them up before the shutdown starts, so every call received before the signal completes.
GRPC_SETTLE_SECONDS = 0.25
SERVICES = (prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name)


class ModelServer:
    """A grpc.aio server and the REST server over one ModelManager, both on the running event loop: `await start()`,
    then `await wait()` until `await stop()` (SIGTERM); the model manager's polling runs in its own threads."""

    def __init__(self, args):
        self.args = args
        self.metrics = Metrics()
        batching = config.read_batching_parameters(args.batching_parameters_file) if args.enable_batching else None
        self.manager = ModelManager(session_config(args.tensorflow_intra_op_parallelism,
                                                   args.tensorflow_inter_op_parallelism),
                                    batching, self.metrics, args.allow_version_labels_for_unavailable_models,
                                    args.model_base_path_roots, args.max_request_elements, args.max_request_bytes)
        self.monitoring = config.read_monitoring_config(args.monitoring_config_file)
        # Handlers that are slow or block (large requests, batch queues, model loads) run here, the others on
        # the event loop.
        self.pool = futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc")
        self.grpc_server: Optional[grpc.aio.Server] = None
        self.rest_server: Optional[RestServer] = None
        self.health = health_aio.HealthServicer()
        self._stopped = asyncio.Event()
        self._stopping = False
        self.grpc_port = self.rest_port = 0

    def _model_config(self):
        if self.args.model_config_file:
            return config.read_model_server_config(self.args.model_config_file)
        return config.single_model_config(self.args.model_name, self.args.model_base_path)

    async def start(self) -> None:
        args = self.args
        self.manager.apply_config(self._model_config())  # nothing to serve yet: loading may block the loop
        self.manager.start_polling(args.file_system_poll_wait_seconds)
        if args.model_config_file:
            self.manager.start_config_polling(args.model_config_file_poll_wait_seconds, self._model_config)
        options = [("grpc.max_receive_message_length", args.max_request_bytes),
                   ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=defaults.MAX_CONCURRENT_RPCS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.metrics, self.pool, args.enable_batching), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.manager, self.metrics, self.pool, args.enable_model_management), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        self.grpc_server = server
        self.grpc_port = server.add_insecure_port(f"{args.host}:{args.port}")
        if not self.grpc_port:
            raise RuntimeError(f"cannot bind gRPC to {args.host}:{args.port}")
        await server.start()
        for service in ("",) + SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("Running gRPC ModelServer at %s:%d ...", args.host, self.grpc_port)
        if args.rest_api_port:
            prometheus = self.monitoring.prometheus_config
            timeout = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else 3600.0
            self.rest_server = RestServer(RestApi(self.manager, self.metrics), self.metrics,
                                          (prometheus.path or defaults.PROMETHEUS_PATH) if prometheus.enable else None,
                                          args.max_request_bytes, timeout, self.pool,
                                          -1 if args.enable_batching else defaults.INLINE_MAX_REQUEST_BYTES)
            self.rest_port = await self.rest_server.start(args.host, args.rest_api_port, REST_BACKLOG)
            log.info("Exporting HTTP/REST API at:%s:%d ...", args.host, self.rest_port)

    async def stop(self) -> None:
        """Graceful: refuse new REST connections at once and new gRPC ones after GRPC_SETTLE_SECONDS, let every
        request received before the signal finish (up to --drain_seconds), then stop."""
        if self._stopping:
            return  # a second signal while draining changes nothing
        self._stopping = True
        log.info("Shutting down: draining in-flight requests")
        if self.rest_server:
            self.rest_server.stop_listening()
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        rest = loop.create_task(self.rest_server.drain(self.args.drain_seconds)) if self.rest_server else None
        if self.grpc_server:
            await asyncio.sleep(GRPC_SETTLE_SECONDS)
            await self.grpc_server.stop(self.args.drain_seconds)
        if rest is not None:
            await rest
        await loop.run_in_executor(None, self.manager.stop)
        self.pool.shutdown(wait=False)
        self._stopped.set()
        log.info("Server stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(args) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    server = ModelServer(args)
    try:
        await server.start()
    except (ServingError, OSError, RuntimeError, ValueError, text_format.ParseError) as e:
        log.error("Failed to start server: %s", getattr(e, "message", e))
        if server.grpc_server:
            await server.grpc_server.stop(0)
        server.manager.stop()
        server.pool.shutdown(wait=False)
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda s=signum: (log.info("Received signal %d", s),
                                                           loop.create_task(server.stop())))
    await server.wait()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `iris-tfx serve`; returns the process exit code."""
    args = config.parse_flags(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # the TF1 loader's deprecation notices
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
