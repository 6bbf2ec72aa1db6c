"""The Evaluator's baseline: the latest blessed model other than the one being evaluated."""
from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

CANDIDATE_KEY = "candidate"  # the Trainer's model, passed to the Resolver so it can be left out


class PreviousBlessedModelStrategy(LatestBlessedModelStrategy):
    """LatestBlessedModelStrategy, minus the candidate. When a re-run reuses the cached Trainer output, its
    model is already the latest blessed one; comparing it with itself would change the Evaluator's inputs,
    defeat its cache and push the same model again. Leaving it out keeps the first run's baseline."""

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        candidate = input_dict[CANDIDATE_KEY]
        candidate_ids = {a.id for a in candidate}
        others = {key: [a for a in artifacts if a.id not in candidate_ids]
                  for key, artifacts in input_dict.items() if key != CANDIDATE_KEY}
        return {CANDIDATE_KEY: candidate, **super().resolve_artifacts(store, others)}  # TFX wants every key back
