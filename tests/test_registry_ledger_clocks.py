"""The ledger's times against clocks of other machines (review, twenty-second stop)."""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

from registry import promotion
from registry.ledger import SERVER_MS, Entry, Ledger
from registry.move_checks import production_at
from registry.rest import rest
from tests.helpers import run_mlops


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


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
    assert production_at(rows, _at(t + 120_000)) == 3
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
    triggered = stamp + 1           # just after v2's promotion, on the server's clock (CircleCI's, NTP)
    circleci_api.state.pipelines["pipe-off-v2"]["created_at"] = _at(triggered).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    deadline = time.monotonic() + 30
    for _ in range(300):            # v3 comes later on the server's clock, whose Date has whole seconds
        if _server_ms() > triggered + 1500 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _server_ms() > triggered + 1500

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(minutes=10)

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
