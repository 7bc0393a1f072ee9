"""`mlops registry promote` against a real MLflow server, the ledger, and a CircleCI-like API."""
from __future__ import annotations

import json
import os

from registry import description, versions
from registry.ledger import Ledger
from tests.helpers import run_mlops


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return lines[-1]


def moves(model: str) -> list[tuple]:
    return [(e.action, e.from_version, e.to_version, e.outcome) for e in Ledger().entries(model)
            if e.action in ("promote", "rollback")]


def test_promote_by_version_records_who_when_from_and_why(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    v2 = make_version(validation_status="passed")
    versions.set_alias(model, versions.CANDIDATE, v1)
    r = run_mlops("registry", "promote", "--version", str(v1), "--actor", "alice", "--reason", "first release")
    assert r.returncode == 0, r.stderr
    assert "production (none) -> v1 by alice" in r.stdout
    assert versions.get_version(model, v1).aliases == ("production",)   # no longer a candidate
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "bob", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["from_version"], doc["to_version"], doc["actor"], doc["moved"]) == (1, 2, "bob", True)
    assert versions.production_version(model) == 2
    assert moves(model) == [("promote", None, 1, "ok"), ("promote", 1, 2, "ok")]
    last = Ledger().entries(model)[-1]
    assert last.actor == "bob" and last.id == doc["ledger_id"]
    assert last.details["actor_source"] == "flag"
    # the versions list shows who let it in; the description tells the rest, rebuilt from the ledger
    first = versions.get_version(model, v1)
    assert first.tags["approved_by"] == "alice" and not any(k.startswith("promot") for k in first.tags)
    assert "**Approved by:** alice (promote none → v1 by alice" in first.description
    assert "reason: first release" in first.description
    assert "| promote | v1 → v2 | bob |" in first.description          # v1's history shows it was replaced
    second = versions.get_version(model, v2)
    assert second.tags["approved_by"] == "bob"
    assert description.block(second.description).startswith(f"**v{v2}** · \\@production")


