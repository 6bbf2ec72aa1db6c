"""The run report: one self-contained HTML page per pipeline run (graph, data, training, evaluation, outcome and,
once `iris-tfx monitor` has checked the model's traffic, monitoring), read from the run's artifacts through ML
Metadata and the TFX/TFDV/TFMA readers. It loads nothing from a network: its figures are inline SVG and its
Content-Security-Policy forbids every fetch."""
import contextlib
import dataclasses
import gzip
import html
import logging
import math
import os
import re
import tempfile
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import numpy as np

from components import constants
from pipeline import report_figures as figures
from pipeline import report_monitoring as monitoring_lib
from pipeline.config import PipelineConfig

if TYPE_CHECKING:  # imported where used: it imports TFX, and a wrong --workdir should fail at once
    from pipeline.summary import RunSummary

MAX_SAMPLED_EXAMPLES = 50_000    # per split for the histograms: enough for their shape, bounded for big data
NOT_RUN = "NOT RUN"
# Keras' TensorBoard callback names
_CURVE_TAGS = {"loss": "epoch_loss", "accuracy": f"epoch_{constants.ACCURACY_METRIC}"}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"  # the page may fetch nothing at all


class ReportError(ValueError):
    """No run to report on (no ML Metadata in the workdir, or no run by that id)."""


@dataclasses.dataclass
class ReportData:
    """What the report shows of one run, read from ML Metadata: its summary and its artifacts' URIs."""
    summary: "RunSummary"
    started: str                                   # the run's start, UTC
    data_path: Optional[str]                       # the CSV ExampleGen read (None if it never ran)
    outputs: Dict[str, object] = dataclasses.field(default_factory=dict)  # "Node.output_key" -> tfx Artifact
    pipeline_nodes: List[str] = dataclasses.field(default_factory=list)     # every node, in pipeline order
    pipeline_edges: List[figures.GraphEdge] = dataclasses.field(default_factory=list)
    monitoring: Optional[monitoring_lib.Monitoring] = None  # the newest `iris-tfx monitor` result of the run


def write_report(workdir: str, run_id: Optional[str] = None, failure: Optional[str] = None,
                 pipeline_name: str = constants.PIPELINE_NAME) -> str:
    """Writes <workdir>/reports/<run id>.html for that run (default: the latest) and returns its path.

    failure: the error that stopped the run, as `iris-tfx run` printed it, for a failed component whose execution
    recorded no message in ML Metadata (TFX's Beam runner records none for an exception in a component)."""
    from pipeline import summary as summary_lib  # pylint: disable=g-import-not-at-top  (imports TFX)
    with _quiet_tensorflow():
        record = read_run(workdir, run_id, pipeline_name)
        for node in record.summary.failed:
            node.message = node.message or summary_lib.without_beam_suffix(failure or "")
        page = render(record, build_figures(record))
    path = PipelineConfig(workdir=workdir).report_path(record.summary.run_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=os.path.dirname(path))
    with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        f.write(page)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; a report is as readable as any output
    os.replace(temporary, path)  # a reader never sees half a page
    return path


# --- reading the run ---------------------------------------------------------------------------------------

def read_run(workdir: str, run_id: Optional[str] = None, pipeline_name: str = constants.PIPELINE_NAME
             ) -> ReportData:
    """The run's summary (pipeline/summary.py's reading of MLMD), its outputs by node and key, and the DAG."""
    metadata_path = PipelineConfig(workdir=workdir).metadata_path
    if not os.path.isfile(metadata_path):
        raise ReportError(f"--workdir {workdir}: no pipeline run recorded there (no metadata.sqlite)")
    from pipeline import summary as summary_lib  # pylint: disable=g-import-not-at-top  (imports TFX)
    with summary_lib.open_store(metadata_path) as store:
        runs = [run for run in summary_lib.pipeline_runs(store, pipeline_name) if run_id in (None, run.name)]
        if not runs:
            raise ReportError(f"--workdir {workdir}: " + (f"no run with id {run_id}" if run_id else "no runs"))
        summary = summary_lib.summarize_run(store, runs[0])
        outputs = _outputs_by_key(store, runs[0])
    nodes, edges = pipeline_dag()
    return ReportData(summary=summary, started=summary_lib.utc(summary.started_ms), data_path=summary.data_path or None,
                     outputs=outputs, pipeline_nodes=nodes, pipeline_edges=edges,
                     monitoring=monitoring_lib.read(workdir, summary.run_id))


