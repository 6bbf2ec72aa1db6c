"""AnomaliesGate: a custom component that stops the pipeline when the data cannot train a good model:
ExampleValidator found anomalies, a split is empty, or a species is (nearly) absent from a split."""
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components import constants
from components.example_gen import SOURCE_FILE_PROPERTY, CsvInputError, RowCheck, RowFinding, find_rows

# ExampleValidator and StatisticsGen (TFX 1.16) write one binary proto per split under these names.
_ANOMALIES_FILE = "SchemaDiff.pb"
_STATISTICS_FILE = "FeatureStats.pb"

# Fewest examples of each species every split must hold. Below 5, one example decides 20+ points of that
# species' accuracy: TFMA's per-species slices turn to noise, the accuracy floor (0.9) cannot tolerate a single
# error in that species, and the Evaluator's no-regression check (change >= 0 vs the baseline) flips on one
# example; a species absent from 'eval' is never evaluated (TFMA then fails with a traceback) and one absent
# from 'train' is never learnt. Fisher's data has about 10 of each species in 'eval', 40 in 'train'.
MIN_EXAMPLES_PER_CLASS = 5
# CSV lines named per problem; the rest are counted.
LINES_SHOWN = 5
_Reason = anomalies_pb2.AnomalyInfo
# TFDV's reasons for a value missing from some rows: an empty CSV cell is an empty feature, and since a cell holds
# one value or none, a feature of the wrong shape (INVALID_FEATURE_SHAPE, what TFDV reports first) is one too.
_MISSING = {_Reason.INVALID_FEATURE_SHAPE, _Reason.FEATURE_TYPE_LOW_FRACTION_PRESENT,
            _Reason.FEATURE_TYPE_LOW_NUMBER_PRESENT, _Reason.FEATURE_TYPE_NOT_PRESENT,
            _Reason.FEATURE_TYPE_LOW_NUMBER_VALUES, _Reason.FEATURE_TYPE_NO_VALUES}


class DataValidationError(ValueError):
    """Raised when the input data does not conform to the curated schema."""


def load_anomalies(anomalies: tfx.types.standard_artifacts.ExampleAnomalies) -> Dict[str, anomalies_pb2.Anomalies]:
    """The Anomalies proto of each split of an ExampleValidator output."""
    return {
        split: anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(os.path.join(
            artifact_utils.get_split_uri([anomalies], split), _ANOMALIES_FILE)))
        for split in artifact_utils.decode_split_names(anomalies.split_names)
    }


def load_statistics(statistics: tfx.types.standard_artifacts.ExampleStatistics
                    ) -> Dict[str, statistics_pb2.DatasetFeatureStatisticsList]:
    """The statistics proto of each split of a StatisticsGen output."""
    return {
        split: statistics_pb2.DatasetFeatureStatisticsList.FromString(io_utils.read_bytes_file(os.path.join(
            artifact_utils.get_split_uri([statistics], split), _STATISTICS_FILE)))
        for split in artifact_utils.decode_split_names(statistics.split_names)
    }


def empty_splits(statistics_by_split: Dict[str, statistics_pb2.DatasetFeatureStatisticsList]) -> List[str]:
    """Splits with no examples at all, which TFDV's schema validation does not report."""
    return [split for split, stats in sorted(statistics_by_split.items())
            if not any(dataset.num_examples for dataset in stats.datasets)]


