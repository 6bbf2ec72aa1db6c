"""Builds the end-of-run summary from ML Metadata: statuses, times, anomalies, metrics, push."""
import contextlib
import dataclasses
import datetime
import json
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

from google.protobuf import text_format
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.orchestration import metadata
from tfx.types import artifact_utils

from components import constants
from components.hyperparameters import describe_training
from components.validation import describe_anomalies, load_anomalies
from pipeline.config import sqlite_metadata

_STATES = {value: name for name, value in metadata_store_pb2.Execution.State.items()}
ACCURACY = constants.ACCURACY_METRIC
_EXAMPLE_COUNT = "example_count"  # tfma.metrics.example_count.EXAMPLE_COUNT_NAME, without importing TFMA here


@dataclasses.dataclass
class NodeResult:
    node: str
    status: str          # COMPLETE, CACHED, FAILED, ...
    seconds: float
    message: str = ""    # the error message of a failed component


@dataclasses.dataclass
class MetricRow:
    """One metric on one slice: the new model's value, beside the baseline's and TFMA's change when compared."""
    metric: str
    slice_name: str
    new: Optional[float] = None
    baseline: Optional[float] = None
    change: Optional[float] = None

    def cells(self) -> List[str]:
        """The three values as printed; counts as integers, '-' where there is none."""
        digits = 0 if self.metric == _EXAMPLE_COUNT else 4
        return ["-" if value is None else f"{value:{sign}.{digits}f}"
                for value, sign in ((self.new, ""), (self.baseline, ""), (self.change, "+"))]


@dataclasses.dataclass
class RunSummary:
    run_id: str
    nodes: List[NodeResult]
    anomalies: Optional[str] = None  # None: the data was never checked (the run stopped before ExampleValidator)
    metrics: Dict[str, MetricRow] = dataclasses.field(default_factory=dict)  # by "metric [slice]"
    validation_failures: List[str] = dataclasses.field(default_factory=list)
    blessed: Optional[bool] = None
    pushed_path: Optional[str] = None
    pushed_version: Optional[str] = None
    push_cached: bool = False  # a re-run reused the Pusher's result: that version was pushed before
    training: str = ""  # "Training: steps N of at most M, batch B, ..." from the Trainer's model_run record
    started_ms: int = 0  # when the run's MLMD context was created (ms since the epoch)
    data_path: str = ""  # the CSV ExampleGen read (from its execution's input_base and input_config)
    fingerprint: str = ""  # ExampleGen's input fingerprint of that file (size and modification time)
    span: Optional[int] = None  # the Examples artifact's span

    @property
    def failed(self) -> List[NodeResult]:
        return [n for n in self.nodes if n.status == "FAILED"]

    def format(self) -> str:
        lines = [f"Run {self.run_id}", f"  {'component':<32} {'status':<9} {'time':>8}"]
        lines += [f"  {n.node:<32} {n.status:<9} {n.seconds:>7.1f}s" for n in self.nodes]
        gate = next((n for n in self.failed if n.node == "AnomaliesGate" and n.message), None)
        if gate:  # its message names the CSV lines of each problem: TFDV's words for them would say it twice
            lines.append("Anomalies: the AnomaliesGate refused the data (its message follows the summary)")
        elif self.anomalies is not None:
            lines.append("Anomalies: " + ("none" if not self.anomalies else
                                          "\n  " + self.anomalies.replace("\n", "\n  ")))
        if self.training:
            lines.append(self.training)
        if self.metrics:
            compared = any(row.baseline is not None for row in self.metrics.values())
            columns = 3 if compared else 1
            lines.append("Evaluation (eval split" + (", new model vs baseline = the previous blessed model):"
                                                     if compared else "):"))
            heading = ["new model", "baseline", "change"][:columns]
            width = max(len(name) for name in self.metrics)
            lines.append(f"  {'metric [slice]':<{width}}" + "".join(f" {h:>10}" for h in heading))
            lines += [f"  {name:<{width}}" + "".join(f" {cell:>10}" for cell in row.cells()[:columns])
                      for name, row in sorted(self.metrics.items())]
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


def summarize(metadata_path: str, pipeline_name: str, run_id: Optional[str] = None) -> Optional[RunSummary]:
    """Summary of the run named run_id (default: the newest run) of `pipeline_name` in the SQLite MLMD."""
    with open_store(metadata_path) as store:
        runs = [run for run in pipeline_runs(store, pipeline_name)
                if run_id in (None, run.name)]
        return summarize_run(store, runs[0]) if runs else None


@contextlib.contextmanager
def open_store(metadata_path: str) -> Iterator[Any]:
    """The MLMD store of a workdir's SQLite file, open for the with-block."""
    with metadata.Metadata(sqlite_metadata(metadata_path)) as m:
        yield m.store


