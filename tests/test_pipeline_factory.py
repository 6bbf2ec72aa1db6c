"""create_pipeline is a pure factory: the components, their wiring and settings follow the config."""
import dataclasses

from components import constants
from components.hyperparameters import Hyperparameters
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline

ALL = ["CsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate", "Transform",
       "Trainer", "baseline_model_resolver", "Evaluator", "Pusher"]


def _components(config):
    return {c.id: c for c in create_pipeline(config).components}


def test_every_component_is_wired_from_the_config(tmp_path):
    config = PipelineConfig(data_path="/data/in/my.csv", workdir=str(tmp_path), accuracy_floor=0.8,
                            training=Hyperparameters(epochs=7), beam_pipeline_args=["--runner=DirectRunner"])
    pipeline = create_pipeline(config)
    components = {c.id: c for c in pipeline.components}
    assert sorted(components) == sorted(ALL)
    assert pipeline.pipeline_info.pipeline_root == str(tmp_path / "pipeline_root")
    assert pipeline.beam_pipeline_args == ["--runner=DirectRunner"]
    assert components["CsvExampleGen"].exec_properties["input_base"] == "/data/in"
    assert "my.csv" in components["CsvExampleGen"].exec_properties["input_config"]
    assert '"epochs": 7' in components["Trainer"].exec_properties["custom_config"]
    assert str(tmp_path / "models" / "iris") in components["Pusher"].exec_properties["push_destination"]
    # Nothing is transformed (so nothing trained or pushed) before the gate passed.
    assert "AnomaliesGate" in {n.id for n in components["Transform"].upstream_nodes}
    evaluator = components["Evaluator"]
    assert evaluator.inputs["baseline_model"] is not None
    eval_config = evaluator.exec_properties["eval_config"]
    assert '"lower_bound": 0.8' in eval_config and "HIGHER_IS_BETTER" in eval_config
    assert constants.transformed_name(constants.LABEL_KEY) in eval_config


def test_serving_dir_override_and_no_resolver_variant(tmp_path):
    config = dataclasses.replace(PipelineConfig(workdir=str(tmp_path)), serving_dir="/srv/models/iris",
                                 use_resolver=False)
    components = _components(config)
    assert "baseline_model_resolver" not in components
    assert "/srv/models/iris" in components["Pusher"].exec_properties["push_destination"]
    assert "change_threshold" not in components["Evaluator"].exec_properties["eval_config"]


def test_factory_has_no_side_effects(tmp_path):
    create_pipeline(PipelineConfig(workdir=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()
