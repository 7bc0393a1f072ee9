"""One deploy at a time per host: ``<base>/.serving_sync/lock``, created atomically.

The lock file is created with an exclusive create (``O_EXCL`` locally, SFTP ``CREAT|EXCL`` over
SSH, a conditional ``If-None-Match: *`` PUT on S3) and holds its owner (user@machine:pid), a
random token and when it was taken (file and ssh create it empty and write it after, so a creator
whose create and write took over ``READ_BACK_AFTER`` reads it back: a stalled creator's empty file
may have been taken over meanwhile; another deploy reads an empty lock for ``SETTLE_S`` before it
takes it over, so a quicker creator's write was there before any could, and it saves the round trips). It is
never rewritten while held: the owner's heartbeat goes
to its own file, ``lock-heartbeat-<token>``, rewritten by a background thread every TTL/4 (so
uploads and waits keep it fresh), and a late owner can never overwrite a successor's lock.

A lock is taken over only when it is stale — its heartbeat silent for longer than the TTL
(``MLOPS_LOCK_TTL``, default 10 min, or the owner's recorded TTL when longer), or its owner a dead
process on this machine (same hostname and PID namespace: containers may share a hostname) — or when the
caller names its token (``--break-lock TOKEN``, shown in the refusal), or it is one this very
process released without removing it (both release attempts failed: ``left_by_us``; a ``sync
watch`` takes it back at its next pass, not after the TTL). A stale takeover needs no
person: it logs a warning and appends a ledger row. Taking over is compare-and-delete
(``Transport.remove_if_same``): only the exact lock that was read and judged is removed, so two
racing breakers cannot both win, and a lock that changed meanwhile is left alone. On file and
ssh hosts every delete of the lock (takeover and release) happens under a guard file
(``transports/guarded_delete.py``); S3 deletes with ``If-Match``.

Limits: the TTL compares clocks of different machines (keep them in NTP sync); a store that
ignores conditional requests cannot give mutual exclusion; an owner frozen past its TTL that
wakes during a takeover learns it lost the lock at its next heartbeat (and stops).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from mlops_common import log, settings
from mlops_common.errors import UserError
from mlops_common.lineage import os_user
from mlops_common.procs import pid_alive

from .errors import HostUnreachable, LockHeld
from .layout import LOCK_PATH, STATE_DIR
from .transports.base import Transport

logger = log.get("sync.lock")

SETTLE_S = 1.0      # how long an unparseable lock file may be one being written (create, then write)
READ_BACK_AFTER = SETTLE_S / 2   # a create + write slower than this reads the lock back (see acquire)
CLOCKS_APART_S = 5.0   # a heartbeat further ahead of this clock than this: the owner's clock is ahead
# Failed beats in a row (one every TTL/4) after which the lock counts as not kept (``unkept``): the
# deploy's next step stops at about TTL/2 without a heartbeat, before the lock is stale at the TTL.
KEEP_TRIES = 2

# Tokens of locks this process created and then gave up (release called) without removing them
# (the connection died, the guard stayed busy): their files carry this live pid, so no one judged
# them stale until the TTL ran out (a ``sync watch`` waited 10 min for its own lock). Only this
# process may take them back at once; a token leaves the set when its lock is gone.
_LEFT_BEHIND: set[str] = set()
_LEFT_LOCK = threading.Lock()


def _left_behind(token: str, add: bool) -> None:
    with _LEFT_LOCK:
        (_LEFT_BEHIND.add if add else _LEFT_BEHIND.discard)(token)


def left_by_us(info: LockInfo, *, hostname: str, pidns: str) -> bool:
    """Whether ``info`` is a lock this very process gave up (same machine, namespace and pid, and a
    token it created and released): nobody holds it, whatever its live pid says."""
    with _LEFT_LOCK:
        ours = info.token in _LEFT_BEHIND
    return (ours and info.hostname == hostname and info.pid == os.getpid()
            and (not info.pidns or info.pidns == pidns))


def heartbeat_path(token: str) -> str:
    return f"{STATE_DIR}/lock-heartbeat-{token}"


@dataclass(frozen=True)
class LockInfo:
    user: str
    hostname: str
    pid: int
    token: str
    created: float     # UTC epoch seconds
    heartbeat: float   # in the lock file: when it was taken; the owner's file has the latest
    purpose: str = "deploy"
    ttl: float = 0.0   # the owner's TTL (it beats every TTL/4); 0: a lock file from a release without it
    pidns: str = ""    # the owner's boot and PID namespace (pid_namespace()); "": a release without it

    @property
    def owner(self) -> str:
        return f"{self.user}@{self.hostname}:{self.pid}"

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LockInfo":
        d = json.loads(data)
        return cls(str(d["user"]), str(d["hostname"]), int(d["pid"]), str(d["token"]),
                   float(d["created"]), float(d["heartbeat"]), str(d.get("purpose", "deploy")),
                   float(d.get("ttl", 0.0)), str(d.get("pidns", "")))


def corrupt_token(raw: bytes) -> str:
    """The name of an unreadable lock file for ``--break-lock`` (a hash of its bytes)."""
    return "corrupt-" + hashlib.sha256(raw).hexdigest()[:12]


def pid_namespace() -> str:
    """This process's boot and PID namespace (Linux), so that a pid is only judged dead where it
    means the same process: containers that share a hostname (Kubernetes ``hostNetwork``, Docker
    ``--uts=host``) each have their own pids. "" where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def effective_ttl(info: LockInfo, ttl: float) -> float:
    """The silence after which ``info``'s lock is stale: the longer of our TTL and its owner's
    (an owner with a longer TTL beats less often; judging it by ours would take a live lock)."""
    return max(ttl, info.ttl)


