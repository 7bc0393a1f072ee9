"""Promotion and rollback decisions on plain ledger entries (pure, fast)."""
from __future__ import annotations

import pytest

from mlops_common.errors import RefusedError
from registry.ledger import Entry
from registry.promotion_rules import (check_promotable, failed_deploys, production_stack,
                                      rollback_target)


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
