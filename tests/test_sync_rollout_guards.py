"""What happens between the steps of a fleet rollout, against real services (MLflow server,
ledger, local TF-Serving-compatible servers, the file transport's host locks):

- a ledger that stops answering after the canary switched, or a SIGTERM while the canary's
  baseline window is measured, puts every host back (the fleet is never left half switched) and
  leaves production alone: neither says the version is bad;
- a host whose lock another deploy took over is left to that deploy (never written again), the
  other hosts are put back, and the version is not blamed;
- a deploy that waited for the hosts' locks while a rollback moved production deploys what
  production names after the wait, not before it.

Fleets of 1-2 hosts; every wait is bounded.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from mlops_common.errors import DeployFailed, UserError
from registry import deploy_revert, promotion
from registry.deploys import DeployLedger
from serving_sync import cancel, fleet, host_run
from serving_sync import models_config as mc
from serving_sync.canary import Baker
from serving_sync.hosts import load_hosts
from serving_sync.lock import HostLock
from serving_sync.plan import StepKind
from serving_sync.transports import open_transport
from tests.lab.deploy_env import deploy_opts, v1_then_promote_v2


def _not_blamed(env, v2: int, result) -> None:
    assert env.production() == v2                               # production left where it was
    assert env.tags(v2).get("deploy_status") != "failed"
    assert result.blames_version is False


def test_a_ledger_that_fails_after_the_canary_switched_puts_every_host_back(deploy_env, monkeypatch):
    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    before = [env.config_text(h) for h in hosts]
    real = DeployLedger.record_all

    def down_for_deploy_rows(self, entries):
        if any(e.action == "deploy" and e.outcome == "ok" for e in entries):
            raise UserError("ledger: could not connect to PostgreSQL (test)")
        return real(self, entries)

    monkeypatch.setattr(DeployLedger, "record_all", down_for_deploy_rows)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=1))
    message = str(failed.value)
    assert "at step 'record'" in message and "the ledger could not record the deploy, not the version" in message
    by = {o.host: o for o in failed.value.result.hosts}
    assert by[hosts[0].name].status == "restored"                # the canary had switched: it is back
    # found by review (2026-12-07, twenty-second stop): ``--json`` lists the wave that switched,
    # as after a breach; it read ``waves: []`` when its rows could not be written
    waves = failed.value.result.waves
    assert [(w["wave"], w["hosts"]) for w in waves] == [("canary", [hosts[0].name])], waves
    assert waves[0]["switch_seconds"] >= 0, waves
    for h in hosts:
        env.serves(h, v1)
    assert [env.config_text(h) for h in hosts] == before
    _not_blamed(env, v2, failed.value.result)


def test_a_sigterm_while_the_canary_baseline_is_measured_puts_every_host_back(deploy_env, monkeypatch):
    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    v1, v2 = v1_then_promote_v2(env)
    before = [env.config_text(h) for h in hosts]
    measure = Baker.before_switch

    def signalled(self, wave):           # the signal arrives during the wait for the baseline window
        cancel.request("SIGTERM (test)")
        return measure(self, wave)

    monkeypatch.setattr(Baker, "before_switch", signalled)
    try:
        with pytest.raises(cancel.DeployInterrupted) as stopped:
            env.deploy(opts=deploy_opts(bake=5.0))
    finally:
        cancel.reset()
    assert "at step 'bake'" in str(stopped.value) and "interrupted" in str(stopped.value)
    for h in hosts:                      # prepared (validation copy loaded), now exactly as before
        env.serves(h, v1)
        assert "AVAILABLE" not in env.states(h, mc.validation_name(env.model)).values()
    assert [env.config_text(h) for h in hosts] == before
    _not_blamed(env, v2, stopped.value.result)


def test_a_sigterm_during_the_canarys_bake_still_lists_its_switched_wave(deploy_env, monkeypatch):
    """Found by review (2026-12-07, twenty-first stop): ``--json`` lists the waves that switched
    (with a breach, the canary's and its verdicts), but a bake that ended otherwise — a signal, its
    metrics page gone — left the canary's wave out: ``waves: []`` though the canary had switched and
    was put back. The wave is listed now, with how long its bake ran."""
    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    v1, v2 = v1_then_promote_v2(env)
    judge = Baker.judge

    def signalled(self, wave, old):      # the signal arrives during the canary's bake
        cancel.request("SIGTERM (test)")
        return judge(self, wave, old)

    monkeypatch.setattr(Baker, "judge", signalled)
    try:
        with pytest.raises(cancel.DeployInterrupted) as stopped:
            env.deploy(opts=deploy_opts(bake=5.0))
    finally:
        cancel.reset()
    assert "at step 'bake'" in str(stopped.value)
    waves = stopped.value.result.waves
    assert [(w["wave"], w["hosts"]) for w in waves] == [("canary", [hosts[0].name])], waves
    assert waves[0]["bake_seconds"] < 5.0 and "bake" not in waves[0], waves
    for h in hosts:
        env.serves(h, v1)


def test_a_host_whose_lock_was_taken_over_is_left_to_its_new_owner(deploy_env, monkeypatch):
    env = deploy_env
    monkeypatch.setenv("MLOPS_LOCK_TTL", "2")          # the deploy's lock thread beats every 0.5 s
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    target = hosts[1]
    other: dict = {}
    drop = host_run._RUNNERS[StepKind.DROP_VALIDATION]

    def then_taken_over(run, step):
        drop(run, step)
        if run.host.name != target.name:
            return
        lock_file = target.base / ".serving_sync" / "lock"
        token = json.loads(lock_file.read_text())["token"]
        other["transport"] = open_transport(run.host)                # another deploy, its own connection
        other["lock"] = HostLock(other["transport"], break_lock=token, ttl=600, heartbeat_every=0)
        other["lock"].acquire()
        other["config"] = env.config_text(target)
        deadline = time.monotonic() + 10                             # its lock thread notices
        while run.conn.lock.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.conn.lock.lost, "the deploy's lock thread did not notice the takeover"

    monkeypatch.setitem(host_run._RUNNERS, StepKind.DROP_VALIDATION, then_taken_over)
    try:
        with pytest.raises(DeployFailed) as failed:
            env.deploy(opts=deploy_opts(canary=0))
        message = str(failed.value)
        assert f"the deploy lock on {target.name} was taken over, not the version" in message
        assert f"COULD NOT put back {target.name}" in message and "lost its lock" in message
        assert env.config_text(target) == other["config"]         # not written after the takeover
        env.serves(hosts[0], v1)                                    # the host still ours is put back
        held = json.loads((target.base / ".serving_sync" / "lock").read_text())
        assert held["token"] == other["lock"].info.token            # the new owner's lock was left alone
        _not_blamed(env, v2, failed.value.result)
    finally:
        if "lock" in other:
            other["lock"].release()
            other["transport"].close()


def test_a_deploy_that_waited_for_the_locks_deploys_what_production_names_after_the_wait(deploy_env, monkeypatch):
    env = deploy_env
    hosts = env.add_hosts(1, "file")
    v1, v2 = v1_then_promote_v2(env)
    transport = open_transport(load_hosts()[0])
    held = HostLock(transport, heartbeat_every=0)          # another deploy is working on the host
    held.acquire()
    resolved = threading.Event()
    resolve = fleet.resolve_version

    def noted(model, version):
        out = resolve(model, version)
        resolved.set()
        return out

    monkeypatch.setattr(fleet, "resolve_version", noted)
    box: dict = {}

    def run():
        try:
            box["result"] = env.deploy(opts=deploy_opts(), lock_wait=60)
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        assert resolved.wait(60), "the deploy never read production"
        time.sleep(0.5)                                     # it is waiting for the lock now
        promotion.rollback(env.model, reason="on call: v2 is bad", actor="oncall")
        assert env.production() == v1
    finally:
        held.release()
        transport.close()
    thread.join(90)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.version == v1 and result.status == "up_to_date", result.message
    env.serves(hosts[0], v1)


def test_a_main_entry_that_loads_new_versions_by_itself_is_pinned_before_the_upload(deploy_env):
    """A host left by a glue script: TF Serving's default version policy (latest) over the base
    path the deploy publishes into. The upload would make it serve the new version before any
    smoke test, and a put-back of that text would load it again; the deploy pins the entry to what
    it serves first, and that pinned text is what a failure puts back."""
    from serving_sync import apply

    env = deploy_env
    [host] = env.add_hosts(1, "file")
    v1 = env.release("a", opts=deploy_opts(canary=0))
    target = load_hosts()[0]
    base = mc.model_base_path(target.serving_base_path(), env.model)
    glue = (f'model_config_list {{ config {{ name: "{env.model}" base_path: "{base}" '
            f'model_platform: "tensorflow" }} }}\n')
    transport = open_transport(target)
    try:
        apply.apply_text(target, transport, glue, timeout=30)
    finally:
        transport.close()
    assert mc.parse(env.config_text(host)).entry(env.model).policy == "default"
    bad = env.register("altered")              # its smoke test fails: its outputs are not its golden ones
    env.promote(bad)
    stop, seen = threading.Event(), []

    def probe():                               # the main entry's states, every 20 ms, while it deploys
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            seen.append(env.states(host).get(bad))
            time.sleep(0.02)

    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    try:
        with pytest.raises(DeployFailed) as failed:
            env.deploy(opts=deploy_opts())
    finally:
        stop.set()
        watcher.join(10)
    assert "smoke_validation" in str(failed.value), str(failed.value)
    main = mc.parse(env.config_text(host)).entry(env.model)
    assert main.policy == "specific" and main.versions == (v1,)          # pinned, and put back pinned
    time.sleep(1.5)                            # past the servers' file-system poll: nothing loads it later
    assert env.states(host).get(bad) is None and set(seen) == {None}   # never in the main entry
    assert env.answers_like(host, v1) and env.which(host) == v1


def _slow_to_start(monkeypatch) -> None:
    """Worker threads of the prepare phase that the OS schedules late: each later worker starts
    only once the one before it has finished, so the first worker takes every host, one after the
    other (a loaded CI machine did this on its own)."""
    real_start, earlier = threading.Thread.start, []

    def start(self):
        if self.name.startswith("prepare_"):
            for t in earlier:
                t.join(120)
            earlier.append(self)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)


@pytest.mark.parametrize("threads", ["prompt", "slow_to_start"])
def test_a_host_failure_does_not_hide_a_failed_smoke_test_on_a_later_host(deploy_env, monkeypatch, threads):
    """Prepare fails on two hosts at once: the first (in hosts order) cannot take the upload — not
    the version's fault — while the second's smoke test finds wrong outputs. The deploy reports the
    smoke failure and blames the version (it used to report the first host's and leave
    production on the bad version for the next run to find). With --parallel at least the fleet,
    no host waits for its turn: the second runs even when its thread starts after the first host
    failed (a full CI run found it skipped as "queued")."""
    if threads == "slow_to_start":
        _slow_to_start(monkeypatch)
    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    junk = hosts[0].base / env.model / str(v2)            # a damaged leftover: host 0's publish refuses it
    junk.mkdir(parents=True)
    (junk / "saved_model.pb").write_bytes(b"not a SavedModel")
    load = host_run._RUNNERS[StepKind.LOAD_VALIDATION]
    other_weights = env.bundles.path("c") / "tfserving" / "variables"

    def other_weights_on_host_1(run, step):
        if run.host.name == hosts[1].name:                  # published and verified; now other weights
            dest = hosts[1].base / env.model / str(v2) / "variables"
            for f in other_weights.iterdir():
                (dest / f.name).write_bytes(f.read_bytes())
        load(run, step)

    monkeypatch.setitem(host_run._RUNNERS, StepKind.LOAD_VALIDATION, other_weights_on_host_1)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=0))
    message = str(failed.value)
    assert f"failed on host {hosts[1].name} at step 'smoke_validation'" in message, message
    assert f"also failed: {hosts[0].name}" in message
    assert failed.value.result.blames_version is True
    assert env.production() == v1                               # production moved back
    assert env.tags(v2).get("deploy_status") == "failed"
    for h in hosts:
        env.serves(h, v1)


def test_a_rollback_while_the_canary_is_judged_stops_the_next_wave(deploy_env, monkeypatch):
    """Production rolled back while the deploy's canary was live (found by review: two CircleCI
    pipelines, a rollback during the bake): the deploy used to switch every other host to the
    version just rolled back from. It now reads production before each wave, stops, puts every
    host back and does not blame the version."""
    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    verify = host_run._RUNNERS[StepKind.VERIFY]
    rolled = {}

    def then_rolled_back(run, step):
        verify(run, step)
        if run.host.name == hosts[0].name and not rolled:      # the canary serves v2 now
            r = env.cli("registry", "rollback", "--reason", "v2 misbehaves on another dashboard")
            rolled["rc"] = r.returncode
            assert r.returncode == 0, r.stderr

    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, then_rolled_back)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=1))
    message = str(failed.value)
    assert f"production of '{env.model}' moved from v{v2} to v{v1} while this deploy ran" in message, message
    put_back = message.split("put back ", 1)[1].split(";", 1)[0]
    assert hosts[0].name in put_back and put_back.endswith(f"to v{v1}"), message   # the canary, switched
    assert env.production() == v1
    assert env.tags(v2).get("deploy_status") != "failed" and failed.value.result.blames_version is False
    for h in hosts:
        env.serves(h, v1)


def test_a_deploy_whose_production_moved_during_its_last_wave_puts_it_back_and_keeps_the_failed_tag(
        deploy_env, monkeypatch):
    """Found by a race sweep: two fleets (two hosts files) deploying v2; the other fleet's smoke
    test failed, moved production back to v1 and tagged v2 failed while this deploy switched its
    last (here: only) wave. Production was read before each wave but not after the last: this
    deploy exited 0, its host served v2 against production v1, and it overwrote the other deploy's
    deploy_status=failed with deployed (so v2 was a rollback target and a watcher retried it)."""
    from registry.promotion_rules import latest_deploys

    env = deploy_env
    hosts = env.add_hosts(1, "file")
    v1, v2 = v1_then_promote_v2(env)
    verify = host_run._RUNNERS[StepKind.VERIFY]
    other = {}

    def while_another_fleet_fails(run, step):
        verify(run, step)
        if not other:                                   # the host serves v2 now
            other["promo"] = deploy_revert.revert_failed_deploy(env.model, v2, v1, "other-fleet: smoke_test: too slow",
                                                            host="other-fleet")

    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, while_another_fleet_fails)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts())
    message = str(failed.value)
    assert other["promo"].moved, other["promo"].to_dict()
    assert f"production of '{env.model}' moved from v{v2} to v{v1} while this deploy ran" in message, message
    assert f"put back {hosts[0].name} to v{v1}" in message, message
    env.serves(hosts[0], v1)
    assert env.production() == v1
    assert env.tags(v2).get("deploy_status") == "failed"            # the other fleet's verdict stands
    assert failed.value.result.blames_version is False
    rows = env.ledger(("deploy",))
    assert latest_deploys(rows)[v2] == "failed", [(e.outcome, e.details) for e in rows]
    assert DeployLedger(env.model).rollback_target() is None      # v2 failed: v1 had no production before it


def test_a_canary_that_was_put_back_is_not_a_version_the_fleet_served(deploy_env, monkeypatch):
    """Found by a race sweep: v3's canary switched (its deploy ok row written), then a promotion of
    v4 stopped the rollout and every host went back to v2. The canary's ok row stayed v3's latest
    verdict, so when v4's deploy failed production went back to v3 — a version that never got past
    its canary — and the next deploy restored it to every host at once, with no canary or bake."""
    from registry import deploys

    env = deploy_env
    hosts = env.add_hosts(2, "file")
    env.release("a", opts=deploy_opts(canary=0))
    v2 = env.release("b", opts=deploy_opts(canary=0))
    v3 = env.register("c")
    env.promote(v3)
    v4 = env.register("a")
    verify = host_run._RUNNERS[StepKind.VERIFY]
    promoted = {}

    def promoted_during_the_canary(run, step):
        verify(run, step)
        if run.host.name == hosts[0].name and not promoted:       # the canary serves v3 now
            promoted["v4"] = True
            env.promote(v4)

    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, promoted_during_the_canary)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=1))
    put_back = str(failed.value).split("put back ", 1)[1].split(";", 1)[0]
    assert hosts[0].name in put_back and put_back.endswith(f"to v{v2}"), str(failed.value)
    for h in hosts:
        env.serves(h, v2)
    rows = env.ledger(("promote", "rollback", "deploy"))
    canary_ok = [e for e in rows if e.action == "deploy" and e.to_version == v3 and e.outcome == "ok"]
    assert [e.host for e in canary_ok] == [hosts[0].name] and canary_ok[0].details["final"] is False
    assert DeployLedger(env.model).previous_production(v4) == v2     # not v3: the fleet never served it
    promotion.rollback(env.model, to=v3, reason="try v3 again", actor="oncall")
    assert deploys.restoring(env.model, v3) is None                  # a rollout like any other: staged again


def test_an_up_to_date_deploy_whose_production_moved_while_it_observed_records_nothing(deploy_env, monkeypatch):
    """Found by review (operations at the same time): two fleets on one production. This fleet's
    hosts already serve v2 and a `sync deploy` of production (v2) observes them; meanwhile the
    other fleet's deploy of v2 fails, tags v2 failed and moves production back to v1. The up-to-date
    path recorded v2 as deployed all the same (late `deploy ok` rows, deploy_status=deployed over
    the other fleet's `failed`): v2 became a rollback target again. Production is read again before
    anything is recorded; nothing is written and the line says production moved."""
    from registry.promotion_rules import latest_deploys

    env = deploy_env
    hosts = env.add_hosts(1, "file")
    v1 = env.release("a", opts=deploy_opts(canary=0))
    v2 = env.release("b", opts=deploy_opts(canary=0))
    assert env.tags(v2).get("deploy_status") == "deployed"
    real = fleet.observe_and_plan
    other = {}

    def observed_while_another_fleet_fails(*args, **kw):
        out = real(*args, **kw)
        if not other:                   # this fleet is up to date on v2; the other fleet fails v2 now
            other["promo"] = deploy_revert.revert_failed_deploy(env.model, v2, v1, "other-fleet: smoke_test: too slow",
                                                            host="other-fleet")
        return out

    monkeypatch.setattr(fleet, "observe_and_plan", observed_while_another_fleet_fails)
    rows_before = len(env.ledger(("deploy",)))
    with pytest.raises(UserError) as moved:
        env.deploy(opts=deploy_opts())
    assert other["promo"].moved, other["promo"].to_dict()
    assert f"production of '{env.model}' moved from v{v2} to v{v1} while this deploy ran" in str(moved.value)
    assert env.production() == v1
    assert env.tags(v2).get("deploy_status") == "failed"              # the other fleet's verdict stands
    rows = env.ledger(("deploy",))
    assert not [e for e in rows[rows_before:] if e.outcome == "ok"], [(e.outcome, e.details) for e in rows]
    assert latest_deploys(rows)[v2] == "failed"
    env.serves(hosts[0], v2)          # nothing was changed: the next deploy installs v1


def _promote_during_the_last_verify(env, monkeypatch, v_next: int) -> dict:
    """Promote ``v_next`` once the first host's check after its switch is done (the deploy's last
    wave: every host here switches in it), as CI's promote job can while a deploy runs."""
    verify = host_run._RUNNERS[StepKind.VERIFY]
    done = {}

    def while_a_newer_version_is_promoted(run, step):
        verify(run, step)
        if not done:
            env.promote(v_next)
            done["promoted"] = v_next

    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, while_a_newer_version_is_promoted)
    return done


