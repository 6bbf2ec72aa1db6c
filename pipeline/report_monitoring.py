"""The report's Monitoring section: the newest `iris-tfx monitor` result of the run (pipeline/monitor.py writes one
directory per check under <workdir>/monitoring/<run id>/<UTC stamp>/), read and checked here so that a broken
result directory becomes a note on the page rather than a report that cannot be written."""
import dataclasses
import html
import json
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from components import constants
from pipeline import report_figures as figures

if TYPE_CHECKING:  # annotations only: TFDV and its protos are imported where used (slow imports)
    from tensorflow_metadata.proto.v0 import statistics_pb2

RESULT_FILE = "result.json"
_STAMP = re.compile(r"\d{8}T\d{6}Z")  # the result directories' names, %Y%m%dT%H%M%SZ: sorted by name = by time
_SPECIES_FIGURE = "monitor-species"
_EXPECTED = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "an integer"}


class ResultError(ValueError):
    """A monitor result file that is missing or not as pipeline/monitor.py writes it (one line: what, where)."""


@dataclasses.dataclass
class Comparison:
    """One TFDV comparator's outcome: the distance measured, the schema's threshold, and whether it was exceeded."""
    distance: float
    threshold: float
    found: bool


@dataclasses.dataclass
class FeatureResult:
    """A feature's skew (vs training) and drift (vs the previous window) and its verdict; None: not checked."""
    name: str
    skew: Optional[Comparison]
    drift: Optional[Comparison]
    out_of_domain: int
    verdict: str


@dataclasses.dataclass
class Monitoring:
    """What the section shows of one monitor result; `problems` names each part that could not be read."""
    directory: str
    results: int                                   # result directories of this run (the newest is shown)
    result: Dict[str, Any] = dataclasses.field(default_factory=dict)
    features: List[FeatureResult] = dataclasses.field(default_factory=list)
    species: Optional[Comparison] = None          # the predicted species mix vs the training labels' (skew)
    species_drift: Optional[Comparison] = None    # ... vs the previous window's predicted mix
    mixes: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)  # "training"/"serving" -> shares
    histograms: Dict[str, Dict[str, figures.Histogram]] = dataclasses.field(default_factory=dict)  # feature -> ...
    anomalies: Optional[List[str]] = None         # None: not read
    problems: List[str] = dataclasses.field(default_factory=list)


def result_directories(workdir: str, run_id: str) -> List[str]:
    """The run's monitor result directories, oldest first ([] when the run was never monitored)."""
    parent = os.path.join(workdir, constants.MONITORING_DIR, run_id)
    names = sorted(n for n in os.listdir(parent) if _STAMP.fullmatch(n)) if os.path.isdir(parent) else []
    return [os.path.join(parent, n) for n in names if os.path.isdir(os.path.join(parent, n))]


def read(workdir: str, run_id: str) -> Optional[Monitoring]:
    """The newest monitor result of the run (None if there is none), every unreadable part noted in `problems`."""
    directories = result_directories(workdir, run_id)
    if not directories:
        return None
    monitoring = Monitoring(directory=directories[-1], results=len(directories))
    try:
        monitoring.result = _load_json(os.path.join(monitoring.directory, RESULT_FILE))
        _field(monitoring.result, "found", bool)
        monitoring.features = [_feature(f) for f in _field(monitoring.result, "features", list)]
        mix = _field(monitoring.result, "species_mix", dict)
        monitoring.species = _optional(mix, None, "species_mix")
        monitoring.species_drift = _optional(mix, "drift", "species_mix drift")
        monitoring.mixes = {side: {str(k): float(_field(shares, k, (int, float), f"species_mix {side}"))
                                   for shares in [_field(mix, side, dict)] for k in shares}
                            for side in ("training", "serving")}
    except ResultError as error:
        monitoring.problems.append(str(error))
        return monitoring
    statistics = {"training": _statistics(monitoring, "training_statistics"),
                  "serving": _statistics(monitoring, "serving_statistics")}
    for feature in monitoring.features:
        drawn = {side: h for side, stats in statistics.items() if stats is not None
                 for h in [_histogram(stats, feature.name)] if h is not None}
        if drawn:
            monitoring.histograms[feature.name] = drawn
    monitoring.anomalies = _anomalies(monitoring)
    return monitoring


