"""The request target as TF Serving reads it: libevent's ``evhttp_uri_parse``, then its path.

A pure function on text (``uri_path``), so the transport and its tests share libevent's rules.
"""
from __future__ import annotations

import re
import socket

# evhttp_uri_parse (libevent 2.1.12 http.c, flags 0: RFC 3986 conformant), as TF Serving's
# ParsedEvRequest::decode calls it on the request target; ASCII classes only (EVUTIL_IS*_).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUBDELIMS = frozenset("!$&'()*+,;=")
_PCHARS = _UNRESERVED | _SUBDELIMS | frozenset(":@/")
_HEX = frozenset("0123456789abcdefABCDEF")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _pct(s: str, i: int) -> bool:
    return s[i] == "%" and s[i + 1:i + 2] in _HEX and s[i + 2:i + 3] in _HEX


def _end_of_path(s: str, i: int, query_chars: bool) -> int:
    """``end_of_path``: past pchar / "/" (and "?" in a query or fragment) and %XX."""
    while i < len(s):
        if s[i] in _PCHARS or (query_chars and s[i] == "?"):
            i += 1
        elif _pct(s, i):
            i += 3
        else:
            return i
    return i


def _chars_ok(s: str, allowed: frozenset) -> bool:
    i = 0
    while i < len(s):
        if s[i] in allowed:
            i += 1
        elif _pct(s, i):
            i += 3
        else:
            return False
    return True


def _authority_ok(a: str) -> bool:
    """``parse_authority``: [userinfo "@"] host [":" port], host a reg-name or an IP literal."""
    if not a:
        return True
    at = a.find("@")
    if at >= 0:
        if not _chars_ok(a[:at], _UNRESERVED | _SUBDELIMS | frozenset(":")):
            return False
        a = a[at + 1:]
    m = re.fullmatch(r"(.*?):([0-9]*)", a, re.S)
    if m:
        if m.group(2) and int(m.group(2)) > 65535:
            return False
        a = m.group(1)
    if a.startswith("[") and len(a) >= 2 and a.endswith("]"):
        inner = a[1:-1]
        if len(a) < 3:
            return False
        if inner.startswith("v"):           # IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
            return bool(re.fullmatch(r"v[0-9a-fA-F]+\.[A-Za-z0-9._~!$&'()*+,;=:-]*", inner))
        try:
            socket.inet_pton(socket.AF_INET6, inner)
        except (OSError, ValueError):
            return False
        return len(inner) < 64
    return _chars_ok(a, _UNRESERVED | _SUBDELIMS)


def uri_path(target: str) -> str | None:
    """The path TF Serving matches (``EvHTTPRequest::uri_path()``): the request target parsed by
    ``evhttp_uri_parse``, then its path, ``?query`` and ``#fragment`` as written (not decoded);
    None where libevent refuses the target (TF Serving answers 400 Bad Request)."""
    rest = target.split("\0", 1)[0]          # a C string
    colon = rest.find(":")
    scheme = colon >= 0 and _SCHEME_RE.fullmatch(rest, 0, colon) is not None
    if scheme:
        rest = rest[colon + 1:]
    authority = rest.startswith("//")
    if authority:
        end = next((i for i in range(2, len(rest)) if rest[i] in "?#/"), len(rest))
        if not _authority_ok(rest[2:end]):
            return None
        rest = rest[end:]
    i = _end_of_path(rest, 0, False)
    path = rest[:i]
    for mark in "?#":                       # the query, then the fragment, each with its mark
        if rest[i:i + 1] == mark:
            i = _end_of_path(rest, i + 1, True)
    if i != len(rest) or (not authority and path.startswith("//")) \
            or (authority and path and not path.startswith("/")):
        return None
    if not scheme and ":" in path.split("/", 1)[0]:     # path_matches_noscheme
        return None
    return rest
