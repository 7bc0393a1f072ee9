"""The MLflow server flaky, failing or gone: retried with backoff within a bound, or one clear
line and nothing half-done in the registry.

A loopback HTTP proxy (``http_fault_proxy``) stands in front of the session's real MLflow server
and answers 503 to chosen requests: every third one (flaky), every one (down for good), or only
the alias write or the tag writes of a promotion. The code under test reaches MLflow only through
the proxy (``MLFLOW_TRACKING_URI``); its retries are bounded by MLflow's own settings, set short
here (2 retries, backoff factor 0: the tries are counted here, the waits between them are
``registry.rest.retry_delay``'s, unit-tested in test_registry_rest.py) so the suite stays fast.
"""
from __future__ import annotations

import json

import pytest

from tests.fixtures.faults import final_error_line, one_error_line, registry_snapshot, tree_bytes

BOUNDED = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
TRIES = 1 + int(BOUNDED["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])


def via(proxy) -> dict:
    return {"MLFLOW_TRACKING_URI": proxy.url, **BOUNDED}


def ledger_rows(env) -> list[tuple]:
    return [(e.id, e.action, e.outcome, e.from_version, e.to_version, e.host) for e in env.ledger()]


def alias_write(method: str, path: str) -> bool:
    return method == "POST" and path.startswith("/api/2.0/mlflow/registered-models/alias")


def tag_write(method: str, path: str) -> bool:
    return method == "POST" and path.startswith("/api/2.0/mlflow/model-versions/set-tag")


@pytest.mark.slow
def test_a_flaky_server_is_retried_through_register_promote_deploy_and_status(
        deploy_env, http_fault_proxy, mlflow_server, monkeypatch):
    env = deploy_env
    host = env.add_host("file")
    proxy = http_fault_proxy(mlflow_server, fail_every=4)        # every fourth request: 503
    for k, v in via(proxy).items():
        monkeypatch.setenv(k, v)                                 # the in-process MLflow client too
    v = env.register("a")                                        # MLflow's own client and retries
    for args in (("registry", "promote", "--version", str(v)), ("sync", "deploy"), ("sync", "status")):
        r = env.cli(*args, extra_env=via(proxy))                 # our REST client and its retries
        assert r.returncode == 0, f"{args}: {r.stderr}"
    env.serves(host, v)
    print(f"{len(proxy.failed)} of {proxy.seen} requests answered 503")
    assert len(proxy.failed) >= 8, proxy.failed                  # the faults really happened
    assert env.production() == v and env.tags(v)["deploy_status"] == "deployed"
    rows = [(e.action, e.outcome, e.to_version) for e in env.ledger(("promote", "deploy"))]
    assert rows == [("promote", "ok", v), ("deploy", "ok", v)]   # each move recorded exactly once


def test_a_server_that_keeps_failing_ends_in_one_line_after_bounded_retries_and_changes_nothing(
        deploy_env, http_fault_proxy, mlflow_server):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.register("a")
    env.promote(v1)
    proxy = http_fault_proxy(mlflow_server, fail_always=True)
    before = registry_snapshot(env.model), ledger_rows(env), tree_bytes(host.base)
    r = env.cli("registry", "status", extra_env=via(proxy))
    line = one_error_line(r.stderr)
    assert r.returncode != 0 and "kept answering HTTP 503" in line and f"after {TRIES} tries" in line, line
    assert len(proxy.failed) == TRIES                            # bounded: then it stops and says so
    for args in (("sync", "deploy"), ("registry", "promote", "--version", str(v1)), ("registry", "rollback")):
        r = env.cli(*args, extra_env=via(proxy))
        line = one_error_line(r.stderr)
        assert r.returncode != 0 and "HTTP 503" in line and "it is up but failing" in line, (args, line)
    assert (registry_snapshot(env.model), ledger_rows(env), tree_bytes(host.base)) == before
    proxy.set()                                                  # MLflow is healthy again
    r = env.cli("sync", "deploy", extra_env=via(proxy))
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)


def test_the_alias_write_failing_leaves_production_and_the_ledger_as_they_were(
        deploy_env, http_fault_proxy, mlflow_server):
    env = deploy_env
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    proxy = http_fault_proxy(mlflow_server, fail_always=True, match=alias_write)
    before = registry_snapshot(env.model), ledger_rows(env)
    r = env.cli("registry", "promote", "--version", str(v2), extra_env=via(proxy))
    line = one_error_line(r.stderr)
    assert r.returncode != 0 and "HTTP 503" in line, line
    assert len(proxy.failed) == TRIES
    # nothing half-done: the registry is as it was; the ledger shows the attempt (its intent row,
    # committed before the call) closed as failed because MLflow says the alias did not move
    assert registry_snapshot(env.model) == before[0]
    added = ledger_rows(env)[len(before[1]):]
    assert [(a, o, f, t) for _, a, o, f, t, _ in added] == [("intent", "pending", v1, v2), ("intent", "failed", v1, v2)]
    closed = env.ledger(("intent",))[-1].details     # and when MLflow created the model (the cut's stamp)
    assert closed == {"intent": added[0][0], "model_created_ms": closed.get("model_created_ms"),
                      "server_ms": closed.get("server_ms")}      # and when, on the server's clock
    assert isinstance(closed["model_created_ms"], int) and isinstance(closed["server_ms"], int), closed
    assert env.production() == v1
    proxy.set()
    r = env.cli("registry", "promote", "--version", str(v2), extra_env=via(proxy))
    assert r.returncode == 0, r.stderr
    assert env.production() == v2 and env.ledger(("promote",))[-1].from_version == v1


def test_the_tag_writes_failing_after_the_move_say_what_happened_and_a_rerun_completes(
        deploy_env, http_fault_proxy, mlflow_server):
    env = deploy_env
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    proxy = http_fault_proxy(mlflow_server, fail_always=True, match=tag_write)
    r = env.cli("registry", "promote", "--version", str(v2), extra_env=via(proxy))
    line = final_error_line(r.stderr)           # after the line saying it promoted
    assert r.returncode != 0 and f"production of '{env.model}' is v{v2}" in line, line
    assert "could not be written" in line and f"mlops registry promote --version {v2}" in line
    # the move and its ledger row agree (the ledger is the record; the tags are a view of it)
    row = env.ledger(("promote",))[-1]
    assert env.production() == v2 and (row.outcome, row.from_version, row.to_version) == ("ok", v1, v2)
    assert "approved_by" not in env.tags(v2)
    proxy.set()
    r = env.cli("registry", "promote", "--version", str(v2), extra_env=via(proxy))
    assert r.returncode == 0, r.stderr
    assert env.tags(v2)["approved_by"] and env.production() == v2


@pytest.mark.slow
def test_mlflow_failing_after_the_switch_leaves_the_host_serving_and_the_rerun_records_it(
        deploy_env, http_fault_proxy, mlflow_server, paused_deploy):
    env = deploy_env
    host = env.add_host("file")
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    assert env.deploy().status == "deployed"
    env.promote(v2)
    proxy = http_fault_proxy(mlflow_server)
    traffic = env.traffic(host)
    deploy = paused_deploy({**env.env, **via(proxy)}, "after:switch").wait_paused()
    proxy.set(fail_always=True)                                  # MLflow goes away now
    r = deploy.finish()
    line = final_error_line(r.stderr)
    assert r.returncode == 2 and f"v{v2} of '{env.model}' now serves on {host.name}" in line, line
    assert "could not record deploy_status=deployed" in line and "rerun `mlops sync deploy`" in line
    env.serves(host, v2)                                         # the host is fine
    assert env.tags(v2).get("deploy_status") is None
    proxy.set()
    r = env.cli("sync", "deploy", extra_env=via(proxy))
    traffic.stop()
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    assert env.tags(v2)["deploy_status"] == "deployed"           # the registry converged
    assert traffic.failures == [] and set(traffic.answers["stable"]) <= {v1, v2}
    assert env.cli("sync", "status").returncode == 0


@pytest.mark.slow
def test_mlflow_failing_before_the_switch_puts_the_host_back_without_blaming_the_version(
        deploy_env, http_fault_proxy, mlflow_server, paused_deploy):
    """Production is read before each wave. MLflow failing there put the host back (right: the
    deploy cannot know production still names v2) but wrote a `deploy failed` row against v2,
    so every `sync watch` pass after it skipped v2 for good while production said v2."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    proxy = http_fault_proxy(mlflow_server)
    deploy = paused_deploy({**env.env, **via(proxy)}, "after:smoke_validation").wait_paused()
    proxy.set(fail_always=True)                                  # MLflow goes away now
    r = deploy.finish()
    proxy.set()
    assert r.returncode == 3 and "not the version" in final_error_line(r.stderr), r.stderr[-1500:]
    env.serves(host, v1)                                         # put back
    assert env.production() == v2 and env.tags(v2).get("deploy_status") is None
    w = env.cli("sync", "watch", "--once", "--json")
    assert w.returncode == 0 and json.loads(w.stdout)["passes"][0]["status"] == "deployed", w.stdout + w.stderr
    env.serves(host, v2)


def test_reconcile_whose_tag_writes_fail_says_so_and_its_rerun_writes_them(
        deploy_env, http_fault_proxy, mlflow_server):
    """The reconcile of a move made in the MLflow UI committed its ledger row, then its tag writes
    failed and it said "check its log, then rerun"; the rerun found the ledger in agreement and
    wrote nothing, so the version never showed its approver."""
    from registry import versions

    env = deploy_env
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    versions.set_alias(env.model, versions.PRODUCTION, v2)              # moved in the MLflow UI
    proxy = http_fault_proxy(mlflow_server, fail_always=True, match=tag_write)
    r = env.cli("registry", "reconcile", "--actor", "bob", extra_env=via(proxy))
    line = final_error_line(r.stderr)
    assert r.returncode == 2 and f"records production of '{env.model}' at v{v2}" in line, line
    assert "rerun `mlops registry reconcile`" in line and "approved_by" not in env.tags(v2)
    rows = env.ledger(("promote",))
    proxy.set()
    r = env.cli("registry", "reconcile", "--actor", "bob", extra_env=via(proxy))
    assert r.returncode == 0 and "written again" in r.stdout, r.stdout + r.stderr
    assert env.tags(v2)["approved_by"] == "unknown (moved outside mlops)"
    assert env.ledger(("promote",)) == rows                              # nothing recorded twice
    r = env.cli("registry", "reconcile", "--actor", "bob")
    assert r.returncode == 0 and "nothing recorded" in r.stdout and "written again" not in r.stdout


def test_reconcile_after_an_automatic_revert_leaves_the_approver_alone(deploy_env):
    """Found by review: the revert keeps its target's approver on purpose; reconcile took the
    revert row (the deploy runner, no approver) for a move whose tags lagged and rewrote it."""
    env = deploy_env
    env.add_host("file")
    v1 = env.release("a")
    approver = env.tags(v1)["approved_by"]
    bad = env.register("altered")
    env.promote(bad)
    r = env.cli("sync", "deploy")
    assert r.returncode == 3 and env.production() == v1, r.stderr
    r = env.cli("registry", "reconcile", "--actor", "bob")
    assert r.returncode == 0 and "written again" not in r.stdout, r.stdout
    assert env.tags(v1)["approved_by"] == approver
