"""`iris-tfx monitor`: the served traffic (the server's PredictionLog files) against the training data of the model
that answered it. SKEW: a window of logged traffic vs the training split's statistics of the run that trained that
version (found through ML Metadata); DRIFT: the window vs the previous window of the same length. Both are TFDV's
validate_statistics with the comparators and thresholds the run's schema declares; results go to
<workdir>/monitoring/<run id>/<UTC stamp>/ (result.json, the statistics, anomalies.pbtxt) for the run's report."""
import bisect
import copy
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

from components import constants, request_logs
from pipeline.report_monitoring import Comparison  # what result.json's comparisons are, as the report reads them

if TYPE_CHECKING:  # imported where used: TensorFlow, TFDV and Arrow take seconds, a bad flag should not wait
    import pyarrow as pa
    from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
    from tensorflow_serving.apis import prediction_log_pb2

_log = logging.getLogger(__name__)
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # a result directory's name
TRAIN_SPLIT = "train"
_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Below this many examples a window still gets its verdict, but its distances say little: random 30-row windows of
# Fisher's own rows reach a Jensen-Shannon divergence of ~0.2 against his whole table (schema/schema.pbtxt's comment).
MIN_RELIABLE_EXAMPLES = 100
# Each ML Metadata gRPC call's deadline: a service that never answers (a dropped route) becomes exit 3, which the
# CronJob retries, instead of a run hanging until the Job's activeDeadlineSeconds.
METADATA_TIMEOUT_SECONDS = 120.0
DECODE_CHUNK = 8192  # logged examples decoded into Arrow together: tfx-bsl's per-call cost amortized


class MonitorError(ValueError):
    """Bad input (no logs, nothing in the window, an unknown version, a bad time): one line saying what and where."""


class MonitorFailure(RuntimeError):
    """Neither a verdict nor bad input: something the monitor needs failed (ML Metadata unreachable, the training
    statistics unreadable), so a retry may succeed; one line saying what failed and where."""


def utc_now() -> datetime.datetime:
    """Now, in UTC (one place, so every time the monitor compares is aware and in UTC)."""
    return datetime.datetime.now(datetime.timezone.utc)


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """--since: an ISO 8601 time (UTC unless it names a zone) or a span back from now (`90s`, `30m`, `1h`, `7d`)."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - datetime.timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MonitorError(f"--since {text!r} is neither an ISO 8601 time (2026-11-30T14:00:00Z) nor a span back "
                           "from now (90s, 30m, 1h, 7d)") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    if moment > now:
        raise MonitorError(f"--since {text} is in the future (now is {now:%Y-%m-%dT%H:%M:%SZ})")
    return moment.astimezone(datetime.timezone.utc)


# --- the logged traffic -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Traffic:
    """One model version's logged traffic in a window: its examples (serialized tf.Examples and raw feature values,
    decoded into Arrow tables DECODE_CHUNK at a time) and the species predicted for each (None where the response
    says none, e.g. Regress)."""
    model: str
    version: int
    records: int = 0
    first: Optional[float] = None  # seconds since the epoch of the oldest record
    last: Optional[float] = None
    serialized: List[bytes] = dataclasses.field(default_factory=list)  # not decoded yet
    raw: Dict[str, List[Optional[List[float]]]] = dataclasses.field(default_factory=dict)  # not converted yet
    raw_rows: int = 0
    tables: List["pa.Table"] = dataclasses.field(default_factory=list)  # decoded serialized examples, in order
    raw_tables: List["pa.Table"] = dataclasses.field(default_factory=list)  # converted raw rows, in order
    decoded: int = 0  # examples in `tables` and `raw_tables`
    predicted_serialized: List[Optional[str]] = dataclasses.field(default_factory=list)
    predicted_raw: List[Optional[str]] = dataclasses.field(default_factory=list)

    @property
    def examples(self) -> int:
        return self.decoded + len(self.serialized) + self.raw_rows

    @property
    def predicted(self) -> List[Optional[str]]:
        """The predicted species of each example, in record_batch()'s row order."""
        return self.predicted_serialized + self.predicted_raw

    def add(self, timestamp: float, parsed: "Parsed") -> None:
        """One record's examples and predictions."""
        self.records += 1
        self.first = timestamp if self.first is None else min(self.first, timestamp)
        self.last = timestamp if self.last is None else max(self.last, timestamp)
        if parsed.serialized:
            self.serialized += parsed.serialized
            self.predicted_serialized += _aligned(parsed.predicted, len(parsed.serialized))
            if len(self.serialized) >= DECODE_CHUNK:
                self._decode()
        rows = min((len(a) for a in parsed.raw.values()), default=0)
        if rows:
            for name in set(self.raw) | set(parsed.raw):
                values = parsed.raw[name][:rows].tolist() if name in parsed.raw else [None] * rows
                self.raw.setdefault(name, [None] * self.raw_rows).extend(values)
            self.raw_rows += rows
            self.predicted_raw += _aligned(parsed.predicted, rows)
            if self.raw_rows >= DECODE_CHUNK:
                self._decode()

    def _decode(self) -> None:
        """The pending examples into Arrow tables (tfx-bsl's decoder for tf.Examples), so memory grows by columns,
        not by one Python object per logged example or value."""
        import pyarrow as pa  # pylint: disable=g-import-not-at-top
        if self.serialized:
            self.tables.append(pa.Table.from_batches([_numbers_as_floats(_examples_batch(self.serialized))]))
            self.decoded, self.serialized = self.decoded + len(self.serialized), []
        if self.raw_rows:
            floats = pa.large_list(pa.float32())
            self.raw_tables.append(pa.table({name: pa.array(rows, floats) for name, rows in self.raw.items()}))
            self.decoded, self.raw, self.raw_rows = self.decoded + self.raw_rows, {}, 0

    def record_batch(self) -> "pa.RecordBatch":
        """All examples as one Arrow batch, as TFDV reads data: the inputs' features (a label sent in the request
        dropped) and `species`, the PREDICTED species, so TFDV compares the predicted mix with the label mix."""
        import pyarrow as pa  # pylint: disable=g-import-not-at-top
        self._decode()
        table = pa.concat_tables(self.tables + self.raw_tables, promote=True)
        if constants.LABEL_KEY in table.column_names:
            table = table.drop([constants.LABEL_KEY])
        names = {s: [s.encode()] for s in set(self.predicted) if s is not None}
        species = pa.array([None if s is None else names[s] for s in self.predicted],
                           pa.large_list(pa.large_binary()))
        table = table.append_column(constants.LABEL_KEY, species).combine_chunks()
        return table.to_batches()[0]


