"""TensorFlow's runtime, prepared in one place: Keras 2, log levels, the AutoGraph rule, devices and strategy.

Every entry point (the iris-tfx command, the Beam worker zygote, the TFJob trainer, benchmarks, tests) calls
prepare() before TensorFlow is imported; child processes inherit its environment variables. The functions
below it import TensorFlow themselves, when called.
"""
import json
import logging
import os
import warnings
from typing import TYPE_CHECKING, List

if TYPE_CHECKING:  # annotations only: importing this module must not import TensorFlow
    import tensorflow as tf

_ENVIRONMENT = {
    "TF_USE_LEGACY_KERAS": "1",   # TFX 1.16 and the exported models need Keras 2 (tf-keras), not TF 2.16's Keras 3
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ start-up chatter and per-request kernel warnings: errors only
}


def prepare(quiet: bool = False) -> None:
    """Sets TensorFlow's environment (unless the user set it) and quiets import-time warnings; idempotent.
    `quiet`: a command whose output is all the user reads (not a run's log file or a server's log) also hides
    TensorFlow's C++ errors at start-up (CUDA plugins on a machine without a GPU) and its Python warnings.

    Call it before TensorFlow is imported: TensorFlow reads these variables once, on import."""
    for name, value in _ENVIRONMENT.items():
        os.environ.setdefault(name, "3" if quiet and name == "TF_CPP_MIN_LOG_LEVEL" else value)
    if quiet:
        for name in ("tensorflow", "absl"):  # TF's deprecation warnings (e.g. read by TFMA), absl's INFO lines
            logging.getLogger(name).setLevel(logging.ERROR)
    # Google's client libraries (pulled in by TFX) warn about Python 3.10 on import: not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")


def skip_autograph_for_tf_keras() -> None:
    """TF 2.16 tells AutoGraph to leave `keras` alone but not `tf_keras` (Keras 2), so every first
    trace transpiles Keras' own source: ~10 s per model on these CPUs. Same rule, for tf_keras."""
    from tensorflow.python.autograph.core import config  # pylint: disable=g-import-not-at-top
    rule = config.DoNotConvert("tf_keras")
    if str(rule) not in map(str, config.CONVERSION_RULES):
        config.CONVERSION_RULES = (rule,) + config.CONVERSION_RULES


def cluster_workers(tf_config: str) -> List[str]:
    """Addresses of the chief and workers named by a TF_CONFIG JSON string (empty if none)."""
    cluster = json.loads(tf_config or "{}").get("cluster", {})
    return list(cluster.get("chief", [])) + list(cluster.get("worker", []))


def select_strategy(cpu_replicas: int = 0) -> "tf.distribute.Strategy":
    """MultiWorkerMirrored if TF_CONFIG names >1 worker, else Mirrored over GPUs (or N logical CPUs), else default."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
    if len(cluster_workers(os.environ.get("TF_CONFIG", ""))) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()  # all visible GPUs
    if cpu_replicas > 1:
        return tf.distribute.MirroredStrategy(logical_cpus(cpu_replicas))
    return tf.distribute.get_strategy()


def logical_cpus(count: int) -> List[str]:
    """Names of `count` logical CPU devices, splitting the physical CPU if TF is not yet initialised."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < count:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError as err:  # the runtime is initialised: devices can no longer change
            raise RuntimeError(
                f"cannot create {count} logical CPU devices: TensorFlow was initialised before the "
                f"strategy was chosen ({err}); set cpu_replicas before any TensorFlow work runs") from err
    return [device.name for device in tf.config.list_logical_devices("CPU")[:count]]
