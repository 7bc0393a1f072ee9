"""Host locks against what a review of their leftovers found: a lock this process left behind
(both release attempts failed) blocked this same process (a ``sync watch``) for the lock's TTL,
stale heartbeat files were never removed, a failed lock write deleted the lock by name (another
deploy's after a takeover), and the lock order depended on how a hosts file names a host.
Real files on disk; no network."""
from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from serving_sync import connections
from serving_sync.connections import HostConn
from serving_sync.errors import LockHeld
from serving_sync.layout import LOCK_PATH
from serving_sync.lock import HostLock, LockInfo
from serving_sync.transports.local import LocalTransport


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
