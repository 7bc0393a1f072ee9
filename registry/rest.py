"""MLflow's REST API for the registry calls on the fast paths, without ``import mlflow``.

Why: importing mlflow costs well over a second, and ``mlops sync rollback`` (on call, while a bad
model serves) needs only a handful of registry calls — read/set/delete an alias, read a version,
search versions, set version tags, read a run's small JSON artifacts. These follow MLflow's
documented REST API (``/api/2.0/mlflow/...``, artifacts through the tracking server's proxy
``/api/2.0/mlflow-artifacts/artifacts/...``) with the credentials MLflow's own client uses:
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (basic), else ``MLFLOW_TRACKING_TOKEN``
(bearer); ``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` and
``MLFLOW_TRACKING_CLIENT_CERT_PATH`` for TLS; ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_BACKOFF_FACTOR`` (bounded by ``client.HTTP_DEFAULTS``).

One connection pool per server (keep-alive). Every failure is one line, translated exactly as
``client.mlflow_errors`` translates MLflow's exceptions (``client.error_for``).
"""
from __future__ import annotations

import math
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import quote

import requests

from mlops_common import settings
from mlops_common.errors import ConfigError, ConnectionFailure, UserError

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED = "mlflow-artifacts:"
TRANSIENT_HTTP = frozenset((408, 429, 500, 502, 503, 504))
CHUNK = 1 << 20

Missing = Callable[[], UserError]


def _float_env(name: str, default: float, *, positive: bool = False, most: float | None = None) -> float:
    """A finite number >= 0 (> 0 with ``positive``; at most ``most``: MLflow's own ceiling) from the
    environment: one line otherwise (a NaN retry count or a negative timeout was a traceback from
    deep inside requests)."""
    from .client import HTTP_DEFAULTS

    raw = settings.env(name) or HTTP_DEFAULTS.get(name) or default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a number {'above' if positive else 'of at least'} 0, got '{raw}'")
    if most is not None and value > most:
        raise ConfigError(f"{name} must be at most {most:g} (MLflow's own client refuses more), got '{raw}'")
    return value


