"""Fleet rollout against real services (MLflow server, ledger, local TF-Serving-compatible servers):
prepare in parallel, canary first, then waves; a failure in either phase puts every host back; a
host never holds a second copy of the new version unless ``--fast`` asks for it.

Fleets are 2-3 hosts; every wait is bounded.
"""
from __future__ import annotations

import json
import shutil
import threading
import time

from serving_sync import models_config as mc
from serving_sync.bake import Limits
from tests.lab.deploy_env import deploy_opts


def _first_deploy(env, hosts, kind="a") -> int:
    v1 = env.release(kind, opts=deploy_opts(canary=0))
    for h in hosts:
        env.serves(h, v1)
    return v1


def test_prepare_everywhere_then_canary_then_waves(deploy_env):
    env = deploy_env
    hosts = env.add_hosts(3, "file")
    v1 = _first_deploy(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    traffic = [env.traffic(h) for h in hosts]
    r = env.deploy(opts=deploy_opts(wave="1"))
    for t in traffic:
        t.stop()
    assert r.status == "deployed", r.message
    names = [h.name for h in hosts]
    assert r.rollout == {"canary": names[:1], "waves": [[n] for n in names], "unjudged": []}
    assert [w["hosts"] for w in r.waves] == [[n] for n in names]
    assert [w["wave"] for w in r.waves] == ["canary", "wave 1", "wave 2"]
    assert {"prepare_hosts", "switch_hosts"} <= set(r.timings)
    for h in hosts:
        env.serves(h, v2)
        assert env.which(h, version=v1) == v1                     # previous kept warm
    for o in r.hosts:
        phases = [s["phase"] for s in o.steps]
        assert phases == sorted(phases, key=["prepare", "switch"].index)    # prepare, then switch
    for t in traffic:
        assert t.failures == [] and t.count > 10
    rows = env.ledger(actions=("deploy",))
    assert sorted(e.host for e in rows if e.to_version == v2 and e.outcome == "ok") == sorted(names)
    assert env.tags(v2)["deploy_status"] == "deployed"


def test_prepare_failure_on_one_host_leaves_every_host_as_it_was(deploy_env):
    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1 = _first_deploy(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    # a damaged leftover of v2 on the second host: its publish refuses it (prepare fails there)
    junk = hosts[1].base / env.model / str(v2)
    junk.mkdir(parents=True)
    (junk / "saved_model.pb").write_bytes(b"not a SavedModel")
    before = [env.config_text(h) for h in hosts]
    traffic = [env.traffic(h) for h in hosts]
    res = env.cli("sync", "deploy", "--json", "--timeout", "30")
    for t in traffic:
        t.stop()
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "failed" and doc["waves"] == []          # no wave switched
    failed = {h["host"]: h for h in doc["hosts"]}
    assert failed[hosts[1].name]["failed_step"] == "publish"
    assert [env.config_text(h) for h in hosts] == before           # both hosts exactly as they were
    for h in hosts:
        env.serves(h, v1)
        assert "AVAILABLE" not in env.states(h, mc.validation_name(env.model)).values()
    for t in traffic:                      # nothing that serves changed: every answer is v1's
        assert t.failures == [] and set(t.answers["stable"]) == {v1} and set(t.answers["unversioned"]) == {v1}


def test_failure_in_a_later_wave_puts_every_switched_host_back(deploy_env, paused_deploy):
    env = deploy_env
    hosts = env.add_hosts(3, "file")
    v1 = _first_deploy(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    # hold the deploy once the canary has switched and verified; then take v2's files away from the
    # last host (prepared, validation copy unloaded): its main-entry load in wave 2 fails
    deploy = paused_deploy(env.env, "after:verify", "--wave", "1", "--timeout", "8", "--json").wait_paused()
    assert env.label(hosts[0]) == v2 and env.label(hosts[1]) == v1 and env.label(hosts[2]) == v1
    shutil.rmtree(hosts[2].base / env.model / str(v2))
    res = deploy.finish(timeout=240)
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert [w["hosts"] for w in doc["waves"]] == [[hosts[0].name], [hosts[1].name]]   # the two that switched
    by = {h["host"]: h for h in doc["hosts"]}
    assert by[hosts[2].name]["failed_step"] in ("wait_main", "load_main")
    assert all(by[h.name]["status"] == "restored" for h in hosts)
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1 and env.tags(v2)["deploy_status"] == "failed"
    back = {e.host for e in env.ledger(actions=("host_rollback",)) if e.from_version == v2}
    assert back == {h.name for h in hosts}


def _watch_copies(env, host, stop: threading.Event, seen: list, max_seconds: float = 120.0) -> None:
    """Record (validation AVAILABLE/LOADING versions, main AVAILABLE/LOADING versions) until stopped."""
    vname = mc.validation_name(env.model)
    deadline = time.monotonic() + max_seconds
    live = ("LOADING", "AVAILABLE", "UNLOADING")
    while not stop.is_set() and time.monotonic() < deadline:
        val = {v for v, s in env.states(host, vname).items() if s in live}
        main = {v for v, s in env.states(host).items() if s in live}
        seen.append((val, main))
        time.sleep(0.01)


def _peak_copies_during_deploy(env, host, v2, monkeypatch=None, **opts) -> int:
    """With ``monkeypatch``, the deploy stays after its main-entry load has finished, where a host
    holds the most, until the probe has read the host twice more, so it cannot miss it (a wrapped
    step runner: nothing else changes). A fixed 0.3 s hold was shorter than one probe on a loaded
    machine (two REST calls)."""
    held = []
    stop, seen = threading.Event(), []
    if monkeypatch is not None:
        from serving_sync import host_run
        from serving_sync.plan import StepKind

        def wait_and_hold(run, step):
            host_run.HostRun._wait(run, step)           # what _RUNNERS runs for WAIT_MAIN
            held.append(step.version)
            n, deadline = len(seen), time.monotonic() + 60
            while len(seen) < n + 2 and time.monotonic() < deadline:    # the second began after this
                time.sleep(0.01)

        monkeypatch.setitem(host_run._RUNNERS, StepKind.WAIT_MAIN, wait_and_hold)
    t = threading.Thread(target=_watch_copies, args=(env, host, stop, seen), daemon=True)
    t.start()
    try:
        r = env.deploy(opts=deploy_opts(**opts))
    finally:
        stop.set()
        t.join(timeout=10)
    assert r.status == "deployed", r.message
    assert len(seen) > 20
    assert monkeypatch is None or held == [v2], "the deploy never held after its main-entry load"
    return max(len(main) + len(val) for val, main in seen), max((v2 in val) + (v2 in main) for val, main in seen)


def test_memory_bound_one_copy_of_the_new_version_unless_fast(deploy_env, monkeypatch):
    env = deploy_env
    host = env.add_host("file")
    _first_deploy(env, [host])
    v2 = env.register("b")
    env.promote(v2)
    copies, of_new = _peak_copies_during_deploy(env, host, v2, monkeypatch)
    assert of_new == 1 and copies == 2          # v1 (serving) + one copy of v2, never more
    # --fast may hold both copies of the new version: the same probe sees it (so it can fail)
    v3 = env.register("c")
    env.promote(v3)
    slow_seen = _peak_copies_during_deploy(env, host, v3, monkeypatch, fast=True)
    assert slow_seen[1] == 2


def test_plan_states_phases_canary_waves_bake_and_peak_memory(deploy_env):
    env = deploy_env
    hosts = env.add_hosts(3, "file")
    _first_deploy(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    res = env.cli("sync", "plan", "--wave", "50%", "--bake", "2")
    # these servers have no metrics page: the deploy would refuse the bake, and the plan's exit says so
    assert res.returncode == 2, res.stderr
    out = res.stdout
    assert f"refuses this before any host changes: canary {hosts[0].name}: cannot read TF Serving's metrics" in out
    assert "phase 1, prepare: 3 hosts, 3 at a time" in out
    assert f"phase 2, switch: canary {hosts[0].name}; bake 2s" in out
    assert f"wave 1: {hosts[1].name}" in out and f"wave 2: {hosts[2].name}" in out
    assert out.count("peak model memory") == 3 and "1.2 x SavedModel size of v1 + v2" in out
    doc = json.loads(env.cli("sync", "plan", "--json").stdout)
    peak = doc["peak_memory"][hosts[0].name]
    assert peak["copies"] == [1, 2] and peak["bytes"] == round(1.2 * sum(peak["sizes"].values()))
    assert doc["rollout"]["canary"] == [hosts[0].name] and doc["bake"]["limits"] == vars(Limits())
