"""Iris TFX: a production TFX pipeline from the Iris CSV to a model served over gRPC."""
from setuptools import find_packages, setup

setup(
    name="iris-tfx",
    version="0.1.0",
    description="TFX pipeline (Iris CSV -> validated, trained, evaluated, pushed Keras model) and a "
                "TensorFlow Serving-compatible server and client",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["iris_tfx", "iris_tfx.*", "pipeline", "pipeline.*", "components",
                                    "components.*", "serving", "serving.*"]),
    install_requires=[
        # Exact versions of everything (and of their dependencies) are pinned in requirements.lock.
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "apache-beam[gcp]==2.61.0",  # 2.65+ drops dill, which tfx-bsl 1.16 imports
        "kfp==2.5.0",
        "protobuf==3.20.3",          # kfp 2.5 needs protobuf<4
        "tensorflow-serving-api==2.16.1",
        "grpcio-health-checking==1.48.2",
        "grpcio-reflection==1.48.2",
        "prometheus-client",
        # REST: aiohttp's asyncio HTTP server (C llhttp parser, maintained) and orjson (JSON in C, writes numpy
        # arrays directly): 3-4x less CPU per REST request than http.server and json.
        "aiohttp==3.14.5",
        "orjson==3.13.0",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "kubernetes-validate"]},
    entry_points={"console_scripts": ["iris-tfx=iris_tfx.main:main"]},
)
