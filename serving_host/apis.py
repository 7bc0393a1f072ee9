"""TF Serving's request and response protos (``tensorflow_serving.apis``) over the servable core.

One place turns a ``PredictRequest`` / ``ClassificationRequest`` / ``RegressionRequest`` /
``MultiInferenceRequest`` into a call of ``Servable`` (the same core the REST API uses) and the
result into the response proto, filled in as TF Serving fills it (``MakeModelSpec``: the request's
model name, the signature name with ``serving_default`` for an empty one, the version that served).
The gRPC PredictionService and the warmup replay both call these, so a warmup record runs exactly
what a request would. Tensors leave as typed fields (``float_val``, ...), as TF Serving's default
``AsProtoField`` writes them.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serving_host.servable import SERVING_DEFAULT, Servable
from serving_host.status import invalid_argument
from serving_host.tensors import opaque_tensor, shape_text, string_vector
from serving_host.tf_dtypes import INT64_MAX

# TensorProto field for each DataType (tensorflow/core/framework/types.proto numbers).
_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
           7: "string_val", 9: "int64_val", 10: "bool_val", 17: "int_val", 22: "uint32_val",
           23: "uint64_val"}
# DT_HALF and DT_BFLOAT16: ``half_val`` holds each value's 16 bits (ProtoHelper<Eigen::half>::Fill)
_HALF_FIELDS = {19: "half_val", 14: "half_val"}
# Read only (FromProtoField): quantized types in ``int_val``; complex64/128 as (real, imaginary)
# pairs, so a field holds two numbers an element
_QUANTIZED_FIELDS = {11: "int_val", 12: "int_val", 13: "int_val", 15: "int_val", 16: "int_val"}
_COMPLEX_FIELDS = {8: "scomplex_val", 18: "dcomplex_val"}
# int4, uint4, int2, uint2: one element an ``int_val`` (ProtoHelper<int4> ..., Int4FromProtoField:
# the first n used, each cut to its bits as TensorFlow's own reading cuts it)
_SUB_BYTE_INT_FIELDS = {29: "int_val", 30: "int_val", 31: "int_val", 32: "int_val"}
# Elements narrower than their field's int32: FromProtoField's C++ cast wraps (300 as uint8 is 44)
_NARROW = {4: np.uint8, 5: np.int16, 6: np.int8, 17: np.uint16, 11: np.int8, 12: np.uint8, 15: np.int16,
           16: np.uint16, 19: np.uint16, 14: np.uint16}
# float8_e5m2, float8_e4m3fn, float8_e4m3fnuz, float8_e4m3b11fnuz, float8_e5m2fnuz and
# float4_e2m1fn: ``float8_val`` holds one byte an element (Float8ProtoHelper), read and written as
# the other typed fields are
_FLOAT8 = (24, 25, 26, 27, 28, 33)
_OPAQUE = (20, 21)      # DT_RESOURCE, DT_VARIANT: TensorFlow makes them, numpy cannot hold them
MAX_DIMS = 254          # TensorShape::MaxDimensions(): more makes no tensor (TensorShape::IsValid)
NUMPY_MAX_RANK = 64     # numpy's limit: a tensor of rank 65 .. 254 cannot be fed here


def _decode_string_list(content: bytes, n: int) -> list[bytes] | None:
    """``port::DecodeStringList``: n lengths as varint32 (``GetVarint32``: at most 5 bytes), then
    the strings' bytes, which must be exactly the rest; None if they are not."""
    sizes, pos = [], 0
    for _ in range(n):
        value = 0
        for shift in range(0, 35, 7):
            if pos >= len(content):
                return None
            byte = content[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
        else:
            return None
        sizes.append(value & 0xFFFFFFFF)
    if sum(sizes) != len(content) - pos:
        return None
    out = []
    for size in sizes:
        out.append(content[pos:pos + size])
        pos += size
    return out


def _check_numpy_holds(alias: str, dims: list[int], dtype: int) -> None:
    """An empty tensor TensorFlow makes whatever its other sizes (up to int64 each) but numpy does
    not: its sizes other than 0, times the element's bytes, must fit an int64. Refused as this
    server's own limit, not as a tensor that does not parse."""
    import tensorflow as tf

    try:
        np_dtype = object if dtype in (7,) + _OPAQUE else tf.dtypes.as_dtype(dtype).as_numpy_dtype
    except (TypeError, KeyError):   # no such DataType, or one numpy has no form for (a resource or
        return                      # variant reference): FromProto refuses it, as tensor_from_proto does
    try:
        np.empty(dims, np_dtype)    # no memory: it holds no element
    except ValueError:
        raise invalid_argument(f"Tensor {alias} of shape {shape_text(dims)}: an empty tensor larger in its other "
                               f"dimensions than the local server supports (numpy's limit; TF Serving takes "
                               f"it)") from None


def tensor_from_proto(alias: str, proto) -> np.ndarray:
    """``Tensor::FromProto``; a proto that does not make a tensor is INVALID_ARGUMENT. Its shape is a
    ``TensorShape``'s, which ignores ``unknown_rank`` and refuses a size < 0 or over 254 dimensions."""
    import tensorflow as tf

    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims) or len(dims) > MAX_DIMS or proto.dtype == 0:
        raise invalid_argument(f"tensor parsing error: {alias}")
    if len(dims) > NUMPY_MAX_RANK:      # TF Serving makes this tensor and runs the model on it
        raise invalid_argument(f"Tensor {alias} of rank {len(dims)}: more than the {NUMPY_MAX_RANK} dimensions "
                               f"the local server supports (TF Serving takes up to {MAX_DIMS})")
    n = 1
    for d in dims:      # TensorShape::IsValid: the running product may not pass int64 (0 stays 0)
        n *= d
        if n > INT64_MAX:
            raise invalid_argument(f"tensor parsing error: {alias}")
    if n == 0:
        _check_numpy_holds(alias, dims, proto.dtype)
    if proto.dtype in _OPAQUE:
        # Tensor::FromProto decodes each handle or variant (TensorFlow's own ParseTensor, which
        # calls it, is the judge); the run then refuses it as a feed of another dtype, as there
        try:
            tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(proto.dtype))
        except Exception:  # noqa: BLE001 - a proto FromProto does not take is the client's error
            raise invalid_argument(f"tensor parsing error: {alias}") from None
        return opaque_tensor(dims, proto.dtype)
    field = (_FIELDS.get(proto.dtype) or _HALF_FIELDS.get(proto.dtype) or _QUANTIZED_FIELDS.get(proto.dtype)
             or _COMPLEX_FIELDS.get(proto.dtype) or _SUB_BYTE_INT_FIELDS.get(proto.dtype))
    per = 2 if proto.dtype in _COMPLEX_FIELDS else 1
    if n == 0 and proto.tensor_content:     # FromProto decodes values only when N > 0: never read
        emptied = type(proto)()
        emptied.CopyFrom(proto)
        emptied.ClearField("tensor_content")
        proto = emptied
    if proto.dtype == 7 and proto.tensor_content and n > 0:     # Helper<tstring>::Decode
        items = _decode_string_list(proto.tensor_content, n)
        if items is None:
            raise invalid_argument(f"tensor parsing error: {alias}")
        return string_vector(items).reshape(dims)
    if proto.dtype == 10 and proto.tensor_content.translate(None, b"\x00\x01"):
        # a bool's byte other than 0 or 1 makes no tensor (FromProto refuses it; numpy would
        # feed the byte as it is, a bool the model reads as true)
        raise invalid_argument(f"tensor parsing error: {alias}")
    if proto.dtype in _FLOAT8 and not proto.tensor_content:
        # FromProtoField<float8_*>: the first n bytes of float8_val, the last repeated when there
        # are fewer, zeros when there are none (numpy's own reading knows only two of the five)
        raw = proto.float8_val
        try:    # a buffer that cannot be had: FromProto's allocation fails, so no tensor
            data = raw[:n] if len(raw) >= n else (raw + raw[-1:] * (n - len(raw)) if raw else bytes(n))
            return np.frombuffer(data, dtype=tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype).reshape(dims).copy()
        except (MemoryError, OverflowError, ValueError):
            raise invalid_argument(f"tensor parsing error: {alias}") from None
    if field is not None and not proto.tensor_content:
        # FromProtoField copies the first n elements and ignores the rest (tensor.cc); a complex
        # field's odd last number is no element
        have = len(getattr(proto, field))
        keep = min(have, n * per) // per * per
        values = getattr(proto, field)
        wrapped = None
        if proto.dtype in _NARROW and have:
            given = np.array(values[:keep], np.int32)
            cast = given.astype(_NARROW[proto.dtype])
            if (cast != given).any():
                wrapped = cast.astype(np.int32).tolist()
        if keep < have or wrapped is not None:
            trimmed = type(proto)()
            trimmed.CopyFrom(proto)
            del getattr(trimmed, field)[:]
            getattr(trimmed, field).extend(values[:keep] if wrapped is None else wrapped)
            proto = trimmed
    try:
        arr = tf.make_ndarray(proto)
    except Exception:  # noqa: BLE001 - any malformed TensorProto is the client's error
        raise invalid_argument(f"tensor parsing error: {alias}") from None
    if list(arr.shape) != dims:
        raise invalid_argument(f"tensor parsing error: {alias}")
    return arr


