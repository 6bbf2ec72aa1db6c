"""AnomaliesGate: a custom component that stops the pipeline when the data cannot train a good model:
ExampleValidator found anomalies, a split is empty, or a species is (nearly) absent from a split."""
import math
import os
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components import constants

# ExampleValidator and StatisticsGen (TFX 1.16) write one binary proto per split under these names.
_ANOMALIES_FILE = "SchemaDiff.pb"
_STATISTICS_FILE = "FeatureStats.pb"

# Fewest examples of each species every split must hold. Below 5, one example decides 20+ points of that
# species' accuracy: TFMA's per-species slices turn to noise, the accuracy floor (0.9) cannot tolerate a single
# error in that species, and the Evaluator's no-regression check (change >= 0 vs the baseline) flips on one
# example; a species absent from 'eval' is never evaluated (TFMA then fails with a traceback) and one absent
# from 'train' is never learnt. Fisher's data has about 10 of each species in 'eval', 40 in 'train'.
MIN_EXAMPLES_PER_CLASS = 5


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


def without_label_unique_count(anomalies: anomalies_pb2.Anomalies) -> anomalies_pb2.Anomalies:
    """A copy without the schema's "too few unique species" finding, for when too_few_per_class said more."""
    kept = anomalies_pb2.Anomalies()
    kept.CopyFrom(anomalies)
    info = kept.anomaly_info.get(constants.LABEL_KEY)
    if info is None:
        return kept
    others = [r for r in info.reason if r.type != anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_UNIQUE]
    if not others:
        del kept.anomaly_info[constants.LABEL_KEY]
    elif len(others) < len(info.reason):
        del info.reason[:]
        info.reason.extend(others)
        info.ClearField("description")  # it spoke of every reason: _explain falls back to the remaining ones
        info.ClearField("short_description")
    return kept


def check_data(statistics_by_split: Dict[str, statistics_pb2.DatasetFeatureStatisticsList],
               anomalies_by_split: Dict[str, anomalies_pb2.Anomalies]) -> None:
    """Raises DataValidationError naming every problem that keeps the data from training a classifier."""
    empty = empty_splits(statistics_by_split)
    if empty:
        raise DataValidationError(f"the data has no data rows (empty splits: {', '.join(empty)})")
    scarce = too_few_per_class(statistics_by_split)
    if scarce:
        anomalies_by_split = {split: without_label_unique_count(a) for split, a in anomalies_by_split.items()}
    report = describe_anomalies(anomalies_by_split)
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
        anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails (and so stops everything downstream) if any split is empty, lacks a species or has an anomaly."""
    check_data(load_statistics(statistics), load_anomalies(anomalies))