@pytest.mark.parametrize("case", ["deploy", "rollback"])
def test_a_rollout_overtaken_by_a_newer_promotion_keeps_its_hosts_and_says_so(deploy_env, monkeypatch, case):
    """Found by review (operations at the same time): production moved after the last wave
    switched put every host back to what it served before, whatever production moved to. When a
    newer version was promoted meanwhile, that undid a good rollout: a deploy of v2 overtaken by
    v3 went back to v1, and a rollback (v2 -> v1, by promoting v1 again) overtaken by v3 went back
    to v2, the version rolled back as bad. The hosts now stay on the version that passed every
    check, it is recorded deployed, and one line says production moved and how to install it."""
    env = deploy_env
    hosts = env.add_hosts(1, "file")
    v1 = env.release("a", opts=deploy_opts(canary=0))
    v2 = env.release("b", opts=deploy_opts(canary=0))
    target, before = (v2, v1) if case == "deploy" else (v1, v2)
    if case == "deploy":        # v2 registered and deployed once already: deploy it from v1 again
        env.promote(v1)
        env.deploy(opts=deploy_opts())
        env.serves(hosts[0], v1)
    env.promote(target)
    v3 = env.register("c")
    verify = host_run._RUNNERS[StepKind.VERIFY]
    done = _promote_during_the_last_verify(env, monkeypatch, v3)
    with pytest.raises(UserError) as moved:
        env.deploy(opts=deploy_opts())
    assert done == {"promoted": v3}
    assert not isinstance(moved.value, DeployFailed), moved.value
    line = str(moved.value)
    assert f"moved from v{target} to v{v3} while this deploy ran" in line, line
    assert f"the hosts stay on v{target}" in line and "mlops sync deploy" in line, line
    env.serves(hosts[0], target)                       # not put back to v{before}
    assert env.which(hosts[0]) != before
    assert env.tags(target).get("deploy_status") == "deployed"
    assert env.production() == v3
    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, verify)
    r = env.deploy(opts=deploy_opts())                       # the next deploy installs production
    assert r.status == "deployed", r.message
    env.serves(hosts[0], v3)