def _load_json(path: str) -> Dict[str, Any]:
    """The JSON object in the file, or a ResultError saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
    except OSError as error:
        raise ResultError(f"{path}: cannot be read ({error.strerror or error})") from error
    except ValueError as error:
        raise ResultError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(loaded, dict):
        raise ResultError(f"{path}: not a JSON object")
    return loaded


def _field(record: Mapping[str, Any], key: str, kind: Any, where: str = RESULT_FILE) -> Any:
    """record[key] if it is of that kind (a type or a tuple of types; a bool is no number), else a ResultError."""
    value = record.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = _EXPECTED.get(kind, "a number")
        raise ResultError(f"{where}: '{key}' is {'missing' if value is None else repr(value)}, expected {expected}")
    return value


def _optional(record: Mapping[str, Any], key: Optional[str], where: str) -> Optional[Comparison]:
    """record[key] (key None: record itself) as a Comparison; None when it is null or its distance is (not measured:
    the schema declares no comparator for the feature)."""
    value = record.get(key) if key else record
    if value is None or isinstance(value, dict) and value.get("distance", 0) is None:
        return None
    return _comparison(_field(record, key, dict, where) if key else value, where)


def _comparison(record: Mapping[str, Any], where: str) -> Comparison:
    """{"distance", "threshold", "found"} as a Comparison (a ResultError naming `where` if a field is wrong)."""
    number = (int, float)
    return Comparison(float(_field(record, "distance", number, where)),
                      float(_field(record, "threshold", number, where)), bool(_field(record, "found", bool, where)))


def _feature(record: Any) -> FeatureResult:
    """One entry of result.json's "features"."""
    if not isinstance(record, dict):
        raise ResultError(f"{RESULT_FILE}: a 'features' entry is {record!r}, expected an object")
    name = _field(record, "name", str, "features")
    where = f"feature '{name}'"
    return FeatureResult(name, _optional(record, "skew", f"{where} skew"), _optional(record, "drift", f"{where} drift"),
                         int(_field(record, "out_of_domain", int, where)), _field(record, "verdict", str, where))


def _statistics(monitoring: Monitoring, key: str) -> Optional["statistics_pb2.DatasetFeatureStatistics"]:
    """A DatasetFeatureStatistics (the first dataset) named by result.json (relative to the result directory or a
    URI), or None with a note."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top  (slow import)
    name = monitoring.result.get(key)
    if not isinstance(name, str) or not name:
        monitoring.problems.append(f"{RESULT_FILE}: '{key}' is {'missing' if name is None else repr(name)}")
        return None
    path = name if "://" in name or os.path.isabs(name) else os.path.join(monitoring.directory, name)
    try:
        statistics = tfdv.load_stats_binary(path)
    except Exception as error:  # pylint: disable=broad-except  (gfile and protobuf raise many kinds: each is a note)
        monitoring.problems.append(f"{key} {path}: cannot be read ({type(error).__name__}: {error})")
        return None
    if not statistics.datasets:
        monitoring.problems.append(f"{key} {path}: holds no dataset statistics")
        return None
    return statistics.datasets[0]


def _histogram(statistics: "statistics_pb2.DatasetFeatureStatistics", feature: str) -> Optional[figures.Histogram]:
    """TFDV's equi-width histogram of the feature (the one its Jensen-Shannon divergence compares), else its
    quantiles histogram; None when the statistics have neither."""
    from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top
    found = [f for f in statistics.features if f.path.step == [feature] or f.name == feature]
    if not found or not found[0].HasField("num_stats"):
        return None
    by_type = {h.type: h for h in found[0].num_stats.histograms if h.buckets}
    chosen = by_type.get(statistics_pb2.Histogram.STANDARD) or by_type.get(statistics_pb2.Histogram.QUANTILES)
    # An infinite value gets a bucket with an infinite edge, which no axis can draw: it is left out of the picture
    # (the table counts it among the values out of the schema's domain).
    buckets = [b for b in chosen.buckets if np.isfinite(b.low_value) and np.isfinite(b.high_value)] if chosen else []
    if not buckets:
        return None
    return figures.Histogram(np.array([b.low_value for b in buckets]), np.array([b.high_value for b in buckets]),
                             np.array([b.sample_count for b in buckets]))


def _anomalies(monitoring: Monitoring) -> Optional[List[str]]:
    """TFDV's anomalies of the window, one line per feature in TFDV's words (None with a note if unreadable)."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top  (slow import)
    name = monitoring.result.get("anomalies")
    if not isinstance(name, str) or not name:
        monitoring.problems.append(f"{RESULT_FILE}: 'anomalies' is {'missing' if name is None else repr(name)}")
        return None
    path = os.path.join(monitoring.directory, name)
    try:
        anomalies = tfdv.load_anomalies_text(path)
    except Exception as error:  # pylint: disable=broad-except  (gfile and the text parser raise many kinds)
        monitoring.problems.append(f"anomalies {path}: cannot be read ({type(error).__name__}: {error})")
        return None
    lines = [f"dataset: {anomalies.dataset_anomaly_info.description}"] if anomalies.HasField(
        "dataset_anomaly_info") else []
    return lines + [f"{feature}: {info.description or info.short_description}"
                    for feature, info in sorted(anomalies.anomaly_info.items())]


# --- figures and the section --------------------------------------------------------------------------------

def figure_name(feature: str) -> str:
    """The section's figure id for a feature's serving vs training distribution."""
    return f"monitor-{feature}"