def test_promote_without_actor_uses_the_os_user(make_version):
    import getpass

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    r = run_mlops("registry", "promote", "--version", str(v), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["actor"] == getpass.getuser()
    assert versions.get_version(model, v).tags["approved_by"] == getpass.getuser()


def test_promote_by_pipeline_id_picks_exactly_that_pipelines_version(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed", pipeline_id="pipe-111")
    v2 = make_version(validation_status="passed", pipeline_id="pipe-222")
    make_version(validation_status="passed", pipeline_id="pipe-333")
    versions.set_alias(model, versions.CANDIDATE, 3)   # must not matter
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-222", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to_version"] == v2
    assert versions.production_version(model) == v2
    assert versions.get_version(model, 3).aliases == ("candidate",)      # another version's: untouched
    assert Ledger().entries(model)[-1].details["selected_by_pipeline"] == "pipe-222"
    # --version together with --pipeline-id is a cross-check (the CircleCI promote job does this)
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-111", "--version", "1", "--json")
    assert r.returncode == 0, r.stderr
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-111", "--version", "3")
    assert r.returncode == 2
    assert "was registered by pipeline pipe-333, not by pipeline pipe-111" in one_error_line(r)
    assert versions.production_version(model) == 1


def test_pipeline_with_zero_or_several_versions_is_a_clear_error(make_version):
    make_version(validation_status="passed", pipeline_id="pipe-dup")
    make_version(validation_status="passed", pipeline_id="pipe-dup")
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-dup")
    assert r.returncode == 2 and "registered several versions" in one_error_line(r)
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-nobody")
    assert r.returncode == 2 and "no version of any registered model is tagged pipeline_id=pipe-nobody" \
        in one_error_line(r)
    r = run_mlops("registry", "promote")
    assert r.returncode == 2 and "--version N or --pipeline-id ID" in one_error_line(r)
    assert versions.production_version(os.environ["MLOPS_MODEL_NAME"]) is None


def test_refuses_unvalidated_versions_and_records_the_refusal(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    v2 = make_version()                            # pending
    v3 = make_version(validation_status="failed")
    assert run_mlops("registry", "promote", "--version", str(v1)).returncode == 0
    for v, status in ((v2, "pending"), (v3, "failed")):
        r = run_mlops("registry", "promote", "--version", str(v))
        assert r.returncode == 2
        assert f"validation_status={status}, not passed" in one_error_line(r)
    assert versions.production_version(model) == v1
    assert moves(model) == [("promote", None, 1, "ok"), ("promote", 1, 2, "refused"),
                            ("promote", 1, 3, "refused")]
    r = run_mlops("registry", "promote", "--version", str(v3), "--force")
    assert r.returncode == 2 and "--force needs --reason" in one_error_line(r)
    r = run_mlops("registry", "promote", "--version", str(v3), "--force", "--reason", "hotfix INC-42",
                  "--actor", "oncall", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["forced"] is True
    row = Ledger().entries(model)[-1]
    assert (row.to_version, row.outcome, row.reason, row.details["forced"]) == (3, "ok", "hotfix INC-42", True)
    info = versions.get_version(model, v3)
    assert info.tags["approved_by"] == "oncall" and "reason: hotfix INC-42" in info.description


def test_a_forced_promotion_without_a_reason_is_refused_before_any_row(make_version):
    """Found by the bad-input sweep (2026-12-05, ninth stop): ``--force`` with no ``--reason`` (or an
    empty ``--reason "$WHY"`` in a CI job) is a usage mistake, refused as ``registry rollback``
    refuses it: before anything is written. It wrote a ``promote refused`` ledger row naming the
    actor and the version first."""
    from tests.fixtures.faults import registry_snapshot

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    v2 = make_version(validation_status="failed")
    assert run_mlops("registry", "promote", "--version", str(v1)).returncode == 0
    rows, tags = Ledger().entries(model), registry_snapshot(model)
    for reason in ((), ("--reason", ""), ("--reason", "   ")):
        r = run_mlops("registry", "promote", "--version", str(v2), "--force", *reason, "--actor", "oncall")
        assert r.returncode == 2 and "--force needs --reason" in one_error_line(r), r.stderr
    assert Ledger().entries(model) == rows and registry_snapshot(model) == tags
    assert versions.production_version(model) == v1


def test_refuses_unknown_versions_and_models(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed")
    r = run_mlops("registry", "promote", "--version", "9")
    assert r.returncode == 2
    assert f"version 9 of registered model '{model}' does not exist (the latest is 1)" in one_error_line(r)
    r = run_mlops("registry", "promote", "--version", "1", "--model-name", "some-other-model")
    assert r.returncode == 2
    assert "registered model 'some-other-model' does not exist" in one_error_line(r)
    r = run_mlops("registry", "promote", "--version", "zero")
    assert r.returncode == 2 and "not a version number" in r.stderr
    assert versions.production_version(model) is None


def test_refuses_a_version_of_a_different_registered_model(make_version):
    """The pipeline registered a version of model A; promoting it as model B is refused."""
    model = os.environ["MLOPS_MODEL_NAME"]
    other = f"{model}-other"
    make_version(validation_status="passed")
    make_version(model=other, validation_status="passed", pipeline_id="pipe-foreign")
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-foreign")
    assert r.returncode == 2
    line = one_error_line(r)
    assert f"registered '{other}' v1, not a version of '{model}'" in line
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-foreign", "--version", "1")
    assert r.returncode == 2 and "not by pipeline pipe-foreign" in one_error_line(r)
    assert versions.production_version(model) is None and versions.production_version(other) is None


def gated_in(model: str, version: int, workflow_id: str | None, pipeline_id: str | None, outcome: str = "passed",
             baseline: int | None = None) -> None:
    """The row the gate job of a CircleCI workflow leaves (``registry.gate._record``: its ids
    from the job's environment)."""
    from registry.ledger import Entry

    Ledger().append(Entry(action="gate", model=model, outcome=outcome, from_version=baseline, to_version=version,
                          actor="circleci", pipeline_id=pipeline_id, workflow_id=workflow_id,
                          reason=f"gate {outcome}"))


def test_approver_comes_from_circleci_and_the_token_goes_nowhere(make_version, circleci_api):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed", pipeline_id="pipe-ci")
    wid = circleci_api.add_workflow(approver="carol-approver", pipeline_id="pipe-ci")
    gated_in(model, v, wid, "pipe-ci")
    env = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLE_WORKFLOW_ID": wid,
           "CIRCLE_PIPELINE_ID": "pipe-ci", "CIRCLECI_API_URL": circleci_api.url}
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-ci", "--actor", "ignored-in-ci", "--json",
                  env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["actor"], doc["approved_by"], doc["workflow_id"]) == ("carol-approver", "carol-approver", wid)
    row = Ledger().entries(model)[-1]
    assert (row.actor, row.pipeline_id, row.workflow_id) == ("carol-approver", "pipe-ci", wid)
    assert row.details["actor_source"] == "circleci" and row.details["approval_job"] == "hold"
    info = versions.get_version(model, v)
    assert info.tags["approved_by"] == "carol-approver" and "**Approved by:** carol-approver" in info.description
    # the API was asked with the token (4 job pages of 2 + the user), and it was accepted
    paths = [p for _, p, ok in circleci_api.requests if ok]
    assert paths.count(f"/api/v2/workflow/{wid}/job") == 2 and any(p.startswith("/api/v2/user/") for p in paths)
    # the token is nowhere: not in output, ledger rows or tags
    assert circleci_api.token not in r.stdout + r.stderr
    assert all(circleci_api.token not in json.dumps(e.to_dict()) for e in Ledger().entries())
    assert all(circleci_api.token not in f"{k}={val}" for k, val in info.tags.items())
    ledger_file = os.path.join(os.environ["MLOPS_HOME"], "ledger.db")
    with open(ledger_file, "rb") as f:
        assert circleci_api.token.encode() not in f.read()


def test_a_circleci_approval_promotes_only_the_version_its_workflow_gated(make_version, circleci_api):
    """An approval was not tied to what it approved: with a personal CIRCLE_TOKEN, naming another
    workflow's approval (CIRCLE_WORKFLOW_ID) promoted any version, and the ledger and `approved_by`
    credited that workflow's approver (alice, who approved v1 after seeing v1's gate) with v2.
    Now the version must be the one the approval's workflow gated (passed); else one line, exit 2,
    nothing written. A rerun from failed (a new workflow of the same pipeline, the gate not run
    again) still promotes its pipeline's version; --actor outside CircleCI is as before."""
    from registry import tags

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed", pipeline_id="pipe-1")
    v2 = make_version(validation_status="passed", pipeline_id="pipe-2")
    w1 = circleci_api.add_workflow(approver="alice", pipeline_id="pipe-1")
    w2 = circleci_api.add_workflow(approver="bob", pipeline_id="pipe-2")
    gated_in(model, v1, w1, "pipe-1")
    gated_in(model, v2, w2, "pipe-2")
    ci = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLECI_API_URL": circleci_api.url}
    rows = len(Ledger().entries())
    for args in (("--version", str(v2)), ("--pipeline-id", "pipe-2"), ("--version", str(v2), "--force",
                                                                         "--reason", "urgent")):
        r = run_mlops("registry", "promote", *args, env={**ci, "CIRCLE_WORKFLOW_ID": w1})
        assert r.returncode == 2, r.stdout
        line = one_error_line(r)
        assert (f"the approval in CircleCI workflow {w1} was given for version {v1} (gated there), not version "
                f"{v2}: promote {v2} from the workflow that gated it, or without CircleCI with --actor") in line
    assert len(Ledger().entries()) == rows and versions.production_version(model) is None
    assert tags.APPROVED_BY not in versions.get_version(model, v2).tags
    # a version whose gate in that workflow failed is not approved by it either
    v3 = make_version(validation_status="passed", pipeline_id="pipe-3")
    w3 = circleci_api.add_workflow(approver="alice", pipeline_id="pipe-3")
    gated_in(model, v3, w3, "pipe-3", outcome="failed")
    r = run_mlops("registry", "promote", "--version", str(v3), env={**ci, "CIRCLE_WORKFLOW_ID": w3})
    assert r.returncode == 2 and f"failed its gate in CircleCI workflow {w3}" in one_error_line(r)
    # the approval of the workflow that gated it promotes it (also from a rerun of that workflow)
    w2_rerun = circleci_api.add_workflow(approver="bob", pipeline_id="pipe-2")
    r = run_mlops("registry", "promote", "--pipeline-id", "pipe-2", "--json",
                  env={**ci, "CIRCLE_WORKFLOW_ID": w2_rerun})
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["approved_by"], versions.production_version(model)) == ("bob", v2)
    assert versions.get_version(model, v2).tags[tags.APPROVED_BY] == "bob"
    # by hand, outside CircleCI: as before (v4 was gated by hand: no workflow)
    v4 = make_version(validation_status="passed")
    gated_in(model, v4, None, None, baseline=v2)
    r = run_mlops("registry", "promote", "--version", str(v4), "--actor", "carol")
    assert r.returncode == 0, r.stderr
    assert moves(model) == [("promote", None, v2, "ok"), ("promote", v2, v4, "ok")]
    assert versions.get_version(model, v4).tags[tags.APPROVED_BY] == "carol"


def test_a_circleci_approval_that_followed_a_gate_does_not_approve_a_rollback(make_version, circleci_api):
    """The rollback workflow has its own approval and no gate: a rollback takes an approval that
    followed no gate (the rollback workflow's), never one given for a gated version; and that
    approval promotes nothing."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed", pipeline_id="pipe-1")
    v2 = make_version(validation_status="passed", pipeline_id="pipe-2")
    assert run_mlops("registry", "promote", "--version", str(v1), "--actor", "setup").returncode == 0
    w2 = circleci_api.add_workflow(approver="alice", pipeline_id="pipe-2")
    gated_in(model, v2, w2, "pipe-2", baseline=v1)
    ci = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLECI_API_URL": circleci_api.url}
    assert run_mlops("registry", "promote", "--version", str(v2), env={**ci, "CIRCLE_WORKFLOW_ID": w2}).returncode == 0
    rows = len(Ledger().entries())
    r = run_mlops("registry", "rollback", "--reason", "v2 misbehaves", env={**ci, "CIRCLE_WORKFLOW_ID": w2})
    assert r.returncode == 2, r.stdout
    assert (f"the approval in CircleCI workflow {w2} was given for version {v2} (gated there), not for a "
            f"rollback: roll back from the rollback workflow") in one_error_line(r)
    assert len(Ledger().entries()) == rows and versions.production_version(model) == v2
    rb = circleci_api.add_workflow(approver="dave", approval_name="hold-rollback", build_jobs=(), name="rollback")
    r = run_mlops("registry", "promote", "--version", str(v1), env={**ci, "CIRCLE_WORKFLOW_ID": rb})
    assert r.returncode == 2 and f"the approval in CircleCI workflow {rb} follows no gate" in one_error_line(r)
    r = run_mlops("registry", "rollback", "--reason", "v2 misbehaves", "--json", env={**ci, "CIRCLE_WORKFLOW_ID": rb})
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["approved_by"], versions.production_version(model)) == ("dave", v1)
    assert moves(model) == [("promote", None, v1, "ok"), ("promote", v1, v2, "ok"), ("rollback", v2, v1, "ok")]


def test_a_rollback_approval_rolls_back_only_to_the_version_its_pipeline_was_triggered_for(make_version,
                                                                                             circleci_api):
    """A rollback workflow's approval was not tied to its `rollback-to` parameter: with a personal
    CIRCLE_TOKEN, naming the workflow whose approver (dave) let a rollback to v1 through, a
    rollback to v2 (or to "the previous one") went through as dave's. What the approved pipeline
    was triggered for is read from CircleCI (GET /pipeline/{id}/config: its compiled config, the
    parameter's value in the rollback job's ROLLBACK_TO); another rollback is one line, exit 2,
    nothing written."""
    from registry import tags

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    for v in (v1, v2, v3):
        assert run_mlops("registry", "promote", "--version", str(v), "--actor", "setup").returncode == 0
    ci = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLECI_API_URL": circleci_api.url}
    rb = circleci_api.add_workflow(approver="dave", approval_name="hold-rollback", build_jobs=(), name="rollback",
                                   pipeline_id="pipe-rb", parameters={"run-rollback": True, "rollback-to": str(v1)})
    rows = len(Ledger().entries())
    for args, asked in ((("--to", str(v2)), f"version {v2}"), ((), "the previous production version")):
        r = run_mlops("registry", "rollback", *args, "--reason", "v3 misbehaves", env={**ci, "CIRCLE_WORKFLOW_ID": rb})
        assert r.returncode == 2, r.stdout
        line = one_error_line(r)
        assert (f"the approval in CircleCI workflow {rb} was given for a rollback to version {v1} (pipeline "
                f"pipe-rb was triggered with rollback-to={v1}), not to {asked}") in line
        assert "or without CircleCI with --actor" in line
    assert len(Ledger().entries()) == rows and versions.production_version(model) == v3
    assert versions.get_version(model, v2).tags[tags.APPROVED_BY] == "setup"      # not dave
    assert "/api/v2/pipeline/pipe-rb/config" in [p for _, p, ok in circleci_api.requests if ok]
    # the rollback it was given for goes through, credited to dave
    r = run_mlops("registry", "rollback", "--to", str(v1), "--reason", "v3 misbehaves", "--json",
                  env={**ci, "CIRCLE_WORKFLOW_ID": rb})
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["approved_by"], versions.production_version(model)) == ("dave", v1)
    # an empty rollback-to (the default) approves "the previous one" only, not a named version
    rb2 = circleci_api.add_workflow(approver="erin", approval_name="hold-rollback", build_jobs=(), name="rollback",
                                    pipeline_id="pipe-rb2", parameters={"run-rollback": True})
    r = run_mlops("registry", "rollback", "--to", str(v2), env={**ci, "CIRCLE_WORKFLOW_ID": rb2})
    assert r.returncode == 2 and (f"was given for a rollback to the previous production version (pipeline "
                                  f"pipe-rb2 was triggered with rollback-to empty), not to version {v2}: trigger a "
                                  f"rollback pipeline with rollback-to={v2}") in one_error_line(r)
    # a pipeline whose configuration names no rollback-to approves no rollback; one naming no
    # version number neither
    circleci_api.set_pipeline_config("pipe-rb2", compiled="version: 2\njobs:\n  build: {steps: [checkout]}\n")
    r = run_mlops("registry", "rollback", env={**ci, "CIRCLE_WORKFLOW_ID": rb2})
    assert r.returncode == 2 and "sets no rollback-to (ROLLBACK_TO)" in one_error_line(r)
    circleci_api.set_pipeline_config("pipe-rb2", parameters={"run-rollback": True, "rollback-to": "v2"})
    r = run_mlops("registry", "rollback", "--to", str(v2), env={**ci, "CIRCLE_WORKFLOW_ID": rb2})
    assert r.returncode == 2 and "was triggered with rollback-to 'v2', not a version number" in one_error_line(r)
    assert versions.production_version(model) == v1
    assert moves(model)[-1] == ("rollback", v3, v1, "ok")
    assert run_mlops("registry", "promote", "--version", str(v2), "--actor", "setup").returncode == 0
    # (a rollback pipeline triggered before that promotion does not undo it: the next test)
    rb3 = circleci_api.add_workflow(approver="erin", approval_name="hold-rollback", build_jobs=(), name="rollback",
                                    pipeline_id="pipe-rb3", parameters={"run-rollback": True})
    r = run_mlops("registry", "rollback", "--json", env={**ci, "CIRCLE_WORKFLOW_ID": rb3})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["approved_by"] == "erin" and moves(model)[-1] == ("rollback", v2, v1, "ok")


def test_a_rollback_pipeline_approved_after_a_newer_promotion_does_not_undo_it(make_version, circleci_api):
    """The on-call triggers a rollback pipeline to take production off v3; while its approval
    waits, a newer pipeline promotes v4 (its promote-and-deploy ran and finished, so the serial
    group skipped nothing). Approved then, the rollback moved v4 back to v3 (rollback-to empty:
    "the previous one"), onto the very version it was asked to leave, or v4 -> v2 (rollback-to=2),
    exit 0. A rollback pipeline rolls back the production it was triggered against (CircleCI's
    GET /pipeline/{id} created_at against the ledger): otherwise one line, exit 2, nothing written.
    A pipeline triggered after the promotion rolls back, and its rerun is still a no-op."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3, v4 = (make_version(validation_status="passed") for _ in range(4))
    for v in (v1, v2, v3):
        assert run_mlops("registry", "promote", "--version", str(v), "--actor", "setup").returncode == 0
    ci = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLECI_API_URL": circleci_api.url}
    asked = {"pipe-prev": {"run-rollback": True}, "pipe-to2": {"run-rollback": True, "rollback-to": str(v2)}}
    wf = {p: circleci_api.add_workflow(approver="dave", approval_name="hold-rollback", build_jobs=(), name="rollback",
                                       pipeline_id=p, parameters=params) for p, params in asked.items()}
    assert run_mlops("registry", "promote", "--version", str(v4), "--actor", "newer-pipeline").returncode == 0
    rows = len(Ledger().entries())
    for p, args in (("pipe-prev", ()), ("pipe-to2", ("--to", str(v2)))):
        r = run_mlops("registry", "rollback", *args, env={**ci, "CIRCLE_WORKFLOW_ID": wf[p], "CIRCLE_PIPELINE_ID": p})
        assert r.returncode == 2, r.stdout
        assert (f"production of '{model}' is v{v4} now, but was v{v3} when CircleCI pipeline {p} asked for this "
                f"rollback") in one_error_line(r)
    assert len(Ledger().entries()) == rows and versions.production_version(model) == v4
    assert "/api/v2/pipeline/pipe-prev" in [p for _, p, ok in circleci_api.requests if ok]
    # triggered now, against v4: rolls back to v3; its rerun (another workflow of that pipeline) is a no-op;
    # a second rollback pipeline triggered against v4 as well (two on-call people) does not go on to v2
    twin = circleci_api.add_workflow(approver="frank", approval_name="hold-rollback", build_jobs=(), name="rollback",
                                     pipeline_id="pipe-twin", parameters={"run-rollback": True})
    for approver in ("erin", "erin"):
        w = circleci_api.add_workflow(approver=approver, approval_name="hold-rollback", build_jobs=(),
                                      name="rollback", pipeline_id="pipe-now", parameters={"run-rollback": True})
        r = run_mlops("registry", "rollback", env={**ci, "CIRCLE_WORKFLOW_ID": w, "CIRCLE_PIPELINE_ID": "pipe-now"})
        assert r.returncode == 0, r.stderr
        assert versions.production_version(model) == v3
    assert moves(model)[-2:] == [("rollback", v4, v3, "ok"), ("rollback", v3, v3, "ok")]
    r = run_mlops("registry", "rollback", env={**ci, "CIRCLE_WORKFLOW_ID": twin, "CIRCLE_PIPELINE_ID": "pipe-twin"})
    assert r.returncode == 2 and (f"is v{v3} now, but was v{v4} when CircleCI pipeline pipe-twin asked for this "
                                  f"rollback") in one_error_line(r)
    assert versions.production_version(model) == v3


def test_a_circleci_job_without_its_token_is_refused_not_recorded_as_the_os_user(make_version):
    """A promote job whose context lacked CIRCLE_TOKEN recorded the runner's OS user ("circleci") as
    the approver, exit 0: the audit trail lost who approved."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    for token in ("", None):
        env = {"CIRCLE_WORKFLOW_ID": "wf-no-token"} | ({"CIRCLE_TOKEN": token} if token is not None else {})
        r = run_mlops("registry", "promote", "--version", str(v), env=env)
        assert r.returncode == 2, r.stdout
        line = one_error_line(r)
        assert "CIRCLE_WORKFLOW_ID is set (CircleCI workflow wf-no-token) but CIRCLE_TOKEN is not" in line
        assert "--actor" in line
    assert versions.production_version(model) is None and moves(model) == []
    r = run_mlops("registry", "promote", "--version", str(v), "--actor", "alice",
                  env={"CIRCLE_WORKFLOW_ID": "wf-no-token"})
    assert r.returncode == 0, r.stderr
    assert Ledger().entries(model)[-1].actor == "alice"


def test_circleci_problems_are_one_clear_line(make_version, circleci_api):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    pending = circleci_api.add_workflow(approver=None)
    base = {"CIRCLECI_API_URL": circleci_api.url}
    r = run_mlops("registry", "promote", "--version", str(v),
                  env={**base, "CIRCLE_TOKEN": "wrong-token-1234", "CIRCLE_WORKFLOW_ID": pending})
    assert r.returncode == 2
    line = one_error_line(r)
    assert "rejected CIRCLE_TOKEN (HTTP 401)" in line and "wrong-token-1234" not in r.stderr
    r = run_mlops("registry", "promote", "--version", str(v),
                  env={**base, "CIRCLE_TOKEN": circleci_api.token, "CIRCLE_WORKFLOW_ID": pending})
    assert r.returncode == 2 and "approval job hold is not approved yet" in one_error_line(r)
    r = run_mlops("registry", "promote", "--version", str(v),
                  env={**base, "CIRCLE_TOKEN": circleci_api.token, "CIRCLE_WORKFLOW_ID": "no-such-workflow"})
    assert r.returncode == 2 and "HTTP 404" in one_error_line(r)
    from mlops.ports import free_port

    r = run_mlops("registry", "promote", "--version", str(v),
                  env={"CIRCLECI_API_URL": f"http://proxyuser:cipw-hunter2@127.0.0.1:{free_port()}",
                       "CIRCLE_TOKEN": circleci_api.token, "CIRCLE_WORKFLOW_ID": pending})
    assert r.returncode == 2 and "cannot reach the CircleCI API" in one_error_line(r)
    assert circleci_api.token not in r.stderr
    assert "cipw-hunter2" not in r.stderr and "proxyuser:***@127.0.0.1" in r.stderr     # a proxy's password
    assert versions.production_version(model) is None
    assert moves(model) == []


def test_promoting_the_current_version_again_is_recorded_but_moves_nothing(make_version):
    """Nor does it rewrite who let the version in (the second promoter overwrote approved_by)."""
    from registry import tags

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    assert run_mlops("registry", "promote", "--version", str(v), "--actor", "alice").returncode == 0
    r = run_mlops("registry", "promote", "--version", str(v), "--actor", "bob")
    assert r.returncode == 0 and "already holds production" in r.stdout
    assert moves(model) == [("promote", None, 1, "ok"), ("promote", 1, 1, "ok")]
    assert versions.get_version(model, v).tags[tags.APPROVED_BY] == "alice"
    assert [e.actor for e in Ledger().entries(model) if e.action == "promote"] == ["alice", "bob"]


def test_help_is_useful():
    r = run_mlops("registry", "promote", "--help")
    assert r.returncode == 0
    for word in ("--pipeline-id", "CIRCLE_TOKEN", "--force", "--reason", "pipeline_id"):
        assert word in r.stdout


def test_a_circleci_job_run_again_does_not_move_production_a_second_time(make_version, monkeypatch):
    """CircleCI reruns a whole job: the promote step of promote-and-deploy ran again after its
    version's deploy failed and moved production back, promoting the failed version again (and
    --expect-version then passed); a rollback job's rerun rolled back one version further. A
    pipeline moves production once: a rerun where production still is where it put it is a no-op
    (the deploy resumes); one after production moved is refused in one line."""
    import pytest

    from mlops_common.errors import RefusedError
    from registry import deploy_revert, promotion

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    promotion.promote(model, v1, actor="setup")
    monkeypatch.setenv("CIRCLE_PIPELINE_ID", "pipe-a")
    promotion.promote(model, v2, actor="ci")
    assert promotion.promote(model, v2, actor="ci").moved is False          # rerun, nothing changed
    deploy_revert.revert_failed_deploy(model, v2, v1, "smoke test failed", actor="ci")   # the deploy failed
    with pytest.raises(RefusedError, match="already moved production .* to v2 .* it is v1 now"):
        promotion.promote(model, v2, actor="ci")
    assert versions.production_version(model) == v1
    # another pipeline's rollback, run twice: the second run changes nothing
    monkeypatch.setenv("CIRCLE_PIPELINE_ID", "pipe-b")
    promotion.promote(model, v3, actor="ci-b")
    monkeypatch.setenv("CIRCLE_PIPELINE_ID", "pipe-c")
    assert promotion.rollback(model, reason="v3 misbehaves", actor="ci-c").to_version == v1
    again = promotion.rollback(model, reason="v3 misbehaves", actor="ci-c")
    assert again.moved is False and versions.production_version(model) == v1
    assert promotion.rollback(model, to=v1, reason="v3 misbehaves", actor="ci-c").moved is False
    # another move in the same pipeline (another version) is not a rerun: it moves
    monkeypatch.setenv("CIRCLE_PIPELINE_ID", "pipe-a")
    assert promotion.promote(model, v3, actor="ci").moved is True
    # without CircleCI (by hand) the rules are as before
    monkeypatch.delenv("CIRCLE_PIPELINE_ID")
    assert promotion.promote(model, v2, actor="alice").moved is True


def test_the_rerun_a_failed_tag_write_asks_for_writes_who_let_the_version_in_this_time(
        make_version, http_fault_proxy, mlflow_server):
    """A promotion whose tag writes failed after the alias moved says to run it again; the rerun
    finds the version already in production. When that version had an approver from an earlier
    time in production, the rerun kept it: `approved_by` (and the description's "Approved by")
    named alice for bob's promotion until someone ran `registry reconcile`."""
    from registry import tags

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    for args in (("promote", "--version", str(v1), "--actor", "zed"),
                 ("promote", "--version", str(v2), "--actor", "alice"), ("rollback", "--actor", "carol")):
        assert run_mlops("registry", *args).returncode == 0
    assert versions.get_version(model, v2).tags[tags.APPROVED_BY] == "alice"
    proxy = http_fault_proxy(mlflow_server, fail_always=True,
                             match=lambda method, path: method == "POST" and "model-versions/set-tag" in path)
    via = {"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "bob", env=via)
    assert r.returncode != 0 and f"`mlops registry promote --version {v2}` writes them again" in one_error_line(r)
    assert versions.production_version(model) == v2
    proxy.set()                                                  # MLflow answers again
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "bob", env=via)
    assert r.returncode == 0 and "already holds production" in r.stdout, r.stderr
    info = versions.get_version(model, v2)
    assert info.tags[tags.APPROVED_BY] == "bob"
    assert "**Approved by:** bob (promote v1 → v2 by bob" in info.description


def test_reconcile_keeps_who_let_the_version_in_when_it_was_promoted_again(make_version):
    """Promoting production's version again keeps its approver (test above); `registry reconcile`
    then took that no-op row for the move, called the tags "behind" and made bob the approver."""
    from registry import tags

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    assert run_mlops("registry", "promote", "--version", str(v), "--actor", "alice").returncode == 0
    assert run_mlops("registry", "promote", "--version", str(v), "--actor", "bob").returncode == 0
    r = run_mlops("registry", "reconcile", "--actor", "carol")
    assert r.returncode == 0 and "nothing recorded" in r.stdout and "behind" not in r.stdout, r.stdout
    assert versions.get_version(model, v).tags[tags.APPROVED_BY] == "alice"


def test_the_command_a_failed_tag_write_names_finishes_a_forced_move(make_version, http_fault_proxy, mlflow_server):
    """The line after a move whose tag writes failed named `mlops registry promote --version N`;
    for a version that did not pass its gate (moved with --force --reason) that command is refused
    (and recorded as a refusal), and the tags stayed behind. The command it names now finishes
    every move as it is."""
    import re
    import shlex

    from registry import tags

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="failed")
    assert run_mlops("registry", "promote", "--version", str(v1), "--actor", "zed").returncode == 0
    proxy = http_fault_proxy(mlflow_server, fail_always=True,
                             match=lambda method, path: method == "POST" and "model-versions/set-tag" in path)
    via = {"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "bob", "--force",
                  "--reason", "hotfix", env=via)
    line = one_error_line(r)
    assert r.returncode != 0 and versions.production_version(model) == v2, line
    named = re.search(r"`(mlops registry [^`]+)` writes them again", line)
    assert named, line
    proxy.set()
    argv = shlex.split(named.group(1))
    assert argv[:2] == ["mlops", "registry"]
    r = run_mlops(*argv[1:], "--actor", "bob", env=via)
    assert r.returncode == 0, r.stderr
    assert versions.get_version(model, v2).tags[tags.APPROVED_BY] == "bob"
    assert not [e for e in Ledger().entries(model) if e.outcome == "refused"]


