"""``mlops sync watch`` and its webhook, as a sweep found them (each test fails on the code before):

- a deploy killed after its switch was recorded by the next ``sync deploy`` but never by a
  watcher: every pass said "up to date" while the version stayed without ``deploy_status`` and
  without an ``ok`` deploy row (so rollbacks passed it over);
- when MLflow refused the ``deploy_status=failed`` tag, the watcher deployed the broken version
  again at every pass (the ledger's failed row was never asked);
- a deploy cut by a signal ended the watch with exit 0 (or 2 with ``--once``), the forced cut
  lost its pass, and ``--once`` finished its deploy after the first SIGTERM;
- a watch kept every pass in memory and printed them all at exit (months at 30 s);
- a webhook secret of raw random bytes passed the length check, then every delivery got 431;
- ``webhook create --url`` with a port out of range replaced a working webhook with a dead one;
- the receiver could not listen on an IPv6 address (``--webhook-host ::1``).

Real MLflow server, ledger and local TF-Serving-compatible servers where the registry matters;
the loop's own rules on stand-ins. Every wait is bounded.
"""
from __future__ import annotations

import signal
import socket
import time
from types import SimpleNamespace

import pytest

from mlops_common.errors import ConfigError, DeployFailed, UserError
from serving_sync import fleet, fleet_plan
from serving_sync import watch as watch_mod
from serving_sync.cancel import DeployInterrupted
from serving_sync.watch import FleetReconciler, Watcher


# --- the loop's rules --------------------------------------------------------------------------
def test_hosts_that_serve_production_unrecorded_go_through_deploy_once(monkeypatch):
    deployed = {5: False}
    calls = []
    monkeypatch.setattr(fleet_plan, "plan_fleet",
                        lambda model, hosts, **kw: SimpleNamespace(errors={}, up_to_date=True, version=5))

    def deploy(model, hosts, **kw):
        calls.append(kw)
        deployed[5] = True               # what record_converged writes
        return SimpleNamespace(status="up_to_date", version=5, message="up to date (recorded)")

    monkeypatch.setattr(fleet, "deploy", deploy)
    r = FleetReconciler("digits", [], None, recorded=lambda v: True, status_known=lambda v: deployed[v],
                        rollback_unrecorded=lambda v: None)
    assert r() == ("up_to_date", 5, "up to date (recorded)")
    assert r() == ("up_to_date", 5, "hosts serve v5")
    assert len(calls) == 1


def test_recording_is_tried_once_per_version_and_a_refusing_registry_is_not_asked_every_pass(monkeypatch):
    """Found in review: with MLflow refusing the tag, every up-to-date pass locked every host,
    wrote the recorded_late rows again and ended in an error."""
    calls = []
    monkeypatch.setattr(fleet_plan, "plan_fleet",
                        lambda model, hosts, **kw: SimpleNamespace(errors={}, up_to_date=True, version=5))

    def refused(model, hosts, **kw):
        calls.append(kw)
        raise UserError("MLflow answered 503 to set-tag")

    monkeypatch.setattr(fleet, "deploy", refused)
    r = FleetReconciler("digits", [], None, recorded=lambda v: False, status_known=lambda v: False,
                        rollback_unrecorded=lambda v: None)
    status, version, message = r()
    assert (status, version) == ("up_to_date", 5) and "not recorded: MLflow answered 503" in message
    assert r()[:2] == ("up_to_date", 5) and r()[:2] == ("up_to_date", 5)
    assert len(calls) == 1


def test_an_unfinished_rollback_is_finished_once_per_rollback_even_to_a_version_recorded_before(monkeypatch):
    """v5 recorded late once in this watch, then a `sync rollback` to v5 killed after its switch:
    the watch goes through deploy for that rollback (keyed by its ledger row, not the version
    alone), once — a registry refusing the tag is not asked at every pass — and again for the next."""
    state = {"known": False, "rollback": None}
    calls = []
    monkeypatch.setattr(fleet_plan, "plan_fleet",
                        lambda model, hosts, **kw: SimpleNamespace(errors={}, up_to_date=True, version=5))

    def deploy(model, hosts, **kw):
        calls.append(state["rollback"])
        if state["rollback"] is not None:
            raise UserError("MLflow answered 503 to set-tag")
        state["known"] = True
        return SimpleNamespace(status="up_to_date", version=5, message="up to date (recorded)")

    monkeypatch.setattr(fleet, "deploy", deploy)
    r = FleetReconciler("digits", [], None, recorded=lambda v: False, status_known=lambda v: state["known"],
                        rollback_unrecorded=lambda v: state["rollback"])
    assert r()[2] == "up to date (recorded)" and r() == ("up_to_date", 5, "hosts serve v5")
    state["rollback"] = SimpleNamespace(id=7)
    status, version, message = r()
    assert (status, version) == ("up_to_date", 5) and "not recorded: MLflow answered 503" in message
    assert r() == ("up_to_date", 5, "hosts serve v5")
    state["rollback"] = SimpleNamespace(id=9)
    assert "not recorded" in r()[2]
    assert [c if c is None else c.id for c in calls] == [None, 7, 9]


