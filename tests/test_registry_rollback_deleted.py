"""Rollback without ``--to`` skips earlier production holders deleted from the registry since (real
MLflow server and ledger), ``--force`` needs a reason, and ``mlops sync rollback --force`` reaches
``promotion.rollback``."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from mlops_common.errors import NotFoundError, RefusedError
from registry import promotion, versions
from registry.client import tracking_client
from registry.ledger import Ledger


def delete_from_registry(model: str, version: int) -> None:
    """Delete a version straight in MLflow, as someone cleaning up the registry would."""
    tracking_client().delete_model_version(model, str(version))
    assert version not in {i.version for i in versions.list_versions(model)}


def promoted_in_turn(make_version, n: int) -> str:
    """``n`` versions that passed the gate, each promoted in turn by alice; the model's name."""
    model = os.environ["MLOPS_MODEL_NAME"]
    for _ in range(n):
        make_version(validation_status="passed")
    for v in range(1, n + 1):
        promotion.promote(model, v, actor="alice")
    return model


def test_rollback_skips_a_deleted_earlier_holder_and_lands_on_the_one_before(make_version):
    model = promoted_in_turn(make_version, 3)
    delete_from_registry(model, 2)
    result = promotion.rollback(model, actor="bob", reason="v3 is slow")    # used to fail: version 2 not found
    assert (result.from_version, result.to_version, result.moved) == (3, 1, True)
    assert versions.production_version(model) == 1
    row = Ledger().entries(model)[-1]
    assert (row.action, row.outcome, row.from_version, row.to_version, row.actor) == \
        ("rollback", "ok", 3, 1, "bob")
    assert row.details["skipped_deleted"] == [2]
    assert row.details["skipped_failed"] == [] and row.details["rollback_of"] == 3
    assert result.details["skipped_deleted"] == [2]


def test_a_rollback_with_nothing_deleted_records_no_skipped_deleted(make_version):
    model = promoted_in_turn(make_version, 2)
    result = promotion.rollback(model, actor="bob")
    assert result.to_version == 1
    assert "skipped_deleted" not in Ledger().entries(model)[-1].details


def test_when_every_earlier_holder_was_deleted_the_error_says_nothing_to_roll_back_to_and_names_them(
        make_version):
    model = promoted_in_turn(make_version, 3)
    delete_from_registry(model, 1)
    delete_from_registry(model, 2)
    before = len(Ledger().entries(model))
    with pytest.raises(NotFoundError) as caught:
        promotion.rollback(model, actor="bob")
    message = str(caught.value)
    assert message.startswith(f"nothing to roll back to for '{model}': the ledger shows no earlier production "
                              f"version than 3")
    assert "still exists" in message and "skipped [1, 2]" in message
    assert "mlops registry promote --version N" in message
    assert versions.production_version(model) == 3
    assert not [e for e in Ledger().entries(model)[before:] if e.action == "rollback" and e.outcome == "ok"]


def test_a_rollback_with_no_production_says_so_not_none(make_version):
    """It said "no earlier production version than None"."""
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed")
    with pytest.raises(NotFoundError) as caught:
        promotion.rollback(model, actor="bob")
    assert str(caught.value) == (f"nothing to roll back to for '{model}': no version holds production; use "
                                 f"`mlops registry promote --version N`")
    assert versions.production_version(model) is None


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_a_forced_rollback_without_a_reason_is_refused_and_moves_nothing(make_version, reason):
    """``--force`` needs a reason a person wrote: the rollback's default text ("rollback requested")
    stood in for one, and a version that failed the gate went back to production unexplained."""
    from mlops_common.errors import RefusedError

    model = promoted_in_turn(make_version, 2)
    make_version(validation_status="failed")
    before = len(Ledger().entries(model))
    with pytest.raises(RefusedError, match="--force needs --reason"):
        promotion.rollback(model, to=3, force=True, reason=reason, actor="bob")
    assert versions.production_version(model) == 2
    assert len(Ledger().entries(model)) == before
    result = promotion.rollback(model, to=3, force=True, reason="v2 corrupts labels", actor="bob")
    assert (result.to_version, result.moved) == (3, True)
    row = Ledger().entries(model)[-1]
    assert (row.action, row.outcome, row.reason) == ("rollback", "ok", "v2 corrupts labels")


