"""Command-line flags (tensorflow_model_server's names) into ServerOptions; TF Serving's text-format config files."""
import argparse
from typing import List, Optional, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import defaults, input_validation
from serving.options import ServerOptions


_WRAPPERS_PROTO = "google/protobuf/wrappers.proto"


def _build_messages():
    """BatchingParameters and MonitoringConfig as TF Serving defines them; the tensorflow-serving-api wheel
    does not ship session_bundle_config.proto or monitoring_config.proto, so their descriptors are declared here."""
    assert wrappers_pb2.DESCRIPTOR.name == _WRAPPERS_PROTO  # wrappers.proto must be in the default pool
    fdp = descriptor_pb2.FileDescriptorProto(
        name="iris_tfx/tensorflow_serving_extra.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[_WRAPPERS_PROTO])
    f = descriptor_pb2.FieldDescriptorProto
    batching = fdp.message_type.add(name="BatchingParameters")
    for number, name, type_name in [
            (1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
            (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
            (5, "thread_pool_name", "StringValue"), (8, "enable_large_batch_splitting", "BoolValue")]:
        batching.field.add(name=name, number=number, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                           type_name=".google.protobuf." + type_name)
    batching.field.add(name="allowed_batch_sizes", number=6, type=f.TYPE_INT64, label=f.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    prometheus = fdp.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    monitoring = fdp.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(fdp.name)
    except KeyError:
        pool.Add(fdp)
    factory = message_factory.MessageFactory(pool)
    return tuple(factory.GetPrototype(pool.FindMessageTypeByName("tensorflow.serving." + n))
                 for n in ("BatchingParameters", "MonitoringConfig"))


BatchingParameters, MonitoringConfig = _build_messages()


def _read_text_proto(path: str, message):
    with open(path, encoding="utf-8") as f:
        return text_format.Parse(f.read(), message)


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parse a ModelServerConfig text file (model_config_list only, as we serve TensorFlow models)."""
    config = _read_text_proto(path, model_server_config_pb2.ModelServerConfig())
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported")
    check_logging_configs(config, path)
    return config


def check_logging_configs(config: model_server_config_pb2.ModelServerConfig, where: str) -> None:
    """Each model's logging_config, if any, names a filename_prefix and a sampling_rate in [0, 1]."""
    for model in config.model_config_list.config:
        if not model.HasField("logging_config"):
            continue
        rate = model.logging_config.sampling_config.sampling_rate
        if not 0 <= rate <= 1:
            raise ValueError(f"{where}: model {model.name!r}: logging_config sampling_rate {rate:g} is not in [0, 1]")
        if not model.logging_config.log_collector_config.filename_prefix:
            raise ValueError(f"{where}: model {model.name!r}: logging_config has no log_collector_config "
                             "filename_prefix")


def read_batching_parameters(path: Optional[str]):
    """BatchingParameters text file (empty: TF Serving's defaults); allowed_batch_sizes padding is not done."""
    params = _read_text_proto(path, BatchingParameters()) if path else BatchingParameters()
    for field in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(field) and getattr(params, field).value < 1:
            raise ValueError(f"{path}: {field} must be positive")
    if params.HasField("batch_timeout_micros") and params.batch_timeout_micros.value < 0:
        raise ValueError(f"{path}: batch_timeout_micros must not be negative")
    return params


def read_monitoring_config(path: Optional[str]):
    """MonitoringConfig text file (none: Prometheus on, at TF Serving's path)."""
    if not path:
        config = MonitoringConfig()
        config.prometheus_config.enable = True
        config.prometheus_config.path = defaults.PROMETHEUS_PATH
        return config
    return _read_text_proto(path, MonitoringConfig())


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config --model_name and --model_base_path stand for: one model, its latest version."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = 1
    return config


def model_server_config(options: ServerOptions) -> model_server_config_pb2.ModelServerConfig:
    """The models to serve: --model_config_file (read again on each call, for polling) or the single model."""
    if options.model_config_file:
        return read_model_server_config(options.model_config_file)
    return single_model_config(options.model_name, options.model_base_path)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _positive(value: str) -> int:
    """A limit flag: a positive integer (0 would refuse everything)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _roots(value: str) -> Tuple[str, ...]:
    """--model_base_path_roots: non-empty entries of a comma-separated list."""
    return tuple(root.strip() for root in value.split(",") if root.strip())


def parse_flags(argv: List[str]) -> ServerOptions:
    """tensorflow_model_server's flags (`--flag=value` or `--flag value`) as ServerOptions; reads no file."""
    d = ServerOptions()
    p = argparse.ArgumentParser(prog="iris-tfx serve", description=(
        "TensorFlow Serving-compatible model server (gRPC and REST) for the pushed Iris models."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # every flag's --help line ends with its default
    p.add_argument("--port", type=int, default=d.port, help="gRPC port")
    p.add_argument("--rest_api_port", type=int, default=d.rest_api_port, help="REST port (0 disables REST)")
    p.add_argument("--model_name", default=d.model_name, help="name clients ask for")
    p.add_argument("--model_base_path", default=d.model_base_path,
                   help="directory holding one numbered directory per version (what the pipeline pushes)")
    p.add_argument("--model_config_file", default=d.model_config_file,
                   help="ModelServerConfig text file (overrides --model_name and --model_base_path)")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=d.model_config_file_poll_wait_seconds,
                   help="re-read --model_config_file this often (0: never)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=d.file_system_poll_wait_seconds,
                   help="poll base paths for new versions this often (0: only at start)")
    p.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=d.enable_batching,
                   help="batch concurrent inference requests into one Session run")
    p.add_argument("--batching_parameters_file", default=d.batching_parameters_file,
                   help="BatchingParameters text file (empty: TF Serving's defaults)")
    p.add_argument("--monitoring_config_file", default=d.monitoring_config_file,
                   help="MonitoringConfig text file (empty: Prometheus on, at its usual path)")
    p.add_argument("--grpc_max_threads", type=int, default=d.grpc_max_threads,
                   help="threads for large, batched or blocking requests (small ones run on the event loop)")
    p.add_argument("--rest_api_num_threads", type=int, default=d.rest_api_num_threads,
                   help="accepted for compatibility and ignored: REST runs on the event loop, large requests in "
                        "the --grpc_max_threads pool")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=d.rest_api_timeout_in_ms,
                   help="per REST connection, the deadline for a request's headers and, separately, for its body "
                        "(408 past it); idle keep-alive connections are closed after it")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=d.tensorflow_intra_op_parallelism,
                   help="threads per op (0: one per core)")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=d.tensorflow_inter_op_parallelism,
                   help="threads running ops (0: one per core; negative: each request's own thread)")
    p.add_argument("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True,
                   default=d.allow_version_labels_for_unavailable_models,
                   help="let the config file label a version that is not loaded yet")
    # Extensions of this server (not tensorflow_model_server flags).
    p.add_argument("--host", default=d.host, help="address to bind (extension; TF Serving binds all)")
    p.add_argument("--max_request_bytes", type=int, default=d.max_request_bytes,
                   help="refuse gRPC messages and REST bodies larger than this (extension)")
    p.add_argument("--drain_seconds", type=float, default=d.drain_seconds,
                   help="on SIGTERM, wait this long for in-flight requests (extension)")
    p.add_argument("--max_request_elements", type=_positive, default=d.max_request_elements,
                   help="refuse inference requests declaring more tensor elements plus examples than this, "
                        "before decoding them (extension)")
    p.add_argument("--enable_model_management", type=_bool, nargs="?", const=True, default=d.enable_model_management,
                   help="false: HandleReloadConfigRequest answers UNIMPLEMENTED (extension)")
    p.add_argument("--model_base_path_roots", type=_roots, default=d.model_base_path_roots,
                   help="comma-separated directories: every model base path must resolve (symlinks and '..' "
                        "followed) under one of them; empty: any path (extension)")
    p.add_argument("--request_log_queue_size", type=_positive, default=d.request_log_queue_size,
                   help="sampled requests (logging_config) waiting to be written; when full, the record is dropped "
                        "and counted, never the request (extension)")
    p.add_argument("--request_log_file_max_bytes", type=_positive, default=d.request_log_file_max_bytes,
                   help="start a new request log file past this size (extension)")
    p.add_argument("--request_log_max_total_bytes", type=_positive, default=d.request_log_max_total_bytes,
                   help="disk budget of each filename_prefix's request log files: the oldest are removed past "
                        "it (extension)")
    p.add_argument("--input_validation", choices=input_validation.MODES, default=d.input_validation,
                   help="check each request's feature values against the bounds (SERVING environment) of the schema "
                        "a model carries in assets.extra/schema.pbtxt: warn answers and counts them "
                        "(:tensorflow:serving:input_out_of_domain_count), reject answers INVALID_ARGUMENT naming the "
                        "value (extension)")
    args = p.parse_args(argv)
    if args.request_log_file_max_bytes > args.request_log_max_total_bytes:
        p.error("--request_log_file_max_bytes must not exceed --request_log_max_total_bytes")
    if args.model_config_file_poll_wait_seconds and not args.model_config_file:
        p.error("--model_config_file_poll_wait_seconds needs --model_config_file")
    if args.batching_parameters_file and not args.enable_batching:
        p.error("--batching_parameters_file needs --enable_batching")
    return ServerOptions(**vars(args))