def test_a_rollout_overtaken_by_a_newer_version_that_failed_elsewhere_is_put_back(deploy_env, monkeypatch):
    """The rule's other side (``rollout.stays_when_overtaken``): when the version failed on
    another fleet meanwhile, a newer production does not keep it: every host goes back."""
    env = deploy_env
    hosts = env.add_hosts(1, "file")
    v1, v2 = v1_then_promote_v2(env)
    v3 = env.register("c")
    verify = host_run._RUNNERS[StepKind.VERIFY]
    done = {}

    def while_it_fails_elsewhere_and_v3_is_promoted(run, step):
        verify(run, step)
        if not done:
            deploy_revert.revert_failed_deploy(env.model, v2, v1, "other-fleet: smoke_test: too slow",
                                               host="other-fleet")
            env.promote(v3)
            done["promoted"] = v3

    monkeypatch.setitem(host_run._RUNNERS, StepKind.VERIFY, while_it_fails_elsewhere_and_v3_is_promoted)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts())
    assert f"moved from v{v2} to v{v3}" in str(failed.value), failed.value
    env.serves(hosts[0], v1)
    assert env.tags(v2).get("deploy_status") == "failed"


def test_a_sigterm_during_the_demos_deploy_stops_it_at_a_safe_point_and_puts_the_hosts_back(deploy_env, tmp_path,
                                                                                            monkeypatch):
    """Found by a review (2026-12-06): `mlops demo` deploys under ``sigterm_as_ctrl_c``, whose SIGTERM
    raised KeyboardInterrupt wherever the main thread was (a worker's wait, a gRPC call): the
    deploy's own stop (``cancel``, safe points) was a second flag the handler never set. The demo's
    deploy is a ``stop.deferred()`` region now and the two flags are one: the SIGTERM only asks, the
    deploy stops at its next safe point, puts the host back and raises ``DeployInterrupted``."""
    import os
    import signal

    from mlops.commands.signals import sigterm_as_ctrl_c
    from mlops.demo import deploy_production
    from mlops_common import faultpoint, stop

    env = deploy_env
    (host,) = env.add_hosts(1, "file")
    v1, v2 = v1_then_promote_v2(env)
    before = env.config_text(host)
    marker = tmp_path / "held"
    monkeypatch.setenv(faultpoint.PAUSE_AT, "after:load_validation")    # v2 loaded beside v1, v1 serving
    monkeypatch.setenv(faultpoint.MARKER, str(marker))
    monkeypatch.setenv(faultpoint.SECONDS, "60")
    monkeypatch.setattr(faultpoint, "_fired", set())

    def sigterm_when_held():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.05)
        if marker.exists():
            os.kill(os.getpid(), signal.SIGTERM)        # run by the main thread, in the deploy

    signaller = threading.Thread(target=sigterm_when_held, daemon=True)

    def demo_deploy():
        try:
            deploy_production(env.model, load_hosts())
        except BaseException as exc:        # noqa: BLE001 - a KeyboardInterrupt must fail the test, not end pytest
            return exc
        return None

    with sigterm_as_ctrl_c():
        signaller.start()
        try:
            got = demo_deploy()
        finally:
            marker.unlink(missing_ok=True)
            signaller.join(timeout=130)
    assert isinstance(got, cancel.DeployInterrupted), repr(got)
    assert got.in_rollout and "interrupted (SIGTERM)" in got.message and "put back" in got.message, got.message
    env.serves(host, v1)
    assert env.config_text(host) == before
    assert env.production() == v2 and got.result.blames_version is False
    assert not stop.asked()                 # forgotten once the block ended


