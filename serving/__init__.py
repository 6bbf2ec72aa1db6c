"""TensorFlow Serving-compatible model server and client for the models this pipeline pushes."""
