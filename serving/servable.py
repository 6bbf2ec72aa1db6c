"""One loaded model version: the SavedModel in its own TF Session, run by tensor names as TF Serving does."""
import threading
from typing import Callable, Dict, Hashable, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

from serving import batching
from serving.errors import ServingError
from serving.input_validation import InputValidator

RunKey = Tuple[str, Tuple[str, ...], Tuple[str, ...]]  # (signature name, input aliases, output aliases)
CHECK_OUTPUT = "__input_check__"  # the extra fetch of a signature whose examples are checked in its Session run


class SignatureInfo(NamedTuple):
    """What every request checks of a SignatureDef, read once per loaded version (proto map reads are slow)."""
    method_name: str
    inputs: Dict[str, Tuple[int, Optional[Tuple[int, ...]]]]  # alias -> (dtype, static shape; None: unknown rank)
    outputs: Tuple[str, ...]  # sorted aliases

    @classmethod
    def of(cls, sig: meta_graph_pb2.SignatureDef) -> "SignatureInfo":
        inputs = {a: (t.dtype, None if t.tensor_shape.unknown_rank else tuple(d.size for d in t.tensor_shape.dim))
                  for a, t in sig.inputs.items()}
        return cls(sig.method_name, inputs, tuple(sorted(sig.outputs)))


class Servable:
    """A SavedModel version loaded with tag 'serve'; `run` is thread-safe and optionally batched."""

    def __init__(self, name: str, version: int, path: str, session_config: tf.compat.v1.ConfigProto,
                 batching_parameters=None, on_batch: Optional[Callable[[int], None]] = None):
        self.name, self.version, self.path = name, version, path
        self.version_str = str(version)  # the metrics' label
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
        with self._graph.as_default():
            self.meta_graph: meta_graph_pb2.MetaGraphDef = tf.compat.v1.saved_model.loader.load(
                self._session, [tf.saved_model.SERVING], path)
        self.signatures: Dict[str, meta_graph_pb2.SignatureDef] = dict(self.meta_graph.signature_def)
        self.signature_info = {name: SignatureInfo.of(sig) for name, sig in self.signatures.items()}
        self._callables: Dict[RunKey, Callable] = {}
        self._checks: Dict[str, str] = {}  # signature -> tensor name of its in-graph input check (add_input_check)
        self._lock = threading.Lock()
        for sig_name, sig in self.signatures.items():  # build the run callables before serving
            if sig.inputs and sig.outputs:
                self._callable((sig_name, tuple(sorted(sig.inputs)), tuple(sorted(sig.outputs))))
        self._scheduler: Optional[batching.BatchScheduler] = None
        # Set by the loader once warmed up (warm-up requests are not checked); None: inputs are not checked.
        self.validator: Optional[InputValidator] = None
        if batching_parameters is not None:
            self._scheduler = batching.BatchScheduler(batching_parameters, self._run_direct, f"{name}-{version}",
                                                      on_batch)

    def _callable(self, key: RunKey) -> Callable:
        fn = self._callables.get(key)
        if fn is None:
            sig = self.signatures[key[0]]
            options = config_pb2.CallableOptions(feed=[sig.inputs[a].name for a in key[1]],
                                                 fetch=[self._checks[key[0]] if a == CHECK_OUTPUT else sig.outputs[a].name
                                                        for a in key[2]])
            with self._lock:
                # Session._make_callable_from_options is TF_SessionMakeCallable: a pre-pruned step with no
                # per-call fetch/feed bookkeeping (Session.make_callable with a feed_list redoes it every call).
                fn = self._session._make_callable_from_options(options)  # noqa: SLF001
                self._callables[key] = fn
        return fn

    def _run_direct(self, key: Hashable, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        sig_name, in_aliases, out_aliases = key
        try:  # also building the callable: e.g. __saved_model_init_op's output 'NoOp' is not a tensor
            values = self._callable(key)(*[inputs[a] for a in in_aliases])
        except tf.errors.OpError as e:
            raise ServingError.from_tf(e) from None
        return dict(zip(out_aliases, values))

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            outputs: Sequence[str]) -> Dict[str, np.ndarray]:
        """Check the inputs against the schema's bounds (when validated), feed them (by alias) to the signature, fetch
        the named outputs."""
        validator = self.validator
        if validator is None:
            return self._run_key((signature_name, tuple(sorted(inputs)), tuple(outputs)), inputs)
        validator.check(signature_name, inputs)  # raw-feature arrays
        if signature_name not in self._checks:
            return self._run_key((signature_name, tuple(sorted(inputs)), tuple(outputs)), inputs)
        values = self._run_key((signature_name, tuple(sorted(inputs)), tuple(outputs) + (CHECK_OUTPUT,)), inputs)
        validator.check_flagged(signature_name, inputs, values.pop(CHECK_OUTPUT))
        return values

    def _run_key(self, key: RunKey, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self._scheduler is not None:
            return self._scheduler.run(key, inputs)
        return self._run_direct(key, inputs)

    def add_input_check(self, signature_name: str, aliases: Sequence[str], names: Sequence[str], lo: np.ndarray,
                        hi: np.ndarray, nan_ok: np.ndarray) -> None:
        """Check the serialized tf.Examples of a signature's inputs in the Session run that answers the request
        (after the model's outputs, so the model's own errors come first): whether every value of the features
        `names` is within [lo, hi] (NaN is not, unless nan_ok). One min and one max per feature, compared with the
        bounds as two [k] vectors: 23 graph ops for Iris' 4 features (64 as per-feature chains), ~+13 us per run."""
        sig, shapes = self.signatures[signature_name], self.signature_info[signature_name].inputs
        with self._graph.as_default(), tf.name_scope("input_check"):
            after = [self._graph.get_tensor_by_name(t.name).op for t in sig.outputs.values()]
            with tf.control_dependencies(after):
                inputs = [self._graph.get_tensor_by_name(sig.inputs[a].name) for a in aliases]
                inputs = [x if len(shapes[a][1] or ()) == 1 else tf.reshape(x, [-1]) for a, x in zip(aliases, inputs)]
                examples = inputs[0] if len(inputs) == 1 else tf.concat(inputs, 0)
                parsed = tf.io.parse_example(examples, {n: tf.io.VarLenFeature(tf.float32) for n in names})
            values = [parsed[n].values for n in names]
            values = [tf.where(tf.math.is_nan(v), lo[j], v) if nan_ok[j] else v for j, v in enumerate(values)]
            # min and max propagate NaN (and NaN >= lo is false); of no values they are +inf and -inf: in bounds
            axis = tf.constant(0)  # one for all 2k reductions
            low = tf.stack([tf.reduce_min(v, axis) for v in values])
            high = tf.stack([tf.reduce_max(v, axis) for v in values])
            in_bounds = tf.reduce_all(tf.logical_and(low >= lo, high <= hi))
        self._checks[signature_name] = in_bounds.name

    def unload(self) -> None:
        """Stop batching; the session is closed when the last in-flight request drops its reference."""
        if self._scheduler is not None:
            self._scheduler.close()

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, {self.version}, {self.path!r})"


def session_config(intra_op: int, inter_op: int) -> tf.compat.v1.ConfigProto:
    """Session options for every loaded version. Function inlining turns the SavedModel's (Stateful)PartitionedCall
    ops into plain graph nodes: no per-call function runtime (a 1-example Iris predict: ~64 -> ~46 us)."""
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op, inter_op_parallelism_threads=inter_op,
                                      allow_soft_placement=True)
    config.graph_options.optimizer_options.do_function_inlining = True
    return config
