"""The TFX pipeline: config, the create_pipeline factory, runners and the iris-tfx command."""
import os

# TFX 1.16 needs Keras 2 (tf-keras); must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
