"""Which failed versions ``mlops sync watch`` tries again. A failure that does not blame the version
(the upload, a lost connection or lock, a signal, unreadable canary metrics, the ledger) once made
the watcher skip that version until production moved; and a version promoted again stayed skipped
for the life of the watcher. fleet_plan.plan_fleet and fleet.deploy are replaced by scripted stand-ins."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from mlops_common.errors import DeployFailed
from serving_sync import fleet, fleet_plan
from serving_sync.fleet import FleetResult
from serving_sync.watch import FailedVersions, FleetReconciler

M = "digits"


class FakeFleet:
    """plan_fleet: v5 to deploy; deploy: raises the next scripted failure, if any, else deploys."""

    def __init__(self, monkeypatch):
        self.failures: list[FleetResult] = []
        self.deploys = 0
        monkeypatch.setattr(fleet_plan, "plan_fleet",
                            lambda model, hosts, **kw: SimpleNamespace(errors={}, up_to_date=False, version=5))
        monkeypatch.setattr(fleet, "deploy", self.deploy)

    def fail_next(self, *, blames_version: bool) -> None:
        self.failures.append(FleetResult(M, 5, "production", "failed", blames_version=blames_version))

    def deploy(self, model, hosts, **kw):
        self.deploys += 1
        if self.failures:
            result = self.failures.pop(0)
            exc = DeployFailed(f"deploy of v5 failed (blames the version: {result.blames_version})")
            exc.result = result
            raise exc
        return SimpleNamespace(status="deployed", version=5, message="hosts serve v5")


@pytest.fixture
def fake(monkeypatch):
    return FakeFleet(monkeypatch)


def _in_watch_only(r: FleetReconciler) -> FleetReconciler:
    r.failed = FailedVersions()       # no registry: only what failed in this watch counts
    return r


def test_a_failure_that_does_not_blame_the_version_is_retried_next_pass(fake):
    r = _in_watch_only(FleetReconciler(M, [], None, recorded=lambda v: False))
    fake.fail_next(blames_version=False)
    assert r()[:2] == ("failed", 5)
    assert r()[:2] == ("deployed", 5)
    assert fake.deploys == 2


def test_a_failure_that_blames_the_version_is_skipped_next_pass(fake):
    r = _in_watch_only(FleetReconciler(M, [], None, recorded=lambda v: False))
    fake.fail_next(blames_version=True)
    assert r()[:2] == ("failed", 5)
    assert r()[:2] == ("skipped", 5)
    assert fake.deploys == 1


def test_a_failure_without_a_result_is_taken_as_the_versions_fault(fake, monkeypatch):
    r = _in_watch_only(FleetReconciler(M, [], None, recorded=lambda v: False))

    def broken(model, hosts, **kw):
        fake.deploys += 1
        raise DeployFailed("deploy failed")

    monkeypatch.setattr(fleet, "deploy", broken)
    assert r()[0] == "failed" and r()[0] == "skipped"
    assert fake.deploys == 1


def test_with_the_registry_a_version_is_skipped_while_recorded_failed_and_retried_once_promoted_again(fake):
    tagged_failed: set[int] = set()
    r = FleetReconciler(M, [], None, recorded=lambda v: v in tagged_failed)
    fake.fail_next(blames_version=True)
    assert r()[:2] == ("failed", 5)
    tagged_failed.add(5)                   # what the failed deploy writes: deploy_status=failed
    assert r()[:2] == ("skipped", 5)
    assert r()[:2] == ("skipped", 5)
    assert fake.deploys == 1
    tagged_failed.discard(5)               # promoted again (no webhook reached this watcher)
    assert r()[:2] == ("deployed", 5)
    assert fake.deploys == 2


def test_with_the_registry_a_failure_that_does_not_blame_the_version_is_retried(fake):
    r = FleetReconciler(M, [], None, recorded=lambda v: False)     # nothing tagged: production stayed
    fake.fail_next(blames_version=False)
    assert r()[:2] == ("failed", 5)
    assert r()[:2] == ("deployed", 5)
    assert fake.deploys == 2


def test_failed_versions_ask_the_registry_every_time():
    answers = iter([True, True, False, True])
    asked: list[int] = []

    def recorded(v: int) -> bool:
        asked.append(v)
        return next(answers)

    failed = FailedVersions(recorded=recorded)
    assert [failed.skip(7) for _ in range(4)] == [True, True, False, True]
    assert asked == [7, 7, 7, 7]


def test_a_skipped_version_says_how_to_try_it_again(fake):
    """It said "waiting for production to move": after the alias was set to it again in the MLflow
    UI (the way production comes back to a failed version, a failed deploy having moved it back),
    production had moved and the version stayed skipped; `mlops registry promote --version N`
    (a ledger row) is what tries it again (tests/test_sync_watch.py's restarted watcher)."""
    r = FleetReconciler(M, [], None, recorded=lambda v: True)
    status, version, message = r()
    assert (status, version) == ("skipped", 5)
    assert "`mlops registry promote --version 5`" in message and "MLflow UI" in message, message
    assert "(deploy_status=failed since its last promotion)" in message, message
    assert fake.deploys == 0


def test_a_failure_the_registry_never_recorded_is_not_retried_every_pass(fake):
    """MLflow refused the ``deploy_status=failed`` tag and the ledger row was lost too: the
    registry says nothing failed, and the watch's own record of the failure was dropped whenever
    the registry was asked, so the broken version was deployed again every pass. A webhook (an
    alias set in the MLflow UI sends one too) is not a promotion through mlops."""
    r = FleetReconciler(M, [], None, recorded=lambda v: False)
    fake.fail_next(blames_version=True)
    assert r()[:2] == ("failed", 5)
    status, version, message = r()
    assert (status, version) == ("skipped", 5)
    # not "deploy_status=failed": the registry holds no such tag (found by review, seventeenth stop)
    assert "(in this watch; the registry could not record it)" in message, message
    r.production_moved({"data": {"version": "5"}})
    assert r()[:2] == ("skipped", 5)
    assert fake.deploys == 1


def test_a_failure_the_registry_never_recorded_is_retried_once_promoted_through_mlops(fake):
    moves = [7]                            # the newest ledger row that moved production to v5
    r = FleetReconciler(M, [], None, recorded=lambda v: False, moved=lambda v: moves[0])
    fake.fail_next(blames_version=True)
    assert r()[:2] == ("failed", 5)
    assert r()[:2] == ("skipped", 5)
    assert r()[:2] == ("skipped", 5)
    moves[0] = 9                           # `mlops registry promote --version 5`: a new ledger row
    assert r()[:2] == ("deployed", 5)
    assert fake.deploys == 2
