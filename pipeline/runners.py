"""Thin runners: each only chooses an orchestrator for the pipeline create_pipeline returns.

The caller prepares the ground: `iris-tfx run` (iris_tfx/run.py) creates the workdir (the SQLite ML Metadata
file's directory) with its lock, and forks the Beam workers (pipeline/beam_workers.py) around the run."""
from tfx import v1 as tfx
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline


def run_beam(config: PipelineConfig) -> None:
    """Orchestrate with BeamDagRunner; components' own Beam jobs get config.beam_pipeline_args."""
    BeamDagRunner().run(create_pipeline(config))


def run_local(config: PipelineConfig) -> None:
    """Orchestrate with LocalDagRunner (components one after another in this process)."""
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))


RUNNERS = {"beam": run_beam, "local": run_local}
