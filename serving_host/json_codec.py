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
import re
import sys
from itertools import islice

import numpy as np

from serving_host.status import ServingError, invalid_argument

# tensorflow.DataType enum values used here (tensorflow/core/framework/types.proto).
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT32, DT_UINT64 = 9, 10, 22, 23

# DataTypeString() (tensorflow/core/framework/types.cc) for every DataType number.
_DTYPE_NAMES = {DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8",
                DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string", DT_INT64: "int64",
                DT_BOOL: "bool", DT_UINT32: "uint32", DT_UINT64: "uint64",
                8: "complex64", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16",
                16: "quint16", 17: "uint16", 18: "complex128", 19: "half", 20: "resource", 21: "variant"}
# numpy dtype name -> DataTypeString, for outputs AddSingleValueAndAdvance cannot write.
_NUMPY_TF_NAMES = {"float16": "half", "complex64": "complex64", "complex128": "complex128",
                   "uint16": "uint16", "bfloat16": "bfloat16"}
_NUMPY = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
          DT_INT16: np.int16, DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64,
          DT_BOOL: np.bool_, DT_UINT32: np.uint32, DT_UINT64: np.uint64}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1

ROW, COLUMNAR = "row", "columnar"

MAX_ECHO_CHARS = 1024       # truncate()'s default (paths echoed by rest.py)
MAX_DEBUG_BYTES = 256       # json_tensor.cc:225 kMaxJsonDebugStringBytes
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


