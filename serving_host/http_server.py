"""The HTTP/1.1 server of the REST API (keep-alive), with edges that hold.

``RestServer`` is the transport, shaped like TF Serving's libevent server so hostile clients
cannot take it down: one selector thread holds idle and keep-alive connections (no thread
each), a fixed pool of ``num_threads`` workers runs requests, every socket has a timeout
(a stalled or idle connection is closed after it), a body over ``max_body_bytes`` gets 413
without being read, and the servable is resolved before the body is read, so a large POST to an
unknown model is answered 404 and discarded, never held in memory.

Requests under ``/v1/`` go to ``rest.RestApi`` and are answered as ``Content-Type:
application/json``; other paths get libevent's 404. The target and the body are read as libevent
reads them (``http_uri.uri_path``, ``http_body.Body``: chunked and gzip bodies), so that the API
sees what TF Serving's would.
"""
from __future__ import annotations

import email.parser
import email.utils
import errno
import io
import logging
import os
import queue
import re
import select
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from serving_host import metrics
from serving_host.http_body import MAX_HEAD_BYTES, Body
from serving_host.http_uri import uri_path
from serving_host.rest import BodyTooLarge, BodyUnreadable, RestApi

log = logging.getLogger("serving_host")

PATH_RE = re.compile(r"/v1/.*", re.I | re.S)

DEFAULT_NUM_THREADS = 4 * (os.cpu_count() or 1)  # server.h: 4.0 * port::NumSchedulableCPUs()
DEFAULT_SOCKET_TIMEOUT = 30.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 1024
KEEPALIVE_WAIT = 0.002  # seconds a worker with nothing queued waits for a keep-alive's next request
ACCEPT_PAUSE = 0.1  # seconds the listening socket is not watched after an accept failure with nothing to evict
ACCEPT_LOG_INTERVAL = 60.0  # seconds between two "accept failed" lines
LINGER_SECONDS = 2.0  # after answering without reading a body, discard what the client still sends


def _page(status: int, reason: str) -> str:
    """libevent's ``evhttp_send_error()`` page."""
    return (f"<HTML><HEAD>\n<TITLE>{status} {reason}</TITLE>\n</HEAD><BODY>\n<H1>{reason}</H1>\n"
            "</BODY></HTML>\n")


NOT_FOUND_PAGE = _page(404, "Not Found")
BAD_REQUEST_PAGE = _page(400, "Bad Request")
TOO_LARGE_PAGE = _page(413, "Request Entity Too Large")
NOT_IMPLEMENTED_PAGE = _page(501, "Not Implemented")

