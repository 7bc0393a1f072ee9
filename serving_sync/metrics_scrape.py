"""Read one host's TF Serving metrics page over HTTP (``scrape``): the bake's only I/O.

The page is read whole, bounded in size (``MAX_PAGE_BYTES``) and in time (the name lookup too); a
redirect off the URL's host:port is refused; a page cut short is
refused. ``metrics_windows.parse`` reads it. Proxy, CA bundle and basic auth (``~/.netrc``) are
the REST client's (``tfs_client.http_settings``, as ``requests`` takes them): a TF Serving behind
a reverse proxy that asks for them serves its metrics page there too.
"""
from __future__ import annotations

import dataclasses
import functools
import time

from mlops_common.errors import UserError

from .metrics_windows import Snapshot, parse

MAX_PAGE_BYTES = 16 * 1024 * 1024


class PageTooLarge(ValueError):
    """The page passed ``MAX_PAGE_BYTES``: most likely many model names that clients asked for."""


class OffHostRedirect(ValueError):
    """The metrics page redirected to another host:port (TF Serving never redirects it)."""


def _host_port(url: str) -> str:
    """``host:port`` of ``url`` (the scheme's port when none is written), lower case."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    port = port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(host: str, port: int, wait: float) -> list:
    """``socket.getaddrinfo`` in a daemon thread, given at most ``wait`` seconds: a resolver that
    does not answer held the read past its time limit (no socket yet for the deadline to shut).
    A lookup still running is left to the system resolver's own time limit."""
    import socket
    import threading

    out: list = []

    def look() -> None:
        try:
            out.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except OSError as exc:
            out.append(exc)

    worker = threading.Thread(target=look, daemon=True, name="metrics-dns")
    worker.start()
    worker.join(max(wait, 0.0))
    if not out:
        raise TimeoutError(f"the name {host} was not resolved in time")
    if isinstance(out[0], OSError):
        raise out[0]
    return out[0]


