"""Component code run by TFX: preprocessing_fn, run_fn, the model and the anomalies gate."""
