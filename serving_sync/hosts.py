"""Which serving hosts to reconcile: the hosts file (TOML) or one host from the environment.

Every field is validated up front so that a typo fails before anything is touched, with one
line naming the file, the host entry and the field. Format (docs/architecture.md)::

    [[hosts]]
    name = "local"
    target = "file:///abs/path/serving"     # or ssh://user@host:22/var/models, s3://bucket/prefix
    rest_url = "http://127.0.0.1:8501"
    grpc = "127.0.0.1:8500"                 # optional: immediate config reload
    known_hosts = "~/.ssh/known_hosts"      # ssh only (default ~/.ssh/known_hosts)
    identity_file = "~/.ssh/id_ed25519"     # ssh only; else the SSH agent and default keys
    model_base_path = "/models"             # optional: the base as TF Serving sees it
    metrics_url = "http://127.0.0.1:8501/monitoring/prometheus/metrics"   # optional (this default)

A shared store (top-level key, before the ``[[hosts]]`` tables) makes a deploy upload a version
once and every ``ssh://`` host pull it with presigned URLs (``serving_sync.store``)::

    store = "s3://bucket/prefix"              # optional; the deploy's AWS_* credentials write it
    store_endpoint = "http://10.0.0.5:8333"   # optional: the S3 endpoint as the hosts reach it

Without a hosts file, ``MLOPS_SYNC_TARGET`` + ``MLOPS_SYNC_REST_URL`` (+ ``MLOPS_SYNC_GRPC``,
``MLOPS_SYNC_KNOWN_HOSTS``, ``MLOPS_SYNC_IDENTITY_FILE``, ``MLOPS_SYNC_MODEL_BASE_PATH``,
``MLOPS_SYNC_METRICS_URL``) describe a single host named ``MLOPS_SYNC_NAME`` (default ``default``).
"""
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlops_common import settings
from mlops_common.errors import ConfigError, NotFoundError

from .names import MODEL_NAME_RE, has_control, has_traversal

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
HOST_NAME_MAX = 256     # registry.ledger's host column, VARCHAR(256) (not imported: no SQLAlchemy here)
HOST_FIELDS = ("name", "target", "rest_url", "grpc", "known_hosts", "identity_file", "model_base_path",
               "metrics_url")
METRICS_PATH = "/monitoring/prometheus/metrics"     # TF Serving's prometheus_config default path
SSH_ONLY = ("known_hosts", "identity_file")
ENV_FIELDS = {
    "target": "MLOPS_SYNC_TARGET",
    "rest_url": "MLOPS_SYNC_REST_URL",
    "grpc": "MLOPS_SYNC_GRPC",
    "known_hosts": "MLOPS_SYNC_KNOWN_HOSTS",
    "identity_file": "MLOPS_SYNC_IDENTITY_FILE",
    "model_base_path": "MLOPS_SYNC_MODEL_BASE_PATH",
    "name": "MLOPS_SYNC_NAME",
    "metrics_url": "MLOPS_SYNC_METRICS_URL",
}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_.:\[\]-]+\Z")
_USER_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?\Z")


@dataclass(frozen=True)
class Target:
    """Where a host's base directory is: ``scheme`` file | ssh | s3."""

    scheme: str
    path: str                     # file/ssh: absolute base directory; s3: key prefix ('' = bucket root)
    host: str | None = None       # ssh
    port: int = 22                # ssh
    user: str | None = None       # ssh (None: the local user name)
    bucket: str | None = None     # s3

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        if self.scheme == "ssh":
            user = f"{self.user}@" if self.user else ""
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"ssh://{user}{host}:{self.port}{self.path}"
        return f"s3://{self.bucket}/{self.path}".rstrip("/")


@dataclass(frozen=True)
class Store:
    """A shared S3 store the ``ssh://`` hosts pull versions from (hosts file ``store``)."""

    target: Target                # scheme "s3"
    endpoint: str | None = None   # the S3 endpoint as the hosts reach it (None: the deploy's)

    @property
    def url(self) -> str:
        return self.target.url


