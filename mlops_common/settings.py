"""Where things are: resolved from the environment, with the embedded default as fallback.

Standard variable names are used where they exist (``MLFLOW_TRACKING_URI``, ``AWS_*``,
``MLFLOW_S3_ENDPOINT_URL``); project settings use the ``MLOPS_`` prefix. Secrets are only
ever read from the environment and never written anywhere by this module.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
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
    "PGPASSWORD",  # libpq's password when it is not in a URL
)
# Database URLs whose password (``scheme://user:password@host/...``) is a secret of its own: an
# error message may carry the password, or a part of it, without the rest of the URL.
# URLs whose password (if one is written in them) is a secret: databases, and S3 endpoints (a
# password there is accepted by nothing but still printed in "cannot reach" messages)
# MLFLOW_REGISTRY_URI / MLFLOW_REGISTRY_STORE_URI: MLflow's client and server read a registry
# database from them, a password in it as secret as the backend store's
SECRET_URL_ENV_VARS = ("MLOPS_LEDGER_URL", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_URI",
                       "MLFLOW_REGISTRY_STORE_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
                       "AWS_ENDPOINT_URL_S3")
_MIN_SECRET_LEN = 4


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, with empty strings treated as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def token_env(name: str) -> str | None:
    """A token that travels in an HTTP header (``CIRCLE_TOKEN``, ``MLFLOW_TRACKING_TOKEN``).

    A value with whitespace, control or non-ASCII characters (a stray space, a trailing newline
    pasted into a secret store) is refused here, naming the variable and never the value:
    ``requests`` would otherwise refuse the header with an error that quotes it."""
    value = env(name)
    if value is not None and any(not "!" <= c <= "~" for c in value):
        raise ConfigError(f"{name} contains whitespace, control or non-ASCII characters (a stray space "
                          f"or newline?); set it to the bare token")
    return value


def basic_auth() -> tuple[str, str] | None:
    """(``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``) when both are set (MLflow's
    clients then send them as HTTP basic auth), else None. ``requests`` encodes them as Latin-1: a
    character outside it (``€``, or a lone surrogate from bytes that are not UTF-8) was a
    UnicodeEncodeError traceback at the first request; refused here with one line naming the
    variable, never the value."""
    user, password = env("MLFLOW_TRACKING_USERNAME"), env("MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        return None
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        check_utf8(name, value)
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(f"{name} holds a character HTTP basic auth cannot send (Latin-1 only: no "
                              f"euro sign, no letters beyond Western European ones); change it on the MLflow "
                              f"server and set it again") from None
    return user, password


def check_requests_auth(url: str) -> None:
    """Without MLFLOW_TRACKING_USERNAME / PASSWORD, ``requests`` (ours and MLflow's) sends the
    ``~/.netrc`` entry (or the file NETRC names) for ``url``'s host as basic auth, and a proxy URL's
    ``user:password@`` as proxy auth, both encoded as Latin-1: a ``€`` in either was a
    UnicodeEncodeError traceback at the first request, a netrc file of Latin-1 bytes a
    UnicodeDecodeError one. One line naming the file or the proxy, never the value."""
    import requests.utils

    netrc = "the file NETRC names" if os.environ.get("NETRC") is not None else "~/.netrc"
    try:
        user, password = ("", "") if basic_auth() else (requests.utils.get_netrc_auth(url) or ("", ""))
    except UnicodeDecodeError:
        raise ConfigError(f"{netrc} is not UTF-8 text (bytes of another encoding): save it as UTF-8 and "
                          f"rerun; nothing was sent") from None
    where = [(f"{netrc} (its entry for the MLflow server's host)", f"{user}:{password}")]
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    if proxy:       # requests sends its user:password@ as Proxy-Authorization, Latin-1 too
        where.append(("the user:password@ part of the proxy URL for the MLflow server (HTTP_PROXY, HTTPS_PROXY "
                      "or ALL_PROXY)", ":".join(requests.utils.get_auth_from_url(proxy))))
    for name, value in where:
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(f"{name} holds a character HTTP basic auth cannot send (Latin-1 only: no euro "
                              f"sign, no letters beyond Western European ones); change the password and rerun; "
                              f"nothing was sent") from None


def tracking_token() -> str | None:
    """``MLFLOW_TRACKING_TOKEN`` when it is what MLflow's clients send (no username and password
    set: basic auth wins), checked as ``token_env`` does; None otherwise."""
    if basic_auth():
        return None
    return token_env("MLFLOW_TRACKING_TOKEN")


def state_dir() -> Path:
    """The embedded default's state folder (MLflow DB, artifacts, ledger, serving base)."""
    return Path(env("MLOPS_HOME", ".mlops")).expanduser().resolve()