def _outputs_by_key(store, run) -> Dict[str, object]:
    """Every output artifact of the run's executions by "Node.output_key" (e.g. "Trainer.model_run")."""
    from pipeline import summary as summary_lib  # pylint: disable=g-import-not-at-top  (imports TFX)
    return {f"{summary_lib.node_name(store, execution)}.{key}": artifact
            for execution in store.get_executions_by_context(run.id)
            for key, artifact in summary_lib.outputs(store, execution).items()}


def pipeline_dag() -> Tuple[List[str], List[figures.GraphEdge]]:
    """The pipeline's nodes and edges from create_pipeline itself (a failed run records no execution for the
    nodes it never reached, and MLMD keeps no copy of the DAG), each data edge labelled with its input key."""
    from pipeline.pipeline import create_pipeline
    components = create_pipeline(PipelineConfig()).components
    edges = []
    for component in components:
        fed: Dict[str, List[str]] = {}  # producer -> the inputs it feeds (Transform feeds the Trainer two)
        for key, channel in sorted(component.inputs.items()):
            if getattr(channel, "producer_component_id", None):
                fed.setdefault(channel.producer_component_id, []).append(key)
        edges += [figures.GraphEdge(upstream.id, component.id, ", ".join(fed.get(upstream.id, [])))
                  for upstream in sorted(component.upstream_nodes, key=lambda c: c.id)]
    return [c.id for c in components], edges


# --- figures ----------------------------------------------------------------------------------------------

def build_figures(record: ReportData) -> Dict[str, str]:
    """Every figure the run's artifacts allow, by section id ("graph", "data-train", "training", ...)."""
    drawn = {"graph": figures.pipeline_graph_svg(*graph_of(record))}
    examples = record.outputs.get("CsvExampleGen.examples")
    if examples is not None:
        counts = split_sizes(record)
        for split, (columns, labels) in read_examples(examples, counts).items():
            drawn[f"data-{split}"] = figures.histograms_svg(
                f"data-{split}", f"split '{split}': {counts.get(split, len(labels)):,} examples"
                + (f" ({len(labels):,} sampled)" if len(labels) < counts.get(split, 0) else ""),
                columns, labels, constants.CLASS_NAMES)
    model_run = record.outputs.get("Trainer.model_run")
    curves = training_curves(model_run.uri) if model_run is not None else {}
    if curves:
        drawn["training"] = figures.training_curves_svg("training", curves)
    evaluation = record.outputs.get("Evaluator.evaluation")
    transform_graph = record.outputs.get("Transform.transform_graph")
    if evaluation is not None and transform_graph is not None:
        classes = label_vocabulary(transform_graph.uri)
        for model, matrix in confusion_matrices(evaluation.uri, len(classes)).items():
            name = f"confusion-{model.split()[0]}"  # confusion-new, confusion-baseline
            drawn[name] = figures.confusion_matrix_svg(name, f"{model}: eval split", matrix, classes)
    if record.monitoring is not None:
        drawn.update(monitoring_lib.build_figures(record.monitoring))
    return drawn


def graph_of(record: ReportData) -> Tuple[List[figures.GraphNode], List[figures.GraphEdge]]:
    """The DAG's nodes with this run's status and time ("NOT RUN" where it has no execution)."""
    ran = {n.node: n for n in record.summary.nodes}
    names = record.pipeline_nodes + [n for n in ran if n not in record.pipeline_nodes]
    nodes = [figures.GraphNode(name, ran[name].status, ran[name].seconds) if name in ran
             else figures.GraphNode(name, NOT_RUN) for name in names]
    return nodes, record.pipeline_edges


