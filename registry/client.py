"""The one place that talks to the MLflow tracking server: configured, checked, errors translated.

Every registry operation goes through ``tracking_client()`` and runs inside ``mlflow_errors()``,
so a wrong URI, bad credentials, a missing model or version each end as one clear line.
MLflow's own HTTP retries (5xx, 429, resets: exponential backoff) are bounded here unless the
user has set them.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import requests

from mlops_common import settings
from mlops_common.errors import ConfigError, ConnectionFailure, NotFoundError, UserError

# Bound MLflow's built-in retry/backoff (defaults would retry for minutes).
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def _auth() -> tuple[str, str] | None:
    user, pw = settings.env("MLFLOW_TRACKING_USERNAME"), settings.env("MLFLOW_TRACKING_PASSWORD")
    return (user, pw) if user and pw else None


@lru_cache(maxsize=8)
def check_server(uri: str) -> None:
    """Fail with one line unless ``uri`` is a reachable MLflow tracking server we may use."""
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLFLOW_TRACKING_URI must be the http(s) URL of an MLflow tracking "
                          f"server (e.g. http://127.0.0.1:5000), got '{uri}'")
    base = uri.rstrip("/")
    try:
        r = requests.get(f"{base}/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": "Default"}, auth=_auth(), timeout=10)
    except requests.ConnectionError:
        raise ConnectionFailure(f"cannot reach the MLflow server at {uri} (connection refused or "
                                f"no route); start it with `mlops up` or fix MLFLOW_TRACKING_URI") from None
    except requests.Timeout:
        raise ConnectionFailure(f"the MLflow server at {uri} did not answer within 10s; "
                                f"check that it is running and MLFLOW_TRACKING_URI") from None
    if r.status_code in (401, 403):
        raise ConfigError(f"the MLflow server at {uri} rejected the credentials (HTTP {r.status_code}); "
                          f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a valid user")
    ctype = r.headers.get("content-type", "")
    if "json" not in ctype or r.status_code not in (200, 404):
        raise ConfigError(f"{uri} answered HTTP {r.status_code} ({ctype or 'no content type'}) and "
                          f"does not look like an MLflow tracking server; fix MLFLOW_TRACKING_URI")


def tracking_client():
    """An ``MlflowClient`` for the configured server, after checking the server answers."""
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    uri = settings.tracking_uri()
    check_server(uri)
    from mlflow import MlflowClient
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def mlflow_errors(what: str):
    """Translate MLflow exceptions raised inside the block into one-line user errors."""
    from mlflow.exceptions import MlflowException, RestException

    try:
        yield
    except UserError:
        raise
    except RestException as exc:
        code = getattr(exc, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(f"{what}: {exc.message}") from None
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise ConfigError(f"{what}: MLflow refused access ({code}); check MLFLOW_TRACKING_USERNAME "
                              f"and MLFLOW_TRACKING_PASSWORD") from None
        raise UserError(f"{what}: MLflow answered {code}: {exc.message}") from None
    except MlflowException as exc:
        msg = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
        if "Max retries exceeded" in msg or "Connection" in msg or "ConnectionError" in msg:
            raise ConnectionFailure(f"{what}: lost the connection to the MLflow server at "
                                    f"{settings.tracking_uri()} after retries; check that it is running") from None
        raise UserError(f"{what}: {msg}") from None
    except requests.ConnectionError:
        raise ConnectionFailure(f"{what}: cannot reach the MLflow server at {settings.tracking_uri()}; "
                                f"check that it is running") from None
