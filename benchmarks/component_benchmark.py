"""Wall time, CPU seconds (all processes) and rows/s of one Beam component (StatisticsGen, Transform, Evaluator).

Runs the component's own TFX executor, as built by today's `create_pipeline`, on the input artifacts an earlier
`iris-tfx run` left in WORKDIR (found in its ML Metadata), writing its outputs to a temp folder, under the same
Beam args and forked Beam workers as `iris-tfx run`. So one component can be measured before and after a change,
in the same sitting and under the same load, without re-running the pipeline up to it.

Usage: python benchmarks/component_benchmark.py --workdir WORKDIR --component Evaluator [--repeat 1]
           [--beam-arg=--direct_running_mode=in_memory ...] [--keep]
Without --beam-arg it uses pipeline.config.default_beam_args(). The Evaluator runs without a baseline model.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's modules, imported inside the functions below

COMPONENTS = ("StatisticsGen", "Transform", "Evaluator")


class TreeCpu:
    """CPU seconds (user + system) used by this process and all its descendants (Beam's forked workers) since
    start, sampled every `interval` s: on a shared machine, steadier than wall time."""

    def __init__(self, interval: float = 0.2):
        import psutil  # pylint: disable=g-import-not-at-top
        self._root, self._interval, self._seen = psutil.Process(), interval, {}
        self._start = dict(self._sample())
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> Dict[tuple, float]:
        import psutil  # pylint: disable=g-import-not-at-top
        for proc in [self._root] + self._root.children(recursive=True):
            try:
                times = proc.cpu_times()
                self._seen[(proc.pid, proc.create_time())] = times.user + times.system
            except psutil.Error:
                pass  # exited between listing and reading
        return self._seen

    def _loop(self) -> None:
        while not self._done.wait(self._interval):
            self._sample()

    def stop(self) -> float:
        """Stops sampling; returns the CPU seconds used since construction."""
        self._done.set()
        self._thread.join()
        self._sample()
        return sum(v - self._start.get(k, 0.0) for k, v in self._seen.items())


def _latest_outputs(store, pipeline_name: str, node_id: str) -> Dict[str, list]:
    """The output artifacts (MLMD protos, by output key) of the newest complete execution of a pipeline node."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if context is None:
        sys.exit(f"component_benchmark: no run of {node_id} in this workdir's metadata: run iris-tfx run first")
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    executions = [e for e in store.get_executions_by_context(context.id) if e.last_known_state in done]
    if not executions:
        sys.exit(f"component_benchmark: no complete run of {node_id} in this workdir's metadata")
    execution = max(executions, key=lambda e: e.create_time_since_epoch)
    outputs: Dict[str, List[int]] = {}
    for event in store.get_events_by_execution_ids([execution.id]):
        if event.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
            outputs.setdefault(event.path.steps[0].key, []).append(event.artifact_id)
    return {key: store.get_artifacts_by_id(ids) for key, ids in outputs.items()}


def _tfx_artifacts(store, mlmd_artifacts: list) -> list:
    """MLMD artifact protos -> TFX Artifact objects of their registered types."""
    from tfx.types import artifact_utils  # pylint: disable=g-import-not-at-top
    types = {t.id: t for t in store.get_artifact_types_by_id(list({a.type_id for a in mlmd_artifacts}))}
    return [artifact_utils.deserialize_artifact(types[a.type_id], a) for a in mlmd_artifacts]


def _row_counts(statistics) -> Dict[str, int]:
    """Rows per split, read from a StatisticsGen artifact (no need to re-count 1.5M records)."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    from tfx.types import artifact_utils  # pylint: disable=g-import-not-at-top
    counts = {}
    for split in artifact_utils.decode_split_names(statistics.split_names):
        stats = tfdv.load_stats_binary(os.path.join(statistics.uri, f"Split-{split}", "FeatureStats.pb"))
        counts[split] = stats.datasets[0].num_examples
    return counts


def _exec_properties(component) -> Dict[str, object]:
    """The component's exec properties as the orchestrator hands them to the executor (protos as JSON)."""
    from google.protobuf import message  # pylint: disable=g-import-not-at-top
    from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top
    properties = {}
    for key, value in component.exec_properties.items():
        if value is None:
            continue
        if isinstance(value, message.Message):
            value = proto_utils.proto_to_json(value)
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        properties[key] = value
    return properties


def _executor_class(component):
    """The Beam executor class the component runs."""
    return component.executor_spec.executor_class


def _warm_up(beam_args: List[str]) -> None:
    """A trivial Beam job with the same args, so the timing excludes the worker zygote's one-off imports (in a
    pipeline run they overlap with the components before)."""
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        _ = p | beam.Create(list(range(8))) | beam.Map(lambda x: x)


def run_once(workdir: str, name: str, beam_args: List[str], out_dir: str) -> Tuple[float, float]:
    """Runs the component's executor once; returns its wall seconds and CPU seconds (all processes)."""
    import ml_metadata as mlmd  # pylint: disable=g-import-not-at-top
    from tfx.dsl.components.base import base_beam_executor  # pylint: disable=g-import-not-at-top
    from tfx.types import channel as channel_lib  # pylint: disable=g-import-not-at-top
    from pipeline import beam_workers  # pylint: disable=g-import-not-at-top
    from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
    from pipeline.config import sqlite_metadata  # pylint: disable=g-import-not-at-top
    from pipeline.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    config = PipelineConfig(workdir=workdir, beam_pipeline_args=beam_args, use_resolver=False)
    component = next(c for c in create_pipeline(config).components if c.id == name)
    store = mlmd.MetadataStore(sqlite_metadata(config.metadata_path))
    inputs = {}
    for key, chan in component.inputs.items():
        if not isinstance(chan, channel_lib.Channel) or not chan.producer_component_id:
            continue
        produced = _latest_outputs(store, config.pipeline_name, chan.producer_component_id)
        inputs[key] = _tfx_artifacts(store, produced[chan.output_key])
    outputs = {}
    for key, chan in component.outputs.items():
        artifact = chan.type()
        artifact.uri = os.path.join(out_dir, key)
        os.makedirs(artifact.uri, exist_ok=True)
        outputs[key] = [artifact]
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args, tmp_dir=os.path.join(out_dir, ".temp"), unique_id="bench")
    with beam_workers.forked_workers(beam_args):
        _warm_up(beam_args)
        started, cpu = time.monotonic(), TreeCpu()
        executor = _executor_class(component)(context)  # timed: TFX may build a dependency package here
        executor.Do(inputs, outputs, _exec_properties(component))
        return time.monotonic() - started, cpu.stop()


