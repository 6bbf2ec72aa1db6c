"""AnomaliesGate: a custom component that stops the pipeline when ExampleValidator found anomalies."""
import os
from typing import Dict

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils

# ExampleValidator (TFX 1.16) writes one binary Anomalies proto per split under this name.
_ANOMALIES_FILE = "SchemaDiff.pb"


class DataValidationError(ValueError):
    """Raised when the input data does not conform to the curated schema."""


def load_anomalies(anomalies: tfx.types.standard_artifacts.ExampleAnomalies) -> Dict[str, anomalies_pb2.Anomalies]:
    """The Anomalies proto of each split of an ExampleValidator output."""
    return {
        split: anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(os.path.join(
            artifact_utils.get_split_uri([anomalies], split), _ANOMALIES_FILE)))
        for split in artifact_utils.decode_split_names(anomalies.split_names)
    }


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
def AnomaliesGate(anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails (and so stops everything downstream) if any split has an anomaly."""
    report = describe_anomalies(load_anomalies(anomalies))
    if report:
        raise DataValidationError("the data does not match the schema:\n" + report)
