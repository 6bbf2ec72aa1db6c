"""Thin runners: each only chooses an orchestrator for the pipeline create_pipeline returns."""
import os
from tfx import v1 as tfx
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from pipeline.beam_workers import forked_workers
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline


def run_beam(config: PipelineConfig) -> None:
    """Orchestrate with BeamDagRunner; components' own Beam jobs get config.beam_pipeline_args."""
    os.makedirs(config.workdir, exist_ok=True)  # holds the ML Metadata SQLite file
    with forked_workers(config.beam_pipeline_args):
        BeamDagRunner().run(create_pipeline(config))


def run_local(config: PipelineConfig) -> None:
    """Orchestrate with LocalDagRunner (components one after another in this process)."""
    os.makedirs(config.workdir, exist_ok=True)
    with forked_workers(config.beam_pipeline_args):
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config))


RUNNERS = {"beam": run_beam, "local": run_local}