def tensor_to_proto(arr: np.ndarray, dtype: int | None = None):
    """``Tensor::AsProtoField``: dtype, shape and the typed value field. ``dtype``: the graph
    tensor's DataType, for a quantized one (the session hands qint8 ... back as plain integers)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    arr = np.asarray(arr)
    proto = tensor_pb2.TensorProto()
    dt = tf.string if arr.dtype == object or arr.dtype.kind in ("S", "U") else tf.dtypes.as_dtype(arr.dtype)
    proto.dtype = dtype if dtype in _QUANTIZED_FIELDS else dt.as_datatype_enum
    proto.tensor_shape.SetInParent()     # mutable_tensor_shape(): present, empty for a scalar
    for d in arr.shape:
        proto.tensor_shape.dim.add().size = int(d)
    field = _FIELDS.get(proto.dtype)
    if proto.dtype in _QUANTIZED_FIELDS:     # ProtoHelper<qint8 ...>::Fill: the integers in int_val
        plain = arr[arr.dtype.names[0]] if arr.dtype.names else arr
        proto.int_val.extend(plain.reshape(-1).tolist())
        return proto
    if proto.dtype in _HALF_FIELDS:
        proto.half_val.extend(np.ascontiguousarray(arr).reshape(-1).view(np.uint16).tolist())
        return proto
    if proto.dtype in _FLOAT8:     # ProtoHelper<float8_*>::Fill: each element's byte in float8_val
        proto.float8_val = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).tobytes()
        return proto
    if field is None:  # complex, ...: TensorFlow's own conversion
        return tf.make_tensor_proto(arr)
    flat = arr.reshape(-1)
    if field == "string_val":
        getattr(proto, field).extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto


class _Tensors(Mapping):
    """A request's TensorProtos by alias, each made a tensor when first read: as in TF Serving,
    the input count and aliases are checked before any tensor is parsed."""

    def __init__(self, protos):
        self._protos, self._done = protos, {}

    def __getitem__(self, alias: str) -> np.ndarray:
        if alias not in self._done:
            self._done[alias] = tensor_from_proto(alias, self._protos[alias])
        return self._done[alias]

    def __contains__(self, alias) -> bool:  # without parsing (Mapping's default reads the item)
        return alias in self._protos

    def __iter__(self):
        return iter(self._protos)

    def __len__(self) -> int:
        return len(self._protos)


def serialized_examples(input_proto) -> list[bytes]:
    """``InputToSerializedExampleTensor``: each example serialized (after its context, if any)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        lst = input_proto.example_list_with_context
        context = lst.context.SerializeToString()
        return [context + e.SerializeToString() for e in lst.examples]
    return []


