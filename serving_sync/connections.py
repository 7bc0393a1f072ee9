"""Open every host (transport + TF Serving client) and take every host's lock.

Locks are first tried all at once without waiting; when one is held they are taken in one order
(where each lock is, then the host's name: ``lock_order``), so two deploys over overlapping fleets
cannot each hold a part and wait for the rest, even when their hosts files name the hosts otherwise.
``--lock-wait`` waits (bounded) for a lock another deploy holds; the default (0) fails at once
with one line naming the owner. Releasing a lock after the connection dropped reconnects once,
so an interrupted deploy does not leave its lock behind.
"""
from __future__ import annotations

import contextlib
import functools
import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from mlops_common import log

from . import cancel, parallel
from .errors import LockHeld
from .hosts import base_key
from .lock import HostLock
from .tfs_client import TFServingClient
from .transports import open_transport

logger = log.get("sync.hosts")
HEARTBEAT_EVERY = 60.0


@dataclass
class HostConn:
    host: object
    transport: object
    client: TFServingClient
    lock: HostLock | None = None
    # the workers using the connection now; a lock release or a close asked meanwhile waits for
    # the last of them (``in_use``, ``_release_after_use``, ``_close``)
    uses: parallel.LastOut = field(default_factory=parallel.LastOut, repr=False, compare=False)


_USES = threading.Lock()       # a unit test's SimpleNamespace conn gets its ``uses`` once


def _uses(conn: HostConn) -> parallel.LastOut:
    with _USES:
        if getattr(conn, "uses", None) is None:
            conn.uses = parallel.LastOut()
        return conn.uses


@contextlib.contextmanager
def in_use(conn: HostConn) -> Iterator[HostConn]:
    """A worker's use of ``conn``: a lock release and a close asked meanwhile (``locked``'s and
    ``connected``'s clean-ups after a forced stop stopped waiting for the worker) are left to the
    worker, done in that order as it stops using it. Closed under a lock try, the answer to a
    create that reached the host was lost, and the lock stayed there until its TTL; under a phase,
    a put-back or retention, a step was cut half done, or went on with no lock held."""
    with _uses(conn).use():
        yield conn


# Hosts connected at once. Kept under OpenSSH's default MaxStartups (10 unauthenticated
# connections), which matters when several hosts are served by one sshd (base directories on one
# machine). Each host is connected to directly: there is no jump host (bastion, ProxyJump).
CONNECT_AT_ONCE = 8


def _open(host, opened: list[HostConn], handover: parallel.Handover) -> HostConn | None:
    if handover.left:       # a forced stop before this host's turn: not connected at all
        return None
    transport = open_transport(host)
    try:
        conn = HostConn(host, transport, TFServingClient(host.rest_url))
    except BaseException:
        transport.close()
        raise
    if not handover.keep(opened.append, conn):     # opened after a forced stop: closed here
        _close(conn)
    return conn


def _close(conn: HostConn) -> None:
    """Close ``conn`` now, or once the last worker using it is done with it (``in_use``)."""
    _uses(conn).done(functools.partial(_close_now, conn))


def _close_now(conn: HostConn) -> None:
    for closer in (conn.transport.close, conn.client.close):
        try:
            closer()
        except Exception:  # noqa: BLE001 - closing dead connections
            pass


@contextlib.contextmanager
def connected(hosts) -> Iterator[list[HostConn]]:
    """Connections to every host, opened in parallel and closed at the end; an unreachable host
    fails all (the first one in the hosts' order is named)."""
    opened: list[HostConn] = []     # by each call: a signal that ``settle`` raises loses its results
    handover = parallel.Handover()  # ... and a call still running then closes what it opens
    try:
        outcomes = parallel.settle(lambda host: _open(host, opened, handover), hosts,
                                   workers=CONNECT_AT_ONCE, name="connect")
        failed = next((exc for _, exc in outcomes if exc is not None), None)
        if failed is not None:
            raise failed
        yield [c for c, exc in outcomes if exc is None]
    finally:
        handover.leave()
        for c in opened:
            _close(c)


