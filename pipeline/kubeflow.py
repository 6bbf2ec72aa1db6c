"""Kubeflow Pipelines: compile create_pipeline to a KFP v2 pipeline.yaml, read it back, and submit it."""
import dataclasses
import os
import re
from typing import Optional

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.config import PipelineConfig

# An OCI image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest], lower-case names.
_IMAGE = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$")


def check_image(image: str) -> None:
    if not _IMAGE.match(image or ""):
        raise ValueError(f"--image {image!r}: not a container image reference (e.g. registry.example.com/iris-tfx:0.1.0)")


def compile_pipeline(config: PipelineConfig, image: str, output: str) -> str:
    """Writes the KFP v2 PipelineSpec YAML of the Resolver-free pipeline variant to `output`; returns its path."""
    from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    from pipeline.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top
    check_image(image)
    if not config.pipeline_root_uri:
        raise ValueError("--pipeline-root is required: an object-store URI (gs://, s3://) or a volume path")
    if not output.endswith((".yaml", ".yml")):
        raise ValueError(f"--output {output}: must end in .yaml (kfp.Client accepts YAML packages, not JSON)")
    # The open-source KFP backend rejects Resolver nodes: the Evaluator gates on the absolute floor only.
    pipeline = create_pipeline(dataclasses.replace(config, use_resolver=False))
    job = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
    ).run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    # TFX's YAML writer keeps only the PipelineSpec and so loses the pipeline root (it sits in the
    # PipelineJob's runtime config): carry it in the spec's own default_pipeline_root field.
    spec["defaultPipelineRoot"] = config.pipeline_root_uri
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write(f"# PIPELINE DEFINITION\n# Name: {config.pipeline_name}\n# Compiled by iris-tfx with TFX's "
                "KubeflowV2DagRunner (no Resolver node: the Evaluator gates on the accuracy floor).\n")
        yaml.safe_dump(spec, f, sort_keys=True)
    return output


def load_pipeline_spec(path: str) -> pipeline_spec_pb2.PipelineSpec:
    """Parses a compiled package back into the PipelineSpec proto (what the KFP backend does with it)."""
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    if not documents:
        raise ValueError(f"{path}: empty pipeline package")
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(documents[0], spec)
    return spec


def submit(package: str, host: Optional[str], experiment: str, run_name: Optional[str],
           namespace: Optional[str], dry_run: bool) -> str:
    """Uploads and starts a run with kfp.Client; with dry_run, everything but the network call."""
    spec = load_pipeline_spec(package)
    summary = (f"pipeline {spec.pipeline_info.name!r} ({len(spec.root.dag.tasks)} tasks, pipeline root "
               f"{spec.default_pipeline_root or '<the backend default>'}) from {package} "
               f"to {host} (experiment {experiment!r}, run {run_name or '<generated>'!r}, "
               f"namespace {namespace or '<default>'!r})")
    if dry_run:
        return "dry run: would submit " + summary
    if not host:
        raise ValueError("--host is required (the Kubeflow Pipelines API, e.g. http://localhost:8080)")
    import kfp  # pylint: disable=g-import-not-at-top
    client = kfp.Client(host=host, namespace=namespace)
    run = client.create_run_from_pipeline_package(
        package, arguments={}, run_name=run_name, experiment_name=experiment, namespace=namespace,
        pipeline_root=spec.default_pipeline_root or None)
    return f"submitted {summary}: run id {run.run_id}"
