"""Edges of the registry's pure decisions that hand mutation testing found unguarded (pure, fast).

Each test here failed on a small change to the rule it names (a comparison flipped, a condition
dropped) that every other test let through."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mlops_common.errors import RefusedError
from registry import description
from registry import tags as T
from registry.gate_rules import GateRules, decide
from registry.ledger import Entry
from registry.move_checks import check_pipeline_rerun, pipeline_move
from registry.promotion_rules import (
    failed_deploys,
    last_verdict,
    ledger_production,
    rollback_in_rollout,
    rollback_unfinished,
)
from registry.reconciliation_rules import reconcile_rows

from .test_registry_gate_rules import evaluation, failed_rules


# --- gate_rules ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["min_accuracy", "max_accuracy_drop", "max_class_drop"])
def test_a_gate_limit_of_zero_is_a_limit(name):
    """0 is in [0, 1]: ``--max-accuracy-drop 0`` (no drop at all) is a setting, not bad input."""
    assert getattr(GateRules.from_env(**{name: 0.0}), name) == 0.0


def test_a_class_accuracy_of_zero_is_a_measurement_that_fails_the_class_rule():
    """A class the candidate never gets right has accuracy 0: a number in [0, 1], judged by the
    per-class rule (and production with such a class is a baseline, not a broken evaluation)."""
    prod = {str(k): 0.95 for k in range(10)}
    v = decide(evaluation(0.86, dict(prod, **{"3": 0.0})), evaluation(0.95, prod), GateRules(),
               baseline_version=1)
    assert "metrics_valid" not in failed_rules(v) and "class_accuracy_vs_production" in failed_rules(v)
    v = decide(evaluation(0.95, prod), evaluation(0.86, dict(prod, **{"3": 0.0})), GateRules(),
               baseline_version=1)
    assert v.passed, [c.message for c in v.failed]


def test_a_candidate_exactly_at_the_allowed_drop_passes_despite_float_rounding():
    """338/450 right vs production's 383/450 is a drop of exactly 0.1, but ``383/450 - 0.1`` is one
    ulp above ``338/450``: the slack (EPS) is what lets a value exactly at a limit pass."""
    rules = GateRules(min_accuracy=0.5, max_accuracy_drop=0.1, max_class_drop=0.2)
    v = decide(evaluation(338 / 450), evaluation(383 / 450), rules, baseline_version=1)
    assert v.passed, [c.message for c in v.failed]
    v = decide(evaluation(337 / 450), evaluation(383 / 450), rules, baseline_version=1)
    assert failed_rules(v) == ["accuracy_vs_production"]


def test_a_class_drop_exactly_at_the_limit_passes_where_the_subtraction_rounds_up():
    """0.4 - 0.3 is 0.10000000000000003 in floats: a drop of exactly 0.10 still passes."""
    prod = {str(k): 0.4 for k in range(10)}
    rules = GateRules(min_accuracy=0.3, max_accuracy_drop=0.2)
    v = decide(evaluation(0.39, dict(prod, **{"5": 0.3})), evaluation(0.4, prod), rules, baseline_version=1)
    assert v.passed, [c.message for c in v.failed]
    v = decide(evaluation(0.39, dict(prod, **{"5": 0.29})), evaluation(0.4, prod), rules, baseline_version=1)
    assert failed_rules(v) == ["class_accuracy_vs_production"]


# --- promotion_rules -------------------------------------------------------------------------
def _move(action, to, frm, *, pipeline=None, outcome="ok", id=None, **details):
    return Entry(action, "m", outcome, from_version=frm, to_version=to, pipeline_id=pipeline, id=id,
                 details=details)


def test_a_pipelines_own_move_is_its_last_one_and_never_an_automatic_revert():
    rows = [_move("promote", 2, 1, pipeline="p", id=1), _move("promote", 3, 2, pipeline="p", id=2),
            _move("rollback", 2, 3, pipeline="p", id=3, automatic=True),
            _move("promote", 4, 2, pipeline="q", id=4)]
    assert pipeline_move(rows, "p").id == 2
    assert pipeline_move(rows, "q").id == 4 and pipeline_move(rows, "r") is None


def test_a_pipeline_rerun_is_the_same_action_to_the_same_version():
    promoted = _move("promote", 2, 1, pipeline="p", id=5)
    assert check_pipeline_rerun("m", "promote", 2, promoted, 2) is True
    # a rollback job in the pipeline that promoted is another move, not a rerun of the promotion
    assert check_pipeline_rerun("m", "rollback", 2, promoted, None) is False
    assert check_pipeline_rerun("m", "promote", 2, promoted, 3) is False
    rolled = _move("rollback", 1, 2, pipeline="p", id=6)
    assert check_pipeline_rerun("m", "rollback", 1, rolled, None) is True     # "the previous one", again
    with pytest.raises(RefusedError, match=r"already moved production of 'm' to v2 \(ledger #5\).* v1 now"):
        check_pipeline_rerun("m", "promote", 1, promoted, 2)


def test_a_put_back_after_a_promotion_leaves_the_version_moved():
    """A deploy that put back hosts without blaming the version undoes only its own rows: the
    version's last verdict goes back to its promotion (``moved``), not ``put_back``."""
    rows = [_move("promote", 2, 1),
            Entry("deploy", "m", "ok", to_version=2, host="a", details={"deploy": "d", "final": False}),
            Entry("deploy", "m", "failed", to_version=2, host="a",
                  details={"deploy": "d", "registry_unchanged": True, "switched_put_back": True})]
    assert last_verdict(rows, 2) == "moved"


