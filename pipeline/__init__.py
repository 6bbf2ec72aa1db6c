"""The TFX pipeline: config, the create_pipeline factory, runners, Beam workers and the run summary."""
