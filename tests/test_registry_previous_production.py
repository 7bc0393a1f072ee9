"""Where ``production`` goes back to, and which failures count against a version.

Found in review: a failure that did not blame a version (an upload, a lost lock) made
``mlops sync watch`` skip it for good once it had failed before; a failed deploy whose previous
production had been deleted from the registry left production on the failed version, untagged,
and a watcher deployed it again at every pass; production went back to a version promoted and
replaced before any deploy (hosts put back to v3, production to v5, which never ran); and
retention deleted, from every host, the version the registry would roll back to next. Pure
rules on ledger rows, and the deploys that follow them (real MLflow, a real local server).
"""
from __future__ import annotations

from registry.ledger import Entry
from registry.promotion_rules import failed_after_promotion, latest_deploys, previous_production

M = "digits"


def _e(action, frm, to, outcome="ok", **details):
    return Entry(action=action, model=M, outcome=outcome, from_version=frm, to_version=to, details=details)


def test_a_failure_that_left_the_registry_unchanged_judges_nothing():
    rows = [_e("promote", 1, 2), _e("deploy", 1, 2, "failed"), _e("promote", 1, 2),
            _e("deploy", 1, 2, "failed", step="publish", registry_unchanged=True)]
    assert not failed_after_promotion(rows, 2)               # promoted again: retried, not skipped
    assert failed_after_promotion(rows[:2], 2)
    ok_then_upload_failed = [_e("deploy", 1, 3), _e("deploy", 1, 3, "failed", registry_unchanged=True)]
    assert latest_deploys(ok_then_upload_failed) == {3: "ok"}  # still a good rollback target


def test_a_rollback_to_a_version_makes_it_production_again_like_a_promotion():
    rows = [_e("promote", 1, 3), _e("deploy", 1, 3, "failed"), _e("rollback", 3, 1), _e("rollback", 1, 3)]
    assert not failed_after_promotion(rows, 3)
    assert failed_after_promotion(rows[:3], 3)


def test_previous_production_prefers_a_version_that_was_deployed():
    rows = [_e("promote", None, 3), _e("deploy", None, 3), _e("promote", 3, 5), _e("promote", 5, 6),
            _e("deploy", 3, 6, "failed")]
    assert previous_production(rows, 6, {6}) == 3             # 5 never ran on the hosts
    registry_only = [_e("promote", None, 3), _e("promote", 3, 5), _e("promote", 5, 6)]
    assert previous_production(registry_only, 6) == 5         # no deploys at all: the newest
    assert previous_production(rows + [_e("deploy", 3, 5)], 6, {6}) == 5


def test_previous_production_skips_versions_deleted_from_the_registry():
    rows = [_e("promote", None, 1), _e("deploy", None, 1), _e("promote", 1, 2), _e("deploy", 1, 2),
            _e("promote", 2, 3)]
    assert previous_production(rows, 3) == 2
    assert previous_production(rows, 3, existing={1, 3}) == 1
    assert previous_production(rows, 3, existing={3}) is None


def test_a_failed_deploy_whose_previous_production_was_deleted_goes_back_further(deploy_env):
    from registry.client import tracking_client

    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.release("b")
    v3 = env.register("golden_edited")                    # its smoke test fails
    env.promote(v3)
    tracking_client().delete_model_version(env.model, str(v2))   # a clean-up of the registry
    r = env.cli("sync", "deploy")
    assert r.returncode == 3, r.stderr
    assert f"production moved back to v{v1}" in r.stderr, r.stderr
    assert env.production() == v1 and env.tags(v3).get("deploy_status") == "failed"
    assert env.which(host) == v2                           # the host is as it was
    r = env.cli("sync", "watch", "--once")                  # restores v1; never v3 again
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)
    assert [e.to_version for e in env.ledger(("deploy",)) if e.outcome == "failed"] == [v3]