def acquire(transport, *, break_lock: str | None, wait: float, purpose: str = "deploy",
            sleep=time.sleep, clock=time.monotonic, model: str | None = None,
            give_up: Callable[[], bool] | None = None,
            record: Callable[[HostLock], object] | None = None) -> HostLock:
    """Take ``transport``'s lock, waiting up to ``wait`` seconds (bounded polls) for its owner.
    ``give_up`` (``sync watch``: asked to stop): when it says so, the wait ends with the owner's
    ``LockHeld`` at once, nothing taken. ``record`` is given the lock before it is tried: a forced
    stop landing after the lock was taken, before this returned, left it unreleased."""
    lock = HostLock(transport, break_lock=break_lock, purpose=purpose, model=model)
    if record is not None:
        record(lock)
    deadline = clock() + max(0.0, wait)
    polls = int(max(0.0, wait) / 0.5) + 1
    announced = False
    for _ in range(polls):
        try:
            lock.acquire()
            return lock
        except LockHeld as exc:
            if clock() >= deadline or (give_up is not None and give_up()):
                raise
            cancel.check()      # SIGTERM / Ctrl-C while waiting: stop now (taken locks are released)
            if not announced:
                logger.info("%s (waiting up to %.0fs, --lock-wait)", exc.message, wait)
                announced = True
            sleep(min(0.5, max(0.0, deadline - clock())))
    lock.acquire()      # last try: raises LockHeld naming the owner
    return lock


# Locks tried at once in the first pass (each try is a few SFTP round trips over an open
# connection: no new connections, so no MaxStartups concern).
LOCK_AT_ONCE = 32


def _try_all(conns: list[HostConn], *, break_lock: str | None, purpose: str, model: str | None,
             handover: parallel.Handover) -> tuple[BaseException | None, list[HostConn]]:
    """Every lock at once, without waiting: (None, []) when all were taken; else every lock this
    pass took is released again, and the first host's error (in lock order) is returned with the
    hosts whose lock this pass took over from a dead owner (its leftovers are still there).
    Each try runs in a worker thread (where no signal lands) and hands its lock over once taken:
    one taken after a forced stop, when the caller no longer waits, is released by its thread."""
    def take(c: HostConn) -> None:
        with in_use(c):         # the connection is closed only once this try is done with it
            if handover.left:   # a forced stop before this host's turn: not tried at all
                return
            lock = acquire(c.transport, break_lock=break_lock, wait=0.0, purpose=purpose, model=model)
            if not handover.keep(setattr, c, "lock", lock):
                release(HostConn(c.host, c.transport, c.client, lock))

    outcomes = parallel.settle(take, conns, workers=LOCK_AT_ONCE, name="lock", inline=False)
    failed = next((exc for _, exc in outcomes if exc is not None), None)
    if failed is None:
        return None, []
    took_over = [c for c in conns if c.lock is not None and c.lock.took_over]
    parallel.settle(release, [c for c in conns if c.lock is not None], workers=CONNECT_AT_ONCE,
                    name="unlock", put_back=True)
    return failed, took_over


@contextlib.contextmanager
def locked(conns: list[HostConn], *, break_lock: str | None = None, wait: float = 0.0,
           purpose: str = "deploy", model: str | None = None,
           give_up: Callable[[], bool] | None = None) -> Iterator[list[HostConn]]:
    """Every host's lock for the deploy, released at the end (even after errors).

    First every lock is tried (``LOCK_AT_ONCE`` at a time) without waiting — a few round trips
    for the whole fleet instead of a few per host in turn (100 hosts 50 ms away: 15 s). A try never waits, so it
    cannot deadlock. When a lock is held, this pass gives back what it took and the locks are
    taken one host after the other in ``lock_order`` (where each lock is, not what the hosts file
    calls the host), waiting up to ``wait`` for each: the order is
    what keeps two waiting deploys from holding each other's hosts, and it names the first held
    host as before. (Two deploys that start within a few round trips of each other may then both
    fail at once — nothing is touched, and the rerun finds one of them done.) Releasing has no
    order to keep and goes to ``CONNECT_AT_ONCE`` hosts at a time: some 14 round trips per host."""
    ordered = sorted(conns, key=lock_order)
    handover = parallel.Handover()
    try:
        failed, took_over = _try_all(ordered, break_lock=break_lock, purpose=purpose, model=model,
                                     handover=handover)
        if failed is not None and not isinstance(failed, LockHeld):
            raise failed
        if failed is not None:
            for c in ordered:
                c.lock = acquire(c.transport, break_lock=break_lock, wait=wait, purpose=purpose, model=model,
                                 give_up=give_up, record=functools.partial(setattr, c, "lock"))
            for c in took_over:     # the dead owner's half-written files are still there to remove
                c.lock.took_over = True
        yield conns
    finally:
        # every lock this deploy holds, however it got here: a forced interrupt during the first
        # pass (its threads still finish taking locks) left them all behind for the lock's TTL; a
        # second one stops the wait, and a try still running then releases its lock itself
        handover.leave()
        parallel.settle(release, [c for c in ordered if c.lock is not None and _release_after_use(c)],
                        workers=CONNECT_AT_ONCE, name="unlock", put_back=True)


