"""Promotion and rollback decisions on plain ledger entries (pure, fast)."""
from __future__ import annotations

import pytest

from mlops_common.errors import RefusedError
from registry.ledger import Entry
from registry.move_checks import check_promotable
from registry.promotion_rules import (
    failed_deploys,
    ledger_production,
    production_stack,
    restoring_rollback,
    revert_target,
    rollback_in_rollout,
    rollback_target,
    rolled_back_before,
    rolled_back_to,
)
from registry.reconciliation_rules import agreement, open_intents, reconcile_rows


def promote(to, frm=None, outcome="ok"):
    return Entry("promote", "m", outcome, from_version=frm, to_version=to)


def rollback(to, frm, outcome="ok"):
    return Entry("rollback", "m", outcome, from_version=frm, to_version=to)


def deploy(v, outcome):
    return Entry("deploy", "m", outcome, to_version=v)


def test_check_promotable():
    check_promotable("m", 3, "passed")
    with pytest.raises(RefusedError, match="validation_status=failed, not passed"):
        check_promotable("m", 3, "failed")
    with pytest.raises(RefusedError, match="validation_status=pending"):
        check_promotable("m", 3, "pending")
    with pytest.raises(RefusedError, match="--force needs --reason"):
        check_promotable("m", 3, "failed", force=True)
    with pytest.raises(RefusedError, match="--force needs --reason"):
        check_promotable("m", 3, "passed", force=True, reason="   ")
    check_promotable("m", 3, "failed", force=True, reason="hotfix approved by CAB-12")


def test_stack_follows_promotions_and_pops_on_rollback():
    h = [promote(1), promote(2, 1), promote(3, 2)]
    assert production_stack(h) == [1, 2, 3]
    assert production_stack(h + [rollback(2, 3)]) == [1, 2]
    assert production_stack(h + [rollback(2, 3), rollback(1, 2)]) == [1]
    # refused and failed rows do not move production
    assert production_stack(h + [promote(4, 3, outcome="refused")]) == [1, 2, 3]
    # promoting the current version again changes nothing
    assert production_stack(h + [promote(3, 3)]) == [1, 2, 3]
    # rollback to a version never seen in the stack (e.g. --to an old one) pushes it
    assert production_stack([promote(5), rollback(2, 5)]) == [5, 2]
    # production removed after the very first deploy failed
    assert production_stack([promote(1), rollback(None, 1)]) == []


def test_a_rollback_to_a_version_that_held_production_is_a_restore():
    h = [promote(1), deploy(1, "ok"), promote(2, 1), deploy(2, "ok")]
    row = restoring_rollback(h + [rollback(1, 2), deploy(1, "ok")], 1)
    assert row is not None and (row.from_version, row.to_version) == (2, 1)
    assert restoring_rollback(h + [rollback(1, 2)], 2) is None            # not the version rolled back to
    assert restoring_rollback(h, 2) is None                               # a promotion
    assert restoring_rollback(h + [promote(1, 2)], 1) is None             # promoting an older version again
    assert restoring_rollback([promote(5), rollback(2, 5)], 2) is None    # --to a version that never held it
    assert restoring_rollback(h + [rollback(1, 2), promote(3, 1)], 1) is None   # a newer move since
    # an automatic revert after a failed deploy is a rollback too; refused / intent rows are no moves
    assert restoring_rollback(h + [promote(3, 2), rollback(2, 3)], 2).from_version == 3
    assert restoring_rollback(h + [rollback(1, 2, outcome="refused")], 1) is None
    assert restoring_rollback(h + [rollback(1, 2), Entry("intent", "m", "pending", to_version=3)], 1) is not None
    assert restoring_rollback([], 1) is None
    # it must have served: a version whose latest deploy failed, or that was never deployed, is not restored
    failed = [promote(1), deploy(1, "ok"), promote(2, 1), deploy(2, "failed"), rollback(1, 2)]
    assert restoring_rollback(failed, 1) is not None
    assert restoring_rollback(failed + [rollback(2, 1)], 2) is None
    assert restoring_rollback([promote(1), promote(2, 1), deploy(2, "ok"), rollback(1, 2)], 1) is None
    redeployed = [promote(1), deploy(1, "failed"), deploy(1, "ok"), promote(2, 1), deploy(2, "ok"), rollback(1, 2)]
    assert restoring_rollback(redeployed, 1) is not None


