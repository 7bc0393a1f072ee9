"""A request body parsed as TF Serving's rapidjson parses it (``ParseJson`` in json_tensor.cc).

Python's ``json`` does the parsing; this module adds what rapidjson does differently: its error
texts and offsets (``JSON Parse error: ... at offset: N``), its number limits (past DBL_MAX an
error, integers past uint64 kept as doubles), the special numbers of rapidjson 1.1.0's
``kParseNanAndInfFlag`` (``NaN``, ``Inf``, ``Infinity``, each with an optional ``-``; Python's
json takes ``NaN``, ``Infinity`` and ``-Infinity`` only), its refusal of a lone high surrogate escape,
``kParseStopWhenDoneFlag`` (text after the root value is ignored) and ``FindMember`` (a repeated
top-level key: the first value), plus the member count a ``{"b64": ...}`` object is checked by.
"""
from __future__ import annotations

import json
import math
import re
import sys
from collections import deque

from serving_host.json_text import json_value_error, utf8_len
from serving_host.status import ServingError, invalid_argument

DBL_MAX_INT = int(sys.float_info.max)

_PARSE_MESSAGES = {  # Python's json messages -> rapidjson's GetParseError_En texts (the rest:
    "Extra data": "The document root must not be followed by other values.",     # _rapidjson_error)
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Invalid \\escape": "Invalid escape character in string.",
}


_NUMBER_END_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")  # a number token ending here
_CONTAINER_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)


def _rapidjson_error(text: str, py_msg: str, pos: int) -> tuple[str, int]:
    """rapidjson 1.1.0's GetParseError_En text and error position (in characters of ``text``;
    the caller counts them in bytes, as rapidjson does) for Python's error ``py_msg`` at ``pos``
    (reader.h: ParseStringToStream, ParseNumber, ParseTrue/False/Null, HandleError)."""
    c = text[pos:pos + 1]
    if py_msg.startswith("Invalid control character"):    # a raw byte < 0x20 in a string
        if c == "\0":
            return "Missing a closing quotation mark in string.", pos
        return "Invalid escape character in string.", pos
    if py_msg.startswith("Unterminated string"):          # rapidjson reads to the end first
        return "Missing a closing quotation mark in string.", len(text)
    if py_msg.startswith("Invalid \\uXXXX escape"):        # rapidjson: the escape's backslash
        return "Incorrect hex digit after \\u escape in string.", text.rfind("\\", 0, pos + 1)
    if py_msg.startswith("Expecting ',' delimiter"):
        start = pos
        while start > 0 and text[start - 1] in "0123456789.eE+-":
            start -= 1
        number = _NUMBER_END_RE.match(text, start, pos)
        if number is not None and number.group(2) is None:
            if c == "." and number.group(1) is None:      # "1." / "1.e5": no digit after the '.'
                return "Miss fraction part in number.", pos + 1
            if c in ("e", "E"):                           # "1e" / "1.5E+": no digit in the exponent
                return "Miss exponent in number.", pos + 1 + (text[pos + 1:pos + 2] in ("+", "-"))
        if _innermost_container(text, pos) == "[":
            return "Missing a comma or ']' after an array element.", pos
        return "Missing a comma or '}' after an object member.", pos
    if py_msg.startswith("Expecting value"):
        if c in (",", ":", "]", "}", "\0") and not text[:pos].strip(" \t\n\r"):
            return "The document is empty.", pos          # HandleError(IterativeParsingStartState)
        return "Invalid value.", _invalid_value_end(text, pos)
    msg = next((m for k, m in _PARSE_MESSAGES.items() if py_msg.startswith(k)), py_msg)
    return msg, pos


def _innermost_container(text: str, pos: int) -> str:
    """The bracket of the array or object open at ``pos`` (``text[:pos]`` is valid JSON so far)."""
    stack = []
    for m in _CONTAINER_RE.finditer(text, 0, pos):
        t = m.group(0)
        if t in "[{":
            stack.append(t)
        elif t in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _invalid_value_end(text: str, pos: int) -> int:
    """Where rapidjson stops on an invalid value starting at ``pos``: ParseTrue/False/Null take the
    first letter and every matching one after it; ParseNumber a ``-``, then (kParseNanAndInfFlag)
    the letters of ``NaN`` or ``Inf``/``Infinity`` it can match."""
    def take(i: int, word: str) -> int:
        for ch in word:
            if text[i:i + 1] != ch:
                break
            i += 1
        return i

    c = text[pos:pos + 1]
    for word in ("true", "false", "null"):
        if c == word[0]:
            return take(pos + 1, word[1:])
    i = pos + (c == "-")
    if text[i:i + 1] in ("N", "I"):
        j = take(i, "NaN")
        if j - i < 3:
            k = take(j, "Inf")
            j = take(k, "inity") if k - j == 3 and text[k:k + 1] == "i" else k
        return j
    return i


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