def stale_reason(info: LockInfo, *, now: float, hostname: str, ttl: float,
                 is_alive: Callable[[int], bool] = pid_alive, pidns: str = "") -> str | None:
    """Why the lock is abandoned (None if its owner may still be working). Its pid is asked about
    only on the same machine and PID namespace (a lock file without one: by hostname alone)."""
    same = info.hostname == hostname and (not info.pidns or info.pidns == pidns)
    if same and not is_alive(info.pid):
        return f"its process {info.pid} no longer runs on {hostname}"
    age, ttl = now - info.heartbeat, effective_ttl(info, ttl)
    if age > ttl:
        return f"no heartbeat for {_duration(age)} (TTL {_duration(ttl)})"
    return None


def takeover_reason(held: LockInfo | None, token: str, *, named: str | None, now: float,
                    hostname: str, ttl: float, is_alive: Callable[[int], bool] = pid_alive,
                    pidns: str = "", empty: bool = False) -> str | None:
    """Why this lock may be taken over now (None: leave it). ``held`` None = unreadable file;
    ``empty``: it has no bytes at all, after ``SETTLE_S`` of reading it again — a live creator
    writes within one round trip of its create, so this one died in between (a SIGKILL there
    left a lock no rerun took)."""
    if named is not None and named == token:
        return f"--break-lock {token}"
    if held is None:
        return f"empty for over {SETTLE_S:g}s: its deploy died between creating and writing it" if empty else None
    if left_by_us(held, hostname=hostname, pidns=pidns):
        return "left behind by this process (its release failed)"
    reason = stale_reason(held, now=now, hostname=hostname, ttl=ttl, is_alive=is_alive, pidns=pidns)
    return f"stale: {reason}" if reason else None


def _owner(held: LockInfo | None) -> str:
    return held.owner if held is not None else "nobody (unreadable file)"


def _duration(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f}s"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _record_takeover(model: str | None, where: str, old: LockInfo | None, token: str, why: str,
                     new: LockInfo) -> None:
    """A ledger row for a takeover; the takeover stands even if the ledger cannot be written."""
    if not model:
        return
    try:
        from registry.ledger import Ledger

        Ledger().record("lock_takeover", model, outcome="ok", host=where, actor=new.owner,
                        reason=f"took over the deploy lock {token} ({why})",
                        details={"previous_owner": old.owner if old else "unreadable",
                                 "previous_token": token, "token": new.token})
    except UserError as exc:
        logger.warning("%s: could not record the lock takeover in the ledger (%s)", where, exc.message)


def _close_quietly(channel: Transport) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - closing a dead channel
        pass