@pytest.mark.parametrize("kind,phase", [(StepKind.SMOKE_VALIDATION, "prepare_hosts"),
                                        (StepKind.VERIFY, "switch_hosts")])
def test_a_failed_deploys_json_says_how_long_it_ran_its_failed_phase_and_its_put_back(deploy_env, monkeypatch,
                                                                                      kind, phase):
    """Found by review (fifteenth stop): a failed deploy's `--json` said `"seconds": 0.0` and had no
    timing for the phase that failed (laps were written only when a phase ended well) nor for the
    put-back. Now the phase that failed is timed up to the put-back, which is timed too."""
    from serving_sync.errors import SmokeFailed

    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    real = host_run._RUNNERS[kind]

    def fails_on_the_second_host(run, step):
        real(run, step)
        if run.host.name == hosts[1].name:
            raise SmokeFailed(f"{run.host.name}: wrong outputs (test)")

    monkeypatch.setitem(host_run._RUNNERS, kind, fails_on_the_second_host)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=1))
    doc = json.loads(json.dumps(failed.value.result.to_dict()))
    assert doc["status"] == "failed" and doc["seconds"] > 0, doc["seconds"]
    timings = doc["timings"]
    assert timings[phase] > 0 and timings["put_back"] > 0, timings
    assert doc["seconds"] >= sum(timings.values()) - 0.01, (doc["seconds"], timings)
    assert "record_and_retention" not in timings
    for h in hosts:
        env.serves(h, v1)