@dataclass(frozen=True)
class Host:
    """One serving host, validated."""

    name: str
    target: Target
    rest_url: str
    grpc: str | None = None
    known_hosts: Path | None = None
    identity_file: Path | None = None
    model_base_path: str | None = None
    source: str = field(default="", compare=False)   # where it was defined, for messages
    metrics_url: str | None = None                   # TF Serving's Prometheus page (None: the default)
    store: Store | None = None                       # ssh hosts: pull versions from this shared store

    @property
    def metrics(self) -> str:
        """Where the canary bake reads TF Serving's metrics (``<rest_url>/monitoring/prometheus/metrics``)."""
        return self.metrics_url or self.rest_url + METRICS_PATH

    def serving_base_path(self) -> str:
        """The base directory as TF Serving sees it (``model_base_path``, else the target's)."""
        if self.model_base_path:
            return self.model_base_path.rstrip("/") or "/"
        return self.target.url if self.target.scheme == "s3" else self.target.path

    def to_dict(self) -> dict:
        return {"name": self.name, "target": self.target.url, "rest_url": self.rest_url,
                "grpc": self.grpc, "model_base_path": self.serving_base_path()}


class _Where:
    """Builds the one-line error prefix: file, host entry, field."""

    def __init__(self, source: str, index: int | None = None, name: str | None = None):
        self.source, self.index, self.name = source, index, name

    def error(self, fld: str | None, problem: str) -> ConfigError:
        parts = [self.source]
        if self.index is not None:
            parts.append(f"hosts[{self.index}]" + (f" ({self.name!r})" if self.name else ""))
        if fld:
            parts.append(f"field {fld!r}")
        return ConfigError(": ".join(parts) + f": {problem}")


def _absolute_path(value: str, where: _Where, fld: str) -> str:
    if not value.startswith("/"):
        raise where.error(fld, f"{value!r} must be an absolute path")
    if has_traversal(value):
        raise where.error(fld, f"{value!r} must not contain '..'")
    if has_control(value):
        raise where.error(fld, "contains control or line-separator characters")
    # '//' and '.' name the same folder: one base directory is one spelling (hosts-file check, locks)
    return "/" + "/".join(p for p in value.split("/") if p not in ("", "."))


