"""``mlops sync watch`` when ``production`` moves while a pass runs (each test fails on the code
before):

- a pass that began only to record hosts already serving vN (a deploy killed after its switch)
  called ``fleet.deploy`` for whatever production named under the locks: production moved to vM
  meanwhile made it a rollout of vM, and that rollout's error (a held lock, an unreachable host)
  was reported as ``up_to_date … (not recorded: …)`` for vN. It now expects vN (as ``sync deploy
  --expect-version``): a moved production changes nothing, the pass says so, and the next pass —
  at once — deploys vM;
- a deploy whose last wave switched and then found production moved to a newer version (the
  hosts stay on vN, recorded deployed; ``ProductionMoved``) was an ``error`` pass — an outage
  line — and vM waited for the next interval. It is now a ``deployed`` pass for vN, one info
  line, and the next pass runs at once; at most one such pass in a row, so a production that
  keeps moving does not make the watch spin.

Real MLflow server, ledger and local TF-Serving-compatible servers on ``file://`` hosts; the loop's
bound on a stand-in. Every wait is bounded.
"""
from __future__ import annotations

import logging
import time

from serving_sync import fleet_plan, host_run
from serving_sync.hosts import load_hosts
from serving_sync.plan import StepKind
from serving_sync.watch import FleetReconciler, Watcher
from tests.lab.deploy_env import deploy_opts


def _stop_after(watcher: Watcher, reconcile, n: int):
    """``reconcile``, and the watch asked to stop once ``n`` passes ran."""
    calls = []

    def wrapped():
        try:
            return reconcile()
        finally:
            calls.append(1)
            if len(calls) >= n:
                watcher.stop_event.set()
    return wrapped


def _logged(caplog):
    return [r for r in {id(r): r for r in caplog.records}.values() if r.name.startswith("mlops.sync.watch")]


def _two_passes_promoting_at_the_first_check(env, v3, monkeypatch, caplog):
    """The watch's first two passes, v3 promoted (as CI would) right after the first deploy's
    first VERIFY step (the canary's check, or a one-host fleet's last wave's). Returns the result,
    the host whose check it was (None: no check ran) and the seconds both passes took."""
    verify = host_run._RUNNERS[StepKind.VERIFY]
    checked = []

    def then_v3_is_promoted(run, step):
        verify(run, step)
        if not checked:
            env.promote(v3)
            checked.append(run.host.name)

    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, then_v3_is_promoted)
    r = FleetReconciler(env.model, load_hosts(), deploy_opts())
    w = Watcher(r, interval=120, max_seconds=100)
    w.reconcile = _stop_after(w, r, 2)
    mlops_logger = logging.getLogger("mlops")        # log.setup() stops it propagating to caplog's root
    mlops_logger.addHandler(caplog.handler)
    t0 = time.monotonic()
    try:
        with caplog.at_level("INFO", logger="mlops"):
            res = w.run()
    finally:
        mlops_logger.removeHandler(caplog.handler)
    return res, (checked or [None])[0], time.monotonic() - t0


def test_a_recording_pass_whose_production_moved_records_nothing_and_the_next_pass_deploys_at_once(
        deploy_env, paused_deploy, monkeypatch):
    env = deploy_env
    host = env.add_host("file")
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    paused_deploy(env.env, "after:switch", "--timeout", "60").wait_paused().kill()
    env.serves(host, v2)
    assert env.tags(v2).get("deploy_status") in (None, "none")      # left to record
    v3 = env.register("c")
    plan = fleet_plan.plan_fleet

    def then_promoted(*a, **kw):          # a person promotes v3 after the pass planned (v2, up to date)
        out = plan(*a, **kw)
        if env.production() == v2:
            env.promote(v3)
        return out

    monkeypatch.setattr(fleet_plan, "plan_fleet", then_promoted)
    r = FleetReconciler(env.model, load_hosts(), deploy_opts())
    w = Watcher(r, interval=120, max_seconds=100)
    w.reconcile = _stop_after(w, r, 2)
    t0 = time.monotonic()
    res = w.run()
    passes = [(p.trigger, p.status, p.version) for p in res.passes]
    assert passes[0] == ("start", "moved", v2), [p.to_dict() for p in res.passes]
    first = res.passes[0].message
    assert f"production moved from v{v2} to v{v3}" in first and "nothing was changed" in first, first
    assert passes[1:] == [("moved", "deployed", v3)], [p.to_dict() for p in res.passes]
    assert time.monotonic() - t0 < 60                                  # not after --interval
    env.serves(host, v3)
    assert env.tags(v3).get("deploy_status") == "deployed"
    assert env.tags(v2).get("deploy_status") in (None, "none")         # the recording pass wrote nothing
    assert not [e for e in env.ledger(("deploy",)) if e.to_version == v3 and e.outcome != "ok"]