class Parsed(NamedTuple):
    """One logged request's examples: serialized tf.Examples, or raw feature values by name ([rows, values]),
    and the species predicted for each."""
    serialized: List[bytes]
    raw: Dict[str, Any]
    predicted: List[Optional[str]]


def _aligned(predicted: List[Optional[str]], rows: int) -> List[Optional[str]]:
    """One prediction per example (None for those the response has none for), each name one shared string."""
    return [None if p is None else sys.intern(p) for p in (predicted + [None] * rows)[:rows]]


def _numbers_as_floats(batch: "pa.RecordBatch") -> "pa.RecordBatch":
    """Numeric columns as lists of float32, as the schema's FLOAT features are, so an int64_list sent for a
    measurement joins the other requests' values (and TFDV sees one type per feature)."""
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    floats = pa.large_list(pa.float32())
    arrays = [a.cast(floats) if pa.types.is_large_list(a.type) and (pa.types.is_integer(a.type.value_type) or
                                                                  pa.types.is_floating(a.type.value_type))
              else a for a in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, batch.schema.names)


def _examples_batch(serialized: List[bytes]) -> "pa.RecordBatch":
    """Serialized tf.Examples as an Arrow batch, with tfx-bsl's decoder (the one TFX's components use)."""
    from tfx_bsl.coders import example_coder  # pylint: disable=g-import-not-at-top
    return example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(serialized)


