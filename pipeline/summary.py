"""Builds the end-of-run summary from ML Metadata: statuses, times, anomalies, metrics, push."""
import dataclasses
import json
import re
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx import types
from tfx.orchestration import metadata
from tfx.types import artifact_utils

from components.validation import describe_anomalies, load_anomalies

_STATES = {value: name for name, value in metadata_store_pb2.Execution.State.items()}


@dataclasses.dataclass
class NodeResult:
    node: str
    status: str          # COMPLETE, CACHED, FAILED, ...
    seconds: float
    message: str = ""    # the error message of a failed component


@dataclasses.dataclass
class RunSummary:
    run_id: str
    nodes: List[NodeResult]
    anomalies: str = ""
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    validation_failures: List[str] = dataclasses.field(default_factory=list)
    blessed: Optional[bool] = None
    pushed_path: Optional[str] = None
    pushed_version: Optional[str] = None
    push_cached: bool = False  # a re-run reused the Pusher's result: that version was pushed before

    @property
    def failed(self) -> List[NodeResult]:
        return [n for n in self.nodes if n.status == "FAILED"]

    def format(self) -> str:
        lines = [f"Run {self.run_id}", f"  {'component':<32} {'status':<9} {'time':>8}"]
        lines += [f"  {n.node:<32} {n.status:<9} {n.seconds:>7.1f}s" for n in self.nodes]
        lines.append("Anomalies: " + ("none" if not self.anomalies else "\n  " + self.anomalies.replace("\n", "\n  ")))
        if self.metrics:
            lines.append("Evaluation (eval split):")
            lines += [f"  {name:<40} {value:.4f}" for name, value in sorted(self.metrics.items())]
        lines += [f"  threshold not met: {failure}" for failure in self.validation_failures]
        if self.blessed is not None:
            lines.append(f"Model blessed: {'yes' if self.blessed else 'no'}")
        if not self.pushed_path:
            lines.append("Pushed: nothing (the model being served, if any, is unchanged)")
        elif self.push_cached:
            lines.append(f"Pushed: nothing new; this model is {self.pushed_path} (version {self.pushed_version}), "
                         "pushed by an earlier run with the same inputs")
        else:
            lines.append(f"Pushed: {self.pushed_path} (version {self.pushed_version})")
        return "\n".join(lines)


def summarize(metadata_path: str, pipeline_name: str, since_ms: int = 0) -> Optional[RunSummary]:
    """Summary of the newest run of `pipeline_name` (started at or after since_ms) in the SQLite MLMD."""
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
    with metadata.Metadata(config) as m:
        store = m.store
        runs = [c for c in store.get_contexts_by_type("pipeline_run")
                if c.create_time_since_epoch >= since_ms and _has_pipeline(store, c, pipeline_name)]
        if not runs:
            return None
        run = max(runs, key=lambda c: c.create_time_since_epoch)
        executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
        summary = RunSummary(run_id=run.name, nodes=[])
        for execution in executions:
            node = _node_name(store, execution)
            status = _STATES.get(execution.last_known_state, "UNKNOWN")
            summary.nodes.append(NodeResult(
                node=node, status=status,
                seconds=max(0.0, (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000),
                message=_error_message(execution)))
            for artifact in _outputs(store, execution):
                _read_artifact(summary, artifact)
                summary.push_cached |= artifact.type_name == "PushedModel" and status == "CACHED"
        return summary


def _has_pipeline(store, context, pipeline_name: str) -> bool:
    return any(p.name == pipeline_name for p in store.get_parent_contexts_by_context(context.id))


def _node_name(store, execution) -> str:
    for context in store.get_contexts_by_execution(execution.id):
        if store.get_context_types_by_id([context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return execution.type


def _error_message(execution) -> str:
    result = execution.custom_properties.get("__execution_result__")
    if result is None or not result.string_value:
        return ""
    return without_beam_suffix(json.loads(result.string_value).get("resultMessage", ""))


def without_beam_suffix(message: str) -> str:
    """An error message without the " [while running 'Run[Node]']" BeamDagRunner adds: it names the node again."""
    return re.sub(r" \[while running '[^']*'\]$", "", message.rstrip())


def _outputs(store, execution) -> List[types.Artifact]:
    events = [e for e in store.get_events_by_execution_ids([execution.id])
              if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    mlmd_artifacts = store.get_artifacts_by_id([e.artifact_id for e in events])
    types = {t.id: t for t in store.get_artifact_types_by_id([a.type_id for a in mlmd_artifacts])}
    return [artifact_utils.deserialize_artifact(types[a.type_id], a) for a in mlmd_artifacts]


def _read_artifact(summary: RunSummary, artifact: types.Artifact) -> None:
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top  (slow import)
    kind = artifact.type_name
    if kind == "ExampleAnomalies":
        summary.anomalies = describe_anomalies(load_anomalies(artifact))
    elif kind == "ModelEvaluation":
        for sliced in tfma.load_metrics(artifact.uri):
            slice_name = _slice_name(sliced.slice_key)
            for key in sliced.metric_keys_and_values:
                value = key.value.double_value.value
                name = key.key.name + ("" if not key.key.is_diff else " (change vs baseline)")
                summary.metrics[f"{name} [{slice_name}]"] = value
        validation = tfma.load_validation_result(artifact.uri)
        for failure in validation.metric_validations_per_slice:
            for metric in failure.failures:
                summary.validation_failures.append(
                    f"{metric.metric_key.name} [{_slice_name(failure.slice_key)}] = "
                    f"{metric.metric_value.double_value.value:.4f} ({metric.message})")
    elif kind == "ModelBlessing":
        summary.blessed = bool(artifact.get_int_custom_property("blessed"))
    elif kind == "PushedModel" and artifact.get_int_custom_property("pushed"):
        summary.pushed_path = artifact.get_string_custom_property("pushed_destination")
        summary.pushed_version = artifact.get_string_custom_property("pushed_version")


def _slice_name(slice_key) -> str:
    parts = [f"{s.column}={s.bytes_value.decode() or s.int64_value or s.float_value}"
             for s in slice_key.single_slice_keys]
    return ", ".join(parts) or "overall"