def test_a_deploy_whose_deployed_tag_was_refused_still_has_its_result_for_json(deploy_env, monkeypatch):
    """Found by review (fifteenth stop): the hosts serve the version and its rows are written, but
    MLflow refused ``deploy_status=deployed``: the error (exit 1) carried no result, so `--json`
    printed nothing about a rollout that changed every host."""
    from registry import deploys

    env = deploy_env
    hosts = env.add_hosts(1, "file")
    v1, v2 = v1_then_promote_v2(env)
    real = deploys.tag

    def refused(model, version, status, *a, **k):
        if status == deploys.DEPLOYED:
            raise UserError("MLflow: 503 Service Unavailable (test)")
        return real(model, version, status, *a, **k)

    monkeypatch.setattr(deploys, "tag", refused)
    with pytest.raises(UserError) as raised:
        env.deploy(opts=deploy_opts())
    assert "could not record deploy_status=deployed" in str(raised.value)
    doc = json.loads(json.dumps(raised.value.result.to_dict()))
    assert doc["version"] == v2 and [h["status"] for h in doc["hosts"]] == ["deployed"]
    assert "could not record deploy_status=deployed" in doc["message"] and doc["seconds"] > 0
    env.serves(hosts[0], v2)


def _take_over(target, other: dict) -> None:
    """Another deploy breaks ``target``'s lock (by its token) and holds it; kept in ``other``."""
    token = json.loads((target.base / ".serving_sync" / "lock").read_text())["token"]
    other["transport"] = open_transport(load_hosts()[1])          # another deploy's connection
    other["lock"] = HostLock(other["transport"], break_lock=token, ttl=600, heartbeat_every=0)
    other["lock"].acquire()


