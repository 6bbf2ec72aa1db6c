"""AnomaliesGate: a custom component that stops the pipeline when ExampleValidator found anomalies."""
import os
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils

# ExampleValidator and StatisticsGen (TFX 1.16) write one binary proto per split under these names.
_ANOMALIES_FILE = "SchemaDiff.pb"
_STATISTICS_FILE = "FeatureStats.pb"


class DataValidationError(ValueError):
    """Raised when the input data does not conform to the curated schema."""


def load_anomalies(anomalies: tfx.types.standard_artifacts.ExampleAnomalies) -> Dict[str, anomalies_pb2.Anomalies]:
    """The Anomalies proto of each split of an ExampleValidator output."""
    return {
        split: anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(os.path.join(
            artifact_utils.get_split_uri([anomalies], split), _ANOMALIES_FILE)))
        for split in artifact_utils.decode_split_names(anomalies.split_names)
    }


def empty_splits(statistics: tfx.types.standard_artifacts.ExampleStatistics) -> List[str]:
    """Splits with no examples at all, which TFDV's schema validation does not report."""
    empty = []
    for split in artifact_utils.decode_split_names(statistics.split_names):
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(io_utils.read_bytes_file(os.path.join(
            artifact_utils.get_split_uri([statistics], split), _STATISTICS_FILE)))
        if not any(dataset.num_examples for dataset in stats.datasets):
            empty.append(split)
    return empty


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


@tfx.dsl.components.component
def AnomaliesGate(
        statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
        anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails (and so stops everything downstream) if any split is empty or has an anomaly."""
    empty = empty_splits(statistics)
    if empty:
        raise DataValidationError(f"the data has no data rows (empty splits: {', '.join(empty)})")
    report = describe_anomalies(load_anomalies(anomalies))
    if report:
        raise DataValidationError("the data does not match the schema:\n" + report)