def _missing_or_not_text(value: object) -> str:
    """``rest_url = 5`` is there, but not text: "missing" sent people looking for a key they had."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "missing"
    kind = ("true/false" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
            else "a list" if isinstance(value, list) else "a table" if isinstance(value, dict)
            else f"a {type(value).__name__}")
    return f"must be a quoted string, not {kind}"     # not its value: a list or table may hold a password


def parse_target(value: object, where: _Where) -> Target:
    """Parse ``file:///abs``, ``ssh://[user@]host[:port]/abs`` or ``s3://bucket[/prefix]``.

    A password in the URL is refused first, without echoing the value; every later message
    echoes the value with anything that could be a password masked (``shown``)."""
    if not isinstance(value, str) or not value.strip():
        raise where.error("target", f"{_missing_or_not_text(value)}; use file:///abs/path, "
                                    f"ssh://user@host:22/abs/path or s3://bucket/prefix")
    value = value.strip()
    shown = settings.mask_url_password(value)
    if has_control(value):      # urlsplit drops tabs and new lines without a word: a different path
        raise where.error("target", "contains control or line-separator characters")
    if settings.query_secrets(value):       # ?token=: refused before a message could echo it
        raise where.error("target", "must not contain credentials (a token, key or password in its query would "
                                    "end up in logs); use file:///abs/path, ssh://user@host:22/abs/path or "
                                    "s3://bucket/prefix")
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        raise where.error("target", f"{shown!r} is not a URL; use file:///abs/path, "
                                    f"ssh://user@host:22/abs/path or s3://bucket/prefix") from None
    if password is not None or shown != value:      # a "/" in it hides a password from urlsplit
        if parts.scheme == "s3":
            raise where.error("target", "must not contain credentials; S3 credentials come from "
                                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if parts.scheme == "ssh":
            raise where.error("target", "must not contain a password; SSH uses keys "
                                        "(identity_file or the SSH agent)")
        raise where.error("target", "must not contain a password; use file:///abs/path, "
                                    "ssh://user@host:22/abs/path or s3://bucket/prefix")
    if has_traversal(value):
        raise where.error("target", f"{shown!r} must not contain '..'")
    if parts.query or parts.fragment:
        raise where.error("target", f"{shown!r} must not have a query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise where.error("target", f"{shown!r}: a file target is file:///absolute/path "
                                        f"(three slashes)")
        return Target("file", _absolute_path(unquote(parts.path), where, "target"))
    if parts.scheme == "ssh":
        if not parts.hostname:
            raise where.error("target", f"{shown!r} has no host; use ssh://user@host:22/abs/path")
        try:
            port = 22 if parts.port is None else parts.port
        except ValueError:
            raise where.error("target", f"{shown!r} has an invalid port") from None
        if not 1 <= port <= 65535:
            raise where.error("target", f"{shown!r} has an invalid port")
        user = unquote(parts.username) if parts.username else None
        if user is not None and not _USER_RE.match(user):
            raise where.error("target", f"invalid user name {user!r}")
        if not _HOSTNAME_RE.match(parts.hostname):
            raise where.error("target", f"invalid host name {parts.hostname!r}")
        if not parts.path or parts.path == "/":
            raise where.error("target", f"{shown!r} needs the absolute base directory, "
                                        f"e.g. ssh://deploy@host:22/var/models")
        return Target("ssh", _absolute_path(unquote(parts.path), where, "target"),
                      host=parts.hostname, port=port, user=user)
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET_RE.match(bucket or "") or ".." in bucket:
            raise where.error("target", f"{shown!r}: invalid bucket name {bucket!r} (3-63 lowercase "
                                        f"letters, digits, '.', '-')")
        prefix = unquote(parts.path).strip("/")
        if has_control(prefix) or "\\" in prefix or "//" in prefix or has_traversal(prefix):
            raise where.error("target", f"{shown!r}: invalid key prefix")
        return Target("s3", prefix, bucket=bucket)
    raise where.error("target", f"{shown!r}: unsupported scheme {parts.scheme or '(none)'!r}; "
                                f"use file://, ssh:// or s3://")


def _check_rest_url(value: object, where: _Where, fld: str = "rest_url") -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(fld, f"{_missing_or_not_text(value)}; " + (
            "the TF Serving REST address, e.g. http://127.0.0.1:8501" if fld == "rest_url" else
            "TF Serving's metrics page, e.g. http://127.0.0.1:8501/monitoring/prometheus/metrics"))
    # metrics_url is used as written: TF Serving serves its page at prometheus_config's path exactly
    # (a trailing "/" and a path under /v1/ included: http_server.cc looks it up before /v1/)
    value = value.strip() if fld == "metrics_url" else value.strip().rstrip("/")
    example = "an http(s) URL like http://127.0.0.1:8501"
    if has_control(value):
        raise where.error(fld, f"contains control or line-separator characters; it must be {example}")
    if settings.query_secrets(value):       # ?api_key= (a gateway's): refused before a message could echo it
        raise where.error(fld, "must not contain credentials (they would end up in logs)")
    try:
        parts = urlsplit(value)
        port, credentials = parts.port, parts.username or parts.password
    except ValueError:          # "http://[::1", a port that is not a number: not echoed (a password?)
        big = re.fullmatch(r"[a-z]+://[A-Za-z0-9_.-]+:(\d+)(/.*)?", value)
        if big:
            raise where.error(fld, f"port {big.group(1)} is out of range 1-65535; it must be {example}") from None
        raise where.error(fld, f"is not {example}") from None
    if credentials:
        raise where.error(fld, "must not contain credentials (they would end up in logs)")
    if parts.scheme not in ("http", "https") or not parts.hostname or (port is not None and not 1 <= port <= 65535) \
            or parts.query or parts.fragment or has_traversal(parts.path):
        raise where.error(fld, f"{value!r} is not {example}")
    if fld != "metrics_url" and re.search(r"/v1(/.*)?$", parts.path):
        raise where.error(fld, f"{value!r} ends in TF Serving's API path; give the server's address without "
                               f"/v1 (requests add /v1/models/...), e.g. http://127.0.0.1:8501")
    return value


def _check_grpc(value: object, where: _Where) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise where.error("grpc", "must be a string host:port, e.g. 127.0.0.1:8500")
    # user:password@ or ?token=: refused before any message could echo the value (TF Serving's
    # gRPC port takes no credentials)
    if "@" in value or settings.query_secrets(value if "://" in value else f"grpc://{value.strip()}"):
        raise where.error("grpc", "must not contain credentials (they would end up in logs); give "
                                  "host:port, e.g. 127.0.0.1:8500")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", value.strip())
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise where.error("grpc", f"{value!r} is not host:port, e.g. 127.0.0.1:8500")
    return value.strip()


def _check_local_file(value: object, where: _Where, fld: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise where.error(fld, "must be a non-empty path string")
    if has_traversal(value):
        raise where.error(fld, f"{value!r} must not contain '..'")
    return Path(value).expanduser()


def _check_base_path(value: object, where: _Where) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise where.error("model_base_path", "must be a non-empty path string")
    value = value.strip()
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if scheme and scheme.group(1) not in ("s3", "gs", "hdfs"):     # S3://, s3a://: not TF Serving's
        raise where.error("model_base_path", f"scheme '{scheme.group(1)}://' is not one TF Serving reads: use "
                                             f"s3://, gs://, hdfs:// (lower case) or an absolute path")
    if scheme:
        if "@" in value.split("/", 3)[2] or settings.query_secrets(value):    # before any line echoes it
            raise where.error("model_base_path", "must not contain credentials; TF Serving reads them "
                                                 "from its own environment (AWS_ACCESS_KEY_ID, ...)")
        if not value.split("/", 3)[2]:
            raise where.error("model_base_path", f"'{value}' names no bucket or host (e.g. s3://bucket/models)")
        if has_control(value):
            raise where.error("model_base_path", "contains control or line-separator characters")
        if has_traversal(value):
            raise where.error("model_base_path", f"{value!r} must not contain '..'")
        return value.rstrip("/")
    return _absolute_path(value, where, "model_base_path")


def parse_host(entry: object, where: _Where) -> Host:
    """Validate one ``[[hosts]]`` table (or the environment's single host)."""
    if not isinstance(entry, dict):
        raise where.error(None, "each [[hosts]] entry must be a table")
    name = entry.get("name")
    if name is None:
        raise where.error("name", "missing; every host needs a name (letters, digits, '.', '_', '-')")
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or ".." in name:
        raise where.error("name", f"{name!r} is invalid: use letters, digits, '.', '_', '-'")
    if len(name) > HOST_NAME_MAX:   # the ledger's host column: PostgreSQL refused the first row mid-deploy
        raise where.error("name", f"is {len(name)} characters long; at most {HOST_NAME_MAX} (the ledger records it)")
    where.name = name
    unknown = sorted(set(entry) - set(HOST_FIELDS))
    if unknown:
        if unknown[0] in ("store", "store_endpoint"):    # TOML puts a key after [[hosts]] into that table
            raise where.error(unknown[0], "is a top-level key: TOML reads it as part of the [[hosts]] table "
                                          "above it; move it before the first [[hosts]] table")
        raise where.error(unknown[0], f"unknown field; allowed: {', '.join(HOST_FIELDS)}")
    target = parse_target(entry.get("target"), where)
    for fld in SSH_ONLY:
        if entry.get(fld) is not None and target.scheme != "ssh":
            raise where.error(fld, f"only applies to ssh:// targets, not {target.scheme}://")
    known = _check_local_file(entry.get("known_hosts"), where, "known_hosts")
    if target.scheme == "ssh" and known is None:
        known = Path(DEFAULT_KNOWN_HOSTS).expanduser()
    return Host(
        name=name,
        target=target,
        rest_url=_check_rest_url(entry.get("rest_url"), where),
        grpc=_check_grpc(entry.get("grpc"), where),
        known_hosts=known,
        identity_file=_check_local_file(entry.get("identity_file"), where, "identity_file"),
        model_base_path=_check_base_path(entry.get("model_base_path"), where),
        source=where.source,
        metrics_url=(_check_rest_url(entry["metrics_url"], where, "metrics_url")
                     if entry.get("metrics_url") is not None else None),
    )


def parse_hosts_toml(text: str, source: str) -> list[Host]:
    """Parse the text of a hosts file; ``source`` names it in error messages."""
    where = _Where(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise where.error(None, f"not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"hosts", "store", "store_endpoint"})
    if unknown:
        raise where.error(None, f"unknown top-level key {unknown[0]!r}; allowed: store, store_endpoint; "
                                f"hosts are listed as [[hosts]] tables")
    store = parse_store(data.get("store"), data.get("store_endpoint"), where)
    entries = data.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise where.error(None, "no hosts: add at least one [[hosts]] table with name, target and rest_url")
    hosts: list[Host] = []
    seen: set[str] = set()
    bases: dict[tuple, str] = {}
    servers: dict[tuple, str] = {}
    for i, entry in enumerate(entries):
        host = parse_host(entry, _Where(source, i))
        at = _Where(source, i, host.name)
        if host.name in seen:
            raise at.error("name", "duplicate host name; names must be unique")
        seen.add(host.name)
        base = base_key(host.target)
        if base in bases:       # two names for one base directory: the deploy would wait on its own lock
            raise at.error("target", f"the same base directory as host {bases[base]!r}; list each base "
                                     f"directory once")
        bases[base] = host.name
        # one TF Serving reads one models.config: two entries for it would point it at each other's
        # base directory in turn, and a canary would be judged against itself
        for fld, key in (("rest_url", _server_key(host.rest_url)),
                         ("grpc", _grpc_key(host.grpc) if host.grpc else None)):
            if key is not None and key in servers:
                raise at.error(fld, f"the same TF Serving as host {servers[key]!r}; one TF Serving is one host "
                                    f"(list it once, with the base directory its --model_config_file is in)")
            if key is not None:
                servers[key] = host.name
        hosts.append(replace(host, store=store) if store and host.target.scheme == "ssh" else host)
    _check_metrics_pages(hosts, source)
    return hosts


def _check_metrics_pages(hosts: list[Host], source: str) -> None:
    """Each host's metrics page is its own TF Serving's: a ``metrics_url`` on another host's REST
    server, or one page for two hosts, made the bake judge a canary on another TF Serving's
    traffic (the old version's: a bad canary passed) or against itself."""
    rests = [(_server_key(h.rest_url), h.name) for h in hosts]
    pages: dict[tuple, str] = {}
    for i, h in enumerate(hosts):
        key = _server_key(h.metrics)
        _, _, server, port, path = key
        # whose TF Serving answers this page: the host whose rest_url is its longest prefix
        owners = [(len(r[4]), name) for r, name in rests if r[2:4] == (server, port)
                  and (not r[4] or path == r[4] or path.startswith(r[4] + "/"))]
        owner = max(owners)[1] if owners else None
        where = _Where(source, i, h.name)
        if owner is not None and owner != h.name:
            raise where.error("metrics_url", f"{h.metrics!r} is the TF Serving of host {owner!r}: the bake would "
                                             f"judge this host on that host's traffic; give this host's own page")
        if key[2:] in pages:
            raise where.error("metrics_url", f"{h.metrics!r} is also the metrics page of host {pages[key[2:]]!r}: the "
                                             f"bake would judge one host against the other; give each host its own")
        pages[key[2:]] = h.name


def base_key(t: Target) -> tuple:
    """What names one base directory: a host name's case, the default port and (on this machine)
    a symbolic link do not matter. Also the order a fleet's locks are waited for in
    (``connections.locked``), whatever each hosts file calls its hosts."""
    if t.scheme == "s3":
        return ("s3", t.bucket, t.path)
    if t.scheme == "file":
        return ("file", "", 0, os.path.realpath(t.path))
    return (t.scheme, _name_key(t.host or ""), t.port if t.scheme == "ssh" else 0, t.path)


def _server_key(rest_url: str) -> tuple:
    """What names one TF Serving REST endpoint (case of the host name, default port, a trailing /)."""
    parts = urlsplit(rest_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return ("rest", parts.scheme, _name_key(parts.hostname or ""), port, parts.path.rstrip("/"))


def _name_key(name: str) -> str:
    """One spelling of a host name or address: case and a final dot do not matter, nor how an IP
    address is written (``::1`` is ``0:0::1``; they were two hosts, one TF Serving switched twice)."""
    name = name.strip("[]").lower().rstrip(".")
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


def _grpc_key(grpc: str) -> tuple:
    name, _, port = grpc.rpartition(":")
    return ("grpc", _name_key(name), int(port))


def parse_store(value: object, endpoint: object, where: _Where) -> Store | None:
    """The top-level ``store = "s3://bucket/prefix"`` (+ ``store_endpoint``), validated."""
    if value is None:
        if endpoint is not None:
            raise where.error("store_endpoint", "set without 'store'; add store = \"s3://bucket/prefix\"")
        return None
    if not isinstance(value, str) or not value.startswith("s3://"):
        shown = settings.mask_url_password(value) if isinstance(value, str) else value
        raise where.error("store", f"{shown!r}: a shared store is an s3://bucket/prefix URL")
    target = parse_target(value, _StoreWhere(where))
    if endpoint is not None:
        endpoint = _check_rest_url(endpoint, where, "store_endpoint")
    return Store(target, endpoint)


class _StoreWhere(_Where):
    """Reports target problems under the ``store`` key."""

    def __init__(self, where: _Where):
        super().__init__(where.source)

    def error(self, fld, problem):
        return super().error("store" if fld == "target" else fld, problem)


def hosts_from_env(environ: dict[str, str]) -> list[Host]:
    """The single host described by ``MLOPS_SYNC_*`` variables."""
    entry = {fld: environ[var] for fld, var in ENV_FIELDS.items() if environ.get(var)}
    entry.setdefault("name", "default")
    where = _Where("environment (MLOPS_SYNC_*)")
    if "rest_url" not in entry:
        raise where.error(None, "MLOPS_SYNC_TARGET is set but MLOPS_SYNC_REST_URL is not; set it to "
                                "the TF Serving REST address, e.g. http://127.0.0.1:8501")
    return [parse_host(entry, where)]


def hosts_file_path(explicit_file: str | None = None, environ: dict[str, str] | None = None) -> Path | None:
    """The hosts file ``load_hosts`` reads: ``--hosts FILE``, else None when ``MLOPS_SYNC_TARGET``
    names one host, else ``MLOPS_HOSTS_FILE`` or ``$MLOPS_HOME/hosts.toml``."""
    environ = dict(os.environ) if environ is None else environ
    if not explicit_file and environ.get("MLOPS_SYNC_TARGET"):
        return None
    return Path(explicit_file) if explicit_file else settings.hosts_file()


def load_hosts(explicit_file: str | None = None, environ: dict[str, str] | None = None) -> list[Host]:
    """Hosts to reconcile: ``--hosts FILE``, else ``MLOPS_SYNC_TARGET``, else the hosts file.

    The hosts file is ``MLOPS_HOSTS_FILE`` or ``$MLOPS_HOME/hosts.toml``. Setting both
    ``MLOPS_HOSTS_FILE`` and ``MLOPS_SYNC_TARGET`` is ambiguous and refused.
    """
    environ = dict(os.environ) if environ is None else environ
    path = hosts_file_path(explicit_file, environ)
    if path is None:
        if environ.get("MLOPS_HOSTS_FILE"):
            raise ConfigError("both MLOPS_HOSTS_FILE and MLOPS_SYNC_TARGET are set; unset one of them "
                              "(a hosts file for several hosts, MLOPS_SYNC_TARGET for one)")
        return hosts_from_env(environ)
    if path.exists() and not path.is_file():
        raise ConfigError(f"hosts file {path} is {'a directory' if path.is_dir() else 'not a regular file'}; "
                          f"point --hosts or MLOPS_HOSTS_FILE at the TOML file that lists the hosts")
    if not path.is_file():
        raise NotFoundError(f"hosts file {path} does not exist; create it ([[hosts]] with name, target, "
                            f"rest_url; see docs/architecture.md) or set MLOPS_SYNC_TARGET and "
                            f"MLOPS_SYNC_REST_URL")
    _refuse_writable_by_others(path)
    try:
        # utf-8-sig: a byte order mark (Windows editors write one) was "Invalid statement (line 1, column 1)"
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the hosts file ({exc})") from None
    return parse_hosts_toml(text, str(path))


def _refuse_writable_by_others(path: Path) -> None:
    """The hosts file decides where a deploy writes and which host keys and SSH key it trusts: one
    any user may write (or replace, in a folder any user may write without the sticky bit) let
    another local user point the next deploy at a host of theirs. ``ssh`` refuses such a
    config file ("Bad owner or permissions"); so does the deploy. Group write is left alone
    (a shared deploy group's umask 002 is common)."""
    import stat

    real = Path(os.path.realpath(path))
    checks = [(real, "the hosts file")] + [(d, "the folder of the hosts file") for d in dict.fromkeys(
        (Path(os.path.realpath(path.parent)), real.parent))]
    for p, what in checks:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue       # unreadable: the read below says so
        if mode & stat.S_IWOTH and not (what != "the hosts file" and mode & stat.S_ISVTX):
            raise ConfigError(f"{what} {p} may be written by any user (mode {mode & 0o7777:04o}), and it decides "
                              f"where deploys go and which host keys they trust; ssh refuses such a config "
                              f"too: chmod o-w {p}")