def _deploy_stops_before_the_rename(env, target, other: dict, first_host, v1, v2, what: str) -> None:
    """The deploy fails with "lost its lock", v2 never renamed into ``target``, v1 still served,
    v2 not blamed; the other deploy's lock released at the end."""
    try:
        with pytest.raises(DeployFailed) as failed:
            env.deploy(opts=deploy_opts(canary=0))
        assert "lock" in other, what
        assert "lost its lock" in str(failed.value)
        assert not (target.base / env.model / str(v2)).exists()    # not renamed into the new owner's host
        env.serves(first_host, v1)
        _not_blamed(env, v2, failed.value.result)
    finally:
        if "lock" in other:
            other["lock"].release()
            other["transport"].close()


def test_an_upload_whose_lock_was_taken_over_stops_and_publishes_nothing(deploy_env, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): a host's upload checked an interrupt between
    chunks, not its lock: taken over mid-upload (stale by the clocks, or --break-lock), the upload
    went on and renamed the version into place on a host the new owner held (whose takeover
    removes the dead owner's ``.incoming-*`` meanwhile); only the next step noticed. Now the
    upload stops at the chunk after the lock's thread noticed, nothing published there."""
    env = deploy_env
    monkeypatch.setenv("MLOPS_LOCK_TTL", "2")          # the deploy's lock thread beats every 0.5 s
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    target = hosts[1]
    other: dict = {}
    real_progress = host_run.make_progress

    def taken_over_at_the_first_chunk(total, label, **kw):
        shown = real_progress(total, label, **kw)
        if not label.startswith(f"{target.name}:"):
            return shown
        run_lock: list = []

        def first(nbytes):
            shown(nbytes)
            if "lock" in other:
                return
            run_lock.append(next(c for c in _conns if c.host.name == target.name).lock)
            _take_over(target, other)
            deadline = time.monotonic() + 10                             # the deploy's lock thread notices
            while run_lock[0].lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert run_lock[0].lost, "the deploy's lock thread did not notice the takeover"

        first.done = shown.done
        return first

    _conns: list = []
    real_heartbeat = fleet.Heartbeat

    def noted(conns, *a, **kw):
        _conns.extend(conns)
        return real_heartbeat(conns, *a, **kw)

    monkeypatch.setattr(host_run, "make_progress", taken_over_at_the_first_chunk)
    monkeypatch.setattr(fleet, "Heartbeat", noted)
    _deploy_stops_before_the_rename(env, target, other, hosts[0], v1, v2, "the target's upload never started")


def test_a_lock_taken_over_after_the_last_chunk_stops_the_rename_into_place(deploy_env, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): the upload checked its lock's flag at each
    chunk, not again before the rename into place: a takeover after the last chunk (while the
    upload was verified) was seen only by the next step, up to TTL/4 later, after the version was
    renamed into the new owner's host. Now the lock is read right before the rename (the lock's
    thread beats every 150 s here: it never sees the takeover)."""
    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1, v2 = v1_then_promote_v2(env)
    target = hosts[1]
    other: dict = {}
    real_verify = type(open_transport(load_hosts()[1])).verify

    def taken_over_once_verified(self, rel, manifest):
        problems = real_verify(self, rel, manifest)
        if "lock" not in other and ".incoming-" in rel and str(target.base) in self.url:
            _take_over(target, other)
        return problems

    monkeypatch.setattr(type(open_transport(load_hosts()[1])), "verify", taken_over_once_verified)
    _deploy_stops_before_the_rename(env, target, other, hosts[0], v1, v2, "the target's upload was never verified")
