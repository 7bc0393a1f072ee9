"""Rollback and revert-after-failed-deploy against a real MLflow server and the ledger."""
from __future__ import annotations

import json
import os

import pytest

from mlops_common.errors import NotFoundError, RefusedError
from registry import deploy_revert, promotion, versions
from registry.ledger import Ledger
from tests.helpers import run_mlops


@pytest.fixture
def four_versions(make_version):
    return [make_version(validation_status="passed") for _ in range(4)]


def prod(model: str) -> int | None:
    return versions.production_version(model)


def test_v1_v2_v3_deploy_failed_rollback_goes_to_v2_and_then_v1(four_versions):
    model = os.environ["MLOPS_MODEL_NAME"]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    led = Ledger()
    led.record("deploy", model, outcome="ok", to_version=2, host="web-1")
    led.record("deploy", model, outcome="failed", to_version=3, host="web-1", reason="smoke test failed")
    r = run_mlops("registry", "rollback", "--reason", "v3 broke the smoke test", "--actor", "bob", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["action"], doc["from_version"], doc["to_version"]) == ("rollback", 3, 2)
    assert prod(model) == 2
    row = led.entries(model)[-1]
    assert (row.action, row.from_version, row.to_version, row.actor, row.reason) == \
        ("rollback", 3, 2, "bob", "v3 broke the smoke test")
    info = versions.get_version(model, 2)
    assert info.tags["approved_by"] == "bob"
    assert "**Approved by:** bob (rollback v3 → v2 by bob" in info.description
    assert "reason: v3 broke the smoke test" in info.description
    assert "| #" in info.description and "web-1" in info.description   # its deploy per host
    # rolling back again goes one more step back, not forward to v3
    r = run_mlops("registry", "rollback", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to_version"] == 1 and prod(model) == 1
    r = run_mlops("registry", "rollback")
    assert r.returncode == 2
    assert "nothing to roll back to" in r.stderr and "Traceback" not in r.stderr
    assert prod(model) == 1


def test_rollback_skips_a_version_whose_deploy_failed(four_versions):
    model = os.environ["MLOPS_MODEL_NAME"]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    versions.set_tags(model, 3, {"deploy_status": "failed"})     # as the sync job tags it
    promotion.promote(model, 4, actor="alice")
    result = promotion.rollback(model, actor="bob", reason="v4 is slow")
    assert (result.from_version, result.to_version) == (4, 2)
    assert result.details["skipped_failed"] == [3]
    assert prod(model) == 2


def test_rollback_to_an_explicit_version_is_checked_like_a_promotion(four_versions, make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v5 = make_version(validation_status="failed")
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    r = run_mlops("registry", "rollback", "--to", "1", "--reason", "back to the known good one")
    assert r.returncode == 0, r.stderr
    assert prod(model) == 1
    with pytest.raises(RefusedError, match="validation_status=failed"):
        promotion.rollback(model, to=v5, actor="bob")
    with pytest.raises(RefusedError, match="already holds production"):
        promotion.rollback(model, to=1, actor="bob")
    with pytest.raises(NotFoundError, match="version 42 of registered model"):
        promotion.rollback(model, to=42, actor="bob")
    assert prod(model) == 1
    rows = [(e.action, e.to_version, e.outcome) for e in Ledger().entries(model) if e.action == "rollback"]
    assert rows == [("rollback", 1, "ok"), ("rollback", v5, "refused")]


def test_nothing_to_roll_back_to(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed")
    with pytest.raises(NotFoundError, match="nothing to roll back to"):
        promotion.rollback(model, actor="bob")
    promotion.promote(model, 1, actor="alice")
    r = run_mlops("registry", "rollback")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: nothing to roll back to for '{model}': the ledger shows no earlier production version than 1")


def test_revert_failed_deploy_moves_production_back_and_records_it(four_versions):
    model = os.environ["MLOPS_MODEL_NAME"]
    promotion.promote(model, 1, actor="alice")
    promotion.promote(model, 2, actor="alice")
    result = deploy_revert.revert_failed_deploy(model, 2, 1, "smoke test: predictions differ", actor="deployer",
                                            host="web-1")
    assert result.moved and prod(model) == 1
    info = versions.get_version(model, 2)
    assert info.tags["deploy_status"] == "failed"
    assert info.tags["deploy_reason"] == "smoke test: predictions differ"
    rows = Ledger().entries(model)[-3:]
    assert [(e.action, e.from_version, e.to_version, e.outcome, e.host) for e in rows] == \
        [("deploy", 1, 2, "failed", "web-1"), ("intent", 2, 1, "pending", "web-1"),
         ("rollback", 2, 1, "ok", "web-1")]
    assert rows[2].details["intent"] == rows[1].id           # the move closes its intent
    # a later manual rollback never lands on the failed version, and there is nothing older than v1
    with pytest.raises(NotFoundError, match="nothing to roll back to"):
        promotion.rollback(model, actor="bob")


def test_revert_leaves_a_newer_promotion_alone(four_versions):
    model = os.environ["MLOPS_MODEL_NAME"]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    # the deploy of v2 failed, but v3 was promoted meanwhile: do not clobber it
    result = deploy_revert.revert_failed_deploy(model, 2, 1, "deploy of v2 failed", actor="deployer")
    assert not result.moved and prod(model) == 3
    last = Ledger().entries(model)[-1]
    assert (last.action, last.outcome) == ("rollback", "refused") and "production is version 3" in last.reason
    assert versions.get_version(model, 2).tags["deploy_status"] == "failed"


def test_revert_of_the_very_first_deploy_removes_production(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed")
    promotion.promote(model, 1, actor="alice")
    result = deploy_revert.revert_failed_deploy(model, 1, None, "first deploy failed")
    assert result.moved and prod(model) is None


def test_status_shows_aliases_statuses_accuracy_and_age(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed", metrics={"heldout_accuracy": 0.9512})
    make_version(validation_status="failed", metrics={"heldout_accuracy": 0.71})
    make_version(metrics={})
    promotion.promote(model, 1, actor="alice")
    versions.set_alias(model, versions.CANDIDATE, 1)
    versions.set_tags(model, 1, {"deploy_status": "deployed"})
    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = {row["version"]: row for row in doc["versions"]}
    assert doc["model"] == model and sorted(rows) == [1, 2, 3]
    assert rows[1]["aliases"] == ["candidate", "production"]
    assert (rows[1]["validation_status"], rows[1]["deploy_status"], rows[1]["heldout_accuracy"]) == \
        ("passed", "deployed", 0.9512)
    assert (rows[2]["validation_status"], rows[2]["heldout_accuracy"]) == ("failed", 0.71)
    assert rows[3]["validation_status"] == "pending" and rows[3]["heldout_accuracy"] is None
    assert rows[1]["age"].endswith(("s", "m"))
    r = run_mlops("registry", "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["version", "aliases", "validation", "deploy", "heldout_acc", "age",
                                "dataset", "pipeline"]
    assert lines[2].split()[:5] == ["3", "-", "pending", "-", "-"]
    assert lines[4].split()[:5] == ["1", "candidate,production", "passed", "deployed", "0.9512"]
    r = run_mlops("registry", "status", "--model-name", "nope-model")
    assert r.returncode == 2 and "registered model 'nope-model' does not exist" in r.stderr


def test_status_reads_the_ledger_once(make_version, capfd):
    """Review of 2026-12-05 (eighth stop): `registry status` read the model's moves from the ledger
    twice a call, once for who let each version in (``status_rows``) and once for whether
    `production` sits where the ledger says (``check_agreement``). One read now, passed down to
    both; the locked read again when the alias disagrees stays (a promotion may have committed
    between the two reads). Counted on the real SQLite ledger, every statement that reads its rows."""
    import sqlalchemy as sa

    from mlops.cli import main

    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed")
    make_version(validation_status="passed")
    promotion.promote(model, 1, actor="alice")
    promotion.promote(model, 2, actor="bob")
    engine = Ledger()._engine
    reads = []
    capfd.readouterr()          # MLflow's messages while the versions were made

    def count(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "ledger_entries" in statement:
            reads.append(statement)

    def is_start_lookup(statement: str) -> bool:     # where the model's current rows begin: its
        return " ".join(statement.split("FROM")[0].split()) == \
            "SELECT ledger_entries.id, ledger_entries.details"    # version 1's two latest, those between

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert main(["registry", "status", "--json"]) == 0
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    doc = json.loads(capfd.readouterr().out)
    assert {r["version"]: r["approved_by"] for r in doc["versions"]} == {1: "alice", 2: "bob"}
    assert (doc["ledger"]["alias"], doc["ledger"]["ledger"], doc["ledger"]["agrees"]) == (2, 2, True)
    moves = [s for s in reads if not is_start_lookup(s)]        # registrations' ids (ledger._current_start)
    assert len(moves) == 1 and len(reads) <= 3, reads


def test_status_reads_every_versions_metrics_in_a_few_requests(make_version, http_fault_proxy, monkeypatch):
    """Found by a sweep (2026-12-04): one `runs/get` per version (1,200 versions: 12 s on loopback,
    over a minute across a network). Now `runs/search` by run id, a chunk of ids a request."""
    from registry import history
    from registry.client import tracking_client

    model = os.environ["MLOPS_MODEL_NAME"]
    accs = [0.91, 0.92, 0.93, 0.94, 0.95]
    for a in accs:
        make_version(metrics={"heldout_accuracy": a})
    tracking_client().delete_run(versions.get_version(model, 2).run_id)     # a deleted run: still listed
    proxy = http_fault_proxy(os.environ["MLFLOW_TRACKING_URI"], match=lambda m, p: False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    monkeypatch.setattr(versions, "RUNS_PER_SEARCH", 2)
    rows = {r["version"]: r["heldout_accuracy"] for r in history.status_rows(model)}
    assert rows == {1: 0.91, 2: 0.92, 3: 0.93, 4: 0.94, 5: 0.95}       # a deleted run keeps its metrics
    paths = [p.split("?")[0] for _, p, _ in proxy.forwarded]
    assert not any(p.endswith("/runs/get") for p in paths), paths
    assert sum(p.endswith("/runs/search") for p in paths) == 3        # 5 run ids, 2 a request


def test_status_shows_a_version_whose_run_logged_a_nan_accuracy(make_version):
    """MLflow's REST answer writes a NaN metric as the string "NaN" (proto3 JSON): `registry
    status` of a model with a version whose run logged heldout_accuracy NaN (registered outside
    mlproject, whose training stops when it diverges) was a traceback, and `--json` gave the string."""
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(metrics={"heldout_accuracy": float("nan")})
    make_version(metrics={"heldout_accuracy": 0.93})
    r = run_mlops("registry", "status")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line[:1].isdigit()}
    assert "nan" in rows["1"] and "0.9300" in rows["2"], r.stdout
    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = {row["version"]: row["heldout_accuracy"] for row in json.loads(r.stdout)["versions"]}
    assert doc == {1: None, 2: 0.93}, model


def test_a_rerun_sync_rollback_to_n_not_yet_on_the_hosts_says_so_not_nothing_to_roll_back(four_versions):
    """`sync rollback --to 2` killed after its registry move (hosts still on v3): the same command
    run again said 'version 2 already holds production; nothing to roll back' while the fleet
    still served v3 — the on-call engineer read it as done. It says what `sync rollback` without
    --to says: the rollback is not on the hosts yet and `sync deploy` installs it."""
    model = os.environ["MLOPS_MODEL_NAME"]
    led = Ledger()
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
        led.record("deploy", model, outcome="ok", to_version=v, host="web-1")
    promotion.rollback(model, to=2, actor="bob", reason="v3 is slow", unrolled_ok=False)   # then killed
    assert prod(model) == 2
    with pytest.raises(RefusedError) as caught:
        promotion.rollback(model, to=2, actor="bob", reason="v3 is slow", unrolled_ok=False)
    message = str(caught.value)
    assert f"the last rollback of '{model}' (v3 -> v2) has no deploy recorded since" in message, message
    assert "`mlops sync deploy` installs v2" in message
    assert prod(model) == 2
    # `registry rollback --to 2` (no rollout of its own) still says only that v2 holds production
    with pytest.raises(RefusedError, match="already holds production"):
        promotion.rollback(model, to=2, actor="bob")
    # once a deploy rolled it out, the rerun is the plain refusal again
    led.record("deploy", model, outcome="ok", to_version=2, host="web-1")
    with pytest.raises(RefusedError, match="already holds production; nothing to roll back"):
        promotion.rollback(model, to=2, actor="bob", unrolled_ok=False)


def _held_rollback(marker, *args: str):
    """`mlops registry rollback <args>` held once it read production (fault point
    ``rollback:after_read``), before it waits for the promotion lock; returned once it holds there
    or ended (bounded)."""
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    env = {**os.environ, "MLOPS_TEST_PAUSE_AT": "rollback:after_read", "MLOPS_TEST_PAUSE_MARKER": str(marker),
           "MLOPS_TEST_PAUSE_SECONDS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "registry", "rollback", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text().strip()) and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate(timeout=30)
            raise AssertionError("the rollback neither held at rollback:after_read nor ended")
        time.sleep(0.05)
    return proc


def _ended(proc) -> tuple[int, str, str]:
    import subprocess

    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)
        raise AssertionError("the rollback did not end") from None
    return proc.returncode, out, err


def test_two_rollbacks_at_once_undo_the_version_they_read_not_two(four_versions, tmp_path):
    """Two people on call run `registry rollback` at once against v3: both read v3, then race for
    the promotion lock. The one that gets it second used to read v2 under the lock and step back
    again (v3 -> v2 -> v1); it is now a no-op naming the other's rollback."""
    model = os.environ["MLOPS_MODEL_NAME"]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    racers = {actor: _held_rollback(tmp_path / actor, "--actor", actor, "--json") for actor in ("bob", "carol")}
    for actor in racers:
        (tmp_path / actor).unlink(missing_ok=True)       # both read v3: let them race
    ended = {actor: _ended(p) for actor, p in racers.items()}
    assert all(rc == 0 for rc, _, _ in ended.values()), ended
    assert prod(model) == 2
    moves = [e for e in Ledger().entries(model) if e.action == "rollback"]
    assert [(e.outcome, e.from_version, e.to_version) for e in moves] == [("ok", 3, 2)]
    docs = {actor: json.loads(out) for actor, (_, out, _) in ended.items()}
    (loser,) = [a for a, d in docs.items() if not d["moved"]]
    assert docs[loser]["to_version"] == 2 and docs[loser]["details"]["already_moved"] == moves[0].id
    assert docs[loser]["actor"] == moves[0].actor != loser


def test_a_rollback_overtaken_by_another_move_is_refused_naming_it(four_versions, tmp_path):
    """A rollback that read v3 finds v4 under the lock (carol promoted it meanwhile): rolling back
    from v4 would undo a promotion its person never saw; refused in one line naming the move, and
    a rollback --to the version production already moved to is a no-op."""
    model = os.environ["MLOPS_MODEL_NAME"]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    held = _held_rollback(tmp_path / "bob", "--actor", "bob")
    promotion.promote(model, 4, actor="carol")
    promo_id = Ledger().entries(model)[-1].id
    (tmp_path / "bob").unlink(missing_ok=True)
    rc, out, err = _ended(held)
    assert rc == 2, (out, err)
    assert err.strip().splitlines()[-1] == (
        f"error: production of '{model}' moved from v3 to v4 (promote by carol, ledger #{promo_id}) after this "
        f"rollback read it: nothing was changed; to roll back v4 as well, run the rollback again")
    assert prod(model) == 4 and Ledger().entries(model)[-1].id == promo_id
    held = _held_rollback(tmp_path / "dave", "--to", "2", "--actor", "dave")
    promotion.rollback(model, to=2, actor="erin", reason="v4 too")
    (tmp_path / "dave").unlink(missing_ok=True)
    rc, out, err = _ended(held)
    assert rc == 0 and "already moved v4 -> v2 (rollback by erin" in out and "nothing changed" in out, (out, err)
    assert prod(model) == 2 and [e.actor for e in Ledger().entries(model, actions=("rollback",))] == ["erin"]


def test_a_version_deleted_while_a_rollback_waits_for_the_lock_is_skipped_not_picked(four_versions, tmp_path):
    """Found by a rollback review (2026-12-07): the registry's versions were read before the
    promotion lock, so v2 deleted (a clean-up of the registry) while the rollback waited for it was
    still picked, and the move then failed: "version 2 of registered model 'm' does not exist",
    exit 2, production left on v3 though v1 was there to go back to. They are read under the lock:
    v2 is skipped as deleted."""
    from registry.client import tracking_client

    model = os.environ["MLOPS_MODEL_NAME"]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    held = _held_rollback(tmp_path / "bob", "--actor", "bob", "--reason", "v3 is slow", "--json")
    tracking_client().delete_model_version(model, "2")           # while it waits for the lock
    (tmp_path / "bob").unlink(missing_ok=True)
    rc, out, err = _ended(held)
    assert rc == 0, err[-3000:]
    doc = json.loads(out)
    assert (doc["from_version"], doc["to_version"]) == (3, 1) and doc["details"]["skipped_deleted"] == [2], doc
    assert prod(model) == 1
