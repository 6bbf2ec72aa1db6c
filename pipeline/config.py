"""PipelineConfig: the one object that parameterises create_pipeline; defaults run out of the box."""
import dataclasses
import multiprocessing
import os
from typing import TYPE_CHECKING, List, Optional

from components.constants import (DEFAULT_DATA, DEFAULT_SCHEMA, DEFAULT_WORKDIR, MODEL_NAME, PIPELINE_NAME,
                                  default_serving_dir)
from components.hyperparameters import Hyperparameters

if TYPE_CHECKING:  # annotations only: the CLI imports this module for every command, so it stays light
    from ml_metadata.proto import metadata_store_pb2


def default_beam_args() -> List[str]:
    """DirectRunner in multi-processing mode, one worker per local core.

    Naming the project's setup.py (which the DirectRunner never reads) stops every TFX Beam executor from copying
    TFX and building a `tfx_ephemeral` sdist of it in /tmp (about 5-10 s per component, and 50 MB left behind)."""
    args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={multiprocessing.cpu_count()}"]
    setup_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    return args + [f"--setup_file={setup_file}"] if os.path.isfile(setup_file) else args


def sqlite_metadata(path: str) -> "metadata_store_pb2.ConnectionConfig":
    """The ML Metadata connection to a SQLite file, for the pipeline and for readers of its records.

    TFX's sqlite_metadata_connection_config does the same but also makes the file's directory: building a
    pipeline, or reading a workdir that is not there, must not create it (the run's lock creates the workdir)."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top,redefined-outer-name
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


@dataclasses.dataclass
class PipelineConfig:
    """Everything create_pipeline needs; paths may be local or any filesystem TFX supports."""
    data_path: str = DEFAULT_DATA
    schema_path: str = DEFAULT_SCHEMA
    workdir: str = DEFAULT_WORKDIR
    serving_dir: Optional[str] = None  # None: <workdir>/models/<model_name>
    model_name: str = MODEL_NAME
    pipeline_name: str = PIPELINE_NAME
    accuracy_floor: float = 0.9
    training: Hyperparameters = dataclasses.field(default_factory=Hyperparameters)
    beam_pipeline_args: List[str] = dataclasses.field(default_factory=list)
    enable_cache: bool = True
    use_resolver: bool = True  # Kubeflow's open-source backend has no resolver support
    pipeline_root_uri: Optional[str] = None  # None: <workdir>/pipeline_root (e.g. gs://bucket/iris on Kubeflow)

    @property
    def pipeline_root(self) -> str:
        return self.pipeline_root_uri or os.path.join(self.workdir, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.workdir, "metadata.sqlite")

    @property
    def lock_path(self) -> str:
        """Held (flock) by the one `iris-tfx run` using this workdir."""
        return os.path.join(self.workdir, "iris-tfx.lock")

    def report_path(self, run_id: str) -> str:
        """Where a run's HTML report is written (`iris-tfx report`) and found (`iris-tfx runs show`)."""
        return os.path.join(self.workdir, "reports", f"{run_id}.html")

    @property
    def push_dir(self) -> str:
        return self.serving_dir or default_serving_dir(self.workdir, self.model_name)