class MlflowRest:
    """A small REST client for one MLflow tracking server (see the module docstring)."""

    def __init__(self, uri: str):
        from .client import check_uri

        check_uri(uri)
        self.uri = uri.rstrip("/")
        self.session = requests.Session()
        auth, token = settings.basic_auth(), settings.tracking_token()
        if auth:
            self.session.auth = auth
        elif token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if (settings.env("MLFLOW_TRACKING_INSECURE_TLS") or "").lower() == "true":
            self.session.verify = False
        elif settings.env("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self.session.verify = settings.env("MLFLOW_TRACKING_SERVER_CERT_PATH")
        if settings.env("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            self.session.cert = settings.env("MLFLOW_TRACKING_CLIENT_CERT_PATH")
        self.timeout = _float_env("MLFLOW_HTTP_REQUEST_TIMEOUT", 60, positive=True)
        # MLflow's limits (mlflow.utils.rest_utils._validate_max_retries / _validate_backoff_factor)
        self.retries = int(_float_env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 4, most=10))
        self.backoff = _float_env("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1, most=120)
        self.answered = False          # the server answered once: later connection errors are transient
        self.sleep = time.sleep
        self._server_clock: tuple[float, datetime] | None = None    # (monotonic, the last answer's Date)

    # --- the registry calls -------------------------------------------------------------------
    def get(self, endpoint: str, params: dict, *, what: str, missing: Missing | None = None) -> dict:
        return self.call("GET", endpoint, what=what, params=params, missing=missing)

    def post(self, endpoint: str, body: dict, *, what: str, missing: Missing | None = None) -> dict:
        return self.call("POST", endpoint, what=what, body=body, missing=missing)

    def delete(self, endpoint: str, body: dict, *, what: str, missing: Missing | None = None) -> dict:
        return self.call("DELETE", endpoint, what=what, body=body, missing=missing)

    def call(self, method: str, endpoint: str, *, what: str, params: dict | None = None,
             body: dict | None = None, missing: Missing | None = None) -> dict:
        """``method`` ``/api/2.0/mlflow/<endpoint>``; the JSON answer, or one-line UserError.

        ``missing``: the error to raise when MLflow answers RESOURCE_DOES_NOT_EXIST.
        """
        r = self._send(method, f"{self.uri}{API}/{endpoint}", what, params=params, json=body)
        doc = self._json(r, what)
        if r.status_code == 200:
            return doc
        raise self._error(r, doc, what, missing)

    def probe(self) -> None:
        """One cheap request that tells a reachable MLflow server we may use from anything else
        (404 is fine: it only means there is no Default experiment). A transient answer (408, 429,
        5xx: a server restarting or overloaded) is retried like every call, within the bound, and
        it waits MLFLOW_HTTP_REQUEST_TIMEOUT like every call."""
        r = self._send("GET", f"{self.uri}{API}/experiments/get-by-name", "",
                       params={"experiment_name": "Default"})
        self._json(r, "")
        if r.status_code not in (200, 404):
            raise ConfigError(f"{self.uri} answered HTTP {r.status_code} and does not look like an MLflow "
                              f"tracking server; fix MLFLOW_TRACKING_URI")

    def artifact_bytes(self, artifact_uri: str, path: str, *, what: str) -> bytes | None:
        """The bytes of ``path`` under a run's ``artifact_uri`` through the tracking server's
        artifact proxy; None when it does not exist. Only for ``mlflow-artifacts:/...`` URIs
        served by this server (see ``proxied``)."""
        rel = f"{artifact_uri[len(PROXIED):].lstrip('/')}/{path.lstrip('/')}"
        r = self._send("GET", f"{self.uri}{ARTIFACTS_API}/{quote(rel)}", what)
        if r.status_code == 200:
            return r.content
        # credentials and lasting 5xx say so whatever the body (a proxy's HTML 502); a plain 404: None
        said = "json" in r.headers.get("content-type", "") or r.status_code in (401, 403, *TRANSIENT_HTTP)
        doc = self._json(r, what) if said else {}
        if r.status_code == 404:
            return None
        raise self._error(r, doc, what, None)

    def artifact_to_file(self, artifact_uri: str, path: str, dest: str, *, what: str,
                         stop: Callable[[], bool] | None = None) -> int:
        """Stream ``path`` under a proxied ``artifact_uri`` into the new file ``dest``; its size.
        ``stop`` (the caller gave up: an interrupt): checked between chunks, ends the download
        with ``ConnectionFailure``."""
        rel = f"{artifact_uri[len(PROXIED):].lstrip('/')}/{path.lstrip('/')}"
        r = self._send("GET", f"{self.uri}{ARTIFACTS_API}/{quote(rel)}", what, stream=True)
        try:
            if r.status_code != 200:
                doc = self._json(r, what)
                raise self._error(r, doc, what, None)
            size = 0
            with open(dest, "xb") as f:
                for chunk in r.iter_content(CHUNK):
                    if stop is not None and stop():
                        raise ConnectionFailure(_line(what, "stopped"))
                    f.write(chunk)
                    size += len(chunk)
            return size
        except requests.RequestException as exc:
            raise ConnectionFailure(_line(what, f"the download from the MLflow server at {self.uri} broke off "
                                                f"({type(exc).__name__}); retry")) from None
        finally:
            r.close()

    def artifact_files(self, run_id: str, path: str, *, what: str, max_entries: int = 100_000) -> list[dict]:
        """Every file under ``path`` of a run's artifacts, recursively: ``[{"path", "file_size"}]``
        (bounded: at most ``max_entries`` listing entries)."""
        files, todo, seen = [], [path], 0
        while todo:
            folder = todo.pop()
            doc = self.get("artifacts/list", {"run_id": run_id, "path": folder}, what=what)
            for f in doc.get("files") or ():
                seen += 1
                if seen > max_entries:
                    raise UserError(_line(what, f"more than {max_entries} artifacts under {path}/; that is not "
                                                f"a SavedModel"))
                if f.get("is_dir"):
                    todo.append(f["path"])
                else:
                    files.append({"path": f["path"], "file_size": int(f.get("file_size") or 0)})
        return sorted(files, key=lambda f: f["path"])

    @staticmethod
    def proxied(artifact_uri: str | None) -> bool:
        """Artifacts this client can fetch: ``mlflow-artifacts:/...`` on the tracking server itself
        (any other store — s3://, a remote artifact server — goes through MLflow's client)."""
        return bool(artifact_uri) and artifact_uri.startswith(PROXIED) and \
            not artifact_uri.startswith(PROXIED + "//")

    # --- transport and errors -----------------------------------------------------------------
    def _send(self, method: str, url: str, what: str, **kw) -> requests.Response:
        attempts = 1 + max(0, self.retries)
        for attempt in range(1, attempts + 1):
            try:
                r = self.session.request(method, url, timeout=self.timeout, **kw)
            except requests.ConnectionError as exc:
                delay = retry_delay(attempt, attempts, self.backoff, connection_error=True, answered=self.answered)
                if delay is None and isinstance(exc, requests.exceptions.ProxyError):
                    raise ConnectionFailure(_line(
                        what, f"cannot reach the HTTP proxy the environment names for {self.uri} (HTTP_PROXY / "
                              f"HTTPS_PROXY); fix it, or add the server's host to NO_PROXY")) from None
                if delay is None and isinstance(exc, requests.exceptions.SSLError):    # it answered, not in TLS
                    raise ConnectionFailure(_line(
                        what, f"the TLS handshake with the MLflow server at {self.uri} failed; check that it "
                              f"serves https (else write http:// in MLFLOW_TRACKING_URI) and "
                              f"MLFLOW_TRACKING_SERVER_CERT_PATH / MLFLOW_TRACKING_CLIENT_CERT_PATH")) from None
                if delay is None:
                    raise ConnectionFailure(_line(
                        what, f"cannot reach the MLflow server at {self.uri} (connection refused or no "
                              f"route); start it with `mlops up` or fix MLFLOW_TRACKING_URI")) from None
            except requests.Timeout:
                raise ConnectionFailure(_line(what, f"the MLflow server at {self.uri} did not answer within "
                                                    f"{self.timeout:.0f}s; check that it is running and "
                                                    f"MLFLOW_TRACKING_URI")) from None
            except requests.RequestException as exc:
                # Only the type: the message of e.g. InvalidHeader quotes the header value (a token).
                raise ConnectionFailure(_line(what, f"the request to the MLflow server at {self.uri} failed "
                                                    f"({type(exc).__name__}); check MLFLOW_TRACKING_URI and "
                                                    f"the MLFLOW_TRACKING_* credentials")) from None
            except OSError as exc:      # requests' cert_verify: a certificate file that does not exist
                said = exc.args[0] if exc.args else exc
                raise ConfigError(_line(what, f"{said}; fix MLFLOW_TRACKING_CLIENT_CERT_PATH / "
                                              f"MLFLOW_TRACKING_SERVER_CERT_PATH")) from None
            else:
                self.answered = True
                self._note_date(r.headers.get("Date"))
                delay = retry_delay(attempt, attempts, self.backoff, status=r.status_code)
                if delay is None:
                    return r
                delay = max(delay, retry_after(r.headers.get("Retry-After")))
                r.close()
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _note_date(self, value: str | None) -> None:
        try:
            when = parsedate_to_datetime(value) if value else None
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            self._server_clock = (time.monotonic(), when.astimezone(timezone.utc))

    def server_now(self) -> datetime | None:
        """The MLflow server's clock now: its last answer's ``Date`` header (whole seconds) plus the
        time since on this machine's monotonic clock; None before an answer with one. What a time the
        server wrote (a version's ``creation_timestamp``) is compared with: this machine's own clock
        may be minutes apart (a laptop, a CI runner)."""
        seen = self._server_clock
        if seen is None:
            return None
        return seen[1] + timedelta(seconds=time.monotonic() - seen[0])

    def _json(self, r: requests.Response, what: str) -> dict:
        if r.status_code in (401, 403):
            raise ConfigError(_line(what, f"the MLflow server at {self.uri} rejected the credentials (HTTP "
                                          f"{r.status_code}); set MLFLOW_TRACKING_USERNAME and "
                                          f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a valid user"))
        ctype = r.headers.get("content-type", "")
        try:
            doc = r.json() if "json" in ctype else None
        except ValueError:
            doc = None
        if r.status_code in TRANSIENT_HTTP:     # still, after the bounded retries of _send
            said = f" ({str(doc.get('message'))[:200]})" if isinstance(doc, dict) and doc.get("message") else ""
            raise ConnectionFailure(_line(what, f"the MLflow server at {self.uri} kept answering HTTP "
                                                f"{r.status_code}{said} after {1 + max(0, self.retries)} tries "
                                                f"with backoff: it is up but failing; check its log, then rerun"))
        if not isinstance(doc, dict):
            kind = ctype or "no content type"
            raise ConfigError(_line(what, f"{self.uri} answered HTTP {r.status_code} ({kind}) and does not "
                                          f"look like an MLflow tracking server; fix MLFLOW_TRACKING_URI"))
        return doc

    def _error(self, r: requests.Response, doc: dict, what: str, missing: Missing | None) -> UserError:
        from .client import error_for

        code = str(doc.get("error_code") or f"HTTP {r.status_code}")
        if code == "RESOURCE_DOES_NOT_EXIST" and missing is not None:
            return missing()
        return error_for(what, code, str(doc.get("message") or r.reason or ""))


def retry_delay(attempt: int, attempts: int, backoff: float, *, status: int | None = None,
                connection_error: bool = False, answered: bool = False) -> float | None:
    """Seconds to wait before trying again, or None to stop (pure).

    Retried: HTTP 408/429/5xx, and a lost connection to a server that answered before (a
    restart, a reset). Not retried: the first contact failing (a wrong URI or a server that is
    down should say so at once, as MLflow's own check does), or the last attempt. Exponential
    backoff like MLflow's: ``backoff * 2**(attempt-1)``, at most 30 s.
    """
    if attempt >= attempts:
        return None
    if connection_error:
        transient = answered
    else:
        transient = status in TRANSIENT_HTTP
    return min(backoff * 2 ** (attempt - 1), 30.0) if transient else None


def retry_after(value: str | None) -> float:
    """The seconds a 429/503's ``Retry-After`` asks for (MLflow's client waits that long too), at
    most the backoff's cap of 30 s; 0 when it is absent or not a number of seconds."""
    try:
        seconds = float(value or 0)
    except ValueError:
        return 0.0
    return min(seconds, 30.0) if math.isfinite(seconds) and seconds > 0 else 0.0


def _line(what: str, text: str) -> str:
    return f"{what}: {text}" if what else text


_clients: dict[tuple, MlflowRest] = {}
_lock = threading.Lock()


def rest() -> MlflowRest:
    """The client for the configured server (``settings.tracking_uri()``), one per server and
    credentials, shared by the threads of this process."""
    from .client import apply_http_defaults

    apply_http_defaults()
    uri = settings.tracking_uri()
    key = (uri, os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD"),
           os.environ.get("MLFLOW_TRACKING_TOKEN"))
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = MlflowRest(uri)
        return client
