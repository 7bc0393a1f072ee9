"""TF Serving REST client (status, labels, metadata, predict) and bounded wait helpers.

Every request has a timeout; every wait is bounded in polls and seconds and ends with one line
that carries TF Serving's own error message (e.g. why a version went to END). The pure parts —
status parsing, signature normalization, wait verdicts — are plain functions on JSON.
"""
from __future__ import annotations

import http.client
import io
import itertools
import json
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import ConfigError, HostUnreachable, NotTFServing, ServingError, ServingTimeout

_NOT_JSON = "_not_json"     # marks an answer whose body was not JSON (TF Serving's always is)
MAX_BODY_BYTES = 64 * 1024 * 1024   # an answer's size bound (a predict's is some KB to a few MB)


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str                 # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""

    @property
    def failed(self) -> bool:
        return self.state == "END" and self.error_code not in ("OK", "", "0")


def parse_status(body: dict) -> list[VersionStatus]:
    """``GetModelStatusResponse`` JSON -> statuses (versions as ints)."""
    out = []
    for s in body.get("model_version_status", []) or []:
        st = s.get("status") or {}
        out.append(VersionStatus(int(s.get("version", 0)), str(s.get("state", "UNKNOWN")),
                                 str(st.get("error_code", "OK") or "OK"), str(st.get("error_message", "") or "")))
    return out


def normalize_signature(metadata: dict, names: tuple[str, ...] | None = None) -> dict:
    """TF Serving ``/metadata`` JSON -> the normalized signature format of docs/architecture.md
    (``registry.signature.normalize_signature_defs``, the same normalizer mlproject writes with)."""
    from registry.signature import normalize_signature_defs

    sigs = (((metadata.get("metadata") or {}).get("signature_def") or {}).get("signature_def") or {})
    return normalize_signature_defs(sigs, names)


# --- wait verdicts (pure) ------------------------------------------------------------------
@dataclass(frozen=True)
class WaitVerdict:
    done: bool
    failed: bool = False
    detail: str = ""


def available_verdict(statuses: list[VersionStatus], version: int) -> WaitVerdict:
    s = next((x for x in statuses if x.version == version), None)
    if s is None:
        return WaitVerdict(False, detail="not known to TF Serving yet")
    if s.state == "AVAILABLE":
        return WaitVerdict(True)
    if s.state == "END":
        why = (s.error_message or f"error code {s.error_code}") if s.failed else "unloaded (END)"
        return WaitVerdict(False, True, why)
    return WaitVerdict(False, detail=s.state)


def gone_verdict(statuses: list[VersionStatus], version: int) -> WaitVerdict:
    s = next((x for x in statuses if x.version == version), None)
    if s is None or s.state == "END":
        return WaitVerdict(True)
    return WaitVerdict(False, detail=s.state)


FIRST_POLL = 0.01   # seconds before the second poll of a wait


def iter_pauses(timeout: float, interval: float, first: float = FIRST_POLL) -> Iterator[float]:
    """The pauses between the polls of one bounded wait: ``first``, doubling up to ``interval``,
    then ``interval`` until ``timeout`` is covered (so the count is bounded by the timeout).
    Lazy: a wait usually ends after a few polls, and a 120 s wait has some 600 pauses."""
    interval = max(interval, 1e-3)
    pause, total = min(first, interval), 0.0
    while total < timeout:
        yield pause
        total += pause
        pause = min(interval, pause * 2)


def http_settings(url: str) -> tuple[dict[str, str], str, str | None, dict[str, str]]:
    """(headers, CA bundle, proxy URL or None, the proxy's headers) for ``url``, taken from the
    environment the way ``requests`` would take them: HTTP(S)_PROXY and NO_PROXY (CIDR entries
    too), the proxy's own ``user:password@`` as ``Proxy-Authorization``, REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE (else certifi's bundle), and basic auth from ``user:password@`` in the URL or
    from ``~/.netrc``. The REST client's (``_http_for``) and the metrics page's
    (``metrics_scrape``): both reach one TF Serving, so both go the same way."""
    import os

    import requests.utils as ru
    import urllib3

    headers: dict[str, str] = {}
    user, password = ru.get_auth_from_url(url)
    where = f"the user:password@ part of TF Serving's URL {_no_userinfo(url)}"
    if not (user or password):
        netrc = "the file NETRC names" if os.environ.get("NETRC") is not None else "~/.netrc"
        try:
            user, password = ru.get_netrc_auth(url) or ("", "")
        except UnicodeDecodeError:
            raise ConfigError(f"{netrc} is not UTF-8 text (bytes of another encoding): save it as UTF-8 "
                              f"and rerun; nothing was sent") from None
        where = f"{netrc} (its entry for {_no_userinfo(url)})"
    if user or password:
        headers.update(urllib3.make_headers(basic_auth=_basic_auth(where, user, password)))
    ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or ru.DEFAULT_CA_BUNDLE_PATH
    proxy = ru.select_proxy(url, ru.get_environ_proxies(url))
    proxy_headers: dict[str, str] = {}
    if proxy:
        proxy_user, proxy_password = ru.get_auth_from_url(proxy)    # urllib3 does not read them from the URL
        if proxy_user or proxy_password:
            where = (f"the user:password@ part of the proxy URL {_no_userinfo(proxy)} (HTTP_PROXY, HTTPS_PROXY or "
                     f"ALL_PROXY)")
            proxy_headers = urllib3.make_headers(proxy_basic_auth=_basic_auth(where, proxy_user, proxy_password))
    return headers, ca, proxy or None, proxy_headers