def test_a_version_tagged_under_the_old_pipeline_tag_name_is_found_by_its_pipeline(make_version):
    """A version registered before the tags were renamed carries ``ci.pipeline_id``; `registry status`
    shows it as that pipeline's (``tags.read``), yet `promote --pipeline-id` said no version was
    tagged with it, and with `--version` that the version was registered by no pipeline."""
    import pytest

    from mlops_common.errors import RefusedError
    from registry import promotion

    model = os.environ["MLOPS_MODEL_NAME"]
    make_version(validation_status="passed", pipeline_id="pipe-new")
    v2 = make_version(validation_status="passed", tags={"ci.pipeline_id": "pipe-old"})
    assert promotion.version_for_pipeline(model, "pipe-old") == v2
    assert promotion.version_for_pipeline(model, "pipe-old", v2) == v2
    with pytest.raises(RefusedError, match="was registered by pipeline pipe-old, not by pipeline pipe-new"):
        promotion.version_for_pipeline(model, "pipe-new", v2)


def test_reconcile_says_what_it_recorded_once(make_version):
    """`registry reconcile` printed each row it recorded, and the same reason again as a warning
    on stderr (the warning a move gives when it records what it found first): two lines for one
    fact. A move still warns; reconcile prints each row once."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    assert run_mlops("registry", "promote", "--version", str(v1), "--actor", "alice").returncode == 0
    versions.delete_alias(model, versions.PRODUCTION)                  # removed in the MLflow UI
    r = run_mlops("registry", "reconcile", "--actor", "carol")
    said = (r.stdout + r.stderr).count("production found on (none) while the ledger said")
    assert r.returncode == 0 and said == 1, r.stdout + r.stderr
    assert run_mlops("registry", "reconcile", "--actor", "carol").stdout.strip().endswith("nothing recorded")
    v2 = make_version(validation_status="passed")
    versions.set_alias(model, versions.PRODUCTION, v1)                 # set in the MLflow UI
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "alice")
    assert r.returncode == 0 and "reconciled by alice: production found on v1" in r.stderr, r.stderr


def test_promoting_an_older_version_whose_artifacts_are_gone_moves_nothing(make_version):
    """Found by a promotion review (2026-12-07, nineteenth stop): rolling back by promoting an older
    version again (`registry promote --version 1`, as the README says a person rolls back) moved
    production to a version whose artifacts a cleanup had deleted from the store, exit 0 and "Deploy
    it with `mlops sync deploy`" — whose download then failed — while `registry rollback --to 1`
    refused it. The promotion makes the same check now (`promotion.artifacts_check`): one line
    naming what is missing and `--version N`, a refused row, nothing moved; a version whose
    artifacts are there is promoted as before."""
    from tests.test_sync_failed_revert_target import _drop_artifacts

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    for v in (v1, v2):
        assert run_mlops("registry", "promote", "--version", str(v), "--actor", "alice").returncode == 0
    _drop_artifacts(model, v1)
    r = run_mlops("registry", "promote", "--version", str(v1), "--actor", "bob", "--reason", "v2 misbehaves")
    assert r.returncode == 2, r.stdout
    line = one_error_line(r)
    assert f"cannot promote v{v1} of '{model}': its artifacts are gone from the artifact store" in line, line
    assert "tfserving/saved_model.pb" in line and "`mlops registry promote --version N`" in line, line
    assert versions.production_version(model) == v2
    assert moves(model) == [("promote", None, v1, "ok"), ("promote", v1, v2, "ok"), ("promote", v2, v1, "refused")]
    assert versions.get_version(model, v1).tags["approved_by"] == "alice"
    r = run_mlops("registry", "promote", "--version", str(v3), "--actor", "bob")
    assert r.returncode == 0, r.stderr
    assert versions.production_version(model) == v3


def test_a_circleci_promotion_of_a_model_that_does_not_exist_says_so(make_version, circleci_api):
    """Found by a promotion review (2026-12-07, nineteenth stop): in a CircleCI job, `registry
    promote --version N` with a mistyped --model-name / MLOPS_MODEL_NAME answered "the approval in
    CircleCI workflow ... follows no gate of 'imge-classifier' (its pipeline gated no version; a
    rollback's approval?)": the ledger has no gate of a model that does not exist, and the line
    sent the reader to the approval. It says the model does not exist now, as outside CircleCI."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed", pipeline_id="pipe-ci")
    wid = circleci_api.add_workflow(approver="carol-approver", pipeline_id="pipe-ci")
    gated_in(model, v, wid, "pipe-ci")
    env = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLE_WORKFLOW_ID": wid, "CIRCLE_PIPELINE_ID": "pipe-ci",
           "CIRCLECI_API_URL": circleci_api.url}
    r = run_mlops("registry", "promote", "--version", str(v), "--model-name", f"{model}-typo", env=env)
    assert r.returncode == 2, r.stdout
    line = one_error_line(r)
    assert f"registered model '{model}-typo' does not exist" in line and "--model-name" in line, line
    assert moves(model) == [] and versions.production_version(model) is None
    r = run_mlops("registry", "promote", "--version", str(v), env=env)     # the right name: promoted
    assert r.returncode == 0, r.stderr
    assert versions.production_version(model) == v


