"""The per-host deploy lock on file, ssh and s3 hosts; retention decisions and their application."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mlops_common.errors import ConfigError
from serving_sync import manifest as mf
from serving_sync import retention
from serving_sync.errors import LockHeld
from serving_sync.layout import LOCK_PATH, incoming_name, incoming_time, manifest_path
from serving_sync.lock import HostLock, LockInfo
from serving_sync.publish import published_versions, publish
from tests.test_sync_support import hut, make_model_tree  # noqa: F401 - fixture


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_deploy_is_refused_while_the_first_holds_the_lock(hut):
    first = HostLock(hut.transport)
    info = first.acquire()
    stored = json.loads(hut.raw_read(LOCK_PATH))
    assert stored["token"] == info.token and stored["pid"] == os.getpid()
    assert stored["hostname"] == socket.gethostname()
    with pytest.raises(LockHeld) as e:
        HostLock(hut.transport).acquire()
    msg = str(e.value)
    assert "\n" not in msg and info.owner in msg and "--break-lock" in msg and "wait for it" in msg
    first.release()
    assert LOCK_PATH.split("/")[-1] not in hut.raw_names(".serving_sync")
    with HostLock(hut.transport):          # free again
        assert "lock" in hut.raw_names(".serving_sync")
    assert "lock" not in hut.raw_names(".serving_sync")


def test_stale_lock_of_a_dead_process_is_reported_and_broken_only_on_request(hut):
    stale = LockInfo("ci", socket.gethostname(), dead_pid(), "deadbeef", time.time() - 60, time.time() - 60)
    hut.raw_write(LOCK_PATH, stale.to_json())
    with pytest.raises(LockHeld) as e:
        HostLock(hut.transport).acquire()
    msg = str(e.value)
    assert "looks stale" in msg and f"process {stale.pid} no longer runs" in msg and "--break-lock" in msg
    assert json.loads(hut.raw_read(LOCK_PATH))["token"] == "deadbeef"     # untouched
    lock = HostLock(hut.transport, break_lock=True)
    info = lock.acquire()
    assert json.loads(hut.raw_read(LOCK_PATH))["token"] == info.token
    lock.release()


def test_lock_without_heartbeat_for_longer_than_the_ttl_is_stale(hut):
    old = LockInfo("ci", "another-machine", 4242, "cafe", time.time() - 7200, time.time() - 7200)
    hut.raw_write(LOCK_PATH, old.to_json())
    with pytest.raises(LockHeld, match=r"looks stale \(no heartbeat for 120 min"):
        HostLock(hut.transport, ttl=1800).acquire()


def test_refresh_updates_the_heartbeat_and_detects_a_stolen_lock(hut):
    clock = [1000.0]
    lock = HostLock(hut.transport, clock=lambda: clock[0])
    lock.acquire()
    clock[0] = 1500.0
    lock.refresh()
    assert json.loads(hut.raw_read(LOCK_PATH))["heartbeat"] == 1500.0
    thief = HostLock(hut.transport, break_lock=True)
    thief.acquire()
    with pytest.raises(LockHeld, match="lost its lock"):
        lock.refresh()
    lock.release()                          # must not remove the thief's lock
    assert json.loads(hut.raw_read(LOCK_PATH))["token"] == thief.info.token
    thief.release()


def test_corrupt_lock_file_is_reported(hut):
    hut.raw_write(LOCK_PATH, b"{not json")
    with pytest.raises(LockHeld, match="cannot be read"):
        HostLock(hut.transport).acquire()
    with HostLock(hut.transport, break_lock=True) as lock:
        assert lock.info is not None


def test_exclusive_create_has_exactly_one_winner_among_concurrent_processes(hut, tmp_path):
    """Several processes race for the lock on the same host: exactly one gets it."""
    h = hut.host
    script = f"""
import time
from pathlib import PosixPath
from serving_sync.errors import LockHeld
from serving_sync.hosts import Host, Target
from serving_sync.lock import HostLock
from serving_sync.transports import open_transport
tr = open_transport(Host("h", {h.target!r}, "http://127.0.0.1:1", known_hosts={h.known_hosts!r},
                         identity_file={h.identity_file!r}))
while time.time() < {time.time() + 3.0}:   # start together
    time.sleep(0.005)
try:
    HostLock(tr).acquire()
    print("WON")
except LockHeld:
    print("LOST")
"""
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    results = sorted(o[0].strip() for o in outs)
    assert results == ["LOST", "LOST", "LOST", "WON"], outs


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


def test_retention_plan_and_apply_on_a_host(hut, tmp_path):
    model = make_model_tree(tmp_path / "m", variables_bytes=1000)
    m = mf.build(model)
    for v in (1, 2, 3, 4, 5):
        publish(hut.transport, "digits", v, model, m)
    old_upload = incoming_name(6, time.time() - 7200)
    hut.raw_write(f"digits/{old_upload}/saved_model.pb", b"partial")
    p = retention.plan(hut.transport, "digits", serving=5, previous=1, keep=2)
    assert p.remove_versions == [2, 3] and p.remove_uploads == [old_upload]
    retention.apply(hut.transport, p)
    assert published_versions(hut.transport, "digits") == [1, 4, 5]
    assert hut.raw_names("digits") == ["1", "4", "5"]
    assert "2.json" not in hut.raw_names(".serving_sync/manifests/digits")
    assert hut.raw_read(manifest_path("digits", 4))