def model_spec(target, name: str, signature_name: str | None, version: int | None) -> None:
    """``MakeModelSpec``."""
    target.Clear()
    target.name = name
    if signature_name is not None:
        target.signature_name = signature_name or SERVING_DEFAULT
    if version is not None:
        target.version.value = version


def require_model_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")


def spec_choice(spec) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec asks for."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def predict(servable: Servable, request, version: int | None, timeout_ms: int | None = None):
    """``timeout_ms`` (here and below): the session run's ``RunOptions.timeout_in_ms``."""
    from tensorflow_serving.apis import predict_pb2

    spec = request.model_spec
    response = predict_pb2.PredictResponse()
    inputs = _Tensors(request.inputs)
    outputs = servable.predict(spec.signature_name, inputs, tuple(request.output_filter),
                               model_name=spec.name, timeout_ms=timeout_ms)
    model_spec(response.model_spec, spec.name, spec.signature_name, version)
    sig = servable.signature(spec.signature_name)
    for alias, arr in outputs.items():
        response.outputs[alias].CopyFrom(tensor_to_proto(arr, servable.tensor_dtype(sig.outputs[alias].name)))
    return response


def _fill_classifications(result, rows) -> None:
    for row in rows:
        c = result.classifications.add()
        for label, score in row:
            cl = c.classes.add()
            cl.label = label
            cl.score = score


