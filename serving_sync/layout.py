"""Where things live under a serving host's base (the contract in docs/architecture.md).

    <base>/models.config                            written only by serving_sync, atomically
    <base>/<model>/<version>/                       immutable once published
    <base>/<model>/.incoming-<version>-<stamp>-<id> upload in progress (non-numeric: ignored)
    <base>/.serving_sync/lock                       one deploy at a time
    <base>/.serving_sync/manifests/<model>/<version>.json
    <base>/.serving_sync/verified/<model>.json      versions that passed the smoke test on this host
"""
from __future__ import annotations

import calendar
import re
import secrets
import time

MODELS_CONFIG = "models.config"
STATE_DIR = ".serving_sync"
LOCK_PATH = f"{STATE_DIR}/lock"
INCOMING_PREFIX = ".incoming-"
INCOMING_RE = re.compile(r"\.incoming-(\d+)-(\d{8}T\d{6}Z)-([0-9a-f]+)\Z")
_STAMP = "%Y%m%dT%H%M%SZ"


def version_path(model: str, version: int) -> str:
    return f"{model}/{int(version)}"


def manifest_path(model: str, version: int) -> str:
    return f"{STATE_DIR}/manifests/{model}/{int(version)}.json"


def verified_path(model: str) -> str:
    return f"{STATE_DIR}/verified/{model}.json"


def incoming_name(version: int, now: float | None = None) -> str:
    """``.incoming-<version>-<UTC stamp>-<random>``: non-numeric, dated for retention."""
    stamp = time.strftime(_STAMP, time.gmtime(time.time() if now is None else now))
    return f"{INCOMING_PREFIX}{int(version)}-{stamp}-{secrets.token_hex(4)}"


def version_of(name: str) -> int | None:
    """The version a directory name under ``<base>/<model>/`` publishes (``"12"`` -> 12), or None:
    TF Serving's file-system source takes decimal names; ``"012"`` and ``"１２"`` are not ours."""
    return int(name) if name.isascii() and name.isdigit() and not name.startswith("0") else None


def incoming_time(name: str) -> float | None:
    """When an ``.incoming-*`` upload was started (None if the name has another shape or a date
    that does not exist, e.g. 30 February: retention counts such a name as stale)."""
    m = INCOMING_RE.match(name)
    if not m:
        return None
    try:
        return float(calendar.timegm(time.strptime(m.group(2), _STAMP)))
    except ValueError:
        return None
