"""TF Transform preprocessing_fn: z-scored measurements and a vocabulary-encoded species label."""
from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

from components import constants


def preprocessing_fn(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Z-scores the four measurements and maps `species` to an integer id via a named vocabulary.

    Serving requests carry no label: TFT's transform layer then prunes the label output.
    """
    outputs = {
        constants.transformed_name(key): tft.scale_to_z_score(tf.squeeze(inputs[key], axis=1))
        for key in constants.FEATURE_KEYS
    }
    outputs[constants.transformed_name(constants.LABEL_KEY)] = tft.compute_and_apply_vocabulary(
        tf.squeeze(inputs[constants.LABEL_KEY], axis=1), vocab_filename=constants.LABEL_VOCABULARY)
    return outputs