def model_name(explicit: str | None = None) -> str:
    """``--model-name`` (checked by its flag), else ``MLOPS_MODEL_NAME``, else the default."""
    if explicit:
        return explicit
    return check_utf8("MLOPS_MODEL_NAME", env("MLOPS_MODEL_NAME", DEFAULT_MODEL_NAME))


def check_utf8(name: str, value: str, fix: str = "set the shell or the script to UTF-8 and set it again") -> str:
    """``value`` of the variable ``name``, or one line naming it (never the value: it may be a secret)
    when it holds bytes that are not UTF-8: set from a Latin-1 shell, they reach Python as lone
    surrogates, which a database driver or SQLAlchemy cannot encode (a traceback)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} is not UTF-8 text (bytes of another encoding: {fix})") from None
    return value


def port_env(name: str, default: int) -> int:
    """A port number 1-65535 from the variable ``name``; one line naming it otherwise."""
    raw = env(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be a port number 1-65535, got {raw!r}")
    return port


def local_mlflow_port() -> int:
    return port_env("MLOPS_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)


def local_mlflow_url() -> str:
    """URL of the embedded MLflow server: the one recorded by ``mlops up``, else the default port."""
    info = state_dir() / "mlflow-server.json"
    try:
        url = json.loads(info.read_text())["url"] if info.is_file() else None
    except (ValueError, KeyError, TypeError, OSError):  # a record of another shape ([] was a traceback)
        url = None
    if isinstance(url, str) and url.startswith("http://127.0.0.1:"):
        return url
    return f"http://127.0.0.1:{local_mlflow_port()}"


_announced = False


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the local server (saying so once on stderr)."""
    global _announced
    tracking_token()        # MLflow's client sends it as a header: refuse a bad one here
    uri = env("MLFLOW_TRACKING_URI")
    if uri:
        check_no_userinfo(uri)
        if uri != uri.strip():
            raise ConfigError("MLFLOW_TRACKING_URI starts or ends with a space or a line break (a value pasted "
                              "into a CI context?); remove it")
        check_utf8("MLFLOW_TRACKING_URI", uri)      # a host of Latin-1 bytes was "failed (InvalidURL)" too
        check_http_uri(uri)
        check_requests_auth(uri)
        return uri
    uri = local_mlflow_url()
    check_requests_auth(uri)
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
    if query_secrets(uri):
        raise ConfigError("MLFLOW_TRACKING_URI must not carry a credential in its query string (a token, key "
                          "or password parameter: it would be printed and stored in logs); put it in "
                          "MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) instead")


def check_http_uri(uri: str) -> None:
    """Refuse an ``http(s)://`` MLFLOW_TRACKING_URI that no request can be made to (``http://``, a
    port of 99999 or ``abc``, an unclosed ``[``): each was "the request ... failed (InvalidURL)",
    which did not say the URI itself is wrong. The reason only, never the URI (see check_no_userinfo)."""
    from urllib.parse import urlsplit

    if uri.split(":", 1)[0].lower() not in ("http", "https"):
        return              # file:, sqlite:, databricks ...: MLflow's own to check
    try:
        parts = urlsplit(uri)
        reason = None if parts.hostname else "it has no host name"
        port = parts.port
        if reason is None and port is not None and not 1 <= port <= 65535:
            reason = "its port is not a number 1-65535"
    except ValueError as exc:
        reason = ("its port is not a number 1-65535" if "port" in str(exc).lower()
                  else "an IPv6 address' [ ] is not closed" if "ipv6" in str(exc).lower() else "it cannot be parsed")
    if reason:
        raise ConfigError(f"MLFLOW_TRACKING_URI is a malformed URL ({reason}); set it to the tracking server's "
                          f"address, e.g. http://mlflow.example.com:5000")


_SECRET_QUERY_KEY = re.compile(r"token|key|secret|pass|pwd|sig|credential|auth", re.IGNORECASE)