def test_a_signal_while_a_recording_pass_waits_for_a_lock_still_ends_the_watch(monkeypatch):
    """Found by review: a pass that only records a deploy killed after its switch took every
    UserError of its deploy for "could not be recorded", an interrupt included: a SIGTERM while it
    waited for a host's lock (--lock-wait) became an "up_to_date" pass and the watch went on (exit
    0 with --once), where every other deploy cut by a signal ends it with 130."""
    monkeypatch.setattr(fleet_plan, "plan_fleet",
                        lambda model, hosts, **kw: SimpleNamespace(errors={}, up_to_date=True, version=5))

    def interrupted(model, hosts, **kw):
        raise DeployInterrupted("interrupted (SIGTERM)")

    monkeypatch.setattr(fleet, "deploy", interrupted)
    r = FleetReconciler("digits", [], None, recorded=lambda v: False, status_known=lambda v: False,
                        rollback_unrecorded=lambda v: None)
    res = Watcher(r, interval=0.5, once=True).run()
    assert [(p.status, p.exit_code) for p in res.passes] == [("interrupted", 130)]


def test_the_watch_records_only_a_version_without_any_deploy_status(deploy_env):
    from registry import deploys

    env = deploy_env
    env.add_host("file")
    v1 = env.release("a")
    r = FleetReconciler(env.model, [], None)
    assert r.status_known(v1)                                         # deployed
    deploys.tag(env.model, v1, deploys.FAILED, "a --version deploy elsewhere")
    assert r.status_known(v1)                                         # another deploy's word: left alone
    v2 = env.register("b")
    assert not r.status_known(v2)                                     # never deployed: nothing recorded yet


def test_a_deploy_cut_by_a_signal_ends_the_watch_and_its_pass_is_kept():
    def interrupted():
        raise DeployInterrupted("deploy of v5 interrupted; put back web-1 to v4")

    w = Watcher(interrupted, interval=0.5, max_seconds=30)
    t0 = time.monotonic()
    res = w.run()
    assert time.monotonic() - t0 < 5                     # it did not wait for the next pass
    assert [(p.status, p.exit_code) for p in res.passes] == [("interrupted", 130)]

    def forced():
        raise KeyboardInterrupt

    w = Watcher(forced, interval=0.5, once=True)
    with pytest.raises(KeyboardInterrupt):
        w.run()
    assert [p.status for p in w.result.passes] == ["interrupted"]


def test_the_watch_command_exits_130_for_an_interrupted_pass_and_keeps_error_codes(capsys):
    from mlops.commands.sync import _report_watch
    from serving_sync.watch import Pass, WatchResult

    def result(*passes):
        r = WatchResult()
        for p in passes:
            r.add(p)
        return r

    args = SimpleNamespace(json=False, once=False)
    with pytest.raises(UserError) as e:
        _report_watch(args, result(Pass(0, "start", "interrupted", 5, "interrupted", 130)))
    assert e.value.exit_code == 130
    assert _report_watch(args, result(Pass(0, "start", "up_to_date", 5, "ok")), forced=True) == 130
    once = SimpleNamespace(json=False, once=True)
    with pytest.raises(DeployFailed):
        _report_watch(once, result(Pass(0, "start", "failed", 5, "smoke test failed")))
    with pytest.raises(UserError) as e:
        _report_watch(once, result(Pass(0, "start", "error", None, "host down", 2)))
    assert e.value.exit_code == ConfigError.exit_code
    capsys.readouterr()


