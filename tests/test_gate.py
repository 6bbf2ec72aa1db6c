"""The data gate on real TFDV statistics of small CSVs: every species in every split, with a clear message."""
import csv
import pathlib
from typing import Dict, List

import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from components import constants, validation
from conftest import IRIS_CSV, REPO

# Every test computes TFDV statistics with a Beam job.
pytestmark = pytest.mark.e2e

SCHEMA = tfdv.load_schema_text(str(REPO / "schema" / "schema.pbtxt"))


def _rows() -> List[Dict[str, str]]:
    with open(IRIS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _statistics(tmp_path: pathlib.Path, splits: Dict[str, List[Dict[str, str]]]):
    """TFDV statistics of each split, computed from a CSV per split as StatisticsGen would."""
    stats = {}
    for split, rows in splits.items():
        path = tmp_path / f"{split}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(constants.CSV_COLUMNS), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        stats[split] = tfdv.generate_statistics_from_csv(str(path))
    return stats


def _anomalies(stats) -> Dict[str, anomalies_pb2.Anomalies]:
    return {split: tfdv.validate_statistics(s, SCHEMA) for split, s in stats.items()}


def _fisher_splits(keep=lambda row: True):
    rows = [r for r in _rows() if keep(r)]
    return {"train": [r for i, r in enumerate(rows) if i % 5], "eval": [r for i, r in enumerate(rows) if not i % 5]}


def test_fisher_data_passes_the_gate(tmp_path):
    stats = _statistics(tmp_path, _fisher_splits())
    assert validation.class_counts(stats["eval"]) == {species: 10 for species in constants.CLASS_NAMES}
    validation.check_data(stats, _anomalies(stats))  # raises on any problem


def test_single_species_is_refused_with_split_species_and_counts(tmp_path):
    stats = _statistics(tmp_path, _fisher_splits(lambda row: row[constants.LABEL_KEY] == "setosa"))
    # The schema alone sees that species are missing (unique_constraints), but not which ones.
    for anomalies in _anomalies(stats).values():
        reasons = [r.type for r in anomalies.anomaly_info[constants.LABEL_KEY].reason]
        assert reasons == [anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_UNIQUE]
    with pytest.raises(validation.DataValidationError) as error:
        validation.check_data(stats, _anomalies(stats))
    message = str(error.value)
    assert message.startswith("the data cannot train a classifier of every species:\n")
    for split in ("train", "eval"):
        for species in ("versicolor", "virginica"):
            assert (f"split '{split}': species '{species}' has 0 examples (at least 5 needed in each split; "
                    f"the data has 0 rows of it): add rows of '{species}' to the CSV") in message
    assert "setosa" not in message
    assert "unique values" not in message  # the schema's vaguer finding is left out: the lines above say more
    assert message.count("about 25 in all, since 'eval' gets about 20% of the rows") == 4


def test_a_species_below_the_minimum_in_one_split(tmp_path):
    splits = _fisher_splits()
    versicolor = [r for r in splits["eval"] if r[constants.LABEL_KEY] == "versicolor"]
    splits["eval"] = [r for r in splits["eval"] if r not in versicolor[4:]]  # 4 of 10 left: one short
    stats = _statistics(tmp_path, splits)
    lines = validation.too_few_per_class(stats)
    assert len(lines) == 1, lines
    assert lines[0].startswith("split 'eval': species 'versicolor' has 4 examples (at least 5 needed in each "
                               "split; the data has 44 rows of it)")
    assert validation.too_few_per_class(stats, minimum=4) == []


def test_other_anomalies_are_reported_beside_the_missing_species(tmp_path):
    splits = _fisher_splits(lambda row: row[constants.LABEL_KEY] != "virginica")
    splits["train"][3] = dict(splits["train"][3], petal_length="-1.4")
    stats = _statistics(tmp_path, splits)
    with pytest.raises(validation.DataValidationError) as error:
        validation.check_data(stats, _anomalies(stats))
    message = str(error.value)
    assert "split 'eval': species 'virginica' has 0 examples" in message
    assert "the data does not match the schema:\nsplit 'train': feature 'petal_length':" in message
