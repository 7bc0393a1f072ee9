"""Where production goes when a deploy fails: back to what the hosts were put back to.

Two ways it named a version no host served (and the next deploy or watch pass would have rolled
that version out to the whole fleet, with no canary): a failed `sync rollback` moved production a
second step down, and one new host failing the version the rest of the fleet already served
moved production away from it.
"""
from __future__ import annotations

from tests.test_sync_cli import deployed_v1_v2

SMOKE_FAILS = ("--latency-budget-ms", "0.001")      # any failure that blames the version


def test_a_failed_rollback_puts_production_back_where_the_hosts_are(deploy_env):
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.cli("sync", "deploy", "--no-keep-previous").returncode == 0      # v2 not loaded
    r = env.cli("sync", "rollback", "--reason", "v3 is bad", *SMOKE_FAILS)
    assert r.returncode == 3, r.stderr
    env.serves(host, v3)                                           # put back
    assert env.production() == v3, "production went two steps down, to a version no host serves"
    assert f"the rollback to v{v2} failed: production is v{v3} again" in r.stderr
    assert "--to N" in r.stderr
    assert env.tags(v2)["deploy_status"] == "failed" and env.tags(v3)["deploy_status"] == "deployed"
    row = [e for e in env.ledger(("deploy",)) if e.outcome == "failed"][-1]
    assert (row.from_version, row.to_version) == (v3, v2)         # what the host served, not the target
    assert "up to date" in env.cli("sync", "plan").stdout          # nothing to roll out
    # the next rollback skips the failed v2
    r = env.cli("sync", "rollback", "--reason", "v3 is still bad")
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)
    assert env.production() == v1


def test_one_new_host_failing_the_version_the_fleet_serves_leaves_production_alone(deploy_env):
    env = deploy_env
    (h1, h2), v1, v2 = deployed_v1_v2(env, hosts=2)
    h3 = env.add_host("file")
    r = env.cli("sync", "deploy", *SMOKE_FAILS)
    assert r.returncode == 3, r.stderr
    assert env.production() == v2 and env.tags(v2)["deploy_status"] == "deployed"
    assert f"v{v2} serves on {h1.name}, {h2.name}" in r.stderr and f"production left at v{v2}" in r.stderr
    env.serves(h1, v2)
    env.serves(h2, v2)
    assert env.label(h3) is None                                   # back as it was: nothing served
    r = env.cli("sync", "deploy")                                  # fixed (here: the budget): it resumes
    assert r.returncode == 0, r.stderr
    env.serves(h3, v2)


def test_a_circleci_rollback_job_run_again_still_tags_the_version_rolled_back_from(deploy_env, monkeypatch):
    """Found by review: a CircleCI rollback job run again (its deploy step failed before touching
    the hosts) records its rollback once more as a no-op row (v2 -> v2, ``rerun_of``). The deploy
    after it took that row for the rollback it restores: "rolled back from v2", so v3 was never
    tagged rolled_back and stayed `deployed` for good."""
    from registry import promotion

    env = deploy_env
    host = env.add_host("file")
    _, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    monkeypatch.setenv("CIRCLE_PIPELINE_ID", "pipe-rollback")
    assert promotion.rollback(env.model, reason="v3 is slow", actor="ci").to_version == v2
    again = promotion.rollback(env.model, reason="v3 is slow", actor="ci")     # the job's rerun
    assert again.moved is False and env.production() == v2
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.tags(v3).get("deploy_status") == "rolled_back"
    assert env.tags(v2).get("deploy_status") == "deployed"


def test_a_canary_left_switched_by_a_killed_deploy_does_not_vouch_for_the_version(deploy_env, paused_deploy):
    """Found by review: a deploy SIGKILLed once its canary switched leaves that host on v2, unjudged
    (no bake, no full rollout). The rerun found it "up to date" and took it for a host already
    serving v2: a failed smoke test on the other host then blamed nothing — production stayed on
    v2, the canary kept serving it, and every rerun (or watch pass) tried again. Only a finished
    rollout (the ledger's verdict ``ok``) vouches for the version now."""
    env = deploy_env
    h1, h2 = env.add_hosts(2, "file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    deploy = paused_deploy(env.env, "after:verify", "--canary", "1").wait_paused()
    deploy.kill()
    assert env.label(h1) == v2 and env.label(h2) == v1            # the canary switched, nothing recorded

    r = env.cli("sync", "deploy", *SMOKE_FAILS)
    assert r.returncode == 3, r.stderr
    assert env.production() == v1, r.stderr
    assert env.tags(v2)["deploy_status"] == "failed"
    env.serves(h2, v1)
    r = env.cli("sync", "deploy")                                  # production's version everywhere again
    assert r.returncode == 0, r.stderr
    env.serves(h1, v1)
    env.serves(h2, v1)


def test_two_rollbacks_before_one_deploy_tag_both_versions_rolled_back_from(deploy_env):
    """Found by a rollback review (2026-12-06): a rollback whose deploy never reached the hosts
    (a host lock held, the older version's artifacts gone; or two `registry rollback`s, then the
    CircleCI deploy job) followed by another rollback: the deploy tagged only the newest rollback's
    version rolled back from. The version the hosts had served stayed `deployed` in the MLflow UI
    and `registry status`, though no host served it any more."""
    from registry import promotion

    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    assert promotion.rollback(env.model, reason="v3 is slow", actor="oncall").to_version == v2   # not deployed
    assert promotion.rollback(env.model, reason="v2 too", actor="oncall").to_version == v1
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)
    assert env.tags(v3).get("deploy_status") == "rolled_back", "v3 says deployed, no host serves it"
    assert env.tags(v3).get("deploy_reason") == "v3 is slow"
    assert env.tags(v2).get("deploy_status") == "rolled_back"
    assert env.tags(v1).get("deploy_status") == "deployed"
