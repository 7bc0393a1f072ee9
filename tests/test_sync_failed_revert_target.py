"""Where production goes when a deploy fails: back to what the hosts were put back to.

Two ways it named a version no host served (and the next deploy or watch pass would have rolled
that version out to the whole fleet, with no canary): a failed `sync rollback` moved production a
second step down, and one new host failing the version the rest of the fleet already served
moved production away from it.
"""
from __future__ import annotations

import shutil

from tests.fixtures.faults import final_error_line
from tests.lab.deploy_env import deploy_opts
from tests.test_sync_cli import deployed_v1_v2

SMOKE_FAILS = ("--latency-budget-ms", "0.001")      # any failure that blames the version


def test_a_failed_rollback_puts_production_back_where_the_hosts_are(deploy_env):
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"      # v2 not loaded
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


def _drop_artifacts(model: str, v: int, part: str = "tfserving") -> None:
    """What a cleanup of the artifact store does to an old version: its run keeps no ``part``/."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from registry import versions

    run_id = versions.get_version(model, v).run_id
    get_artifact_repository(versions.artifact_root(run_id)).delete_artifacts(part)


def test_a_rollback_to_a_version_whose_artifacts_are_gone_moves_nothing(deploy_env):
    """Found by a rollback review (2026-12-06): `sync rollback --to 1`, v1's artifacts deleted from
    the store and v1 not on the hosts: production moved to v1 first, then the download failed —
    the hosts kept serving v3, production named v1, the message said to restore the artifacts
    or register a new version (not `--to` another version), and `sync rollback` was then refused.
    The artifacts are listed before production moves now: refused in one line, nothing moved."""
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"      # v1, v2 not loaded
    shutil.rmtree(host.base / env.model / str(v1))                            # nor on the host's disk
    _drop_artifacts(env.model, v1)
    r = env.cli("sync", "rollback", "--to", str(v1), "--reason", "v3 is bad")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    line = final_error_line(r.stderr)
    assert env.production() == v3, line
    assert f"v{v1}" in line and "--to" in line, line
    assert not [e for e in env.ledger(("rollback",)) if e.outcome == "ok"], "a rollback was recorded"
    env.serves(host, v3)
    r = env.cli("sync", "rollback", "--to", str(v2), "--reason", "v3 is bad")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)


def test_a_registry_rollback_to_a_version_whose_artifacts_are_gone_moves_nothing(deploy_env):
    """Found by a rollback review (2026-12-06, seventeenth stop): `mlops registry rollback` — the
    CircleCI rollback job's step, `sync deploy` after it — moved production to a version whose
    artifacts were deleted from the store; the deploy then failed on the download. It makes the
    same check as `sync rollback` now (`promotion.artifacts_check`): refused in one line, nothing
    moved. It does not know the hosts, so any file gone refuses, the previous version's too."""
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"
    _drop_artifacts(env.model, v1)
    _drop_artifacts(env.model, v2, "golden")
    for args in (("--to", str(v1)), ()):            # named, and the previous production (v2)
        r = env.cli("registry", "rollback", *args, "--reason", "v3 is bad")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        line = final_error_line(r.stderr)
        gone = v1 if args else v2
        assert f"back to v{gone}: its artifacts are gone" in line and "`mlops registry rollback --to N`" in line, line
        assert env.production() == v3, line
    assert not [e for e in env.ledger(("rollback",)) if e.outcome == "ok"], "a rollback was recorded"
    assert len([e for e in env.ledger(("rollback",)) if e.outcome == "refused"]) == 2
    assert "sync rollback --to" in final_error_line(
        env.cli("registry", "rollback", "--to", str(v1), "--reason", "v3 is bad").stderr)   # only tfserving/ gone
    env.serves(host, v3)


def test_a_rollback_to_a_version_still_on_the_hosts_needs_no_savedmodel_in_the_store(deploy_env):
    """The check above refuses only what a host would need: v1 kept on the host (the previous
    version), its SavedModel gone from the store, its golden set there — the rollback switches."""
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    _drop_artifacts(env.model, v1)
    r = env.cli("sync", "rollback", "--reason", "v2 is bad")
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)


