"""Thin runners: each only chooses an orchestrator for the pipeline create_pipeline returns.

The caller prepares the ground: `iris-tfx run` (iris_tfx/run.py) creates the workdir (the SQLite ML Metadata
file's directory) with its lock, forks the Beam workers (pipeline/beam_workers.py) around the run, and chooses
the run's id, so the log file, the summary, the report and the run history all name the run the same way."""
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler, constants
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
from tfx.orchestration.portable import runtime_parameter_utils
from tfx.proto.orchestration import pipeline_pb2

from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline


def compiled(config: PipelineConfig, run_id: str) -> pipeline_pb2.Pipeline:
    """The pipeline's IR with its run id fixed; the runners' own substitution leaves a set id alone."""
    ir = compiler.Compiler().compile(create_pipeline(config))
    runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    return ir


def run_beam(config: PipelineConfig, run_id: str) -> None:
    """Orchestrate with BeamDagRunner; components' own Beam jobs get config.beam_pipeline_args."""
    BeamDagRunner().run_with_ir(compiled(config, run_id))


def run_local(config: PipelineConfig, run_id: str) -> None:
    """Orchestrate with LocalDagRunner (components one after another in this process)."""
    tfx.orchestration.LocalDagRunner().run_with_ir(compiled(config, run_id))


RUNNERS = {"beam": run_beam, "local": run_local}