class _Heartbeat(threading.Thread):
    """Rewrites the owner's heartbeat file every ``every`` seconds until stopped."""

    def __init__(self, lock: "HostLock", every: float):
        super().__init__(name=f"lock-heartbeat {lock.transport.url}", daemon=True)
        self.lock, self.every = lock, every
        self.stop_event = threading.Event()

    def run(self) -> None:
        channel = None     # opened at the first beat: a short deploy never adds traffic
        try:
            while not self.stop_event.wait(self.every):
                try:
                    channel = channel or self.lock.transport.lock_channel()
                    self.lock.beat(channel)
                except LockHeld as exc:
                    self.lock.lost = exc.message
                    return
                except Exception as exc:  # noqa: BLE001 - a blip: the next beat retries
                    self.lock.beat_failed(exc)
                    # ... over a new channel: a dead SFTP channel stayed dead, every later beat failed
                    # and the lock was taken over after the TTL while the deploy still ran (one open
                    # a beat, so bounded by the beats)
                    if channel is not None and channel is not self.lock.transport:
                        _close_quietly(channel)
                    channel = None
        finally:
            if channel is not None and channel is not self.lock.transport:
                _close_quietly(channel)

    def stop(self) -> None:
        self.stop_event.set()
        if self is not threading.current_thread():
            self.join(timeout=10.0)    # a beat stuck in I/O: the thread is a daemon, let it go


