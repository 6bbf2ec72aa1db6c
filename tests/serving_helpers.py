"""The model-server harness for tests lives in serving/harness.py (shared with benchmarks/serving_benchmark.py);
this name stays for test modules that still import it."""
from serving.harness import REPO, ServerProcess, copy_version, free_port, iris_tfx_command  # noqa: F401