class _Captured(Exception):
    """Stops the rollback right after ``promotion.rollback`` is called."""


def test_sync_rollback_force_flag_is_parsed_and_reaches_promotion_rollback(monkeypatch):
    from mlops.cli import build_parser
    from mlops.commands import sync as sync_cmd
    from registry.provenance import Provenance
    from serving_sync import rollback as rb

    parser = build_parser()
    args = parser.parse_args(["sync", "rollback", "--force", "--reason", "x"])
    assert args.force is True and args.reason == "x"
    assert parser.parse_args(["sync", "rollback"]).force is False

    calls = []

    def capture(model, **kw):
        calls.append((model, kw))
        raise _Captured

    monkeypatch.setattr(promotion, "rollback", capture)
    monkeypatch.setattr(versions, "production_version", lambda model: 5)      # what the rollback read
    with pytest.raises(_Captured):
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), to=4, reason="x", force=True)
    assert calls[-1][0] == "m"
    assert (calls[-1][1]["force"], calls[-1][1]["to"], calls[-1][1]["reason"]) == (True, 4, "x")
    with pytest.raises(_Captured):
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"))
    assert calls[-1][1]["force"] is False

    # the whole command: the parsed flag goes through rollback_and_deploy to promotion.rollback
    monkeypatch.setenv("MLOPS_MODEL_NAME", "cli-model")
    monkeypatch.setattr(sync_cmd, "_hosts", lambda args: [SimpleNamespace(name="h")])
    with pytest.raises(_Captured):
        args.func(args)
    model, kw = calls[-1]
    assert model == "cli-model" and kw["force"] is True and kw["reason"] == "x" and kw["to"] is None


def test_rows_of_a_model_deleted_and_created_again_steer_neither_its_rollback_nor_its_gate_check(make_version):
    """Found by a sweep (2026-12-04): MLflow numbers a model created again from 1, and the rows of
    the deleted one (v1, v2, v3 each in production) were read as the new one's: a rollback of the
    new v1 went to the new v2, which never held production, and a gate verdict against no
    production passed although v1 had been promoted since (v2 "had held production")."""
    from registry.ledger import Entry

    model = promoted_in_turn(make_version, 3)
    tracking_client().delete_registered_model(model)
    make_version(validation_status="passed")
    make_version(validation_status="passed")
    for v in (1, 2):        # both gated while nothing was in production (a version with no gate row is refused)
        Ledger().append(Entry(action="gate", model=model, outcome="passed", from_version=None, to_version=v,
                              actor="ci"))
    promotion.promote(model, 1, actor="alice")
    before = [(e.action, e.from_version, e.to_version) for e in Ledger().entries(model)]
    assert before[-1] == ("promote", None, 1)              # no reconcile row from the deleted model's production

    with pytest.raises(NotFoundError, match=f"nothing to roll back to for '{model}': the ledger shows no earlier "
                                            f"production version than 1"):
        promotion.rollback(model, actor="bob")
    with pytest.raises(RefusedError, match="passed its gate against \\(none\\), but production is now v1"):
        promotion.promote(model, 2, actor="alice")
    assert versions.production_version(model) == 1
    assert [(e.action, e.outcome, e.to_version) for e in Ledger().entries(model)][len(before):] == \
        [("promote", "refused", 2)]
    # the whole history stays on record for `registry history`
    assert [e.to_version for e in Ledger().entries(model, actions=("promote",))][:3] == [1, 2, 3]