class HostLock:
    """``with HostLock(transport): ...`` — acquire, keep (a heartbeat thread), release.

    ``break_lock`` is the token of a lock the caller names for takeover (``--break-lock``).
    ``model`` names the ledger row written when a stale lock is taken over.
    """

    def __init__(self, transport: Transport, *, ttl: float | None = None, break_lock: str | None = None,
                 purpose: str = "deploy", clock: Callable[[], float] = time.time,
                 model: str | None = None, heartbeat_every: float | None = None):
        if break_lock is True:
            raise ValueError("break_lock names the token of the lock to take over")
        self.transport = transport
        self.ttl = settings.lock_ttl() if ttl is None else ttl
        self.break_lock = break_lock or None
        self.purpose = purpose
        self.clock = clock
        self.model = model
        self.heartbeat_every = heartbeat_every if heartbeat_every is not None else self.ttl / 4
        self.hostname = socket.gethostname()
        self.pidns = pid_namespace()
        self.info: LockInfo | None = None
        self.lost: str | None = None       # set by the heartbeat thread when the lock was taken over
        self.trouble: str | None = None    # last heartbeat error (retried)
        self.unkept: str | None = None     # set by the thread after KEEP_TRIES failed beats in a row
        self._failed_beats = 0
        self._thread: _Heartbeat | None = None
        self._beat_lock = threading.Lock()
        self._created = b""                # the lock file's bytes as this lock created them
        self.took_over = False             # taken from a dead (or named) owner: its leftovers may lie about

    def _new(self) -> LockInfo:
        now = self.clock()
        return LockInfo(os_user(), self.hostname, os.getpid(), secrets.token_hex(8), now, now, self.purpose,
                        self.ttl, self.pidns)

    def _read(self, transport: Transport | None = None) -> tuple[bytes, LockInfo | None] | None:
        """(raw bytes, parsed or None if unreadable), or None when there is no lock."""
        try:
            raw = (transport or self.transport).read_file(LOCK_PATH)
        except FileNotFoundError:
            return None
        try:
            return raw, LockInfo.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return raw, None

    def _bytes_on_host(self) -> bytes | None:
        try:
            return self.transport.read_file(LOCK_PATH)
        except FileNotFoundError:
            return None

    def _read_settled(self) -> tuple[bytes, LockInfo | None] | None:
        """``_read``, but a lock that cannot be parsed is read again for up to ``SETTLE_S``: a
        transport creates the file first and writes it after (one SFTP round trip), so another
        deploy's lock is empty or partial for a moment, and calling it corrupt then told the
        person to --break-lock a live lock (with a token that is the same for every empty file)."""
        got = self._read()
        deadline = time.monotonic() + SETTLE_S
        while got is not None and got[1] is None and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self._read()
        return got

    def _last_beat(self, info: LockInfo) -> LockInfo:
        """``info`` with the heartbeat its owner last wrote (its own file), if newer."""
        try:
            beat = float(json.loads(self.transport.read_file(heartbeat_path(info.token)))["heartbeat"])
        except FileNotFoundError:
            return info
        except (ValueError, KeyError, TypeError):
            return info
        return LockInfo(**{**asdict(info), "heartbeat": max(info.heartbeat, beat)})

    def acquire(self) -> LockInfo:
        where = self.transport.url
        took: tuple[LockInfo | None, str, str] | None = None
        for _ in range(4):   # bounded: the lock may change between create, read and takeover
            info = self._new()
            raw = info.to_json()
            start = time.monotonic()
            # recorded before the create: a forced stop (KeyboardInterrupt) landing as it returns
            # left a lock no one released until its TTL; ``release`` compares the bytes, so a
            # lock the create did not make is left alone
            self.info, self._created = info, raw
            try:
                created = self.transport.create_exclusive(LOCK_PATH, raw)
            except Exception:
                self.info, self._created = None, b""
                raise
            if created:
                slow = time.monotonic() - start > READ_BACK_AFTER
                if slow and not self.transport.create_is_written and self._bytes_on_host() != raw:
                    # stalled between its create and its write for over SETTLE_S, its empty file
                    # was taken over as a dead creator's: the write went to the removed file
                    self.info, self._created = None, b""
                    continue
                self.lost, self.trouble = None, None    # the lock file never changes while held
                self.unkept, self._failed_beats = None, 0
                self._start_heartbeat()
                if took is not None:
                    self.took_over = True
                    _record_takeover(self.model, where, *took, info)
                return info
            self.info, self._created = None, b""
            judged = self._judge()
            if judged is None:
                continue
            raw, held, token, why = judged
            if why is None:
                raise LockHeld(self._held_message(where, held, token))
            if self.transport.remove_if_same(LOCK_PATH, raw):
                owner = _owner(held)
                logger.warning("%s: took over the deploy lock %s held by %s (%s)", where, token, owner, why)
                took = (held, token, why)
                if held is not None:
                    _left_behind(held.token, False)
                    self._remove_quietly(heartbeat_path(held.token))
            # else: it changed since we read it (a heartbeat, another breaker): judge it again
        raise LockHeld(f"{where}: could not take the deploy lock {LOCK_PATH} (it keeps changing: another "
                       f"deploy is starting); retry")

    def preview(self) -> tuple[str, bool] | None:
        """What a deploy would meet at this host's lock, read only (``sync plan``): None when the
        lock is free; else (the line ``acquire`` would refuse with, True), or (that it would take
        the lock over and why: a dead or silent owner, False), as ``acquire`` judges it."""
        judged = self._judge()
        if judged is None:
            return None
        _, held, token, why = judged
        if why is None:
            return self._held_message(self.transport.url, held, token), True
        return f"the deploy takes over the lock {token} held by {_owner(held)} ({why})", False

    def _judge(self) -> tuple[bytes, LockInfo | None, str, str | None] | None:
        """The lock on the host as ``acquire`` and ``preview`` judge it: None when there is none;
        else its bytes, its owner (None: unreadable), its token and why it may be taken over now
        (None: leave it)."""
        got = self._read_settled()
        if got is None:
            return None
        raw, held = got
        if held is not None:
            held = self._last_beat(held)
        token = held.token if held is not None else corrupt_token(raw)
        why = takeover_reason(held, token, named=self.break_lock, now=self.clock(), hostname=self.hostname,
                              ttl=self.ttl, pidns=self.pidns, empty=not raw)
        return raw, held, token, why

    def _held_message(self, where: str, held: LockInfo | None, token: str) -> str:
        if held is None:
            return (f"{where}: the deploy lock {LOCK_PATH} exists but cannot be read (corrupt); if no "
                    f"deploy is running, rerun with --break-lock {token}")
        age, ttl = self.clock() - held.heartbeat, effective_ttl(held, self.ttl)
        if age < -CLOCKS_APART_S:      # its owner's clock is ahead: "0s ago, after 10 min" was untrue
            beat = (f"last heartbeat {_duration(-age)} ahead of this machine's clock (the two clocks differ: "
                    f"sync them with NTP); taken over automatically only in {_duration(ttl - age)}")
        else:
            beat = (f"last heartbeat {max(0.0, age):.0f}s ago; taken over automatically after "
                    f"{_duration(ttl)} without one")
        return (f"{where}: another {held.purpose} holds the lock ({held.owner}, token {token}, since "
                f"{_when(held.created)}, {beat}); wait for it to finish, or if you are "
                f"sure it is dead, rerun with --break-lock {token}")

    # --- keeping it ----------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        if self.heartbeat_every > 0:
            self._thread = _Heartbeat(self, self.heartbeat_every)
            self._thread.start()

    def beat(self, transport: Transport | None = None) -> None:
        """Write the heartbeat file, then check the lock is still ours (LockHeld if not)."""
        t = transport or self.transport
        with self._beat_lock:
            info = self.info
            if info is None:
                return
            now = self.clock()
            try:
                t.write_file_atomic(heartbeat_path(info.token),
                                    json.dumps({"token": info.token, "heartbeat": now}).encode())
            except Exception:
                # a heartbeat that cannot be written (a full disk) goes silent: after the TTL another
                # deploy takes the lock, and this one must still learn it (it wrote nothing else)
                try:
                    self._check_ours(t, info)
                except LockHeld:
                    raise
                except Exception:  # noqa: BLE001 - the write's error says more
                    pass
                raise
            self._check_ours(t, info)
            self.info = LockInfo(**{**asdict(info), "heartbeat": now})
            self._failed_beats = 0

    def beat_failed(self, exc: Exception) -> None:
        """The heartbeat thread's beat failed (retried at the next one). After ``KEEP_TRIES`` in a
        row the lock is ``unkept``: ``kept()`` stops the deploy's next step. The thread went on failing
        quietly before (a channel that could not be opened again), and the deploy ran on until its
        lock went stale and another deploy took it."""
        with self._beat_lock:
            self.trouble = str(exc)
            self._failed_beats += 1
            if self._failed_beats >= KEEP_TRIES and self.unkept is None:
                self.unkept = (f"{self.transport.url}: this deploy could not keep its lock: {self._failed_beats} "
                               f"heartbeats in a row failed ({getattr(exc, 'message', None) or exc}); it stops "
                               f"before the lock goes stale ({_duration(self.ttl)} without one) and another "
                               f"deploy takes it; check the connection to the host and rerun")

    def kept(self) -> None:
        """LockHeld when the thread found the lock taken over, HostUnreachable when it could not keep
        it (``unkept``); no I/O."""
        if self.lost:
            raise LockHeld(self.lost)
        if self.unkept:
            raise HostUnreachable(self.unkept)

    def _check_ours(self, t: Transport, info: LockInfo) -> None:
        got = self._read(t)
        held = got[1] if got else None
        if held is None or held.token != info.token:
            owner = held.owner if held is not None else "nobody"
            raise LockHeld(f"{t.url}: this deploy lost its lock (now held by {owner}; it was taken "
                           f"over as stale or by --break-lock); stop and check the host")

    def refresh(self) -> None:
        """Heartbeat now (between steps); LockHeld if the lock was taken over meanwhile."""
        if self.info is None:
            raise RuntimeError("refresh() before acquire()")
        self.kept()
        self.beat()

    def check(self) -> None:
        """LockHeld if the lock is no longer ours: the thread's flag, then one read of the lock
        (the flag is up to TTL/4 old). No write: cheap enough right before a rename into place."""
        if self.lost:
            raise LockHeld(self.lost)
        info = self.info
        if info is None:
            return
        try:
            self._check_ours(self.transport, info)
        except LockHeld as exc:
            self.lost = exc.message       # the host is the new owner's: never put back by us
            raise

    def release(self) -> None:
        """Remove the lock if it is still ours (compare-and-delete: never someone else's)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
        if self.info is None:
            return
        info = self.info      # kept until the lock is gone: a caller may retry over a new connection
        # the heartbeat first: a release cut short after it leaves a lock (taken over, and its
        # leftovers swept, by the next deploy), never a heartbeat file no lock points to; a deploy
        # that finds the lock in between judges it by when it was taken, as stale at worst
        _left_behind(info.token, True)      # until it is seen gone: this process no longer holds it
        self._remove_quietly(heartbeat_path(info.token))
        # compare-and-delete against the bytes we created (the file is read once, under the guard);
        # read first only when those bytes are unknown
        expected = self._created or self._ours_on_host(info)
        if not (expected and self.transport.remove_if_same(LOCK_PATH, expected)):
            if self._ours_on_host(info):
                logger.warning("%s: the lock changed while releasing it; leaving it", self.transport.url)
            else:
                _left_behind(info.token, False)
                logger.warning("%s: the lock was taken over by someone else; leaving it", self.transport.url)
        else:
            _left_behind(info.token, False)
        with self._beat_lock:
            self.info = None

    def _ours_on_host(self, info: LockInfo) -> bytes | None:
        """The lock file's bytes when it is still the lock ``info`` describes, else None."""
        got = self._read()
        return got[0] if got is not None and got[1] is not None and got[1].token == info.token else None

    def over(self, transport: Transport) -> "HostLock":
        """This held lock, to release over another connection to the same host."""
        again = HostLock(transport)
        again.info, again._created = self.info, self._created
        return again

    def _remove_quietly(self, rel: str) -> None:
        try:
            self.transport.remove_file(rel)
        except (UserError, OSError) as exc:
            logger.info("%s: could not remove %s (%s)", self.transport.url, rel, exc)

    def __enter__(self) -> "HostLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.release()
        except Exception as e:  # noqa: BLE001 - never hide the original error
            logger.warning("%s: could not release the lock (%s)", self.transport.url, e)