def pipeline_runs(store, pipeline_name: str) -> List[metadata_store_pb2.Context]:
    """The pipeline_run contexts of `pipeline_name`, newest first (their names are the runs' ids)."""
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if _has_pipeline(store, c, pipeline_name)]
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def summarize_run(store, run: metadata_store_pb2.Context) -> RunSummary:
    """One run's summary from its executions and their output artifacts, oldest execution first."""
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    summary = RunSummary(run_id=run.name, nodes=[], started_ms=run.create_time_since_epoch)
    for execution in executions:
        node = node_name(store, execution)
        status = _STATES.get(execution.last_known_state, "UNKNOWN")
        summary.nodes.append(NodeResult(
            node=node, status=status,
            seconds=max(0.0, (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000),
            message=_error_message(execution)))
        _read_example_gen(summary, execution)
        for artifact in outputs(store, execution).values():
            _read_artifact(summary, artifact)
            summary.push_cached |= artifact.type_name == "PushedModel" and status == "CACHED"
    return summary


def _read_example_gen(summary: RunSummary, execution) -> None:
    """The data file from ExampleGen's execution properties, and the file's fingerprint and span when they are there
    too (a cached or failed execution has none: then they come from its Examples, see _read_artifact)."""
    properties = execution.custom_properties
    if "input_base" not in properties:
        return
    splits = json.loads(properties["input_config"].string_value or "{}").get("splits", [])
    patterns = [split.get("pattern", "") for split in splits]
    # ExampleGen globs input_base/pattern; literal_input escaped the file's path, so undo that escaping.
    summary.data_path = _unescape_glob("/".join([properties["input_base"].string_value.rstrip("/"), *patterns[:1]]))
    if "input_fingerprint" in properties:
        summary.fingerprint = properties["input_fingerprint"].string_value
        summary.span = properties["span"].int_value if "span" in properties else None


def _unescape_glob(pattern: str) -> str:
    """The path components.example_gen.literal_pattern escaped: `[x]` back to x, `\\\\` back to `\\`."""
    return re.sub(r"\[(.)\]", r"\1", pattern).replace("\\\\", "\\")


def _has_pipeline(store, context, pipeline_name: str) -> bool:
    return any(p.name == pipeline_name for p in store.get_parent_contexts_by_context(context.id))


def node_name(store, execution) -> str:
    for context in store.get_contexts_by_execution(execution.id):
        if store.get_context_types_by_id([context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return execution.type


def record_failure(metadata_path: str, run_id: str, message: str) -> None:
    """Stores `message` as the result of the run's failed executions that have none: TFX's BeamDagRunner records
    no message for a component that raised, so without this `runs show` and the report could not say why later."""
    from tfx.orchestration.portable.mlmd import execution_lib  # pylint: disable=g-import-not-at-top
    from tfx.proto.orchestration import execution_result_pb2  # pylint: disable=g-import-not-at-top
    with open_store(metadata_path) as store:
        runs = [run for run in store.get_contexts_by_type("pipeline_run") if run.name == run_id]
        failed = [e for run in runs for e in store.get_executions_by_context(run.id)
                  if e.last_known_state == metadata_store_pb2.Execution.FAILED and not _error_message(e)]
        for execution in failed:
            execution_lib.set_execution_result(
                execution_result_pb2.ExecutionResult(code=2, result_message=message), execution)  # 2: UNKNOWN
        if failed:
            store.put_executions(failed)


def _error_message(execution) -> str:
    result = execution.custom_properties.get("__execution_result__")
    if result is None or not result.string_value:
        return ""
    return without_beam_suffix(json.loads(result.string_value).get("resultMessage", ""))


def without_beam_suffix(message: str) -> str:
    """An error message without the " [while running 'Run[Node]']" BeamDagRunner adds: it names the node again."""
    return re.sub(r" \[while running '[^']*'\]$", "", message.rstrip())


def artifacts_by_key(store, execution, event_types: Tuple[int, ...]) -> Dict[str, List[types.Artifact]]:
    """An execution's artifacts of these event types (INPUT, OUTPUT, ...) by key (e.g. "model_run"; the type name
    if an event has no key), in event order."""
    events = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type in event_types]
    mlmd_artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    kinds = {t.id: t for t in store.get_artifact_types_by_id([a.type_id for a in mlmd_artifacts.values()])}
    found: Dict[str, List[types.Artifact]] = {}
    for event in events:
        artifact = mlmd_artifacts[event.artifact_id]
        key = event.path.steps[0].key if event.path.steps else kinds[artifact.type_id].name
        found.setdefault(key, []).append(artifact_utils.deserialize_artifact(kinds[artifact.type_id], artifact))
    return found


def outputs(store, execution) -> Dict[str, types.Artifact]:
    """An execution's output artifacts by output key (the last one of a key)."""
    found = artifacts_by_key(store, execution, (metadata_store_pb2.Event.OUTPUT,
                                                metadata_store_pb2.Event.DECLARED_OUTPUT))
    return {key: artifacts[-1] for key, artifacts in found.items()}


def utc(milliseconds: int) -> str:
    """MLMD's milliseconds since the epoch as people read a time."""
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _read_artifact(summary: RunSummary, artifact: types.Artifact) -> None:
    kind = artifact.type_name
    if kind == "ExampleAnomalies":
        summary.anomalies = describe_anomalies(load_anomalies(artifact))
    elif kind == "ModelEvaluation":
        summary.metrics, summary.validation_failures = read_evaluation(artifact.uri)
    elif kind == "ModelRun":
        summary.training = describe_training(artifact.uri)
    elif kind == "ModelBlessing":
        summary.blessed = bool(artifact.get_int_custom_property("blessed"))
    elif kind == "Examples" and artifact.has_custom_property("input_fingerprint") and not summary.fingerprint:
        summary.fingerprint = artifact.get_string_custom_property("input_fingerprint")  # ExampleGen's, reused
        summary.span = artifact.get_int_custom_property("span")
    elif kind == "PushedModel" and artifact.get_int_custom_property("pushed"):
        summary.pushed_path = artifact.get_string_custom_property("pushed_destination")
        summary.pushed_version = artifact.get_string_custom_property("pushed_version")


def read_evaluation(uri: str) -> Tuple[Dict[str, MetricRow], List[str]]:
    """The Evaluator's metrics by "metric [slice]", each value placed by its key's model_name and is_diff
    (never by order: the baseline's values would overwrite the new model's), and the thresholds not met."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top  (slow import)
    from tensorflow_model_analysis.writers import eval_config_writer  # pylint: disable=g-import-not-at-top
    eval_config = eval_config_writer.load_eval_run(uri)[0]
    baselines = {spec.name for spec in eval_config.model_specs if spec.is_baseline} if eval_config else set()
    rows: Dict[str, MetricRow] = {}
    for sliced in tfma.load_metrics(uri):
        slice_name = slice_name_of(sliced.slice_key)
        for entry in sliced.metric_keys_and_values:
            key = entry.key
            if entry.value.WhichOneof("type") != "double_value" or (key.is_diff and key.name == _EXAMPLE_COUNT):
                continue  # both models see the same examples: the count's change is always 0
            row = rows.setdefault(f"{key.name} [{slice_name}]", MetricRow(key.name, slice_name))
            value = entry.value.double_value.value
            if key.is_diff:
                row.change = value
            elif key.model_name in baselines:
                row.baseline = value
            else:
                row.new = value
    failures = [_describe_failure(failure, slice_name_of(per_slice.slice_key), rows)
                for per_slice in tfma.load_validation_result(uri).metric_validations_per_slice
                for failure in per_slice.failures]
    return rows, failures


def _describe_failure(failure, slice_name: str, rows: Dict[str, MetricRow]) -> str:
    """What missed which bound, e.g. "accuracy [overall] 0.8571 < floor 0.9" or
    "accuracy [overall] change -0.0357 < 0 allowed (baseline 0.8929)"; the bound is the failure's own threshold."""
    from tensorflow_model_analysis.proto import config_pb2  # pylint: disable=g-import-not-at-top  (slow import)
    name = f"{failure.metric_key.name} [{slice_name}]"
    if failure.metric_value.WhichOneof("type") != "double_value":
        return f"{name}: {failure.message}"  # e.g. a thresholded metric that was not computed
    value, threshold = failure.metric_value.double_value.value, failure.metric_threshold
    if threshold.HasField("value_threshold"):
        bounds = threshold.value_threshold
        if bounds.HasField("lower_bound") and value < bounds.lower_bound.value:
            return f"{name} {value:.4f} < floor {format_bound(bounds.lower_bound.value)}"
        return f"{name} {value:.4f} > ceiling {format_bound(bounds.upper_bound.value)}"
    change = threshold.change_threshold
    higher = change.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER
    baseline = rows.get(name, MetricRow("", "")).baseline
    missed = []
    if change.HasField("absolute") and (value < change.absolute.value if higher else value > change.absolute.value):
        missed.append(f"change {value:+.4f} {'<' if higher else '>'} {format_bound(change.absolute.value)} allowed")
    if change.HasField("relative") and baseline:
        ratio = value / baseline
        if ratio < change.relative.value if higher else ratio > change.relative.value:
            missed.append(f"relative change {ratio:+.2%} {'<' if higher else '>'} {change.relative.value:+.2%} allowed")
    base = "" if baseline is None else f" (baseline {baseline:.4f})"
    unmet = " and ".join(missed) or f"change {value:+.4f} ({text_format.MessageToString(change, as_one_line=True)})"
    return f"{name} {unmet}{base}"


def format_bound(value: float) -> str:
    """A threshold as people write it: 0.9, 0 (not -1e-10, the "no regression" epsilon)."""
    return f"{round(value, 4) + 0.0:.4f}".rstrip("0").rstrip(".")


def slice_name_of(slice_key) -> str:
    parts = [f"{s.column}={s.bytes_value.decode() or s.int64_value or s.float_value}"
             for s in slice_key.single_slice_keys]
    return ", ".join(parts) or "overall"
