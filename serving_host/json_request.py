"""A parsed request document turned into what the servable runs on, with json_tensor.cc's checks
and error texts (``FillPredictRequestFromJson``, ``FillClassifyRegressRequestFromJson``).

Predict: ``instances`` (row format) and ``inputs`` (columnar) become numpy arrays typed by the
signature's input dtypes (the caller passes them: no model access here). Classify / regress:
``examples`` (+ ``context``) become serialized ``tf.Example`` protos. Both share the
``{"b64": ...}`` rule (decoded as abseil's ``Base64Unescape``) and the optional
``signature_name``.
"""
from __future__ import annotations

import binascii
import re

import numpy as np

from serving_host.json_text import debug_text, json_type, json_value_error
from serving_host.status import ServingError, invalid_argument
from serving_host.tensors import opaque_tensor, shape_text, string_vector
from serving_host.tf_dtypes import (
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT32,
    DT_UINT64,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    UINT64_MAX,
    dtype_name,
)

_NUMPY = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
          DT_INT16: np.int16, DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64,
          DT_BOOL: np.bool_, DT_UINT32: np.uint32, DT_UINT64: np.uint64}

ROW, COLUMNAR = "row", "columnar"

MAX_RANK = 64               # numpy's limit; TF Serving CHECK-fails (crashes) past its own 254


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def signature_name(doc: dict) -> str:
    """``FillSignature``: the optional ``signature_name`` must be a string."""
    if "signature_name" not in doc:
        return ""
    sig = doc["signature_name"]
    if not isinstance(sig, str):
        raise json_value_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
    return sig


# --------------------------------------------------------------------------------------------
# JSON -> tensors
# --------------------------------------------------------------------------------------------
def _is_b64(v) -> bool:
    return isinstance(v, dict) and getattr(v, "members", len(v)) == 1 and isinstance(v.get("b64"), str)


_B64_SPACE = b" \t\n\v\f\r"                     # absl::ascii_isspace
_B64_SHAPE = re.compile(rb"([A-Za-z0-9+/]*)([=.]*)")   # data, then padding (kUnBase64, '=' or '.')


def base64_unescape(s: str) -> bytes | None:
    """``absl::Base64Unescape`` (abseil-cpp absl/strings/escaping.cc, ``Base64UnescapeInternal``
    with ``kUnBase64``); None where it returns false.

    Whitespace (space, \\t \\n \\v \\f \\r) is skipped anywhere; only the standard alphabet
    (``+``, ``/``) is data — the web-safe ``-`` and ``_``, NUL and non-ASCII are not; padding is
    ``=`` or ``.`` (mixed as well), only after the data, and either absent or exactly right
    (two after 2 leftover characters, one after 3, none after 0); 1 leftover character is refused.
    """
    raw = s.encode("utf-8", "surrogatepass")
    if not raw.isascii():
        return None
    raw = raw.translate(None, _B64_SPACE)
    m = _B64_SHAPE.fullmatch(raw)
    if m is None:
        return None
    data, pads = m.group(1), len(m.group(2))
    expected = (0, None, 2, 1)[len(data) % 4]
    if expected is None or pads not in (0, expected):
        return None
    return binascii.a2b_base64(data + b"=" * expected)


def _b64decode(v) -> bytes:
    """``JsonDecodeBase64Object`` (json_tensor.cc:377-389)."""
    if not _is_b64(v):
        raise invalid_argument(f"JSON Value: {debug_text(v)} not formatted correctly for base64 data")
    decoded = base64_unescape(v["b64"])
    if decoded is None:
        raise invalid_argument("Unable to base64 decode")      # json_tensor.cc:386
    return decoded


def _type_error(v, dt: int) -> ServingError:
    return invalid_argument(f"JSON Value: {debug_text(v)} Type: {json_type(v)} is not of "
                            f"expected type: {dtype_name(dt)}")