_RAW_LABEL_TYPES: dict[str, type] | None = None


def raw_label_type(full_name: str) -> type:
    """The message class ``full_name`` (``tensorflow.serving.ClassificationResponse`` or
    ``...MultiInferenceResponse``) with ``Class.label`` as ``bytes``: the same wire format, but
    it holds a label that is not UTF-8. TF Serving's ``set_label`` copies the class tensor's bytes
    and C++ protobuf sends them (its proto3 UTF-8 check only logs when serializing); Python's
    ``string`` field refuses them."""
    global _RAW_LABEL_TYPES
    if _RAW_LABEL_TYPES is None:     # made whole, then set: a racing request makes its own
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        from tensorflow_serving.apis import classification_pb2, inference_pb2

        pool, added = descriptor_pool.DescriptorPool(), set()

        def add(fd) -> None:
            if fd.name in added:
                return
            for dep in fd.dependencies:
                add(dep)
            proto = descriptor_pb2.FileDescriptorProto()
            fd.CopyToProto(proto)
            for msg in proto.message_type:
                if fd.package == "tensorflow.serving" and msg.name == "Class":
                    label = next(f for f in msg.field if f.name == "label")
                    label.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            pool.Add(proto)
            added.add(fd.name)

        add(inference_pb2.DESCRIPTOR)
        names = (classification_pb2.ClassificationResponse.DESCRIPTOR.full_name,
                 inference_pb2.MultiInferenceResponse.DESCRIPTOR.full_name)
        _RAW_LABEL_TYPES = {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}
    return _RAW_LABEL_TYPES[full_name]


def classify(servable: Servable, request, version: int | None, timeout_ms: int | None = None):
    """-> the ClassificationResponse, of ``raw_label_type``'s class: send its ``SerializeToString``."""
    spec = request.model_spec
    response = raw_label_type("tensorflow.serving.ClassificationResponse")()
    rows = servable.classify(spec.signature_name, serialized_examples(request.input), model_name=spec.name,
                             timeout_ms=timeout_ms)
    model_spec(response.model_spec, spec.name, spec.signature_name, version)
    _fill_classifications(response.result, rows)
    return response


def regress(servable: Servable, request, version: int | None, timeout_ms: int | None = None):
    from tensorflow_serving.apis import regression_pb2

    spec = request.model_spec
    response = regression_pb2.RegressionResponse()
    values = servable.regress(spec.signature_name, serialized_examples(request.input), model_name=spec.name,
                              timeout_ms=timeout_ms)
    model_spec(response.model_spec, spec.name, spec.signature_name, version)
    for v in values:
        response.result.regressions.add().value = v
    return response


def multi_inference(servable: Servable, request, version: int | None, timeout_ms: int | None = None):
    """-> the MultiInferenceResponse, of ``raw_label_type``'s class: send its ``SerializeToString``."""
    tasks = [(t.model_spec.name, t.model_spec.signature_name, t.method_name) for t in request.tasks]
    results = servable.multi_inference(tasks, serialized_examples(request.input), timeout_ms=timeout_ms)
    response = raw_label_type("tensorflow.serving.MultiInferenceResponse")()
    for task, (method, rows) in zip(request.tasks, results):
        out = response.results.add()
        if method == "tensorflow/serving/classify":
            _fill_classifications(out.classification_result, rows)
        else:
            for v in rows:
                out.regression_result.regressions.add().value = v
        model_spec(out.model_spec, task.model_spec.name, task.model_spec.signature_name, version)
    return response


def metadata(servable: Servable):
    """``GetModelMetadataImpl`` after the servable is found: the ``signature_def`` map."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    for k, v in servable.signatures.items():
        sigmap.signature_def[k].CopyFrom(v)
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(sigmap)
    return response


def check_metadata_request(request) -> None:
    """``ValidateGetModelMetadataRequest``."""
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in request.metadata_field:
        if f != "signature_def":
            raise invalid_argument(f"Metadata field {f} is not supported")
