"""The real ``mlops sync deploy`` process SIGKILLed at each phase of a deploy, then run again.

The deploy is held at a precise phase by the test hook of ``mlops_common.faultpoint`` (it writes
a marker file and waits), the test SIGKILLs its whole process group there — no signal handler,
no ``finally`` can run — and then runs the deploy again. Throughout, a traffic loop sends
unversioned and ``stable`` requests to the host: not one may fail, and every answer must be the
golden output of v1 or v2 (never anything else). The rerun must converge: v2 serves on every
route, no validation entry, the lock released, the registry and the ledger say deployed.
"""
from __future__ import annotations

import pytest

from tests.fixtures.faults import incoming, numeric, tree_bytes

pytestmark = pytest.mark.slow


# phase -> what the host must look like right after the kill
PHASES = {
    "during:publish": "partial upload only under .incoming-*, nothing numeric, models.config unchanged",
    "after:publish": "v2 complete under its numeric name, models.config unchanged",
    "after:load_validation": "v2 loaded only in the validation entry; stable and unversioned on v1",
    "after:load_main": "v2 beside v1 in the main entry, stable still on v1",
    "after:switch": "stable on v2, v1 kept warm; the deploy never recorded its success",
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigkill_at_each_phase_never_breaks_serving_and_the_rerun_converges(deploy_env, paused_deploy, phase):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    config_v1 = env.config_text(host)
    v2 = env.register("big")
    env.promote(v2)
    v1_files = tree_bytes(host.base / env.model / str(v1))

    traffic = env.traffic(host)
    try:
        deploy = paused_deploy(env.env, phase).wait_paused()
        deploy.kill()
        assert deploy.proc.returncode == -9

        # --- right after the kill: what TF Serving can see is whole, and v1 still serves ---------
        model_dir = host.base / env.model
        assert tree_bytes(model_dir / str(v1)) == v1_files
        stable_now = env.which(host, label="stable")
        if phase == "during:publish":
            assert numeric(model_dir) == [v1] and incoming(model_dir), PHASES[phase]
            assert env.config_text(host) == config_v1
        elif phase == "after:publish":
            assert numeric(model_dir) == [v1, v2] and not incoming(model_dir)
            assert tree_bytes(model_dir / str(v2)) == tree_bytes(env.bundles.path("big") / "tfserving")
            assert env.config_text(host) == config_v1
        elif phase == "after:load_validation":
            assert f"{env.model}__validate" in env.config_text(host)
            assert env.which(host) == v1
        if phase == "after:switch":
            assert stable_now == v2
        else:
            assert stable_now == v1, PHASES[phase]
        # the dead deploy's lock is left behind, and taken over (its process is gone) by the rerun
        assert (host.base / ".serving_sync" / "lock").exists()

        # --- run again: converges --------------------------------------------------------------
        r = env.cli("sync", "deploy", "--json")
        assert r.returncode == 0, r.stderr
        assert "took over the deploy lock" in r.stderr, r.stderr
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.count > 20
    answered = set(traffic.answers["unversioned"]) | set(traffic.answers["stable"])
    assert answered <= {v1, v2}, answered
    env.serves(host, v2)
    assert env.which(host, version=v1) == v1                  # the previous version kept warm
    assert "__validate" not in env.config_text(host)
    assert numeric(host.base / env.model) == [v1, v2]
    assert tree_bytes(host.base / env.model / str(v2)) == tree_bytes(env.bundles.path("big") / "tfserving")
    assert not (host.base / ".serving_sync" / "lock").exists()
    assert env.production() == v2
    assert env.tags(v2).get("deploy_status") == "deployed"
    assert any(e.outcome == "ok" and e.to_version == v2 and e.host == host.name
               for e in env.ledger(("deploy",)))
    # and a third run has nothing left to do
    assert env.deploy().status == "up_to_date"


def test_a_rollback_killed_after_its_switch_is_finished_by_a_deploy_not_repeated(deploy_env, paused_deploy):
    """Found by a kill sweep: `sync rollback` (v3 -> v2) SIGKILLed once the hosts served v2 left
    v3 tagged ``deployed`` for good (the rerun deploy was "up to date" and wrote nothing), and the
    same command run again rolled back one more version, to v1."""
    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    rollback = paused_deploy(env.env, "after:switch", "--reason", "v3 is slow",
                             command=("sync", "rollback")).wait_paused()
    rollback.kill()
    assert env.production() == v2 and env.which(host) == v2
    assert env.tags(v3).get("deploy_status") == "deployed"

    again = env.cli("sync", "rollback", "--reason", "v3 is slow")
    assert again.returncode != 0 and env.production() == v2, again.stderr
    assert f"the last rollback of '{env.model}' (v{v3} -> v{v2}) has no deploy recorded since" in again.stderr
    assert f"`mlops sync deploy` installs v{v2}, or records it where the hosts serve it" in again.stderr

    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.tags(v3).get("deploy_status") == "rolled_back"
    assert env.tags(v2).get("deploy_status") == "deployed"
    further = env.cli("sync", "rollback", "--reason", "v2 too")       # now a rollback is one step again
    assert further.returncode == 0, further.stderr
    assert env.production() == v1
    env.serves(host, v1)


def test_a_rollback_killed_after_its_rollout_was_recorded_is_finished_by_a_rerun_not_repeated(
        deploy_env, paused_deploy):
    """Found by review: `sync rollback` (v3 -> v2) SIGKILLed once its deploy rows were committed,
    before any tag: the ledger cannot tell it from a finished rollback, and the same command run
    again rolled production back one more version, to v1. The rerun now finishes that rollback
    (v3 tagged rolled_back, v2 shows who rolled back) and a rollback after it is one step again."""
    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    rollback = paused_deploy(env.env, "deploy:after_final_rows", "--reason", "v3 is slow", "--actor", "oncall-bob",
                             command=("sync", "rollback")).wait_paused()
    rollback.kill()
    assert env.production() == v2 and env.which(host) == v2
    assert any(e.outcome == "ok" and e.to_version == v2 and (e.details or {}).get("final")
               for e in env.ledger(("deploy",)))          # its rollout is recorded ...
    assert env.tags(v3).get("deploy_status") == "deployed"   # ... its tags are not

    again = env.cli("sync", "rollback", "--reason", "v3 is slow", "--actor", "oncall-bob")
    assert again.returncode == 0, again.stderr
    assert env.production() == v2, again.stderr
    env.serves(host, v2)
    assert f"finishing the rollback v{v3} -> v{v2}" in again.stderr
    assert env.tags(v3).get("deploy_status") == "rolled_back"
    assert env.tags(v2).get("approved_by") == "oncall-bob"
    assert [e.to_version for e in env.ledger(("rollback",)) if e.outcome == "ok"] == [v2]   # no new move

    further = env.cli("sync", "rollback", "--reason", "v2 too")       # now a rollback is one step again
    assert further.returncode == 0, further.stderr
    assert env.production() == v1
    env.serves(host, v1)


def test_a_rollback_stopped_during_its_retention_is_finished_by_a_rerun_not_repeated(deploy_env):
    """The same when `sync rollback` stops during the deploy's retention (removing versions over
    SSH takes a while): the version rolled back from was tagged rolled_back before it, so the
    rerun took the rollback for a finished one and went to v1. It is tagged after retention now.
    The registry move and the deploy run in-process here, retention raising as a kill would stop
    it (and `Promotion.finish()` never called, as when the process died there)."""
    from registry import promotion
    from serving_sync import deploy_retention

    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    promotion.rollback(env.model, reason="v3 is slow", actor="oncall-bob", defer_tags=True, unrolled_ok=False)

    def killed(*a, **kw):
        raise RuntimeError("killed during retention")

    retention, deploy_retention.host_retention = deploy_retention.host_retention, killed
    try:
        with pytest.raises(RuntimeError, match="killed during retention"):
            env.deploy()
    finally:
        deploy_retention.host_retention = retention
    assert env.which(host) == v2 and env.production() == v2

    again = env.cli("sync", "rollback", "--reason", "v3 is slow", "--actor", "oncall-bob")
    assert again.returncode == 0, again.stderr
    assert env.production() == v2, again.stderr
    env.serves(host, v2)
    assert env.tags(v3).get("deploy_status") == "rolled_back"
    assert env.tags(v2).get("approved_by") == "oncall-bob"
    further = env.cli("sync", "rollback", "--reason", "v2 too")
    assert further.returncode == 0, further.stderr
    assert env.production() == v1


def test_a_registry_rollback_the_hosts_already_serve_is_recorded_by_a_deploy(deploy_env):
    """Found by review: v3 promoted but never deployed, `registry rollback` back to v2 (which the
    hosts serve): `sync rollback` must not say the hosts lack v2 without a way out — `sync
    deploy` records it, and a rollback is one step again."""
    env = deploy_env
    host = env.add_host("file")
    v1, v2 = env.release("a"), env.release("b")
    v3 = env.register("c")
    env.promote(v3)
    assert env.cli("registry", "rollback", "--reason", "not yet").returncode == 0
    assert env.production() == v2
    refused = env.cli("sync", "rollback", "--reason", "further")
    assert refused.returncode != 0 and f"`mlops sync deploy` installs v{v2}, or records it" in refused.stderr
    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 0 and '"up_to_date"' in r.stdout, r.stdout + r.stderr
    further = env.cli("sync", "rollback", "--reason", "further")
    assert further.returncode == 0, further.stderr
    assert env.production() == v1
    env.serves(host, v1)


def test_a_deploy_that_takes_over_a_dead_lock_removes_a_half_written_models_config(deploy_env, paused_deploy):
    """Found by a kill sweep: a config write killed before its rename left `.models.config.tmp-*`
    in the base for good. The base is listed for them only after a lock takeover (over SSH a
    listing is 4 round trips, which every deploy would pay)."""
    env = deploy_env
    host = env.add_host("file")
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    deploy = paused_deploy(env.env, "after:load_validation").wait_paused()
    deploy.kill()
    leftover = host.base / ".models.config.tmp-0badf00d"
    leftover.write_text("model_config_list { con")          # as a write killed before its rename
    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 0 and "took over the deploy lock" in r.stderr, r.stderr
    assert not leftover.exists() and (host.base / "models.config").exists()
    env.serves(host, v2)
    leftover.write_text("model_config_list { con")          # no takeover: the base is not listed
    env.promote(env.register("c"))
    assert env.cli("sync", "deploy").returncode == 0 and leftover.exists()


def test_a_rollback_to_a_version_that_never_held_production_tags_the_one_rolled_back_from(deploy_env):
    """Found by review: `sync rollback --to N` to a version that never held production is no
    restore, and the deploy tagged only a restore's version rolled back from: v3 stayed `deployed`
    (and a `sync rollback` after it took that rollback for an unfinished one, every time)."""
    env = deploy_env
    host = env.add_host("file")
    env.release("a")
    v2 = env.register("b")                    # never promoted
    v3 = env.release("c")
    r = env.cli("sync", "rollback", "--to", str(v2), "--reason", "v3 is slow")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.tags(v3).get("deploy_status") == "rolled_back"
    assert env.tags(v2).get("deploy_status") == "deployed"
    again = env.cli("sync", "rollback", "--reason", "v2 too")
    assert again.returncode == 0, again.stderr
    assert "finishing the rollback" not in again.stderr and env.production() != v2


@pytest.mark.parametrize("phase", ["promotion:after_alias", "after:switch"])
def test_a_sync_rollback_killed_before_its_tags_shows_who_rolled_back_once_deployed(deploy_env, paused_deploy,
                                                                                       phase):
    """Found by the kill sweep of 2026-12-06 (tenth stop): `sync rollback` (v3 -> v2) SIGKILLed
    once its move was made (alias moved, or hosts switched), before its deferred view: the rerun
    is refused ("`mlops sync deploy` installs v2") and the deploy finished the rollout and tagged
    v3 rolled_back, but v2's `approved_by` still named whoever promoted it first, so `registry
    status` said the tag "was changed outside mlops". The deploy that finishes the rollback now
    writes the rollback's view (its approver) when the tags do not show it yet."""
    env = deploy_env
    hosts = env.add_hosts(2, "file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    args = ("--reason", "v3 is slow", "--actor", "oncall-bob")
    paused_deploy(env.env, phase, *args, command=("sync", "rollback")).wait_paused().kill()
    assert env.production() == v2

    again = env.cli("sync", "rollback", *args)
    assert again.returncode != 0 and f"`mlops sync deploy` installs v{v2}" in again.stderr, again.stderr
    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 0, r.stderr
    for h in hosts:
        env.serves(h, v2)
    assert env.tags(v3).get("deploy_status") == "rolled_back" and env.tags(v2).get("deploy_status") == "deployed"
    assert env.tags(v2).get("approved_by") == "oncall-bob", env.tags(v2)
    status = env.cli("registry", "status")
    assert status.returncode == 0 and "changed outside mlops" not in status.stdout + status.stderr, status.stdout
    assert env.deploy().status == "up_to_date"
    further = env.cli("sync", "rollback", "--reason", "v2 too")        # a rollback is one step again
    assert further.returncode == 0, further.stderr
    assert env.production() == v1
