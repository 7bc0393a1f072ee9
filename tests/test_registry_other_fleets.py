"""Another fleet's rows where the ledger decides (review, twenty-second stop).

A deploy whose ``--hosts`` names another file than the configured fleet's (a staging fleet, a
subset) writes its rows with ``details.fleet``. Its rollout there is not the configured fleet's:
it must not make a version "deployed" for a rollback, a restore or ``sync watch``. Its failure is
the version's (it failed on a host), as documented since the twenty-first stop."""
from __future__ import annotations

from registry import deploys
from registry.ledger import Entry, Ledger
from registry.promotion_rules import (
    failed_after_promotion,
    latest_deploys,
    restoring_rollback,
    rollback_choice,
    rollback_in_rollout,
    rolled_back_before,
)

STAGING = "/etc/mlops/staging.toml"


def _move(action, to, frm, **kw) -> Entry:
    return Entry(action, "m", kw.pop("outcome", "ok"), from_version=frm, to_version=to, **kw)


def _deploy(version, outcome="ok", fleet=None, run="d", **details) -> Entry:
    return Entry("deploy", "m", outcome, to_version=version, host="web-1",
                 details={"deploy": run, **({"fleet": fleet} if fleet else {}), **details})


def test_a_rollout_on_another_fleet_does_not_make_the_version_the_rollback_target():
    """v1 served on the fleet; v2 was promoted and replaced by v3 before the fleet got it, but a
    staging deploy rolled it out there. The rollback from v3 went to v2, a version the configured
    fleet never ran (in the middle of an incident), instead of v1."""
    rows = [_move("promote", 1, None), _deploy(1), _move("promote", 2, 1), _deploy(2, fleet=STAGING, run="s"),
            _move("promote", 3, 2), _deploy(3, run="e")]
    tags = {1: {}, 2: {}, 3: {}}
    assert rollback_choice(rows, tags, 3).version == 1
    assert latest_deploys(rows) == {1: "ok", 3: "ok"}
    assert latest_deploys(rows, STAGING) == {2: "ok"}


def test_a_rollout_on_another_fleet_does_not_clear_the_fleets_failure():
    """v2's deploy failed on the fleet (``sync watch`` skips it until it is promoted again); a
    staging deploy of v2 then went well, and the watch took the failure for cleared and deployed
    v2 to the fleet again at its next pass."""
    rows = [_move("promote", 2, 1), _deploy(2, "failed"), _deploy(2, fleet=STAGING, run="s")]
    assert failed_after_promotion(rows, 2)
    assert failed_after_promotion([*rows, _deploy(2, run="again")], 2) is False     # the fleet's own rollout


def test_a_failure_on_another_fleet_still_counts():
    """The documented rule: the version failed on a host, whichever fleet (it tags ``failed`` and
    moves production back)."""
    rows = [_move("promote", 1, None), _deploy(1), _move("promote", 2, 1), _deploy(2),
            _deploy(2, "failed", fleet=STAGING, run="s"), _move("rollback", 1, 2)]
    assert latest_deploys(rows) == {1: "ok", 2: "failed"}
    assert failed_after_promotion(rows[:5], 2)


def test_a_rollback_to_a_version_only_another_fleet_served_is_no_restore():
    """v1 held production but its deploy to the fleet failed; staging then served it. A rollback to
    v1 was taken for a restore of a version the fleet served: every host switched at once with no
    bake and no canary."""
    rows = [_move("promote", 1, None), _deploy(1, "failed"), _deploy(1, fleet=STAGING, run="s"),
            _move("promote", 2, 1), _deploy(2, run="e"), _move("rollback", 1, 2, id=9)]
    assert restoring_rollback(rows, 1) is None
    assert restoring_rollback([*rows[:2], _deploy(1, run="f"), *rows[3:]], 1).id == 9


def test_a_rollout_on_another_fleet_is_not_the_rollout_of_a_rollback():
    """After a person's rollback v2 -> v1, a staging deploy of v1 counted as that rollback's
    rollout: the fleet's own deploy of v1 then failed and moved production one more step down
    instead of back to v2 (``revert_target``), and the chain of rollbacks before it was cut."""
    rows = [_move("promote", 1, None), _deploy(1), _move("promote", 2, 1), _deploy(2, run="e"),
            _move("promote", 3, 2), _move("rollback", 2, 3, id=7), _deploy(2, fleet=STAGING, run="s"),
            _move("rollback", 1, 2, id=8), _deploy(1, fleet=STAGING, run="t")]
    assert rollback_in_rollout(rows, 1, deploy_id="now").id == 8
    assert [e.id for e in rolled_back_before(rows, 1)] == [7]


def test_a_deploy_reads_its_own_fleets_rows(tmp_path, monkeypatch):
    """``DeployLedger`` decides for the fleet it deploys to: the configured fleet's deploy does
    not take staging's rollout or smoke tests for its own (the hosts already on the version were
    not judged here), and a staging deploy reads staging's; a failure anywhere still counts."""
    import registry.ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "model_created_ms", lambda m: None)     # no MLflow here: the ledger decides
    monkeypatch.setattr(deploys, "status", lambda m, v: None)
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    staging_rows = deploys.DeployLedger("m", led, fleet=STAGING)
    led.append_all([_move("promote", 2, 1), staging_rows.entry("smoke_test", "passed", to_version=2),
                    staging_rows.entry("deploy", "ok", to_version=2, details={"final": True})])
    fleet, staging = deploys.DeployLedger("m", led), deploys.DeployLedger("m", led, fleet=STAGING)
    assert fleet.rolled_out(2) is False and fleet.unjudged(2) is False
    assert staging.rolled_out(2) is True
    led.append(deploys.DeployLedger("m", led).entry("smoke_test", "passed", to_version=2))   # a killed deploy
    assert fleet.unjudged(2) is True and staging.unjudged(2) is False
    led.append(deploys.DeployLedger("m", led, fleet=STAGING).entry("deploy", "failed", to_version=2))
    assert fleet.failed_elsewhere(2) and staging.failed_elsewhere(2)


def test_registry_history_names_another_fleets_hosts_file():
    """`registry history` showed a staging deploy's host as any other (``web-9  ok``), while the
    version's page says ``web-9 (fleet staging.toml)``: the table read as the configured fleet's."""
    from datetime import datetime, timezone

    from registry.history import history_table

    at = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    rows = [Entry("deploy", "m", "ok", to_version=2, host="web-9", id=1, at=at, details={"fleet": STAGING}),
            Entry("deploy", "m", "ok", to_version=2, host="web-1", id=2, at=at, details={"deploy": "d"})]
    lines = history_table(rows).splitlines()
    assert "web-9 (fleet staging.toml)" in lines[2] and "(fleet" not in lines[3], lines