def _input_examples(model_input) -> List[bytes]:
    """The serialized examples of a Classify/Regress/MultiInference `Input`; a context is merged into each example
    as TF Serving does (the example's own features win)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in model_input.example_list.examples]
    if kind == "example_list_with_context":
        context = model_input.example_list_with_context.context
        merged = []
        for example in model_input.example_list_with_context.examples:
            one = copy.deepcopy(context)
            for name, feature in example.features.feature.items():
                one.features.feature[name].CopyFrom(feature)
            merged.append(one.SerializeToString())
        return merged
    return []


def _classified(classifications) -> List[Optional[str]]:
    """The most probable class of each Classification (TF Serving's Classify answer)."""
    return [max(c.classes, key=lambda k: k.score).label if c.classes else None for c in classifications]


def _predicted_by_predict(outputs) -> List[Optional[str]]:
    """Predict's answer: the `species` output, else the class of highest probability, else nothing."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if constants.PREDICTED_OUTPUT in outputs:
        return [s.decode() for s in outputs[constants.PREDICTED_OUTPUT].string_val]
    if constants.PROBABILITIES_OUTPUT in outputs and constants.CLASSES_OUTPUT in outputs:
        probabilities = tf.make_ndarray(outputs[constants.PROBABILITIES_OUTPUT])
        classes = tf.make_ndarray(outputs[constants.CLASSES_OUTPUT])
        best = np.argmax(probabilities, axis=-1)
        return [classes[i][best[i]].decode() for i in range(len(best))]
    return []


def parse_log(log: "prediction_log_pb2.PredictionLog") -> Parsed:
    """One logged request/response: its examples (serialized tf.Examples, or raw feature tensors) and the species
    predicted for each."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        inputs = log.predict_log.request.inputs
        predicted = _predicted_by_predict(log.predict_log.response.outputs)
        if constants.EXAMPLES_INPUT in inputs:
            return Parsed(list(inputs[constants.EXAMPLES_INPUT].string_val), {}, predicted)
        arrays = {name: np.atleast_1d(tf.make_ndarray(tensor)) for name, tensor in inputs.items()}
        raw = {name: a.reshape(len(a), int(np.prod(a.shape[1:]))).astype("float32")  # a row per example; [0] too
               for name, a in arrays.items() if a.dtype.kind in "fiu"}
        return Parsed([], raw, predicted)
    if kind == "classify_log":
        return Parsed(_input_examples(log.classify_log.request.input), {},
                      _classified(log.classify_log.response.result.classifications))
    if kind == "regress_log":
        return Parsed(_input_examples(log.regress_log.request.input), {}, [])
    if kind == "multi_inference_log":
        results = [r.classification_result.classifications for r in log.multi_inference_log.response.results
                   if r.HasField("classification_result")]
        return Parsed(_input_examples(log.multi_inference_log.request.input), {},
                      _classified(results[0]) if results else [])
    return Parsed([], {}, [])


def read_traffic(prefix: str, start: Optional[datetime.datetime], end: Optional[datetime.datetime] = None,
                 ) -> Dict[Tuple[str, int], Traffic]:
    """The logged traffic with start <= time < end (either open), by (model name, version that answered)."""
    return read_windows(prefix, [start], end)[0]


def read_windows(prefix: str, starts: List[Optional[datetime.datetime]], end: Optional[datetime.datetime] = None,
                 ) -> List[Dict[Tuple[str, int], Traffic]]:
    """The logged traffic of consecutive windows, [starts[i], starts[i + 1]) and [starts[-1], end) (starts[0] and
    end may be open), by (model name, version that answered), in one pass over the files."""
    from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top,redefined-outer-name
    lows = [s.timestamp() if s else float("-inf") for s in starts]
    high = end.timestamp() if end else float("inf")
    windows: List[Dict[Tuple[str, int], Traffic]] = [{} for _ in starts]
    for data in request_logs.read_records(prefix, starts[0]):  # only the files that can hold the windows
        try:
            log = prediction_log_pb2.PredictionLog.FromString(data)
        except DecodeError as e:  # a whole TFRecord that is not a PredictionLog: not a reason to judge nothing
            _log.warning("%s: skipped a record that is not a PredictionLog (%d bytes): %s", prefix, len(data), e)
            continue
        timestamp = float(log.log_metadata.timestamp_secs)
        window = bisect.bisect_right(lows, timestamp) - 1
        if window < 0 or timestamp >= high:
            continue
        spec = log.log_metadata.model_spec
        key = (spec.name, spec.version.value)
        traffic = windows[window].setdefault(key, Traffic(model=key[0], version=key[1]))
        try:
            parsed = parse_log(log)
        except Exception as e:  # noqa: BLE001 - one malformed logged request must not hide all the others
            _log.warning("%s: skipped a logged request of model %s version %d that cannot be read: %s", prefix,
                         key[0], key[1], e)
            continue
        traffic.add(timestamp, parsed)
    return windows


def statistics_of(batch: "pa.RecordBatch") -> "statistics_pb2.DatasetFeatureStatisticsList":
    """TFDV's statistics of a window's batch, in memory (Arrow's path, as StatisticsGen computes them per batch)."""
    from tensorflow_data_validation.statistics import stats_impl  # pylint: disable=g-import-not-at-top
    return stats_impl.generate_statistics_in_memory(batch)


# --- the training data, through ML Metadata -----------------------------------------------------------------------

@dataclasses.dataclass
class TrainingRun:
    """What a pushed version was trained from: the pipeline run, its train split's statistics and its schema."""
    run_id: str
    statistics_uri: str  # the train split's FeatureStats.pb
    statistics: "statistics_pb2.DatasetFeatureStatisticsList"
    schema: "schema_pb2.Schema"


def metadata_config(workdir: str, metadata_grpc: Optional[str]):
    """The ML Metadata connection: the gRPC metadata service at HOST:PORT, else the workdir's SQLite file (which
    must exist: opening a missing one would create an empty store)."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
    from pipeline.config import PipelineConfig, sqlite_metadata  # pylint: disable=g-import-not-at-top
    if metadata_grpc:
        host, _, port = metadata_grpc.rpartition(":")
        return metadata_store_pb2.MetadataStoreClientConfig(host=host, port=int(port),
                                                            client_timeout_sec=METADATA_TIMEOUT_SECONDS)
    path = PipelineConfig(workdir=workdir).metadata_path
    if not os.path.isfile(path):
        raise MonitorError(f"--workdir {workdir}: no ML Metadata there (no {os.path.basename(path)}): give the "
                           "workdir of the pipeline runs that pushed the models, or --metadata_grpc HOST:PORT")
    return sqlite_metadata(path)


def _inputs(store, execution) -> Dict[str, List[Any]]:
    """An execution's input artifacts (tfx Artifacts) by input key."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
    from pipeline.summary import artifacts_by_key  # pylint: disable=g-import-not-at-top
    return artifacts_by_key(store, execution, (metadata_store_pb2.Event.INPUT,))


def _executions_with(store, artifact_id: int, kind) -> List[Any]:
    """The executions that have the artifact as input or output (`kind`), oldest first; complete ones before others
    (a re-run with the same inputs records a CACHED execution with the same outputs)."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
    kinds = (kind,) if kind == metadata_store_pb2.Event.INPUT else (kind, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ids = sorted({e.execution_id for e in store.get_events_by_artifact_ids([artifact_id]) if e.type in kinds})
    executions = store.get_executions_by_id(ids)
    return sorted(executions, key=lambda e: (e.last_known_state != metadata_store_pb2.Execution.COMPLETE,
                                             e.create_time_since_epoch))


def _train_statistics(store, examples) -> Optional[Any]:
    """The ExampleStatistics computed from `examples`, or from the examples they were made from (Transform's
    output -> its input), so the model's training data is found however many steps lie between."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
    from pipeline.summary import outputs  # pylint: disable=g-import-not-at-top
    for consumer in _executions_with(store, examples.id, metadata_store_pb2.Event.INPUT):
        for artifact in outputs(store, consumer).values():
            if artifact.type_name == "ExampleStatistics":
                return artifact
    for producer in _executions_with(store, examples.id, metadata_store_pb2.Event.OUTPUT)[:1]:
        for upstream in _inputs(store, producer).get("examples", []):
            found = _train_statistics(store, upstream)
            if found is not None:
                return found
    return None


def find_training(connection, where: str, model: str, version: int) -> TrainingRun:
    """PushedModel (`pushed_version`) -> Pusher -> its Model -> Trainer -> its Examples -> their StatisticsGen
    output (train split), and the Trainer's Schema; MonitorError saying what is missing and where it looked,
    MonitorFailure when ML Metadata or the files it names cannot be read."""
    from ml_metadata import errors  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tfx.orchestration import metadata  # pylint: disable=g-import-not-at-top
    from tfx.utils import io_utils  # pylint: disable=g-import-not-at-top
    from components.validation import load_statistics  # pylint: disable=g-import-not-at-top
    try:
        with metadata.Metadata(connection) as m:
            run_id, statistics, schema = _training_artifacts(m.store, where, model, version)
    except errors.StatusError as e:
        raise MonitorFailure(f"cannot read ML Metadata ({where}): {first_line(e)}") from e
    try:
        by_split = load_statistics(statistics)
        # The Schema artifact's one file, found and read as TFX's Trainer does (fn_args_utils).
        schema_proto = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri))
    except (OSError, RuntimeError, tf.errors.OpError) as e:
        raise MonitorFailure(f"model {model} version {version}: cannot read the training statistics ({statistics.uri}"
                             f") or schema ({schema.uri}) that {where} names: {first_line(e)}") from e
    if TRAIN_SPLIT not in by_split:
        raise MonitorError(f"model {model} version {version}: the statistics at {statistics.uri} have no "
                           f"'{TRAIN_SPLIT}' split")
    return TrainingRun(run_id=run_id,
                       statistics_uri=os.path.join(statistics.uri, f"Split-{TRAIN_SPLIT}", "FeatureStats.pb"),
                       statistics=by_split[TRAIN_SPLIT], schema=schema_proto)


