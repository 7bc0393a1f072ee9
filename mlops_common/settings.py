"""Where things are: resolved from the environment, with the embedded default as fallback.

Standard variable names are used where they exist (``MLFLOW_TRACKING_URI``, ``AWS_*``,
``MLFLOW_S3_ENDPOINT_URL``); project settings use the ``MLOPS_`` prefix. Secrets are only
ever read from the environment and never written anywhere by this module.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError

DEFAULT_MODEL_NAME = "image-classifier"
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500
DEFAULT_LOCK_TTL = 10 * 60.0  # a host lock silent this long is taken over (MLOPS_LOCK_TTL)

# Environment variables whose values are secrets: never logged, tagged or persisted.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "CIRCLE_TOKEN",
    "CIRCLECI_TOKEN",
    "SLACK_WEBHOOK_URL",
    "MLOPS_WEBHOOK_SECRET",
    "MLOPS_LEDGER_URL",  # may embed a database password
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
)


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, with empty strings treated as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def require_env(name: str, why: str) -> str:
    value = env(name)
    if value is None:
        raise ConfigError(f"{name} is not set: {why}")
    return value


def state_dir() -> Path:
    """The embedded default's state folder (MLflow DB, artifacts, ledger, serving base)."""
    return Path(env("MLOPS_HOME", ".mlops")).expanduser().resolve()


def model_name(explicit: str | None = None) -> str:
    return explicit or env("MLOPS_MODEL_NAME", DEFAULT_MODEL_NAME)


def local_mlflow_port() -> int:
    return int(env("MLOPS_MLFLOW_PORT", str(DEFAULT_MLFLOW_PORT)))


def local_mlflow_url() -> str:
    """URL of the embedded MLflow server: the one recorded by ``mlops up``, else the default port."""
    info = state_dir() / "mlflow-server.json"
    if info.is_file():
        try:
            return json.loads(info.read_text())["url"]
        except (ValueError, KeyError):
            pass
    return f"http://127.0.0.1:{local_mlflow_port()}"


_announced = False


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the local server (saying so once on stderr)."""
    global _announced
    uri = env("MLFLOW_TRACKING_URI")
    if uri:
        check_no_userinfo(uri)
        return uri
    uri = local_mlflow_url()
    if not _announced:
        print(f"MLFLOW_TRACKING_URI is not set; using the local MLflow server at {uri} "
              "(start it with `mlops up`).", file=sys.stderr)
        _announced = True
    os.environ["MLFLOW_TRACKING_URI"] = uri  # so MLflow's own clients agree with us
    return uri


def check_no_userinfo(uri: str) -> None:
    """Refuse ``scheme://user:password@host`` (without echoing it): such a URI ends up in error
    messages, run URLs and CI logs. MLflow reads credentials from their own variables."""
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        netloc = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""
    if "@" in netloc:
        raise ConfigError("MLFLOW_TRACKING_URI must not contain a user name or password (it would be "
                          "printed and stored in logs); put them in MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")


def ledger_url() -> str:
    """SQLAlchemy URL of the ledger: ``MLOPS_LEDGER_URL`` or a SQLite file in the state folder."""
    url = env("MLOPS_LEDGER_URL")
    if url:
        return url
    path = state_dir() / "ledger.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def lock_ttl() -> float:
    """Seconds without a heartbeat after which a host lock is stale: ``MLOPS_LOCK_TTL`` or 10 min."""
    raw = env("MLOPS_LOCK_TTL")
    if raw is None:
        return DEFAULT_LOCK_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not (math.isfinite(ttl) and ttl > 0):
        raise ConfigError(f"MLOPS_LOCK_TTL must be a positive number of seconds (got {raw!r})")
    return ttl


def hosts_file(explicit: str | None = None) -> Path:
    return Path(explicit or env("MLOPS_HOSTS_FILE") or (state_dir() / "hosts.toml"))


def secret_values() -> list[str]:
    """Current values of secret variables (for redaction); short values are ignored."""
    return [v for k in SECRET_ENV_VARS if (v := os.environ.get(k)) and len(v) >= 4]