def test_a_rollback_whose_hosts_cannot_all_be_observed_names_the_host_not_one_that_needs_the_files(deploy_env):
    """Found by review (2026-12-07, twenty-second stop): v1's SavedModel gone from the artifact
    store, one of two hosts' TF Serving down: `sync rollback` refused saying "a host would need
    them", while both hosts keep v1 loaded; what it could not tell was whether the host it could
    not observe needs them, and the line named neither that host nor what to fix (the registry's
    check let such a failure through silently, as if checked). The refusal now says the check
    could not be made and why, naming the host; without that host, the rollback switches."""
    env = deploy_env
    (up, down), v1, v2 = deployed_v1_v2(env, hosts=2)
    _drop_artifacts(env.model, v1)
    down.server.stop()
    r = env.cli("sync", "rollback", "--reason", "v2 is bad")
    line = final_error_line(r.stderr)
    assert r.returncode == 2 and f"back to v{v1}: its artifacts are gone" in line, line
    assert "and a host would need them" not in line, line
    assert f"whether a host would need them could not be checked ({down.name}: " in line, line
    assert "nothing was changed: rerun once it can be, " in line, line
    assert env.production() == v2
    env.serves(up, v2)
    env.write_hosts_file([up])                          # the host that answers keeps v1 loaded
    r = env.cli("sync", "rollback", "--reason", "v2 is bad")
    assert r.returncode == 0, r.stderr
    env.serves(up, v1)


def test_a_rollback_to_a_version_on_the_host_disk_needs_no_savedmodel_in_the_store(deploy_env):
    """Found by a rollback review (2026-12-06, seventeenth stop): v2 on the host's disk but not
    loaded, its SavedModel gone from the store: `sync rollback` was refused ("a host would need
    them"), though the deploy verifies that copy against the registration and downloads nothing
    (``fleet_fetch.fetch``). The check asks what ``fetch`` asks now: refused only while some host
    would download the version (here a new, empty host), switched once none would."""
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"      # v2 on disk, not loaded
    _drop_artifacts(env.model, v2)
    empty = env.add_host("file")
    r = env.cli("sync", "rollback", "--reason", "v3 is bad")
    line = final_error_line(r.stderr)
    assert r.returncode != 0 and f"back to v{v2}: its artifacts are gone" in line, line
    assert env.production() == v3 and env.label(empty) is None
    env.write_hosts_file([host])                        # only the host that has v2
    r = env.cli("sync", "rollback", "--reason", "v3 is bad")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.production() == v2


def test_a_rollback_refused_on_a_damaged_host_copy_says_where_production_and_the_hosts_stand(deploy_env):
    """Found by a rollback review (2026-12-06, seventeenth stop): a rollback whose publish step
    is refused (the host's copy of v2 damaged) leaves production on v2 while the host is put
    back on v3 — by design, as for any failed upload (nothing says v2 is bad: not tagged failed,
    not skipped by the next rollback), but the last line said "production left at v2 (the upload
    failed ...)". It says where production and the hosts stand and what to run now."""
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"      # v2 on disk, not loaded
    with open(host.base / env.model / str(v2) / "saved_model.pb", "ab") as f:
        f.write(b"damage")
    r = env.cli("sync", "rollback", "--reason", "v3 is bad")
    line = final_error_line(r.stderr)
    assert r.returncode == 3, line
    env.serves(host, v3)
    assert env.production() == v2 and env.tags(v2)["deploy_status"] != "failed", line
    assert (f"production is v{v2} in the registry (rolled back from v{v3}) but no host serves it: "
            f"{host.name} serves v{v3}") in line, line
    assert f"`mlops sync deploy` installs v{v2}" in line and "`mlops sync rollback --to N`" in line, line
    # nothing was uploaded (the host's own copy was refused): the reason says publishing, not an upload
    assert f"v{v2} is not blamed (publishing it to {host.name} failed, not the version)" in line, line
    shutil.rmtree(host.base / env.model / str(v2))      # what the publish step's own words say to do
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.tags(v3)["deploy_status"] == "rolled_back"