def _http_for(url: str):
    """A urllib3 pool manager and headers for ``url``, set up once the way ``requests`` would set up
    each request from the environment (``http_settings``). ``requests`` resolves all of that again
    on every request — about 1 ms of CPU each — and a fleet deploy makes some 35 requests per host
    from one process."""
    import urllib3

    headers, ca, proxy, proxy_headers = http_settings(url)
    kw = {"num_pools": 2, "maxsize": 4, "cert_reqs": "CERT_REQUIRED", "ca_certs": ca, "retries": False}
    if not proxy:
        return _deadline_pools(urllib3.PoolManager(**kw)), headers
    if proxy_headers:
        kw["proxy_headers"] = proxy_headers
    return _deadline_pools(urllib3.ProxyManager(proxy, **kw)), headers


def _no_userinfo(url: str) -> str:
    """``url``'s scheme, host and port: never its user name or password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    except ValueError:
        return "(not a URL)"


def _basic_auth(where: str, user: str, password: str) -> str:
    """``user:password`` for a basic-auth header, which urllib3 encodes as Latin-1: a character
    outside it (``€``; ``\\ufffd`` or a lone surrogate from bytes, raw or %-escaped, that are not
    UTF-8) was a UnicodeEncodeError traceback. Refused with one line naming ``where``, never the
    value."""
    both = f"{user}:{password}"
    try:
        both.encode("latin-1")
    except UnicodeEncodeError:
        if "\ufffd" in both or any("\udc80" <= c <= "\udcff" for c in both):
            raise ConfigError(f"{where} holds bytes that are not UTF-8 text (raw or %-escaped, of another "
                              f"encoding); write it as UTF-8 and rerun; nothing was sent") from None
        raise ConfigError(f"{where} holds a character HTTP basic auth cannot send (Latin-1 only: no euro sign, "
                          f"no letters beyond Western European ones); change the password and rerun; nothing "
                          f"was sent") from None
    return both


class _DeadlineIO(socket.SocketIO):
    """What ``http.client`` reads an answer from (``sock.makefile("rb")``'s raw part), every receive
    ending by a deadline: the socket's timeout (urllib3 sets it to the read timeout just before
    the answer) from the answer's start. A per-read timeout alone let a server sending its status
    line and headers a byte a second hold the request for as long as it kept sending."""

    def __init__(self, sock, each: float):
        super().__init__(sock, "rb")
        sock._io_refs += 1          # as socket.makefile: the socket really closes with the answer
        self._each, self._deadline = each, time.monotonic() + each

    def readinto(self, b):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the answer took longer than the request's timeout")
        self._sock.settimeout(min(left, self._each))
        return super().readinto(b)


class _DeadlineSocket:
    def __init__(self, sock, each: float):
        self._sock, self._each = sock, each

    def makefile(self, mode: str):
        return io.BufferedReader(_DeadlineIO(self._sock, self._each))


class _Response(http.client.HTTPResponse):
    def __init__(self, sock, *args, **kwargs):
        each = sock.gettimeout() if isinstance(sock, socket.socket) else None
        super().__init__(_DeadlineSocket(sock, each) if each else sock, *args, **kwargs)


def _deadline_pools(manager):
    """``manager`` with its connections reading every answer within the request's timeout in all
    (``_DeadlineIO``); its connections are kept and reused as before."""
    import urllib3.connection as uc
    import urllib3.connectionpool as ucp

    http_conn = type("HTTPConnection", (uc.HTTPConnection,), {"response_class": _Response})
    https_conn = type("HTTPSConnection", (uc.HTTPSConnection,), {"response_class": _Response})
    manager.pool_classes_by_scheme = {
        "http": type("HTTPConnectionPool", (ucp.HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("HTTPSConnectionPool", (ucp.HTTPSConnectionPool,), {"ConnectionCls": https_conn})}
    return manager


class TFServingClient:
    """REST client for one TF Serving (or the local compatible server)."""

    def __init__(self, rest_url: str, *, timeout: float = 10.0):
        self.base = rest_url.rstrip("/")
        self.timeout = timeout
        self._http, self._headers = _http_for(self.base)

    def close(self) -> None:
        self._http.clear()

    # --- raw requests --------------------------------------------------------------------
    def _url(self, model: str, version: int | None = None, label: str | None = None,
             suffix: str = "") -> str:
        url = f"{self.base}/v1/models/{model}"
        if version is not None:
            url += f"/versions/{int(version)}"
        elif label is not None:
            url += f"/labels/{label}"
        return url + suffix

    def _request(self, method: str, url: str, body: dict | bytes | None = None,
                 timeout: float | None = None) -> tuple[int, dict]:
        """One request; ``body`` is a JSON document or its encoded bytes (encoded once by a caller
        that sends it many times)."""
        import urllib3

        headers = self._headers
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
        seconds = timeout or self.timeout
        try:
            r = self._http.request(method, url, body=body, headers=headers, preload_content=False,
                                   timeout=urllib3.Timeout(connect=seconds, read=seconds))
            raw = self._body(r, method, url, seconds)
        except urllib3.exceptions.ReadTimeoutError:
            raise HostUnreachable(f"TF Serving REST at {self.base} did not answer within "
                                  f"{seconds:.0f}s ({method} {url})") from None
        except urllib3.exceptions.ProxyError:   # the environment's proxy, not TF Serving
            raise HostUnreachable(f"cannot reach the HTTP proxy the environment names for TF Serving REST at "
                                  f"{self.base} (HTTP_PROXY / HTTPS_PROXY); fix it, or add the host to "
                                  f"NO_PROXY") from None
        except urllib3.exceptions.HTTPError:   # refused, no route, reset, connect timeout
            raise HostUnreachable(f"TF Serving REST at {self.base} is not reachable (connection refused "
                                  f"or no route); check that it runs and the host's rest_url") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"error": raw[:300].decode("utf-8", "replace"), _NOT_JSON: True}
        if not isinstance(data, dict):
            data = {"error": f"unexpected JSON {str(data)[:200]}"}
        return r.status, data

    def _body(self, r, method: str, url: str, seconds: float) -> bytes:
        """The whole answer, at most ``MAX_BODY_BYTES`` within ``seconds`` in all (each read waits at
        most ``seconds``). ``r.data`` read any length for any time: a rest_url naming another web
        server (a file server, a stream) held the deploy, and its memory, for as long as it sent."""
        import urllib3

        deadline = time.monotonic() + seconds
        late = HostUnreachable(f"TF Serving REST at {self.base} did not finish its answer within "
                               f"{seconds:.0f}s ({method} {url})")
        chunks, size = [], 0
        try:
            while chunk := r.read1(64 * 1024):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ServingError(f"TF Serving REST at {self.base} answered {method} {url} with more than "
                                       f"{MAX_BODY_BYTES // (1024 * 1024)} MB; check the host's rest_url")
                if time.monotonic() > deadline:
                    raise late
                chunks.append(chunk)
        except urllib3.exceptions.ReadTimeoutError:    # the answer's deadline (_DeadlineIO)
            r.close()
            raise late from None
        except BaseException:
            r.close()              # the rest unread: this connection is not used again
            raise
        finally:
            r.release_conn()
        return b"".join(chunks)

    def _get_json(self, url: str) -> dict:
        code, data = self._request("GET", url)
        if code != 200:
            raise ServingError(f"TF Serving at {self.base}: GET {url[len(self.base):]} -> HTTP {code}: "
                               f"{data.get('error', '')}")
        return data

    def _not_tf_serving(self, url: str, code: int, data: dict) -> NotTFServing:
        body = "not JSON" if data.get(_NOT_JSON) else "JSON without TF Serving's fields"
        return NotTFServing(f"{self.base} answered GET {url[len(self.base):]} with HTTP {code} ({body}), not as "
                            f"TF Serving does; check the host's rest_url (TF Serving's REST port, "
                            f"--rest_api_port, 8501 by default)")

    def _odd_json(self, url: str, exc: Exception) -> NotTFServing:
        """TF Serving's field names with other types (a version that is no number, an object that is
        a string): the host's answer, one line, not a traceback that hides every other host."""
        return NotTFServing(f"{self.base} answered GET {url[len(self.base):]} with JSON that is not TF Serving's "
                            f"({type(exc).__name__}: {str(exc)[:120]}); check the host's rest_url (TF Serving's "
                            f"REST port, --rest_api_port, 8501 by default)")

    @staticmethod
    def _tf_servings_error(data: dict) -> bool:
        """TF Serving's own error answer: a JSON object with an ``error`` text. A web server that is
        not TF Serving (a wrong port in rest_url) answers 404 too, in HTML or other JSON: read as
        "this model is unknown", a deploy went ahead on a host it could not observe, then failed
        the version and moved production back."""
        return isinstance(data.get("error"), str) and not data.get(_NOT_JSON)

    # --- API -----------------------------------------------------------------------------
    def model_status(self, model: str) -> list[VersionStatus]:
        """All versions TF Serving knows for ``model`` ([] when the model is unknown: HTTP 404)."""
        url = self._url(model)
        code, data = self._request("GET", url)
        if code == 404 and self._tf_servings_error(data):
            return []
        if code == 404 or (code == 200 and not isinstance(data.get("model_version_status"), list)):
            raise self._not_tf_serving(url, code, data)
        if code != 200:
            raise ServingError(f"TF Serving at {self.base}: status of {model} -> HTTP {code}: "
                               f"{data.get('error', '')}")
        try:
            return parse_status(data)
        except (TypeError, ValueError, AttributeError) as exc:     # a "version" no number, a status no object
            raise self._odd_json(url, exc) from None

    def version_status(self, model: str, version: int) -> VersionStatus | None:
        return next((s for s in self.model_status(model) if s.version == int(version)), None)

    def label_version(self, model: str, label: str) -> int | None:
        """The version ``label`` points at (None when the label or model is unknown).

        Read from ``/labels/<label>/metadata`` (its ``model_spec.version``): TF Serving's status
        endpoint ignores a label in the path, so it cannot tell.
        """
        url = self._url(model, label=label, suffix="/metadata")
        code, data = self._request("GET", url)
        if code in (400, 404) and self._tf_servings_error(data):
            return None
        if code in (400, 404):
            raise self._not_tf_serving(url, code, data)
        if code != 200:
            raise ServingError(f"TF Serving at {self.base}: label {label} of {model} -> HTTP {code}: "
                               f"{data.get('error', '')}")
        try:
            version = (data.get("model_spec") or {}).get("version")
            return int(version) if version not in (None, "") else None
        except (TypeError, ValueError, AttributeError) as exc:     # "latest", a model_spec that is a string
            raise self._odd_json(url, exc) from None

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> dict:
        return self._get_json(self._url(model, version, label, "/metadata"))

    def signature(self, model: str, *, version: int | None = None, label: str | None = None,
                  names: tuple[str, ...] | None = ("serving_default",)) -> dict:
        return normalize_signature(self.metadata(model, version=version, label=label), names)

    def predict(self, model: str, body: dict | bytes, *, version: int | None = None, label: str | None = None,
                timeout: float | None = None) -> dict:
        """POST ``:predict`` (``body``: the JSON request or its encoded bytes); a non-200 answer
        raises ServingError with TF Serving's message."""
        url = self._url(model, version, label, ":predict")
        code, data = self._request("POST", url, body, timeout=timeout)
        if code != 200:
            target = f"version {version}" if version else f"label {label}" if label else "default version"
            raise ServingError(f"TF Serving at {self.base}: predict on {model} ({target}) -> HTTP {code}: "
                               f"{data.get('error', json.dumps(data)[:200])}")
        return data

    # --- bounded waits -------------------------------------------------------------------
    def _poll(self, what: str, check: Callable[[], WaitVerdict], *, timeout: float,
              interval: float) -> None:
        """Bounded polling. A TF Serving that stops answering for a while (it was restarted) is
        "not done yet", not a failure: it reloads models.config when it comes back, so the wait
        goes on until the deadline and only then says it was unreachable.

        The pauses start at ``FIRST_POLL`` and double up to ``interval``: a tiny model loads in
        tens of milliseconds, and a fixed 0.2 s pause left the host idle for most of it.
        """
        deadline = time.monotonic() + timeout
        last = WaitVerdict(False, detail="no answer yet")
        unreachable: HostUnreachable | None = None
        for pause in itertools.chain(iter_pauses(timeout, interval), [None]):   # None: the last poll
            try:
                last, unreachable = check(), None
            except HostUnreachable as exc:
                last, unreachable = WaitVerdict(False, detail="not reachable"), exc
            if last.done:
                return
            if last.failed:
                raise ServingError(f"TF Serving at {self.base}: {what} failed: {last.detail}")
            if pause is None or time.monotonic() >= deadline:
                break
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        if unreachable is not None:
            raise HostUnreachable(f"{unreachable.message} (still, after waiting {timeout:.0f}s for {what})")
        raise ServingTimeout(f"TF Serving at {self.base}: {what} did not happen within {timeout:.0f}s "
                             f"(last state: {last.detail})")

    def wait_until(self, what: str, check: Callable[[], WaitVerdict], *, timeout: float,
                   interval: float = 0.5) -> None:
        """Poll ``check`` (bounded) until it says done; failed -> ServingError, timeout -> ServingTimeout."""
        self._poll(what, check, timeout=timeout, interval=interval)
