"""TF Serving's JSON <-> tensor rules (``tensorflow_serving/util/json_tensor.cc``) in Python.

Request side: ``instances`` (row format) and ``inputs`` (columnar) become numpy arrays typed by
the signature's inputs, with the same checks and error texts; ``examples``/``context`` become
serialized ``tf.Example`` protos. Response side: ``predictions`` / ``outputs`` / ``results``
written with TF Serving's number formatting (float32 printed with the shortest text that
round-trips, whole numbers with a trailing ``.0``, ``NaN``/``Infinity``) and ``{"b64": ...}``
for string outputs whose name ends in ``_bytes``.

Pure functions: no I/O, no model access (the caller passes the signature's input dtypes).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import sys

import numpy as np

from serving_host.status import ServingError, invalid_argument

# tensorflow.DataType enum values used here (tensorflow/core/framework/types.proto).
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT32, DT_UINT64 = 9, 10, 22, 23

_DTYPE_NAMES = {DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8",
                DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string", DT_INT64: "int64",
                DT_BOOL: "bool", DT_UINT32: "uint32", DT_UINT64: "uint64"}
_NUMPY = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
          DT_INT16: np.int16, DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64,
          DT_BOOL: np.bool_, DT_UINT32: np.uint32, DT_UINT64: np.uint64}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)

ROW, COLUMNAR = "row", "columnar"

MAX_ECHO_CHARS = 1024       # input echoed in an error message is cut here (TF Serving echoes it whole)
MAX_MESSAGE_CHARS = 4096    # and no error message is longer than this
MAX_RANK = 64               # numpy's limit; TF Serving CHECK-fails (crashes) past its own 254
DBL_MAX_INT = int(sys.float_info.max)

_PARSE_MESSAGES = {  # Python's json messages -> rapidjson's GetParseError_En texts
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or '}' after an object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


def dtype_name(dt: int) -> str:
    return _DTYPE_NAMES.get(dt, f"type_{dt}")


# --------------------------------------------------------------------------------------------
# JSON values as TF Serving prints them in messages
# --------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_type(v) -> str:
    if v is None:
        return "Null"
    if v is True:
        return "True"
    if v is False:
        return "False"
    if isinstance(v, dict):
        return "Object"
    if isinstance(v, list):
        return "Array"
    if isinstance(v, str):
        return "String"
    return "Number"


def format_float(v: float, float32: bool = True) -> str:
    """``WriteDecimal``: shortest %g text that round-trips, a ``.0`` on whole numbers."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "-Infinity" if v < 0 else "Infinity"
    s = f"{v:.6g}"
    back = float(np.float32(s)) if float32 else float(s)
    if back != v:
        s = f"{v:.9g}" if float32 else f"{v:.17g}"
    if "." not in s and "e" not in s:
        s += ".0"
    return s