def test_status_says_production_was_deleted_not_moved_and_still_compares_with_the_ledger(make_version):
    """`registry status` of a model whose production version was deleted said "it was moved
    outside mlops (MLflow UI or API)" (reconcile then recorded that it was deleted); with every
    version deleted it said the model "has no versions yet" and left out the ledger's production."""
    import json

    from tests.helpers import run_mlops

    model = promoted_in_turn(make_version, 2)
    delete_from_registry(model, 2)
    r = run_mlops("registry", "status")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("MISMATCH: production is (none) but the ledger says v2: v2 was deleted from the "
                           "registry"), last
    assert "moved outside mlops" not in last
    delete_from_registry(model, 1)
    r = run_mlops("registry", "status")
    assert r.returncode == 0, r.stderr
    assert "no versions yet" not in r.stdout and f"registered model '{model}' has no versions" in r.stdout
    assert "MISMATCH: production is (none) but the ledger says v2: v2 was deleted" in r.stdout, r.stdout
    doc = json.loads(run_mlops("registry", "status", "--json").stdout)
    assert doc["versions"] == [] and doc["ledger"]["ledger"] == 2 and doc["ledger"]["agrees"] is False


def test_a_move_to_a_version_whose_run_was_deleted_for_good_moves_nothing(make_version, mlflow_server_state):
    """Found by a promotion review (2026-12-07, nineteenth stop): the artifacts check of `registry
    rollback` and `registry promote` let through a version whose run was deleted and then removed
    for good by `mlflow gc` (MLflow's cleanup of old runs: their artifacts go with them). Reading the
    run answered "not found", which the check took for a listing it could not read ("left to the
    deploy"): production moved to v1, exit 0, and the deploy after it could not download anything.
    A run that no longer exists has no artifacts: refused in one line, nothing moved. `mlflow gc`
    works on the session server's database, on this test's run only (``--run-ids``)."""
    import subprocess
    import sys

    from mlops_common import settings
    from tests.helpers import run_mlops

    model = promoted_in_turn(make_version, 2)
    run_id = versions.get_version(model, 1).run_id
    tracking_client().delete_run(run_id)
    gc = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri",
                         settings.sqlite_url(mlflow_server_state / "mlflow.db"), "--run-ids", run_id],
                        capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stderr[-2000:]
    for command, args in (("rollback", ("--to", "1")), ("promote", ("--version", "1"))):
        r = run_mlops("registry", command, *args, "--actor", "bob", "--reason", "v2 misbehaves")
        assert r.returncode == 2, r.stdout + r.stderr
        line = r.stderr.strip().splitlines()[-1]
        said = {"rollback": f"cannot roll '{model}' back to v1", "promote": f"cannot promote v1 of '{model}'"}
        assert line.startswith(f"error: {said[command]}: its artifacts are gone from the artifact store"), line
        assert "tfserving/" in line and "golden/" in line, line
        assert versions.production_version(model) == 2
    moves = [(e.action, e.outcome) for e in Ledger().entries(model) if e.action in ("promote", "rollback")]
    assert moves == [("promote", "ok"), ("promote", "ok"), ("rollback", "refused"), ("promote", "refused")]


def registered_outside_mlops(model: str, folder, experiment: str = "outside-mlops") -> int:
    """A version registered as the MLflow UI or API does (``mlflow.register_model``): no ``register``
    ledger row of ours; tagged passed by hand, as such a version is before it can be promoted."""
    import mlflow

    client = tracking_client()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    with mlflow.start_run(run_name="outside", experiment_id=exp_id) as run:
        mlflow.log_artifacts(str(folder / "tfserving"), "tfserving")
        mlflow.log_artifacts(str(folder / "golden"), "golden")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    v = int(mlflow.register_model(logged.model_uri, model).version)
    versions.set_tags(model, v, {"validation_status": "passed", "dataset": "digits"})
    return v


