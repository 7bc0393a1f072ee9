"""One loaded model version: a TensorFlow session over the SavedModel's MetaGraph.

TF Serving runs a signature by feeding and fetching the signature's tensor names in a session
(it does not re-check the static shapes of the fed tensors against the signature). This does
the same through ``Session::Run`` with the request's ``RunOptions`` (its timeout), the graph's
tensors looked up once per signature and input set, so a request costs one C++ call: no
retracing, no Python graph work, and one set of executors per input set, as there.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

import numpy as np

from serving_host import metrics
from serving_host.json_text import message_json
from serving_host.saved_model_loader import (
    check_saved_model_file,
    read_debug_info,
    read_saved_model,
    run_init_op,
    run_restore,
    validate_saved_tensors,
)
from serving_host.status import ServingError, from_exception, invalid_argument
from serving_host.tensors import (
    OpaqueTensor,
    array_dtype,
    array_dtype_name,
    as_array,
    debug_string,
    shape_text,
    string_vector,
)
from serving_host.tf_dtypes import dtype_name

SERVING_DEFAULT = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


class Servable:
    """A loaded version: signatures, a session, and the graph ends of each feed and fetch set
    (a session callable only for names the graph's lookup does not take)."""

    def __init__(self, name: str, version: int, path: str, graph, session, meta_graph):
        self.name = name
        self.version = version
        self.path = path
        self._graph = graph
        self._session = session
        self.signatures = dict(meta_graph.signature_def)
        self._callables: dict[tuple, object] = {}
        self._run_ends: dict[tuple, tuple[list, list]] = {}
        self._dtypes: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self._metadata_json: str | None = None
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    @classmethod
    def load(cls, name: str, version: int, path: str) -> "Servable":
        """Load the SavedModel at ``path`` (tag ``serve``) into its own graph and session."""
        import tensorflow as tf
        from tensorflow.python.framework import meta_graph
        from tensorflow.python.saved_model import loader_impl
        from tensorflow.python.saved_model import utils_impl as saved_model_utils

        tf.get_logger().setLevel(logging.ERROR)  # the v1 loader's deprecation notice is noise here
        check_saved_model_file(path)
        loader = read_saved_model(path)
        # FindMetaGraphDef: the meta graph whose tag set is exactly {serve}, else its NOT_FOUND
        if not any(set(m.meta_info_def.tags) == {"serve"} for m in loader.saved_model.meta_graphs):
            raise ServingError("NOT_FOUND", "Could not find meta graph def matching supplied tags: { serve }. To "
                                            "inspect available tag-sets in the SavedModel, please use the "
                                            "SavedModel CLI: `saved_model_cli`")
        read_debug_info(path)
        meta = loader.get_meta_graph_def_from_tags(["serve"])
        validate_saved_tensors(meta.graph_def)
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        try:
            with graph.as_default():
                # the meta graph imported as the Python loader's load_graph does, without the
                # Saver it builds after (with no saver_def, a default one: new ops in the graph)
                if sys.byteorder == "big":
                    saved_model_utils.swap_function_tensor_content(meta, "little", "big")
                meta_graph.import_scoped_meta_graph_with_return_elements(meta)
                assets = loader_impl.get_asset_tensors(path, meta)    # fed to the restore and the init op
                run_restore(session, meta, path, assets)
                run_init_op(session, meta, path, assets)
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

    def close(self) -> None:
        """Wait for in-flight requests to finish, then free the session. Unbounded, as TF Serving's
        manager waits until the last handle to the old version is released (basic_manager.cc): a
        30 s bound here cancelled a long request under an unload. Handles are taken after the
        body is read, so only the model's own run time is waited for."""
        with self._lock:
            self._idle.wait_for(lambda: self._inflight == 0)
            if self._closed:
                return
            self._closed = True
            self._callables.clear()
        self._session.close()

    # -- signatures ---------------------------------------------------------------------------
    def signature(self, name: str):
        return self.signatures.get(name or SERVING_DEFAULT)

    def _callable(self, feed: tuple[str, ...], fetch: tuple[str, ...]):
        """A session callable for these tensor names, built once: only for names the graph's own
        lookup does not take (``_ends``), where making it is the graph build that gives TF's error."""
        key = (feed, fetch)
        fn = self._callables.get(key)
        if fn is not None:
            return fn
        from tensorflow.core.protobuf import config_pb2

        opts = config_pb2.CallableOptions(feed=list(feed), fetch=list(fetch))
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                fn = self._session._make_callable_from_options(opts)  # noqa: SLF001
                self._callables[key] = fn
        return fn

    def _ends(self, names: tuple[str, ...], fetch: tuple[str, ...]):
        """The graph's TF_Outputs of the feed and fetch names (ParseTensorName: "x" is "x:0"), looked
        up once; None when one is not a tensor of the graph."""
        key = (names, fetch)
        if key not in self._run_ends:
            def output(name: str):
                t = self._graph.get_tensor_by_name(name if re.search(r":[0-9]+$", name) else name + ":0")
                return t._as_tf_output()  # noqa: SLF001 - what Session.run feeds and fetches
            try:
                self._run_ends[key] = ([output(n) for n in names], [output(n) for n in fetch])
            except (KeyError, ValueError):
                self._run_ends[key] = None
        return self._run_ends[key]

    def run_tensors(self, feeds: dict[str, np.ndarray], fetch: tuple[str, ...],
                    timeout_ms: int | None = None) -> list[np.ndarray]:
        """``Session::Run(run_options, ...)`` as TF Serving runs every request: feed and fetch by
        tensor name, ``timeout_ms`` > 0 the run's ``RunOptions.timeout_in_ms`` (cancelled then with
        DEADLINE_EXCEEDED "Timed out waiting for notification"; None or <= 0: no limit). DirectSession
        keeps one set of executors per feed and fetch names whatever the options (a session callable
        is one per timeout: each its own copy of the graph's constants), builds them first (their
        errors come first), then checks the feeds' dtypes (``FunctionCallFrame::SetArgs``: "Expects
        arg[i] to be float but string is provided", i the place among the sorted feeds)."""
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.client import pywrap_tf_session as tf_session

        names = tuple(sorted(feeds))
        try:
            ends = self._ends(names, fetch)
            if ends is None:    # a name the graph lookup does not take: the graph build's own error
                fn = self._callable(names, fetch)
                self._check_dtypes(feeds, names)        # (the callable's own dtype text is Python's)
                self._refuse_opaque(feeds, names)
                return [as_array(v) for v in fn(*[feeds[n] for n in names])]
            if any(isinstance(feeds[n], OpaqueTensor) for n in names):
                self._check_dtypes(feeds, names)        # SetArgs: "... but resource is provided"
                self._refuse_opaque(feeds, names)
            options = tf_session.TF_NewBufferFromString(
                config_pb2.RunOptions(timeout_in_ms=max(timeout_ms or 0, 0)).SerializeToString())
            try:
                values = self._session._call_tf_sessionrun(     # noqa: SLF001 - Session::Run with options
                    options, {end: feeds[n] for end, n in zip(ends[0], names)}, ends[1], [], None)
            finally:
                tf_session.TF_DeleteBuffer(options)
            return [as_array(v) for v in values]
        except BaseException as exc:
            raise from_exception(exc) from None

    def _check_dtypes(self, feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
        """``FunctionCallFrame::SetArgs``'s check, for a run through a session callable."""
        for i, n in enumerate(names):
            want, got = self._dtype(n), array_dtype(feeds[n])
            if want is not None and got != want:
                raise invalid_argument(f"Expects arg[{i}] to be {dtype_name(want)} but {dtype_name(got)} "
                                       f"is provided")

    @staticmethod
    def _refuse_opaque(feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
        """A resource or variant feed of a graph tensor of that dtype: TF Serving feeds it; numpy
        cannot carry it to the session here."""
        for n in names:
            if isinstance(feeds[n], OpaqueTensor):
                raise ServingError("UNIMPLEMENTED", f"Feeding {n} a {dtype_name(feeds[n].tf_dtype)} tensor: the "
                                                    f"local server cannot pass one to the model (TF Serving does)")

    def tensor_dtype(self, tensor_name: str) -> int | None:
        """The graph's DataType enum of ``tensor_name`` (None if it is not in the graph)."""
        return self._dtype(tensor_name)

    def _dtype(self, tensor_name: str) -> int | None:
        """The graph's DataType enum of ``tensor_name`` (None: not in the graph, TF says so)."""
        dtypes = self._dtypes
        if tensor_name not in dtypes:
            # ParseTensorName: a name without ":<index>" is output 0 of its op ("x" feeds "x:0")
            name = tensor_name if re.search(r":[0-9]+$", tensor_name) else tensor_name + ":0"
            try:
                dtypes[tensor_name] = self._graph.get_tensor_by_name(name).dtype.as_datatype_enum
            except (KeyError, ValueError):
                dtypes[tensor_name] = None
        return dtypes[tensor_name]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray],
            output_aliases: tuple[str, ...] | None = None, timeout_ms: int | None = None) -> dict[str, np.ndarray]:
        """Run a signature: feed tensors by input alias, return outputs by output alias."""
        sig = self.signatures[signature_name]
        out_aliases = tuple(sorted(sig.outputs)) if output_aliases is None else output_aliases
        names = sorted(sig.inputs[a].name for a in inputs)
        fed_twice = next((n for m, n in zip(names, names[1:]) if m == n), None)
        if fed_twice is not None and out_aliases:   # two aliases, one tensor: the graph build refuses it
            raise invalid_argument(f'Endpoint "{fed_twice}" fed more than once.')     # (subgraph.cc)
        values = self.run_tensors({sig.inputs[a].name: v for a, v in inputs.items()},
                                  tuple(sig.outputs[a].name for a in out_aliases), timeout_ms)
        return dict(zip(out_aliases, values))

    # -- predict / classify / regress: the one inference core of REST, gRPC and warmup -------
    # Messages and checks of TF Serving's predict_util.cc, classifier.cc, regressor.cc and
    # multi_inference.cc, with the signature method_name check on (see serving_host/README.md).
    def predict(self, signature_name: str, inputs: dict[str, np.ndarray],
                output_filter: tuple[str, ...] | list[str] = (), *,
                model_name: str | None = None, timeout_ms: int | None = None) -> dict[str, np.ndarray]:
        """``RunPredict``: outputs by alias, in ``output_filter`` order (all outputs if empty);
        ``timeout_ms``: the run's ``RunOptions.timeout_in_ms`` (a gRPC call's deadline)."""
        name = signature_name or SERVING_DEFAULT
        sig = self.signatures.get(name)
        if sig is None:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        if sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError("INTERNAL",
                               f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                               f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {sig.method_name}")
        expected = set(sig.inputs)
        defaults = sig.defaults if hasattr(sig, "defaults") else {}
        if len(inputs) > len(expected) or (len(inputs) < len(expected) and not defaults):
            sent_extra = sorted(set(inputs) - expected)
            missing = sorted(expected - set(inputs))
            raise invalid_argument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sent_extra)}}}. Missing but required: {{{','.join(missing)}}}.")
        feeds = self._input_values(sig, inputs, defaults)
        aliases: list[str] = []          # PreProcessPrediction: outputs after inputs, before the run
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs "
                                       f"expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
            if alias in aliases:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            aliases.append(alias)
        start = time.monotonic()    # run_tensors: the session run's dtype check (SetArgs), by tensor name
        out = self.run(name, feeds, tuple(aliases) or None, timeout_ms)
        metrics.record_runtime(self.name if model_name is None else model_name, "Predict",
                               time.monotonic() - start)
        return out

    @staticmethod
    def _input_values(sig, inputs, defaults) -> dict[str, np.ndarray]:
        """TensorFlow's ``saved_model::GetInputValues``: each signature input from the request or
        the signature's default, parsed as it is reached; then every request input must have been
        used. (Its map order is unspecified; ours is sorted.)"""
        from serving_host.apis import tensor_from_proto

        feeds, seen = {}, set()
        for alias in sorted(sig.inputs):
            if alias in inputs:
                feeds[alias] = inputs[alias]
                seen.add(alias)
            elif alias in defaults:
                feeds[alias] = tensor_from_proto(alias, defaults[alias])
            else:
                raise invalid_argument(
                    f"Signature input alias: {alias}(feed name: {sig.inputs[alias].name}) not found in request "
                    f"and no default value provided. Inputs expected to be in the request "
                    f"{{{','.join(sorted(inputs))}}}, or default input alias set: {','.join(sorted(defaults))}")
        if inputs and len(seen) != len(inputs):
            raise invalid_argument(f"Inputs contains invalid name. Used request inputs: {','.join(sorted(seen))}, "
                                   f"request input: {','.join(sorted(inputs))}")
        return feeds

    def _signature_for(self, signature_name: str, method: str, kind: str):
        """``GetClassificationSignatureDef`` / ``GetRegressionSignatureDef``."""
        name = signature_name or SERVING_DEFAULT
        sig = self.signatures.get(name)
        if sig is None:
            raise invalid_argument(f"No signature was found with the name: {name}")
        if sig.method_name != method:
            raise invalid_argument(f"Expected {kind} signature method_name to be {method}. "
                                   f"Was: {sig.method_name}")
        return name, sig

    @staticmethod
    def _examples_input(sig, method: str, kind: str, outputs: tuple[int, ...], outputs_error: str) -> str:
        """The checks ``PreProcessClassification`` and ``PreProcessRegression`` share -> the input
        tensor name (``outputs``: the allowed output counts; ``outputs_error``: ``{n}`` the count)."""
        if sig.method_name != method:
            raise invalid_argument(f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(sig.outputs) not in outputs:
            raise invalid_argument(outputs_error.format(n=len(sig.outputs)))
        if "inputs" not in sig.inputs:
            raise invalid_argument(f"No {kind} inputs found in SignatureDef: {debug_string(sig)}")
        return sig.inputs["inputs"].name

    @staticmethod
    def _classify_tensors(sig) -> tuple[str, tuple[str, ...]]:
        """``PreProcessClassification`` -> (input tensor name, output tensor names)."""
        in_name = Servable._examples_input(sig, CLASSIFY_METHOD, "classification", (1, 2),
                                           "Expected one or two output Tensors, found {n}")
        outs = tuple(sig.outputs[a].name for a in ("classes", "scores") if a in sig.outputs)
        if not outs:
            raise invalid_argument('Expected classification signature outputs to contain at least one '
                                   f'of "classes" or "scores". Signature was: {debug_string(sig)}')
        return in_name, outs

    @staticmethod
    def _classify_result(sig, n: int, names: tuple[str, ...], values: list[np.ndarray]):
        """``PostProcessClassificationResult`` -> one list of (label, score) per example, each label
        the class tensor's bytes, UTF-8 or not (``set_label`` copies them; proto3's check on a string
        field only logs when C++ serializes it, and rapidjson's writer does not check either)."""
        by_name = dict(zip(names, values))
        classes = by_name.get(sig.outputs["classes"].name) if "classes" in sig.outputs else None
        scores = by_name.get(sig.outputs["scores"].name) if "scores" in sig.outputs else None
        for what, t, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
            if t is None:
                continue
            if t.ndim != 2:
                raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                       f"{shape_text(t.shape)}")
            got = array_dtype_name(t)
            if got != dtype:
                raise invalid_argument(f"Expected {what} Tensor of {dtype}. Got: {got}")
            if t.shape[0] != n:
                raise invalid_argument(f"Expected {what} output batch size of {n}. Got: {t.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got "
                                   f"{classes.shape[1]} vs. {scores.shape[1]}")
        k = (classes if classes is not None else scores).shape[1]
        out = []
        for i in range(n):
            row = []
            for j in range(k):
                label = classes[i, j] if classes is not None else b""    # set_label: the raw bytes
                label_b = bytes(label) if isinstance(label, (bytes, np.bytes_)) else str(label).encode()
                row.append((label_b, float(scores[i, j]) if scores is not None else 0.0))
            out.append(row)
        return out

    @staticmethod
    def _regress_tensors(sig) -> tuple[str, tuple[str, ...]]:
        """``PreProcessRegression`` -> (input tensor name, output tensor names)."""
        in_name = Servable._examples_input(sig, REGRESS_METHOD, "regression", (1,), "Expected one output Tensor.")
        if "outputs" not in sig.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {debug_string(sig)}")
        return in_name, (sig.outputs["outputs"].name,)

    @staticmethod
    def _regress_result(sig, n: int, names: tuple[str, ...], values: list[np.ndarray]) -> list[float]:
        """``PostProcessRegressionResult``."""
        name = sig.outputs["outputs"].name
        t = dict(zip(names, values)).get(name)
        if t is None:
            raise invalid_argument(f"Could not find output tensor '{name}'")
        if not (t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1)):
            raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                                   f"[batch_size, 1] but got {shape_text(t.shape)}")
        if t.shape[0] != n:
            raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {t.shape[0]}")
        if array_dtype_name(t) != "DT_FLOAT":
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {array_dtype_name(t)}")
        return [float(x) for x in t.reshape(-1)]

    def _examples(self, input_name: str, fetch: tuple[str, ...], examples: list[bytes],
                  timeout_ms: int | None = None):
        if not examples:
            raise invalid_argument("Input is empty.")
        return self.run_tensors({input_name: string_vector(examples)}, fetch, timeout_ms)

    def classify(self, signature_name: str, serialized_examples: list[bytes], *,
                 model_name: str | None = None, timeout_ms: int | None = None):
        """``RunClassify`` -> one list of (label, score) per example, like ClassificationResult."""
        return self._run_examples(CLASSIFY_METHOD, signature_name, serialized_examples, model_name, timeout_ms)

    def regress(self, signature_name: str, serialized_examples: list[bytes], *,
                model_name: str | None = None, timeout_ms: int | None = None) -> list[float]:
        """``RunRegress`` -> one value per example."""
        return self._run_examples(REGRESS_METHOD, signature_name, serialized_examples, model_name, timeout_ms)

    def _run_examples(self, method: str, signature_name: str, examples: list[bytes], model_name: str | None,
                      timeout_ms: int | None = None):
        """``RunClassify`` / ``RunRegress``: the signature's checks, one session run, the result's checks."""
        classify = method == CLASSIFY_METHOD
        _, sig = self._signature_for(signature_name, method, "classification" if classify else "regression")
        in_name, outs = (self._classify_tensors if classify else self._regress_tensors)(sig)
        start = time.monotonic()
        values = self._examples(in_name, outs, examples, timeout_ms)
        metrics.record_runtime(self.name if model_name is None else model_name,
                               "Classify" if classify else "Regress", time.monotonic() - start)
        return (self._classify_result if classify else self._regress_result)(sig, len(examples), outs, values)

    def multi_inference(self, tasks: list[tuple[str, str, str]], serialized_examples: list[bytes], *,
                        timeout_ms: int | None = None):
        """``TensorFlowMultiInferenceRunner::Infer``: tasks are (model name, signature name, method
        name), each checked in turn as Infer checks it (its model name, then its signature and
        method); one session run for all -> [(method, result rows)]."""
        model_name, seen, inputs, fetch = "", set(), set(), []
        for task_model, sig_name, method in tasks:
            if not task_model:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = task_model
            elif model_name != task_model:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same "
                                       "model name.")
            name = sig_name or SERVING_DEFAULT
            if name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            sig = self.signatures.get(name)
            if sig is None:
                raise invalid_argument(f"Requested signature not found in model graph: {name}")
            if method == CLASSIFY_METHOD:
                in_name, outs = self._classify_tensors(sig)
            elif method == REGRESS_METHOD:
                in_name, outs = self._regress_tensors(sig)
            else:
                raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {method}")
            inputs.add(in_name)
            fetch += [o for o in outs if o not in fetch]
        fetch_t = tuple(sorted(fetch))
        if not serialized_examples:
            raise invalid_argument("Input is empty.")
        batch = string_vector(serialized_examples)
        values = self.run_tensors({n: batch for n in inputs}, fetch_t, timeout_ms)
        n = len(serialized_examples)
        metrics.record_examples(model_name, n)
        results = []
        for _, sig_name, method in tasks:
            sig = self.signatures[sig_name or SERVING_DEFAULT]
            post = self._classify_result if method == CLASSIFY_METHOD else self._regress_result
            results.append((method, post(sig, n, fetch_t, values)))
        return results

    # -- metadata -----------------------------------------------------------------------------
    def metadata_json(self) -> str:
        """``GET .../metadata``: built like TF Serving's ToJsonString(GetModelMetadataResponse)."""
        if self._metadata_json is None:
            from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

            spec = model_pb2.ModelSpec(name=self.name)
            spec.version.value = self.version
            sigmap = get_model_metadata_pb2.SignatureDefMap()
            for k, v in self.signatures.items():
                sigmap.signature_def[k].CopyFrom(v)
            opts = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                        indent=1)
            spec_json = message_json(spec, **opts)
            sig_json = message_json(sigmap, **opts)
            text = ("{\n\"model_spec\":" + spec_json + ",\n\"metadata\": {\"signature_def\": "
                    + sig_json + "}\n}\n")
            json.loads(text)  # a bug here must not reach clients as broken JSON
            self._metadata_json = text
        return self._metadata_json