def split_sizes(record: ReportData) -> Dict[str, int]:
    """Examples per split, from StatisticsGen's statistics ({} if it did not run)."""
    statistics = record.outputs.get("StatisticsGen.statistics")
    if statistics is None:
        return {}
    from components.validation import load_statistics  # pylint: disable=g-import-not-at-top
    return {split: sum(d.num_examples for d in stats.datasets)
            for split, stats in load_statistics(statistics).items()}


def class_counts(record: ReportData) -> Dict[str, Dict[str, int]]:
    """Examples per species in each split, from the statistics (the gate's own counts)."""
    statistics = record.outputs.get("StatisticsGen.statistics")
    if statistics is None:
        return {}
    from components import validation  # pylint: disable=g-import-not-at-top
    return {split: validation.class_counts(stats) for split, stats in validation.load_statistics(statistics).items()}


@contextlib.contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """TensorFlow's Python logger at ERROR meanwhile: TFMA's readers log a deprecation WARNING on every call."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_examples(examples, sizes: Mapping[str, int], limit: int = MAX_SAMPLED_EXAMPLES
                  ) -> Dict[str, Tuple[Dict[str, np.ndarray], np.ndarray]]:
    """Per split, each feature's values and the species, decoded with tfx-bsl from ExampleGen's own output:
    TFDV's statistics are not sliced by species. Every k-th example when a split holds more than `limit`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (slow imports)
    from tfx.types import artifact_utils
    from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder
    decoder = ExamplesToRecordBatchDecoder()
    result = {}
    for split in artifact_utils.decode_split_names(examples.split_names):
        files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
        stride = max(1, math.ceil(sizes.get(split, 0) / limit))
        records = tf.data.TFRecordDataset(files, compression_type="GZIP").shard(stride, 0).take(limit).batch(4096)
        columns: Dict[str, List[float]] = {key: [] for key in constants.FEATURE_KEYS}
        labels: List[str] = []
        for batch in records.as_numpy_iterator():
            decoded = decoder.DecodeBatch(list(batch))
            for key in constants.FEATURE_KEYS:
                columns[key] += [v[0] if v else math.nan for v in _column(decoded, key)]
            labels += [v[0].decode() if v else "" for v in _column(decoded, constants.LABEL_KEY)]
        result[split] = ({k: np.asarray(v, dtype=float) for k, v in columns.items()}, np.asarray(labels))
    return result


def _column(batch, name: str) -> list:
    """A decoded column as Python lists (all None when the examples lack the feature)."""
    index = batch.schema.get_field_index(name)
    return batch.column(index).to_pylist() if index >= 0 else [None] * batch.num_rows