def gate_doc(acc: float) -> dict:
    return {"model_uri": "-", "dataset": "digits", "heldout_fingerprint": "f" * 64, "n": 450, "accuracy": acc,
            "loss": round(1 - acc, 4), "per_class_accuracy": {str(k): acc for k in range(10)},
            "per_class_count": {str(k): 45 for k in range(10)}}


def test_a_model_created_again_outside_mlops_is_not_steered_by_the_deleted_models_rows(
        make_version, tiny_serving_bundle):
    """Found by review (twentieth stop): a model deleted and created again whose new versions were
    registered outside mlops has no ``register`` row of its own, and the current rows were cut at
    the deleted model's v1 registration: its productions and its failed deploy of v1 were read as
    the new model's. The gate of the new v1 was refused (the ledger "says v3 holds production"),
    and with the new v1 then v2 promoted, a failed deploy of v2 had no previous production to go
    back to and `registry rollback` refused ("no earlier production version than 2 whose deploy
    did not fail ... (skipped [1])"): the deleted v1's failed deploy counted against the new v1."""
    from registry import deploys
    from registry.gate import run_gate
    from tests.helpers import run_mlops

    model = os.environ["MLOPS_MODEL_NAME"]
    for _ in range(3):
        make_version(validation_status="passed")
    promotion.promote(model, 1, actor="alice")
    Ledger().record("deploy", model, outcome="failed", to_version=1, host="web-1", reason="smoke test failed")
    promotion.promote(model, 2, actor="alice")
    promotion.promote(model, 3, actor="alice")
    tracking_client().delete_registered_model(model)
    assert [registered_outside_mlops(model, tiny_serving_bundle) for _ in range(3)] == [1, 2, 3]

    out = run_gate(model, 1, lambda v, dataset: gate_doc(0.93))        # nothing in production: no baseline
    assert out.passed and out.production_version is None
    promotion.promote(model, 1, actor="alice")
    out = run_gate(model, 2, lambda v, dataset: gate_doc(0.94))
    assert out.passed and out.production_version == 1
    promotion.promote(model, 2, actor="alice")
    assert deploys.DeployLedger(model).previous_production(2) == 1
    r = run_mlops("registry", "rollback", "--reason", "v2 misbehaves", "--json")
    assert r.returncode == 0, r.stderr
    assert versions.production_version(model) == 1
    r = run_mlops("registry", "rollback", "--reason", "v1 too")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"nothing to roll back to for '{model}'" in r.stderr, r.stderr
    assert versions.production_version(model) == 1


def test_sync_rollback_of_a_model_created_again_outside_mlops_does_not_go_to_a_deleted_models_production(
        deploy_env):
    """The same through `mlops sync rollback`: the new model's only production (v1, registered
    with ``mlflow.register_model``) was rolled back and deployed to v2, a version that never held
    production, exit 0, because the deleted model had v1, v2 and v3 in production in turn; now
    there is nothing to roll back to, and the host keeps serving v1."""
    env = deploy_env
    for kind in ("a", "b", "c"):
        env.promote(env.register(kind))          # the deleted model: each through mlops, in production
    tracking_client().delete_registered_model(env.model)
    env.versions.clear()
    for kind in ("a", "b", "c"):
        env.versions[registered_outside_mlops(env.model, env.bundles.path(kind))] = kind
    host = env.add_host("file")
    env.promote(1)
    assert env.deploy().status == "deployed"
    env.serves(host, 1)
    r = env.cli("sync", "rollback", "--reason", "v1 misbehaves")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"nothing to roll back to for '{env.model}'" in r.stderr, r.stderr
    assert env.production() == 1
    env.serves(host, 1)


