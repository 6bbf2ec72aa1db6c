"""`iris-tfx serve`: a drop-in for tensorflow_model_server (gRPC + REST) over the pushed SavedModels."""
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # kernels log every rejected bad request at WARNING

import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
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
SERVICES = (prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name)


class ModelServer:
    """gRPC and REST servers over one ModelManager; start(), then wait() until stop() or SIGTERM."""

    def __init__(self, args):
        self.args = args
        self.metrics = Metrics()
        batching = config.read_batching_parameters(args.batching_parameters_file) if args.enable_batching else None
        self.manager = ModelManager(session_config(args.tensorflow_intra_op_parallelism,
                                                   args.tensorflow_inter_op_parallelism),
                                    batching, self.metrics, args.allow_version_labels_for_unavailable_models)
        self.monitoring = config.read_monitoring_config(args.monitoring_config_file)
        self.grpc_server: Optional[grpc.Server] = None
        self.rest_server: Optional[RestServer] = None
        self.health = health.HealthServicer()
        self._stopped = threading.Event()
        self._stopping = threading.Lock()
        self.grpc_port = self.rest_port = 0

    def _model_config(self):
        if self.args.model_config_file:
            return config.read_model_server_config(self.args.model_config_file)
        return config.single_model_config(self.args.model_name, self.args.model_base_path)

    def start(self) -> None:
        args = self.args
        self.manager.apply_config(self._model_config())
        self.manager.start_polling(args.file_system_poll_wait_seconds)
        if args.model_config_file:
            self.manager.start_config_polling(args.model_config_file_poll_wait_seconds, self._model_config)
        options = [("grpc.max_receive_message_length", args.max_request_bytes),
                   ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc"),
                             options=options, maximum_concurrent_rpcs=defaults.MAX_CONCURRENT_RPCS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.metrics), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager, self.metrics), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        self.grpc_port = server.add_insecure_port(f"{args.host}:{args.port}")
        if not self.grpc_port:
            raise RuntimeError(f"cannot bind gRPC to {args.host}:{args.port}")
        server.start()
        self.grpc_server = server
        for service in ("",) + SERVICES:
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("Running gRPC ModelServer at %s:%d ...", args.host, self.grpc_port)
        if args.rest_api_port:
            prometheus = self.monitoring.prometheus_config
            self.rest_server = RestServer((args.host, args.rest_api_port), RestApi(self.manager, self.metrics),
                                          self.metrics,
                                          (prometheus.path or defaults.PROMETHEUS_PATH) if prometheus.enable else None,
                                          args.max_request_bytes, args.rest_api_num_threads,
                                          args.rest_api_timeout_in_ms / 1000 or None)
            self.rest_port = self.rest_server.server_address[1]
            threading.Thread(target=self.rest_server.serve_forever, name="rest", daemon=True).start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", args.host, self.rest_port)

    def stop(self) -> None:
        """Graceful: refuse new requests, let in-flight ones finish (up to --drain_seconds), then stop."""
        if not self._stopping.acquire(blocking=False):
            return  # a second signal while draining changes nothing
        log.info("Shutting down: draining in-flight requests")
        self.health.enter_graceful_shutdown()
        done = self.grpc_server.stop(self.args.drain_seconds) if self.grpc_server else None
        if self.rest_server:
            self.rest_server.drain(self.args.drain_seconds)
        if done is not None:
            done.wait()
        self.manager.stop()
        self._stopped.set()
        log.info("Server stopped")

    def wait(self) -> None:
        self._stopped.wait()


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `iris-tfx serve`; returns the process exit code."""
    args = config.parse_flags(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # the TF1 loader's deprecation notices
    server = ModelServer(args)
    try:
        server.start()
    except (ServingError, OSError, RuntimeError, ValueError, text_format.ParseError) as e:
        log.error("Failed to start server: %s", getattr(e, "message", e))
        if server.grpc_server:
            server.grpc_server.stop(0)
        return 1

    def on_signal(signum, _frame) -> None:
        log.info("Received signal %d", signum)
        threading.Thread(target=server.stop, name="shutdown").start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
