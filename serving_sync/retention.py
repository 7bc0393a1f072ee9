"""Which old versions and leftover uploads to remove from a host (pure), and removing them.

Never removes the serving version or the previous one (instant rollback), nor any
``protected`` version (e.g. one loaded for validation); keeps the ``keep`` newest published
versions besides. Temporary uploads (``.incoming-*``) older than a threshold are leftovers of
dead processes (retention runs under the host lock, so no live upload is that old), and so is
any half-written ``.models.config.tmp-*`` (every writer of models.config holds that lock). So are
the heartbeat files (``lock-heartbeat-<token>`` and their ``.tmp-*``) of a lock that is not the
one held (its holder was killed mid-write or mid-release) once silent for longer than the lock's
TTL: nothing judges a lock by them any more.

On S3 (no rename: ``saved_model.pb`` is uploaded last) a numeric folder without its completion
file is no version but a dead upload (retention runs under the lock every upload holds, so no
live one is there): it does not count toward ``keep`` and goes, unless a version it names is
protected (serving, previous, ``protected``), which is left alone.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from mlops_common import log
from mlops_common.errors import ConfigError, printable

from .layout import (
    INCOMING_PREFIX,
    MODELS_CONFIG,
    STATE_DIR,
    incoming_name,
    incoming_time,
    manifest_path,
    version_of,
    version_path,
)
from .manifest import COMPLETION_FILES
from .names import has_control
from .transports.base import Transport

logger = log.get("sync.retention")

DEFAULT_KEEP = 3
DEFAULT_UPLOAD_AGE = 3600.0


def versions_to_remove(published: list[int], *, serving: int | None, previous: int | None,
                       keep: int = DEFAULT_KEEP, protected: tuple[int, ...] = ()) -> list[int]:
    """Published versions to delete: all but the ``keep`` newest, serving, previous, protected."""
    if keep < 0:
        raise ConfigError(f"retention keep must be >= 0, got {keep}")
    newest = set(sorted(set(published))[-keep:]) if keep else set()
    kept = newest | {v for v in (serving, previous) if v is not None} | set(protected)
    return sorted(v for v in set(published) if v not in kept)


def stale_uploads(names: list[str], *, now: float, older_than: float = DEFAULT_UPLOAD_AGE) -> list[str]:
    """``.incoming-*`` names older than ``older_than`` seconds (undatable ones count as stale)."""
    out = []
    for n in names:
        if not n.startswith(INCOMING_PREFIX):
            continue
        started = incoming_time(n)
        if started is None or now - started > older_than:
            out.append(n)
    return sorted(out)


def stale_config_temps(names: list[str]) -> list[str]:
    """The base's ``.models.config.tmp-*`` files: a config write killed before its rename."""
    return sorted(n for n in names if n.startswith(f".{MODELS_CONFIG}.tmp-"))


_BEAT = "lock-heartbeat-"


def _beat_token(name: str) -> str | None:
    """The lock token of a heartbeat file or of its temp file (``.<name>.tmp-*``), else None."""
    if name.startswith(_BEAT):
        return name[len(_BEAT):] or None
    if name.startswith(f".{_BEAT}") and ".tmp-" in name:
        return name[len(_BEAT) + 1:name.index(".tmp-", 1)] or None
    return None


def stale_heartbeats(transport: Transport, *, held: str, ttl: float, now: float) -> list[str]:
    """Heartbeat files in ``STATE_DIR`` of locks other than ``held`` (the token this deploy holds),
    silent for over ``ttl`` by the time written inside them (an unreadable one, cut short by a
    kill, counts as stale)."""
    out = []
    for n in transport.list_dir(STATE_DIR):
        token = _beat_token(n)
        if token is None or token == held or has_control(n):
            continue
        rel = f"{STATE_DIR}/{n}"
        try:
            beat = float(json.loads(transport.read_file(rel))["heartbeat"])
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            beat = float("-inf")
        if now - beat > ttl:
            out.append(rel)
    return sorted(out)


@dataclass
class RetentionPlan:
    model: str
    remove_versions: list[int] = field(default_factory=list)
    remove_uploads: list[str] = field(default_factory=list)
    remove_config_temps: list[str] = field(default_factory=list)     # in the base, not the model's folder
    remove_partials: list[int] = field(default_factory=list)         # S3: numeric folders never completed
    remove_heartbeats: list[str] = field(default_factory=list)       # dead locks' heartbeat files

    def to_dict(self) -> dict:
        return {"model": self.model, "remove_versions": self.remove_versions,
                "remove_uploads": self.remove_uploads, "remove_config_temps": self.remove_config_temps,
                "remove_partials": self.remove_partials, "remove_heartbeats": self.remove_heartbeats}


