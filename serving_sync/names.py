"""Validation of the names and paths that end up in host paths and ``models.config``.

One place so that hosts, publish, models.config and retention agree on what is safe:
no path traversal, no separators in names, positive integer versions.
"""
from __future__ import annotations

import posixpath
import re

from mlops_common.errors import ConfigError

from .layout import MODELS_CONFIG

MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# Reserved suffix for the validation-only entry in models.config (see models_config).
VALIDATE_SUFFIX = "__validate"
# The longest file name a host gets from a model name is the atomic write of its smoke-test record,
# ``.serving_sync/verified/.<name>.json.tmp-<8 hex>`` (the name + 19): file names hold at most 255
# bytes on Linux file systems (a longer name trained and registered, then every deploy of it was an
# ENAMETOOLONG traceback on the host).
MAX_MODEL_NAME_LEN = 255 - len("..json.tmp-12345678")
# Files in a serving host's base beside the model folders (``<base>/<model>/``): TF Serving's config
# (``MODELS_CONFIG``) and the metrics config ``serving_host/install_server.sh`` writes. A
# model of that name was published as a folder there, where TF Serving reads its config file.
BASE_FILES = (MODELS_CONFIG, "monitoring.config")


def check_model_name(name: object, *, what: str = "model name") -> str:
    """Return ``name`` if it is a safe TF Serving model / directory name, else raise ConfigError."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise ConfigError(f"{what} {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                          f"and start with a letter or digit")
    if len(name) > MAX_MODEL_NAME_LEN:
        raise ConfigError(f"{what} {name[:40]!r}... is {len(name)} characters long; at most "
                          f"{MAX_MODEL_NAME_LEN} (it names a folder and files on every serving host)")
    if name in (".", "..") or ".." in name:
        raise ConfigError(f"{what} {name!r} is not allowed: it must not contain '..'")
    if name in BASE_FILES:
        raise ConfigError(f"{what} {name!r} is not allowed: it names a file of the serving host's base "
                          f"folder (beside the model folders); choose another name")
    if name.endswith(VALIDATE_SUFFIX):
        raise ConfigError(f"{what} {name!r} is not allowed: the suffix {VALIDATE_SUFFIX!r} is "
                          f"reserved for serving_sync's validation entry")
    return name


def check_version(version: object) -> int:
    """Return ``version`` as a positive int (registry version numbers start at 1)."""
    if isinstance(version, bool):
        raise ConfigError(f"version {version!r} is not a positive integer")
    try:
        v = int(version)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"version {version!r} is not a positive integer") from None
    if v < 1 or str(v) != str(version).strip():
        raise ConfigError(f"version {version!r} is not a positive integer")
    return v


def has_traversal(path: str) -> bool:
    """True if any component of ``path`` is ``..``."""
    return "/../" in "/" + path.replace("\\", "/") + "/"


# Unicode categories Cc (C0, DEL, C1), Zl (U+2028) and Zp (U+2029), as one character class.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    """Any control character (C0, DEL, C1) or line/paragraph separator: each can split a line
    in some tool's output (``\r`` in ``splitlines``, U+2028 in editors and logs)."""
    return _CONTROL_RE.search(text) is not None


def check_relpath(rel: str) -> str:
    """A normalized relative POSIX path under a base: no ``..``, not absolute, not empty."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or has_traversal(rel) \
            or has_control(rel) or "\\" in rel:
        raise ConfigError(f"unsafe path {rel!r}: must be relative, without '..', control or "
                          f"line-separator characters or backslashes")
    norm = posixpath.normpath(rel)
    if norm in (".", "") or norm.startswith("../"):
        raise ConfigError(f"unsafe path {rel!r}")
    return norm