def test_a_pipelines_promotion_refused_as_a_rerun_names_the_command_that_moves_it_by_hand(make_version):
    """Found by a promotion review (2026-12-07, nineteenth stop): `registry promote --pipeline-id A` at a
    terminal, after pipeline A's version was promoted and another version since, was refused with "a
    pipeline moves production once; start a new pipeline, or move it by hand outside CircleCI" — the
    person was doing just that (--pipeline-id makes it the pipeline's move, wherever it runs). The line
    names the command now, `mlops registry promote --version 1` (without --pipeline-id), and it works."""
    model = os.environ["MLOPS_MODEL_NAME"]
    pipe_a, pipe_b = f"pipe-a-{model}", f"pipe-b-{model}"   # pipeline tags are searched across every model
    v1 = make_version(validation_status="passed", pipeline_id=pipe_a)
    v2 = make_version(validation_status="passed", pipeline_id=pipe_b)
    for pipeline in (pipe_a, pipe_b):
        assert run_mlops("registry", "promote", "--pipeline-id", pipeline, "--actor", "alice").returncode == 0
    r = run_mlops("registry", "promote", "--pipeline-id", pipe_a, "--actor", "alice")
    assert r.returncode == 2, r.stdout
    line = one_error_line(r)
    assert f"this CircleCI pipeline already moved production of '{model}' to v{v1}" in line, line
    assert f"move it by hand outside CircleCI with `mlops registry promote --version {v1}` (without --pipeline-id)" \
        in line, line
    assert versions.production_version(model) == v2
    r = run_mlops("registry", "promote", "--version", str(v1), "--actor", "alice")     # what the line says
    assert r.returncode == 0, r.stderr
    assert versions.production_version(model) == v1


