"""Defaults shared by the server, the client and the Kubernetes manifests (TF Serving's own ports)."""
from components.constants import DEFAULT_SERVING_DIR, MODEL_NAME  # noqa: F401  (defaults.MODEL_NAME)

GRPC_PORT = 8500
REST_PORT = 8501
MODEL_BASE_PATH = DEFAULT_SERVING_DIR

# Additions for the model server (serving/config.py); TF Serving's defaults where it has one.
HOST = "0.0.0.0"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
GRPC_THREADS_PER_CORE = 8        # threads for slow gRPC requests (batch queues wait, Session.run releases the GIL)
INLINE_MAX_REQUEST_BYTES = 64 << 10  # smaller gRPC inference requests run on the event loop (no thread hop)
# ... if they also declare at most this many tensor elements / examples: 256 examples of four raw features, the
# size the serving benchmark sends; the bytes alone say nothing (TF's repeat-the-last-value shorthand).
INLINE_MAX_REQUEST_ELEMENTS = 1024
# Requests declaring more tensor elements (plus examples) are refused before any decoding. 500,000 lets a
# 100,000-example request through in either form (serialized tf.Examples: 100k; four raw float inputs: 400k)
# while the 4M-element shorthand request that cost +781 MB of RSS is refused.
MAX_REQUEST_ELEMENTS = 500_000
REST_THREADS_PER_CORE = 4        # TF Serving's --rest_api_num_threads default is 4 x cores
MAX_REQUEST_BYTES = 64 << 20     # largest gRPC message / REST body accepted
DRAIN_SECONDS = 30.0             # SIGTERM grace period for in-flight requests
# BatchingParameters defaults of TF Serving's BasicBatchScheduler.
BATCH_MAX_SIZE = 1000
BATCH_TIMEOUT_MICROS = 0
BATCH_MAX_ENQUEUED = 10


def cpu_count() -> int:
    """Cores this process may use (TF Serving sizes its thread pools from this)."""
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


MAX_CONCURRENT_RPCS = 1024  # gRPC requests beyond this are refused with RESOURCE_EXHAUSTED
# Session threading for small models: ops run in the request's own thread (no hand-off to TF's pools, which
# spin), one thread per op; concurrent requests still use every core. TF Serving's defaults are 0 and 0.
INTRA_OP_THREADS = 1
INTER_OP_THREADS = -1
