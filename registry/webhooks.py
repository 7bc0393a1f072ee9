"""Create or update the MLflow webhook that announces ``production`` moves to a deploy receiver.

MLflow 3 sends ``model_version_alias.created`` when an alias is set (also from the MLflow UI),
HMAC-signed with the webhook's secret (header ``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of
"<delivery id>.<timestamp>.<body>">``, plus ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``).
Webhooks need a SQL backend store. The secret is read from an environment variable only and
is passed to MLflow, which stores it encrypted; we never print, log or write it.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

import requests

from mlops_common import settings
from mlops_common.errors import ConfigError, RefusedError

from .client import mlflow_errors, tracking_client

EVENT = "model_version_alias.created"
DEFAULT_NAME = "mlops-deploy-on-alias"
DEFAULT_SECRET_ENV = "MLOPS_WEBHOOK_SECRET"
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")

SERVER_SIDE_HELP = (
    "What the MLflow server needs (environment of the `mlflow server` process, not of this "
    "command): a SQL backend store (webhooks are not supported on a file store); "
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY set to a Fernet key (e.g. python -c \"from "
    "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"), the same for "
    "every worker and across restarts, or stored secrets cannot be decrypted later. For a "
    "receiver on plain http (e.g. a local `mlops sync watch` at http://127.0.0.1:PORT/...): "
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https (default https only) and, for a private or "
    "loopback address, MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true (by default MLflow refuses URLs "
    "that resolve to private IPs, both when the webhook is created and when it delivers). "
    "MLflow caches the webhook list for MLFLOW_WEBHOOK_CACHE_TTL seconds (default 60), so a new "
    "or changed webhook may take that long to fire. Deliveries are retried "
    "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES times (default 3) with a MLFLOW_WEBHOOK_REQUEST_TIMEOUT "
    "(default 30 s).")


@dataclass(frozen=True)
class WebhookInfo:
    id: str
    name: str
    url: str
    events: list[str]
    status: str
    created: bool   # False: an existing webhook of that name was updated
    removed: tuple[str, ...] = ()   # ids of other webhooks of that name, deleted
    replaced_url: str | None = None   # updated: the receiver it pointed at before, when another (shown)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "url": self.url, "events": self.events,
                "status": self.status, "created": self.created, "removed_duplicates": list(self.removed),
                "replaced_url": self.replaced_url}


def _translate(message: str) -> str:
    if "scheme" in message and "Allowed schemes" in message:
        return (f"the MLflow server refused the URL: {message} Start the MLflow server with "
                f"MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https to allow a plain-http receiver.")
    if "non-public IP" in message or "private" in message.lower():
        return (f"the MLflow server refused the URL: {message} Start the MLflow server with "
                f"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true to allow a receiver on a private or "
                f"loopback address.")
    return message


NO_WEBHOOKS = "this MLflow server does not support webhooks (it needs a SQL backend store)"


def unsupported(list_status: int | None, store_type: str | None) -> str | None:
    """Pure: the line that says the server cannot hold webhooks, from one answer to the webhooks
    list (not retried) and the store type of ``/api/3.0/mlflow/server-info``; None: go on.

    A file store answers HTTP 500 (MLflow raises NotImplementedError inside the server, the
    answer says nothing more), which MLflow's client retries for ~17 s and then reports as a lost
    connection. A 500 from a server whose store can hold webhooks is left to those retries."""
    if list_status == 500 and store_type == "FileStore":
        return f"{NO_WEBHOOKS}; its backend store is a file store: start it with a database URI"
    return None


def _support_problem() -> str | None:
    """Ask the server once, without retries, whether it can hold webhooks (``unsupported``)."""
    from .rest import API, rest

    client = rest()
    try:
        r = client.session.get(f"{client.uri}{API}/webhooks", params={"max_results": 1}, timeout=client.timeout)
        if r.status_code != 500:
            return None
        info = client.session.get(f"{client.uri}/api/3.0/mlflow/server-info", timeout=client.timeout)
        store = info.json().get("store_type") if info.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError):
        return None         # MLflow's client below asks again and says what is wrong
    return unsupported(r.status_code, store)


def _events(wh) -> list[str]:
    out = []
    for e in wh.events:
        out.append(f"{e.entity.value}.{e.action.value}" if hasattr(e, "entity") else str(e))
    return out


MIN_SECRET_CHARS = 16


def check_secret_strength(secret: str, env_name: str) -> None:
    """One rule for both ends of a webhook: MLflow's sender (``ensure_webhook``) and the receiver
    of ``mlops sync watch`` (``serving_sync.webhook.Receiver``)."""
    if len(secret) < MIN_SECRET_CHARS:
        raise RefusedError(f"{env_name} is too short ({len(secret)} characters); use a random "
                           f"secret of at least {MIN_SECRET_CHARS} characters")
    try:            # raw random bytes: MLflow signs with the secret as UTF-8 text, and so must we
        secret.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{env_name} holds bytes that are not UTF-8 text (raw random bytes?); use "
                          f"printable random text, e.g. `openssl rand -hex 32`") from None


def ensure_webhook(url: str, *, secret_env: str = DEFAULT_SECRET_ENV, name: str = DEFAULT_NAME,
                   description: str | None = None) -> WebhookInfo:
    """Create the webhook ``name`` for ``model_version_alias.created``, or update it in place."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must be an http(s) URL of the deploy receiver, got "
                          f"'{settings.mask_url_password(url)}'")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError("--url must not hold a user name or password: MLflow stores the URL and shows "
                          "it to everyone who can read the model; the receiver checks MLflow's HMAC "
                          "signature instead")
    if settings.query_secrets(url):     # as for user:password@ (and MLFLOW_TRACKING_URI's ?token=)
        raise ConfigError("--url must not carry a credential in its query string (a token, key, signature or "
                          "password parameter): MLflow stores the URL and shows it to everyone who can read "
                          "the model; the receiver checks MLflow's HMAC signature instead")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:     # an unclosed IPv6 bracket: not the port's fault
        raise ConfigError(f"--url is not a valid URL ({exc}): '{settings.mask_url_password(url)}'") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"--url has a port that is not a number from 1 to 65535: "
                          f"'{settings.mask_url_password(url)}'")
    if not _NAME_RE.fullmatch(name):        # match: "$" let a trailing newline through
        raise ConfigError(f"webhook name {name!r} is invalid: letters, digits, '.', '_' and '-', "
                          f"starting and ending with a letter or digit, at most 63 characters")
    secret = settings.named_secret(secret_env)
    if secret is None:
        raise ConfigError(f"{secret_env} is not set: export the HMAC secret shared with the deploy "
                          f"receiver in that variable (it is read from the environment only)")
    check_secret_strength(secret, secret_env)
    if any(secret in u for u in (url, urllib.parse.unquote(url), urllib.parse.unquote_plus(url))):  # encoded too
        raise RefusedError("the webhook URL contains the secret; keep the secret out of URLs")
    description = description or "tfmodel-delivery: deploy when the production alias moves"
    client = tracking_client()
    problem = _support_problem()
    if problem:
        raise ConfigError(problem)
    with mlflow_errors("creating the MLflow webhook"):
        from mlflow.exceptions import RestException

        try:
            existing = [w for w in _all_webhooks(client) if w.name == name]
            replaced = None
            if existing:
                # another receiver (another fleet's watch, made with the default --name) stops getting
                # deliveries: said, not done silently as "updated"
                replaced = _shown(existing[0].url) if existing[0].url != url else None
                wh = client.update_webhook(existing[0].webhook_id, url=url, events=[EVENT],
                                           secret=secret, status="ACTIVE", description=description)
                created = False
                # MLflow does not keep names unique (two creates at once, or one made by hand): a
                # second one of this name kept firing with its old URL and secret.
                for other in existing[1:]:
                    client.delete_webhook(other.webhook_id)
            else:
                wh = client.create_webhook(name=name, url=url, events=[EVENT], secret=secret,
                                           description=description, status="ACTIVE")
                created = True
        except RestException as exc:
            if exc.error_code == "INVALID_PARAMETER_VALUE":
                raise ConfigError(_translate(exc.message)) from None
            if exc.error_code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED"):
                raise ConfigError(f"{NO_WEBHOOKS}; run MLflow >= 3.3") from None
            raise
    status = wh.status.value if hasattr(wh.status, "value") else str(wh.status)
    return WebhookInfo(id=wh.webhook_id, name=wh.name, url=wh.url, events=_events(wh),
                       status=status, created=created, removed=tuple(w.webhook_id for w in existing[1:]),
                       replaced_url=replaced)


def _shown(url: str) -> str:
    """A stored webhook URL as it may be printed: scheme, host, port and path (one made outside
    mlops may hold a user, password or token, which ours refuses)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that does not parse)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?..." if parts.query else "")


def _all_webhooks(client) -> list:
    out, token = [], None
    for _ in range(100):  # bounded pagination
        page = client.list_webhooks(max_results=100, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out
