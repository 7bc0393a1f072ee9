"""``mlops sync watch`` runs for weeks: its passes must leak nothing.

A bounded soak of the watch's reconcile pass (``FleetReconciler``, what ``cmd_watch`` loops) over a
real MLflow server, one ``file://`` and one ``ssh://`` host (real sshd, local TF-Serving-compatible
servers with gRPC): passes with nothing to do and deploys in between. Measured on this process's
``/proc/self/fd`` and ``/proc/self/task``, plus what a leak of the usual suspects would leave: live
paramiko transports (each holds a socket and a thread) and files left in the temporary folder.
Counted after each pass, not timed: a pass or deploy that kept one connection or thread would
add one per pass (30+), far past the small bound of pools that fill once.

(Measured by review on the same world: 600 passes: FDs 30 -> 30, threads 9 -> 9, Python objects
244202 -> 244194, RSS 246.8 -> 247.0 MB; 16 deploys: FDs and threads flat, no temporary files.)
"""
from __future__ import annotations

import gc
import os
import tempfile

NOOP_PASSES = 30
DEPLOYS = 3
SLACK = 3          # pools that fill once (MLflow's HTTP keep-alive connections)
THREAD_SLACK = 5   # a worker or gRPC thread ending a moment after its pass (seen: +2)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _live_transports(before: frozenset = frozenset()) -> int:
    """Active paramiko transports in this process, but those in ``before`` (ids of transports an
    earlier test of this xdist worker left alive: not this test's). By the object's own type:
    ``isinstance`` also matches the ``weakref.proxy`` each transport's auth handler holds (one
    transport counted twice), and raises ReferenceError on any dead proxy in the process."""
    import paramiko

    gc.collect()
    return sum(1 for o in gc.get_objects()
               if issubclass(type(o), paramiko.Transport) and o.is_active() and id(o) not in before)


def _transport_ids() -> frozenset:
    import paramiko

    gc.collect()
    return frozenset(id(o) for o in gc.get_objects() if issubclass(type(o), paramiko.Transport))


def test_the_transport_count_counts_each_transport_once_and_passes_over_dead_proxies(sshd, tmp_path):
    """The soak's own measure: one open SSH connection is 1 (not 2 with its auth handler's
    proxy), 0 once closed, and a dead ``weakref.proxy`` elsewhere in the process does not crash it."""
    import weakref

    from tests.test_sync_ssh import connect

    class Gone:
        pass

    gone = Gone()
    dead = weakref.proxy(gone)
    del gone                            # a dead proxy, as any library may leave one for a while
    earlier = _transport_ids()
    t = connect(sshd, tmp_path / "b")
    try:
        assert _live_transports(earlier) == 1
    finally:
        t.close()
    assert _live_transports(earlier) == 0
    del dead


def test_watch_passes_and_deploys_leak_no_descriptors_threads_transports_or_temp_files(
        deploy_env, sshd_factory, tmp_path, monkeypatch):
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions
    from serving_sync.watch import FleetReconciler

    env = deploy_env
    env.add_host("file")
    env.add_host("ssh")
    env.write_hosts_file()
    env.release("a")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))     # what a pass leaves in the temp folder
    earlier = _transport_ids()
    reconcile = FleetReconciler(env.model, load_hosts(), DeployOptions(timeout=60.0, json_mode=True))
    v = env.register("b")
    env.promote(v)
    assert reconcile()[0] == "deployed"          # warm-up: a deploy and a few passes fill the pools once
    for _ in range(3):
        assert reconcile()[0] == "up_to_date"
    fds, threads = _fds(), _threads()
    assert _live_transports(earlier) == 0

    for i in range(NOOP_PASSES):
        status, version, message = reconcile()
        assert (status, version) == ("up_to_date", v), message
        if i % 10 == 9:        # a deploy now and then (file:// and ssh://), then passes with nothing to do
            v = env.register("ab"[i % 2])
            env.promote(v)
            status, _, message = reconcile()
            assert status == "deployed", message

    assert i + 1 == NOOP_PASSES and DEPLOYS == NOOP_PASSES // 10
    assert _live_transports(earlier) == 0, "an SSH transport left open after the passes"
    assert _fds() - fds <= SLACK, f"file descriptors {fds} -> {_fds()} over {NOOP_PASSES} passes and {DEPLOYS} deploys"
    assert _threads() - threads <= THREAD_SLACK, f"threads {threads} -> {_threads()} over {NOOP_PASSES} passes"
    assert os.listdir(scratch) == [], f"left in the temporary folder: {os.listdir(scratch)}"
