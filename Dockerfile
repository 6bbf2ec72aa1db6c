# The pipeline image: TFX 1.16 with this project installed, for the Kubeflow pipeline's components
# (components.transform.preprocessing_fn, components.trainer.run_fn are imported by module path in every
# pod), the TFJob's workers (python -m components.train_standalone) and the prod overlay's model server
# (iris-tfx serve).
#   docker build -t REGISTRY/iris-tfx:TAG . && docker push REGISTRY/iris-tfx:TAG
# The entrypoint of the base image is kept: Kubeflow sets each component's command itself.
FROM tensorflow/tfx:1.16.0

# Keras 2 (tf-keras) under TensorFlow 2.16, as everywhere in this project. The project's entry points set it
# themselves (components/runtime.py prepare()), but Kubeflow starts each component with TFX's own entry point,
# which imports the component modules without it: the image sets it for every process.
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
 && python -c "import components.transform as t, components.trainer as r; t.preprocessing_fn; r.run_fn" \
 && iris-tfx serve --help > /dev/null

# An unprivileged user (uid/gid 10001, as the manifests' runAsUser/runAsGroup), with a home for the caches
# of Keras, TensorFlow and pip. Kubeflow's v2 launcher writes input artifacts under /gcs, /minio and /s3
# (kubeflow/pipelines#10538): those directories belong to that user too.
RUN groupadd --gid 10001 iris \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/iris --shell /usr/sbin/nologin --no-log-init iris \
 && mkdir -p /gcs /minio /s3 \
 && chown 10001:10001 /gcs /minio /s3
USER 10001:10001
