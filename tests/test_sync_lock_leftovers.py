"""Host locks against what a review of their leftovers found: a lock this process left behind
(both release attempts failed) blocked this same process (a ``sync watch``) for the lock's TTL,
stale heartbeat files were never removed, a failed lock write deleted the lock by name (another
deploy's after a takeover), and the lock order depended on how a hosts file names a host.
Real files on disk; no network."""
from __future__ import annotations

import errno
import json
import os
import time
from types import SimpleNamespace

import pytest

from serving_sync import connections, retention
from serving_sync.connections import HostConn
from serving_sync.errors import LockHeld
from serving_sync.layout import LOCK_PATH, STATE_DIR
from serving_sync.lock import HostLock, LockInfo
from serving_sync.transports.local import LocalTransport
from tests.test_sync_support import hut  # noqa: F401 - fixture


class _CutRelease(LocalTransport):
    """A connection that died: every compare-and-delete fails."""

    cut = False

    def remove_if_same(self, rel, expected):
        if self.cut:
            raise OSError(errno.ECONNRESET, "connection reset")
        return super().remove_if_same(rel, expected)


def test_a_lock_this_process_left_behind_is_taken_back_at_once(tmp_path, monkeypatch):
    base = tmp_path / "h"
    base.mkdir()
    t = _CutRelease(base)
    conn = HostConn(SimpleNamespace(name="h"), t, client=None)
    conn.lock = connections.acquire(t, break_lock=None, wait=0.0)
    left = conn.lock.info
    t.cut = True

    def no_reconnect(host):
        raise OSError(errno.EHOSTUNREACH, "no route to host")

    monkeypatch.setattr(connections, "open_transport", no_reconnect)
    connections.release(conn)                      # both attempts fail: the lock stays, our live pid in it
    assert _token_on_host(base) == left.token and left.pid == os.getpid()
    t.cut = False
    again = HostLock(LocalTransport(base), heartbeat_every=0)
    again.acquire()                                # the next pass: no 10-minute wait for our own lock
    try:
        assert again.info.token != left.token and again.took_over
    finally:
        again.release()
    assert not (base / LOCK_PATH).exists()


def test_a_lock_this_process_still_holds_is_not_taken_by_another_of_its_threads(tmp_path):
    base = tmp_path / "h"
    base.mkdir()
    holder = HostLock(LocalTransport(base), heartbeat_every=0)
    holder.acquire()
    try:
        with pytest.raises(LockHeld):
            HostLock(LocalTransport(base), heartbeat_every=0).acquire()
    finally:
        holder.release()


def _token_on_host(base) -> str:
    return LockInfo.from_json((base / LOCK_PATH).read_bytes()).token


def test_a_failed_lock_write_deletes_only_the_file_it_made(tmp_path, monkeypatch):
    """Stalled between its create and its write, the empty lock was taken over and another deploy
    created its own; the write then failed (disk full): the clean-up deleted that deploy's lock."""
    base = tmp_path / "h"
    base.mkdir()
    t = LocalTransport(base)
    path = base / LOCK_PATH
    theirs = b'{"the other deploy": 1}\n'
    real_write = os.write

    def stalled_then_full(fd, data):
        os.unlink(path)                       # the takeover of our "dead" empty file ...
        with open(path, "xb") as f:           # ... and the other deploy's lock under the same name
            f.write(theirs)
        monkeypatch.setattr(os, "write", real_write)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", stalled_then_full)
    with pytest.raises(Exception, match="creating"):
        t.create_exclusive(LOCK_PATH, b'{"ours": 1}\n')
    assert path.read_bytes() == theirs
    # without a takeover the failed file is still removed (an empty one would read as corrupt)
    path.unlink()

    def full(fd, data):
        monkeypatch.setattr(os, "write", real_write)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(Exception, match="creating"):
        t.create_exclusive(LOCK_PATH, b'{"ours": 1}\n')
    assert not path.exists()


def test_dead_locks_heartbeat_files_are_removed_by_retention_under_the_lock(hut):  # noqa: F811
    """A holder killed mid-release (lock gone, heartbeat file not) or mid-beat (its temp file)
    left them for ever: retention never looked in .serving_sync."""
    lock = HostLock(hut.transport, ttl=600.0, heartbeat_every=0)
    lock.acquire()
    try:
        lock.beat()                                     # ours: current, kept
        now = time.time()

        def beat(token, when):
            return json.dumps({"token": token, "heartbeat": when}).encode()

        hut.raw_write(f"{STATE_DIR}/lock-heartbeat-deadbeef00000001", beat("deadbeef00000001", now - 3600))
        hut.raw_write(f"{STATE_DIR}/.lock-heartbeat-deadbeef00000002.tmp-0badf00d", b'{"tok')  # cut short
        hut.raw_write(f"{STATE_DIR}/lock-heartbeat-feedface00000003", beat("feedface00000003", now - 5))
        mine = f"{STATE_DIR}/lock-heartbeat-{lock.info.token}"
        p = retention.plan(hut.transport, "digits", serving=None, previous=None,
                           lock=(lock.info.token, lock.ttl))
        assert p.remove_heartbeats == sorted([f"{STATE_DIR}/lock-heartbeat-deadbeef00000001",
                                              f"{STATE_DIR}/.lock-heartbeat-deadbeef00000002.tmp-0badf00d"])
        retention.apply(hut.transport, p)
        left = hut.raw_names(STATE_DIR)
        assert "lock-heartbeat-deadbeef00000001" not in left
        assert ".lock-heartbeat-deadbeef00000002.tmp-0badf00d" not in left
        assert "lock-heartbeat-feedface00000003" in left           # silent for 5 s only: kept
        assert mine.split("/")[1] in left and "lock" in left
    finally:
        lock.release()