def first_line(error: BaseException) -> str:
    """An error's message on one line (TF's and ML Metadata's run to many)."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0]


def pushes_of(artifacts: List[Any], model: str, version: int) -> List[Any]:
    """The PushedModel artifacts (MLMD protos) of this version; those pushed to a directory named as the model
    (`pushed_destination` is <serving dir>/<version>, the serving dir named after the model) when there are any.
    The name only narrows: a server may serve a directory under any name (its model config's), so a version
    pushed under another directory name is still that version."""
    pushed = [a for a in artifacts if a.custom_properties["pushed_version"].string_value == str(version)
              and a.custom_properties["pushed"].int_value == 1]
    named = [a for a in pushed if os.path.basename(os.path.dirname(os.path.normpath(
        a.custom_properties["pushed_destination"].string_value))) == model]
    return named or pushed


def _training_artifacts(store, where: str, model: str, version: int) -> Tuple[str, Any, Any]:
    """The run id, the train statistics artifact and the schema artifact of a pushed version, from ML Metadata;
    MonitorError when one is missing."""
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
    output = metadata_store_pb2.Event.OUTPUT
    pushed = pushes_of(store.get_artifacts_by_type("PushedModel"), model, version)
    pushers = [e for a in pushed for e in _executions_with(store, a.id, output)]
    if not pushers:
        raise MonitorError(f"model {model} version {version} answered the logged requests, but {where} records "
                           "no push of that version (is it the ML Metadata of the runs that pushed it?)")
    run_ids = [c.name for c in store.get_contexts_by_execution(pushers[0].id)
               if store.get_context_types_by_id([c.type_id])[0].name == "pipeline_run"]
    models = _inputs(store, pushers[0]).get("model", [])
    trainers = [t for m_ in models for t in _executions_with(store, m_.id, output)]
    if not trainers:
        raise MonitorError(f"model {model} version {version}: {where} has no Trainer execution of its model")
    trainer_inputs = _inputs(store, trainers[0])
    statistics = next(filter(None, (_train_statistics(store, e) for e in trainer_inputs.get("examples", []))), None)
    schemas = trainer_inputs.get("schema", [])
    if statistics is None or not schemas:
        raise MonitorError(f"model {model} version {version}: {where} has no "
                           f"{'statistics of its training examples' if statistics is None else 'schema'} "
                           f"(run {run_ids[0] if run_ids else '?'})")
    return (run_ids[0] if run_ids else "unknown-run"), statistics, schemas[0]


# --- the comparison ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """One version's monitoring result: what result.json holds, plus the protos written beside it."""
    data: Dict[str, Any]
    serving: "statistics_pb2.DatasetFeatureStatisticsList"
    previous: Optional["statistics_pb2.DatasetFeatureStatisticsList"]
    anomalies: "anomalies_pb2.Anomalies"

    @property
    def found(self) -> bool:
        return bool(self.data["found"])


def _measurements(anomalies, field: str) -> Dict[str, Comparison]:
    """The skew or drift measurements TFDV recorded (drift_skew_info), by feature name."""
    found = {}
    for info in anomalies.drift_skew_info:
        for m in getattr(info, field):
            found[".".join(info.path.step)] = Comparison(m.value, m.threshold, m.value > m.threshold)
    return found


def _out_of_domain(batch: "pa.RecordBatch", schema: "schema_pb2.Schema") -> Dict[str, int]:
    """Values outside each feature's schema bounds by the server's rules (components/schema_bounds: SERVING
    environment, float32 compare, disallow_nan/inf): TFDV's anomalies say only that a bound was broken, not how
    often, and the report and the CronJob's log show how much of the traffic it concerns."""
    import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
    from components.schema_bounds import Bounds  # pylint: disable=g-import-not-at-top
    return Bounds.from_schema(schema).count_out_of_domain(
        {name: pc.list_flatten(batch.column(name)).to_numpy(zero_copy_only=False)
         for name in batch.schema.names if name != constants.LABEL_KEY})


def training_ranges(training: "statistics_pb2.DatasetFeatureStatisticsList") -> Dict[str, Tuple[float, float]]:
    """Each measurement's [min, max] in the training split, from its TFDV statistics."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    ranges = {}
    for name in constants.FEATURE_KEYS:
        try:
            stats = tfdv.get_feature_stats(training.datasets[0], tfdv.FeaturePath([name])).num_stats
        except (ValueError, IndexError):  # not in the training statistics: nothing to compare it with
            continue
        ranges[name] = (stats.min, stats.max)
    return ranges


def within_training_range(batch: "pa.RecordBatch", ranges: Dict[str, Tuple[float, float]]
                          ) -> Tuple["pa.RecordBatch", Dict[str, int]]:
    """The batch with each measurement clipped to the training split's range, and how many values were beyond it.

    Why: TFDV's Jensen-Shannon divergence compares equal-width histograms spanning each side's own [min, max], so
    ONE value of 500 among 150 in-distribution rows puts them all in the first bucket (JSD 0.8: "skew"). Compared
    on the training range, values beyond it weigh what they are, a share of the traffic piled at an edge (all of it
    for x10 traffic); how far beyond is the schema's bounds' business (out_of_domain)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
    arrays, beyond = [], {}
    for name, column in zip(batch.schema.names, batch.columns):
        if name in ranges and pa.types.is_floating(getattr(column.type, "value_type", pa.null())):
            low, high = ranges[name]
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):  # NaN stays NaN and is not counted here
                beyond[name] = int(np.count_nonzero((values < low) | (values > high)))
                clipped = np.clip(values, low, high).astype(values.dtype)
            offsets = pc.subtract(column.offsets, column.offsets[0])  # a sliced column's offsets start past 0
            column = type(column).from_arrays(offsets, pa.array(clipped), mask=column.is_null())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, batch.schema.names), beyond


