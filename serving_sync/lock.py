"""One deploy at a time per host: ``<base>/.serving_sync/lock``, created atomically.

The lock file is created with an exclusive create (``O_EXCL`` locally, SFTP ``CREAT|EXCL`` over
SSH, a conditional ``If-None-Match: *`` PUT on S3) and holds its owner (user@machine:pid), a
random token, when it was taken and a heartbeat that ``refresh()`` updates. A lock whose owner
is a dead process on this machine, or whose heartbeat is older than the TTL, is reported as
stale with how to break it (``--break-lock``); it is never broken silently.

Limits: the TTL compares clocks of different machines (keep them in NTP sync); a store that
ignores conditional PUTs cannot give mutual exclusion.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable

from mlops_common import log
from mlops_common.lineage import os_user
from mlops_common.procs import pid_alive

from .errors import LockHeld
from .layout import LOCK_PATH
from .transports.base import Transport

logger = log.get("sync.lock")

DEFAULT_TTL = 30 * 60.0


@dataclass(frozen=True)
class LockInfo:
    user: str
    hostname: str
    pid: int
    token: str
    created: float     # UTC epoch seconds
    heartbeat: float
    purpose: str = "deploy"

    @property
    def owner(self) -> str:
        return f"{self.user}@{self.hostname}:{self.pid}"

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LockInfo":
        d = json.loads(data)
        return cls(str(d["user"]), str(d["hostname"]), int(d["pid"]), str(d["token"]),
                   float(d["created"]), float(d["heartbeat"]), str(d.get("purpose", "deploy")))


def stale_reason(info: LockInfo, *, now: float, hostname: str, ttl: float,
                 is_alive: Callable[[int], bool] = pid_alive) -> str | None:
    """Why the lock looks abandoned (None if its owner may still be working)."""
    if info.hostname == hostname and not is_alive(info.pid):
        return f"its process {info.pid} no longer runs on {hostname}"
    age = now - info.heartbeat
    if age > ttl:
        return f"no heartbeat for {age / 60:.0f} min (TTL {ttl / 60:.0f} min)"
    return None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class HostLock:
    """``with HostLock(transport): ...`` — acquire, keep (``refresh``), release."""

    def __init__(self, transport: Transport, *, ttl: float = DEFAULT_TTL, break_lock: bool = False,
                 purpose: str = "deploy", clock: Callable[[], float] = time.time):
        self.transport = transport
        self.ttl = ttl
        self.break_lock = break_lock
        self.purpose = purpose
        self.clock = clock
        self.hostname = socket.gethostname()
        self.info: LockInfo | None = None

    def _new(self) -> LockInfo:
        now = self.clock()
        return LockInfo(os_user(), self.hostname, os.getpid(), secrets.token_hex(8), now, now, self.purpose)

    def _read(self) -> LockInfo | None | str:
        try:
            data = self.transport.read_file(LOCK_PATH)
        except FileNotFoundError:
            return None
        try:
            return LockInfo.from_json(data)
        except (ValueError, KeyError, TypeError):
            return "unreadable"

    def acquire(self) -> LockInfo:
        where = self.transport.url
        for _ in range(3):   # bounded: the lock may disappear between create and read
            info = self._new()
            if self.transport.create_exclusive(LOCK_PATH, info.to_json()):
                self.info = info
                return info
            held = self._read()
            if held is None:
                continue
            if self.break_lock:
                owner = held if isinstance(held, str) else held.owner
                logger.warning("%s: breaking the lock held by %s (--break-lock)", where, owner)
                self.transport.remove_file(LOCK_PATH)
                self.break_lock = False
                continue
            raise LockHeld(self._held_message(where, held))
        raise LockHeld(f"{where}: could not take the deploy lock {LOCK_PATH} (it keeps changing: another "
                       f"deploy is starting); retry")

    def _held_message(self, where: str, held: LockInfo | str) -> str:
        if isinstance(held, str):
            return (f"{where}: the deploy lock {LOCK_PATH} exists but cannot be read (corrupt); if no "
                    f"deploy is running, rerun with --break-lock")
        age = max(0.0, self.clock() - held.heartbeat)
        base = (f"{where}: another {held.purpose} holds the lock ({held.owner}, since {_when(held.created)}, "
                f"last heartbeat {age:.0f}s ago)")
        reason = stale_reason(held, now=self.clock(), hostname=self.hostname, ttl=self.ttl)
        if reason:
            return f"{base}; it looks stale ({reason}): rerun with --break-lock to take it over"
        return (f"{base}; wait for it to finish, or if you are sure it is dead, rerun with "
                f"--break-lock")

    def refresh(self) -> None:
        """Heartbeat: rewrite the lock with the current time, if it is still ours."""
        if self.info is None:
            raise RuntimeError("refresh() before acquire()")
        held = self._read()
        if not isinstance(held, LockInfo) or held.token != self.info.token:
            owner = held.owner if isinstance(held, LockInfo) else "nobody"
            raise LockHeld(f"{self.transport.url}: this deploy lost its lock (now held by {owner}; "
                           f"someone used --break-lock); stop and check the host")
        self.info = LockInfo(**{**asdict(self.info), "heartbeat": self.clock()})
        self.transport.write_file_atomic(LOCK_PATH, self.info.to_json())

    def release(self) -> None:
        """Remove the lock if it is still ours (never someone else's)."""
        if self.info is None:
            return
        held = self._read()
        if isinstance(held, LockInfo) and held.token == self.info.token:
            self.transport.remove_file(LOCK_PATH)
        else:
            logger.warning("%s: the lock was taken over by someone else; leaving it", self.transport.url)
        self.info = None

    def __enter__(self) -> "HostLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.release()
        except Exception as e:  # noqa: BLE001 - never hide the original error
            logger.warning("%s: could not release the lock (%s)", self.transport.url, e)
