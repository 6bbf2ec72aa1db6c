"""TensorFlow Serving-compatible model server and client for the models this pipeline pushes."""
import os

# TFX 1.16 and the exported models are Keras 2 (tf-keras); must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