def test_a_deploys_retention_removes_a_dead_locks_heartbeat_after_a_takeover(tmp_path):
    """The wiring: after a takeover, a deploy's host retention passes the lock it holds (without
    one, .serving_sync is not listed: a dozen SFTP requests on every deploy)."""
    from serving_sync import deploy_retention
    from serving_sync.connections import Heartbeat
    from serving_sync.options import DeployOptions

    t = LocalTransport(tmp_path)
    ours = HostLock(t, heartbeat_every=0)
    ours.acquire()
    try:
        dead = tmp_path / STATE_DIR / "lock-heartbeat-deadbeef00000001"
        dead.write_bytes(json.dumps({"token": "deadbeef00000001", "heartbeat": 0.0}).encode())
        conn = HostConn(SimpleNamespace(name="h1", target=SimpleNamespace(scheme="file")), t, None)
        conn.lock = ours
        plan = SimpleNamespace(model="m", desired=1, previous_kept=None, current=None,
                               final=SimpleNamespace(versions=(1,)), held_by_others=())
        run = SimpleNamespace(plan=plan, transport=t, host=conn.host, heartbeat=Heartbeat([conn]), conn=conn)
        info = deploy_retention.host_retention(run, DeployOptions(keep=1))
        assert info["remove_heartbeats"] == [] and dead.exists(), info
        ours.took_over = True
        info = deploy_retention.host_retention(run, DeployOptions(keep=1))
        assert info["remove_heartbeats"] == [f"{STATE_DIR}/lock-heartbeat-deadbeef00000001"], info
        assert not dead.exists() and (tmp_path / LOCK_PATH).exists()
    finally:
        ours.release()


def test_one_folder_named_file_and_ssh_is_waited_for_in_one_order(sshd, tmp_path):
    """Two deploys whose hosts files name base X and base Y one as file://, the other over
    ssh://127.0.0.1: the order came from the address (scheme first), so each deploy took its
    file:// host first — while a third deploy held X, the second took Y and waited for X, and the
    first could then take X and wait for Y until --lock-wait ran out. By path first: one order."""

    from serving_sync.hosts import Host, Target
    from serving_sync.transports import open_transport
    from tests.test_sync_support import ssh_host, two_deploys_waiting_for_x

    x, y = tmp_path / "base-x", tmp_path / "base-y"
    x.mkdir()
    y.mkdir()

    def file_conn(base):
        host = Host(f"file-{base.name}", Target("file", str(base)), "http://127.0.0.1:1")
        return HostConn(host, open_transport(host), client=None)

    def ssh_conn(base):
        host = ssh_host(sshd, base, name=f"ssh-{base.name}")
        return HostConn(host, open_transport(host), client=None)

    first, second = [file_conn(x), ssh_conn(y)], [ssh_conn(x), file_conn(y)]
    try:
        outcomes = two_deploys_waiting_for_x(
            x, y, first, second, lambda conns: all(c.lock is not None and c.lock.info is not None for c in conns))
    finally:
        for c in first + second:
            c.transport.close()
    assert outcomes == {"first": True, "second": True}


class _KilledMidRelease(LocalTransport):
    """The process dies at the first removal of a heartbeat file (a SIGKILL, in effect)."""

    armed = False

    def remove_file(self, rel):
        if self.armed and "lock-heartbeat-" in rel:
            raise KeyboardInterrupt
        return super().remove_file(rel)


@pytest.mark.parametrize("where", ["heartbeat", "lock"])
def test_a_release_cut_short_leaves_a_lock_not_a_heartbeat_without_one(tmp_path, where):
    """Removing the lock first, a release killed before its heartbeat went left that file for ever
    (no lock points to it, so no takeover sweeps it). Now the heartbeat goes first: what a cut
    leaves is a lock, which the next deploy takes over (its retention sweeps the rest)."""
    base = tmp_path / "h"
    base.mkdir()
    t = _KilledMidRelease(base)
    lock = HostLock(t, heartbeat_every=0)
    lock.acquire()
    lock.beat()
    beat = base / STATE_DIR / f"lock-heartbeat-{lock.info.token}"
    assert beat.exists()
    if where == "heartbeat":
        t.armed = True
        with pytest.raises(KeyboardInterrupt):
            lock.release()
    else:
        t.remove_if_same = lambda rel, expected: (_ for _ in ()).throw(KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            lock.release()
    assert (base / LOCK_PATH).exists() or not beat.exists(), "a heartbeat file with no lock"
    again = HostLock(LocalTransport(base), heartbeat_every=0)
    again.acquire()                                   # this process's own lock: taken back at once
    try:
        assert again.took_over and not beat.exists()
    finally:
        again.release()