def test_a_version_put_back_or_stopped_after_its_canary_is_not_a_failed_deploy():
    rows = [Entry("deploy", "m", "ok", to_version=2, details={"deploy": "d", "final": False}),
            Entry("deploy", "m", "failed", to_version=3,
                  details={"deploy": "e", "registry_unchanged": True, "switched_put_back": True}),
            Entry("deploy", "m", "failed", to_version=4)]
    assert failed_deploys(rows, {}) == {4}


def test_a_rollbacks_rollout_stopped_after_its_canary_is_still_to_roll_out():
    rows = [_move("promote", 1, None), Entry("deploy", "m", "ok", to_version=1), _move("promote", 2, 1),
            _move("rollback", 1, 2, id=9),
            Entry("deploy", "m", "ok", to_version=1, details={"deploy": "killed", "final": False})]
    assert rollback_in_rollout(rows, 1, deploy_id="now").id == 9
    assert rollback_in_rollout(rows + [Entry("deploy", "m", "ok", to_version=1, details={"deploy": "x"})],
                               1, deploy_id="now") is None


def test_an_unfinished_rollback_is_told_by_deployed_on_the_version_rolled_back_from():
    rows = [_move("promote", 1, None), _move("promote", 2, 1), _move("rollback", 1, 2, id=3)]
    assert rollback_unfinished(rows, 1, {1: {}, 2: {T.DEPLOY_STATUS: "deployed"}}).id == 3
    for status in ("rolled_back", "failed"):
        assert rollback_unfinished(rows, 1, {1: {}, 2: {T.DEPLOY_STATUS: status}}) is None
    assert rollback_unfinished(rows, 1, {1: {}, 2: {}}) is None


def test_a_failed_move_does_not_change_where_the_ledger_says_production_is():
    rows = [_move("promote", 1, None), _move("promote", 2, 1, outcome="failed"),
            _move("rollback", None, 1, outcome="failed")]
    assert ledger_production(rows) == 1


def test_reconcile_does_not_record_an_open_intent_again_when_the_ledger_already_has_its_move():
    """An intent whose target the ledger already shows in production (the move was recorded, the
    intent left open): it is closed as failed, and no second move row changes the approver."""
    rows = [_move("promote", 1, None, id=1), _move("promote", 2, 1, id=2),
            Entry("intent", "m", "pending", from_version=1, to_version=2, actor="bob", id=3,
                  details={"move": "promote"})]
    out = reconcile_rows("m", 2, rows, actor="rec")
    assert [(r.action, r.outcome) for r in out] == [("intent", "failed")]


