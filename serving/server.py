"""`iris-tfx serve`: a drop-in for tensorflow_model_server (gRPC + REST) over the pushed SavedModels. Wires the parts
from one ServerOptions: source -> manager (loader) -> handlers -> gRPC and REST transports, plus the pollers."""
import asyncio
import logging
import signal
import sys
from concurrent import futures
from typing import List, Optional

import grpc
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import model_service_pb2, model_service_pb2_grpc, prediction_service_pb2

from serving import config, defaults
from serving.errors import ServingError
from serving.grpc_service import ModelService, PredictionService, add_prediction_service
from serving.handlers import Handlers
from serving.input_validation import Reporter
from serving.loader import LoaderOptions
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.options import ServerOptions
from serving.request_log import RequestLogger
from serving.rest import RestServer
from serving.rest_api import RestApi
from serving.servable import session_config
from serving.source import Poller, VersionSource

log = logging.getLogger("serving")
REST_BACKLOG = 1024  # pending REST connections the kernel queues (asyncio's default of 100 makes bursts wait)
# On SIGTERM, gRPC core cancels (CANCELLED) the calls it has received but grpc.aio has not yet asked for (it asks
# for one at a time, from the event loop, which is busy with inline requests under load); this long the loop keeps
# picking them up before the shutdown starts, so every call received before the signal completes.
GRPC_SETTLE_SECONDS = 0.25
SERVICES = (prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name)
STARTUP_ERRORS = (ServingError, OSError, RuntimeError, ValueError, text_format.ParseError)


class ModelServer:
    """A grpc.aio server and the REST server over one ModelManager, both on the running event loop: `await start()`,
    then `await wait()` until `await stop()` (SIGTERM); the pollers run in their own threads. Reads the batching
    and monitoring config files once, here."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.metrics = Metrics()
        batching = config.read_batching_parameters(options.batching_parameters_file) if options.enable_batching \
            else None
        self.monitoring = config.read_monitoring_config(options.monitoring_config_file)
        self.manager = ModelManager(
            VersionSource(options.model_base_path_roots),
            LoaderOptions(session_config(options.tensorflow_intra_op_parallelism,
                                         options.tensorflow_inter_op_parallelism),
                          batching, options.max_request_elements, options.max_request_bytes,
                          options.input_validation, Reporter(self.metrics.input_out_of_domain)),
            self.metrics, options.allow_version_labels_for_unavailable_models)
        self.request_log = RequestLogger(self.metrics, options.request_log_queue_size,
                                         options.request_log_file_max_bytes, options.request_log_max_total_bytes)
        self.handlers = Handlers(self.manager, self.metrics, options.max_request_elements, options.max_request_bytes,
                                 self.request_log)
        # Handlers that are slow or block (large requests, batch queues, model loads) run here, the others on
        # the event loop.
        self.pool = futures.ThreadPoolExecutor(max_workers=options.grpc_max_threads, thread_name_prefix="grpc")
        self.pollers: List[Poller] = []
        self.grpc_server: Optional[grpc.aio.Server] = None
        self.rest_server: Optional[RestServer] = None
        self.health = health_aio.HealthServicer()
        self._stopped = asyncio.Event()
        self._stopping = False
        self.grpc_port = self.rest_port = 0

    def _reload_polled_config(self) -> None:
        """The config-file poller's call: a config that cannot be read or applied keeps the previous one."""
        try:
            self._apply_config(config.model_server_config(self.options))
        except Exception as e:  # noqa: BLE001 - keep serving the previous config
            log.error("Reloading model config failed: %s", e)

    def _apply_config(self, model_config) -> None:
        """Serve `model_config`'s models, then log requests as its logging_configs say."""
        self.manager.apply_config(model_config)
        self.request_log.update(model_config)

    async def start(self) -> None:
        """Load the models (before serving: loading may block the loop), start the pollers, then listen."""
        options = self.options
        self._apply_config(config.model_server_config(options))
        self.pollers.append(Poller(options.file_system_poll_wait_seconds, self.manager.poll, "fs-poll"))
        if options.model_config_file:
            self.pollers.append(Poller(options.model_config_file_poll_wait_seconds, self._reload_polled_config,
                                       "config-poll"))
        await self._start_grpc()
        if options.rest_api_port:
            await self._start_rest()

    async def _start_grpc(self) -> None:
        options = self.options
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", options.max_request_bytes),
                                          ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)],
                                 maximum_concurrent_rpcs=defaults.MAX_CONCURRENT_RPCS)
        add_prediction_service(  # the logged APIs take and answer bytes (request logging's records)
            PredictionService(self.handlers, self.pool, options.inline_max_elements, options.inline_max_bytes),
            server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.handlers, self.pool, options.enable_model_management), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        self.grpc_server = server
        self.grpc_port = server.add_insecure_port(f"{options.host}:{options.port}")
        if not self.grpc_port:
            raise RuntimeError(f"cannot bind gRPC to {options.host}:{options.port}")
        await server.start()
        for service in ("",) + SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("Running gRPC ModelServer at %s:%d ...", options.host, self.grpc_port)

    async def _start_rest(self) -> None:
        options = self.options
        prometheus = self.monitoring.prometheus_config
        self.rest_server = RestServer(RestApi(self.handlers), self.metrics,
                                      (prometheus.path or defaults.PROMETHEUS_PATH) if prometheus.enable else None,
                                      options.max_request_bytes, options.rest_timeout_seconds, self.pool,
                                      options.inline_max_bytes)
        self.rest_port = await self.rest_server.start(options.host, options.rest_api_port, REST_BACKLOG)
        log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, self.rest_port)

    def _stop_pollers(self) -> None:
        for poller in self.pollers:
            poller.stop()

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
        rest = loop.create_task(self.rest_server.drain(self.options.drain_seconds)) if self.rest_server else None
        if self.grpc_server:
            await asyncio.sleep(GRPC_SETTLE_SECONDS)
            await self.grpc_server.stop(self.options.drain_seconds)
        if rest is not None:
            await rest
        await loop.run_in_executor(None, self._stop_pollers)
        await loop.run_in_executor(None, self.request_log.close)  # every answered request's record is written
        self.pool.shutdown(wait=False)
        self._stopped.set()
        log.info("Server stopped")

    async def abort(self) -> None:
        """After a failed start: release what start() got so far."""
        if self.grpc_server:
            await self.grpc_server.stop(0)
        self._stop_pollers()
        self.request_log.close()
        self.pool.shutdown(wait=False)

    async def wait(self) -> None:
        """Until stop() has finished."""
        await self._stopped.wait()


async def serve(options: ServerOptions) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code (1: it could not start)."""
    try:
        server = ModelServer(options)
    except STARTUP_ERRORS as e:  # an unreadable batching or monitoring config file
        log.error("Failed to start server: %s", getattr(e, "message", e))
        return 1
    try:
        await server.start()
    except STARTUP_ERRORS as e:
        log.error("Failed to start server: %s", getattr(e, "message", e))
        await server.abort()
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda s=signum: (log.info("Received signal %d", s),
                                                           loop.create_task(server.stop())))
    await server.wait()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `iris-tfx serve`; returns the process exit code."""
    options = config.parse_flags(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # the TF1 loader's deprecation notices
    return asyncio.run(serve(options))


if __name__ == "__main__":  # `python -m serving.server` still serves; `python -m serving` also prepares the runtime
    sys.exit(main())
