"""Request inputs checked against the schema's bounds for the SERVING environment (components.schema_bounds: the
same rules as `iris-tfx predict` and the monitor): warn counts and logs, reject refuses the request.

No TensorFlow here: the server passes in its tf.Example parser. Serialized examples are checked in the model's
Session run (Servable.add_input_check); they are parsed here only to name the values of a request flagged there."""
import collections
import logging
import threading
import time
import weakref
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from components.schema_bounds import Bounds, Violation
from serving.errors import invalid

log = logging.getLogger(__name__)
MODES = ("off", "warn", "reject")
# How a signature input carries features: serialized tf.Examples (checked in the model's Session run), or one
# feature's values (COLUMN, checked here before the run).
EXAMPLES, COLUMN = "examples", "column"
LOG_INTERVAL_SECONDS = 60.0  # warn: one log line per (model, feature) per this many seconds


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