def test_a_long_watch_keeps_the_newest_passes_and_counts_the_rest(monkeypatch, capsys):
    from mlops.commands import sync_text

    monkeypatch.setattr(watch_mod, "KEPT_PASSES", 3)
    clock = iter(range(10_000))
    w = Watcher(lambda: ("up_to_date", 5, "hosts serve v5"), interval=0.5, clock=lambda: next(clock) * 0.01)
    for _ in range(10):
        w._pass(0.0, "interval")
    res = w.result
    assert len(res.passes) == 3 and res.counts == {"up_to_date": 10} and res.dropped == 7
    assert res.to_dict()["dropped"] == 7 and len(res.to_dict()["passes"]) == 3
    sync_text.watch(res)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "7 earlier passes not shown (all passes: 10 up_to_date)" and len(out) == 2
    assert out[1].endswith(f"(and 2 more such passes until {res.passes[-1].at:.1f}s)"), out   # 3 kept: 1 line


# --- the webhook's edges -------------------------------------------------------------------------
def test_a_secret_that_is_not_utf8_text_is_refused_in_one_line():
    from registry.webhooks import check_secret_strength

    with pytest.raises(ConfigError, match="MLOPS_WEBHOOK_SECRET holds bytes that are not UTF-8 text"):
        check_secret_strength("whsec-abcdefghijklmnop\udcff", "MLOPS_WEBHOOK_SECRET")   # how Python reads 0xff
    check_secret_strength("whsec-abcdefghijklmnop-é", "MLOPS_WEBHOOK_SECRET")           # UTF-8 text is fine


def test_a_bug_after_the_request_head_is_a_500_not_a_431(monkeypatch):
    from serving_sync.webhook import Receiver
    from tests.test_sync_webhook_abuse import SECRET, raw_post, signed

    rec = Receiver(SECRET, "digits", lambda e: None, timeout=2.0).start()
    try:
        def broken(headers, body):
            raise ValueError("a bug while handling")

        monkeypatch.setattr(rec, "handle", broken)
        status, _ = raw_post(rec.port, *signed())
        assert status == 500
    finally:
        rec.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/hook", "http://127.0.0.1:0/hook", "http://h:port/hook"])
def test_a_webhook_url_with_an_impossible_port_is_refused(url, monkeypatch):
    from registry.webhooks import ensure_webhook

    monkeypatch.setenv("MLOPS_WEBHOOK_SECRET", "whsec-0123456789abcdef0123")
    with pytest.raises(ConfigError, match="--url has a port that is not a number from 1 to 65535"):
        ensure_webhook(url)


