"""The one place that talks to the MLflow tracking server: configured, checked, errors translated.

Two clients, one translation. ``tracking_client()`` (MLflow's ``MlflowClient``) for what needs
MLflow itself (registering, logging, model loading, artifact stores other than the server's
proxy); ``registry.rest.rest()`` for the handful of registry calls on the fast paths (aliases,
versions, tags, small artifacts) without importing mlflow. Either way a wrong URI, bad
credentials, a missing model or version each end as one clear line (``error_for``).
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
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def apply_http_defaults() -> None:
    """Our bounded retry/timeout defaults, unless the user set them (MLflow reads the environment)."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


def check_uri(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        # `mlflow run` without MLFLOW_TRACKING_URI hands its child a sqlite file of its own
        hint = ("; `mlflow run` sets it to a local file when it is not exported: export "
                "MLFLOW_TRACKING_URI before `mlflow run`" if os.environ.get("MLFLOW_RUN_ID") else "")
        raise ConfigError(f"MLFLOW_TRACKING_URI must be the http(s) URL of an MLflow tracking "
                          f"server (e.g. http://127.0.0.1:5000), got '{uri}'{hint}")


def error_for(what: str, code: str, message: str) -> UserError:
    """MLflow's error code for ``what`` as one line a person can act on."""
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(f"{what}: {message}")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return ConfigError(f"{what}: MLflow refused access ({code}); check MLFLOW_TRACKING_USERNAME "
                           f"and MLFLOW_TRACKING_PASSWORD")
    return UserError(f"{what}: MLflow answered {code}: {message}")


@lru_cache(maxsize=8)
def check_server(uri: str) -> None:
    """Fail with one line unless ``uri`` is a reachable MLflow tracking server we may use."""
    from .rest import MlflowRest

    MlflowRest(uri).probe()


def tracking_client():
    """An ``MlflowClient`` for the configured server, after checking the server answers."""
    apply_http_defaults()
    uri = settings.tracking_uri()
    check_server(uri)
    import mlflow
    from mlflow import MlflowClient

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
        raise error_for(what, getattr(exc, "error_code", ""), exc.message) from None
    except MlflowException as exc:
        msg = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
        if "error responses" in msg:    # urllib3: "too many 500 error responses": it answered, failing
            raise ConnectionFailure(f"{what}: the MLflow server at {settings.tracking_uri()} kept answering "
                                    f"HTTP errors after retries: it is up but failing; check its log") from None
        if "Max retries exceeded" in msg or "Connection" in msg or "ConnectionError" in msg:
            raise ConnectionFailure(f"{what}: lost the connection to the MLflow server at "
                                    f"{settings.tracking_uri()} after retries; check that it is running") from None
        raise UserError(f"{what}: {msg}") from None
    except requests.ConnectionError:
        raise ConnectionFailure(f"{what}: cannot reach the MLflow server at {settings.tracking_uri()}; "
                                f"check that it is running") from None