def _bom_length(body: bytes) -> int:
    """The bytes rapidjson 1.1.0's ``EncodedInputStream<UTF8<>, MemoryStream>`` skips before it
    parses (encodedstream.h): a 0xEF, then a 0xBB, then a 0xBF, each taken if it comes next (a
    UTF-8 byte order mark, or any part of it). Error offsets still count them."""
    n = 0
    for byte in (0xEF, 0xBB, 0xBF):
        if body[n:n + 1] == bytes((byte,)):
            n += 1
    return n


def parse_json(body: bytes):
    """``ParseJson``: the request body must be one JSON object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    skipped = _bom_length(body)
    try:
        doc = _parse(body[skipped:])
    except ServingError as exc:
        if skipped and (m := re.fullmatch(r"(JSON Parse error: .*) at offset: (\d+)", exc.message, re.S)):
            raise invalid_argument(f"{m.group(1)} at offset: {int(m.group(2)) + skipped}") from None
        raise
    return doc


def _parse(body: bytes):
    """``parse_json`` of the body after its byte order mark (offsets from there)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # rapidjson never checks the encoding: a byte that is not UTF-8 outside a string stops it
        # as the end of the body would, with the same error at the same offset, and one after the
        # root value is never read (kParseStopWhenDoneFlag). So the bytes before it answer as the
        # body does, but where they end inside a string (rapidjson would keep the byte: refused
        # here, serving_host/README.md "hostile JSON").
        head = body[:exc.start]
        if not head.strip(b" \t\n\r"):      # the byte is read as a number's start (Tokenize)
            raise invalid_argument(f"JSON Parse error: Invalid value. at offset: {len(head)}") from None
        try:
            return _parse(head)
        except ServingError as err:
            if err.message != f"JSON Parse error: Missing a closing quotation mark in string. at offset: {len(head)}":
                raise
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if not text.strip(" \t\n\r"):              # rapidjson's whitespace (SkipWhitespace)
        raise invalid_argument("JSON Parse error: The document is empty. at offset: "
                               f"{len(text)}")
    # rapidjson as TF Serving calls it (json_tensor.cc, kParseStopWhenDoneFlag): parsing stops at
    # the end of the root value, so text after it is ignored; FindMember finds a repeated key's
    # first value.
    text_read, parse_constant = _special_numbers(text)
    if parse_constant is None and not _may_hold_huge_number(body):
        decoder = _PLAIN_DECODER    # no number can pass DBL_MAX: the scanner's own int() and float()
    else:
        decoder = json.JSONDecoder(parse_int=lambda t: _parse_int(t, text),
                                   parse_float=lambda t: _parse_float(t, text),
                                   parse_constant=parse_constant, object_pairs_hook=_object)
    start = len(text_read) - len(text_read.lstrip(" \t\n\r"))
    try:
        doc, end = decoder.raw_decode(text_read, start)
    except json.JSONDecodeError as exc:
        in_string = exc.msg.startswith(_STRING_ERRORS)
        start = _string_start(text, exc.pos) if in_string else exc.pos
        _check_surrogates(text, start)
        found = _string_error(text, start) if in_string else None
        msg, pos = found or _rapidjson_error(text, exc.msg, exc.pos)
        raise invalid_argument(f"JSON Parse error: {msg} at offset: {utf8_len(text[:pos])}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: Terminate parsing due to Handler error.") from None
    _check_surrogates(text, end)
    if not isinstance(doc, dict):
        raise json_value_error(doc, "Is not object")
    return dict(doc.first) if doc.first is not None else doc


# A text without a run of 200 digits nor an exponent of 3 digits holds no number past DBL_MAX
# (at most 10**200 * 10**99) nor an integer int() would refuse: its numbers need no checks, so the
# decoder keeps the C scanner's own int() and float() instead of two Python calls per number (a
# predict request is mostly numbers). Any other text takes the checked path, strings included (a
# false alarm only costs the checks). A regex over the text cost more than the calls it saves.
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 101 if i == 69 else i for i in range(256))  # 0-9 -> 0, E -> e
_LONG_RUN = b"0" * 200
_PLAIN_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def _may_hold_huge_number(body: bytes) -> bool:
    """Whether the UTF-8 ``body`` has a run of 200 digits or an ``e``/``E`` (signs dropped) followed
    by 3 digits: False means none of its numbers can pass DBL_MAX."""
    t = body.translate(_DIGITS_AS_ZERO, b"+-")
    if _LONG_RUN in t:
        return True
    i = t.find(b"e")
    while i >= 0:
        if t[i + 1:i + 4] == b"000":
            return True
        i = t.find(b"e", i + 1)
    return False


_SPECIAL_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|(-?)(NaN|Infinity|Inf(?!i))', re.S)  # strings skipped whole
_SPECIAL_VALUES = {"NaN": math.nan, "Infinity": math.inf, "Inf": math.inf}