def test_a_rollout_overtaken_by_a_newer_promotion_is_a_deployed_pass_and_the_next_pass_installs_it_at_once(
        deploy_env, monkeypatch, caplog):
    env = deploy_env
    host = env.add_host("file")
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    v3 = env.register("c")
    res, checked, took = _two_passes_promoting_at_the_first_check(env, v3, monkeypatch, caplog)
    assert checked == host.name
    passes = [(p.trigger, p.status, p.version) for p in res.passes]
    assert passes == [("start", "deployed", v2), ("moved", "deployed", v3)], [p.to_dict() for p in res.passes]
    first = res.passes[0].message
    assert f"production moved from v{v2} to v{v3}" in first and f"the hosts stay on v{v2}" in first, first
    assert took < 60                                                   # not after --interval
    logged = _logged(caplog)
    assert not [x for x in logged if x.levelno >= logging.ERROR], [x.getMessage() for x in logged]
    assert len([x for x in logged if f"moved from v{v2} to v{v3}" in x.getMessage()]) == 1, \
        [x.getMessage() for x in logged]
    assert env.tags(v2).get("deploy_status") == "deployed"
    env.serves(host, v3)
    assert env.tags(v3).get("deploy_status") == "deployed"


def test_a_production_that_keeps_moving_does_not_make_the_watch_spin():
    """Each pass says production moved: the next one runs at once, but not two such in a row —
    then the interval (or a webhook) as usual."""
    calls = []

    def reconcile():
        calls.append(time.monotonic())
        return "deployed", len(calls), f"deployed v{len(calls)}; production moved", True

    res = Watcher(reconcile, interval=0.5, max_seconds=2.2).run()
    triggers = [p.trigger for p in res.passes]
    assert triggers[:3] == ["start", "moved", "interval"], triggers
    assert all(not (a == b == "moved") for a, b in zip(triggers, triggers[1:])), triggers
    assert 6 <= len(calls) <= 12, triggers          # ~2 passes per interval, not thousands


def test_a_rollout_put_back_because_production_moved_before_its_next_wave_is_followed_by_a_pass_at_once(
        deploy_env, monkeypatch, caplog):
    """v2's canary switched, then a person promoted v3: the deploy puts the canary back before its
    next wave (a rollout must not go on with a version production no longer names). That pass was
    a ``failed`` pass, and v3 waited for the next interval (a minute in deploy/mlops-watch.service,
    without a webhook): its failure did not say production moved. It is now a ``moved`` pass, not
    an error, and the next pass installs v3 at once."""
    env = deploy_env
    hosts = env.add_hosts(2)
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    v3 = env.register("c")
    res, checked, took = _two_passes_promoting_at_the_first_check(env, v3, monkeypatch, caplog)
    assert checked is not None, "the canary never switched"
    passes = [(p.trigger, p.status, p.version) for p in res.passes]
    assert passes == [("start", "moved", v2), ("moved", "deployed", v3)], [p.to_dict() for p in res.passes]
    first = res.passes[0].message
    assert "put back" in first and "the next pass runs at once" in first, first
    assert took < 90                                                   # not after --interval
    logged = _logged(caplog)
    assert not [x for x in logged if x.levelno >= logging.ERROR], [x.getMessage() for x in logged]
    for host in hosts:
        env.serves(host, v3)
    assert env.tags(v3).get("deploy_status") == "deployed"
    assert env.tags(v2).get("deploy_status") != "failed"