_HEAD_END_RE = re.compile(rb"\n\r?\n")     # the empty line ending a head (EVBUFFER_EOL_CRLF lines)
class _Handler(BaseHTTPRequestHandler):
    """One per connection, kept across its keep-alive requests (see ``_Connection``)."""
    protocol_version = "HTTP/1.1"
    server_version = "tfserving-local"
    sys_version = ""

    @classmethod
    def attach(cls, sock: socket.socket, address, server: "RestServer", prefix: bytearray) -> "_Handler":
        """Set up without running ``handle()`` (the server drives requests one at a time)."""
        h = cls.__new__(cls)
        h.request, h.client_address, h.server = sock, address, server
        h.setup()
        h.rfile = io.BufferedReader(_Prefixed(sock, prefix), 65536)
        h.close_connection = False
        return h

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.socket_timeout)
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def handle_one_request(self) -> None:
        """http.server's, without its own bound on the request line (64 KiB, answered with its 414
        page): a worker only starts on a whole head, and the head's bound is ``MAX_HEAD_BYTES``
        (libevent's one ``max_headers_size``; TF Serving sets none)."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_HEAD_BYTES + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if self.parse_request():
                getattr(self, "do_" + self.command)()
                self.wfile.flush()
        except TimeoutError as exc:
            self.log_error("Request timed out: %r", exc)
            self.close_connection = True

    def parse_request(self) -> bool:
        """http.server's request line; the header lines as libevent's evhttp_parse_headers_ reads
        them: no bound of their own (http.server answered a line over 64 KiB or over 100 lines with
        its 431 page), a line that is not a header (no ``:``, or a continuation with nothing
        before it) is the 400 page (http.server took it for the end of the headers and dropped the
        rest), and ``Connection`` trimmed, "close" closing and, before HTTP/1.1, a value starting
        "keep-alive" keeping (evhttp_send_done)."""
        rfile, self.rfile = self.rfile, io.BytesIO(b"\r\n")
        try:
            if not super().parse_request():         # the request line, and no headers
                return False
        finally:
            self.rfile = rfile
        lines: list[bytes] = []
        while (line := rfile.readline(MAX_HEAD_BYTES + 1)) not in (b"\r\n", b"\n", b""):
            continuation = line[:1] in (b" ", b"\t")
            if (continuation and not lines) or (not continuation and b":" not in line):
                self.close_connection = True
                self._reply(400, "text/html", BAD_REQUEST_PAGE)
                self._linger()
                return False
            lines.append(line)
        self.headers = email.parser.Parser(_class=self.MessageClass).parsestr(
            b"".join(lines).decode("iso-8859-1"))
        connection = self.headers.get("Connection", "").strip(" \t").lower()
        self.close_connection = connection == "close" or (
            self.request_version < "HTTP/1.1" and not connection.startswith("keep-alive"))
        return True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def _reply(self, status: int, content_type: str, text: str | bytes, *, head: bool = False,
               reason: str | None = None) -> None:
        # a lone low surrogate: as rapidjson writes it; bytes (a classify answer) are sent as they are
        body = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        reason = reason or self.responses.get(status, ("",))[0]
        # evhttp_make_header_response: the answer is in the request's version, and an HTTP/1.0
        # request that asked for keep-alive (and is kept) is told so: a client such as `ab -k`
        # otherwise waits for the server to close the connection
        http10 = getattr(self, "request_version", "") == "HTTP/1.0"
        lines = [f"HTTP/{'1.0' if http10 else '1.1'} {status} {reason}", f"Content-Type: {content_type}"]
        if not http10:      # evhttp_maybe_add_date_header: HTTP/1.1 answers carry the date (RFC 1123)
            lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)
        self.wfile.write(data)
        self.wfile.flush()

    def handle_expect_100(self) -> bool:
        return True     # http.server sent 100 Continue for any request asking: see _expect

    def _expect(self, body: Body, head: bool) -> bool:
        """``Expect`` as evhttp_get_body answers it, for an HTTP/1.1 request with a body (chunked or
        a Content-Length over 0; not HEAD): "100-continue" (any case) is a 100 Continue unless body
        bytes are already here, or 413 at once for a length over the limit; any other expectation
        is its 417 page. False when the request is answered."""
        expect = self.headers.get("Expect")
        if expect is None or self.request_version == "HTTP/1.0" or head or body.consumed:
            return True
        if expect.strip(" \t").lower() != "100-continue":
            status, page = 417, _page(417, "Expectation Failed")
        elif not body.chunked and body.length > body.limit:
            status, page = 413, TOO_LARGE_PAGE
        else:
            try:
                self.connection.settimeout(0)
                early = bool(self.rfile.peek(1))
            except OSError:
                early = False
            finally:
                self.connection.settimeout(self.server.socket_timeout)
            if not early:
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.wfile.flush()
            return True
        self.close_connection = True
        self._reply(status, "text/html", page, reason="Request Entity Too Large" if status == 413 else None)
        self._linger()
        return False

    def _head_size(self) -> int:
        """The bytes of this request's head (request line, header lines, empty line)."""
        return len(self.raw_requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items()) + 2

    def _dispatch(self) -> None:
        server: RestServer = self.server  # type: ignore[assignment]
        head = self.command == "HEAD"
        try:
            body = Body(self.headers, self.rfile, server.max_body_bytes, self._head_size())
        except ValueError:
            self.close_connection = True
            self._reply(400, "text/html", BAD_REQUEST_PAGE)
            self._linger()
            return
        if not self._expect(body, head):
            return
        # uri_path() as TF Serving matches it: the path with its query and fragment (a query is
        # not a parameter there: /v1/models/m?x=1 names the model "m?x=1"), from the target as
        # sent (self.path has leading slashes folded); one libevent refuses is 400 (evhttp_server.cc)
        path = uri_path(self.requestline.split()[1])
        if path is None:
            self.close_connection = True
            self._reply(400, "text/html", BAD_REQUEST_PAGE, head=head)
            self._linger()
            return
        error_page = False
        try:
            if server.metrics_path is not None and urlsplit(path).path == server.metrics_path:
                if path == server.metrics_path:
                    status, ctype, text = 200, "text/plain", metrics.render()
                else:       # http_server.cc ProcessPrometheusRequest
                    status, ctype = 400, "text/plain"
                    text = f"Unexpected path: {path}. Should be {server.metrics_path}"
            elif not PATH_RE.fullmatch(path):     # evhttp_send_error: its page closes the connection
                status, ctype, text = 404, "text/html", NOT_FOUND_PAGE
                self.close_connection = error_page = True
            else:
                status, text = server.api.handle(self.command, path, body.read)
                ctype = "application/json"
            if not body.consumed and not error_page:
                body.drain()        # libevent reads every body first: the connection stays usable
        except BodyTooLarge:
            self.close_connection = True
            self._reply(413, "text/html", TOO_LARGE_PAGE, reason="Request Entity Too Large")
            self._linger()
            return
        except BodyUnreadable as exc:
            self.close_connection = True
            if isinstance(exc.__cause__, ValueError):  # a malformed chunk size: libevent's
                # DATA_CORRUPTED, answered as EVREQ_HTTP_DATA_TOO_LONG (http.c evhttp_read_body)
                self._reply(413, "text/html", TOO_LARGE_PAGE, reason="Request Entity Too Large")
                self._linger()      # the client may still be sending: let it read the answer
            return
        linger = not body.consumed or error_page
        if not body.consumed:
            self.close_connection = True  # the unread body would be taken for the next request
        self._reply(status, ctype, text, head=head)
        if linger:
            self._linger()

    def _linger(self) -> None:
        """Close politely: stop writing, discard what the client still sends (bounded), so it reads
        the answer instead of a connection reset. Nothing is kept: one small buffer is reused."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            buf = bytearray(65536)
            deadline = time.monotonic() + LINGER_SECONDS
            sock.settimeout(0.25)
            while time.monotonic() < deadline:
                try:
                    if sock.recv_into(buf) == 0:
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _dispatch

    def head_too_long(self) -> None:
        """A head over ``MAX_HEAD_BYTES``: libevent's DATA_TOO_LONG from evhttp_parse_firstline_ or
        evhttp_parse_headers_, failed as EVREQ_HTTP_INVALID_HEADER: its 400 page, closing."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"
        self._reply(400, "text/html", BAD_REQUEST_PAGE)
        self._linger()

    def _not_implemented(self) -> None:
        """A method outside evhttp_server.cc's allowed set (``FOO``, ``TRACE``, ``CONNECT``, ``get``):
        libevent's 501 page from evhttp_handle_request, which closes the connection."""
        self.close_connection = True
        self._reply(501, "text/html", NOT_IMPLEMENTED_PAGE)
        self._linger()

    def __getattr__(self, name: str):
        # handle_one_request looks up do_<METHOD>; an unknown one would get Python's own 501 page
        if name.startswith("do_"):
            return self._not_implemented
        raise AttributeError(name)


