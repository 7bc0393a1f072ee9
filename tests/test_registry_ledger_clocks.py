"""The ledger's times against clocks of other machines (review, twenty-second stop)."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

from registry import promotion
from registry.ledger import SERVER_MS, Entry, Ledger
from registry.move_checks import STAMP_LATE_MS, production_at
from registry.rest import rest
from tests.helpers import run_mlops


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


class Behind(datetime):
    """``datetime`` whose ``now`` is ten minutes behind: a writer's clock (a laptop, a CI runner)."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) - timedelta(minutes=10)


def test_production_at_goes_by_the_servers_stamp_not_the_writers_clock():
    """v3's promotion, written by a laptop ten minutes behind, after the rollback pipeline was
    triggered: by its writer's clock it came before the trigger, so production "then" was v3 and the
    rollback undid it. The moves' ``server_ms`` (the MLflow server's clock) order them; a row without
    one (written before the stamps) still goes by its time."""
    t = 1_800_000_000_000
    rows = [Entry("promote", "m", "ok", to_version=1, id=1, at=_at(t), details={SERVER_MS: t}),
            Entry("promote", "m", "ok", from_version=1, to_version=2, id=2, at=_at(t + 60_000),
                  details={SERVER_MS: t + 60_000}),
            Entry("promote", "m", "ok", from_version=2, to_version=3, id=3, at=_at(t + 120_000 - 600_000),
                  details={SERVER_MS: t + 120_000})]
    assert production_at(rows, _at(t + 90_000)) == 2
    # the stamp is early by up to STAMP_LATE_MS (a Date header's whole seconds, refreshed once a second):
    # v3's move, its writer's clock outside that span, may have come up to its end, so it is not yet
    # production within it; after it, it is
    late = STAMP_LATE_MS
    assert production_at(rows, _at(t + 120_000)) == 2 and production_at(rows, _at(t + 120_000 + late - 1)) == 2
    assert production_at(rows, _at(t + 120_000 + late)) == 3
    # a writer's clock within the span agrees with the server: its finer time is the move's
    agreed = rows[:2] + [Entry("promote", "m", "ok", from_version=2, to_version=3, id=3, at=_at(t + 121_300),
                               details={SERVER_MS: t + 120_000})]
    assert production_at(agreed, _at(t + 121_200)) == 2 and production_at(agreed, _at(t + 121_300)) == 3
    old = [Entry("promote", "m", "ok", to_version=1, id=1, at=_at(t)),
           Entry("promote", "m", "ok", from_version=1, to_version=2, id=2, at=_at(t + 60_000))]
    assert production_at(old, _at(t + 30_000)) == 1


def _server_ms() -> int:
    """The MLflow server's clock now, refreshed by an answer (whole seconds plus the time since)."""
    rest().get("registered-models/search", {"max_results": 1}, what="reading the server's clock")
    return round(rest().server_now().timestamp() * 1000)


def test_a_rollback_pipeline_is_not_steered_by_a_newer_promotion_written_by_a_clock_behind(
        make_version, circleci_api, monkeypatch):
    """The on-call triggers a rollback pipeline to take production off v2; while its approval waits,
    v3 is promoted from a laptop ten minutes behind the MLflow server. By the rows' times (the writers'
    clocks) v3 held production before the pipeline was triggered, so the approved rollback went
    ahead and rolled v3 back (exit 0): not what the approver saw. Rows written under the promotion
    lock now carry the MLflow server's clock (``server_ms``), which ``production_at`` compares with
    CircleCI's ``created_at``: refused in one line, nothing written."""
    import registry.ledger as ledger_module

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    for v in (v1, v2):
        promotion.promote(model, v, actor="setup")
    stamp = Ledger().entries(model, actions=("promote",))[-1].details[SERVER_MS]
    assert abs(stamp - _server_ms()) < 30_000, stamp
    wf = circleci_api.add_workflow(approver="dave", approval_name="hold-rollback", build_jobs=(), name="rollback",
                                   pipeline_id="pipe-off-v2", parameters={"run-rollback": True})
    # just after v2's promotion (its row's time: this machine's clock is the server's), as CircleCI's clock
    triggered = round(Ledger().entries(model, actions=("promote",))[-1].at.timestamp() * 1000) + 1
    circleci_api.state.pipelines["pipe-off-v2"]["created_at"] = _at(triggered).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    deadline = time.monotonic() + 30
    for _ in range(300):            # v3 comes later on the server's clock, whose Date has whole seconds
        if _server_ms() > triggered + 1500 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _server_ms() > triggered + 1500

    with monkeypatch.context() as m:
        m.setattr(ledger_module, "datetime", Behind)
        promotion.promote(model, v3, actor="laptop")
    assert Ledger().entries(model, actions=("promote",))[-1].at < _at(triggered)     # by its writer's clock
    rows = len(Ledger().entries())
    ci = {"CIRCLE_TOKEN": circleci_api.token, "CIRCLECI_API_URL": circleci_api.url}
    r = run_mlops("registry", "rollback", "--json", env={**ci, "CIRCLE_WORKFLOW_ID": wf,
                                                          "CIRCLE_PIPELINE_ID": "pipe-off-v2"})
    assert r.returncode == 2, r.stdout
    assert (f"production of '{model}' is v{v3} now, but was v{v2} when CircleCI pipeline pipe-off-v2 asked for "
            f"this rollback") in r.stderr, r.stderr
    assert len(Ledger().entries()) == rows


