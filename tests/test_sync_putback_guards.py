"""Put-back and blame guards of one host's run, found in review (in process, no services):

- a host whose lock another deploy took over while it waited for its wave was still rewritten
  by the put-back (only a takeover seen by its own step was honoured);
- a heartbeat write that failed (a network blip) escaped as a bare exception: step ``?``, and the
  version was blamed;
- a smoke test that passed but whose ledger row could not be written failed the step and blamed
  the version;
- a canary breach whose ledger rows could not be written was reported as a ledger failure (the
  version kept production); a lone changing host with ``--canary 1 --bake S`` waited S seconds and
  judged nothing.
"""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from mlops_common.errors import UserError
from serving_sync import host_run
from serving_sync import models_config as mc
from serving_sync.errors import HostUnreachable, LedgerWriteFailed
from serving_sync.observe import Observed
from serving_sync.options import DeployOptions
from serving_sync.plan import HostObservation, Phase, plan_host

TEXT = 'model_config_list {\n config {\n name: "m"\n base_path: "/s/m"\n model_platform: "tensorflow"\n}\n}\n'


def _run(*, lock=None, published=(1,), states=None, **kw) -> host_run.HostRun:
    obs = HostObservation(host="h1", model="m", base_path="/s/m", main_policy="specific", main_base_path="/s/m",
                          main_versions=(1,), main_labels=(("stable", 1),),
                          main_states=states or {1: "AVAILABLE"}, stable=1, published=published, verified=(1,))
    observed = Observed(obs, mc.parse(TEXT, "x"), TEXT)
    conn = NS(host=NS(name="h1"), transport=object(), client=object(), lock=lock)
    return host_run.HostRun(conn, observed, plan_host(obs, 2), DeployOptions(), golden=lambda: None,
                            bundle=lambda: None, **kw)


def test_a_host_whose_lock_was_taken_over_while_it_waited_is_not_put_back(monkeypatch):
    run = _run(lock=NS(lost="this deploy lost its lock (now held by other@ci)"))
    run.touched = True                                  # prepared: the validation entry was written
    writes = []
    monkeypatch.setattr(host_run.HostRun, "_restore", lambda self: writes.append("models.config"))
    info = run.restore()
    assert writes == [] and info["ok"] is False and "lost its lock" in info["error"]
    assert run.outcome.status == "restore_failed" and run.lock_lost


def test_a_failed_heartbeat_write_is_the_hosts_failure_not_the_versions():
    def beat(force=False):
        raise HostUnreachable("h1: writing the lock heartbeat failed (connection reset)")

    run = _run(heartbeat=beat)
    with pytest.raises(host_run.StepFailed) as e:
        run.execute(Phase.SWITCH)
    assert run.connection_lost and run.outcome.failed_step == e.value.step.kind
    assert "connection reset" in run.outcome.error


def test_a_passing_smoke_test_the_ledger_could_not_record_does_not_blame_the_version(monkeypatch):
    def rec(*a, **k):
        raise UserError("cannot write to the ledger database (database is locked)")

    run = _run(record=rec, published=(1, 2), states={1: "AVAILABLE", 2: "AVAILABLE"})
    passed = NS(passed=True, version=2, to_dict=lambda: {}, summary=lambda: "", checks=[], route="r")
    with pytest.raises(LedgerWriteFailed) as e:
        run._judge(passed, "smoke test of v2", "before the switch")
    assert "passed, but the ledger could not record it" in e.value.message
    failed = NS(passed=False, version=2, to_dict=lambda: {}, summary=lambda: "golden_outputs: differ",
                checks=[], route="r")
    with pytest.raises(host_run.SmokeFailed):               # a failure stays the version's
        run._judge(failed, "smoke test of v2", "before the switch")


