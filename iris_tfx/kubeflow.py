"""iris-tfx kubeflow compile/submit: the same pipeline as a Kubeflow Pipelines v2 package, and its upload."""
import argparse
import os

from iris_tfx import console, flags
from pipeline.config import PipelineConfig

EXIT_FAILED = 1  # the package could not be written or submitted


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `kubeflow compile` and `kubeflow submit`."""
    kubeflow = subparsers.add_parser("kubeflow", help="compile the pipeline for Kubeflow Pipelines, submit it")
    kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True, metavar="COMMAND")
    compile_ = kubeflow_commands.add_parser("compile", help="write a KFP v2 pipeline.yaml (no Resolver node)")
    compile_.add_argument("--image", required=True, help="the pipeline image (see Dockerfile), e.g. "
                          "registry.example.com/iris-tfx:0.1.0")
    compile_.add_argument("--pipeline-root", required=True, help="object-store URI or volume path for artifacts")
    compile_.add_argument("--data", required=True, help="the CSV as the pods see it (URI or volume path)")
    compile_.add_argument("--serving-dir", required=True, help="base path blessed models are pushed to, where "
                          "TF Serving reads (e.g. the iris-models volume's /models/iris)")
    compile_.add_argument("--schema", default="/iris-tfx/schema/schema.pbtxt",
                          help="the curated schema as the pods see it (default: the copy in the image)")
    compile_.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                          help="Beam pipeline arg for the components' Beam jobs, repeatable")
    compile_.add_argument("--accuracy-floor", type=flags.fraction, default=PipelineConfig.accuracy_floor,
                          help="overall eval accuracy the model needs to be pushed, in [0, 1] (default: %(default)s)")
    compile_.add_argument("--output", default="pipeline.yaml",
                          help="the KFP v2 package to write, .yaml (default: %(default)s)")
    compile_.set_defaults(handler=_compile)
    submit = kubeflow_commands.add_parser("submit", help="upload and start a run with kfp.Client")
    submit.add_argument("--package", default="pipeline.yaml", help="compiled pipeline (default: %(default)s)")
    submit.add_argument("--host", help="Kubeflow Pipelines API endpoint (default: kfp.Client's: in-cluster, or "
                                       "the KF_PIPELINES_ENDPOINT environment variable)")
    submit.add_argument("--experiment", default="iris", help="experiment to file the run under (default: %(default)s)")
    submit.add_argument("--run-name", help="the run's name (default: KFP's)")
    submit.add_argument("--namespace", help="Kubeflow namespace of the run and experiment (default: kfp.Client's)")
    submit.add_argument("--dry-run", action="store_true", help="everything but the network call")
    submit.set_defaults(handler=_submit)


def _compile(args: argparse.Namespace) -> int:
    """Writes the KFP v2 package for the pods' paths and image."""
    from pipeline import kubeflow  # pylint: disable=g-import-not-at-top
    config = PipelineConfig(
        data_path=args.data, schema_path=args.schema, serving_dir=args.serving_dir,
        pipeline_root_uri=args.pipeline_root, accuracy_floor=args.accuracy_floor,
        beam_pipeline_args=flags.beam_args(args.beam_arg))
    try:
        path = kubeflow.compile_pipeline(config, args.image, args.output)
    except ValueError as err:
        console.error(str(err))
        return EXIT_FAILED
    print(f"Wrote {path} (image {args.image}, pipeline root {args.pipeline_root}); "
          f"submit it with: iris-tfx kubeflow submit --package {path} --host URL")
    return 0


def _submit(args: argparse.Namespace) -> int:
    """Uploads the package and starts a run (or, with --dry-run, everything but the network call)."""
    from pipeline import kubeflow  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(args.package):
        console.error(f"--package {args.package}: no such file (run iris-tfx kubeflow compile first)")
        return EXIT_FAILED
    try:
        print(kubeflow.submit(args.package, args.host, args.experiment, args.run_name, args.namespace,
                              args.dry_run))
    except Exception as err:  # pylint: disable=broad-except  (connection, auth and spec errors alike)
        console.error(str(err))
        return EXIT_FAILED
    return 0

