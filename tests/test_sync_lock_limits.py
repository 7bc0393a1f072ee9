"""The deploy lock's limits across deploys with different settings, on a local file host: a lock is
judged by its owner's TTL when that is longer than ours (a contender with a shorter MLOPS_LOCK_TTL
once took over a live lock whose owner beats every owner_ttl/4), a --lock-wait stops at a signal,
and the between-steps heartbeat notices a lost lock at once and refreshes on demand."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from serving_sync import cancel
from serving_sync.connections import Heartbeat, HostConn, acquire
from serving_sync.errors import LockHeld
from serving_sync.layout import LOCK_PATH
from serving_sync.lock import HostLock, LockInfo, heartbeat_path, stale_reason
from serving_sync.transports.local import LocalTransport

T0 = 1_700_000_000.0


@pytest.fixture
def transport(tmp_path):
    t = LocalTransport(tmp_path / "serving")
    yield t
    t.close()


@pytest.fixture(autouse=True)
def no_interrupt():
    cancel.reset()
    yield
    cancel.reset()


def _info(**kw) -> LockInfo:
    base = dict(user="ops", hostname="elsewhere", pid=4242, token="0123456789abcdef", created=T0, heartbeat=T0)
    base.update(kw)
    return LockInfo(**base)


def _later(seconds: float):
    return lambda: time.time() + seconds


# --- judging a lock by its owner's TTL -----------------------------------------------------------
def test_a_lock_whose_owner_has_a_longer_ttl_is_judged_by_the_owners_ttl():
    info = _info(ttl=3600.0)
    assert stale_reason(info, now=T0 + 900, hostname="here", ttl=600) is None
    why = stale_reason(info, now=T0 + 4000, hostname="here", ttl=600)
    assert why is not None and "TTL 60 min" in why


def test_a_longer_ttl_of_our_own_still_wins_over_a_shorter_owner_ttl():
    info = _info(ttl=60.0)
    assert stale_reason(info, now=T0 + 300, hostname="here", ttl=600) is None
    assert stale_reason(info, now=T0 + 700, hostname="here", ttl=600) is not None


def test_a_lock_file_written_without_a_ttl_is_judged_by_the_callers_ttl():
    old = {"user": "ops", "hostname": "elsewhere", "pid": 4242, "token": "0123456789abcdef",
           "created": T0, "heartbeat": T0, "purpose": "deploy"}
    info = LockInfo.from_json(json.dumps(old).encode())
    assert info.ttl == 0.0
    assert stale_reason(info, now=T0 + 500, hostname="here", ttl=600) is None
    assert stale_reason(info, now=T0 + 700, hostname="here", ttl=600) is not None


def test_the_owners_ttl_survives_a_round_trip_through_the_lock_file():
    info = _info(ttl=3600.0, purpose="rollback")
    assert json.loads(info.to_json())["ttl"] == 3600.0
    assert LockInfo.from_json(info.to_json()) == info


def test_a_contender_with_a_shorter_ttl_leaves_a_live_lock_alone_until_the_owners_ttl_passes(transport):
    owner = HostLock(transport, ttl=3600.0, heartbeat_every=0)
    info = owner.acquire()
    assert json.loads(transport.read_file(LOCK_PATH))["ttl"] == 3600.0
    contender = None
    try:
        with pytest.raises(LockHeld) as e:             # its last heartbeat 15 min ago: fine for a 1 h TTL
            HostLock(transport, ttl=600.0, clock=_later(900), heartbeat_every=0).acquire()
        assert info.token in str(e.value) and "after 60 min without one" in str(e.value)
        assert json.loads(transport.read_file(LOCK_PATH))["token"] == info.token

        contender = HostLock(transport, ttl=600.0, clock=_later(4000), heartbeat_every=0)
        took = contender.acquire()                     # silent for longer than the owner's own TTL
        assert took.token != info.token
        assert json.loads(transport.read_file(LOCK_PATH))["token"] == took.token
    finally:
        owner.release()                                # not ours any more: left alone
        if contender is not None:
            contender.release()
    assert not transport.exists(LOCK_PATH)


def test_a_lock_file_from_an_older_release_is_still_taken_over_after_the_callers_ttl(transport):
    old = {"user": "ops", "hostname": "elsewhere", "pid": os.getpid(), "token": "00000000deadbeef",
           "created": time.time(), "heartbeat": time.time(), "purpose": "deploy"}   # no "ttl"
    assert transport.create_exclusive(LOCK_PATH, json.dumps(old).encode())
    with pytest.raises(LockHeld):
        HostLock(transport, ttl=600.0, clock=_later(500), heartbeat_every=0).acquire()
    contender = HostLock(transport, ttl=600.0, clock=_later(700), heartbeat_every=0)
    try:
        assert contender.acquire().token != old["token"]
    finally:
        contender.release()
    assert not transport.exists(LOCK_PATH)



# --- a dead pid counts only in the owner's own PID namespace --------------------------------------
def test_a_dead_pid_is_judged_only_in_the_owners_pid_namespace():
    dead = lambda pid: False  # noqa: E731 - every pid is dead here
    kw = dict(now=T0 + 10, hostname="here", ttl=600, is_alive=dead)
    assert stale_reason(_info(hostname="here", pidns="boot-1:4026531836"), pidns="boot-1:4026531836", **kw)
    # another container with the same hostname (Kubernetes hostNetwork): its pids are not ours
    assert stale_reason(_info(hostname="here", pidns="boot-1:4026532999"), pidns="boot-1:4026531836", **kw) is None
    assert stale_reason(_info(hostname="here", pidns="boot-0:4026531836"), pidns="boot-1:4026531836", **kw) is None
    assert stale_reason(_info(hostname="here"), pidns="boot-1:4026531836", **kw)      # an older file: by hostname


def test_a_live_lock_from_a_container_sharing_our_hostname_is_not_taken_over(transport):
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)                 # no such process here; in the other container it is working
    info = _info(hostname=socket.gethostname(), pid=pid, created=time.time(), heartbeat=time.time(),
                 pidns="another-boot:4026532999", ttl=600.0)
    assert transport.create_exclusive(LOCK_PATH, info.to_json())
    with pytest.raises(LockHeld):
        HostLock(transport, heartbeat_every=0).acquire()
    ours = LockInfo(**{**info.__dict__, "pidns": HostLock(transport, heartbeat_every=0).pidns})
    transport.remove_file(LOCK_PATH)
    assert transport.create_exclusive(LOCK_PATH, ours.to_json())    # the same, in our namespace: dead
    taker = HostLock(transport, heartbeat_every=0)
    try:
        assert taker.acquire().token != info.token
    finally:
        taker.release()

# --- --lock-wait and signals ----------------------------------------------------------------------
def test_a_signal_during_lock_wait_stops_the_wait_at_once(transport):
    holder = HostLock(transport, heartbeat_every=0)
    info = holder.acquire()
    timer = threading.Timer(0.2, cancel.request, ("SIGTERM",))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(cancel.DeployInterrupted, match="SIGTERM"):
            acquire(transport, break_lock=None, wait=30.0)
        assert time.monotonic() - start < 5.0
        assert json.loads(transport.read_file(LOCK_PATH))["token"] == info.token
    finally:
        timer.cancel()
        holder.release()


def test_without_a_signal_lock_wait_still_gives_up_with_the_owners_name(transport):
    holder = HostLock(transport, heartbeat_every=0)
    info = holder.acquire()
    try:
        with pytest.raises(LockHeld, match=info.token):
            acquire(transport, break_lock=None, wait=0.3)
    finally:
        holder.release()


# --- the between-steps heartbeat ------------------------------------------------------------------
def _conn(transport, lock) -> HostConn:
    return HostConn(host=None, transport=transport, client=None, lock=lock)


def test_the_heartbeat_stops_at_once_when_the_locks_thread_found_it_taken_over(transport):
    lock = HostLock(transport, heartbeat_every=0)
    lock.acquire()
    try:
        hb = Heartbeat([_conn(transport, lock)], every=60.0)
        hb()                                           # fine, and within its 60 s: nothing to do
        lock.lost = "taken over"
        with pytest.raises(LockHeld, match="taken over"):
            hb()                                       # not only at its next 60 s refresh
    finally:
        lock.lost = None
        lock.release()


def test_a_forced_heartbeat_refreshes_now_and_finds_a_broken_lock(transport):
    lock = HostLock(transport, heartbeat_every=0)
    info = lock.acquire()
    breaker = HostLock(transport, heartbeat_every=0, break_lock=None)
    try:
        hb = Heartbeat([_conn(transport, lock)], every=60.0)
        assert not transport.exists(heartbeat_path(info.token))
        hb(force=True)                                 # still ours: the heartbeat is written now
        assert transport.exists(heartbeat_path(info.token))

        breaker.break_lock = info.token
        breaker.acquire()
        hb()                                           # within 60 s, lost not set: no I/O, no error
        with pytest.raises(LockHeld, match="lost its lock"):
            hb(force=True)
    finally:
        lock.release()
        breaker.release()
    assert not transport.exists(LOCK_PATH)


# --- retention only while the host is ours ---------------------------------------------------------
def test_retention_removes_nothing_once_the_hosts_lock_was_taken_over(transport):
    """The deploy's last step on a host deletes old versions. After another deploy took the host's
    lock (found by the lock's thread, or by the heartbeat written just before deleting), retention
    leaves every version where it is: the new owner may be loading one of them."""
    from types import SimpleNamespace

    from serving_sync import deploy_retention
    from serving_sync.options import DeployOptions

    for v in (1, 2, 3, 4, 5, 6):
        (transport.base / "m" / str(v)).mkdir(parents=True)
        (transport.base / "m" / str(v) / "saved_model.pb").write_bytes(b"x")
    ours = HostLock(transport, heartbeat_every=0)
    ours.acquire()
    conn = HostConn(SimpleNamespace(name="h1", target=SimpleNamespace(scheme="file")), transport, None)
    conn.lock = ours
    plan = SimpleNamespace(model="m", desired=6, previous_kept=5, current=5, final=SimpleNamespace(versions=(5, 6)),
                           held_by_others=())
    run = SimpleNamespace(plan=plan, transport=transport, host=conn.host, heartbeat=Heartbeat([conn]), conn=conn)
    thief = HostLock(transport, break_lock=ours.info.token, heartbeat_every=0)
    thief.acquire()                       # ours.lost is not set: only the forced heartbeat can tell
    try:
        info = deploy_retention.host_retention(run, DeployOptions(keep=1))
        assert "lost its lock" in info["error"]
        assert sorted(int(p.name) for p in (transport.base / "m").iterdir()) == [1, 2, 3, 4, 5, 6]
        thief.release()
        ours.acquire()                    # the host is ours again: retention removes what keep=1 allows
        info = deploy_retention.host_retention(run, DeployOptions(keep=1))
        assert info["remove_versions"] == [1, 2, 3, 4]
        assert sorted(int(p.name) for p in (transport.base / "m").iterdir()) == [5, 6]
    finally:
        ours.release()
        thief.release()


def test_a_takeover_in_the_first_lock_pass_is_still_known_after_waiting_for_another_host(tmp_path):
    """The fleet's first pass takes every lock at once; when one host is busy it gives them all
    back and takes them again one by one. A dead owner's lock taken over in that first pass is gone
    by the second, so the retaken lock must still say it was taken over: retention removes the dead
    deploy's half-written ``models.config`` temp files only then."""
    import socket
    import subprocess
    import sys
    from types import SimpleNamespace

    from serving_sync import connections

    dead_host, busy_host = LocalTransport(tmp_path / "a"), LocalTransport(tmp_path / "b")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    probe = HostLock(dead_host, heartbeat_every=0)
    dead = _info(hostname=socket.gethostname(), pid=int(gone.stdout), created=time.time(),
                 heartbeat=time.time(), pidns=probe.pidns, ttl=600.0)
    assert dead_host.create_exclusive(LOCK_PATH, dead.to_json())
    holder = HostLock(busy_host, heartbeat_every=0)
    held_token = holder.acquire().token
    timer = threading.Timer(0.3, holder.release)          # the other deploy finishes meanwhile
    timer.start()
    conns = [HostConn(SimpleNamespace(name=n), t, None) for n, t in (("a", dead_host), ("b", busy_host))]
    try:
        with connections.locked(conns, wait=10.0):
            a, b = conns
            assert a.lock.info.token != dead.token and b.lock.info.token != held_token
            assert a.lock.took_over, "the dead owner's lock was taken over in the first pass"
            assert not b.lock.took_over
    finally:
        timer.cancel()
        holder.release()
        dead_host.close()
        busy_host.close()