def test_the_ledger_failure_keeps_production_where_it_is():
    from serving_sync import deploy_failure, fleet

    result = fleet.FleetResult("m", 2, "production", "failed")
    rows = []

    def recorder(action, outcome, **fields):
        rows.append((action, outcome, fields["details"]))

    recorder.entry = lambda *a, **k: NS()
    recorder.record_all = lambda rows: None
    run = _run(record=recorder)
    step = next(s for s in run.plan.steps if "smoke" in str(s.kind))
    err = deploy_failure.fail(result, recorder, run, [run],
                              host_run.StepFailed("h1", step, LedgerWriteFailed("h1: smoke test passed, but ...")))
    assert result.blames_version is False and "the ledger could not record" in str(err)
    assert rows and rows[-1][2].get("registry_unchanged") is True


def test_a_lone_changing_host_with_a_canary_is_not_baked(deploy_env):
    """Nothing follows the canary, so there is nothing to protect and nothing to compare with: no
    bake (it waited --bake seconds, judged nothing, and refused a host without metrics)."""
    import time

    env = deploy_env
    host = env.add_host("file")                      # no monitoring config: no metrics page
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    t0 = time.monotonic()
    r = env.cli("sync", "deploy", "--canary", "1", "--bake", "30")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 30 and "--bake 30s not used" in r.stderr, r.stderr
    env.serves(host, v2)


def _note_kept_because(monkeypatch, line: str = "") -> dict:
    """``deploy_failure.registry_after_failure`` (what becomes of production) replaced by one that
    answers ``line``; the dict it notes the ``kept_because`` it was given in."""
    from serving_sync import deploy_failure

    seen = {}

    def registry(result, recorder, run, why, step, *, kept_because, canary=None, not_back=()):
        seen["kept_because"] = kept_because
        return line

    monkeypatch.setattr(deploy_failure, "registry_after_failure", registry)
    return seen


def _fail_after_a_put_back_that_reconnected(monkeypatch, exc, **kw):
    """``deploy_failure.fail`` on a host whose put-back found its SSH connection dead and opened a
    new one (``HostRun._reconnect`` notes ``connection_lost``); what it decided about the version."""
    from serving_sync import deploy_failure, fleet

    result = fleet.FleetResult("m", 2, "production", "failed")
    recorder = lambda *a, **k: None      # noqa: E731 - the ledger, as far as fail() writes to it here
    recorder.entry = lambda *a, **k: NS()
    recorder.record_all = lambda rows: None
    run = _run(record=recorder)
    run.touched = True

    def put_back_over_a_new_connection(self):
        self.connection_lost = True      # what _reconnect notes: the connection had dropped meanwhile

    monkeypatch.setattr(host_run.HostRun, "_restore", put_back_over_a_new_connection)
    seen = _note_kept_because(monkeypatch)
    err = deploy_failure.fail(result, recorder, run, [run], exc(run), **kw)
    assert run.outcome.status == "restored"
    return result, seen["kept_because"], err


def test_a_failed_smoke_test_stays_the_versions_when_the_put_back_had_to_reconnect(monkeypatch):
    """Found by review: the blame was decided after the put-back, and a put-back that found the SSH
    connection gone (idle through the smoke test or a bake, a blip) made any failure "the
    connection ... was lost, not the version": production stayed on a version whose smoke test had
    failed, untagged, and every `sync watch` pass deployed it again. A connection that dropped after
    the verdict does not explain it."""
    def smoke_failed(run):
        step = next(s for s in run.plan.steps if s.kind == "smoke_validation")
        return host_run.StepFailed("h1", step, host_run.SmokeFailed("h1: smoke test of v2 failed: outputs differ"))

    result, kept_because, _ = _fail_after_a_put_back_that_reconnected(monkeypatch, smoke_failed)
    assert kept_because is None and result.blames_version is True


def test_a_canary_breach_stays_the_versions_when_the_put_back_had_to_reconnect(monkeypatch):
    from serving_sync.canary import CanaryFailed

    verdict = NS(line="canary h1: error rate 25.0% (5/20) vs 0.0% before; limit 1.0%: rolled back",
                 outcome="breached", passed=False)
    result, kept_because, _ = _fail_after_a_put_back_that_reconnected(
        monkeypatch, lambda run: CanaryFailed(verdict), step="bake")
    assert kept_because is None and result.blames_version is True