def _special_numbers(text: str):
    """rapidjson 1.1.0's ParseNumber with kParseNanAndInfFlag (reader.h) takes ``NaN``, ``Inf`` and
    ``Infinity`` after an optional ``-``. Python's json takes ``NaN``, ``Infinity``, ``-Infinity``
    only, so ``Inf``, ``-Inf`` and ``-NaN`` outside strings are given to it as ``NaN`` padded
    with spaces after it to the same length (error offsets stay those of the text as sent: a
    misplaced ``-Inf`` is reported at its ``-``, as rapidjson reports it), and the values
    of all special numbers, in document order (the order the decoder meets them), are what
    ``parse_constant`` answers. Returns the text to decode and the ``parse_constant`` to use."""
    if "-NaN" not in text and text.count("Inf") == text.count("Infinity"):
        return text, None
    values: deque = deque()
    pieces, last = [], 0
    for m in _SPECIAL_RE.finditer(text):
        if m.group(2) is None:
            continue
        value = _SPECIAL_VALUES[m.group(2)]
        values.append(-value if m.group(1) and m.group(2) != "NaN" else value)
        token = m.group(0)
        if token not in ("NaN", "Infinity", "-Infinity"):
            pieces += [text[last:m.start()], "NaN".ljust(len(token))]
            last = m.end()
    pieces.append(text[last:])
    return "".join(pieces), lambda _name: values.popleft()


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
        msg, _ = _u_escape(text, pending.start())
        offset = utf8_len(text[:pending.start()])
        raise invalid_argument(f"JSON Parse error: {msg} at offset: {offset}")


# Python's json errors inside a string: rapidjson's ParseStringToStream decides what is reported.
_STRING_ERRORS = ("Unterminated string", "Invalid \\uXXXX escape", "Invalid \\escape", "Invalid control character")
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_HEX4_RE = re.compile(r"[0-9a-fA-F]{4}")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')


def _string_start(text: str, pos: int) -> int:
    """The opening quote of the string holding ``pos`` (``text`` before it valid JSON so far)."""
    start = pos
    for m in _STRING_RE.finditer(text):
        if m.start() > pos:
            break
        start = m.start()
    return start


def _u_escape(text: str, i: int) -> tuple[str | None, int]:
    """A ``\\u`` escape at ``i`` as reader.h ParseStringToStream reads it: (the error, reported at
    ``i``, or None; where reading goes on). A high surrogate must be followed at once by ``\\u``
    (else "surrogate pair ... invalid"), then 4 hex digits (else "Incorrect hex digit", also at ``i``),
    then a low surrogate. The end of the body reads as ``\\0``."""
    if not _HEX4_RE.fullmatch(text, i + 2, i + 6):
        return "Incorrect hex digit after \\u escape in string.", i
    if not 0xD800 <= int(text[i + 2:i + 6], 16) <= 0xDBFF:
        return None, i + 6
    if text[i + 6:i + 8] != "\\u":
        return "The surrogate pair in string is invalid.", i
    if not _HEX4_RE.fullmatch(text, i + 8, i + 12):
        return "Incorrect hex digit after \\u escape in string.", i
    if not 0xDC00 <= int(text[i + 8:i + 12], 16) <= 0xDFFF:
        return "The surrogate pair in string is invalid.", i
    return None, i + 12


def _string_error(text: str, quote: int) -> tuple[str, int] | None:
    """rapidjson 1.1.0's ParseStringToStream over the string opened at ``quote``: (its error text,
    position in characters) or None. At the end of the body it reads ``\\0``: a ``\\`` there is
    an invalid escape (at the ``\\``), otherwise the closing quote is missing (at the end)."""
    i, n = quote + 1, len(text)
    while True:
        c = text[i] if i < n else "\0"
        if c == '"':
            return None
        if c == "\\":
            e = text[i + 1:i + 2]
            if e and e in _SIMPLE_ESCAPES:
                i += 2
            elif e == "u":
                error, i2 = _u_escape(text, i)
                if error:
                    return error, i
                i = i2
            else:
                return "Invalid escape character in string.", i
        elif c < " ":
            if c == "\0":
                return "Missing a closing quotation mark in string.", i
            return "Invalid escape character in string.", i
        else:
            i += 1


_STRING_OR_NUMBER_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?'
                                  r"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?", re.S)


def _too_big(token: str, text: str) -> ServingError:
    """rapidjson's kParseErrorNumberTooBig (a number past DBL_MAX) at the number's start, in bytes
    (``token``, or its first characters, is the first number outside strings the decoder met that
    is too big: an earlier one of the same text would have stopped it there)."""
    start = next((m.start() for m in _STRING_OR_NUMBER_RE.finditer(text)
                  if m.group(0)[:1] != '"' and m.group(0).startswith(token)), 0)
    return invalid_argument("JSON Parse error: Number too big to be stored in double. at offset: "
                            f"{utf8_len(text[:start])}")


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
