"""The Resolver's strategy: the latest blessed model that is not the candidate being evaluated."""
from tfx.components.evaluator import constants as evaluator_constants
from tfx.types import standard_artifacts

from components.baseline import CANDIDATE_KEY, PreviousBlessedModelStrategy


def _model(artifact_id: int) -> standard_artifacts.Model:
    model = standard_artifacts.Model()
    model.id = artifact_id
    return model


def _blessing(artifact_id: int, model_id: int, blessed: bool) -> standard_artifacts.ModelBlessing:
    blessing = standard_artifacts.ModelBlessing()
    blessing.id = artifact_id
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model_id)
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, int(blessed))
    return blessing


def _resolve(candidate, models, blessings):
    result = PreviousBlessedModelStrategy().resolve_artifacts(
        None, {CANDIDATE_KEY: candidate, "model": models, "model_blessing": blessings})
    return [a.id for a in result["model"]], [a.id for a in result["model_blessing"]]


def test_candidate_already_blessed_gets_the_previous_blessed_model():
    models = [_model(1), _model(2), _model(3)]
    blessings = [_blessing(11, 1, True), _blessing(12, 2, False), _blessing(13, 3, True)]
    assert _resolve([_model(3)], models, blessings) == ([1], [11])


def test_new_candidate_gets_the_latest_blessed_model():
    models = [_model(1), _model(2), _model(3)]
    blessings = [_blessing(11, 1, True), _blessing(12, 2, True)]
    assert _resolve([_model(3)], models, blessings) == ([2], [12])


def test_only_the_candidate_blessed_means_no_baseline():
    # A re-run that reuses the first run's model: the same (empty) baseline as the first run, so the
    # Evaluator's inputs are unchanged and its cached result is reused.
    assert _resolve([_model(1)], [_model(1)], [_blessing(11, 1, True)]) == ([], [])


def test_no_blessed_model_means_no_baseline():
    assert _resolve([_model(2)], [_model(1), _model(2)], [_blessing(11, 1, False)]) == ([], [])