def test_a_rollback_to_a_version_on_the_host_disk_verifies_it_against_the_registration_not_a_download(
        deploy_env, tmp_path):
    """Found by a rollback review (2026-12-06, seventeenth stop): a version on the host's disk but
    not loaded was downloaded again in full for a rollback, only to compare the host's copy with
    the download. The host's stored manifest is compared with the SavedModel hashes recorded at
    registration now: v1's SavedModel rewritten in the store (a download would be refused as not
    the one registered) — the rollback to v1 serves the host's copy, which matches the record. A
    damaged host copy (v2's) is still never served: its publish step refuses it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from registry import versions

    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"      # v1, v2 on disk, not loaded
    assert (host.base / env.model / str(v1)).is_dir() and (host.base / env.model / str(v2)).is_dir()
    with open(host.base / env.model / str(v2) / "saved_model.pb", "ab") as f:
        f.write(b"damage")                                                    # the host's copy of v2
    r = env.cli("sync", "rollback", "--to", str(v2), "--reason", "v3 is bad")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"{env.model}/{v2} already exists but differs" in r.stderr, r.stderr
    env.serves(host, v3)                                # put back: the damaged copy never served
    junk = tmp_path / "saved_model.pb"
    junk.write_bytes(b"not the SavedModel registered")
    run_id = versions.get_version(env.model, v1).run_id
    get_artifact_repository(versions.artifact_root(run_id)).log_artifact(str(junk), "tfserving")
    r = env.cli("sync", "rollback", "--to", str(v1), "--reason", "v3 is bad")
    assert r.returncode == 0, r.stderr                  # the download would fail: not the one registered
    env.serves(host, v1)


def test_a_rollback_rerun_after_a_host_lock_refused_its_deploy_says_so(deploy_env):
    """Found by a rollback review (2026-12-06): a `sync rollback` whose deploy was refused on
    another deploy's host lock (production moved, no host changed), run again: refused saying the
    last rollback was "interrupted, or made with `registry rollback`" — neither was true. It says
    what happened now (its deploy did not install it) and what to run."""
    from serving_sync.lock import HostLock
    from serving_sync.transports.local import LocalTransport

    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    other = HostLock(LocalTransport(host.base), purpose="deploy")
    other.acquire()                                     # another deploy holds the host
    try:
        r = env.cli("sync", "rollback", "--reason", "v2 is slow")
    finally:
        other.release()
    assert r.returncode != 0 and env.production() == v1, r.stderr
    env.serves(host, v2)
    r = env.cli("sync", "rollback", "--reason", "v2 is slow")
    line = final_error_line(r.stderr)
    assert r.returncode != 0 and env.production() == v1, r.stderr
    assert "interrupted, or made with" not in line, line
    assert "the deploy of its `sync rollback` recorded no rollout: it was refused (e.g. on another deploy's " \
           "host lock" in line, line
    assert "`mlops sync deploy` installs" in line, line
    assert env.cli("sync", "deploy").returncode == 0
    env.serves(host, v1)


def test_a_deploy_after_two_rollbacks_names_the_version_the_hosts_served(deploy_env):
    """Found by a rollback review (2026-12-06): v3 -> v2 and v2 -> v1 before one deploy (two
    `registry rollback`s, then CircleCI's deploy job): `sync plan`, the deploy's line and its
    ``--json`` (``restore.rolled_back_from``) said "rolled back from v2" — the newest rollback's
    version — while the hosts served v3, the one this deploy takes them off."""
    import json

    from registry import promotion

    env = deploy_env
    h1, h2 = env.add_hosts(2, "file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    assert promotion.rollback(env.model, reason="v3 is slow", actor="oncall").to_version == v2   # not deployed
    assert promotion.rollback(env.model, reason="v2 too", actor="oncall").to_version == v1
    r = env.cli("sync", "plan")
    assert r.returncode == 0, r.stderr
    assert f"restore: production was rolled back from v{v3} to this version" in r.stdout, r.stdout
    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restore"]["rolled_back_from"] == v3
    assert f"restores production (rolled back from v{v3})" in r.stderr, r.stderr[-3000:]
    env.serves(h1, v1)
    env.serves(h2, v1)


def test_a_second_rollback_after_the_first_was_rolled_out_names_the_version_the_hosts_served(deploy_env):
    """Found by a rollback review (2026-12-07, nineteenth stop): `sync rollback` v3 -> v2, rolled out,
    then `sync rollback` again (v2 -> v1): its line and ``--json`` (``restore.rolled_back_from``) said
    "rolled back from v3" — the chain of rollbacks before one deploy went on past a rollback that
    had reached the hosts — while they served v2, the one this rollback takes them off."""
    import json

    env = deploy_env
    h1, h2 = env.add_hosts(2, "file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    r = env.cli("sync", "rollback", "--reason", "v3 is slow")
    assert r.returncode == 0, r.stderr
    assert f"restores production (rolled back from v{v3})" in r.stderr, r.stderr[-3000:]
    r = env.cli("sync", "rollback", "--reason", "v2 too", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["registry"]["from_version"], doc["registry"]["to_version"]) == (v2, v1)
    assert doc["deploy"]["restore"]["rolled_back_from"] == v2, doc["deploy"]["restore"]
    assert f"restores production (rolled back from v{v2})" in r.stderr, r.stderr[-3000:]
    env.serves(h1, v1)
    env.serves(h2, v1)
    assert env.tags(v2)["deploy_reason"] == "v2 too" and env.tags(v3)["deploy_reason"] == "v3 is slow"


def test_a_rollback_refused_on_a_host_lock_names_the_deploy_that_takes_it_over(deploy_env):
    """Found by a rollback review (2026-12-07, nineteenth stop): a `sync rollback` whose deploy met
    another deploy's host lock after production moved said "if you are sure it is dead, rerun with
    --break-lock T": the rerun of that `sync rollback` is refused (its rollback has no deploy since),
    so the on-call person's next step failed too. The line names `mlops sync deploy --break-lock T`."""
    import contextlib
    import re

    from serving_sync.lock import HostLock
    from serving_sync.transports.local import LocalTransport

    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    other = HostLock(LocalTransport(host.base), purpose="deploy")
    other.acquire()                                     # a deploy that died holding the host's lock
    try:
        r = env.cli("sync", "rollback", "--reason", "v2 is slow")
        line = final_error_line(r.stderr)
        assert r.returncode == 2 and env.production() == v1, r.stderr
        assert f"production is v{v1} in the registry now" in line, line
        assert "rerun with --break-lock" not in line, line
        token = re.search(r"`mlops sync deploy --break-lock (\S+)` takes it over", line)
        assert token is not None, line
        r = env.cli("sync", "deploy", "--break-lock", token.group(1))      # as the line says
    finally:
        with contextlib.suppress(Exception):        # taken over by then: its heartbeat thread stops
            other.release()
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)
    assert env.tags(v2)["deploy_status"] == "rolled_back"


