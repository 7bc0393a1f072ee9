"""The TF-Serving side of a run: SavedModel export, normalized signature, golden smoke set.

The golden set's expected outputs are computed by the exported SavedModel itself (loaded with
``tf.saved_model.load``), so a deploy can check that the served outputs match what this run
produced - not merely that the server answered.

The SavedModel also carries ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of
``PredictionLog``, built from the golden request): TF Serving replays it on every load before the
version is AVAILABLE, so each copy (validation entry, main entry) answers its first live request
warm. It is part of the version directory (manifest, publish) like any other file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlops_common import stop
from registry import artifacts

SIGNATURE = "serving_default"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000        # TF Serving refuses to load a version whose file has more


def export_saved_model(model, dest: Path) -> Path:
    """Write ``model`` as a TF-Serving SavedModel (Keras ``model.export``) into ``dest``. A signal
    meanwhile is raised once it is written, not inside TensorFlow's C++ (``mlops_common.stop``)."""
    with stop.deferred():
        model.export(str(dest), format="tf_saved_model", verbose=False)
    return dest


def signature_defs(saved_model_dir: Path) -> dict:
    """The SavedModel's signature defs in the JSON form TF Serving's ``/metadata`` uses."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    graph = next(g for g in sm.meta_graphs if "serve" in g.meta_info_def.tags)
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for name, sig in graph.signature_def.items()}


def normalize_signature(defs: dict, names: tuple[str, ...] = (SIGNATURE,)) -> dict:
    """A SavedModel's signature defs -> the normalized form of docs/architecture.md."""
    from registry.signature import normalize_signature_defs

    return normalize_signature_defs(defs, names)


def _json_floats(a: np.ndarray) -> list:
    """float32 values as the shortest decimal that reads back to the same float32."""
    if a.ndim == 0:
        return float(str(np.float32(a)))
    return [_json_floats(x) for x in a]


def _json_values(a) -> list | float | int | bool:
    """An output's values as TF Serving writes them (``json_tensor.cc``): float32 (and narrower) as
    the shortest text of each float32, float64 as the double itself, integers and booleans as they
    are. All cast to float32, an int64 past 2**24 changed (16777217 recorded as 16777216.0), a
    double lost its digits past float32's and a boolean became 1.0, which TF Serving's ``true``
    never equals: the smoke test failed the version answering them."""
    a = np.asarray(a)
    if a.dtype.kind in "iub" or a.dtype == np.float64:
        return a.tolist()
    return _json_floats(np.asarray(a, np.float32))


def predict_request(images: np.ndarray) -> dict:
    """TF Serving REST predict body in row format for ``images`` (N, H, W, 1)."""
    return {"signature_name": SIGNATURE, "instances": _json_floats(np.asarray(images, np.float32))}


def predict_response(outputs: dict[str, np.ndarray]) -> dict:
    """TF Serving's row-format answer: one output -> rows of values; several -> rows of dicts."""
    if len(outputs) == 1:
        (values,) = outputs.values()
        return {"predictions": _json_values(values)}
    names = sorted(outputs)
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: _json_values(outputs[k][i]) for k in names}
                            for i in range(n)]}


def run_saved_model(saved_model_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the SavedModel's ``serving_default`` for ``images`` (as TF Serving computes them)."""
    from .model import tf_quiet

    tf = tf_quiet()
    with stop.deferred():       # a signal: raised after TensorFlow's C++, not inside it
        fn = tf.saved_model.load(str(saved_model_dir)).signatures[SIGNATURE]
        (input_name,) = fn.structured_input_signature[1].keys()
        result = fn(**{input_name: tf.constant(np.asarray(images, np.float32))})
        return {k: v.numpy() for k, v in result.items()}


def golden_set(saved_model_dir: Path, images: np.ndarray) -> dict[str, dict]:
    """``{"request.json": ..., "response.json": ..., "signature.json": ...}`` for ``images``.

    The request carries the same float32 values the response was computed from.
    """
    request = predict_request(images)
    sent = np.asarray(request["instances"], dtype=np.float32)
    return {
        artifacts.golden_file("request"): request,
        artifacts.golden_file("response"): predict_response(run_saved_model(saved_model_dir, sent)),
        artifacts.golden_file("signature"): normalize_signature(signature_defs(saved_model_dir)),
    }


def warmup_logs(request: dict, input_name: str, *, max_records: int = MAX_WARMUP_RECORDS) -> list[bytes]:
    """Serialized ``PredictionLog`` records for a golden REST ``request`` (row format).

    One record per request shape a version will see first: the whole batch (what the smoke
    test sends) and its first instance alone (the shape most live requests have). TF Serving
    runs every record in full at every load, so a record that repeats a shape only makes each
    load slower (for a large model, one inference more per copy). Values are the request's
    float32 values, so warmup runs exactly what the smoke test will send. At most
    ``max_records`` (TF Serving refuses a file with more than 1000).
    """
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    batch = np.asarray(request["instances"], dtype=np.float32)
    sig = request.get("signature_name", SIGNATURE)

    def log(values: np.ndarray) -> bytes:
        req = predict_pb2.PredictRequest()
        req.model_spec.signature_name = sig
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_content=np.ascontiguousarray(values, "<f4").tobytes(),
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in values.shape]))
        req.inputs[input_name].CopyFrom(tensor)
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString()

    shapes = [batch] + ([batch[:1]] if len(batch) > 1 else [])
    return [log(values) for values in shapes][:max_records]


def write_warmup_requests(saved_model_dir: Path, request: dict) -> Path:
    """Write ``assets.extra/tf_serving_warmup_requests`` into the SavedModel from ``request``."""
    import tensorflow as tf

    (input_name,) = signature_defs(saved_model_dir)[request.get("signature_name", SIGNATURE)]["inputs"]
    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in warmup_logs(request, input_name):
            writer.write(record)
    return path