def plan(transport: Transport, model: str, *, serving: int | None, previous: int | None,
         keep: int = DEFAULT_KEEP, protected: tuple[int, ...] = (),
         upload_age: float = DEFAULT_UPLOAD_AGE, now: float | None = None,
         config_temps: bool = False, lock: tuple[str, float] | None = None) -> RetentionPlan:
    """Read the host's listing of ``<model>/`` and decide (no changes made). ``config_temps``: also
    list the base for half-written ``.models.config.tmp-*`` files (after a lock takeover).
    ``lock``: (token, TTL) of the lock held: also list other locks' stale heartbeat files."""
    now = time.time() if now is None else now
    names = transport.list_dir(model)
    # a name with a control character is never ours (``check_relpath`` refuses it, so every
    # removal through a transport does too): refused, it stopped retention at it on every deploy
    odd = [n for n in names if has_control(n) and n.startswith(INCOMING_PREFIX)]
    for n in odd:
        logger.warning("%s: %s/%s looks like a leftover upload, but its name holds a control character "
                       "that mlops does not remove; remove it by hand", transport.url, model, printable(n))
    names = [n for n in names if n not in odd]
    published = [v for n in names if (v := version_of(n)) is not None]
    versions, partials = choose(published, incomplete_versions(transport, model, published), serving=serving,
                                previous=previous, keep=keep, protected=protected)
    return RetentionPlan(model, versions,
                         stale_uploads(names, now=now, older_than=upload_age),
                         [n for n in stale_config_temps(transport.list_dir("")) if not has_control(n)]
                         if config_temps else [],
                         partials,
                         stale_heartbeats(transport, held=lock[0], ttl=lock[1], now=now) if lock else [])


def choose(published, partial, *, serving: int | None, previous: int | None, keep: int = DEFAULT_KEEP,
           protected: tuple[int, ...] = ()) -> tuple[list[int], list[int]]:
    """(versions to remove, incomplete folders to remove) of a model's ``published`` version folders,
    ``partial`` of them without their completion file (pure): those do not count toward ``keep``
    and go unless serving, previous or protected. ``plan`` decides by it, and ``sync plan``'s
    preview (``plan.retention_preview``) too."""
    dead = set(partial)
    kept = {v for v in (serving, previous) if v is not None} | set(protected)
    return (versions_to_remove([v for v in published if v not in dead], serving=serving, previous=previous,
                               keep=keep, protected=protected),
            sorted(v for v in dead if v not in kept))


def incomplete_versions(transport: Transport, model: str, versions) -> list[int]:
    """Of ``versions`` (numeric folders of ``<model>/``), those without their completion file on a
    store without rename (S3: a dead upload, or a removal killed after its first request); none
    where rename is atomic. One or two HEADs per version there."""
    if transport.atomic_rename:
        return []
    return [v for v in versions if not _complete(transport, model, v)]


def _complete(transport: Transport, model: str, version: int) -> bool:
    """Whether a version folder on a store without rename has its completion file (uploaded last)."""
    vp = version_path(model, version)
    return any(transport.exists(f"{vp}/{name}") for name in COMPLETION_FILES)


def apply(transport: Transport, p: RetentionPlan) -> None:
    """Remove what ``p`` lists (stored manifests of removed versions too)."""
    for rel in p.remove_heartbeats:
        logger.info("%s: removing %s, a dead lock's heartbeat", transport.url, rel)
        transport.remove_file(rel)
    for name in p.remove_config_temps:
        logger.info("%s: removing a half-written %s", transport.url, name)
        transport.remove_file(name)
    for name in p.remove_uploads:
        logger.info("%s: removing leftover upload %s/%s", transport.url, p.model, name)
        transport.remove_tree(f"{p.model}/{name}")
    if hasattr(transport, "abort_uploads"):     # S3: unfinished multipart uploads of dead runs
        transport.abort_uploads(p.model, older_than=DEFAULT_UPLOAD_AGE)
    for v in p.remove_partials:
        logger.info("%s: removing %s, a dead upload (no saved_model.pb)", transport.url, version_path(p.model, v))
        _remove_version(transport, p.model, v)
        transport.remove_file(manifest_path(p.model, v))
    for v in p.remove_versions:
        logger.info("%s: removing old version %s", transport.url, version_path(p.model, v))
        _remove_version(transport, p.model, v)
        transport.remove_file(manifest_path(p.model, v))


def _remove_version(transport: Transport, model: str, version: int) -> None:
    """Remove a published version so that no reader ever sees part of it under its number.

    ``rm -rf`` of the numeric folder killed midway (SIGKILL, a lost connection) left a version
    with part of its files: published to every later reader, and a deploy of it refused as a
    damaged leftover. Where rename is atomic the folder first leaves its number in one rename,
    as publish brings one in, under an upload name dated 1970: what a killed removal leaves is
    a stale upload the next retention removes. (S3 removes ``saved_model.pb`` first instead.)
    """
    vp = version_path(model, version)
    if transport.atomic_rename:
        if not transport.exists(vp):
            return
        aside = f"{model}/{incoming_name(version, now=0)}"
        transport.rename(vp, aside)
        vp = aside
    transport.remove_tree(vp)