def query_secrets(url: str | None) -> list[str]:
    """Values of a URL's query parameters whose names say they are credentials (``?token=``,
    ``?password=`` — libpq reads one —, a presigned URL's ``X-Amz-Signature``), as written and
    percent-decoded: such a value is a secret wherever the URL is."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        query = urlsplit(url or "").query
    except ValueError:
        query = (url or "").partition("?")[2]
    out = []
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if sep and value and _SECRET_QUERY_KEY.search(unquote(name)):
            out += [value, *(v for _, v in parse_qsl(part, keep_blank_values=False))]
    return list(dict.fromkeys(out))


def ledger_url() -> str:
    """SQLAlchemy URL of the ledger: ``MLOPS_LEDGER_URL`` or a SQLite file in the state folder."""
    url = env("MLOPS_LEDGER_URL")
    if url:
        check_utf8("MLOPS_LEDGER_URL", url)
        check_ledger_sqlite(url)
        return url
    path = state_dir() / "ledger.db"
    check_utf8("the state folder's path (MLOPS_HOME, default ./.mlops)", str(path),   # SQLAlchemy's URL cannot
               "the ledger's SQLite URL cannot name it; point MLOPS_HOME at a folder whose path is UTF-8")
    make_folder(path.parent, "MLOPS_HOME (the state folder)")
    return sqlite_url(path)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path`` (absolute). SQLAlchemy reads ``?`` as the
    start of a query and ``%41`` as ``A``: ``sqlite:///<path>`` of a state folder under ``what?/``
    was a database beside it (``what``), under ``100%41/`` one in another folder. Only those two are
    quoted: MLflow's server makes the file's folder from the URL as written (a space quoted there
    made an empty ``my%20home`` beside the state folder)."""
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")


def cache_dir() -> Path:
    """The per-user cache folder (``MLOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlops``, else
    ``~/.cache/mlops``): things that can be made again, such as the empty MLflow database a new
    state folder's is copied from. Not made here."""
    explicit = env("MLOPS_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    xdg = env("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path("~/.cache").expanduser()) / "mlops"


def check_ledger_sqlite(url: str) -> None:
    """Refuse the two SQLite URLs that lose the audit trail quietly: an in-memory database (every row
    gone when the command ends, while the registry keeps its moves) and a relative path (three
    slashes: a new, empty ledger in whatever folder the command runs in)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        return
    if not (rest in ("", "//") or rest.startswith("///")):
        return          # a user or host part: the ledger's own URL check says what is wrong with it
    path = rest[3:].split("?", 1)[0]
    if path in ("", ":memory:"):
        raise ConfigError("MLOPS_LEDGER_URL names an in-memory SQLite database: every ledger row would be "
                          "lost when the command ends; name a file (sqlite:////abs/path/ledger.db) or a "
                          "PostgreSQL database")
    if not path.startswith("/"):
        raise ConfigError(f"MLOPS_LEDGER_URL names a relative SQLite path ({path!r}: a new, empty ledger in "
                          f"whatever folder the command runs in); an absolute path has four slashes: "
                          f"sqlite:////abs/path/ledger.db")


def make_folder(path: Path, what: str) -> None:
    """``mkdir -p`` with one line when it cannot be made (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {path} for {what}: {exc.strerror or exc}; "
                          f"point it at a folder you can write") from None


def seconds_env(name: str, default: float, *, most: float = math.inf, must: str) -> float:
    """Seconds from the variable ``name``, at least 1 and at most ``most``; ``default`` when it is
    unset; otherwise one line: ``<name> must be <must> (got '<value>')``."""
    raw = env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and 1 <= value <= most):
        raise ConfigError(f"{name} must be {must} (got {raw!r})")
    return value


