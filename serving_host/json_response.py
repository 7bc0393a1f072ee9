"""Servable results written as TF Serving's JSON answers, byte for byte (``MakeJsonFromTensors``,
``MakeJsonFromClassificationResult``, ``MakeJsonFromRegressionResult``, ``MakeJsonFromStatus``
in json_tensor.cc).

``predictions`` (row) / ``outputs`` (columnar) / ``results`` laid out as rapidjson's PrettyWriter
lays them out, numbers with TF Serving's formatting (float32 printed with the shortest text that
round-trips, whole numbers with a trailing ``.0``, ``NaN``/``Infinity``), ``{"b64": ...}`` for
string outputs whose name ends in ``_bytes``, and the ``{"error": ...}`` body.
"""
from __future__ import annotations

import base64
import math
from itertools import islice

import numpy as np

from serving_host.json_request import COLUMNAR
from serving_host.json_text import INDENT, json_string
from serving_host.status import invalid_argument

# numpy dtype name -> DataTypeString, for outputs AddSingleValueAndAdvance cannot write.
_NUMPY_TF_NAMES = {"float16": "half", "complex64": "complex64", "complex128": "complex128",
                   "uint16": "uint16", "bfloat16": "bfloat16"}


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


# The writers below produce, byte for byte, what json_tensor.cc's rapidjson PrettyWriter calls
# produce (4-space indent per open container; kFormatSingleLineArray puts array elements on one
# line, ", " apart, and the closing ']' right after the last one, but never changes objects).
def _nl(depth: int) -> str:
    return "\n" + INDENT * depth


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
        # writer.String: the bytes unchecked; those that are not UTF-8 kept as lone surrogates,
        # which predict_body turns back into them
        return json_string(bytes(v).decode("utf-8", "surrogateescape"))
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
# The session hands a quantized tensor back as plain integers: its graph type tells it apart
_QUANTIZED = {"qint8", "quint8", "qint16", "quint16", "qint32"}


def _check_writable(arr: np.ndarray, tf_type: str | None = None) -> None:
    """AddSingleValueAndAdvance writes float, double, int8/16/32/64, uint8/32/64, bool, string;
    any other type is ``Failed to write JSON value for tensor type: <type>`` (:939-947).
    ``tf_type``: the output's DataTypeString in the graph, when known."""
    if tf_type in _QUANTIZED:
        raise invalid_argument(f"Failed to write JSON value for tensor type: {tf_type}")
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


def _values(name: str, arr: np.ndarray, depth: int, tf_type: str | None = None):
    """An iterator over ``arr``'s value texts; ``depth``: containers open around the tensor. The
    type is checked as AddSingleValueAndAdvance checks it, at a value: a tensor with none (a 0 in
    its shape) is written whatever its type (``[]``)."""
    if arr.size == 0:
        return iter(())
    _check_writable(arr, tf_type)
    return iter(_flat_texts(arr, _is_bytes_tensor(name, arr), depth + arr.ndim))


def predict_response(outputs: dict[str, np.ndarray], fmt: str, types: dict[str, str] | None = None) -> str:
    """``MakeJsonFromTensors`` (json_tensor.cc:1052-1066): ``predictions`` (row, :975-1026) or
    ``outputs`` (columnar, :1028-1048), laid out as TF Serving's PrettyWriter lays them out.

    Row format: each item is written with kFormatSingleLineArray (:1009) — one output gives
    ``[2.5, 3.0`` + ``\n    ]``; several outputs give one multi-line object per item (the
    object starts before the option is set, :1008). Columnar format never sets the option
    (:1030-1047): every array element is on its own line. Outputs in name order (TF Serving's
    protobuf Map order is unspecified). ``types``: each output's DataTypeString in the graph
    (a quantized one is refused as TF Serving refuses it)."""
    types = types or {}
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            arr = outputs[names[0]]
            body = _nest(_values(names[0], arr, 1, types.get(names[0])), arr.shape, 1, False)
        else:
            parts = []
            for n in names:
                arr = outputs[n]
                values = _values(n, arr, 2, types.get(n))
                parts.append(_nl(2) + json_string(n) + ": " + _nest(values, arr.shape, 2, False))
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
        it, dims = _values(names[0], arr, 2 - 1, types.get(names[0])), arr.shape[1:]   # items sit inside 2 containers
        items = ", ".join(_nest(it, dims, 2, True) for _ in range(batch))
    else:
        its = {n: _values(n, outputs[n], 3 - 1, types.get(n)) for n in names}   # values sit inside 3 containers
        objs = []
        for _ in range(batch):
            cells = ",".join(_nl(3) + json_string(n) + ": " + _nest(its[n], outputs[n].shape[1:], 3, True)
                             for n in names)
            objs.append(_nl(2) + "{" + cells + _nl(2) + "}")
        items = ",".join(objs)
    return '{\n    "predictions": [' + items + ("\n    ]" if batch > 0 else "]") + "\n}"


def classify_response(results: list[list[tuple[bytes | str, float]]]) -> str:
    """``MakeJsonFromClassificationResult`` (json_tensor.cc:1068-1102): each example's
    ``[[label, score], ...]`` with kFormatSingleLineArray, so examples follow each other on one
    line, and the ``results`` array closes on its own line. ``writer.String`` writes a label's
    bytes as they are, valid UTF-8 or not: a bytes label's other bytes are kept here as lone
    surrogates (``surrogateescape``), which ``classify_body`` turns back into those bytes."""
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ["[" + ", ".join("[" + json_string(_label_text(label)) + ", " + format_float(score) + "]"
                            for label, score in row) + "]" for row in results]
    return '{\n    "results": [' + ", ".join(rows) + "\n    ]\n}"


def predict_body(outputs: dict[str, np.ndarray], fmt: str, types: dict[str, str] | None = None) -> bytes:
    """The predict answer's bytes: ``predict_response`` with each string's bytes as they were."""
    return predict_response(outputs, fmt, types).encode("utf-8", "surrogateescape")


def _label_text(label: bytes | str) -> str:
    return label.decode("utf-8", "surrogateescape") if isinstance(label, bytes) else label


def classify_body(results: list[list[tuple[bytes | str, float]]]) -> bytes:
    """The classify answer's bytes: ``classify_response`` with each label's bytes as they were."""
    return classify_response(results).encode("utf-8", "surrogateescape")


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
