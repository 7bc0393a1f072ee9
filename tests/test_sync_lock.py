"""The per-host deploy lock on file, ssh and s3 hosts; retention decisions and their application."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mlops_common.errors import ConfigError, UserError
from serving_sync import manifest as mf
from serving_sync import retention
from serving_sync.errors import LockHeld
from serving_sync.layout import LOCK_PATH, incoming_name, incoming_time, manifest_path
from serving_sync.lock import HostLock, LockInfo, corrupt_token
from serving_sync.publish import publish, published_versions
from tests.test_sync_support import hut, make_model_tree  # noqa: F401 - fixture


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _lock_names(hut) -> list[str]:
    return [n for n in hut.raw_names(".serving_sync") if n.startswith("lock")]


def test_second_deploy_is_refused_while_the_first_holds_the_lock(hut):
    first = HostLock(hut.transport)
    info = first.acquire()
    stored = json.loads(hut.raw_read(LOCK_PATH))
    assert stored["token"] == info.token and stored["pid"] == os.getpid()
    assert stored["hostname"] == socket.gethostname()
    with pytest.raises(LockHeld) as e:
        HostLock(hut.transport).acquire()
    msg = str(e.value)
    assert "\n" not in msg and info.owner in msg and f"--break-lock {info.token}" in msg
    assert "wait for it" in msg
    first.release()
    assert _lock_names(hut) == []                  # lock and heartbeat file gone
    with HostLock(hut.transport):          # free again
        assert "lock" in hut.raw_names(".serving_sync")
    assert _lock_names(hut) == []


def test_a_live_lock_is_never_taken_over_even_past_its_ttl(hut):
    """The owner's heartbeat thread keeps it fresh; neither the TTL nor a wrong token breaks it.
    (TTL 2 s: with 1 s, an S3 heartbeat write slower than 0.8 s on a loaded CI machine once let a
    contender see the lock as stale.)"""
    owner = HostLock(hut.transport, ttl=2.0, heartbeat_every=0.2)
    info = owner.acquire()
    try:
        deadline = time.monotonic() + 6.0          # three TTLs, and 8 tries however slow they are
        tries = 0
        while (time.monotonic() < deadline or tries < 8) and tries < 50 and time.monotonic() < deadline + 60:
            with pytest.raises(LockHeld, match="another deploy holds the lock"):
                HostLock(hut.transport, ttl=2.0, break_lock="0123456789abcdef").acquire()
            tries += 1
            time.sleep(0.25)
        assert tries >= 8
        assert json.loads(hut.raw_read(LOCK_PATH))["token"] == info.token
        owner.refresh()                           # still ours
        assert owner.lost is None
    finally:
        owner.release()
    assert owner._thread is None


def test_a_long_upload_keeps_its_lock_fresh(hut, tmp_path):
    """A 3 s upload (TTL 2 s, heartbeat 0.25 s) beside a contender on its own connection: the upload
    outlasts the TTL, so only the heartbeat keeps the lock. (TTL 1 s once went stale on a loaded CI
    machine: an S3 heartbeat write took longer than 0.75 s.)"""
    from serving_sync.transports import open_transport

    model = make_model_tree(tmp_path / "m", variables_bytes=200_000)
    m = mf.build(model)
    owner = HostLock(hut.transport, ttl=2.0, heartbeat_every=0.25)
    info = owner.acquire()
    refusals: list[str] = []
    taken: list[str] = []
    started = []

    def slow_progress(n: int) -> None:
        if not started:
            started.append(time.monotonic())
            contender = open_transport(hut.host)
            try:
                # past the TTL, and 8 tries however slow (each with its 0.2 s pause took 0.27 s at load 11)
                while (time.monotonic() < started[0] + 3.0 or len(refusals) + len(taken) < 8) \
                        and len(refusals) + len(taken) < 40 and time.monotonic() < started[0] + 60:
                    try:
                        HostLock(contender, ttl=2.0, heartbeat_every=0).acquire()
                        taken.append("taken")
                    except LockHeld as exc:
                        refusals.append(exc.message)
                    time.sleep(0.2)
            finally:
                contender.close()

    try:
        hut.transport.upload_tree(model, "digits/.incoming-1-x", m, progress=slow_progress)
        assert started and time.monotonic() - started[0] >= 3.0
        assert taken == [] and len(refusals) >= 8, (taken, refusals[-1:])
        assert hut.transport.verify("digits/.incoming-1-x", m) == []
        owner.refresh()
        assert json.loads(hut.raw_read(LOCK_PATH))["token"] == info.token
    finally:
        owner.release()


def test_a_dead_lock_is_taken_over_after_the_ttl_with_a_warning_and_a_ledger_row(hut, monkeypatch,
                                                                                   tmp_path, caplog):
    from registry.ledger import Ledger

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_LEDGER_URL", raising=False)
    dead = LockInfo("ci", "another-machine", 4242, "cafe0123cafe0123", time.time(), time.time())
    hut.raw_write(LOCK_PATH, dead.to_json())
    with pytest.raises(LockHeld, match="another deploy holds the lock"):
        HostLock(hut.transport, ttl=1.0).acquire()      # fresh: not stale yet
    time.sleep(1.3)
    lock = HostLock(hut.transport, ttl=1.0, model="digits")
    with caplog.at_level("WARNING", logger="mlops.sync.lock"):
        info = lock.acquire()
    try:
        assert json.loads(hut.raw_read(LOCK_PATH))["token"] == info.token
        assert any("took over the deploy lock cafe0123cafe0123" in r.getMessage() for r in caplog.records)
        rows = Ledger().entries("digits", actions=("lock_takeover",))
        assert len(rows) == 1 and rows[0].details["previous_owner"] == dead.owner
        assert "no heartbeat for" in rows[0].reason and rows[0].host == hut.transport.url
    finally:
        lock.release()


def test_the_lock_of_a_dead_process_on_this_machine_is_taken_over_at_once(hut):
    stale = LockInfo("ci", socket.gethostname(), dead_pid(), "deadbeefdeadbeef", time.time(), time.time())
    hut.raw_write(LOCK_PATH, stale.to_json())
    with HostLock(hut.transport) as lock:
        assert json.loads(hut.raw_read(LOCK_PATH))["token"] == lock.info.token


def test_a_named_token_breaks_only_that_lock(hut):
    owner = HostLock(hut.transport)
    info = owner.acquire()
    with pytest.raises(LockHeld):
        HostLock(hut.transport, break_lock="ffffffffffffffff").acquire()
    thief = HostLock(hut.transport, break_lock=info.token)
    thief.acquire()
    assert json.loads(hut.raw_read(LOCK_PATH))["token"] == thief.info.token
    with pytest.raises(LockHeld, match="lost its lock"):
        owner.refresh()
    owner.release()                          # must not remove the thief's lock
    assert json.loads(hut.raw_read(LOCK_PATH))["token"] == thief.info.token
    thief.release()
    assert _lock_names(hut) == []


def test_a_release_that_fails_can_be_retried_over_a_new_connection(request, tmp_path):
    """As ``connections.release`` does after a lost SSH connection: the 2nd try removes the lock."""
    from serving_sync.transports import open_transport
    from tests.test_sync_support import make_hut

    h = make_hut("ssh", request, tmp_path)
    lock = HostLock(h.transport)
    lock.acquire()
    h.transport.close()                         # the connection died
    with pytest.raises(UserError, match="lost the SSH connection"):
        lock.release()
    assert "lock" in h.raw_names(".serving_sync") and lock.info is not None
    with open_transport(h.host) as t:
        lock.over(t).release()
    assert _lock_names(h) == []
    with open_transport(h.host) as t1, open_transport(h.host) as t2:
        second = HostLock(t1, heartbeat_every=0)
        second.acquire()
        again = HostLock(t2)                    # only the token known: the lock is read first
        again.info = second.info
        again.release()
    assert _lock_names(h) == []


def test_compare_and_delete_removes_only_the_content_it_was_given(hut):
    hut.raw_write(LOCK_PATH, b"one")
    assert hut.transport.remove_if_same(LOCK_PATH, b"two") is False
    assert hut.raw_read(LOCK_PATH) == b"one"
    assert hut.transport.remove_if_same(LOCK_PATH, b"one") is True
    assert "lock" not in hut.raw_names(".serving_sync")
    assert hut.transport.remove_if_same(LOCK_PATH, b"one") is False     # gone: nothing to do
    assert [n for n in hut.raw_names(".serving_sync") if ".cad" in n] == []


def test_corrupt_lock_file_is_reported_and_broken_by_its_name(hut):
    hut.raw_write(LOCK_PATH, b"{not json")
    with pytest.raises(LockHeld, match="cannot be read") as e:
        HostLock(hut.transport).acquire()
    token = corrupt_token(b"{not json")
    assert f"--break-lock {token}" in str(e.value)
    with HostLock(hut.transport, break_lock=token) as lock:
        assert lock.info is not None


def test_an_empty_lock_file_is_taken_over_once_it_stays_empty(hut):
    """Found by a kill sweep: a deploy SIGKILLed between creating its lock and writing it (one SFTP
    round trip) left an empty file that every rerun refused as corrupt until --break-lock."""
    hut.raw_write(LOCK_PATH, b"")
    lock = HostLock(hut.transport)
    info = lock.acquire()
    try:
        assert lock.took_over and json.loads(hut.raw_read(LOCK_PATH))["token"] == info.token
    finally:
        lock.release()


@pytest.mark.parametrize("kind", ["file", "ssh"])    # S3 deletes with If-Match: no guard file
def test_compare_and_delete_waits_for_a_live_guard_and_breaks_a_dead_one(kind, request, tmp_path):
    """The guard serialises compare-and-delete: a fresh one (another caller, working) is waited
    for and then respected; one left by a dead process (old, or never written) is removed."""
    from serving_sync.transports import guarded_delete
    from tests.test_sync_support import make_hut

    hut = make_hut(kind, request, tmp_path)
    try:        # closed here: an SSH transport left open stays alive (its thread) for the rest of the worker
        guard = guarded_delete.guard_path(LOCK_PATH)
        hut.raw_write(LOCK_PATH, b"one")
        hut.raw_write(guard, json.dumps({"created": time.time()}).encode())
        t0 = time.monotonic()
        assert guarded_delete.remove_if_same(hut.transport, LOCK_PATH, b"one", wait=0.3) is False
        assert 0.3 <= time.monotonic() - t0 < 5
        assert hut.raw_read(LOCK_PATH) == b"one"                 # busy: left alone
        hut.raw_write(guard, json.dumps({"created": time.time() - 120}).encode())
        assert guarded_delete.remove_if_same(hut.transport, LOCK_PATH, b"one", wait=0.1) is True
        assert _lock_names(hut) == []
        hut.raw_write(LOCK_PATH, b"two")
        hut.raw_write(guard, b"")                                # created, never written: a crash
        assert guarded_delete.remove_if_same(hut.transport, LOCK_PATH, b"two", wait=0.1) is True
        assert [n for n in hut.raw_names(".serving_sync") if n.startswith("lock")] == []
    finally:
        hut.transport.close()



def test_a_compare_and_delete_stalled_while_holding_the_guard_gives_up(monkeypatch, tmp_path):
    """A caller stalled between reading the file and deleting it (a slow round trip) for longer than
    half the guard's stale age may have had its guard broken and the file replaced meanwhile: it
    deletes nothing (it deleted the successor's lock before)."""
    from serving_sync.transports import guarded_delete
    from serving_sync.transports.local import LocalTransport

    class Slow(LocalTransport):
        def read_file(self, rel):
            data = super().read_file(rel)
            if rel == LOCK_PATH:
                time.sleep(0.3)           # the read's answer arrives late
            return data

    monkeypatch.setattr(guarded_delete, "GUARD_STALE", 0.4)
    t = Slow(tmp_path / "base")
    try:
        t.write_file_atomic(LOCK_PATH, b"one")
        assert guarded_delete.remove_if_same(t, LOCK_PATH, b"one", wait=0.1) is False
        assert t.read_file(LOCK_PATH) == b"one"
        monkeypatch.setattr(guarded_delete, "GUARD_STALE", 30.0)
        assert guarded_delete.remove_if_same(t, LOCK_PATH, b"one", wait=0.1) is True
    finally:
        t.close()

_RACE = """
import os, sys, time
from pathlib import PosixPath
from serving_sync.errors import LockHeld
from serving_sync.hosts import Host, Target
from serving_sync.lock import HostLock
from serving_sync.transports import open_transport
tr = open_transport(Host("h", {target!r}, "http://127.0.0.1:1", known_hosts={known_hosts!r},
                         identity_file={identity_file!r}))
open(os.path.join({ready!r}, "racer-%d" % os.getpid()), "w").close()       # connected: ready to race
deadline = time.time() + 120
while not os.path.exists({go!r}) and time.time() < deadline:   # the test says when all four are ready
    time.sleep(0.005)
start = float(open({go!r}).read())
while time.time() < start:   # start together
    time.sleep(0.005)
try:
    lock = HostLock(tr, ttl=60, break_lock={token!r})
    lock.acquire()
    print("WON", lock.info.token, flush=True)
    deadline = time.time() + 120        # stay alive until the others are done: a dead
    while time.time() < deadline and not os.path.exists({done!r}):   # winner's lock is rightly stale
        time.sleep(0.05)
except LockHeld:
    print("LOST")
"""


@pytest.mark.parametrize("situation", ["free", "stale", "named"])
def test_racing_processes_exactly_one_holds(hut, situation, tmp_path):
    """Four processes race for the lock (free, stale, or all naming the same token): one wins."""
    h = hut.host
    token = None
    if situation != "free":
        beat = time.time() - (7200 if situation == "stale" else 0)
        old = LockInfo("ci", "another-machine", 4242, "abad1dea0000beef", beat, beat)
        hut.raw_write(LOCK_PATH, old.to_json())
        token = old.token if situation == "named" else None
    ready, go = tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    script = _RACE.format(target=h.target, known_hosts=h.known_hosts, identity_file=h.identity_file,
                          ready=str(ready), go=str(go), done=str(tmp_path / "done"), token=token)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ}) for _ in range(4)]
    deadline = time.monotonic() + 120
    # once all four have started and connected (not after a fixed 3 s), one start time for all
    while len(list(ready.iterdir())) < 4 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    (tmp_path / "go.tmp").write_text(repr(time.time() + 0.2))
    os.replace(tmp_path / "go.tmp", go)
    while sum(p.poll() is not None for p in procs) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    (tmp_path / "done").touch()                 # now the winner may exit
    outs = [p.communicate(timeout=120) for p in procs]
    results = sorted(o[0].strip().split(" ")[0] for o in outs)
    assert results == ["LOST", "LOST", "LOST", "WON"], outs
    winner = next(o[0].split()[1] for o in outs if o[0].startswith("WON"))
    assert json.loads(hut.raw_read(LOCK_PATH))["token"] == winner
    assert [n for n in hut.raw_names(".serving_sync") if ".cad" in n] == []


