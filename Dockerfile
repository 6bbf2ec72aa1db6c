# The pipeline image: TFX 1.16 with this project installed, for the Kubeflow pipeline's components
# (components.transform.preprocessing_fn, components.trainer.run_fn are imported by module path in every
# pod) and the TFJob's workers (python -m components.train_standalone).
#   docker build -t REGISTRY/iris-tfx:TAG . && docker push REGISTRY/iris-tfx:TAG
# The entrypoint of the base image is kept: Kubeflow sets each component's command itself.
FROM tensorflow/tfx:1.16.0

# Keras 2 (tf-keras) under TensorFlow 2.16, as everywhere in this project.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /iris-tfx
COPY . /iris-tfx

# The same pinned versions as the development environment and CI (requirements.lock), as constraints:
# only the project's own dependencies are installed, at the locked versions.
RUN python -m pip install -c requirements.lock . \
 && cd / \
 && python -c "import components.transform as t, components.trainer as r; t.preprocessing_fn; r.run_fn"