def truncate(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """Cut echoed input so a huge request cannot make a huge error message."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _value_text(v) -> str:
    """``JsonValueToString`` (used only in error messages), cut at ``MAX_ECHO_CHARS``."""
    if isinstance(v, float):
        return format_float(v, float32=False)
    if isinstance(v, str):
        v = truncate(v)
    elif isinstance(v, (dict, list)) and len(v) > MAX_ECHO_CHARS:
        v = v[:MAX_ECHO_CHARS] if isinstance(v, list) else dict(list(v.items())[:MAX_ECHO_CHARS])
    return truncate(json.dumps(v, indent=4 if isinstance(v, (dict, list)) else None, ensure_ascii=False))


def _format_error(doc, *parts: str) -> ServingError:
    return invalid_argument("JSON Value: " + _value_text(doc) + " " + "".join(parts))


def parse_json(body: bytes):
    """``ParseJson``: the request body must be one JSON object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if not text.strip():
        raise invalid_argument("JSON Parse error: The document is empty. at offset: "
                               f"{len(text)}")
    try:
        doc = json.loads(text, parse_int=lambda t: _parse_int(t, text),
                         parse_float=lambda t: _parse_float(t, text))
    except json.JSONDecodeError as exc:
        msg = next((m for k, m in _PARSE_MESSAGES.items() if exc.msg.startswith(k)), exc.msg)
        raise invalid_argument(f"JSON Parse error: {msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: Terminate parsing due to Handler error.") from None
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def _too_big(token: str, text: str) -> ServingError:
    """rapidjson's kParseErrorNumberTooBig (a number past DBL_MAX), at the number's offset."""
    return invalid_argument("JSON Parse error: Number too big to be stored in double. at offset: "
                            f"{max(0, text.find(token))}")


def _parse_int(token: str, text: str) -> int:
    """Integers as rapidjson takes them: past uint64 they are doubles, past DBL_MAX an error
    (Python's own int() would refuse over 4300 digits with a ValueError)."""
    if len(token) > 400:
        raise _too_big(token[:400], text)
    v = int(token)
    if abs(v) > DBL_MAX_INT:
        raise _too_big(token, text)
    return v


def _parse_float(token: str, text: str) -> float:
    v = float(token)
    if math.isinf(v):
        raise _too_big(token[:400], text)
    return v


def signature_name(doc: dict) -> str:
    """``FillSignature``: the optional ``signature_name`` must be a string."""
    if "signature_name" not in doc:
        return ""
    sig = doc["signature_name"]
    if not isinstance(sig, str):
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
    return sig


# --------------------------------------------------------------------------------------------
# JSON -> tensors
# --------------------------------------------------------------------------------------------
def _is_b64(v) -> bool:
    return isinstance(v, dict) and len(v) == 1 and isinstance(v.get("b64"), str)


def _b64decode(v) -> bytes:
    if not _is_b64(v):
        raise invalid_argument(f"JSON Value: {_value_text(v)} not formatted correctly for base64 data")
    s = v["b64"]
    try:
        s_bytes = s.encode("ascii")
        if b"-" in s_bytes or b"_" in s_bytes:
            return base64.urlsafe_b64decode(s_bytes + b"=" * (-len(s_bytes) % 4))
        return base64.b64decode(s_bytes + b"=" * (-len(s_bytes) % 4), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _type_error(v, dt: int) -> ServingError:
    return invalid_argument(f"JSON Value: {_value_text(v)} Type: {_json_type(v)} is not of "
                            f"expected type: {dtype_name(dt)}")


def _lossless(v, max_int: int, fmax: float | None) -> bool:
    """``IsLosslessDecimal``: ints must fit the mantissa; doubles the float range."""
    if isinstance(v, int) and INT64_MIN <= v <= UINT64_MAX:
        return abs(v) <= max_int
    fv = float(v)
    if not math.isfinite(fv):
        return True
    return fmax is None or -fmax <= fv <= fmax


# AddValueToTensor's per-dtype rules: floats must convert without loss (ints: within the mantissa,
# float: within its range), whole numbers (never bool) within the dtype's range.
_FLOATS = {DT_FLOAT: ("float", 2**24 - 1, FLOAT32_MAX), DT_DOUBLE: ("double", 2**53 - 1, None)}
_INT_RANGES = {DT_INT32: (INT32_MIN, INT32_MAX), DT_INT16: (INT32_MIN, INT32_MAX), DT_INT8: (INT32_MIN, INT32_MAX),
               DT_UINT8: (INT32_MIN, INT32_MAX), DT_INT64: (INT64_MIN, INT64_MAX), DT_UINT32: (0, UINT32_MAX),
               DT_UINT64: (0, UINT64_MAX)}


def _add_value(v, dt: int, out: list) -> None:
    """``AddValueToTensor``: type checks per dtype (bool is not a number, 1.0 is not an int)."""
    if dt in _FLOATS:
        name, max_int, fmax = _FLOATS[dt]
        if not _is_number(v):
            raise _type_error(v, dt)
        if not _lossless(v, max_int, fmax):
            raise invalid_argument(f"Cannot convert JSON value: {_value_text(v)} to {name} without "
                                   "loss of precision.")
        out.append(v)
    elif dt in _INT_RANGES:
        lo, hi = _INT_RANGES[dt]
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise _type_error(v, dt)
        out.append(v)
    elif dt == DT_STRING:
        if not isinstance(v, str):
            raise _type_error(v, dt)
        out.append(v.encode("utf-8"))
    elif dt == DT_BOOL:
        if not isinstance(v, bool):
            raise _type_error(v, dt)
        out.append(v)
    else:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {_value_text(v)} to type: "
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
            raise invalid_argument(f"JSON Value: {_value_text(v)} found at incorrect level: "
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


def _to_array(values: list, shape: list[int], dt: int) -> np.ndarray:
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"Tensor of rank {len(shape)} (lists nested {len(shape)} deep): more "
                               f"than the {MAX_RANK} dimensions supported")
    np_type = _NUMPY.get(dt)
    if np_type is None:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON to type: {dtype_name(dt)}")
    if np_type is object:
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    if dt in (DT_INT16, DT_INT8, DT_UINT8):  # TF keeps these in int_val and narrows them
        return np.asarray(values, dtype=np.int64).astype(np_type).reshape(shape)
    return np.asarray(values, dtype=np_type).reshape(shape)


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _tensor(v, dt: int) -> tuple[list, list[int]]:
    shape = dense_shape(v)
    values = _plain_numbers(v, dt, shape)
    if values is None:
        values = []
        _fill(v, 0, dt, shape, values)
    return values, shape


def _plain_numbers(v, dt: int, shape: list[int]) -> list | None:
    """``_fill``'s answer, found by numpy in C, for a float or double tensor of plain numbers in
    range — what nearly every request holds. None whenever ``_fill`` could answer otherwise (a
    ragged or misplaced list, a bool, string or object, a number it would refuse): it then decides,
    with TF Serving's error texts. The values are the same objects in the same order."""
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
    _, max_int, fmax = _FLOATS[dt]
    limit = max_int if int in kinds else (fmax if fmax is not None else math.inf)
    values = np.array(flat, dtype=np.float64)
    if not np.all(~np.isfinite(values) | (np.abs(values) <= limit)):   # _lossless, conservatively
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
            raise invalid_argument(f"Expecting shape {_shape_text(shapes[name])} but got: "
                                   f"{_shape_text(shape)}")
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
                                       f"object: {_value_text(elem)} must only have keys: "
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
    for name in sorted(input_dtypes):
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        vals, shape = _tensor(inputs[name], input_dtypes[name])
        out[name] = _to_array(vals, shape, input_dtypes[name])
    return out


def predict_inputs(doc: dict, input_dtypes: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """``FillPredictRequestFromJson`` after the signature is known -> (tensors, format)."""
    if not input_dtypes:
        raise invalid_argument("Failed to get input map for signature: "
                               + (doc.get("signature_name") or "DEFAULT"))
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or "
                                 "'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
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
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
    if isinstance(v, bool):
        kind, value = "int64", int(v)
    elif isinstance(v, dict):
        kind, value = "bytes", _b64decode(v)
    elif isinstance(v, str):
        kind, value = "bytes", v.encode("utf-8")
    elif isinstance(v, float) or (isinstance(v, int) and not INT64_MIN <= v <= UINT64_MAX):
        kind = "float"
        if not _lossless(v, 2**24 - 1, FLOAT32_MAX):
            raise invalid_argument(f"Cannot convert JSON value: {_value_text(v)} to float without "
                                   "loss of precision.")
        value = float(v)
    else:
        kind = "int64"
        if v > INT64_MAX:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        value = v
    if feat.setdefault("kind", kind) != kind:
        raise _feature_kind_error(name, feat["kind"])
    feat.setdefault("values", []).append(value)


def _example(obj):
    """``MakeExampleFromJsonObject`` -> a ``tf.train.Example`` proto."""
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(obj)}")
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
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    return [context + _example(e).SerializeToString() for e in examples]


# --------------------------------------------------------------------------------------------
# tensors -> JSON
# --------------------------------------------------------------------------------------------
def _scalar_text(v, as_bytes: bool) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        if as_bytes:
            return '{"b64": "' + base64.b64encode(bytes(v)).decode("ascii") + '"}'
        return json.dumps(bytes(v).decode("utf-8", "replace"), ensure_ascii=False)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, np.float32):
        return format_float(float(v), float32=True)
    if isinstance(v, (float, np.floating)):
        return format_float(float(v), float32=False)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    raise invalid_argument(f"Failed to write JSON value for tensor type: {type(v).__name__}")


def _values_text(arr: np.ndarray, as_bytes: bool) -> str:
    """``AddTensorValues``: nested JSON arrays for a tensor (a scalar stays a bare value)."""
    if arr.ndim == 0:
        return _scalar_text(arr[()], as_bytes)
    if arr.dtype == np.float32:
        flat = [format_float(x, True) for x in arr.reshape(-1).tolist()]
    elif arr.dtype == np.float64 or arr.dtype == np.float16:
        flat = [format_float(x, arr.dtype != np.float64) for x in arr.reshape(-1).tolist()]
    else:
        flat = [_scalar_text(x, as_bytes) for x in arr.reshape(-1)]
    it = iter(flat)

    def nest(shape):
        if len(shape) == 1:
            return "[" + ", ".join(next(it) for _ in range(shape[0])) + "]"
        return "[" + ", ".join(nest(shape[1:]) for _ in range(shape[0])) + "]"

    if 0 in arr.shape:
        return json.dumps(np.zeros(arr.shape).tolist())
    return nest(arr.shape)


def _is_bytes_tensor(name: str, arr: np.ndarray) -> bool:
    return arr.dtype == object and name.endswith("_bytes")


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """``MakeJsonFromTensors``: ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            body = _values_text(outputs[names[0]], _is_bytes_tensor(names[0], outputs[names[0]]))
        else:
            body = "{" + ", ".join(json.dumps(n) + ": " + _values_text(outputs[n], _is_bytes_tensor(n, outputs[n]))
                                   for n in names) + "}"
        return '{\n    "outputs": ' + body + "\n}"
    batch = 0
    for n in names:
        arr = outputs[n]
        if arr.ndim == 0:
            raise invalid_argument(f"Tensor name: {n} has no shape information ")
        if arr.shape[0] < 1:
            raise invalid_argument(f"Tensor name: {n} has invalid batch size: {arr.shape[0]}")
        if batch and arr.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {n} has inconsistent batch size: {arr.shape[0]} "
                                   f"expecting: {batch}")
        batch = arr.shape[0]
    rows = []
    for i in range(batch):
        if len(names) == 1:
            rows.append(_values_text(outputs[names[0]][i, ...], _is_bytes_tensor(names[0], outputs[names[0]])))
        else:
            cells = (json.dumps(n) + ": " + _values_text(outputs[n][i, ...], _is_bytes_tensor(n, outputs[n]))
                     for n in names)
            rows.append("{" + ", ".join(cells) + "}")
    return '{\n    "predictions": [' + ",\n        ".join(rows) + "\n    ]\n}"


def classify_response(results: list[list[tuple[str, float]]]) -> str:
    """``MakeJsonFromClassificationResult``: ``{"results": [[[label, score], ...], ...]}``."""
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ["[" + ", ".join("[" + json.dumps(label, ensure_ascii=False) + ", " + format_float(score) + "]"
                            for label, score in row) + "]" for row in results]
    return '{\n    "results": [' + ",\n        ".join(rows) + "\n    ]\n}"


def regress_response(values: list[float]) -> str:
    """``MakeJsonFromRegressionResult``: ``{"results": [v1, v2, ...]}``."""
    if not values:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{\n    "results": [' + ", ".join(format_float(v) for v in values) + "]\n}"


def error_body(message: str) -> str:
    """``MakeJsonFromStatus``: ``{ "error": "<escaped message>" }``."""
    return '{ "error": ' + json.dumps(message, ensure_ascii=False) + " }"
