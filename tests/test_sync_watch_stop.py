"""``mlops sync watch`` asked to stop (SIGTERM from systemd, Ctrl-C) while a pass has not begun
its deploy: it stops, it does not wait for another deploy's lock and then start a rollout (found by
review: the first signal only ended the loop after the pass, so a watch waiting up to
``--lock-wait`` for a lock went on waiting and then deployed, long after systemd's stop timeout
had SIGKILLed it mid-rollout, and a pass whose plan was done started its deploy after the signal).

Real MLflow server, ledger, local TF-Serving-compatible server and a real deploy holding the lock;
the loop's rule on stand-ins. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

from serving_sync import fleet, fleet_plan
from serving_sync.watch import FleetReconciler
from tests.helpers import REPO, signal_at_every_line


def _watch_signalled(args: list[str], env: dict, ready, *, wait: float, exit_within: float,
                     late: str) -> tuple[int, str, str, float]:
    """Run `mlops sync watch ARGS`, send it one SIGTERM once ``ready(stderr lines)`` (bounded by
    ``wait`` s), and give it ``exit_within`` s to exit (``late``: the failure's words otherwise).
    Returns its exit code, stdout, stderr and the seconds it took after the signal."""
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "watch", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # each pipe has one reader (``communicate`` read stderr beside this reader: lines went to either)
    lines: list[str] = []
    out: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and proc.poll() is None and not ready(lines):
            time.sleep(0.1)
        assert ready(lines), lines
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=exit_within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            raise AssertionError(late) from None
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for reader in readers:
            reader.join(timeout=10)
    return proc.returncode, "".join(out), "".join(lines), took


def test_a_pass_asked_to_stop_before_its_deploy_does_not_start_one(monkeypatch):
    stopping = {"now": False}
    calls = []

    def plan(model, hosts, **kw):
        stopping["now"] = True             # the signal arrives while the pass observes the hosts
        return SimpleNamespace(errors={}, up_to_date=False, version=5)

    monkeypatch.setattr(fleet_plan, "plan_fleet", plan)
    monkeypatch.setattr(fleet, "deploy", lambda *a, **kw: calls.append(kw))
    r = FleetReconciler("digits", [], None, recorded=lambda v: False, status_known=lambda v: True,
                        stopping=lambda: stopping["now"])
    status, version, message = r()
    assert (status, version) == ("stopped", 5) and "not deployed" in message, message
    assert calls == []


def test_sigterm_while_a_watch_waits_for_another_deploys_lock_stops_it_at_once(deploy_env, paused_deploy):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    other = paused_deploy(env.env, "after:load_validation", "--timeout", "60").wait_paused()   # holds the lock
    v3 = env.register("c")
    env.promote(v3)
    code, out, err, took = _watch_signalled(
        ["--interval", "3600", "--lock-wait", "120", "--max-seconds", "300", "--json", "--timeout", "60"],
        {**os.environ, **env.env}, lambda lines: any("--lock-wait" in x for x in lines),   # waits for the lock
        wait=120, exit_within=20, late="the watch went on waiting for the lock after SIGTERM")
    assert took < 20
    assert code == 0, err
    passes = json.loads(out)["passes"]
    assert [(p["status"], p["version"]) for p in passes] == [("stopped", v3)], passes
    assert "Traceback" not in err
    done = other.finish()                   # the paused deploy is put back: production moved meanwhile
    assert done.returncode != 0
    env.serves(host, v1)                    # the stopped watch changed nothing


def test_the_first_signal_wakes_the_loop_whichever_line_of_its_wait_it_lands_on():
    """Python runs a signal handler in the main thread between two of its lines. ``sync watch``'s
    first signal sets the loop's wake; with a ``threading.Event`` a handler landing while the loop
    held the Event's lock (going into or out of ``wait``, in ``clear``) waited for that lock
    forever: a SIGTERM from systemd hung the watch until its SIGKILL. Here the "handler" runs at
    every line the loop's clear and wait execute (once each), as a signal may."""
    from serving_sync.watch import Watcher

    w = Watcher(lambda: ("up_to_date", 1, ""), interval=3600)

    def first_signal():             # what the first signal's handler does
        w.stop_event.set()
        w.wake.set()

    woke = []

    def loop_wait():
        w.wake.clear()
        woke.append(w.wake.wait(3600))

    fired = signal_at_every_line(loop_wait, first_signal, timeout=10)
    assert woke == [True] and fired


def test_sigterm_while_a_watchs_deploy_waits_for_the_stores_lock_stops_it_at_once(deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-07, nineteenth stop): the first signal ended the wait for a host's
    lock, but not the wait for the hosts' S3 store's lock before the upload (up to ``MLOPS_LOCK_TTL``,
    10 minutes by default), held by another fleet's deploy: the watch waited it out, then uploaded
    and rolled out while systemd's stop timeout ran. Now that wait ends too: nothing changed,
    ``stopped``, exit 0. (Here the TTL is 60 s: the code before stopped after it.)"""
    from serving_sync.layout import LOCK_PATH
    from serving_sync.lock import LockInfo
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_store import _with_store

    env = deploy_env
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("watch-store-lock")
    _with_store(env, bucket, env.model)
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    t = S3Transport(bucket, env.model)
    now = time.time()           # another fleet's deploy on another machine, alive (its TTL 10 min)
    other = LockInfo("ci", "other-machine", os.getpid(), "0123456789abcdef", now, now, "deploy", 600.0, "")
    assert t.create_exclusive(LOCK_PATH, other.to_json())
    code, out, err, took = _watch_signalled(
        ["--interval", "3600", "--max-seconds", "300", "--json", "--timeout", "60"],
        {**os.environ, **env.env, "MLOPS_LOCK_TTL": "60"},
        lambda lines: any("token 0123456789abcdef" in x and "waiting up to 60s" in x for x in lines),
        wait=120, exit_within=30, late="the watch went on waiting for the store's lock after SIGTERM")
    assert took < 20, "the watch waited for the store's lock after SIGTERM"
    assert code == 0, err
    passes = json.loads(out)["passes"]
    assert [(p["status"], p["version"]) for p in passes] == [("stopped", v2)], passes
    assert "Traceback" not in err
    assert LockInfo.from_json(t.read_file(LOCK_PATH)).token == other.token     # the other's lock left alone
    assert not t.exists(f"{env.model}/{v2}/saved_model.pb")                     # nothing uploaded
    env.serves(host, v1)                    # the stopped watch changed nothing


def test_stop_within_puts_the_hosts_back_when_the_deploy_outlasts_it_after_the_first_signal(deploy_env):
    """Found by review (2026-12-07, nineteenth stop): systemd sends one SIGTERM, then SIGKILL after
    ``TimeoutStopSec``. The watch's first signal lets the deploy under way finish, however long:
    a bake (``MLOPS_BAKE_SECONDS``, each wave's with ``--bake-each-wave``) or a large fleet's
    prepare longer than the stop timeout was SIGKILLed mid-rollout, a canary switched and unjudged,
    the fleet mixed until the unit started again. ``--stop-within S`` (deploy/mlops-watch.service
    sets it below its stop timeout) does what a second signal does S seconds after the first: here
    SIGTERM lands in a 30 s bake, and 3 s later the canary is put back, exit 130, production left."""
    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    code, out, err, took = _watch_signalled(
        ["--interval", "3600", "--max-seconds", "300", "--json", "--timeout", "60", "--bake", "30",
         "--stop-within", "3"],
        {**os.environ, **env.env}, lambda lines: any("bake: judging" in x for x in lines),  # the canary's bake
        wait=180, exit_within=60, late="the watch went on with its bake past --stop-within")
    assert code == 130, err
    assert took < 25, f"{took:.0f}s after SIGTERM: the bake ran on"
    passes = json.loads(out)["passes"]
    assert [p["status"] for p in passes] == ["interrupted"], passes
    assert f"deploy of v{v2}" in passes[0]["message"] and "interrupted (--stop-within 3)" in passes[0]["message"], \
        passes
    assert "--stop-within 3: stopping the deploy at its next safe point" in err and "Traceback" not in err
    for host in hosts:
        env.serves(host, v1)                # put back, not left half switched
    assert env.production() == v2 and env.tags(v2).get("deploy_status") != "failed"
    r = env.cli("sync", "watch", "--once", "--stop-within", "3")      # --once: the first signal does it
    assert r.returncode == 2 and "error: --stop-within applies to a watch's first signal" in r.stderr, r.stderr


def test_sigterm_while_a_pass_waits_on_an_mlflow_that_does_not_answer_stops_the_watch_at_once(
        deploy_env, http_fault_proxy, mlflow_server):
    """Found by review (2026-12-07, twenty-second stop): the first signal let the pass under way
    finish, and a pass that only read waited for its request: an MLflow that stopped answering
    (hung, its host overloaded) held `systemctl stop` for MLFLOW_HTTP_REQUEST_TIMEOUT (60 s by
    default, 56 s measured; 120 s here, so the code before fails). A pass that has not begun its
    deploy now stops where it is: ``stopped``, exit 0, nothing changed. The real MLflow server is
    reached through a loopback proxy that, once the watch's first pass is done, holds every request
    unanswered (the watch's next request is seen arriving there: no sleep)."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    frozen, held, release = threading.Event(), threading.Event(), threading.Event()

    def hold(method: str, path: str) -> bool:     # MLflow does not answer while frozen
        if frozen.is_set():
            held.set()
            release.wait(150)
        return False

    proxy = http_fault_proxy(mlflow_server, match=hold)

    def ready(lines: list[str]) -> bool:
        if any("reconcile (start): up_to_date" in x for x in lines):    # the first pass read through
            frozen.set()
        return held.is_set()                                             # the next one waits on MLflow

    try:
        code, out, err, took = _watch_signalled(
            ["--interval", "0.5", "--max-seconds", "600", "--json", "--timeout", "60"],
            {**os.environ, **env.env, "MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"},
            ready, wait=120, exit_within=40, late="the watch waited for MLflow's answer after SIGTERM")
    finally:
        release.set()
    assert took < 20, f"{took:.0f}s after SIGTERM"
    assert code == 0, err
    passes = json.loads(out)["passes"]
    assert [p["status"] for p in passes] == ["up_to_date", "stopped"], passes
    assert "before any deploy began" in passes[-1]["message"] and "nothing was changed" in passes[-1]["message"]
    assert "Traceback" not in err and "failed" not in err, err
    env.serves(host, v1)
    assert env.production() == v1


def test_sigterm_while_a_watch_once_waits_on_an_mlflow_that_does_not_answer_stops_it_at_once(
        deploy_env, http_fault_proxy, mlflow_server):
    """Found by review (twenty-first stop, fixed at the twenty-fourth): under `--once` the first
    signal only asked the deploy to stop, so a pass waiting on an MLflow that does not answer held
    it for the request's timeout (120 s here, so the code before fails). The pass now stops where
    it is while it only reads, exit 130 (its one pass did not finish), nothing changed."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    held, release = threading.Event(), threading.Event()

    def hold(method: str, path: str) -> bool:     # MLflow answers nothing the watch asks
        held.set()
        release.wait(150)
        return False

    proxy = http_fault_proxy(mlflow_server, match=hold)
    try:
        code, out, err, took = _watch_signalled(
            ["--once", "--json", "--timeout", "60"],
            {**os.environ, **env.env, "MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"},
            lambda lines: held.is_set(), wait=120, exit_within=40,
            late="watch --once waited for MLflow's answer after SIGTERM")
    finally:
        release.set()
    assert took < 20, f"{took:.0f}s after SIGTERM"
    assert code == 130, err
    (only,) = json.loads(out)["passes"]
    assert only["status"] == "stopped" and "nothing was changed" in only["message"], only
    assert "Traceback" not in err, err
    env.serves(host, v1)
    assert env.production() == v1


def test_the_first_signals_line_promises_a_put_back_only_when_a_deploy_is_under_way(tmp_path):
    """Found by review (2026-12-07, twenty-second stop): with ``--stop-within`` (as the systemd unit
    runs it) the first signal's line always said "one still under way in 1500s is stopped and its
    hosts put back", also for a watch waiting between passes or one whose pass only read: the
    on-call read that a deploy was running and waited for a put-back that never came. The line now
    says what the watch does: here, a watch waiting for its next pass (its MLflow address has
    nothing listening: the first pass failed at once) stops, and says no pass is under way."""
    from mlops.ports import free_port

    port = free_port()
    (tmp_path / "models").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "MLOPS_HOSTS_FILE",
                                                             "MLOPS_WEBHOOK_SECRET")}
    env.update(MLOPS_HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
               MLOPS_SYNC_TARGET=f"file://{tmp_path / 'models'}", MLOPS_SYNC_REST_URL=f"http://127.0.0.1:{port}",
               MLOPS_MODEL_NAME="digits")
    code, out, err, took = _watch_signalled(
        ["--interval", "3600", "--max-seconds", "600", "--json", "--stop-within", "30"], env,
        lambda lines: any("reconcile (start) failed" in x for x in lines),
        wait=120, exit_within=60, late="the watch waiting for its next pass did not stop")
    assert code == 0, err
    line = next(x for x in err.splitlines() if x.startswith("SIGTERM: "))
    assert line == "SIGTERM: stopping: no pass is under way", line
    assert "put back" not in err, err
    # a pass that only reads stops now; only a deploy under way is told of --stop-within's put-back
    from mlops.commands.sync import _watch_stopping

    assert "put back" not in _watch_stopping("reading", 30) and "nothing is changed" in \
        _watch_stopping("reading", 30)
    assert "in 30s is stopped and its hosts put back" in _watch_stopping("deploying", 30)
