"""JSON text as rapidjson writes it, for TF Serving's messages and answers.

``json_string`` (rapidjson's string escapes) and ``INDENT`` (the PrettyWriter's) are shared by the
response writer; ``debug_text`` is ``JsonValueToDebugString``, the echo of a parsed value that
json_tensor.cc's error messages quote (``json_value_error``: ``JSON Value: <echo> ...``), with
rapidjson's double text (``dtoa``) and JSON type names (``json_type``); ``truncate`` keeps other
echoed input short. Kept apart so the parser, the request decoder and the response writer all
quote values the same way.
"""
from __future__ import annotations

import math
import re

from serving_host.status import ServingError, invalid_argument
from serving_host.tf_dtypes import INT64_MIN, UINT64_MAX

MAX_ECHO_CHARS = 1024       # truncate()'s default (paths echoed by rest.py)
MAX_DEBUG_BYTES = 256       # json_tensor.cc:225 kMaxJsonDebugStringBytes


def json_type(v) -> str:
    """The JSON type name TF Serving's messages give a value: Null, True, False, Object, Array,
    String or Number."""
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
INDENT = "    "   # PrettyWriter's default indent: 4 spaces per open object/array


def json_string(s: str) -> str:
    """A JSON string as rapidjson's ``Writer::String`` writes it."""
    return '"' + s.translate(_ESCAPES) + '"'


# protobuf's C++ JSON writer (json/internal/writer.cc ``MustEscape``), which TF Serving's
# MessageToJsonString writes the status and metadata answers with: UTF-8 as it is, but for the
# control characters, '"' and '\\' (as Python's json writes them) and '<', '>', DEL, the C1 controls
# and the invisible code points below, each ``\\u`` + 4 lower-case hex digits (a code point past
# U+FFFF as its surrogate pair).
_PROTO_ESCAPED = ([0x3C, 0x3E, 0xAD, 0x6DD, 0x70F, 0x17B4, 0x17B5, 0xFEFF, 0xFFF9, 0xFFFA, 0xFFFB, 0xE0001]
                  + [c for lo, hi in ((0x7F, 0x9F), (0x600, 0x603), (0x200B, 0x200F), (0x2028, 0x202E),
                                      (0x2060, 0x2064), (0x206A, 0x206F), (0x1D173, 0x1D17A),
                                      (0xE0020, 0xE007F)) for c in range(lo, hi + 1)])


def _u_escape(c: int) -> str:
    if c < 0x10000:
        return f"\\u{c:04x}"
    c -= 0x10000
    return f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}"


_PROTO_ESCAPES = {c: _u_escape(c) for c in _PROTO_ESCAPED}


def message_json(message, **options) -> str:
    """``MessageToJsonString`` as TF Serving's C++ protobuf writes it (non-ASCII text as UTF-8,
    ``<`` as ``\\u003c``), where Python's ``MessageToJson`` escapes every non-ASCII character.
    ``options``: ``MessageToJson``'s. The characters escaped here occur only inside strings."""
    from google.protobuf import json_format

    return json_format.MessageToJson(message, ensure_ascii=False, **options).translate(_PROTO_ESCAPES)


def protobuf_utf8(data: bytes) -> str:
    """Bytes put in a string field, as C++ protobuf's JSON writer reads them (``ConsumeUtf8Scalar``,
    protobuf 6.31, TF Serving 2.21's): each UTF-8 scalar as it is, each sequence that does not decode
    one space (a lead byte's sequence ends at the first byte that does not continue it, that byte
    included). A surrogate code point, which it writes as its bytes, is U+FFFD here (a Python
    string for a protobuf field cannot hold one)."""
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        i += 1
        ones = 8 - (lead ^ 0xFF).bit_length()          # countl_one of the lead byte
        if ones == 0:
            out.append(chr(lead))
            continue
        if ones not in (2, 3, 4):
            out.append(" ")
            continue
        scalar, ok = lead & ((1 << (7 - ones)) - 1), True
        for _ in range(ones - 1):
            if i >= n:
                ok = False
                break
            nxt = data[i]
            i += 1
            if nxt >> 6 != 2:
                ok = False
                break
            scalar = (scalar << 6) | (nxt & 0x3F)
        if not ok or scalar > 0x10FFFF:
            out.append(" ")
        elif 0xD800 <= scalar <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(chr(scalar))
    return "".join(out)


_SURROGATES = re.compile("[\ud800-\udfff]")


def status_text(message: str) -> str:
    """A status message as TF Serving's status answers show it: the bytes of a name that is not
    UTF-8 (a file's, which Python keeps as lone surrogates, ``surrogateescape``) read as C++
    protobuf's JSON writer reads them (``protobuf_utf8``: a space each). A protobuf string field,
    and so the status answer, cannot hold a lone surrogate."""
    if not _SURROGATES.search(message):
        return message
    data = b"".join(c.encode("utf-8", "surrogateescape" if "\udc80" <= c <= "\udcff" else "surrogatepass")
                    for c in message)
    return protobuf_utf8(data)


def utf8_len(s: str) -> int:
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
        size += utf8_len(text)

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
                put(INDENT * len(stack))
        level[1] += 1

    def end(closer: str) -> None:        # EndObject / EndArray
        if size >= max_bytes:
            raise _Full
        level = stack.pop()
        if closer == "}" and level[1]:
            put("\n" + INDENT * len(stack))
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


def json_value_error(doc, *parts: str) -> ServingError:
    return invalid_argument("JSON Value: " + debug_text(doc) + " " + "".join(parts))