def test_an_old_ledger_written_by_a_clock_behind_keeps_the_models_first_rows(make_version, tmp_path, monkeypatch):
    """A ledger from before the stamps (register rows without ``created_ms``, moves without
    ``model_created_ms``), written by a CI runner ten minutes behind the MLflow server: v1's
    register row was dated before the model's creation (the server's clock), so the ledger's cut
    took it, and every row written in the next ten minutes, for a deleted model's. v1's gate and
    promotion were gone: `registry rollback` from v2 found nowhere to go back to, v1's page said it
    was never promoted nor gated. A register row is the model's when its run is that version's run
    in MLflow now, whatever its writer's clock."""
    import registry.ledger as ledger_module
    from registry import description, versions
    from registry.client import tracking_client

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    runs = {v: versions.get_version(model, v).run_id for v in (v1, v2)}
    monkeypatch.setenv("MLOPS_LEDGER_URL", f"sqlite:///{tmp_path / 'old-ledger.db'}")   # the old ledger alone

    with monkeypatch.context() as m:
        m.setattr(ledger_module, "datetime", Behind)
        Ledger().append_all([
            Entry("register", model, "ok", to_version=v1, actor="ci", details={"run_id": runs[v1]}),
            Entry("gate", model, "passed", to_version=v1, actor="ci", details={"accuracy": 0.95}),
            Entry("promote", model, "ok", to_version=v1, actor="alice", details={"approved_by": "alice"}),
            Entry("deploy", model, "ok", to_version=v1, host="web-1", details={"deploy": "d1"}),
            Entry("register", model, "ok", to_version=v2, actor="ci", details={"run_id": runs[v2]}),
            Entry("gate", model, "passed", from_version=v1, to_version=v2, actor="ci",
                  details={"accuracy": 0.96, "production_accuracy": 0.95}),
            Entry("promote", model, "ok", from_version=v1, to_version=v2, actor="bob", details={"approved_by": "bob"})])
    tracking_client().set_registered_model_alias(model, "production", str(v2))
    assert Ledger().entries(model)[0].at < versions.get_version(model, v1).created_at    # by its writer's clock

    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    found = {x["version"]: x for x in json.loads(r.stdout)["versions"]}
    assert (found[v1]["approved_by"], found[v1]["gate_ledger_id"]) == ("alice", 2), found[v1]
    page = description.render(version=v1, tags={}, aliases=(), created_at=versions.get_version(model, v1).created_at,
                              entries=Ledger().entries(model, version=v1, current=True))
    assert "never promoted" not in page and "not gated yet" not in page and "web-1" in page, page
    r = run_mlops("registry", "rollback", "--actor", "oncall", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to_version"] == v1, r.stdout


def test_an_old_register_row_of_another_run_is_still_a_deleted_models(tmp_path, monkeypatch):
    """The other side of the rule above, on rows from before the stamps: a deleted model's v1
    (registered through mlops from run r-old) does not become the model created again, whose v1
    came from another run outside mlops; its rows are still told by their writers' clocks."""
    import registry.ledger as ledger_module

    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    created = datetime.now(timezone.utc) + timedelta(minutes=5)     # created again after every row below
    led.append_all([Entry("register", "m", "ok", to_version=1, details={"run_id": "r-old"}),
                    Entry("promote", "m", "ok", to_version=1)])
    ms = round(created.timestamp() * 1000)
    monkeypatch.setattr(ledger_module, "version_runs", lambda model: {1: "r-new"})
    assert led.entries("m", current=True, created_ms=ms) == []
    monkeypatch.setattr(ledger_module, "version_runs", lambda model: {1: "r-old"})
    assert [e.action for e in led.entries("m", current=True, created_ms=ms)] == ["register", "promote"]