def test_retention_keeps_the_version_the_registry_would_roll_back_to(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    r = env.cli("registry", "rollback", "--reason", "v3 misbehaves")
    assert r.returncode == 0 and env.production() == v2, r.stderr
    r = env.cli("sync", "deploy", "--keep", "1")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    published = sorted(int(p.name) for p in (host.base / env.model).iterdir() if p.name.isdigit())
    assert v1 in published and v3 in published, published   # the next rollback: a switch, not an upload
    r = env.cli("registry", "rollback", "--reason", "v2 too")
    assert r.returncode == 0 and env.production() == v1, r.stderr


def test_a_rollout_that_did_not_finish_is_not_a_version_the_fleet_served():
    from registry.promotion_rules import deploy_verdict, restoring_rollback

    canary_ok = _e("deploy", 2, 3, final=False, deploy="d1")
    last_wave_ok = _e("deploy", 2, 3, final=True, deploy="d1")
    put_back = _e("deploy", 2, 3, "failed", step="production", registry_unchanged=True, switched_put_back=["h1"],
                  deploy="d1")
    assert [deploy_verdict(e) for e in (canary_ok, last_wave_ok, put_back)] == ["partial", "ok", "put_back"]
    assert deploy_verdict(_e("deploy", 2, 3)) == "ok"              # rows written before waves had a name
    assert deploy_verdict(_e("deploy", 2, 3, "failed", registry_unchanged=True)) is None
    history = [_e("promote", None, 2), _e("deploy", None, 2), _e("promote", 2, 3)]
    killed_after_canary = history + [canary_ok, _e("promote", 3, 4), _e("deploy", 3, 4, "failed")]
    stopped_after_canary = history + [canary_ok, put_back, _e("promote", 3, 4), _e("deploy", 2, 4, "failed")]
    for rows in (killed_after_canary, stopped_after_canary):
        assert latest_deploys(rows)[3] in ("partial", "put_back")
        assert previous_production(rows, 4, {4}) == 2             # the version the fleet served
        assert restoring_rollback(rows + [_e("rollback", 4, 3)], 3) is None
    finished = history + [canary_ok, last_wave_ok, _e("promote", 3, 4), _e("deploy", 3, 4, "failed")]
    assert previous_production(finished, 4, {4}) == 3
    assert restoring_rollback(finished + [_e("rollback", 4, 3)], 3) is not None


def test_a_put_back_undoes_only_its_own_deploys_rows():
    """Found in review: a put-back undid every ok row of its version, so a version the whole fleet
    served lost its "deployed" once a later deploy of it (new hosts, another fleet) was put back."""
    from registry.promotion_rules import failed_after_promotion, last_verdict

    served = [_e("promote", None, 2), _e("deploy", None, 2, final=True, deploy="d1")]
    later_put_back = [_e("deploy", None, 2, final=False, deploy="d2"),
                      _e("deploy", None, 2, "failed", registry_unchanged=True, switched_put_back=["h3"], deploy="d2")]
    assert latest_deploys(served + later_put_back) == {2: "ok"}
    # another fleet failed the version while this deploy switched; this deploy's own rows are undone
    other_fleet_failed = served[:1] + [_e("deploy", 1, 2, "failed"), _e("deploy", 1, 2, final=True, deploy="d3"),
                                       _e("deploy", 1, 2, "failed", registry_unchanged=True,
                                          switched_put_back=["h1"], deploy="d3")]
    assert latest_deploys(other_fleet_failed) == {2: "failed"}
    assert failed_after_promotion(other_fleet_failed, 2)
    # failed, then deployed in full (a flaky smoke test; the rerun passed): not failed any more
    rerun_ok = [_e("promote", 1, 2), _e("deploy", 1, 2, "failed"), _e("deploy", 1, 2, final=True, deploy="d4")]
    assert last_verdict(rerun_ok, 2) == "ok" and not failed_after_promotion(rerun_ok, 2)
    assert last_verdict(rerun_ok + later_put_back, 2) == "ok"


def test_one_rollback_choice_for_registry_rollback_and_a_failed_deploy():
    from registry.promotion_rules import RollbackChoice, rollback_choice

    rows = [_e("promote", None, 1), _e("deploy", None, 1), _e("promote", 1, 2), _e("deploy", 1, 2),
            _e("promote", 2, 3), _e("deploy", 2, 3, "failed"), _e("promote", 3, 4)]
    tags = {1: {}, 3: {}, 4: {}}                                    # v2 deleted from the registry since
    assert rollback_choice(rows, tags, 4) == RollbackChoice(1, skipped_failed=(3,), skipped_deleted=(2,))
    assert rollback_choice(rows, {1: {"deploy_status": "failed"}, 3: {}, 4: {}}, 4) == \
        RollbackChoice(None, skipped_failed=(1, 3), skipped_deleted=(2,))