def training_curves(model_run_dir: str) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """Loss and accuracy per round of training by step, per split ("train", "validation"), from the Trainer's
    TensorBoard logs (read with TensorBoard's own EventAccumulator)."""
    import json  # pylint: disable=g-import-not-at-top
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util
    from components.hyperparameters import TRAINING_RECORD
    record_path = os.path.join(model_run_dir, TRAINING_RECORD)
    record = json.load(open(record_path)) if os.path.isfile(record_path) else {}
    curves: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for split in ("train", "validation"):
        directory = os.path.join(model_run_dir, split)
        if not os.path.isdir(directory):
            continue
        events = event_accumulator.EventAccumulator(directory, size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        tags = set(events.Tags()[event_accumulator.TENSORS])
        for metric, tag in _CURVE_TAGS.items():
            if tag not in tags:
                continue
            points = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            rounds = max(len(points), 1)
            per_round = record.get("steps", rounds) / rounds  # Keras logs rounds ("epochs") of steps_per_round
            curves.setdefault(metric, {})[split] = [(round((i + 1) * per_round), v) for i, (_, v) in enumerate(points)]
    return curves


def label_vocabulary(transform_graph_dir: str) -> List[str]:
    """The species in the order of the label ids the model predicts (Transform's vocabulary)."""
    import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top  (slow import)
    return [v.decode() if isinstance(v, bytes) else v
            for v in tft.TFTransformOutput(transform_graph_dir).vocabulary_by_name(constants.LABEL_VOCABULARY)]


def confusion_matrices(evaluation_dir: str, classes: int) -> Dict[str, np.ndarray]:
    """The overall confusion matrix of each evaluated model ("new model", "baseline") from TFMA's plots."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top  (slow imports)
    from tensorflow_model_analysis.writers import eval_config_writer
    eval_config = eval_config_writer.load_eval_run(evaluation_dir)[0]
    baselines = {spec.name for spec in eval_config.model_specs if spec.is_baseline} if eval_config else set()
    matrices = {}
    for plots in tfma.load_plots(evaluation_dir):
        if plots.slice_key.single_slice_keys:
            continue  # per-species slices: their matrices are rows of the overall one
        for entry in plots.plot_keys_and_values:
            matrix_list = entry.value.multi_class_confusion_matrix_at_thresholds.matrices
            if not matrix_list:
                continue
            model = "baseline" if entry.key.model_name in baselines else "new model"
            matrices[model] = figures.matrix_from_entries(
                [(e.actual_class_id, e.predicted_class_id, e.num_weighted_examples)
                 for e in matrix_list[0].entries], classes)
    return dict(sorted(matrices.items(), key=lambda item: item[0] != "new model"))


@dataclasses.dataclass
class Thresholds:
    """The Evaluator's thresholds in words and which (slice, is_change) checks failed, from TFMA's own records."""
    floor: Optional[str] = None       # e.g. "floor 0.9"
    change: Optional[str] = None      # e.g. "no regression vs baseline"
    failed: Set[Tuple[str, bool]] = dataclasses.field(default_factory=set)  # (slice name, change threshold?)


def read_thresholds(evaluation_dir: str) -> Thresholds:
    """The eval config's accuracy thresholds and the validation result's failures, by slice."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top  (slow imports)
    from tensorflow_model_analysis.writers import eval_config_writer
    from pipeline import summary as summary_lib
    eval_config = eval_config_writer.load_eval_run(evaluation_dir)[0]
    bound, slice_name = summary_lib.format_bound, summary_lib.slice_name_of
    result = Thresholds()
    for spec in eval_config.metrics_specs if eval_config else []:
        for metric in spec.metrics:
            bounds = metric.threshold.value_threshold
            if bounds.HasField("lower_bound"):
                result.floor = f"floor {bound(bounds.lower_bound.value)}"
            if metric.threshold.HasField("change_threshold"):
                allowed = metric.threshold.change_threshold.absolute.value
                result.change = ("no regression vs baseline" if abs(allowed) < 1e-6
                                 else f"change >= {bound(allowed)}")
    result.failed = {(slice_name(per_slice.slice_key), failure.metric_key.is_diff)
                     for per_slice in tfma.load_validation_result(evaluation_dir).metric_validations_per_slice
                     for failure in per_slice.failures}
    return result


# --- the page ---------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; padding: 0 16px; max-width: 1280px;
       color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 3px 10px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #137333; font-weight: bold; } .fail { color: #b3261e; font-weight: bold; }
.outcome { padding: 10px 14px; border-radius: 6px; margin: 8px 0; }
.good { background: #e6f4ea; } .bad { background: #fce8e6; } .neutral { background: #f1f3f4; }
pre { background: #f6f6f6; padding: 8px; white-space: pre-wrap; } figure { margin: 8px 0; }
figure svg { max-width: 100%; height: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
"""


def render(record: ReportData, drawn: Mapping[str, str]) -> str:
    """The whole page: outcome first, then the pipeline graph, the data, training, evaluation and monitoring."""
    s = record.summary
    body = [f"<h1>Iris pipeline run {_e(s.run_id)}</h1>",
            f"<p>Started {_e(record.started)}; data: <code>{_e(record.data_path or 'unknown')}</code></p>",
            _outcome_section(record), _pipeline_section(record, drawn), _data_section(record, drawn),
            _training_section(record, drawn), _evaluation_section(record, drawn)]
    if record.monitoring is not None:
        body.append(monitoring_lib.section(record.monitoring, lambda name: _figure(drawn, name)))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            f"<title>Iris run {_e(s.run_id)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _e(text: object) -> str:
    return html.escape(str(text))


def _figure(drawn: Mapping[str, str], name: str, caption: str = "") -> str:
    if not drawn.get(name):
        return ""
    return (f'<figure id="figure-{_e(name)}" class="figure">{drawn[name]}'
            + (f"<figcaption>{_e(caption)}</figcaption>" if caption else "") + "</figure>")


def _outcome_section(record: ReportData) -> str:
    s = record.summary
    lines, tone = [], "neutral"
    for node in s.failed:
        lines.append(f"<b>{_e(node.node)} failed:</b><pre>{_e(node.message or 'no message recorded')}</pre>")
        tone = "bad"
    if s.blessed is not None:
        lines.append(f"Model blessed: <b>{'yes' if s.blessed else 'no'}</b>")
        tone = "good" if s.blessed else "bad"
    if s.pushed_path:
        how = "pushed by an earlier run with the same inputs (this run reused it)" if s.push_cached else "pushed"
        lines.append(f"Model {how}: <code>{_e(s.pushed_path)}</code> (version <b>{_e(s.pushed_version)}</b>)")
    else:
        lines.append("Pushed: nothing (the model being served, if any, is unchanged)")
    lines += [f'<span class="fail">threshold not met:</span> {_e(f)}' for f in s.validation_failures]
    return (f'<section id="outcome"><h2>Outcome</h2><div class="outcome {tone}">' + "<br>".join(lines)
            + "</div></section>")


def _pipeline_section(record: ReportData, drawn: Mapping[str, str]) -> str:
    rows = "".join(f"<tr><td>{_e(n.node)}</td><td>{_e(n.status)}</td><td class=\"num\">{n.seconds:.1f}s</td></tr>"
                   for n in record.summary.nodes)
    return ('<section id="pipeline"><h2>Pipeline</h2><div class="figures">' + _figure(drawn, "graph")
            + f"<table><tr><th>component</th><th>status</th><th>time</th></tr>{rows}</table></div></section>")


def _data_section(record: ReportData, drawn: Mapping[str, str]) -> str:
    parts = ['<section id="data"><h2>Data</h2>']
    refused = [n for n in record.summary.failed if n.node in ("CsvExampleGen", "AnomaliesGate")]
    for node in refused:
        parts.append(f'<div class="outcome bad"><b>The data was refused by {_e(node.node)}:</b>'
                     f"<pre>{_e(node.message)}</pre>")
        quoted = list(csv_lines(record.data_path, node.message)) if record.data_path else []
        if quoted:
            parts.append(f"The rows named, from <code>{_e(record.data_path)}</code>:<table>"
                         "<tr><th>line</th><th>text</th></tr>"
                         + "".join(f"<tr><td class=\"num\">{n}</td><td><code>{_e(t)}</code></td></tr>"
                                   for n, t in quoted)
                         + "</table>")
        parts.append("</div>")
    counts = class_counts(record)
    sizes = split_sizes(record)
    if counts:
        header = "".join(f"<th>{_e(c)}</th>" for c in constants.CLASS_NAMES)
        rows = "".join(f"<tr><td>{_e(split)}</td><td class=\"num\">{sizes.get(split, 0):,}</td>"
                       + "".join(f"<td class=\"num\">{by_class.get(c, 0):,}</td>" for c in constants.CLASS_NAMES)
                       + "</tr>" for split, by_class in sorted(counts.items()))
        parts.append(f"<table><tr><th>split</th><th>examples</th>{header}</tr>{rows}</table>")
    anomalies = record.summary.anomalies
    if "ExampleValidator.anomalies" in record.outputs:
        parts.append("<p>Anomalies (ExampleValidator against the curated schema): "
                     + (f"</p><pre>{_e(anomalies)}</pre>" if anomalies else "none</p>"))
    split_figures = [name for name in drawn if name.startswith("data-")]
    parts.append('<div class="figures">' + "".join(_figure(drawn, name) for name in split_figures) + "</div>")
    if not split_figures and not refused:
        parts.append("<p>No examples were written by this run.</p>")
    return "".join(parts) + "</section>"


def csv_lines(path: str, message: str, limit: int = 20) -> Iterator[Tuple[int, str]]:
    """The CSV's lines that a failure message names ("line 9", "lines 3, 7 and 12", "lines 3, 7 and 40 more",
    "<path>:9"), from the file."""
    named = (re.findall(r"\blines? (\d+(?:(?:, | and )\d+(?![\d,]*\s+more))*)", message)
             + re.findall(re.escape(path) + r":(\d+)", message))
    wanted = sorted({int(n) for group in named for n in re.findall(r"\d+", group)})[:limit]
    if not wanted or "://" in path or not os.path.isfile(path):
        return
    with open(path, "rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    with (gzip.open if compressed else open)(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
        for number, line in enumerate(f, start=1):
            if number in wanted:
                yield number, line.rstrip("\r\n")
            if number >= wanted[-1]:
                return


def _training_section(record: ReportData, drawn: Mapping[str, str]) -> str:
    text = record.summary.training or "The Trainer did not run in this run."
    return (f'<section id="training"><h2>Training</h2><p>{_e(text)}</p>'
            + _figure(drawn, "training", "loss and accuracy by step (Keras logs, one point per round of steps)")
            + "</section>")


def _evaluation_section(record: ReportData, drawn: Mapping[str, str]) -> str:
    evaluation = record.outputs.get("Evaluator.evaluation")
    if evaluation is None:
        return '<section id="evaluation"><h2>Evaluation</h2><p>The Evaluator did not run in this run.</p></section>'
    rows = {name: row for name, row in record.summary.metrics.items() if row.metric == constants.ACCURACY_METRIC}
    thresholds = read_thresholds(evaluation.uri)
    compared = any(row.baseline is not None for row in rows.values())
    header = "<tr><th>accuracy on</th><th>new model</th>" + ("<th>baseline</th><th>change</th>" if compared else "")
    checks = [(is_change, words) for is_change, words in ((False, thresholds.floor), (True, thresholds.change))
              if words and (compared or not is_change)]
    header += "".join(f"<th>{_e(words)}</th>" for _, words in checks) + "</tr>"
    body = []
    for row in sorted(rows.values(), key=lambda r: (r.slice_name != "overall", r.slice_name)):
        cells = row.cells()
        line = f"<tr><td>{_e(row.slice_name)}</td><td class=\"num\">{cells[0]}</td>"
        if compared:
            line += f"<td class=\"num\">{cells[1]}</td><td class=\"num\">{cells[2]}</td>"
        for is_change, _ in checks:
            passed = (row.slice_name, is_change) not in thresholds.failed
            line += f'<td class="{"pass" if passed else "fail"}">{"pass" if passed else "FAIL"}</td>'
        body.append(line + "</tr>")
    matrices = [name for name in drawn if name.startswith("confusion-")]
    baseline = ("the baseline is the previous blessed model" if compared
                else "no baseline (no earlier blessed model): the floor alone decides")
    return (f'<section id="evaluation"><h2>Evaluation</h2><p>On the eval split; {baseline}.</p>'
            + "<table>" + header + "".join(body) + "</table>"
            + "".join(f"<p class=\"fail\">threshold not met: {_e(f)}</p>" for f in record.summary.validation_failures)
            + '<div class="figures">' + "".join(_figure(drawn, name) for name in matrices) + "</div></section>")
