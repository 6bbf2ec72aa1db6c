"""The single source of names (features, label, classes, signatures, the model) and default paths for the project."""
import os
from typing import Tuple

FEATURE_KEYS: Tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABEL_KEY = "species"
CLASS_NAMES: Tuple[str, ...] = ("setosa", "versicolor", "virginica")
CSV_COLUMNS: Tuple[str, ...] = FEATURE_KEYS + (LABEL_KEY,)

# Name of the Transform vocabulary that maps species names to integer ids.
LABEL_VOCABULARY = LABEL_KEY

# SavedModel signatures exported by the Trainer (the serving contract).
SERVING_SIGNATURE = "serving_default"        # serialized tf.Example -> probabilities, classes, species
CLASSIFY_SIGNATURE = "classification"        # method tensorflow/serving/classify: inputs -> classes, scores
RAW_SIGNATURE = "serving_raw"                # the four raw float features -> same outputs as serving_default
TRANSFORM_SIGNATURE = "transform_features"   # serialized tf.Example -> transformed features (for TFMA)

EXAMPLES_INPUT = "examples"                  # input key of serving_default and transform_features
CLASSIFY_INPUT = "inputs"                    # TF Serving's input key for classification signatures
PROBABILITIES_OUTPUT = "probabilities"       # float [batch, num_classes]
CLASSES_OUTPUT = "classes"                   # string [batch, num_classes], aligned with probabilities/scores
PREDICTED_OUTPUT = "species"                 # string [batch], the most probable class
SCORES_OUTPUT = "scores"                     # float [batch, num_classes] in the classification signature
ASSETS_EXTRA = "assets.extra"                # a SavedModel's directory of files TF Serving reads beside the model
SCHEMA_ASSET = "schema.pbtxt"                # the Trainer's schema in <SavedModel>/ASSETS_EXTRA: the server's bounds
ACCURACY_METRIC = "sparse_categorical_accuracy"  # the Evaluator's accuracy, as TFMA and Keras' logs name it

# Names and default places shared by the pipeline, the server and the CLI (the bottom layer, so neither of the
# two middle packages imports the other for them).
PIPELINE_NAME = "iris"
MODEL_NAME = "iris"                          # the served model's name, and the serving dir's last part
DEFAULT_DATA = os.path.join("data", "iris.csv")
DEFAULT_SCHEMA = os.path.join("schema", "schema.pbtxt")
DEFAULT_WORKDIR = "iris-tfx-work"
MONITORING_DIR = "monitoring"                # <workdir>/MONITORING_DIR/<run id>/<UTC stamp>/: iris-tfx monitor's results


def default_serving_dir(workdir: str = DEFAULT_WORKDIR, model_name: str = MODEL_NAME) -> str:
    """Where blessed models are pushed unless told otherwise (and where `iris-tfx serve` looks)."""
    return os.path.join(workdir, "models", model_name)


DEFAULT_SERVING_DIR = default_serving_dir()


def transformed_name(key: str) -> str:
    """Name of a feature after Transform."""
    return f"{key}_xf"
