"""The sha256 of every file of a version's bundle (``tfserving/``, ``golden/``) and of its logged
MLflow model (the Keras model the gate scores), recorded when the version is registered and checked
whenever they are downloaded.

MLflow artifacts can be rewritten after registration (``log_artifacts`` into the run again, a
change in the artifact store): without this, a deploy would publish whatever the store holds
now — a model the gate never saw — a file damaged in the store would be blamed on the version, and
the gate would score (and pass) a logged model nobody checked. The record is the ``register``
ledger row (``details.bundle_files``, ``details.bundle_sha256``; ``details.model_files``,
``details.model_sha256``); versions registered before it existed are downloaded unchecked, with a
warning (and the gate's report says so for the logged model). ``differences`` is the pure
comparison.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from mlops_common import log
from mlops_common.errors import DamagedModel

from . import artifacts

PARTS = artifacts.PARTS
BUNDLE_FILES = "bundle_files"       # the register row's record of tfserving/ and golden/
MODEL_FILES = "model_files"         # ... and of the logged model's files (paths relative to it)
# written by MLflow's client into a registered model it downloads (its name and version), never stored
CLIENT_WRITTEN = frozenset({"registered_model_meta"})
_log = log.get("registry.bundle_hashes")


def tree_files(root: str | Path, parts: tuple[str, ...] = PARTS) -> dict[str, str]:
    """``{"tfserving/saved_model.pb": sha256 hex, ...}`` for every file under ``root/<part>``."""
    root = Path(root)
    out: dict[str, str] = {}
    for part in parts:
        for path in sorted((root / part).rglob("*")):
            if path.is_file():
                with open(path, "rb") as f:
                    out[path.relative_to(root).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def model_files(root: str | Path) -> dict[str, str]:
    """``{"MLmodel": sha256 hex, "data/model.keras": ..., ...}`` for every file of a logged model
    downloaded into ``root`` (``tree_files`` of the whole folder, less what MLflow's client wrote
    into it itself)."""
    return {p: h for p, h in tree_files(root, ("",)).items() if p not in CLIENT_WRITTEN}


def digest(files: dict[str, str]) -> str:
    """One sha256 for the whole bundle (paths and their hashes, in path order)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    return h.hexdigest()


def differences(recorded: dict[str, str], got: dict[str, str]) -> list[str]:
    """How ``got`` differs from ``recorded`` (empty when every file is there, the same, and no other)."""
    out = [f"{p} changed" for p in sorted(recorded) if p in got and got[p] != recorded[p]]
    out += [f"{p} is missing" for p in sorted(set(recorded) - set(got))]
    out += [f"{p} was added" for p in sorted(set(got) - set(recorded))]
    return out


def recorded(model: str, version: int, ledger=None, key: str = BUNDLE_FILES, *,
             created_ms: int | None = None) -> dict[str, str] | None:
    """The files recorded when ``version`` was registered (None: registered without a record);
    ``key``: ``BUNDLE_FILES`` (tfserving/, golden/) or ``MODEL_FILES`` (the logged model).
    ``created_ms``: when MLflow created the version (read from MLflow when not given and a row
    could be another version's): a ``register`` row of the same number created at another time
    (``CREATED_MS``, the server's clock) is a deleted model's, and so is every earlier one; a
    version registered outside mlops after its model was created again has no record (found by
    review, twentieth stop: the deleted v1's hashes were checked against it, and the gate refused
    its model as "changed in the artifact store since")."""
    from .ledger import CREATED_MS, Ledger

    rows = [e for e in (ledger or Ledger()).entries(model, actions=("register",))
            if e.to_version == version]   # all rows: the newest of this version's is the one (a model created
    #                                        again registers after the deleted one; two first trainings at once
    #                                        can record v2 before v1, which a cut at v1's row would hide)
    stamps = [e.details.get(CREATED_MS) if isinstance(e.details, dict) else None for e in rows]
    if any(isinstance(ms, int) for ms in stamps):
        if created_ms is None:
            from . import versions
            created_ms = versions.get_version(model, version).created_ms
        other = [i for i, ms in enumerate(stamps) if isinstance(ms, int) and ms != created_ms]
        rows = rows[other[-1] + 1:] if other else rows
    files = rows[-1].details.get(key) if rows else None
    return dict(files) if isinstance(files, dict) else None


def check(model: str, version: int, root: str | Path, ledger=None, *,
          created_ms: int | None = None) -> dict[str, str] | None:
    """Raise ``ConfigError`` (one line) when the bundle under ``root`` is not what was registered;
    otherwise the files' sha256 (``tree_files``), so a caller need not read them again (None when
    the version was registered without a record and nothing was hashed)."""
    expected = _expected(model, version, ledger, "its artifacts are", created_ms=created_ms)
    if expected is None:
        return None
    got = tree_files(root)
    _refuse(model, version, differences(expected, got))
    return got


def check_files(model: str, version: int, files: dict[str, bytes], ledger=None, *,
                unchanged: str = "Nothing was deployed", created_ms: int | None = None) -> None:
    """``check`` for some files of the bundle read on their own (``{"golden/request.json": bytes}``):
    the golden set a switch to a version already on the hosts is verified with, the signature the
    gate compares."""
    expected = _expected(model, version, ledger, "its golden set is", created_ms=created_ms)
    if expected is None:
        return
    got = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    _refuse(model, version, differences({p: h for p, h in expected.items() if p in got}, got), unchanged)


def check_model(model: str, version: int, root: str | Path, ledger=None, *,
                unchanged: str = "Nothing was evaluated") -> dict[str, str] | None:
    """``check`` for the logged model of ``version`` downloaded into ``root`` (what the gate and
    ``mlops evaluate`` score): ``ConfigError`` (one line naming the file) when it is not what was
    registered; its files' sha256 otherwise, or None when the version was registered without a
    record of them (then it is scored unchecked, with a warning)."""
    expected = _expected(model, version, ledger, "that model is", MODEL_FILES, "its logged model's file hashes")
    if expected is None:
        return None
    got = model_files(root)
    _refuse(model, version, differences(expected, got), unchanged,
            subject=f"the logged model of version {version} of '{model}' is not the one registered",
            restore="it was changed in the artifact store since; restore it")
    return got


def _expected(model: str, version: int, ledger, what: str, key: str = BUNDLE_FILES,
              without: str = "file hashes", *, created_ms: int | None = None) -> dict[str, str] | None:
    """``recorded``, with the warning for a version registered before hashes were recorded."""
    expected = recorded(model, version, ledger, key, created_ms=created_ms)
    if expected is None:
        _log.warning("version %s of '%s' was registered without %s: %s used unchecked",
                     version, model, without, what)
    return expected


def _refuse(model: str, version: int, diff: list[str], unchanged: str = "Nothing was deployed", *,
            subject: str | None = None,
            restore: str = "they were changed in the artifact store since; restore them") -> None:
    if diff:
        shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
        subject = subject or f"the artifacts of version {version} of '{model}' are not the ones registered"
        # DamagedModel: the advice depends on the version's role (the gate's production is moved, not
        # registered again: every new version is gated against it)
        raise DamagedModel(f"{subject} ({shown}): {restore} or register a new version. {unchanged}",
                           problem=f"{subject} ({shown}): {restore}")