def test_a_model_never_registered_through_mlops_created_again_is_not_steered_by_the_deleted_models_rows(
        mlops_env, tiny_serving_bundle, monkeypatch):
    """Found by review (twenty-first stop): a model none of whose versions was ever registered
    through mlops (all with ``mlflow.register_model``) has no ``register`` row to cut at, and every
    row of its name counted, a deleted model's too: after the model was deleted and created again,
    the gate of its new v1 was refused (the ledger "says v3 holds production"), `registry status`
    said MISMATCH, and a rollback went to the deleted model's v2. Now the rows written under the
    promotion lock carry the model's creation time (the server's clock) and the cut is made as for
    a model registered through mlops; the new model's rows count even when their writer's clock is
    ten minutes behind the server's."""
    import json
    from datetime import datetime, timedelta

    import registry.ledger as ledger_module
    from registry.gate import run_gate
    from tests.helpers import run_mlops

    model = os.environ["MLOPS_MODEL_NAME"]
    assert [registered_outside_mlops(model, tiny_serving_bundle) for _ in range(3)] == [1, 2, 3]
    for v in (1, 2, 3):
        promotion.promote(model, v, actor="alice")
    Ledger().record("deploy", model, outcome="failed", to_version=1, host="web-1", reason="smoke test failed")
    tracking_client().delete_registered_model(model)

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(minutes=10)

    monkeypatch.setattr(ledger_module, "datetime", Behind)        # the new model's writer: ten minutes behind
    assert [registered_outside_mlops(model, tiny_serving_bundle) for _ in range(3)] == [1, 2, 3]
    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    ledger = json.loads(r.stdout)["ledger"]
    assert (ledger["ledger"], ledger["agrees"], ledger["problem"]) == (None, True, None), ledger
    out = run_gate(model, 1, lambda v, dataset: gate_doc(0.93))        # nothing in production: no baseline
    assert out.passed and out.production_version is None
    promotion.promote(model, 1, actor="bob")
    out = run_gate(model, 2, lambda v, dataset: gate_doc(0.94))
    assert out.passed and out.production_version == 1
    promotion.promote(model, 2, actor="bob")
    result = promotion.rollback(model, actor="bob", reason="v2 misbehaves")
    assert (result.from_version, result.to_version) == (2, 1)
    with pytest.raises(NotFoundError, match="nothing to roll back to"):
        promotion.rollback(model, actor="bob", reason="v1 too")
    assert versions.production_version(model) == 1


def test_the_cut_of_a_model_never_registered_through_mlops_on_plain_rows(tmp_path):
    """The same cut on rows written straight into the ledger: no ``register`` row at all. Rows from
    before the stamps are told by their time (the first written since the model's creation); a row
    stamped with an earlier model's creation is that model's even when its writer's clock was ahead,
    and one stamped with this model's is its own even when its writer's clock was behind."""
    import json
    import sqlite3
    from datetime import datetime, timedelta, timezone

    from registry.ledger import MODEL_CREATED_MS

    led = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    t0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
    ms = round(t0.timestamp() * 1000)
    db = sqlite3.connect(tmp_path / "ledger.db")

    def write(model: str, s: int, action: str, v: int, stamp: int | None = None) -> None:
        db.execute("INSERT INTO ledger_entries (at, action, model, to_version, outcome, details) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   ((t0 + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S.%f"), action, model, v, "ok",
                    json.dumps({MODEL_CREATED_MS: stamp}) if stamp else None))
        db.commit()

    def view(model: str) -> list:
        return [(e.action, e.to_version) for e in led.entries(model, current=True, created_ms=ms + 10_000)]

    # rows from before the stamps: the deleted model's, then (created again at +10 s) the new one's
    write("m", 1, "promote", 3)
    write("m", 2, "deploy", 3)
    write("m", 11, "promote", 1)
    assert view("m") == [("promote", 1)]
    # stamped: the deleted model's last move written by a clock ahead (dated after the creation),
    # then the new model's rows written by a clock behind (dated before it)
    write("n", 1, "promote", 3)
    write("n", 12, "promote", 4, stamp=ms + 5_000)
    write("n", 5, "promote", 1, stamp=ms + 10_000)
    write("n", 6, "deploy", 1)
    assert view("n") == [("promote", 1), ("deploy", 1)]
