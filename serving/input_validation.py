"""Request inputs checked against the schema's bounds for the SERVING environment (the float_domain min/max and
disallow_nan/disallow_inf that tfdv.get_domain reads), for the server and `iris-tfx predict` alike.

No TensorFlow here (tfdv imports it, and `iris-tfx predict` must stay quick): tensorflow_metadata's schema_pb2 and
numpy; the server passes in its tf.Example parser. Values are compared in float32, as the model sees them. Serialized
examples are checked in the model's Session run (Servable.add_input_check); they are parsed here only to name the
values of a request flagged there."""
import collections
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from serving.errors import invalid

log = logging.getLogger(__name__)
SERVING_ENVIRONMENT = "SERVING"
MODES = ("off", "warn", "reject")
# How a signature input carries features: serialized tf.Examples (checked in the model's Session run), or one
# feature's values (COLUMN, checked here before the run).
EXAMPLES, COLUMN = "examples", "column"
LOG_INTERVAL_SECONDS = 60.0  # warn: one log line per (model, feature) per this many seconds


class Violation(NamedTuple):
    """One value outside its feature's bounds: which feature, the value, the bound broken, and which example."""
    feature: str
    value: float
    example: int
    kind: str  # "below", "above", "nan", "inf"
    bound: Optional[float] = None

    def message(self, with_example: bool = True) -> str:
        """E.g. "sepal_length = 500 is above the schema's maximum 20.0 (example 0)"."""
        bound = str(np.float32(self.bound))  # the schema's float as written: 0.05, not 0.05000000074505806
        what = {"below": f"is below the schema's minimum {bound}", "above": f"is above the schema's maximum {bound}",
                "nan": "is NaN, which the schema disallows",
                "inf": "is infinite, which the schema disallows"}[self.kind]
        return f"{self.feature} = {self.value:g} {what}" + (f" (example {self.example})" if with_example else "")


@dataclass(frozen=True)
class Bound:
    """A feature's float_domain: None where the schema sets no min or max."""
    min: Optional[float]
    max: Optional[float]
    disallow_nan: bool
    disallow_inf: bool


def in_environment(schema: schema_pb2.Schema, feature: schema_pb2.Feature, environment: str) -> bool:
    """TFDV's rule: the feature's in_environment if it has any, else the schema's default_environment (all when
    none), minus its not_in_environment."""
    if environment in feature.not_in_environment:
        return False
    if feature.in_environment:
        return environment in feature.in_environment
    return not schema.default_environment or environment in schema.default_environment


def _float_domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> Optional[schema_pb2.FloatDomain]:
    """The feature's float_domain, inline or named in the schema's float_domain list (as tfdv.get_domain)."""
    kind = feature.WhichOneof("domain_info")
    if kind == "float_domain":
        return feature.float_domain
    if kind == "domain":
        return next((d for d in schema.float_domain if d.name == feature.domain), None)
    return None


class Bounds:
    """The bounds of the features with a float_domain in one environment, as float32 arrays for a vectorised check:
    a value is in bounds when lo <= value <= hi (NaN compares false: out unless the schema allows it)."""

    def __init__(self, bounds: Mapping[str, Bound]):
        self.bounds = dict(bounds)
        self.names: Tuple[str, ...] = tuple(self.bounds)
        self.index = {name: i for i, name in enumerate(self.names)}
        b = [self.bounds[n] for n in self.names]
        # float32, the schema's float and the model's: the bound as written (0.05 is the float32 0.0500000007). No
        # max: +inf allowed unless disallow_inf (then the largest finite float32 is the bound); likewise the min.
        big = float(np.finfo(np.float32).max)
        self.lo = np.array([x.min if x.min is not None else (-big if x.disallow_inf else -np.inf) for x in b],
                           np.float32)
        self.hi = np.array([x.max if x.max is not None else (big if x.disallow_inf else np.inf) for x in b], np.float32)
        self.nan_ok = np.array([not x.disallow_nan for x in b], dtype=bool)

    @classmethod
    def from_schema(cls, schema: schema_pb2.Schema, environment: str = SERVING_ENVIRONMENT) -> "Bounds":
        bounds = {}
        for f in schema.feature:
            domain = _float_domain(schema, f)
            if domain is not None and in_environment(schema, f, environment):
                bounds[f.name] = Bound(domain.min if domain.HasField("min") else None,
                                       domain.max if domain.HasField("max") else None,
                                       domain.disallow_nan, domain.disallow_inf)
        return cls(bounds)

    @classmethod
    def from_text(cls, text: str, where: str = "schema") -> "Bounds":
        """From a Schema in text format; ValueError naming `where` if it does not parse."""
        try:
            return cls.from_schema(text_format.Parse(text, schema_pb2.Schema()))
        except text_format.ParseError as e:
            raise ValueError(f"{where}: not a tensorflow_metadata Schema: {e}") from None

    @classmethod
    def from_file(cls, path: str) -> "Bounds":
        with open(path, encoding="utf-8") as f:
            return cls.from_text(f.read(), path)

    def __bool__(self) -> bool:
        return bool(self.names)

    def check_values(self, feature: int, values: np.ndarray, examples: np.ndarray) -> List[Violation]:
        """A feature's flat values, each with the index of its example, compared as the model sees them (cast to
        float32: a double 0.05 is the bound 0.05); [] when all in bounds."""
        with np.errstate(over="ignore"):  # a double beyond float32's range is infinite to the model too
            seen = values.astype(np.float32, copy=False)
        ok = (seen >= self.lo[feature]) & (seen <= self.hi[feature])
        if ok.all():
            return []
        if self.nan_ok[feature]:
            ok |= np.isnan(seen)
        return [self._violation(feature, float(values[k]), float(seen[k]), int(examples[k]))
                for k in np.nonzero(~ok)[0]]

    def _violation(self, feature: int, value: float, seen: float, example: int) -> Violation:
        """`value` as sent, `seen` as the model sees it (float32)."""
        name = self.names[feature]
        bound = self.bounds[name]
        if np.isnan(seen):
            return Violation(name, value, example, "nan")
        if seen < self.lo[feature]:
            return (Violation(name, value, example, "below", bound.min) if bound.min is not None
                    else Violation(name, value, example, "inf"))
        return (Violation(name, value, example, "above", bound.max) if bound.max is not None
                else Violation(name, value, example, "inf"))

    def check_columns(self, columns: Mapping[str, np.ndarray]) -> List[Violation]:
        """Raw-feature inputs (feature -> array, examples along the first dimension); others are ignored."""
        found: List[Violation] = []
        for name, array in columns.items():
            j = self.index.get(name)
            if j is None or array.dtype.kind not in "fiu":
                continue
            values = np.atleast_1d(array)  # one row per example; an empty batch is [0, k] (reshape's -1 fails on it)
            values = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
            found += self.check_values(j, values.ravel(), np.repeat(np.arange(len(values)), values.shape[1]))
        return sorted(found, key=lambda v: (v.example, self.index[v.feature]))

    def check_examples(self, serialized: Iterable[bytes], parse: Callable[[bytes], object]) -> List[Violation]:
        """Serialized tf.Examples (`parse`: bytes -> tf.Example); only float_list values are checked (another type
        is the model's error to answer). Only for requests the in-graph check flagged, so plain protobuf parsing."""
        values: List[List[float]] = [[] for _ in self.names]
        examples: List[List[int]] = [[] for _ in self.names]
        for i, data in enumerate(serialized):
            features = parse(data).features.feature
            for j, name in enumerate(self.names):
                if name in features:
                    v = features[name].float_list.value
                    values[j].extend(v)
                    examples[j].extend([i] * len(v))
        found: List[Violation] = []
        for j in range(len(self.names)):
            found += self.check_values(j, np.array(values[j], np.float32), np.array(examples[j], np.int64))
        return sorted(found, key=lambda v: (v.example, self.index[v.feature]))