# rapidjson (v1.1.0, the version tensorflow_serving/workspace.bzl pins) Writer::WriteString:
# '"', '\\', \b \t \n \f \r and \u00XX (upper-case hex) for the other control characters;
# everything else, non-ASCII included, is written as it is.
_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)}
_ESCAPES.update({8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r", 34: '\\"', 92: "\\\\"})
_INDENT = "    "   # PrettyWriter's default indent: 4 spaces per open object/array


def json_string(s: str) -> str:
    """A JSON string as rapidjson's ``Writer::String`` writes it."""
    return '"' + s.translate(_ESCAPES) + '"'


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def dtoa(d: float) -> str:
    """rapidjson's ``Writer::Double`` text (``internal::dtoa`` + ``Prettify``, dtoa.h) for a finite
    double: shortest round-trip digits, ``.0`` on whole numbers, ``e`` notation from 1e21 and below
    1e-6 (``1e39``, ``1.5e-7``, no ``+`` and no zero padding in the exponent)."""
    if d == 0:
        return "-0.0" if math.copysign(1.0, d) < 0 else "0.0"
    sign = "-" if d < 0 else ""
    mant, _, exp = repr(abs(d)).partition("e")
    ip, _, fp = mant.partition(".")
    digits, k = (ip + fp).lstrip("0"), (int(exp) if exp else 0) - len(fp)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    kk = length + k                      # 10^(kk-1) <= v < 10^kk
    if 0 <= k and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif kk < -324:
        text = "0.0"
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


class _Full(Exception):
    """The debug writer stopped (over ``MAX_DEBUG_BYTES``, or a NaN/Inf it cannot write)."""


def debug_text(v, max_bytes: int = MAX_DEBUG_BYTES) -> str:
    """``JsonValueToDebugString`` (json_tensor.cc:225-236): the parsed value written back through
    ``JsonWriterWithLimit`` (:177-223) by a ``PrettyWriter`` with ``kFormatSingleLineArray``.

    Arrays stay on one line (``[1, 2]``), objects are indented by 4 spaces per level. Before each
    token the writer checks that fewer than 256 bytes are out; past that it stops, leaving the
    text unclosed — but a token that starts under the limit is written whole (a long string is
    echoed entirely). A NaN or infinity stops it too: rapidjson's default ``Writer::Double``
    writes the separator, then refuses the value (writer.h ``WriteDouble``). Numbers print as
    rapidjson stores them: integers in [-2^63, 2^64) exactly, other numbers as doubles (``dtoa``).
    """
    out: list[str] = []
    size = 0
    stack: list[list] = []               # [in_array, value_count] per open container

    def put(text: str) -> None:
        nonlocal size
        out.append(text)
        size += _utf8_len(text)

    def prefix() -> None:                # PrettyWriter::PrettyPrefix, single-line arrays
        if size >= max_bytes:
            raise _Full
        if not stack:
            return
        level = stack[-1]
        if level[0]:
            if level[1] > 0:
                put(", ")
        else:
            if level[1] > 0:
                put(",\n" if level[1] % 2 == 0 else ": ")
            else:
                put("\n")
            if level[1] % 2 == 0:
                put(_INDENT * len(stack))
        level[1] += 1

    def end(closer: str) -> None:        # EndObject / EndArray
        if size >= max_bytes:
            raise _Full
        level = stack.pop()
        if closer == "}" and level[1]:
            put("\n" + _INDENT * len(stack))
        put(closer)

    def walk(x) -> None:
        if isinstance(x, dict):
            prefix()
            stack.append([False, 0])
            put("{")
            for key, val in x.items():
                prefix()
                put(json_string(key))
                walk(val)
            end("}")
        elif isinstance(x, list):
            prefix()
            stack.append([True, 0])
            put("[")
            for item in x:
                walk(item)
            end("]")
        else:
            prefix()
            if isinstance(x, float) and not math.isfinite(x):
                raise _Full
            put(_scalar_json(x))

    try:
        walk(v)
    except _Full:
        pass
    return "".join(out)


def _scalar_json(x) -> str:
    if x is None:
        return "null"
    if x is True:
        return "true"
    if x is False:
        return "false"
    if isinstance(x, str):
        return json_string(x)
    if isinstance(x, int) and INT64_MIN <= x <= UINT64_MAX:
        return str(x)
    return dtoa(float(x))                # past uint64 rapidjson holds an integer as a double


def _format_error(doc, *parts: str) -> ServingError:
    return invalid_argument("JSON Value: " + debug_text(doc) + " " + "".join(parts))


class _Object(dict):
    """A JSON object as Python keeps it (a repeated key: its last value, as TF Serving's example
    parsing assigns each member in turn), plus what rapidjson keeps besides: the number of members
    (``{"b64": …}`` must have exactly one) and, when a key repeats, the first values (what
    ``FindMember`` finds: the request's top-level keys)."""

    __slots__ = ("members", "first")


def _object(pairs: list) -> _Object:
    obj = _Object(pairs)
    obj.members = len(pairs)
    obj.first = None
    if len(obj) != len(pairs):
        obj.first = {}
        for key, value in pairs:
            obj.first.setdefault(key, value)
    return obj


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
    # rapidjson as TF Serving calls it (json_tensor.cc, kParseStopWhenDoneFlag): parsing stops at
    # the end of the root value, so text after it is ignored; FindMember finds a repeated key's
    # first value.
    decoder = json.JSONDecoder(parse_int=lambda t: _parse_int(t, text), parse_float=lambda t: _parse_float(t, text),
                               object_pairs_hook=_object)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        doc, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        _check_surrogates(text, exc.pos)
        msg = next((m for k, m in _PARSE_MESSAGES.items() if exc.msg.startswith(k)), exc.msg)
        raise invalid_argument(f"JSON Parse error: {msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: Terminate parsing due to Handler error.") from None
    _check_surrogates(text, end)
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return dict(doc.first) if doc.first is not None else doc


_ESCAPE_RE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.S)


def _check_surrogates(text: str, before: int) -> None:
    """rapidjson 1.1.0 (reader.h ParseStringToStream) refuses a ``\\uD800``-``\\uDBFF`` escape
    not followed at once by a ``\\uDC00``-``\\uDFFF`` one: "The surrogate pair in string is
    invalid." at the first escape's offset (bytes). Python's json would keep the lone surrogate.
    (A lone low surrogate is kept, as rapidjson 1.1.0 keeps it.)"""
    if "\\u" not in text or not re.search(r"\\u[dD][89abAB]", text):
        return
    pending = None
    for m in _ESCAPE_RE.finditer(text, 0, before):
        cp = int(m.group(1), 16) if m.group(1) else -1
        if pending is not None:
            if m.start() != pending.end() or not 0xDC00 <= cp <= 0xDFFF:
                break
            pending = None
        elif 0xD800 <= cp <= 0xDBFF:
            pending = m
    if pending is not None:
        offset = _utf8_len(text[:pending.start()])
        raise invalid_argument(f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}")


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
    return invalid_argument(f"JSON Value: {debug_text(v)} Type: {_json_type(v)} is not of "
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
    if dt == DT_FLOAT:                         # static_cast<float>(GetDouble()): past FLT_MAX, inf
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).astype(np.float32).reshape(shape)
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
            raise _format_error(doc, "Expecting 'instances' to be an list/array")   # json_tensor.cc:684
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
# The writers below produce, byte for byte, what json_tensor.cc's rapidjson PrettyWriter calls
# produce (4-space indent per open container; kFormatSingleLineArray puts array elements on one
# line, ", " apart, and the closing ']' right after the last one, but never changes objects).
def _nl(depth: int) -> str:
    return "\n" + _INDENT * depth


def _b64_object(data: bytes, depth: int) -> str:
    """``{"b64": ...}`` for one ``_bytes`` string (json_tensor.cc:909-916), written inside
    ``depth`` open containers: an object is multi-line even in a single-line array."""
    return ("{" + _nl(depth + 1) + '"b64": "' + base64.b64encode(data).decode("ascii") + '"'
            + _nl(depth) + "}")


def _scalar_text(v, as_bytes: bool, depth: int) -> str:
    """``AddSingleValueAndAdvance`` (json_tensor.cc:888-950) for one value."""
    if isinstance(v, (bytes, np.bytes_)):
        if as_bytes:
            return _b64_object(bytes(v), depth)
        return json_string(bytes(v).decode("utf-8", "replace"))
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, np.float32):
        return format_float(float(v), float32=True)
    if isinstance(v, (float, np.float64)):
        return format_float(float(v), float32=False)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    raise invalid_argument(f"Failed to write JSON value for tensor type: {type(v).__name__}")


