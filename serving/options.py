"""ServerOptions: the model server's settings, typed, made once from the command line (TF Serving's Server::Options)."""
from dataclasses import dataclass, field
from typing import Tuple

from serving import defaults


@dataclass(frozen=True)
class ServerOptions:
    """Every flag of `iris-tfx serve` (tensorflow_model_server's names, plus this server's extensions); built by
    config.parse_flags, read by server.ModelServer. Config file paths stay paths: the server reads them once."""
    port: int = defaults.GRPC_PORT
    rest_api_port: int = defaults.REST_PORT  # 0: no REST
    model_name: str = defaults.MODEL_NAME
    model_base_path: str = defaults.MODEL_BASE_PATH
    model_config_file: str = ""  # ModelServerConfig text file; overrides model_name/model_base_path
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: float = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    grpc_max_threads: int = field(default_factory=lambda: defaults.GRPC_THREADS_PER_CORE * defaults.cpu_count())
    rest_api_num_threads: int = field(  # accepted and ignored
        default_factory=lambda: defaults.REST_THREADS_PER_CORE * defaults.cpu_count())
    rest_api_timeout_in_ms: int = 30000
    tensorflow_intra_op_parallelism: int = defaults.INTRA_OP_THREADS
    tensorflow_inter_op_parallelism: int = defaults.INTER_OP_THREADS
    allow_version_labels_for_unavailable_models: bool = False
    # Extensions of this server (not tensorflow_model_server flags).
    host: str = defaults.HOST
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    drain_seconds: float = defaults.DRAIN_SECONDS
    max_request_elements: int = defaults.MAX_REQUEST_ELEMENTS
    enable_model_management: bool = True
    model_base_path_roots: Tuple[str, ...] = ()
    request_log_queue_size: int = 10_000  # sampled requests waiting for the log writer; more are dropped
    request_log_file_max_bytes: int = 64 << 20  # a new log file past this size
    request_log_max_total_bytes: int = 1 << 30  # per filename_prefix; the oldest files are removed past it
    input_validation: str = "warn"  # off, warn or reject: inputs against the schema in the model's assets.extra

    @property
    def rest_timeout_seconds(self) -> float:
        """Each REST connection's header and body deadline; 0 or less: an hour (effectively none)."""
        return self.rest_api_timeout_in_ms / 1000 if self.rest_api_timeout_in_ms > 0 else 3600.0

    @property
    def inline_max_bytes(self) -> int:
        """Requests up to this size run on the event loop; with batching none do (they wait for their batch)."""
        return -1 if self.enable_batching else defaults.INLINE_MAX_REQUEST_BYTES

    @property
    def inline_max_elements(self) -> int:
        """... if they also declare at most this many tensor elements / examples."""
        return -1 if self.enable_batching else defaults.INLINE_MAX_REQUEST_ELEMENTS
