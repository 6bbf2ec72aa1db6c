"""A schema's float bounds for one environment (the float_domain min/max, inline or named, and disallow_nan/
disallow_inf that tfdv.get_domain reads), checked as the model sees values (float32): one set of rules for the
server, `iris-tfx predict` and the monitor's out-of-domain counts.

Written here, not TFDV's: tfdv imports TensorFlow (~5 s, and `iris-tfx predict` must stay quick) and validates
statistics, not single values; this needs only numpy and tensorflow_metadata's schema_pb2."""
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

SERVING_ENVIRONMENT = "SERVING"


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


def float_domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> Optional[schema_pb2.FloatDomain]:
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
        """The features with a float_domain (inline or named) that are in `environment`, by TFDV's rules."""
        bounds = {}
        for f in schema.feature:
            domain = float_domain(schema, f)
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
        seen, ok = self._in_bounds(feature, values)
        return [self._violation(feature, float(values[k]), float(seen[k]), int(examples[k]))
                for k in np.nonzero(~ok)[0]]

    def _in_bounds(self, feature: int, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The values as float32 (as the model sees them) and which of them are in bounds."""
        with np.errstate(over="ignore"):  # a double beyond float32's range is infinite to the model too
            seen = values.astype(np.float32, copy=False)
        ok = (seen >= self.lo[feature]) & (seen <= self.hi[feature])
        if self.nan_ok[feature] and not ok.all():
            ok |= np.isnan(seen)
        return seen, ok

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

    def count_out_of_domain(self, columns: Mapping[str, np.ndarray]) -> Dict[str, int]:
        """How many values of each bounded feature in `columns` (feature -> numeric values, any shape) are out of
        bounds, by the server's rules; for counting a whole window of traffic without a Violation per value."""
        counts = {}
        for name, array in columns.items():
            j = self.index.get(name)
            if j is not None and np.asarray(array).dtype.kind in "fiu":
                counts[name] = int(np.count_nonzero(~self._in_bounds(j, np.asarray(array).ravel())[1]))
        return counts

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