_WRITABLE = {"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64", "bool"}


def _check_writable(name: str, arr: np.ndarray) -> None:
    """AddSingleValueAndAdvance writes float, double, int8/16/32/64, uint8/32/64, bool, string;
    any other type is ``Failed to write JSON value for tensor type: <type>`` (:939-947)."""
    if arr.dtype.kind in "OSU" or arr.dtype.name in _WRITABLE:
        return
    raise invalid_argument("Failed to write JSON value for tensor type: "
                           + _NUMPY_TF_NAMES.get(arr.dtype.name, arr.dtype.name))


def _flat_texts(arr: np.ndarray, as_bytes: bool, depth: int) -> list[str]:
    """Every value of ``arr`` as text, in order; ``depth``: open containers around each value."""
    if arr.dtype == np.float32:
        return [format_float(x, True) for x in arr.reshape(-1).tolist()]
    if arr.dtype == np.float64:
        return [format_float(x, False) for x in arr.reshape(-1).tolist()]
    return [_scalar_text(x, as_bytes, depth) for x in arr.reshape(-1)]


def _nest(it, dims: tuple, depth: int, single: bool) -> str:
    """``AddTensorValues`` (json_tensor.cc:952-973): nested arrays of the next values of ``it``,
    written inside ``depth`` open containers; a scalar (no dims) is the bare value."""
    if not dims:
        return next(it)
    if dims[0] == 0:
        return "[]"                                   # EndArray of an empty array: no newline
    if len(dims) == 1:
        items = list(islice(it, dims[0]))
    else:
        items = [_nest(it, dims[1:], depth + 1, single) for _ in range(dims[0])]
    if single:
        return "[" + ", ".join(items) + "]"
    inner = _nl(depth + 1)
    return "[" + inner + ("," + inner).join(items) + _nl(depth) + "]"


