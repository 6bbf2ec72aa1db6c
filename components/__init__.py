"""Component code run by TFX: preprocessing_fn, run_fn, the model and the anomalies gate."""
import os

# TFX 1.16 needs Keras 2 (tf-keras); must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
