"""A request body read as libevent reads it: Content-Length, chunked with its trailer, gzip.

``Body`` is what the REST worker hands ``rest.RestApi`` to read on demand; the size rules are
libevent's (``evhttp_get_body_length``, ``evhttp_handle_chunked_read``, ``evhttp_read_trailer``)
with this server's own bounds (``MAX_HEAD_BYTES``, the body limit), and a gzip body is
uncompressed as TF Serving's ``EvHTTPRequest::ReadRequestGzipBytes`` does.
"""
from __future__ import annotations

import logging
import re
import time

from serving_host.rest import BodyTooLarge

log = logging.getLogger("serving_host")

MAX_HEAD_BYTES = 65536 + 100 * 8192  # libevent's max_headers_size: request line, headers and a chunked trailer together

MAX_UNCOMPRESSED_BYTES = 100 * 1024 * 1024   # net_http's ZLib::kMaxUncompressedBytes


def gunzip(data: bytes, limit: int = MAX_UNCOMPRESSED_BYTES) -> bytes:
    """A gzip body uncompressed, as TF Serving's HTTP server does for ``Content-Encoding: gzip``
    (``EvHTTPRequest::ReadRequestGzipBytes``, on by default): a body that does not uncompress, or
    that would be over ``limit`` bytes, reads as empty (TF Serving logs "Failed to uncompress the
    gzipped body" and hands the handler no body). Bounded: a small bomb never inflates past it."""
    import zlib

    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        log.error("Got zlib error: %s", exc)
        return b""
    if len(out) > limit or not inflater.eof:
        log.error("Failed to uncompress the gzipped body")
        return b""
    return out


_CONTENT_LENGTH_RE = re.compile(r"[ \t\n\v\f\r]*[+-]?([0-9]+)")


def content_length(value: str) -> int:
    """``evhttp_get_body_length``: ``strtoll(value, &endp, 10)`` of the value (leading spaces
    skipped, trailing blanks trimmed), every character used and not negative; "" too is refused.
    ``int()`` took ``1_0`` and Unicode spaces, and an empty header read as no body."""
    m = _CONTENT_LENGTH_RE.fullmatch(value.rstrip(" \t"))
    if not m or (value.lstrip().startswith("-") and int(m.group(1)) != 0):
        raise ValueError(f"illegal Content-Length {value[:20]!r}")
    return int(m.group(1))


class Body:
    """Reads a request body on demand, at most ``limit`` bytes; remembers if it was read. A
    ``Content-Encoding`` holding ``gzip`` is uncompressed (``gunzip``)."""

    def __init__(self, headers, rfile, limit: int, head_size: int = 0):
        self.rfile, self.limit, self.head_size = rfile, limit, head_size
        self.gzip = "gzip" in headers.get("Content-Encoding", "")     # absl::StrContains: case matters
        # evhttp_get_body: chunked only if the whole (trimmed) value is "chunked", any case; else
        # Content-Length as evhttp_get_body_length reads it: strtoll, all of it, not negative
        self.chunked = headers.get("Transfer-Encoding", "").strip(" \t").lower() == "chunked"
        length = None if self.chunked else headers.get("Content-Length")
        self.length = 0 if length is None else content_length(length)  # ValueError -> 400
        self.consumed = not self.chunked and self.length == 0
        self.arrived: float | None = None

    def read(self) -> bytes:
        data = self._read()
        self.arrived = time.monotonic()      # the whole body is here; uncompressing is latency
        return gunzip(data) if self.gzip and data else data

    def drain(self) -> None:
        """Read the body and drop it, 64 KiB at a time, bounded as ``read``: libevent reads every
        body before the handler runs, so an answer that needed none (an unknown model) keeps the
        connection, and a body over the limit is a 413 whatever it was sent to."""
        self._read(keep=False)

    def _read(self, keep: bool = True) -> bytes:
        self.consumed = True
        if self.chunked:
            return self._read_chunked(keep)
        if self.length > self.limit:
            self.consumed = False
            raise BodyTooLarge()
        return self._take(self.length, keep)

    def _take(self, n: int, keep: bool) -> bytes:
        """The next ``n`` bytes (``keep`` False: read and dropped in pieces, b"" returned)."""
        if keep:
            data = self.rfile.read(n) if n else b""
            if len(data) < n:
                raise ConnectionError("client closed the connection inside the body")
            return data
        while n > 0:
            got = len(self.rfile.read(min(n, 65536)))
            if not got:
                raise ConnectionError("client closed the connection inside the body")
            n -= got
        return b""

    def _read_chunked(self, keep: bool = True) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection inside the body")
            if line in (b"\r\n", b"\n"):     # libevent skips an empty line; counted against the limit
                total += len(line)
                if total > self.limit:
                    self.consumed = False
                    raise BodyTooLarge()
                continue
            size = chunk_size(line)
            if size == 0:
                self._skip_trailer()
                return b"".join(chunks)
            total += size
            if total > self.limit:
                self.consumed = False
                raise BodyTooLarge()
            chunks.append(self._take(size, keep))
            self.rfile.readline(3)

    def _skip_trailer(self) -> None:
        """The trailer after the last chunk, up to its empty line, as libevent reads it
        (``evhttp_read_trailer``): ``evhttp_parse_headers_`` adds its lines to the same
        ``headers_size`` as the request line and headers, so head and trailer share one
        ``max_headers_size`` (here ``MAX_HEAD_BYTES``, with ``head_size`` spent); a line over it,
        or one that is not a header (no ``:``, not a continuation), is answered 413. TF Serving
        leaves the size unlimited (its event loop holds no thread while it reads); here it is
        bounded so a trailer that never ends cannot hold a worker. The client closing inside it
        is no request (libevent frees the connection without an answer)."""
        size, at_start = self.head_size, True
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection inside the trailer")
            if at_start and line in (b"\r\n", b"\n"):
                return
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise BodyTooLarge()
            if at_start and line[:1] not in (b" ", b"\t") and b":" not in line:
                raise BodyTooLarge()        # DATA_CORRUPTED, failed as EVREQ_HTTP_DATA_TOO_LONG
            at_start = line.endswith(b"\n")


_CHUNK_SIZE_RE = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(?:0[xX])?([0-9a-fA-F]+)(?: .*)?", re.S)


def chunk_size(line: bytes) -> int:
    """A chunk-size line as libevent reads it (``evhttp_handle_chunked_read``): ``strtoll(…, 16)``
    — blanks, a sign, ``0x`` — followed by the end of the line or a space, and not negative;
    anything else is corrupt data (``;ext`` included). ``int(…, 16)`` took ``-1``, and ``read(-1)``
    then read until the client closed, past the body limit. ValueError: a malformed chunk."""
    text = line.rstrip(b"\r\n")
    m = _CHUNK_SIZE_RE.fullmatch(text)
    if not m or (m.group(1) == b"-" and int(m.group(2), 16) != 0):
        raise ValueError(f"malformed chunk size {text[:20]!r}")
    return int(m.group(2), 16)