def _is_bytes_tensor(name: str, arr: np.ndarray) -> bool:
    return arr.dtype == object and name.endswith("_bytes")


def _values(name: str, arr: np.ndarray, depth: int):
    """An iterator over ``arr``'s value texts; ``depth``: containers open around the tensor."""
    _check_writable(name, arr)
    return iter(_flat_texts(arr, _is_bytes_tensor(name, arr), depth + arr.ndim))


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """``MakeJsonFromTensors`` (json_tensor.cc:1052-1066): ``predictions`` (row, :975-1026) or
    ``outputs`` (columnar, :1028-1048), laid out as TF Serving's PrettyWriter lays them out.

    Row format: each item is written with kFormatSingleLineArray (:1009) — one output gives
    ``[2.5, 3.0`` + ``\n    ]``; several outputs give one multi-line object per item (the
    object starts before the option is set, :1008). Columnar format never sets the option
    (:1030-1047): every array element is on its own line. Outputs in name order (TF Serving's
    protobuf Map order is unspecified)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            arr = outputs[names[0]]
            body = _nest(_values(names[0], arr, 1), arr.shape, 1, False)
        else:
            parts = []
            for n in names:
                arr = outputs[n]
                parts.append(_nl(2) + json_string(n) + ": " + _nest(_values(n, arr, 2), arr.shape, 2, False))
            body = "{" + ",".join(parts) + _nl(1) + "}"
        return '{\n    "outputs": ' + body + "\n}"
    batch = -1
    for n in names:
        arr = outputs[n]
        if arr.ndim == 0:
            raise invalid_argument(f"Tensor name: {n} has no shape information ")
        if batch >= 0 and arr.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {n} has inconsistent batch size: {arr.shape[0]} "
                                   f"expecting: {batch}")
        batch = arr.shape[0]
    if len(names) == 1:
        arr = outputs[names[0]]
        it, dims = _values(names[0], arr, 2 - 1), arr.shape[1:]   # items sit inside 2 containers
        items = ", ".join(_nest(it, dims, 2, True) for _ in range(batch))
    else:
        its = {n: _values(n, outputs[n], 3 - 1) for n in names}   # values sit inside 3 containers
        objs = []
        for _ in range(batch):
            cells = ",".join(_nl(3) + json_string(n) + ": " + _nest(its[n], outputs[n].shape[1:], 3, True)
                             for n in names)
            objs.append(_nl(2) + "{" + cells + _nl(2) + "}")
        items = ",".join(objs)
    return '{\n    "predictions": [' + items + ("\n    ]" if batch > 0 else "]") + "\n}"


def classify_response(results: list[list[tuple[str, float]]]) -> str:
    """``MakeJsonFromClassificationResult`` (json_tensor.cc:1068-1102): each example's
    ``[[label, score], ...]`` with kFormatSingleLineArray, so examples follow each other on one
    line, and the ``results`` array closes on its own line."""
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ["[" + ", ".join("[" + json_string(label) + ", " + format_float(score) + "]"
                            for label, score in row) + "]" for row in results]
    return '{\n    "results": [' + ", ".join(rows) + "\n    ]\n}"


def regress_response(values: list[float]) -> str:
    """``MakeJsonFromRegressionResult`` (json_tensor.cc:1104-1127): ``{"results": [v1, v2]}``,
    all on one line (the option is set before the array starts)."""
    if not values:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{\n    "results": [' + ", ".join(format_float(v) for v in values) + "]\n}"


def error_body(message: str) -> str:
    """``MakeJsonFromStatus`` (json_tensor.cc:1129-1139): a PrettyWriter object,
    ``{\\n    "error": "<message>"\\n}``, the message escaped as rapidjson escapes it."""
    return '{\n    "error": ' + json_string(message) + "\n}"