def test_a_step_that_lost_the_connection_is_still_the_connections(monkeypatch):
    """The put-back's reconnect still says why a step failed when it is what broke the step."""
    def cut(run):
        step = next(s for s in run.plan.steps if s.kind == "load_validation")
        return host_run.StepFailed("h1", step, HostUnreachable("h1: lost the SSH connection while writing"))

    result, kept_because, _ = _fail_after_a_put_back_that_reconnected(monkeypatch, cut)
    assert "the connection to h1 was lost" in kept_because and result.blames_version is False


@pytest.mark.parametrize("hosts", [2, 1])
def test_a_forced_stop_during_the_put_back_still_records_it_and_moves_production(monkeypatch, hosts):
    """Found by review (fifteenth stop): a second signal (Ctrl-C twice, a hangup then CI's SIGTERM)
    while the hosts were put back after a failed smoke test let every host finish its put-back, then
    raised out of ``deploy_failure.fail``: no ``host_rollback`` rows, production left on the version
    whose smoke test failed, untagged, and the message said only "stopped". Now the put-back is
    recorded and production moved as without the signal, and the forced stop is raised after.
    One host (sixteenth stop): its put-back ran in this thread, so the signal landed inside it and
    the host was left half put back, recorded ``failed``; it now runs in a worker thread too."""
    import signal
    import threading

    from serving_sync import deploy_failure, fleet

    result = fleet.FleetResult("m", 2, "production", "failed")
    rows = []
    recorder = lambda *a, **k: None      # noqa: E731
    recorder.entry = lambda action, outcome, **k: (action, outcome, k["host"])
    recorder.record_all = rows.extend
    runs = [_run(record=recorder), _run(record=recorder)][:hosts]
    runs[-1].host, runs[-1].outcome.host = NS(name=f"h{hosts}"), f"h{hosts}"
    for r in runs:
        r.touched = True
    delivered = threading.Event()

    def forced(signum, frame):
        delivered.set()
        raise KeyboardInterrupt

    def put_back(self):
        if self.host.name == runs[-1].host.name:   # the second signal, while the put-backs run
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            assert delivered.wait(60)

    monkeypatch.setattr(host_run.HostRun, "_restore", put_back)
    seen = _note_kept_because(monkeypatch, "production moved back to v1")
    step = next(s for s in runs[0].plan.steps if s.kind == "smoke_validation")
    failure = host_run.StepFailed("h1", step, host_run.SmokeFailed("h1: smoke test of v2 failed: outputs differ"))
    previous = signal.signal(signal.SIGINT, forced)
    err = None
    try:
        err = deploy_failure.fail(result, recorder, runs[0], runs, failure)
    except KeyboardInterrupt:    # escaped before the put-back was recorded: a failure, not the end of pytest
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    assert delivered.is_set() and isinstance(err, KeyboardInterrupt), "the forced stop escaped fail()"
    names = [r.host.name for r in runs]
    assert sorted(rows) == [("host_rollback", "ok", n) for n in names]
    assert seen == {"kept_because": None} and result.blames_version is True
    assert f"put back {', '.join(names)}" in result.message and "production moved back to v1" in result.message
    assert [r.outcome.status for r in runs] == ["restored"] * hosts