def test_a_hand_set_passed_tag_with_no_gate_row_is_not_a_verdict(make_version):
    """Anyone with write access to the registry can tag a version `validation_status=passed` in the
    MLflow UI. Where the ledger records this model's gates, `registry promote` (and a rollback
    `--to` it) trusted that tag on a version the gate never saw; it is now refused in one line
    (the refusal recorded), and production stays. A ledger with no gate of the model at all (one
    started after its versions were gated) has only the tag: the promotion trusts it and says so."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    first = run_mlops("registry", "promote", "--version", str(v1), "--actor", "alice", "--json")
    assert first.returncode == 0, first.stderr
    gated_in(model, v2, None, None, baseline=v1)          # the gate in use: v2 passed against v1
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "alice", "--json")
    assert r.returncode == 0, r.stderr
    assert "trusted_tag" not in json.loads(r.stdout)["details"] and "no gate row" not in r.stderr
    for cmd in (("promote", "--version"), ("rollback", "--to")):
        r = run_mlops("registry", *cmd, str(v3), "--actor", "mallory")
        assert r.returncode == 2 and one_error_line(r) == (
            f"error: version {v3} of '{model}' is tagged validation_status=passed but the ledger has no gate of it "
            f"(the tag was set outside `mlops registry gate`, in the MLflow UI or API): run `mlops registry gate "
            f"--version {v3}`, or use --force --reason \"...\""), r.stderr
        assert versions.production_version(model) == v2
        row = Ledger().entries(model)[-1]
        assert (row.action, row.outcome, row.to_version, row.actor) == (cmd[0], "refused", v3, "mallory")
    r = run_mlops("registry", "promote", "--version", str(v3), "--actor", "mallory", "--force",
                  "--reason", "gated by hand on the staging set")
    assert r.returncode == 0 and versions.production_version(model) == v3, r.stderr
    # the first promotion, before the model had any gate row: the tag trusted, and said so
    assert json.loads(first.stdout)["details"].get("trusted_tag") is True
    assert f"version {v1} of '{model}' has no gate row in the ledger" in first.stderr