def test_a_failed_sync_rollbacks_json_is_the_rollbacks_document(deploy_env):
    """Found by a rollback review (2026-12-07, nineteenth stop): `sync rollback --json` that failed
    once production had moved printed the deploy's document (a failed smoke test: its `registry`
    the revert, not the rollback) or nothing at all (its deploy refused on a host lock): a script
    could not tell that the registry had moved, from what to what, nor read `served_version` or
    `registry` where the success's document has them. It prints the rollback's document now,
    with `error` its line and `deploy` null when the deploy had no result."""
    import json

    from serving_sync.lock import HostLock
    from serving_sync.transports.local import LocalTransport

    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"      # v2 not loaded
    r = env.cli("sync", "rollback", "--reason", "v3 is bad", "--json", *SMOKE_FAILS)
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["registry"]["action"], doc["registry"]["from_version"], doc["registry"]["to_version"]) == \
        ("rollback", v3, v2), doc.get("registry")
    assert doc["deploy"]["status"] == "failed" and doc["deploy"]["version"] == v2
    assert doc["served_version"] is None and doc["superseded"] is False
    assert "error: " + doc["error"] == final_error_line(r.stderr)
    env.serves(host, v3)
    other = HostLock(LocalTransport(host.base), purpose="deploy")
    other.acquire()                                     # another deploy holds the host
    try:
        r = env.cli("sync", "rollback", "--reason", "v3 is still bad", "--json")
    finally:
        other.release()
    assert r.returncode == 2 and env.production() == v1, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["registry"]["from_version"], doc["registry"]["to_version"]) == (v3, v1)
    assert doc["deploy"] is None and doc["served_version"] is None
    assert "error: " + doc["error"] == final_error_line(r.stderr)
    assert f"production is v{v1} in the registry now" in doc["error"]


def test_a_move_whose_artifact_listing_fails_says_it_was_not_checked_and_the_deploy_changes_nothing(
        deploy_env, http_fault_proxy):
    """Found by review (2026-12-07, twenty-first stop): when MLflow's artifact listing itself failed
    (the artifact store or its API answering 503), `promotion.artifacts_check` let the move go ahead
    in silence: `registry rollback --to 1` said `rolled back ... production 2 -> 1`, exit 0, as if v1's
    artifacts had been checked. It is left to the deploy (as designed), but a warning says the check
    was not made; the deploy's download then fails in one line before any host changes."""
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    empty = env.add_host("file")                     # has no v1: the deploy must download it
    proxy = http_fault_proxy(env.env["MLFLOW_TRACKING_URI"], fail_always=True,
                             match=lambda method, path: "artifacts" in path)
    # MLflow's client retries a 503 seven times with a growing back-off (half a minute here): one
    # retry, without back-off, still meets the failing listing every time
    failing = {"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
    r = env.cli("registry", "rollback", "--to", str(v1), "--reason", "v2 is bad", extra_env=failing)
    assert r.returncode == 0, r.stderr
    assert f"could not check that v{v1} of '{env.model}' still has its artifacts" in r.stderr, r.stderr
    assert "production moves without that check" in r.stderr, r.stderr
    assert env.production() == v1
    r = env.cli("sync", "deploy", extra_env=failing)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    line = final_error_line(r.stderr)
    assert f"downloading the artifacts of version {v1}" in line and "rerun" in line, line
    env.serves(host, v2)                             # nothing changed on any host
    assert env.label(empty) is None
    r = env.cli("sync", "deploy")                    # the artifact store answers again
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)
    env.serves(empty, v1)