def _mix(counts: Dict[str, int]) -> Dict[str, float]:
    total = sum(counts.values())
    return {name: count / total for name, count in sorted(counts.items())} if total else {}


def _iso(seconds: Optional[float]) -> Optional[str]:
    return None if seconds is None else datetime.datetime.fromtimestamp(
        seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verdict(skew: Optional[Comparison], drift: Optional[Comparison]) -> str:
    """"skew", "drift", "skew, drift" (found), "ok" (compared, nothing found) or "not checked" (no comparator)."""
    return ", ".join(kind for kind, c in (("skew", skew), ("drift", drift)) if c and c.found) or (
        "ok" if skew or drift else "not checked")


def _skew_only(skew: "anomalies_pb2.Anomalies") -> "anomalies_pb2.Anomalies":
    """The skew validation's anomalies without those of the training statistics themselves (TFDV checks them
    against the schema in the same call; the run's ExampleValidator judged them), so all are the traffic's."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2  # pylint: disable=g-import-not-at-top,redefined-outer-name
    kept = copy.deepcopy(skew)
    kept.ClearField("anomaly_info")
    kept.ClearField("dataset_anomaly_info")  # the training split's; the schema declares no dataset comparator
    for name, info in skew.anomaly_info.items():
        reasons = [r for r in info.reason if anomalies_pb2.AnomalyInfo.Type.Name(r.type).startswith("COMPARATOR_")]
        if reasons:
            one = kept.anomaly_info[name]
            one.CopyFrom(info)
            del one.reason[:]
            one.reason.extend(reasons)
            one.description = " ".join(r.description for r in reasons)
            one.short_description = reasons[0].short_description if len(reasons) == 1 else "Multiple errors"
    return kept


def compare(traffic: Traffic, training: TrainingRun, previous: Optional[Traffic], logs: str,
            since: Optional[datetime.datetime], now: datetime.datetime) -> Result:
    """Skew (TFDV: the training statistics with the window as serving_statistics) and, given a previous window,
    drift plus the schema's checks of the window itself (the window with the previous one as previous_statistics)."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    from components.validation import class_counts  # pylint: disable=g-import-not-at-top
    batch = traffic.record_batch()  # decoded once: the statistics and the out-of-domain counts read it
    ranges = training_ranges(training.statistics)
    compared, beyond = within_training_range(batch, ranges)
    serving = statistics_of(compared)  # what the distances compare (within_training_range says why)
    previous_stats = (statistics_of(within_training_range(previous.record_batch(), ranges)[0])
                      if previous is not None and previous.examples else None)
    skew = tfdv.validate_statistics(training.statistics, training.schema, serving_statistics=serving)
    # The window's own check: the label's "all three species in a split" is a training-split rule, not traffic's.
    window_schema = copy.deepcopy(training.schema)
    for feature in window_schema.feature:
        if feature.name == constants.LABEL_KEY:
            feature.ClearField("unique_constraints")
    # The schema's own checks see the values as sent; drift, the clipped windows. Nothing clipped (the usual
    # window): the values as sent are the compared ones, so their statistics are not computed a second time.
    as_sent = statistics_of(batch) if any(beyond.values()) else serving
    window = tfdv.validate_statistics(as_sent, window_schema)
    if previous_stats is not None:
        drift = tfdv.validate_statistics(serving, window_schema, previous_statistics=previous_stats)
        window.drift_skew_info.extend(drift.drift_skew_info)
    anomalies = _skew_only(skew)
    for name, info in window.anomaly_info.items():
        if name in anomalies.anomaly_info:
            anomalies.anomaly_info[name].reason.extend(info.reason)
            anomalies.anomaly_info[name].description += " " + info.description
        else:
            anomalies.anomaly_info[name].CopyFrom(info)
    anomalies.drift_skew_info.extend(i for i in window.drift_skew_info if i.drift_measurements)
    skews, drifts = _measurements(anomalies, "skew_measurements"), _measurements(anomalies, "drift_measurements")
    out_of_domain = _out_of_domain(batch, training.schema)
    features = []
    for name in constants.FEATURE_KEYS:
        s, d = skews.get(name), drifts.get(name)
        verdict = _verdict(s, d)
        features.append({"name": name, "skew": dataclasses.asdict(s) if s else None,
                         "drift": dataclasses.asdict(d) if d else None,
                         "out_of_domain": out_of_domain.get(name, 0),
                         "outside_training_range": beyond.get(name, 0), "verdict": verdict})
    species = skews.get(constants.LABEL_KEY)
    mix = {"serving": _mix(class_counts(serving)), "training": _mix(class_counts(training.statistics)),
           "distance": species.distance if species else None, "threshold": species.threshold if species else None,
           "found": bool(species and species.found)}
    species_drift = drifts.get(constants.LABEL_KEY)
    if species_drift:
        mix["drift"] = dataclasses.asdict(species_drift)
    found = mix["found"] or bool(species_drift and species_drift.found) or any(
        f["verdict"] not in ("ok", "not checked") for f in features)
    data = {"created": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "logs": logs,
            "since": since.strftime("%Y-%m-%dT%H:%M:%SZ") if since else None,
            "window": {"first": _iso(traffic.first), "last": _iso(traffic.last)},
            "model": {"name": traffic.model, "version": traffic.version}, "run_id": training.run_id,
            "records": traffic.records, "examples": traffic.examples,
            "training_statistics": training.statistics_uri, "serving_statistics": "serving_statistics.pb",
            "previous_statistics": "previous_statistics.pb" if previous_stats is not None else None,
            "anomalies": "anomalies.pbtxt", "features": features, "species_mix": mix, "found": found}
    return Result(data, serving, previous_stats, anomalies)


def write_result(result: Result, workdir: str, now: datetime.datetime) -> str:
    """<workdir>/monitoring/<run id>/<UTC stamp>/ with result.json, written under a temporary sibling name and
    renamed when complete, so a reader (which takes only UTC-stamp names) never sees it half written."""
    import tempfile  # pylint: disable=g-import-not-at-top
    parent = os.path.join(workdir, constants.MONITORING_DIR, result.data["run_id"])
    os.makedirs(parent, exist_ok=True)
    final = os.path.join(parent, now.strftime(STAMP_FORMAT))
    directory = tempfile.mkdtemp(prefix=f".{now.strftime(STAMP_FORMAT)}-", dir=parent)
    try:
        _write_files(result, directory)
        os.chmod(directory, 0o755)  # mkdtemp's is 0700; the report reader may run as another user
        os.rename(directory, final)  # fails if a result of the same second exists: never half-replace one
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return final


def _write_files(result: Result, directory: str) -> None:
    """The result's files into `directory`."""
    from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
    with open(os.path.join(directory, result.data["serving_statistics"]), "wb") as f:
        f.write(result.serving.SerializeToString())
    if result.previous is not None:
        with open(os.path.join(directory, result.data["previous_statistics"]), "wb") as f:
            f.write(result.previous.SerializeToString())
    with open(os.path.join(directory, result.data["anomalies"]), "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(result.anomalies))
    with open(os.path.join(directory, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result.data, f, indent=1)


def _comparison_text(kind: str, comparison: Optional[Dict[str, Any]], measure: str) -> str:
    if comparison is None:
        return f"{kind} not checked"
    sign = ">" if comparison["found"] else "<="
    return f"{kind} {measure} {comparison['distance']:.3f} {sign} {comparison['threshold']:g}"


def _shout(verdict: str) -> str:
    """A verdict as printed: what was found in capitals, so it stands out in a column of "ok"."""
    return verdict if verdict in ("ok", "not checked") else verdict.upper()


def _outside(count: int) -> str:
    return f"; {count} value{'s' if count > 1 else ''} outside the schema's bounds" if count else ""


def verdict_lines(result: Result) -> List[str]:
    """One line per feature and one for the species mix, as the command prints them."""
    data = result.data
    lines = [f"Model {data['model']['name']} version {data['model']['version']} (run {data['run_id']}): "
             f"{data['examples']} examples in {data['records']} logged requests, "
             f"{data['window']['first']} to {data['window']['last']}"]
    for f in data["features"]:
        lines.append(f"  {f['name']:<13} {_shout(f['verdict']):<12} "
                     f"{_comparison_text('skew', f['skew'], 'JSD')}; {_comparison_text('drift', f['drift'], 'JSD')}"
                     + _outside(f["out_of_domain"]))
    mix = data["species_mix"]
    shares = ", ".join(f"{name} {mix['serving'].get(name, 0):.2f} ({mix['training'].get(name, 0):.2f})"
                       for name in constants.CLASS_NAMES)
    skew = None if mix["distance"] is None else {k: mix[k] for k in ("distance", "threshold", "found")}
    verdict = _verdict(*(None if c is None else Comparison(**c) for c in (skew, mix.get("drift"))))
    lines.append(f"  {'species mix':<13} {_shout(verdict):<12} "
                 f"{_comparison_text('skew', skew, 'L-inf')}; {_comparison_text('drift', mix.get('drift'), 'L-inf')}"
                 f" -- predicted (training): {shares}")
    if data["examples"] < MIN_RELIABLE_EXAMPLES:
        lines.append(f"  (only {data['examples']} examples: below {MIN_RELIABLE_EXAMPLES} the distances are "
                     "unreliable, random windows of the training data itself reach JSD ~0.2)")
    if all(f["verdict"] == "not checked" for f in data["features"]) and skew is None:
        lines.append("  (nothing compared: the run's schema declares no skew_comparator or drift_comparator)")
    return lines


class Outcome(NamedTuple):
    """What one monitor call judged: (result, its directory) per version judged, and one line per version that
    answered requests but could not be judged (no training data found for it), saying where the monitor looked."""
    results: List[Tuple[Result, str]]
    unknown: List[str]


def monitor(logs: str, workdir: str, metadata_grpc: Optional[str] = None, since: Optional[str] = None,
            now: Optional[datetime.datetime] = None) -> Outcome:
    """Reads the window's traffic, finds each answering version's training data, compares and writes the results;
    a version whose training data is not found does not stop the others being judged. MonitorError for bad input."""
    now = now or utc_now()
    start = parse_since(since, now) if since else None
    if not request_logs.log_files(logs):
        raise MonitorError(f"--logs {logs}: no request log files ({logs}-*{request_logs.SUFFIX}); the server writes "
                           "them when its model config has a logging_config with this filename_prefix")
    # With --since, the window and the one of the same length before it (for drift), in one pass.
    previous, current = read_windows(logs, [start - (now - start), start]) if start else ({}, read_traffic(logs, None))
    current = {key: t for key, t in current.items() if t.examples}
    if not current:
        window = f"since {start:%Y-%m-%dT%H:%M:%SZ}" if start else "at all"
        raise MonitorError(f"--logs {logs}: no logged examples {window} (files: {len(request_logs.log_files(logs))})")
    connection = metadata_config(workdir, metadata_grpc)
    where = f"the metadata service {metadata_grpc}" if metadata_grpc else f"--workdir {workdir}'s ML Metadata"
    outcome = Outcome([], [])
    for key, traffic in sorted(current.items()):
        try:
            training = find_training(connection, where, traffic.model, traffic.version)
        except MonitorError as e:
            outcome.unknown.append(str(e))
            continue
        result = compare(traffic, training, previous.get(key), logs, start, now)
        outcome.results.append((result, write_result(result, workdir, now)))
    return outcome