def test_the_receiver_listens_on_an_ipv6_address():
    from serving_sync.webhook import Receiver
    from tests.test_sync_webhook_abuse import SECRET

    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"SKIPPED LOUDLY: this machine has no IPv6 loopback ({exc})")
    rec = Receiver(SECRET, "digits", lambda e: None, host="::1", port=0).start()
    try:
        assert rec.url == f"http://[::1]:{rec.port}/"
        with socket.create_connection(("::1", rec.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 405")
    finally:
        rec.stop()


# --- against real services --------------------------------------------------------------------------
def test_a_watcher_records_a_deploy_that_was_killed_after_its_switch(deploy_env, paused_deploy):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    paused_deploy(env.env, "after:switch", "--timeout", "60").wait_paused().kill()
    env.serves(host, v2)
    assert env.tags(v2).get("deploy_status") in (None, "none")
    r = env.cli("sync", "watch", "--once")
    assert r.returncode == 0, r.stderr
    assert env.tags(v2).get("deploy_status") == "deployed"
    late = [e for e in env.ledger(("deploy",)) if e.to_version == v2 and e.outcome == "ok"]
    assert len(late) == 1 and "recorded_late" in late[0].details, late
    r = env.cli("sync", "watch", "--once")            # nothing more to record
    assert r.returncode == 0 and len([e for e in env.ledger(("deploy",)) if e.to_version == v2]) == 1
    assert env.which(host) == v2 and v1 != v2


@pytest.mark.parametrize("phase", ["after:switch", "deploy:after_final_rows"])
def test_a_watcher_finishes_a_sync_rollback_killed_after_its_switch(deploy_env, paused_deploy, phase):
    """Found by the third stop's review (a known limit until the seventh): `sync rollback` (v3 ->
    v2) SIGKILLed once the hosts served v2, where v2 already said ``deployed`` from before: every
    watch pass said "up to date" and recorded nothing, so `sync rollback` kept refusing to step
    further (after:switch: no deploy row of the rollback) or took the next rollback for this one
    (after its rows: v3 still ``deployed``) until someone ran `mlops sync deploy`. The watch now
    finishes it as that deploy would, once: v2's rollout recorded, v3 tagged rolled_back."""
    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    paused_deploy(env.env, phase, "--reason", "v3 is slow", command=("sync", "rollback")).wait_paused().kill()
    assert env.production() == v2 and env.which(host) == v2
    assert env.tags(v2).get("deploy_status") == "deployed"          # from its own deploy, before v3
    assert env.tags(v3).get("deploy_status") == "deployed"          # the rollback did not get to it

    r = env.cli("sync", "watch", "--once")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.tags(v3).get("deploy_status") == "rolled_back", r.stderr
    assert env.tags(v2).get("deploy_status") == "deployed"
    rows = len(env.ledger(("deploy",)))
    r = env.cli("sync", "watch", "--once")                           # nothing more to record
    assert r.returncode == 0 and len(env.ledger(("deploy",))) == rows, r.stderr
    further = env.cli("sync", "rollback", "--reason", "v2 too")       # a rollback is one step again
    assert further.returncode == 0, further.stderr
    assert env.production() == v1
    env.serves(host, v1)


def _failing_version_mlflow_will_not_tag(env, monkeypatch, answer: str) -> tuple[int, list]:
    """One file host serving v1; v2 promoted, whose smoke test fails; MLflow answers ``answer`` to
    the ``deploy_status=failed`` tag; the deploys the watch starts counted (the list returned)."""
    from registry import deploys, versions

    env.add_host("file")
    env.release("a")
    v2 = env.register("golden_edited")                   # its smoke test fails
    env.promote(v2)
    set_tags = versions.set_tags

    def refused(model, version, tags):
        if tags.get(deploys.DEPLOY_STATUS) == deploys.FAILED:
            raise UserError(f"MLflow answered {answer} to set-tag")
        return set_tags(model, version, tags)

    monkeypatch.setattr(versions, "set_tags", refused)
    calls = []
    deploy = fleet.deploy

    def counted(*a, **kw):
        calls.append(1)
        return deploy(*a, **kw)

    monkeypatch.setattr(fleet, "deploy", counted)
    return v2, calls


def test_a_version_whose_failed_tag_mlflow_refused_is_not_deployed_again(deploy_env, monkeypatch):
    env = deploy_env
    v2, calls = _failing_version_mlflow_will_not_tag(env, monkeypatch, "403 PERMISSION_DENIED")
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions

    r = FleetReconciler(env.model, load_hosts(), DeployOptions(timeout=60.0, json_mode=True))
    r.failed.failed.clear()
    status, version, message = r()
    assert (status, version) == ("failed", v2), message
    assert env.tags(v2).get("deploy_status") != "failed"         # MLflow refused it
    fresh = FleetReconciler(env.model, load_hosts(), DeployOptions(timeout=60.0, json_mode=True))
    status, version, message = fresh()
    assert (status, version) == ("skipped", v2), message          # a restarted watcher: the ledger says
    # not "(deploy_status=failed since ...)": MLflow holds no such tag (twentieth stop)
    assert "(a failed deploy row in the ledger; MLflow holds no deploy_status=failed tag since its last " \
           "promotion)" in message, message
    assert r()[:2] == ("skipped", v2)
    assert len(calls) == 1


def test_a_failure_neither_mlflow_nor_the_ledger_took_is_recorded_by_the_watch_for_a_restarted_one(
        deploy_env, monkeypatch):
    """Found by review (2026-12-07, twentieth stop): MLflow refused the ``failed`` tag and the
    ledger did not take the failed ``deploy`` row either (one database down under both): the watch
    skipped the version from its own memory, but a restarted watch (a reboot, an upgrade) knew
    nothing and rolled the broken version out again. The watch now writes that row itself at its
    next pass, under the promotion lock, so the ledger knows and every watch after skips it; a
    promotion through mlops still tries it again."""
    from registry import deploys
    from serving_sync import deploy_failure
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions

    env = deploy_env
    v2, calls = _failing_version_mlflow_will_not_tag(env, monkeypatch, "503")
    monkeypatch.setattr(deploy_failure, "_record_failed", lambda *a, **kw: "the ledger database did not answer")

    def watch():
        return FleetReconciler(env.model, load_hosts(), DeployOptions(timeout=60.0, json_mode=True))

    r = watch()
    status, version, message = r()
    assert (status, version) == ("failed", v2), message
    assert not deploys.failed_since_promoted(env.model, v2)          # neither MLflow nor the ledger took it
    assert r()[:2] == ("skipped", v2)                               # this watch remembers
    assert watch()()[:2] == ("skipped", v2)                         # a restarted watch: the ledger says
    assert len(calls) == 1
    rows = [e for e in env.ledger(("deploy",)) if e.to_version == v2 and e.outcome == "failed"]
    assert [e.details.get("recorded_late") for e in rows] == ["sync watch"], rows
    assert "golden" in rows[0].reason, rows[0].reason
    env.promote(v2)                                                  # a promotion through mlops: tried again
    assert not deploys.failed_since_promoted(env.model, v2)


def test_watch_once_stops_its_deploy_at_the_first_sigterm_and_exits_130(deploy_env, paused_deploy):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    d = paused_deploy(env.env, "after:load_main", "--timeout", "60", command=("sync", "watch", "--once"))
    d.wait_paused()
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    done = d.finish()
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert "interrupted" in done.stderr
    env.serves(host, v1)                                  # put back: the deploy did not finish
    assert env.production() == v2                         # not the version's fault


@pytest.mark.parametrize("extra", [("--secret-env", "HOOK_SECRET"), ("--webhook-host", "0.0.0.0")])
def test_webhook_flags_without_a_webhook_port_are_refused_not_ignored(extra):
    from tests.helpers import run_mlops

    r = run_mlops("sync", "watch", "--once", *extra)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"error: {extra[0]} only apply to the webhook receiver: add --webhook-port PORT "
                                f"(without it the watch only polls)"), r.stderr


def _two_hosts_file(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text("".join(f'[[hosts]]\nname = "web-{i}"\ntarget = "file://{tmp_path}/m{i}"\n'
                            f'rest_url = "http://127.0.0.1:{8 + i}"\n\n' for i in (1, 2)))
    return str(path)


@pytest.mark.parametrize("args, line", [
    (("--once", "--max-seconds", "60"),
     "error: --once and --max-seconds are alternatives: --once runs one pass, --max-seconds runs passes until then"),
    (("--max-seconds", "60", "--canary", "2"),
     "error: --canary 2 leaves no host to compare it with: the hosts file names 2 hosts; use at most 1"),
])
def test_a_watch_refuses_flags_it_cannot_honour_at_start_not_at_its_first_deploy(tmp_path, args, line):
    """Found by review (2026-12-05, ninth stop): ``--once --max-seconds`` was taken silently, and a
    ``--canary`` the fleet cannot honour was refused only by the first pass that had to deploy (the
    hosts here are not even reachable: a pass would fail on them, so any refusal is the start's)."""
    from tests.helpers import run_mlops

    r = run_mlops("sync", "watch", "--hosts", _two_hosts_file(tmp_path), *args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == line, r.stderr


def test_a_pass_whose_production_moved_before_its_deploy_reports_the_version_it_deployed(deploy_env, monkeypatch):
    """Found by review (operations at the same time): a watch pass planned v2, then a person
    promoted v3 before the pass's deploy took the locks; the deploy installs what production names
    then (v3), whose smoke test failed. The pass said `failed` for v2 (the version of its plan) and
    kept v2 as the failed one, with v3's message; it now names the version its deploy handled."""
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions

    env = deploy_env
    env.add_host("file")
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    v3 = env.register("golden_edited")                   # its smoke test fails
    plan = fleet_plan.plan_fleet

    def then_promoted(*a, **kw):
        out = plan(*a, **kw)
        env.promote(v3)
        return out

    monkeypatch.setattr(fleet_plan, "plan_fleet", then_promoted)
    r = FleetReconciler(env.model, load_hosts(), DeployOptions(timeout=60.0, json_mode=True),
                        recorded=lambda v: False)
    status, version, message = r()
    assert f"deploy of v{v3} " in message, message
    assert (status, version) == ("failed", v3), message
    assert r.failed.failed == {v3}


def test_a_watch_whose_production_alias_was_deleted_says_what_it_does_and_never_to_pass_version(deploy_env):
    """Found by review (2026-12-06, fifteenth stop): with the production alias deleted (by hand, or
    with the version it named) every pass said `sync deploy`'s line, "... or pass --version N",
    a flag `sync watch` does not have. The pass changes nothing and says so, and what brings it back."""
    from registry.client import tracking_client

    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    tracking_client().delete_registered_model_alias(env.model, "production")
    r = env.cli("sync", "watch", "--once")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert "holds the production alias" in lines[0] and "--version N" in lines[0], lines
    assert "pass --version" not in lines[0] and "the hosts keep what they serve" in lines[0], lines
    env.serves(host, v1)