def lock_ttl() -> float:
    """Seconds without a heartbeat after which a host lock is stale: ``MLOPS_LOCK_TTL`` or 10 min.
    At least 1: shorter than a round trip, live locks were taken over."""
    return seconds_env("MLOPS_LOCK_TTL", DEFAULT_LOCK_TTL, must="a number of seconds, at least 1")


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host...`` is in ``url`` (None: there is none).

    The user name ends at the first ``:``, ``/`` or ``@`` (as SQLAlchemy reads it); the password
    runs to the LAST ``@``: a password may itself hold ``@``, ``/`` or ``?``, and masking too much
    of a URL in a message is harmless where masking too little is not."""
    start = url.find("://")
    if start < 0:
        return None
    i = start + 3
    while i < len(url) and url[i] not in ":/@":
        i += 1
    if i >= len(url) or url[i] != ":":
        return None
    at = url.rfind("@", i + 1)
    return (i + 1, at) if at > i else None


def url_password(url: str | None) -> str | None:
    """The password of a database URL as written in it (percent-encoding kept), or None."""
    span = _password_span(url or "")
    return url[span[0]:span[1]] if span else None


def mask_url_password(url: str) -> str:
    """``url`` with its password (see ``_password_span``) replaced by ``***``, for messages."""
    span = _password_span(url)
    return url if span is None else f"{url[:span[0]]}***{url[span[1]:]}"


def hosts_file(explicit: str | None = None) -> Path:
    return Path(explicit or env("MLOPS_HOSTS_FILE") or (state_dir() / "hosts.toml"))


_MIN_DERIVED_LEN = 8     # a part of a secret (stripped, a piece of a password) redacted only from here:
                         # shorter parts ("mlops", "2026") are words of ordinary output


def _forms(value: str) -> set[str]:
    """``value`` and the ways it shows up in text: escaped as in a Python repr or a JSON string,
    and stripped of surrounding whitespace (a one-line error message collapses it)."""
    from urllib.parse import quote, quote_plus

    # surrogateescape: a value of bytes that are not UTF-8 (set from a Latin-1 shell) holds lone
    # surrogates, which quote() could not encode: redacting any output was a traceback (and the
    # traceback's own print another); percent-encoded, they are those bytes again (%E9)
    forms = {f for f in (value, repr(value)[1:-1], json.dumps(value)[1:-1],
                         quote(value, safe="", errors="surrogateescape"),
                         quote_plus(value, errors="surrogateescape")) if len(f) >= _MIN_SECRET_LEN}
    if len(value.strip()) >= _MIN_DERIVED_LEN:
        forms.add(value.strip())
    return forms


_NAMED_SECRET_ENV_VARS: set[str] = set()


def treat_as_secret(name: str) -> None:
    """Redact the value of environment variable ``name`` from now on, as the SECRET_ENV_VARS are:
    a variable a person named for a secret (``--secret-env``) is one."""
    _NAMED_SECRET_ENV_VARS.add(name)


def named_secret(name: str, flag: str = "--secret-env") -> str | None:
    """The value of the environment variable a person named for a secret (``flag``), redacted
    from then on; ConfigError, without echoing it, when ``name`` is not a variable's name (it may
    be the secret itself)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"{flag} must be the NAME of an environment variable (never pass the secret "
                          f"itself on the command line)")
    treat_as_secret(name)
    return env(name)


def secret_values() -> list[str]:
    """Current values of secret variables (for redaction and the secret guards), longest first;
    short values are ignored. Besides each value as set: its stripped and escaped forms, and the
    password of each database URL (as written, percent-decoded, and what follows each ``@`` in it,
    which a driver may report as part of a host name, when at least ``_MIN_DERIVED_LEN`` long)."""
    names = (*SECRET_ENV_VARS, *sorted(_NAMED_SECRET_ENV_VARS))
    values = tuple(None if k not in _NAMED_SECRET_ENV_VARS and _sqlite_file_url(v) else v
                   for k, v in ((k, os.environ.get(k)) for k in names))
    return list(_secret_forms(values,
                              tuple(os.environ.get(k) for k in SECRET_URL_ENV_VARS)))


def _sqlite_file_url(url: str | None) -> bool:
    """Whether ``url`` is a SQLite file's URL (``sqlite:////abs/ledger.db``) that holds nothing secret:
    no user, password or host part, no credential in a query. Such a ``MLOPS_LEDGER_URL`` is not
    redacted whole (an error said "cannot open the ledger database ***": not which file)."""
    scheme, sep, rest = (url or "").partition(":")
    return (bool(sep) and scheme.split("+", 1)[0].lower() == "sqlite" and rest.startswith("///")
            and "@" not in rest and not query_secrets(url))


@functools.lru_cache(maxsize=8)
def _secret_forms(values: tuple[str | None, ...], urls: tuple[str | None, ...]) -> tuple[str, ...]:
    """``secret_values`` for these values (cached: every line written to stdout and stderr is
    redacted, and working the forms out again each time made 100,000 lines take 13 s)."""
    from urllib.parse import unquote

    raw = [v for v in values if v]
    for url in urls:
        # from 8 characters, as the parts of a password: `?auth=true` names no secret in "true"
        raw += [v for v in query_secrets(url) if len(v) >= _MIN_DERIVED_LEN]
        password = url_password(url)
        if password:
            raw += [password, unquote(password),
                    *(p for p in password.split("@")[1:] if len(p) >= _MIN_DERIVED_LEN)]
    found: set[str] = set()
    for v in raw:
        found |= _forms(v)
    return tuple(sorted(found, key=lambda v: (-len(v), v)))