def _two_runs_in_a_phase(monkeypatch, raise_on_starts):
    """Two hosts in ``fleet._phase`` with a signal landing in this thread right after the given
    worker-thread starts (the n-th ``Thread.start``); what ``fail`` saw, which hosts had returned."""
    import threading
    import time

    from mlops_common import stop
    from serving_sync import fleet

    runs = [_run(), _run()]
    runs[1].host, runs[1].outcome.host = NS(name="h2"), "h2"
    returned, starts, real_start = [], [], threading.Thread.start

    def execute(self, phase=None):
        time.sleep(0.2 if self.host.name == "h1" else 0.6)   # h1 busy: h2 goes to the second worker
        returned.append(self.host.name)

    def start(self):
        real_start(self)
        starts.append(self.name)
        if len(starts) in raise_on_starts:
            raise KeyboardInterrupt

    seen = {}

    def fail(result, recorder, run, every, exc, **kw):
        seen.update(returned=sorted(returned), exc=exc, stop=stop.asked())
        return exc

    monkeypatch.setattr(host_run.HostRun, "execute", execute)
    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.setattr(fleet, "fail", fail)
    try:
        with pytest.raises(KeyboardInterrupt):
            fleet._phase(fleet.FleetResult("m", 2, "production", "failed"), None, runs, runs,
                         Phase.PREPARE, 2)
    finally:
        monkeypatch.setattr(threading.Thread, "start", real_start)
        stop.clear()
    return seen, returned


def test_a_forced_stop_while_a_phase_starts_its_workers_waits_for_every_host_before_the_put_back(monkeypatch):
    """Found by review (sixteenth stop): the phases ran on a ``ThreadPoolExecutor``, which lists a
    worker for joining only after its thread started; a forced stop landing in between raised out
    of the phase with no stop asked of the other hosts, and the put-back could begin while that
    worker still prepared (or switched) its host. Now the phase asks every host to stop, waits for
    each, then puts them back."""
    seen, returned = _two_runs_in_a_phase(monkeypatch, {2})
    assert seen.get("returned") == ["h1", "h2"], "the put-back began while a host was still in its phase"
    assert isinstance(seen["exc"], KeyboardInterrupt) and seen["stop"] is True


def test_a_second_forced_stop_while_the_hosts_run_stops_at_once_without_a_put_back(monkeypatch):
    seen, returned = _two_runs_in_a_phase(monkeypatch, {1, 2})
    assert seen == {} and len(returned) < 2     # not put back under hosts still running: as asked


@pytest.mark.parametrize("phase", [Phase.PREPARE, Phase.SWITCH])
def test_a_second_forced_stop_begins_no_further_host_of_the_phase(monkeypatch, phase):
    """Eighteenth stop: a second forced stop while h1 and h2 ran their phase (``--parallel 2``)
    stopped the wait, and the worker that finished h1 went on to h3, which nothing would put
    back. Now h1 and h2 finish in their threads and h3 is not begun."""
    import threading

    from mlops_common import stop
    from serving_sync import fleet

    runs = [_run(), _run(), _run()]
    for run, name in zip(runs, ("h1", "h2", "h3")):
        run.host, run.outcome.host = NS(name=name), name
    began, under_way, go = [], {"h1": threading.Event(), "h2": threading.Event()}, threading.Event()
    real_join, raised = threading.Thread.join, []

    def execute(self, phase=None):
        began.append(self.host.name)
        if self.host.name in under_way:
            under_way[self.host.name].set()
            assert go.wait(10)

    def join(self, timeout=None):
        if threading.current_thread() is threading.main_thread() and self.name.startswith(f"{phase}_") \
                and len(raised) < 2:
            assert all(e.wait(10) for e in under_way.values())
            raised.append(1)
            raise KeyboardInterrupt(len(raised))
        return real_join(self, timeout)

    monkeypatch.setattr(host_run.HostRun, "execute", execute)
    monkeypatch.setattr(threading.Thread, "join", join)
    monkeypatch.setattr(fleet, "fail", lambda *a, **k: pytest.fail("put back under hosts still running"))
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            fleet._phase(fleet.FleetResult("m", 2, "production", "failed"), None, runs, runs, phase, 2)
        assert e.value.args == (2,)
    finally:
        go.set()
        for t in [t for t in threading.enumerate() if t.name.startswith(f"{phase}_")]:
            real_join(t, 10)
            assert not t.is_alive(), f"{t.name} still runs"
        stop.clear()
    assert sorted(began) == ["h1", "h2"], "a host was begun after the second forced stop"