def build_figures(monitoring: Monitoring) -> Dict[str, str]:
    """One picture per feature (serving vs training densities on one axis) and the species mix as bars."""
    drawn = {}
    for feature in monitoring.features:
        if feature.name in monitoring.histograms:
            drawn[figure_name(feature.name)] = figures.distributions_svg(
                figure_name(feature.name), f"{feature.name}: {_words(feature.skew, 'JSD')}", feature.name,
                monitoring.histograms[feature.name])
    if monitoring.mixes:
        classes = list(constants.CLASS_NAMES) + sorted({c for mix in monitoring.mixes.values() for c in mix}
                                                       - set(constants.CLASS_NAMES))
        drawn[_SPECIES_FIGURE] = figures.shares_svg(
            _SPECIES_FIGURE, f"species: {_words(monitoring.species, 'L-inf')}",
            {"training labels": monitoring.mixes.get("training", {}),
             "served predictions": monitoring.mixes.get("serving", {})}, classes)
    return drawn


def _words(comparison: Optional[Comparison], measure: str) -> str:
    """A figure's verdict in its title, e.g. "JSD 0.731 > 0.1"."""
    if comparison is None:
        return "not checked"
    return f"{measure} {comparison.distance:.3g} {'>' if comparison.found else '<='} {comparison.threshold:g}"


def section(monitoring: Monitoring, figure: Callable[[str], str]) -> str:
    """The Monitoring section's HTML; figure(name) is the page's <figure> for a drawn figure ("" if not drawn)."""
    e = lambda text: html.escape(str(text))  # noqa: E731
    r = monitoring.result
    parts = ['<section id="monitoring"><h2>Monitoring</h2>',
             ("<p>The monitor result of this run" if monitoring.results == 1 else
              f"<p>The newest of {monitoring.results} monitor results of this run")
             + f": <code>{e(monitoring.directory)}</code></p>"]
    if monitoring.problems:
        parts.append('<div class="outcome bad"><b>This monitor result could not be read in full:</b><ul>'
                     + "".join(f"<li>{e(p)}</li>" for p in monitoring.problems) + "</ul></div>")
    if not r or not monitoring.features:
        return "".join(parts) + "</section>"
    window, model = r.get("window") or {}, r.get("model") or {}
    parts.append(f"<p>Checked {e(r.get('created', '?'))}: traffic logged from {e(window.get('first', '?'))} to "
                 f"{e(window.get('last', '?'))}" + (f" (since {e(r['since'])})" if r.get("since") else "")
                 + f", {e(r.get('records', '?'))} logged request(s) holding {e(r.get('examples', '?'))} examples, "
                 f"answered by model <b>{e(model.get('name', '?'))}</b> version <b>{e(model.get('version', '?'))}"
                 "</b>. Skew: against this run's training split; drift: against the previous window of the same "
                 "length" + ("" if any(f.drift for f in monitoring.features) else
                             " (not checked: it needs --since and traffic logged before that window)") + ".</p>")
    found = bool(r.get("found"))
    parts.append(f'<div class="outcome {"bad" if found else "good"}">Skew or drift found: <b>{"yes" if found else "no"}'
                 "</b></div>")
    rows = [(f.name, f.skew, f.drift, f.out_of_domain, f.verdict) for f in monitoring.features]
    if monitoring.mixes:
        rows.append(("species (predicted mix vs training labels)", monitoring.species, monitoring.species_drift, "",
                     ""))
    parts.append("<table><tr><th>feature</th><th>skew</th><th>threshold</th><th>skew check</th><th>drift</th>"
                 "<th>threshold</th><th>drift check</th><th>out of domain</th><th>verdict</th></tr>"
                 + "".join(f"<tr><td>{e(name)}</td>{_cells(skew)}{_cells(drift)}<td class=\"num\">{e(outside)}</td>"
                           f"<td>{e(verdict)}</td></tr>" for name, skew, drift, outside, verdict in rows)
                 + "</table>")
    names = [figure_name(f.name) for f in monitoring.features] + [_SPECIES_FIGURE]
    parts.append('<div class="figures">' + "".join(figure(name) for name in names) + "</div>")
    if monitoring.anomalies is not None:
        parts.append("<p>Anomalies (TFDV: this window's statistics against the schema, its species "
                     "being the predicted ones and the training-only rule of all three species in a split left "
                     "out, and against the skew and drift comparators' thresholds; the training data's own "
                     "anomalies are in the run's data section): "
                     + (f"</p><pre>{e(chr(10).join(monitoring.anomalies))}</pre>" if monitoring.anomalies
                        else "none</p>"))
    return "".join(parts) + "</section>"


def _cells(comparison: Optional[Comparison]) -> str:
    """Distance, threshold and pass/FAIL cells (styled like the evaluation's), or "not checked"."""
    if comparison is None:
        return '<td colspan="3">not checked</td>'
    verdict = '<td class="fail">FAIL</td>' if comparison.found else '<td class="pass">pass</td>'
    return f'<td class="num">{comparison.distance:.4f}</td><td class="num">{comparison.threshold:g}</td>{verdict}'