class _Prefixed(io.RawIOBase):
    """The socket, after the bytes the selector thread already read (the request head)."""

    def __init__(self, sock: socket.socket, prefix: bytearray):
        self.sock, self.prefix = sock, prefix

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int | None:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            del self.prefix[:n]
            return n
        try:
            return self.sock.recv_into(b)
        except (BlockingIOError, InterruptedError):
            return None


class _Connection:
    """A client connection: parked in the selector until its request head has arrived, then
    served by a worker. A client that connects and stalls, or sends its head slowly, holds no
    thread and is closed when its deadline passes; so is a keep-alive one that sends the next
    request's head slowly (a worker never waits for the rest of a head). ``head`` holds the bytes
    not read yet; a head over ``MAX_HEAD_BYTES`` is answered 400 as soon as it is over."""

    def __init__(self, sock: socket.socket, address, server: "RestServer"):
        self.sock = sock
        self.head = bytearray()
        self.handler = _Handler.attach(sock, address, server, self.head)
        self.timeout = server.socket_timeout

    def fill(self) -> str:
        """Read what arrived (selector thread): "ready" with a whole head, "more", or "closed"."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return "more"
        except OSError:
            return "closed"
        if not data:
            return "closed"
        self.head += data
        return self._state(len(self.head) - len(data))

    def _state(self, scanned: int = 0) -> str:
        """"ready" (a whole head), "too_long" (a head over the bound, whole or not) or "more"."""
        m = _HEAD_END_RE.search(self.head, max(0, scanned - 2))
        if (m.end() if m else len(self.head)) > MAX_HEAD_BYTES:
            return "too_long"
        return "ready" if m else "more"

    def serve(self, may_wait) -> bool:
        """Answer the requests that are ready; True if the connection stays open.

        A keep-alive client usually sends its next request at once: while ``may_wait()`` (no
        other connection waits for a worker) wait ``KEEPALIVE_WAIT`` for it here rather than
        hand the connection back to the selector and take it again.
        """
        h = self.handler
        state = self._state()
        while True:
            if state == "too_long":
                h.head_too_long()
                return False
            h.handle_one_request()  # a socket timeout inside sets close_connection
            if h.close_connection:
                return False
            state = self._unread()
            if state == "more" and may_wait() and self._next_arrives():
                state = self.fill()
            if state == "closed":
                return False
            if state == "more":
                return True     # the selector waits for the rest of the head, not a worker

    def _next_arrives(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], KEEPALIVE_WAIT)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def _unread(self) -> str:
        """The state of the next head in the bytes not read yet. What the handler's buffer holds
        (pipelined bytes: the selector would not see them) stays there if it is a whole head (under
        the bound: the buffer is smaller), else it goes back in front of ``head``, so that a worker
        never reads the rest of a head itself."""
        rfile = self.handler.rfile
        try:
            self.sock.settimeout(0)
            buffered = rfile.peek(1)
            if _HEAD_END_RE.search(buffered):
                return "ready"
            if buffered:
                self.head[:0] = rfile.read(len(buffered))
        except OSError:
            pass
        finally:
            try:
                self.sock.settimeout(self.timeout)
            except OSError:
                pass
        return self._state() if self.head else "more"

    def close(self) -> None:
        try:
            self.handler.finish()
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class RestServer:
    """A selector thread for idle connections and ``num_threads`` workers for requests."""

    def __init__(self, address: tuple[str, int], api: RestApi, *, num_threads: int = DEFAULT_NUM_THREADS,
                 socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics_path: str | None = None,
                 max_connections: int = MAX_CONNECTIONS):
        self.api, self.socket_timeout, self.max_body_bytes = api, socket_timeout, max_body_bytes
        self.metrics_path, self.max_connections = metrics_path, max_connections
        self.socket = socket.create_server(address, backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._pool = ThreadPoolExecutor(max_workers=max(1, num_threads), thread_name_prefix="rest")
        self._back: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._queue_lock = threading.Lock()
        self._queued = 0  # connections handed to the pool that no worker has taken yet
        self._stopped = threading.Event()
        self._accept_resumes = None  # monotonic time the paused listening socket is watched again
        self._accept_logged_at, self._accept_unlogged = float("-inf"), 0

    # -- worker side --------------------------------------------------------------------------
    def _work(self, conn: _Connection) -> None:
        alive = False
        try:
            with self._queue_lock:
                self._queued -= 1
            alive = conn.serve(lambda: self._queued == 0)
        except OSError:
            pass
        except Exception:  # noqa: BLE001 - never lose the connection bookkeeping
            log.exception("REST connection failed")
        if not alive:
            conn.close()
        self._back.put((conn, alive))
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # -- selector side ------------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.2) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        idle: dict[_Connection, float] = {}  # parked connection -> deadline, oldest first
        busy = 0
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=poll_interval):
                    if key.data == "accept":
                        self._accept(sel, idle, busy)
                    elif key.data == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                        while True:
                            try:
                                conn, alive = self._back.get_nowait()
                            except queue.Empty:
                                break
                            busy -= 1
                            if alive:
                                sel.register(conn.sock, selectors.EVENT_READ, conn)
                                idle[conn] = time.monotonic() + self.socket_timeout
                    else:
                        conn = key.data
                        state = conn.fill()
                        if state == "more":
                            continue  # keeps its deadline: a slow head is closed like a silent one
                        sel.unregister(conn.sock)
                        idle.pop(conn, None)
                        if state == "closed":
                            conn.close()
                            continue
                        busy += 1
                        with self._queue_lock:
                            self._queued += 1
                        self._pool.submit(self._work, conn)
                now = time.monotonic()
                if self._accept_resumes is not None and now >= self._accept_resumes:
                    self._accept_resumes = None
                    sel.register(self.socket, selectors.EVENT_READ, "accept")
                for conn in [c for c, deadline in idle.items() if deadline <= now]:
                    sel.unregister(conn.sock)
                    del idle[conn]
                    conn.close()
        finally:
            for conn in idle:
                conn.close()
            sel.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._stopped.set()

    def _accept(self, sel, idle: dict, busy: int) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving who is connected
                # The listening socket stays readable: accepting again at once spun a core and
                # logged a line per try (25,000 a second). Out of descriptors, the longest-parked
                # connection makes room, as at max_connections; with none to evict (or another
                # error), the socket is not watched for ACCEPT_PAUSE. One line a minute at most.
                self._accept_failed(exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE) and idle:
                    self._evict_oldest(sel, idle)
                    continue
                sel.unregister(self.socket)
                self._accept_resumes = time.monotonic() + ACCEPT_PAUSE
                return
            if len(idle) + busy >= self.max_connections:
                if not idle:
                    sock.close()
                    continue
                self._evict_oldest(sel, idle)
            try:
                conn = _Connection(sock, address, self)
            except OSError:
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_READ, conn)
            idle[conn] = time.monotonic() + self.socket_timeout

    @staticmethod
    def _evict_oldest(sel, idle: dict) -> None:
        oldest = next(iter(idle))  # the longest-parked connection
        sel.unregister(oldest.sock)
        del idle[oldest]
        oldest.close()

    def _accept_failed(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._accept_logged_at < ACCEPT_LOG_INTERVAL:
            self._accept_unlogged += 1
            return
        unlogged, self._accept_unlogged, self._accept_logged_at = self._accept_unlogged, 0, now
        log.warning("REST accept failed: %s%s", exc,
                    f" ({unlogged} more failures since the last such line)" if unlogged else "")

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        self._stopped.wait(10)

    def server_close(self) -> None:
        for s in (self.socket, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass


def serve(api: RestApi, host: str, port: int, **options) -> tuple[RestServer, threading.Thread]:
    """Start serving in a background thread; ``server.shutdown()`` stops it.

    ``options``: ``num_threads``, ``socket_timeout``, ``max_body_bytes``, ``metrics_path``.
    """
    server = RestServer((host, port), api, **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="rest", daemon=True)
    thread.start()
    return server, thread