def test_failed_deploys_from_latest_row_or_tag():
    h = [deploy(1, "ok"), deploy(2, "failed"), deploy(3, "failed"), deploy(3, "ok")]
    assert failed_deploys(h, {}) == {2}
    assert failed_deploys(h, {4: {"deploy_status": "failed"}, 1: {"deploy_status": "deployed"}}) == {2, 4}


def test_rollback_v1_v2_v3_failed_goes_to_v2():
    h = [promote(1), deploy(1, "ok"), promote(2, 1), deploy(2, "ok"), promote(3, 2), deploy(3, "failed")]
    stack, failed = production_stack(h), failed_deploys(h, {})
    assert rollback_target(stack, 3, failed) == 2


def test_rollback_skips_a_failed_version_below_the_current_one():
    h = [promote(1), promote(2, 1), promote(3, 2), deploy(3, "failed"), promote(4, 3)]
    assert rollback_target(production_stack(h), 4, failed_deploys(h, {})) == 2
    # the same via the tag only
    h2 = [promote(1), promote(2, 1), promote(3, 2), promote(4, 3)]
    assert rollback_target(production_stack(h2), 4, failed_deploys(h2, {3: {"deploy_status": "failed"}})) == 2


def test_rolling_back_twice_goes_two_steps_back():
    h = [promote(1), promote(2, 1), promote(3, 2), rollback(2, 3)]
    assert rollback_target(production_stack(h), 2, set()) == 1


def test_after_automatic_revert_the_failed_version_is_not_a_target():
    h = [promote(1), promote(2, 1), promote(3, 2), deploy(3, "failed"), rollback(2, 3)]
    stack = production_stack(h)
    assert stack == [1, 2]
    assert rollback_target(stack, 2, failed_deploys(h, {})) == 1


def test_nothing_to_roll_back_to():
    assert rollback_target([], None, set()) is None
    assert rollback_target([1], 1, set()) is None
    assert rollback_target([1, 2], 2, {1}) is None


def test_alias_moved_outside_the_ledger_rolls_back_to_the_last_known_good():
    # someone pointed production at v7 in the MLflow UI: the ledger's top is the previous one
    assert rollback_target([1, 2], 7, set()) == 2


def numbered(*entries):
    """Entries as the ledger returns them: ids in order."""
    from dataclasses import replace
    return [replace(e, id=i) for i, e in enumerate(entries, 1)]


def intent(to, frm, move="promote", outcome="pending", closes=None):
    return Entry("intent", "m", outcome, from_version=frm, to_version=to, actor="alice",
                 details={"move": move} if closes is None else {"intent": closes})


def test_intents_are_no_moves_until_confirmed():
    rows = numbered(promote(1), intent(2, 1))
    assert production_stack(rows) == [1] and ledger_production(rows) == 1
    assert [e.id for e in open_intents(rows)] == [2]
    closed = numbered(promote(1), intent(2, 1), Entry("promote", "m", "ok", from_version=1, to_version=2,
                                                       details={"intent": 2}))
    assert open_intents(closed) == [] and ledger_production(closed) == 2
    failed = numbered(promote(1), intent(2, 1), intent(2, 1, outcome="failed", closes=2))
    assert open_intents(failed) == [] and ledger_production(failed) == 1


def test_agreement_names_what_is_wrong():
    rows = numbered(promote(1), intent(2, 1))
    assert agreement(1, numbered(promote(1))).problem() is None
    a = agreement(2, rows)                           # the move happened, its record did not
    assert not a.agrees and "intent #2 (promote to v2 by alice) moved it" in a.problem()
    assert "mlops registry reconcile" in a.problem()
    a = agreement(1, rows)                           # died before the move: agrees, intent open
    assert a.agrees and a.problem().startswith("open intent #2")
    a = agreement(5, numbered(promote(1)))
    assert not a.agrees and "moved outside mlops" in a.problem()
    assert a.to_dict() == {"alias": 5, "ledger": 1, "agrees": False, "open_intents": [],
                           "problem": a.problem()}
    # found by review (2026-12-05, ninth stop): a wrong MLOPS_HOME / MLOPS_LEDGER_URL read an empty
    # ledger, and the advice to reconcile would have written the move into it
    empty = agreement(5, [])
    assert not empty.agrees and "this ledger has no row for the model" in empty.problem()
    assert "MLOPS_LEDGER_URL" in empty.problem() and "moved outside mlops" not in empty.problem()
    assert agreement(None, []).problem() is None