def class_counts(stats: statistics_pb2.DatasetFeatureStatisticsList) -> Dict[str, int]:
    """Examples per label value in one split, from TFDV's rank histogram of the label ({} without a label)."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top  (slow import)
    try:
        label = tfdv.get_feature_stats(stats.datasets[0], tfdv.FeaturePath([constants.LABEL_KEY]))
    except (ValueError, IndexError):  # no label column: the schema check reports it
        return {}
    histogram = label.string_stats.rank_histogram.buckets  # every value (top_values keeps only the top few)
    if histogram:
        return {bucket.label: int(bucket.sample_count) for bucket in histogram}
    return {top.value: int(top.frequency) for top in label.string_stats.top_values}


def too_few_per_class(statistics_by_split: Dict[str, statistics_pb2.DatasetFeatureStatisticsList],
                      minimum: int = MIN_EXAMPLES_PER_CLASS) -> List[str]:
    """One line per split and species with fewer than `minimum` examples, saying how many rows would do."""
    counts = {split: class_counts(stats) for split, stats in statistics_by_split.items()}
    sizes = {split: sum(dataset.num_examples for dataset in stats.datasets)
             for split, stats in statistics_by_split.items()}
    if not all(sizes.values()):
        return []  # empty_splits reports these
    smallest = min(sizes, key=sizes.get)  # the split that needs the most rows in all to get `minimum`
    total = sum(sizes.values())
    needed, share = math.ceil(minimum * total / sizes[smallest]), sizes[smallest] / total
    lines = []
    for split, by_class in sorted(counts.items()):
        if not by_class:
            continue
        for species in constants.CLASS_NAMES:
            have = by_class.get(species, 0)
            if have >= minimum:
                continue
            in_data = sum(c.get(species, 0) for c in counts.values())
            lines.append(
                f"split '{split}': species '{species}' has {have} example{'' if have == 1 else 's'} (at least "
                f"{minimum} needed in each split; the data has {in_data} row{'' if in_data == 1 else 's'} of it): "
                f"add rows of '{species}' to the CSV, about {needed} in all, since "
                f"'{smallest}' gets about {share:.0%} of the rows")
    return lines


def describe_anomalies(anomalies_by_split: Dict[str, anomalies_pb2.Anomalies]) -> str:
    """One readable line per anomalous feature (or dataset-level problem) per split; '' if none."""
    lines = []
    for split, anomalies in sorted(anomalies_by_split.items()):
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"split '{split}': dataset: {_explain(anomalies.dataset_anomaly_info)}")
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split '{split}': feature '{feature}': {_explain(info)}")
    return "\n".join(lines)


def _explain(info: anomalies_pb2.AnomalyInfo) -> str:
    return info.description or info.short_description or "; ".join(r.description for r in info.reason)


def without_reasons(anomalies: anomalies_pb2.Anomalies, drop: Callable[[str, int], bool]) -> anomalies_pb2.Anomalies:
    """A copy without the reasons drop(feature, reason type) selects (a feature left with none is removed)."""
    kept = anomalies_pb2.Anomalies()
    kept.CopyFrom(anomalies)
    for feature, info in list(kept.anomaly_info.items()):
        others = [r for r in info.reason if not drop(feature, r.type)]
        if not others:
            del kept.anomaly_info[feature]
        elif len(others) < len(info.reason):
            del info.reason[:]
            info.reason.extend(others)
            info.ClearField("description")  # it spoke of every reason: _explain falls back to the remaining ones
            info.ClearField("short_description")
    return kept


def without_label_unique_count(anomalies: anomalies_pb2.Anomalies) -> anomalies_pb2.Anomalies:
    """A copy without the schema's "too few unique species" finding, for when too_few_per_class said more."""
    return without_reasons(anomalies, lambda feature, reason: (feature, reason) == (
        constants.LABEL_KEY, _Reason.FEATURE_TYPE_LOW_UNIQUE))


def row_check(reason: int, feature: schema_pb2.Feature, schema: schema_pb2.Schema) -> Optional[RowCheck]:
    """The rule a CSV row breaks to cause this anomaly reason of the feature, from the schema; None for the
    reasons no single row shows (too few distinct values, ...)."""
    bounds = feature.float_domain
    if reason == _Reason.FLOAT_TYPE_BIG_FLOAT and bounds.HasField("max"):
        return RowCheck(feature.name, f"is above the schema's maximum {bounds.max:g}",
                        lambda values: pc.greater(values, bounds.max))
    if reason == _Reason.FLOAT_TYPE_SMALL_FLOAT and bounds.HasField("min"):
        return RowCheck(feature.name, f"is below the schema's minimum {bounds.min:g}",
                        lambda values: pc.less(values, bounds.min))
    if reason == _Reason.FLOAT_TYPE_HAS_NAN:
        return RowCheck(feature.name, "is NaN (not allowed by the schema)", pc.is_nan)
    if reason == _Reason.FLOAT_TYPE_HAS_INF:
        return RowCheck(feature.name, "is infinite (not allowed by the schema)", pc.is_inf)
    # Values outside the domain are also what makes too many distinct ones: one problem, said once.
    if reason in (_Reason.ENUM_TYPE_UNEXPECTED_STRING_VALUES, _Reason.FEATURE_TYPE_HIGH_UNIQUE) and (
            feature.HasField("domain") or feature.HasField("string_domain")):
        domain = next((d.value for d in schema.string_domain if d.name == feature.domain), feature.string_domain.value)
        allowed = pa.array(list(domain), pa.string())
        return RowCheck(feature.name, f"is not one of {', '.join(map(repr, domain))}",
                        lambda values: pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed))))
    if reason in _MISSING:
        return RowCheck(feature.name, "is empty (the schema requires a value)", pc.is_null)
    return None