def _watched(conn_class, register, resolve):
    """``conn_class`` whose host name is looked up by ``resolve`` (bounded in time) and whose
    sockets are handed to ``register`` as soon as they connect (before a TLS handshake, a status
    line or a header is read). Connected by address: the Host header and TLS name stay the name."""
    import socket

    class Watched(conn_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

            def create(address, *a, **kw):
                error: OSError | None = None
                for *_, sockaddr in resolve(*address):
                    try:
                        sock = socket.create_connection(sockaddr[:2], *a, **kw)
                    except OSError as exc:
                        error = exc
                        continue
                    register(sock)
                    return sock
                raise error or OSError(f"{address[0]} resolved to no address")
            self._create_connection = create
    return Watched


@functools.lru_cache(maxsize=8)
def _tls_context(ca: str):
    """An SSL context trusting ``ca`` (a bundle file, or a directory as requests takes one), made
    once: loading certifi's bundle for every page read cost more than the read."""
    import os
    import ssl

    return ssl.create_default_context(**({"capath": ca} if os.path.isdir(ca) else {"cafile": ca}))


def _read_page(url: str, timeout: float) -> bytes:
    """The whole page or OSError / ValueError: at most ``MAX_PAGE_BYTES``, within about
    ``timeout`` seconds in all, never a page cut short. Each socket read waits at most
    ``timeout``; at the deadline every socket of the read (redirects included) is shut, so
    headers trickling in or a chain of slow redirects cannot hold the bake past it either."""
    import http.client
    import socket
    import threading
    import urllib.parse
    import urllib.request

    from .tfs_client import http_settings

    lock, sockets, late, unresolved = threading.Lock(), [], threading.Event(), []

    def shut(sock) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)      # the fd's: wakes a blocked recv, TLS too
        except OSError:
            pass

    def register(sock) -> None:
        with lock:
            sockets.append(sock)
            if late.is_set():
                shut(sock)

    def expire() -> None:
        with lock:
            late.set()
            for sock in sockets:
                shut(sock)

    def resolve(host: str, port: int) -> list:
        try:
            return _resolve(host, port, deadline - time.monotonic())
        except TimeoutError:
            unresolved.append(host)
            expire()
            raise

    headers, ca, proxy, proxy_headers = http_settings(url)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(_watched(http.client.HTTPConnection, register, resolve), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            # the CA bundle requests would trust (REQUESTS_CA_BUNDLE; else certifi's), as the REST client
            return self.do_open(_watched(http.client.HTTPSConnection, register, resolve), req,
                                context=_tls_context(ca))

    class Proxy(urllib.request.ProxyHandler):
        """The proxy requests would take for the URL (NO_PROXY already applied, CIDR entries too:
        urllib's own check knows none), its ``user:password@`` sent as requests sends it."""
        def proxy_open(self, req, proxy, type):
            for name, value in proxy_headers.items():
                req.add_header(name, value)
            where = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            req.set_proxy(where.netloc.rpartition("@")[2], type)

    class SameHost(urllib.request.HTTPRedirectHandler):
        """A redirect is followed only on the metrics_url's own host:port: one elsewhere would
        judge this host on another host's page."""
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            # the Location is never quoted: its query or user:password@ may be a credential (a
            # presigned URL, a login page's token) that the message would put in the CI log
            parts = urllib.parse.urlsplit(newurl)
            if _host_port(newurl) != _host_port(url) or "@" in parts.netloc:
                fp.close()
                why = ("a URL with a name and password before its host" if _host_port(newurl) == _host_port(url) else
                       f"another address: {_host_port(newurl)} is not {_host_port(url)}")
                raise OffHostRedirect(f"it redirected to {why}, and TF Serving never redirects its metrics page")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    too_late = f"the page did not arrive within {timeout:g}s"
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        try:
            proxies = {urllib.parse.urlsplit(url).scheme: proxy} if proxy else {}
            opener = urllib.request.build_opener(Http, Https, SameHost, Proxy(proxies))
            request = urllib.request.Request(url, headers=headers)
            with opener.open(request, timeout=timeout) as resp:   # noqa: S310 - the hosts file's URL
                expected = resp.headers.get("Content-Length")
                chunks, size = [], 0
                while True:
                    if time.monotonic() > deadline:
                        raise TimeoutError(too_late)
                    chunk = resp.read1(64 * 1024)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_PAGE_BYTES:
                        raise PageTooLarge(f"the page is larger than {MAX_PAGE_BYTES // (1024 * 1024)} MB")
                    chunks.append(chunk)
        except http.client.HTTPException as exc:       # IncompleteRead of a chunked page, a bad status line
            raise ValueError(f"the answer was cut off or malformed ({type(exc).__name__})") from None
    except (OSError, ValueError):
        if unresolved:
            raise TimeoutError(f"{too_late}: the name {unresolved[0]} was not resolved in time") from None
        if late.is_set():              # the shut sockets' errors: it is the deadline's doing
            raise TimeoutError(too_late) from None
        raise
    finally:
        timer.cancel()
    if late.is_set():                  # a shut socket reads as the page's end: never taken for the page
        raise TimeoutError(too_late)
    body = b"".join(chunks)
    if expected is not None and expected.strip().isdigit() and len(body) != int(expected):
        raise ValueError(f"the page was cut off ({len(body)} of {int(expected)} bytes)")
    if body and not body.endswith(b"\n"):
        raise ValueError("the page was cut off (it does not end with a new line)")
    return body


def scrape(host_name: str, url: str, model: str, *, timeout: float = 5.0) -> Snapshot:
    """Read ``url`` (bounded by ``timeout``) and parse ``model``'s counters, stamped with when
    (the middle of the read: a window's length is the difference); one-line UserError."""
    import urllib.error
    import urllib.parse

    started = time.monotonic()
    try:
        text = _read_page(url, timeout).decode("utf-8", "replace")
    except PageTooLarge as exc:
        # TF Serving keeps a request_count line for every model name a request named, a 404 too
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}; TF Serving keeps a "
                        f"request_count line for every model name any client has asked for, unknown ones too, "
                        f"until it restarts): restart TF Serving on {host_name} to clear them (or deploy "
                        f"with --bake 0), and let only known model names reach its REST port") from None
    except OffHostRedirect as exc:
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}): set metrics_url in "
                        f"the hosts file to {host_name}'s own TF Serving metrics page, or deploy with "
                        f"--bake 0") from None
    except urllib.error.HTTPError as exc:
        if exc.code == 401:          # a reverse proxy before TF Serving (which asks for nothing)
            raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} (HTTP 401: it asks for "
                            f"credentials): give them in ~/.netrc (machine "
                            f"{urllib.parse.urlsplit(url).hostname}), as for its REST API, or deploy with "
                            f"--bake 0") from None
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} (HTTP {exc.code}); start TF "
                        f"Serving with --monitoring_config_file enabling prometheus_config, set metrics_url "
                        f"in the hosts file, or deploy with --bake 0") from None
    except TimeoutError as exc:
        # a deploy's read may take a quarter of --bake, 5 to 60 s, within --timeout (canary.metrics_timeout)
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}; a read may take a "
                        f"quarter of --bake, 5 to 60 s, within --timeout): check that TF Serving on "
                        f"{host_name} answers, or deploy with --bake 0") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}); start TF Serving "
                        f"with --monitoring_config_file enabling prometheus_config, set metrics_url in the "
                        f"hosts file, or deploy with --bake 0") from None
    at = (started + time.monotonic()) / 2
    try:
        return dataclasses.replace(parse(text, model), at=at)
    except UserError as exc:
        raise UserError(f"{host_name}: {url}: {exc.message}") from None