def test_reconcile_confirms_the_intent_the_alias_shows():
    rows = numbered(promote(1), intent(2, 1, move="rollback"))
    [row] = reconcile_rows("m", 2, rows, actor="ops")
    assert (row.action, row.outcome, row.from_version, row.to_version, row.actor) == \
        ("rollback", "ok", 1, 2, "alice")
    assert row.details["intent"] == 2 and row.details["reconciled_by"] == "ops"
    assert "reconciled by ops" in row.reason and "ended before recording it" in row.reason
    after = numbered(*rows, row)
    assert reconcile_rows("m", 2, after, actor="ops") == [] and agreement(2, after).problem() is None


def test_reconcile_closes_intents_that_did_not_happen_and_records_outside_moves():
    rows = numbered(promote(1), intent(2, 1))
    [row] = reconcile_rows("m", 1, rows, actor="ops")
    assert (row.action, row.outcome, row.details) == ("intent", "failed", {"intent": 2})
    assert "did not move production (it is v1)" in row.reason
    # an open intent to v2, but someone set v3 in the MLflow UI: close the intent, record v3
    closing, outside = reconcile_rows("m", 3, rows, actor="ops")
    assert (closing.action, closing.outcome) == ("intent", "failed")
    assert (outside.action, outside.outcome, outside.from_version, outside.to_version) == ("promote", "ok", 1, 3)
    assert "moved outside mlops" in outside.reason and outside.details["moved_outside"] is True
    # the alias removed by hand
    [gone] = reconcile_rows("m", None, numbered(promote(1)), actor="ops")
    assert (gone.action, gone.from_version, gone.to_version) == ("rollback", 1, None)
    assert production_stack(numbered(promote(1), gone)) == []


# --- check_gate_baseline: a passing gate is about the production it compared with -----------------
def _gate(version, baseline, outcome="passed"):
    return Entry(action="gate", model="m", outcome=outcome, from_version=baseline, to_version=version)


def test_a_gate_against_another_production_is_refused_and_the_exceptions_are_not():
    from registry.move_checks import check_gate_baseline, ever_held, latest_gate

    check_gate_baseline("m", 3, 2, _gate(3, 2), set())                     # gated against today's
    with pytest.raises(RefusedError, match="passed its gate against v1, but production is now v2"):
        check_gate_baseline("m", 3, 2, _gate(3, 1), set())
    with pytest.raises(RefusedError, match=r"against \(none\), but production is now v2"):
        check_gate_baseline("m", 3, 2, _gate(3, None), set())
    with pytest.raises(RefusedError, match=r"against v2, but production is now \(none\)"):
        check_gate_baseline("m", 3, None, _gate(3, 2), set())
    check_gate_baseline("m", 3, 2, _gate(3, 1), {3})                       # held production: a rollback
    check_gate_baseline("m", 3, 3, _gate(3, 1), set())                     # already production
    check_gate_baseline("m", 3, 2, _gate(3, 1), set(), force=True)
    check_gate_baseline("m", 3, 2, None, set())                            # no gate row: the tag decides
    # reached after check_promotable (tag passed): a failed latest row disagrees with it (two gates at once)
    with pytest.raises(RefusedError, match=r"tagged validation_status=passed but its latest gate \(ledger #None\) "
                                           r"failed: two gates of it disagree; run `mlops registry gate --version 3`"):
        check_gate_baseline("m", 3, 2, _gate(3, 2, "failed"), set())
    check_gate_baseline("m", 3, 2, _gate(3, 2, "failed"), {3})             # held production: a rollback
    check_gate_baseline("m", 3, 3, _gate(3, 2, "failed"), set())           # already production
    check_gate_baseline("m", 3, 2, _gate(3, 2, "failed"), set(), force=True)
    rows = [_gate(3, 1), _gate(4, 1), _gate(3, 2)]
    assert latest_gate(rows, 3).from_version == 2 and latest_gate(rows, 5) is None
    moves = [promote(1), promote(2, 1), rollback(1, 2), promote(5, 1, outcome="refused"), deploy(6, "ok")]
    assert ever_held(moves) == {1, 2}