def describe_rows(path: str, finding: RowFinding) -> str:
    """One line naming the file, the first lines and the values as written, e.g.
    "data.csv line 11: sepal_length '500' is above the schema's maximum 20"."""
    check, shown = finding.check, finding.lines
    more = finding.count - len(shown)
    if finding.count == 1:
        ((line, value),) = shown
        value = f" {value!r}" if value.strip() else ""
        return f"{path} line {line}: {check.column}{value} {check.rule}"
    lines = ", ".join(str(line) for line, _ in shown) + (f" and {more:,} more" if more else "")
    values = [value for _, value in shown if value.strip()]
    values = f" ({', '.join(map(repr, values))}{', ...' if more else ''})" if values else ""
    return f"{path} lines {lines}: {check.column} {check.rule}{values}"


def locate_anomalies(path: str, anomalies_by_split: Dict[str, anomalies_pb2.Anomalies]
                     ) -> Tuple[List[str], Dict[str, anomalies_pb2.Anomalies]]:
    """One line per value anomaly naming its rows in the CSV at `path` (once, whichever splits reported it), and
    the anomalies left for TFDV's own words: those no row shows, or whose rows were not found."""
    checks: Dict[Tuple[str, str], RowCheck] = {}  # (column, rule): several reasons may name the same rule
    rule_of: Dict[Tuple[str, int], Tuple[str, str]] = {}  # (feature, reason type) -> (column, rule)
    for anomalies in anomalies_by_split.values():
        features = {feature.name: feature for feature in anomalies.baseline.feature}
        for name, info in sorted(anomalies.anomaly_info.items()):
            for reason in info.reason:
                check = row_check(reason.type, features[name], anomalies.baseline) if name in features else None
                if check is not None:
                    rule_of[(name, reason.type)] = (check.column, check.rule)
                    checks.setdefault(rule_of[(name, reason.type)], check)
    if not checks:
        return [], anomalies_by_split
    findings = find_rows(path, list(checks.values()), limit=LINES_SHOWN)
    found = {rule for rule, finding in zip(checks, findings) if finding.count}
    located = {key for key, rule in rule_of.items() if rule in found}
    lines = [describe_rows(path, finding) for finding in sorted(  # in the file's order
        (finding for finding in findings if finding.count), key=lambda finding: finding.lines[0][0])]
    rest = {split: without_reasons(anomalies, lambda feature, reason: (feature, reason) in located)
            for split, anomalies in anomalies_by_split.items()}
    return lines, rest


def check_data(statistics_by_split: Dict[str, statistics_pb2.DatasetFeatureStatisticsList],
               anomalies_by_split: Dict[str, anomalies_pb2.Anomalies], data_path: Optional[str] = None) -> None:
    """Raises DataValidationError naming every problem that keeps the data from training a classifier, and the
    lines of the CSV at data_path (when given) holding each offending value."""
    empty = empty_splits(statistics_by_split)
    if empty:
        raise DataValidationError(f"the data has no data rows (empty splits: {', '.join(empty)})")
    scarce = too_few_per_class(statistics_by_split)
    if scarce:
        anomalies_by_split = {split: without_label_unique_count(a) for split, a in anomalies_by_split.items()}
    rows: List[str] = []
    if data_path:
        try:
            rows, anomalies_by_split = locate_anomalies(data_path, anomalies_by_split)
        except (CsvInputError, OSError):  # the file changed or went since ExampleGen read it: TFDV's words only
            logging.exception("could not find the rows of the anomalies in %s", data_path)
    report = "\n".join(filter(None, rows + [describe_anomalies(anomalies_by_split)]))
    problems = []
    if scarce:
        problems.append("the data cannot train a classifier of every species:\n" + "\n".join(scarce))
    if report:
        problems.append("the data does not match the schema:\n" + report)
    if problems:
        raise DataValidationError("\n".join(problems))


@tfx.dsl.components.component
def AnomaliesGate(
        statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
        anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
        examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None) -> None:
    """Fails (and so stops everything downstream) if any split is empty, lacks a species or has an anomaly;
    with the examples (optional), the message names the lines of the CSV they were read from."""
    data_path = examples.get_string_custom_property(SOURCE_FILE_PROPERTY) if examples is not None else ""
    check_data(load_statistics(statistics), load_anomalies(anomalies), data_path or None)