def _release_after_use(conn: HostConn) -> bool:
    """True: release ``conn``'s lock now. False: a worker still uses the connection (a second
    Ctrl-C stopped the wait for it) and releases the lock itself once done (``in_use``): released
    now, the worker went on changing the host with no lock held, and another deploy could take it."""
    return not _uses(conn).later(functools.partial(release, conn))


def lock_order(conn: HostConn) -> tuple:
    """Where the host's lock is, then its name: two deploys whose hosts files name the same base
    directories otherwise (CI's file and an operator's) still wait for them in one order (by name,
    each could take a part and wait for the rest until --lock-wait ran out). The base directory's
    path comes first, its address after: one folder named ``file:///srv/a`` in one hosts file and
    ``ssh://localhost/srv/a`` in another sorted by scheme, so among other hosts in a different
    place in each (a known limit stays: several hosts with the same path, one of them addressed
    two ways, see docs/architecture.md)."""
    target = getattr(conn.host, "target", None)
    if target is None:
        return ((), (), conn.host.name)
    key = base_key(target)
    path = key[3] if target.scheme == "file" else posixpath.normpath(target.path or "/")
    return ((path,), key, conn.host.name)


def release(conn: HostConn) -> None:
    lock, conn.lock = conn.lock, None
    if lock is None or lock.info is None:
        return
    try:
        lock.release()
        return
    except Exception as exc:  # noqa: BLE001 - the connection may have died: reconnect once
        first = exc
    try:
        with open_transport(conn.host) as t:
            if conn.transport.cut_writes:
                try:      # still under our lock: a config write cut mid-way left its temp file
                    t.remove_cut_writes(conn.transport.cut_writes)
                except Exception as exc:  # noqa: BLE001 - the lock's release matters more
                    logger.warning("%s: could not remove the temp files of a write the lost connection "
                                   "cut (%s); a lock takeover's retention removes them", conn.host.name, exc)
            lock.over(t).release()
            logger.info("%s: released the deploy lock over a new connection", conn.host.name)
    except Exception as exc:  # noqa: BLE001
        logger.warning("%s: could not release the deploy lock (%s; then %s); if no deploy is running, "
                       "the next one needs --break-lock", conn.host.name, first, exc)


class Heartbeat:
    """Check every held lock between steps (each lock also heartbeats from its own thread).

    Every call raises ``LockHeld`` at once when a lock's thread already found it taken over, or
    ``HostUnreachable`` when its beats kept failing (``HostLock.kept``: no I/O); the heartbeat
    written from here, a few round trips, at most every ``every`` seconds, or now with ``force``
    (before something that deletes, such as retention)."""

    def __init__(self, conns: list[HostConn], every: float = HEARTBEAT_EVERY, clock=time.monotonic):
        self.conns, self.every, self.clock = conns, every, clock
        self.last = clock()

    def __call__(self, *, force: bool = False) -> None:
        for c in self.conns:
            if c.lock is not None:
                c.lock.kept()       # LockHeld (taken over), or the thread could not keep it
        if not force and self.clock() - self.last < self.every:
            return
        self.last = self.clock()
        for c in self.conns:
            if c.lock is not None:
                c.lock.refresh()