def test_a_failed_deploy_undoes_the_move_that_made_its_version_production():
    tags = {1: {}, 2: {}, 3: {}}
    promoted = [promote(1), deploy(1, "ok"), promote(2, 1), deploy(2, "ok"), promote(3, 2), deploy(3, "ok")]
    # a promotion that fails to deploy goes back down the stack, as `registry rollback` would
    assert revert_target(promoted[:-1], tags, 3) == 2
    # a rollback to v2 that fails to deploy goes back to v3, where the hosts were put back: one
    # more step down (v1) named a version no host served
    assert revert_target([*promoted, rollback(2, 3)], tags, 2) == 3
    # ... unless v3 is gone from the registry: then the rollback rule
    assert revert_target([*promoted, rollback(2, 3)], {1: {}, 2: {}}, 2) == 1
    # a rollback to another version than the failing one changes nothing
    assert revert_target([*promoted, rollback(1, 3), promote(2, 1)], tags, 2) == 1
    # found by review: a rollback already rolled out (v2 deployed since), then a later deploy of
    # v2 failing (a new host) must not bring back the v3 rolled back from
    assert revert_target([*promoted, rollback(2, 3), deploy(2, "ok")], tags, 2) == 1
    # nor is a failed deploy's automatic revert a rollback a person asked for
    auto = Entry("rollback", "m", "ok", from_version=3, to_version=2, details={"automatic": True})
    assert revert_target([*promoted, auto], tags, 2) == 1
    # found by review: this deploy's own canary row (ok, not final) is not another rollout of v2
    canary = Entry("deploy", "m", "ok", from_version=3, to_version=2, details={"deploy": "d1", "final": False})
    assert revert_target([*promoted, rollback(2, 3), canary], tags, 2, deploy_id="d1") == 3
    final_of_this = Entry("deploy", "m", "ok", from_version=3, to_version=2, details={"deploy": "d1"})
    assert revert_target([*promoted, rollback(2, 3), final_of_this], tags, 2, deploy_id="d1") == 3


def test_a_circleci_rerun_of_a_rollback_records_no_move_so_its_failed_deploy_still_goes_back():
    """A rerun of `rollback-and-deploy` while production is still where that job put it records
    a rollback row from v2 to v2 (`rerun_of`). It moved nothing, yet it was taken for the
    person's rollback being rolled out: a failed deploy of v2 then "went back" to v2 itself
    (production left on the failed version while the hosts were put back to v3), and the restore
    said it rolled back from v2."""
    tags = {1: {}, 2: {}, 3: {}}
    promoted = [promote(1), deploy(1, "ok"), promote(2, 1), deploy(2, "ok"), promote(3, 2), deploy(3, "ok")]
    person = rollback(2, 3)
    host_fault = Entry("deploy", "m", "failed", from_version=3, to_version=2, details={"registry_unchanged": True})
    rerun = Entry("rollback", "m", "ok", from_version=2, to_version=2, details={"rerun_of": 7})
    entries = [*promoted, person, host_fault, rerun]
    assert revert_target(entries, tags, 2) == 3
    assert restoring_rollback(entries, 2).from_version == 3
    # a promotion recorded again where it already served moves nothing either
    assert restoring_rollback([*promoted, person, promote(2, 2)], 2).from_version == 3