class Reporter:
    """Out-of-domain values of every model: each counted (`count(model, feature, n)`, the Prometheus counter) and
    logged at most once per (model, feature) per LOG_INTERVAL_SECONDS."""

    def __init__(self, count: Optional[Callable[[str, str, int], None]] = None,
                 interval: float = LOG_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self._count, self._interval, self._clock = count, interval, clock
        self._logged: Dict[Tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def report(self, model: str, violations: Sequence[Violation], mode: str) -> None:
        counts = collections.Counter(v.feature for v in violations)
        now = self._clock()
        for feature, n in counts.items():
            if self._count is not None:
                self._count(model, feature, n)
            with self._lock:
                last = self._logged.get((model, feature))
                if last is not None and now - last < self._interval:
                    continue
                self._logged[(model, feature)] = now
            first = next(v for v in violations if v.feature == feature)
            log.warning("Model %s: %d value(s) of %s outside the schema's bounds in one request, e.g. %s "
                        "(--input_validation=%s; said once a minute per feature, every value counted in "
                        ":tensorflow:serving:input_out_of_domain_count)", model, n, feature, first.message(), mode)


Plan = Tuple[Tuple[str, str], ...]  # a signature's checked inputs: (alias, EXAMPLES or COLUMN)


class InputValidator:
    """One loaded version's check of every request's inputs (Servable.run calls `check` before the Session run, for
    raw-feature arrays, and `check_flagged` after it, for examples checked in the graph): warn counts and logs,
    reject answers INVALID_ARGUMENT naming the first value out of bounds."""

    def __init__(self, model: str, bounds: Bounds, mode: str, plans: Mapping[str, Plan],
                 parse_example: Callable[[bytes], object], reporter: Reporter):
        if mode not in MODES[1:]:
            raise ValueError(f"input validation mode must be one of {MODES[1:]}, got {mode!r}")
        self.model, self.bounds, self.mode, self.reporter = model, bounds, mode, reporter
        self.plans = {name: plan for name, plan in plans.items() if plan}
        self._parse = parse_example
        self._last = threading.local()  # the examples array this thread checked last (MultiInference's tasks share it)

    def check(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> None:
        """Raw-feature arrays, before the Session run."""
        columns = {alias: inputs[alias] for alias, kind in self.plans.get(signature_name, ())
                   if kind == COLUMN and alias in inputs}
        if columns:
            self._found(self.bounds.check_columns(columns))

    def check_flagged(self, signature_name: str, inputs: Mapping[str, np.ndarray], in_bounds: bool) -> None:
        """After the Session run: `in_bounds` (from the graph) is true in the common case; otherwise the examples are
        parsed here to name each value."""
        if in_bounds:
            return
        self._found([v for alias, kind in self.plans[signature_name] if kind == EXAMPLES and alias in inputs
                     for v in self._examples(inputs[alias])])

    def _examples(self, array: np.ndarray) -> List[Violation]:
        last = getattr(self._last, "ref", None)
        if last is not None and last() is array:  # another task of the same MultiInference: checked once
            return []
        self._last.ref = weakref.ref(array)
        return self.bounds.check_examples(array.ravel(), self._parse)

    def _found(self, found: List[Violation]) -> None:
        if found:
            self.reporter.report(self.model, found, self.mode)
            if self.mode == "reject":
                raise invalid(f"Input out of the schema's bounds: {min(found, key=lambda v: v.example).message()}"
                              " (--input_validation=reject)")