# AddValueToTensor (json_tensor.cc:290-342). DT_FLOAT / DT_DOUBLE: any JSON number (IsNumber()),
# converted with GetFloat() / GetDouble() and no precision check — TF Serving removed
# IsLosslessDecimal in 2.5 (commit 57dac6cd); GetFloat() is static_cast<float>(GetDouble()), so
# 16777217 becomes 16777216.0 and 1e39 becomes inf. Integer dtypes: rapidjson's IsInt() (int32
# range, also for int16/int8/uint8, which TF narrows later), IsInt64(), IsUint(), IsUint64() — a
# number written with '.' or 'e' is a double and never an integer; bool is never a number.
_FLOATS = (DT_FLOAT, DT_DOUBLE)
_INT_RANGES = {DT_INT32: (INT32_MIN, INT32_MAX), DT_INT16: (INT32_MIN, INT32_MAX), DT_INT8: (INT32_MIN, INT32_MAX),
               DT_UINT8: (INT32_MIN, INT32_MAX), DT_INT64: (INT64_MIN, INT64_MAX), DT_UINT32: (0, UINT32_MAX),
               DT_UINT64: (0, UINT64_MAX)}


def _add_value(v, dt: int, out: list) -> None:
    """``AddValueToTensor``: type checks per dtype (bool is not a number, 1.0 is not an int)."""
    if dt in _FLOATS:
        if not _is_number(v):
            raise _type_error(v, dt)
        out.append(float(v))                        # GetDouble(); _to_array narrows to float32
    elif dt in _INT_RANGES:
        lo, hi = _INT_RANGES[dt]
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise _type_error(v, dt)
        out.append(v)
    elif dt == DT_STRING:
        if not isinstance(v, str):
            raise _type_error(v, dt)
        out.append(v.encode("utf-8", "surrogatepass"))
    elif dt == DT_BOOL:
        if not isinstance(v, bool):
            raise _type_error(v, dt)
        out.append(v)
    else:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {debug_text(v)} to type: "
                                            f"{dtype_name(dt)}")


def dense_shape(v) -> list[int]:
    """``GetDenseTensorShape``: follow the first element of each nested list."""
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return shape


def _fill(v, level: int, dt: int, shape: list[int], out: list) -> None:
    """``FillTensorProto``: every leaf at depth == rank, every list of the expected size."""
    rank = len(shape)
    if not isinstance(v, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {debug_text(v)} found at incorrect level: "
                                   f"{level + 1} in the JSON DOM. Expected at level: {rank}")
        if isinstance(v, dict):
            if dt != DT_STRING:
                raise _type_error(v, dt)
            out.append(_b64decode(v))
        else:
            _add_value(v, dt, out)
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(v) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(v)} at level: {level} "
                               f"expected size: {shape[level]}")
    for item in v:
        _fill(item, level + 1, dt, shape, out)


_OPAQUE = (20, 21)      # DT_RESOURCE, DT_VARIANT: no numpy form; tensors.opaque_tensor


def _to_array(values: list, shape: list[int], dt: int) -> np.ndarray:
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"Tensor of rank {len(shape)} (lists nested {len(shape)} deep): more "
                               f"than the {MAX_RANK} dimensions supported")
    np_type = _NUMPY.get(dt)
    if np_type is None:
        # AddValueToTensor refuses every value of this dtype, so none was met: TF Serving sends the
        # empty tensor on (``{"inputs": []}`` to a half input is a [0] half tensor, not an error;
        # to a resource or variant input one FromProto makes, which the run's dtype check judges)
        if dt in _OPAQUE:
            return opaque_tensor(shape, dt)
        import tensorflow as tf

        try:
            return np.zeros(shape, dtype=tf.dtypes.as_dtype(dt).as_numpy_dtype)
        except (TypeError, ValueError, KeyError):      # a DataType numpy has no form for
            raise ServingError("UNIMPLEMENTED", f"Conversion of JSON to type: {dtype_name(dt)}") from None
    if np_type is object:
        return string_vector(values).reshape(shape)
    if dt in (DT_INT16, DT_INT8, DT_UINT8):  # TF keeps these in int_val and narrows them
        return np.asarray(values, dtype=np.int64).astype(np_type).reshape(shape)
    if dt == DT_FLOAT:                         # static_cast<float>(GetDouble()): past FLT_MAX, inf
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).astype(np.float32).reshape(shape)
    return np.asarray(values, dtype=np_type).reshape(shape)