def test_a_move_recorded_where_production_already_was_is_not_the_move_a_deploy_rolls_out():
    """A CircleCI rollback job run again records a no-op row (v1 -> v1): the deploy after it still
    restores the rollback from v2 (and tags v2 rolled_back); a failed deploy of it goes back to v2."""
    h = [promote(1), deploy(1, "ok"), promote(2, 1), deploy(2, "ok"), rollback(1, 2)]
    rerun = rollback(1, 1)
    assert restoring_rollback(h + [rerun, deploy(1, "ok")], 1).from_version == 2
    assert rollback_in_rollout(h + [rerun], 1).from_version == 2
    assert rollback_in_rollout(h + [deploy(1, "ok"), rerun], 1) is None       # rolled out before the rerun
    assert revert_target(h + [rerun], {1: {}, 2: {}}, 1) == 2
    assert restoring_rollback(h + [deploy(1, "ok"), promote(1, 1)], 1).from_version == 2   # promoted again in place


def test_the_rollback_a_deploy_tags_the_version_rolled_back_from_of():
    """Any person's rollback that is the newest move (a restore or ``--to`` a version that never
    held production); not a failed deploy's automatic revert, whose version says ``failed``."""
    h = [promote(1), deploy(1, "ok"), promote(3, 1), deploy(3, "ok")]
    assert rolled_back_to(h + [rollback(2, 3)], 2).from_version == 3          # 2 never held production
    assert rolled_back_to(h + [rollback(1, 3), rollback(1, 1)], 1).from_version == 3   # a rerun's no-op row
    assert rolled_back_to(h + [rollback(1, 3), promote(3, 1)], 1) is None
    automatic = Entry("rollback", "m", "ok", from_version=3, to_version=1, details={"automatic": True})
    assert rolled_back_to(h + [automatic], 1) is None


def test_the_earlier_rollbacks_of_a_chain_a_deploy_tags_too():
    """v3 -> v2 and v2 -> v1 before a deploy: the deploy of v1 tags v2 and v3 (the one the hosts
    served); the chain stops at a promotion, an automatic revert, or a rollback elsewhere."""
    h = [promote(1), promote(2, 1), promote(3, 2)]
    assert [e.from_version for e in rolled_back_before(h + [rollback(2, 3), rollback(1, 2)], 1)] == [3]
    assert [e.from_version for e in rolled_back_before(h + [rollback(2, 3), rollback(1, 2), rollback(1, 1)], 1)] == [3]
    assert rolled_back_before(h + [rollback(1, 3)], 1) == []
    assert rolled_back_before(h + [rollback(2, 3), promote(4, 2), rollback(1, 4)], 1) == []
    # `--to 1` never reached the hosts (its artifacts were gone), then `--to 2`: v3 served
    assert [e.from_version for e in rolled_back_before(h + [rollback(1, 3), rollback(2, 1)], 2)] == [3]
    assert rolled_back_before(h + [rollback(1, 2), rollback(2, 1)], 2) == []           # 2 serves again
    automatic = Entry("rollback", "m", "ok", from_version=3, to_version=2, details={"automatic": True})
    assert rolled_back_before(h + [automatic, rollback(1, 2)], 1) == []
    assert rolled_back_before(h + [rollback(2, 3)], 3) == []


def test_a_chain_of_rollbacks_ends_at_one_whose_version_was_rolled_out():
    """Found by a rollback review (2026-12-07): v3 -> v2 rolled out, then v2 -> v1: the hosts
    served v2, not v3, when the second rollback's deploy began; the chain went on to v3 anyway, so
    the restore said "rolled back from v3"."""
    h = [promote(1), promote(2, 1), promote(3, 2), deploy(3, "ok")]
    assert rolled_back_before(h + [rollback(2, 3), deploy(2, "ok"), rollback(1, 2)], 1) == []
    # a deploy that did not finish (its canary only, or failed) did not take the fleet off v3
    partial = Entry("deploy", "m", "ok", to_version=2, details={"final": False})
    assert [e.from_version for e in rolled_back_before(h + [rollback(2, 3), partial, rollback(1, 2)], 1)] == [3]
    assert [e.from_version for e in rolled_back_before(h + [rollback(2, 3), deploy(2, "failed"), rollback(1, 2)],
                                                       1)] == [3]
    # a deploy of the version of this chain's last rollback, not the earlier one's, is this deploy
    assert [e.from_version for e in rolled_back_before(h + [rollback(2, 3), rollback(1, 2), deploy(1, "ok")],
                                                       1)] == [3]
