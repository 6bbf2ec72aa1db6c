"""`iris-tfx kubeflow compile/submit`, offline: the package parses into a KFP PipelineSpec with every component,
no Resolver, the configured image everywhere; bad options get clear errors."""
import pytest

from conftest import iris_tfx
from pipeline import kubeflow

IMAGE = "registry.example.com/team/iris-tfx:0.1.0"
EXPECTED_TASKS = {"CsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate",
                  "Transform", "Trainer", "Evaluator", "Pusher"}


def _compile_args(output, **overrides):
    options = {"--image": IMAGE, "--pipeline-root": "gs://bucket/iris/root", "--data": "gs://bucket/data/iris.csv",
               "--serving-dir": "/models/iris", "--output": str(output), **overrides}
    return ["kubeflow", "compile"] + [f"{flag}={value}" for flag, value in options.items() if value is not None]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    output = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    result = iris_tfx(*_compile_args(output, **{"--beam-arg": "--runner=DirectRunner"}))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.e2e
def test_compiled_package_is_a_resolver_free_pipeline_spec(package):
    spec = kubeflow.load_pipeline_spec(str(package))
    assert spec.pipeline_info.name == "iris"
    assert spec.default_pipeline_root == "gs://bucket/iris/root"
    assert set(spec.root.dag.tasks) == EXPECTED_TASKS
    text = package.read_text()
    executors = spec.deployment_spec["executors"]
    assert not [name for name in list(executors) + list(spec.components) if "resolver" in name.lower()]
    assert "resolver" not in str(dict(executors)).lower() and "ResolverStrategy" not in text
    images = [executor["container"]["image"] for executor in executors.values() if "container" in executor]
    assert len(images) == len(EXPECTED_TASKS) and set(images) == {IMAGE}
    assert "/models/iris" in text and "--runner=DirectRunner" in text
    assert "gs://bucket/data" in text and "iris.csv" in text


@pytest.mark.e2e
def test_submit_dry_run_parses_the_package(package):
    result = iris_tfx("kubeflow", "submit", "--package", str(package), "--host", "http://kfp.example:8080",
                      "--experiment", "exp", "--run-name", "r1", "--namespace", "ns", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: would submit pipeline 'iris' (9 tasks, pipeline root gs://bucket/iris/root)" in result.stdout
    assert "experiment 'exp'" in result.stdout and "namespace 'ns'" in result.stdout


@pytest.mark.parametrize("image", ["Registry/UPPER:1", "iris tfx", "", "img:bad tag"])
def test_bad_image_name_is_rejected(image):
    with pytest.raises(ValueError, match="not a container image reference"):
        kubeflow.check_image(image)


@pytest.mark.e2e
def test_bad_options_get_clear_errors(tmp_path):
    result = iris_tfx(*_compile_args(tmp_path / "p.yaml", **{"--image": "Not An Image"}))
    assert result.returncode == 1 and "--image 'Not An Image': not a container image reference" in result.stderr
    result = iris_tfx(*_compile_args(tmp_path / "p.yaml", **{"--pipeline-root": None}))
    assert result.returncode == 2 and "--pipeline-root" in result.stderr
    result = iris_tfx(*_compile_args(tmp_path / "p.json"))
    assert result.returncode == 1 and "must end in .yaml" in result.stderr
    result = iris_tfx("kubeflow", "submit", "--package", str(tmp_path / "missing.yaml"), "--dry-run")
    assert result.returncode == 1 and "no such file" in result.stderr