def main() -> None:
    from components import runtime  # pylint: disable=g-import-not-at-top  (this checkout, on sys.path above)
    runtime.prepare()  # before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="workdir of an earlier iris-tfx run")
    parser.add_argument("--component", required=True, choices=COMPONENTS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--beam-arg", action="append", default=None, dest="beam_args")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (printed) instead of deleting them")
    args = parser.parse_args()
    import ml_metadata as mlmd  # pylint: disable=g-import-not-at-top
    from pipeline.config import PipelineConfig, default_beam_args, sqlite_metadata  # pylint: disable=g-import-not-at-top

    beam_args = args.beam_args if args.beam_args is not None else default_beam_args()
    config = PipelineConfig(workdir=args.workdir)
    store = mlmd.MetadataStore(sqlite_metadata(config.metadata_path))
    statistics = _tfx_artifacts(store, _latest_outputs(store, config.pipeline_name, "StatisticsGen")["statistics"])[0]
    counts = _row_counts(statistics)
    rows = counts.get("eval", 0) if args.component == "Evaluator" else sum(counts.values())
    for run in range(args.repeat):
        out_dir = tempfile.mkdtemp(prefix=f"bench-{args.component}-")
        try:
            seconds, cpu_seconds = run_once(os.path.abspath(args.workdir), args.component, list(beam_args), out_dir)
        finally:
            if not args.keep:
                shutil.rmtree(out_dir, ignore_errors=True)
        print(f"RESULT {args.component} run {run + 1}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU, {rows} rows, "
              f"{rows / seconds:,.0f} rows/s, {rows / cpu_seconds:,.0f} rows per CPU s "
              f"(beam args: {' '.join(beam_args)})" + (f" outputs: {out_dir}" if args.keep else ""), flush=True)


if __name__ == "__main__":
    main()