# --- description -----------------------------------------------------------------------------
def _promotions(k: int, at=None) -> list[Entry]:
    """v1 promoted, then ``k`` rollbacks and promotions between v1 and v2 (``k + 1`` moves of v1)."""
    out = [Entry("promote", "m", "ok", to_version=1, actor="a", id=1, at=at, reason="r" * 90)]
    for i in range(k):
        frm, to = (1, 2) if i % 2 == 0 else (2, 1)
        out.append(Entry("promote", "m", "ok", from_version=frm, to_version=to, actor="a", id=i + 2, at=at,
                         reason="r" * 90))
    return out


def test_our_block_of_a_description_with_nothing_above_it_is_ours_without_the_marker():
    block = "**v1** · no alias · validation passed · deploy deployed\n"
    assert description.block(description.compose("", block, "")) == block
    assert description.block(description.compose("", block, "\n\nnote")) == block
    assert description.block(description.END + "\n\nnote") == "\n"       # an end marker alone: ours is above it


def test_the_production_history_shows_the_newest_ten_moves():
    text = description.render(version=1, tags={}, aliases=(), entries=_promotions(11))
    shown = [x for x in text.splitlines() if x.startswith("| #")]
    assert len(shown) == 10 and shown[-1].startswith("| #12 ") and shown[0].startswith("| #3 ")
    assert "2 older rows left out here" in text


def _shown(text: str) -> list[int]:
    """The ledger ids of the table rows shown, oldest first (ids here follow the rows' order)."""
    return sorted(int(x.split("|")[1].strip().lstrip("#")) for x in text.splitlines() if x.startswith("| #"))


def test_a_block_exactly_at_its_limit_keeps_every_row_and_one_over_drops_the_oldest():
    entries = _promotions(3) + [Entry("deploy", "m", "ok", host="h", to_version=1, id=9, reason="r" * 90)]
    full = description.render(version=1, tags={}, aliases=(), entries=entries)
    assert description.render(version=1, tags={}, aliases=(), entries=entries,
                              max_chars=len(full)) == full
    shorter = description.render(version=1, tags={}, aliases=(), entries=entries,
                                 max_chars=len(full) - 1)
    assert _shown(shorter) and _shown(shorter) == [1, 2, 3, 4, 9][-len(_shown(shorter)):]   # the oldest went
    # the deploy row is the oldest: it goes first
    entries = [Entry("deploy", "m", "ok", host="h", to_version=1, id=1, reason="r" * 90)] + [
        Entry(e.action, "m", "ok", from_version=e.from_version, to_version=e.to_version, id=e.id + 1,
              reason=e.reason)
        for e in _promotions(3)]
    full = description.render(version=1, tags={}, aliases=(), entries=entries)
    shorter = description.render(version=1, tags={}, aliases=(), entries=entries,
                                 max_chars=len(full) - 1)
    assert _shown(shorter) and _shown(shorter) == [1, 2, 3, 4, 5][-len(_shown(shorter)):]


def test_a_register_row_created_at_the_versions_creation_instant_is_its_own():
    """The version's rows start at its own ``register`` row: the one whose ``created_ms`` is the
    version's creation, to the millisecond (both the MLflow server's clock); one created a
    millisecond earlier is an earlier v1's (a model deleted and created again), and so is every row
    before it. No row's ``at`` (its writer's clock) decides (twenty-first stop: the rule compared it
    with the version's creation, and a writer's clock behind the server's hid the version's rows)."""
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ms = round(at.timestamp() * 1000)
    behind = at - timedelta(hours=1)                    # every row written by a clock an hour behind

    def rows(created_ms: int) -> list[Entry]:
        return [Entry("promote", "m", "ok", to_version=1, actor="old", id=1, at=behind),
                Entry("register", "m", "ok", to_version=1, actor="a", id=2, at=behind,
                      details={"created_ms": created_ms}),
                Entry("promote", "m", "ok", to_version=1, actor="a", id=3, at=behind)]

    assert [e.id for e in description.current(rows(ms), at, 1)] == [2, 3]
    assert [e.id for e in description.current(rows(ms - 1), at, 1)] == [3]
