"""One loaded model version: a TensorFlow session over the SavedModel's MetaGraph.

TF Serving runs a signature by feeding and fetching the signature's tensor names in a session
(it does not re-check the static shapes of the fed tensors against the signature). This does
the same through a session callable built once per signature and input set, so a request costs
one C++ call: no retracing, no Python graph work.
"""
from __future__ import annotations

import json
import logging
import threading

import numpy as np

from serving_host.status import ServingError, from_exception, invalid_argument

SERVING_DEFAULT = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def numpy_dtype(dt: int):
    """numpy dtype for a ``tensorflow.DataType`` enum value (DT_STRING -> object of bytes)."""
    import tensorflow as tf

    tf_dtype = tf.dtypes.as_dtype(dt)
    if tf_dtype == tf.string:
        return np.dtype(object)
    return np.dtype(tf_dtype.as_numpy_dtype)


def dtype_name(dt: int) -> str:
    """``DataTypeString``: DT_FLOAT -> "float", DT_INT64 -> "int64", DT_STRING -> "string"."""
    import tensorflow as tf

    return tf.dtypes.as_dtype(dt).name


class Servable:
    """A loaded version: signatures, a session, and a cache of session callables."""

    def __init__(self, name: str, version: int, path: str, graph, session, meta_graph):
        self.name = name
        self.version = version
        self.path = path
        self._graph = graph
        self._session = session
        self.signatures = dict(meta_graph.signature_def)
        self._callables: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._metadata_json: str | None = None
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    @classmethod
    def load(cls, name: str, version: int, path: str) -> "Servable":
        """Load the SavedModel at ``path`` (tag ``serve``) into its own graph and session."""
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)  # the v1 loader's deprecation notice is noise here
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        try:
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        except BaseException as exc:
            session.close()
            raise from_exception(exc) from None
        return cls(name, version, path, graph, session, meta)

    # -- lifetime -----------------------------------------------------------------------------
    def acquire(self) -> None:
        with self._lock:
            self._inflight += 1

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for in-flight requests to finish, then free the session."""
        with self._lock:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)
            if self._closed:
                return
            self._closed = True
            self._callables.clear()
        self._session.close()

    # -- signatures ---------------------------------------------------------------------------
    def signature(self, name: str):
        return self.signatures.get(name or SERVING_DEFAULT)

    def _callable(self, signature_name: str, input_aliases: tuple[str, ...],
                  output_aliases: tuple[str, ...]):
        key = (signature_name, input_aliases, output_aliases)
        fn = self._callables.get(key)
        if fn is not None:
            return fn
        from tensorflow.core.protobuf import config_pb2

        sig = self.signatures[signature_name]
        opts = config_pb2.CallableOptions(
            feed=[sig.inputs[a].name for a in input_aliases],
            fetch=[sig.outputs[a].name for a in output_aliases])
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                fn = self._session._make_callable_from_options(opts)  # noqa: SLF001 (TF's fast path)
                self._callables[key] = fn
        return fn

    def run(self, signature_name: str, inputs: dict[str, np.ndarray],
            output_aliases: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Run a signature: feed tensors by input alias, return outputs by output alias."""
        sig = self.signatures[signature_name]
        in_aliases = tuple(sorted(inputs))
        out_aliases = tuple(sorted(sig.outputs)) if output_aliases is None else output_aliases
        fn = self._callable(signature_name, in_aliases, out_aliases)
        try:
            values = fn(*[inputs[a] for a in in_aliases])
        except BaseException as exc:
            raise from_exception(exc) from None
        return dict(zip(out_aliases, values))

    # -- predict / classify / regress (TF Serving's predict_util, classifier, regressor) -----
    def predict(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = signature_name or SERVING_DEFAULT
        sig = self.signatures.get(name)
        if sig is None:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        if sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise invalid_argument(
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {sig.method_name}")
        expected = set(sig.inputs)
        if set(inputs) != expected:
            sent_extra = sorted(set(inputs) - expected)
            missing = sorted(expected - set(inputs))
            raise invalid_argument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sent_extra)}}}. Missing but required: {{{','.join(missing)}}}.")
        return self.run(name, inputs)

    def _examples_signature(self, signature_name: str, method: str, kind: str):
        name = signature_name or SERVING_DEFAULT
        sig = self.signatures.get(name)
        if sig is None:
            raise invalid_argument(f"No signature was found with name: {name}")
        if sig.method_name != method:
            raise invalid_argument(f"Expected {kind} signature method_name to be {method}. "
                                   f"Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        return name, sig

    def classify(self, signature_name: str, serialized_examples: list[bytes]):
        """-> one list of (label, score) per example, like ClassificationResult."""
        name, sig = self._examples_signature(signature_name, CLASSIFY_METHOD, "classification")
        if len(sig.outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
        outs = tuple(a for a in ("classes", "scores") if a in sig.outputs)
        if not outs:
            raise invalid_argument("Expected classification signature outputs to contain at least "
                                   "one of classes or scores")
        n = len(serialized_examples)
        (in_alias,) = tuple(sig.inputs)
        feed = {in_alias: np.array(serialized_examples, dtype=object)}
        result = self.run(name, feed, outs)
        classes, scores = result.get("classes"), result.get("scores")
        for t in (classes, scores):
            if t is None:
                continue
            if t.ndim != 2:
                raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                       f"{list(t.shape)}")
            if t.shape[0] != n:
                raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. "
                                       f"{t.shape[0]}")
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise invalid_argument(f"Tensors class and score should match in shape. "
                                   f"Class shape: {list(classes.shape)} Score shape: {list(scores.shape)}")
        k = (classes if classes is not None else scores).shape[1]
        out = []
        for i in range(n):
            row = []
            for j in range(k):
                label_b = classes[i, j] if classes is not None else b""
                label_s = label_b.decode("utf-8", "replace") if isinstance(label_b, bytes) else str(label_b)
                score = float(scores[i, j]) if scores is not None else 0.0
                row.append((label_s, score))
            out.append(row)
        return out

    def regress(self, signature_name: str, serialized_examples: list[bytes]) -> list[float]:
        name, sig = self._examples_signature(signature_name, REGRESS_METHOD, "regression")
        if len(sig.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        (out_alias,) = tuple(sig.outputs)
        (in_alias,) = tuple(sig.inputs)
        n = len(serialized_examples)
        t = self.run(name, {in_alias: np.array(serialized_examples, dtype=object)}, (out_alias,))[out_alias]
        if not (t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1)):
            raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                                   f"[batch_size, 1] but got {list(t.shape)}")
        if t.shape[0] != n:
            raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {t.shape[0]}")
        return [float(x) for x in t.reshape(-1)]

    # -- metadata -----------------------------------------------------------------------------
    def metadata_json(self) -> str:
        """``GET .../metadata``: built like TF Serving's ToJsonString(GetModelMetadataResponse)."""
        if self._metadata_json is None:
            from google.protobuf import json_format
            from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

            spec = model_pb2.ModelSpec(name=self.name)
            spec.version.value = self.version
            sigmap = get_model_metadata_pb2.SignatureDefMap()
            for k, v in self.signatures.items():
                sigmap.signature_def[k].CopyFrom(v)
            opts = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                        indent=1)
            spec_json = json_format.MessageToJson(spec, **opts)
            sig_json = json_format.MessageToJson(sigmap, **opts)
            text = ("{\n\"model_spec\":" + spec_json + ",\n\"metadata\": {\"signature_def\": "
                    + sig_json + "}\n}\n")
            json.loads(text)  # a bug here must not reach clients as broken JSON
            self._metadata_json = text
        return self._metadata_json