@pytest.mark.slow   # a real `mlops sync watch` over two passes
def test_sync_watch_uses_a_named_token_on_its_first_pass_only(deploy_env):
    """`watch --break-lock T` takes over lock T on its first pass; the same token on a lock met
    later is respected (the later pass reports the holder and deploys nothing)."""
    import signal
    import threading

    from tests.helpers import REPO

    env = deploy_env
    host = env.add_host("file")
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    lock_file = host.base / ".serving_sync" / "lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)

    def live_lock() -> bytes:
        data = LockInfo("ci", "another-machine", 4242, "5eed5eed5eed5eed", time.time(), time.time()).to_json()
        lock_file.write_bytes(data)
        return data

    live_lock()
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "watch", "--break-lock", "5eed5eed5eed5eed",
                             "--interval", "1", "--max-seconds", "240", "--json"],
                            cwd=REPO, env={**os.environ, **env.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()

    def wait_for(text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not any(text in x for x in lines) and proc.poll() is None:
            time.sleep(0.1)
        assert any(text in x for x in lines), "".join(lines)

    try:
        wait_for("reconcile (start): deployed", 180)
        assert any("took over the deploy lock 5eed5eed5eed5eed" in x for x in lines)
        second = live_lock()                       # the same token again, held by a live deploy
        env.promote(v2)
        wait_for("another deploy holds the lock", 120)
        assert lock_file.read_bytes() == second    # never taken over on a later pass
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=120)
        reader.join(timeout=10)
    doc = json.loads(out)
    assert (doc["passes"][0]["status"], doc["passes"][0]["version"]) == ("deployed", v1)
    assert any(p["status"] == "error" and "5eed5eed5eed5eed" in p["message"] for p in doc["passes"][1:])
    assert not any(p["status"] == "deployed" for p in doc["passes"][1:])
    assert lock_file.read_bytes() == second
    env.serves(host, v1)


# --- retention -----------------------------------------------------------------------------------
@pytest.mark.parametrize("published, serving, previous, keep, protected, removed", [
    ([1, 2, 3, 4, 5, 6], 6, 5, 3, (), [1, 2, 3]),
    ([1, 2, 3, 4, 5, 6], 2, 1, 3, (), [3]),          # rolled back to old versions: both kept
    ([1, 2, 3, 4, 5, 6], 6, 5, 0, (), [1, 2, 3, 4]),
    ([1, 2, 3, 4, 5, 6], 6, None, 1, (3,), [1, 2, 4, 5]),
    ([4], 4, None, 3, (), []),
    ([], None, None, 3, (), []),
    ([7, 3, 3, 10], 10, 7, 2, (), [3]),
])
def test_retention_never_removes_serving_or_previous(published, serving, previous, keep, protected, removed):
    got = retention.versions_to_remove(published, serving=serving, previous=previous, keep=keep,
                                       protected=protected)
    assert got == removed
    assert serving not in got and previous not in got


def test_retention_rejects_negative_keep():
    with pytest.raises(ConfigError):
        retention.versions_to_remove([1], serving=1, previous=None, keep=-1)


def test_stale_uploads_by_age():
    now = 1_800_000_000.0
    fresh, old = incoming_name(4, now - 60), incoming_name(4, now - 7200)
    assert incoming_time(old) == now - 7200
    names = [fresh, old, ".incoming-garbage", "4", "5", ".hidden"]
    assert retention.stale_uploads(names, now=now, older_than=3600) == sorted([old, ".incoming-garbage"])


def test_an_upload_named_with_a_date_that_does_not_exist_is_stale_not_a_crash():
    """Found by a sweep (2026-12-04): a leftover `.incoming-4-20260230T...` (30 February) made
    every deploy end in a ValueError traceback after its switch, retention half done."""
    bad = ".incoming-4-20260230T000000Z-abcd"
    assert incoming_time(bad) is None
    assert retention.stale_uploads([bad, "4"], now=1_800_000_000.0) == [bad]


def test_retention_plan_and_apply_on_a_host(hut, tmp_path):
    model = make_model_tree(tmp_path / "m", variables_bytes=1000)
    m = mf.build(model)
    for v in (1, 2, 3, 4, 5):
        publish(hut.transport, "digits", v, model, m)
    old_upload = incoming_name(6, time.time() - 7200)
    hut.raw_write(f"digits/{old_upload}/saved_model.pb", b"partial")
    hut.raw_write("models.config", b"model_config_list {}\n")
    hut.raw_write(".models.config.tmp-0badf00d", b"model_config_li")     # a config write killed mid-way
    assert retention.plan(hut.transport, "digits", serving=5, previous=1, keep=2).remove_config_temps == []
    p = retention.plan(hut.transport, "digits", serving=5, previous=1, keep=2, config_temps=True)  # a takeover
    assert p.remove_versions == [2, 3] and p.remove_uploads == [old_upload]
    assert p.remove_config_temps == [".models.config.tmp-0badf00d"]
    retention.apply(hut.transport, p)
    assert ".models.config.tmp-0badf00d" not in hut.raw_names("") and "models.config" in hut.raw_names("")
    assert published_versions(hut.transport, "digits") == [1, 4, 5]
    assert hut.raw_names("digits") == ["1", "4", "5"]
    assert "2.json" not in hut.raw_names(".serving_sync/manifests/digits")
    assert hut.raw_read(manifest_path("digits", 4))


# --- a fleet's locks (serving_sync.connections.locked) ------------------------------------------
class _Host:
    def __init__(self, name: str):
        self.name = name


class _MeetingTransport:
    """A file transport whose lock create / compare-and-delete first meet the other hosts' at a
    barrier: it only gets through when every host's call runs at the same time."""

    def __init__(self, base, barrier, calls: list):
        from serving_sync.transports.local import LocalTransport

        self._t, self._barrier, self._calls = LocalTransport(base), barrier, calls

    def __getattr__(self, name):
        return getattr(self._t, name)

    def create_exclusive(self, rel, data):
        if rel == LOCK_PATH:
            self._calls.append("create")
            self._barrier.wait(timeout=10)
        return self._t.create_exclusive(rel, data)

    def remove_if_same(self, rel, expected):
        if rel == LOCK_PATH:
            self._calls.append("remove")
            self._barrier.wait(timeout=10)
        return self._t.remove_if_same(rel, expected)


def _fleet(tmp_path, n, barrier=None, calls=None):
    from serving_sync.connections import HostConn
    from serving_sync.transports.local import LocalTransport

    conns = []
    for i in range(n):
        base = tmp_path / f"h{i}"
        base.mkdir()
        t = _MeetingTransport(base, barrier, calls) if barrier is not None else LocalTransport(base)
        conns.append(HostConn(_Host(f"h{i}"), t, client=None))
    return conns


def test_a_fleets_locks_are_taken_and_released_on_every_host_at_once(tmp_path):
    """Taken one host after the other, the barrier of the first host would never fill (10 s)."""
    import threading

    from serving_sync.connections import locked

    calls: list = []
    conns = _fleet(tmp_path, 4, threading.Barrier(4), calls)
    with locked(conns):
        assert all(c.lock is not None and (tmp_path / c.host.name / LOCK_PATH).exists() for c in conns)
    assert calls == ["create"] * 4 + ["remove"] * 4
    assert not any((tmp_path / c.host.name / LOCK_PATH).exists() for c in conns)


def test_a_held_lock_in_the_fleet_gives_back_the_others_and_names_its_owner_or_is_waited_for(tmp_path):
    import threading

    from serving_sync.connections import locked
    from serving_sync.transports.local import LocalTransport

    conns = _fleet(tmp_path, 3)
    other = HostLock(LocalTransport(tmp_path / "h1"), heartbeat_every=0)
    other.acquire()
    with pytest.raises(LockHeld, match="another deploy holds the lock"):
        with locked(conns):
            pass
    assert [(tmp_path / f"h{i}" / LOCK_PATH).exists() for i in range(3)] == [False, True, False]
    assert json.loads((tmp_path / "h1" / LOCK_PATH).read_bytes())["token"] == other.info.token
    timer = threading.Timer(1.0, other.release)        # --lock-wait: taken in order once it is free
    timer.start()
    try:
        with locked(conns, wait=30):
            tokens = [json.loads((tmp_path / f"h{i}" / LOCK_PATH).read_bytes())["token"] for i in range(3)]
            assert tokens == [c.lock.info.token for c in conns]
    finally:
        timer.cancel()
    assert not any((tmp_path / f"h{i}" / LOCK_PATH).exists() for i in range(3))


class _NamedHost:
    def __init__(self, name: str, base):
        from serving_sync.hosts import Target

        self.name, self.target = name, Target("file", str(base))


def test_two_hosts_files_naming_the_same_bases_otherwise_wait_for_the_locks_in_one_order(tmp_path):
    """Two deploys over one fleet whose hosts files name its hosts differently (CI's file and an
    operator's) waited for the locks in their own name orders: while a third deploy held host X,
    the second took Y and waited for X; when X came free the first could take it and wait for Y —
    each holding half the fleet until --lock-wait ran out. The order is where the locks are."""

    from serving_sync.connections import HostConn
    from serving_sync.transports.local import LocalTransport

    x, y = tmp_path / "base-x", tmp_path / "base-y"
    x.mkdir()
    y.mkdir()
    first = [HostConn(_NamedHost("a", x), LocalTransport(x), client=None),
             HostConn(_NamedHost("b", y), LocalTransport(y), client=None)]
    second = [HostConn(_NamedHost("a", y), LocalTransport(y), client=None),      # the same bases,
              HostConn(_NamedHost("b", x), LocalTransport(x), client=None)]      # named the other way
    from tests.test_sync_support import two_deploys_waiting_for_x

    def holding(conns):
        ok = sorted(json.loads((b / LOCK_PATH).read_bytes())["token"] for b in (x, y)) \
            == sorted(c.lock.info.token for c in conns)
        time.sleep(0.3)         # holding both: the other deploy waits meanwhile
        return ok

    outcomes = two_deploys_waiting_for_x(x, y, first, second, holding)
    assert outcomes == {"first": True, "second": True}
    assert not (x / LOCK_PATH).exists() and not (y / LOCK_PATH).exists()


def test_a_guard_holder_stalled_before_writing_its_guard_deletes_nothing(tmp_path):
    """Found in review: a compare-and-delete stalled between creating its guard and writing it had
    the guard broken as a dead one's (unreadable a second apart), and both callers went on as its
    holder: one deleted the lock and took its own, the other then deleted that successor's lock."""
    import threading

    from serving_sync.transports import guarded_delete
    from serving_sync.transports.local import LocalTransport

    a_created, b_read, a_done = threading.Event(), threading.Event(), threading.Event()

    class StallsAtGuard(LocalTransport):
        def create_exclusive(self, rel, data):
            if rel != guarded_delete.guard_path(LOCK_PATH):
                return super().create_exclusive(rel, data)
            fd = os.open(self._p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            a_created.set()
            try:
                b_read.wait(timeout=30)       # stalled: the other caller broke the empty guard
                os.write(fd, data)
            finally:
                os.close(fd)
            return True

    class ReadsThenWaits(LocalTransport):
        def read_file(self, rel, *a, **kw):
            data = super().read_file(rel, *a, **kw)
            if rel == LOCK_PATH:
                b_read.set()
                a_done.wait(timeout=30)       # its answer arrives after the stalled caller is done
            return data

    base = tmp_path / "base"
    a, b = StallsAtGuard(base), ReadsThenWaits(base)
    a.write_file_atomic(LOCK_PATH, b"stale")
    results: dict = {}

    def caller_a():
        try:
            results["a"] = guarded_delete.remove_if_same(a, LOCK_PATH, b"stale", wait=0.1)
            if results["a"]:
                a.create_exclusive(LOCK_PATH, b"a's lock")
        finally:
            a_done.set()

    thread = threading.Thread(target=caller_a)
    thread.start()
    try:
        assert a_created.wait(timeout=30)
        results["b"] = guarded_delete.remove_if_same(b, LOCK_PATH, b"stale", wait=0.1)
    finally:
        b_read.set()
        thread.join(timeout=30)
    # one holder of the guard at a time
    assert set(results) == {"a", "b"} and not (results["a"] and results["b"]), results
    a.close()
    b.close()