def _tensor(v, dt: int) -> tuple[list, list[int]]:
    shape = dense_shape(v)
    values = _plain_numbers(v, dt, shape)
    if values is None:
        values = []
        _fill(v, 0, dt, shape, values)
    return values, shape


def _plain_numbers(v, dt: int, shape: list[int]) -> list | None:
    """``_fill``'s answer, found by numpy in C, for a float or double tensor of plain numbers —
    what nearly every request holds. None whenever ``_fill`` could answer otherwise (a ragged or
    misplaced list, a bool, string or object): it then decides, with TF Serving's error texts.
    The values are the same numbers in the same order."""
    if dt not in _FLOATS or not isinstance(v, list):
        return None
    try:
        leaves = np.array(v, dtype=object)
    except ValueError:                           # nested deeper than numpy allows
        return None
    if list(leaves.shape) != shape:              # ragged, or a list where a number should be
        return None
    flat = leaves.ravel().tolist()
    kinds = set(map(type, flat))                 # type(True) is bool: bools are not let through
    if not kinds <= {int, float}:
        return None
    return flat


def tensors_from_instances(instances: list, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInstancesList``: batch the row-format instances per named input."""
    first = instances[0]
    if not isinstance(first, dict) and len(input_dtypes) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple "
                               "input tensors required as per tensorinfo_map")

    def is_object(x):
        return isinstance(x, dict) and not _is_b64(x)

    objects = is_object(first)
    names = sorted(input_dtypes)
    if not objects and len(names) == 1:         # every instance the same shape: one batch at once
        shape = dense_shape(instances)
        batch = _plain_numbers(instances, input_dtypes[names[0]], shape)
        if batch is not None:
            return {names[0]: _to_array(batch, shape, input_dtypes[names[0]])}
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add_item(item, name: str) -> None:
        if name not in input_dtypes:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        vals, shape = _tensor(item, input_dtypes[name])
        if name not in sizes:
            sizes[name], shapes[name] = len(vals), shape
        elif sizes[name] != len(vals):
            raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: {len(vals)}")
        elif shapes[name] != shape:
            raise invalid_argument(f"Expecting shape {shape_text(shapes[name])} but got: "
                                   f"{shape_text(shape)}")
        values.setdefault(name, []).extend(vals)

    for i, elem in enumerate(instances):
        if objects:
            if not is_object(elem):
                raise invalid_argument(f"Expecting object but got list at item {i} of input list")
            for key, item in elem.items():
                try:
                    add_item(item, key)
                except ServingError as exc:
                    raise invalid_argument(f"Failed to process element: {i} key: {key} of 'instances' "
                                           f"list. Error: {exc}") from None
            if set(elem) != set(names):
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. JSON "
                                       f"object: {debug_text(elem)} keys must be equal to: "
                                       f"{','.join(names)}")
        else:
            if is_object(elem):
                raise invalid_argument(f"Expecting value/list but got object at item {i} of input list")
            try:
                add_item(elem, names[0])
            except ServingError as exc:
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. "
                                       f"Error: {exc}") from None
    n = len(instances)
    return {name: _to_array(values[name], [n] + shapes[name], input_dtypes[name]) for name in values}


def tensors_from_inputs(inputs, input_dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInputsMap``: columnar ``inputs`` (a value, or an object of named values)."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(input_dtypes) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple "
                                   "input tensors required as per tensorinfo_map")
        (name, dt), = input_dtypes.items()
        vals, shape = _tensor(inputs, dt)
        return {name: _to_array(vals, shape, dt)}
    out = {}
    found = getattr(inputs, "first", None) or inputs     # FindMember: a repeated key's first value
    for name in sorted(input_dtypes):
        if name not in found:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        vals, shape = _tensor(found[name], input_dtypes[name])
        out[name] = _to_array(vals, shape, input_dtypes[name])
    return out


def predict_inputs(doc: dict, input_dtypes: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """``FillPredictRequestFromJson`` after the signature is known -> (tensors, format)."""
    if not input_dtypes:
        raise invalid_argument("Failed to get input map for signature: "
                               + (doc.get("signature_name") or "DEFAULT"))
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise json_value_error(doc, "Not formatted correctly expecting only one of 'inputs' or "
                                 "'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise json_value_error(doc, "Expecting 'instances' to be an list/array")   # json_tensor.cc:684
        if not instances:
            raise json_value_error(doc, "No values in 'instances' array")
        return tensors_from_instances(instances, input_dtypes), ROW
    if has_inputs:
        return tensors_from_inputs(doc["inputs"], input_dtypes), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# --- classify / regress: JSON examples -> serialized tf.Example ------------------------------
def _feature_kind_error(name: str, kind: str) -> ServingError:
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_feature_value(v, name: str, feat: dict) -> None:
    """``AddValueToFeature``: one JSON value into a bytes/float/int64 list (kinds cannot mix)."""
    if v is None or isinstance(v, list) or (isinstance(v, dict) and not _is_b64(v)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(v)}")
    if isinstance(v, bool):
        kind, value = "int64", int(v)
    elif isinstance(v, dict):
        kind, value = "bytes", v               # decoded after the kind check, as TF Serving does
    elif isinstance(v, str):
        kind, value = "bytes", v.encode("utf-8", "surrogatepass")
    elif isinstance(v, float) or (isinstance(v, int) and not INT64_MIN <= v <= UINT64_MAX):
        # val.IsDouble() (a '.'/'e' number, or an integer past uint64): GetFloat(), no precision
        # check (json_tensor.cc:774-779; IsLosslessDecimal went in 57dac6cd).
        kind = "float"
        value = float(v)
    else:
        kind = "int64"
        if v > INT64_MAX:                               # json_tensor.cc:784-788
            if feat.setdefault("kind", kind) != kind:
                raise _feature_kind_error(name, feat["kind"])
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        value = v
    if feat.setdefault("kind", kind) != kind:
        raise _feature_kind_error(name, feat["kind"])
    if isinstance(value, dict):
        value = _b64decode(value)
    feat.setdefault("values", []).append(value)


def _example(obj):
    """``MakeExampleFromJsonObject`` -> a ``tf.train.Example`` proto."""
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(obj)}")
    ex = example_pb2.Example()
    for name, content in obj.items():
        feat: dict = {}
        for v in (content if isinstance(content, list) else [content]):
            _add_feature_value(v, name, feat)
        f = ex.features.feature[name]
        kind = feat.get("kind")
        if kind == "bytes":
            f.bytes_list.value.extend(feat["values"])
        elif kind == "float":
            f.float_list.value.extend(feat["values"])
        elif kind == "int64":
            f.int64_list.value.extend(feat["values"])
    return ex


def serialized_examples(doc: dict) -> list[bytes]:
    """``FillClassifyRegressRequestFromJson``: ``examples`` (+ optional ``context``) -> bytes.

    With a context, each example is the context merged with the example (example wins),
    as TF Serving does for ``ExampleListWithContext``.
    """
    context = _example(doc["context"]).SerializeToString() if "context" in doc else b""
    if "examples" not in doc:
        raise json_value_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise json_value_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise json_value_error(doc, "'examples' value is an empty array")
    return [context + _example(e).SerializeToString() for e in examples]
