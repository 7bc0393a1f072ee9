"""Which failed versions ``mlops sync watch`` tries again. A failure that does not blame the version
(the upload, a lost connection or lock, a signal, unreadable canary metrics, the ledger) once made
the watcher skip that version until production moved; and a version promoted again stayed skipped
for the life of the watcher. fleet_plan.plan_fleet and fleet.deploy are replaced by scripted stand-ins."""
from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from mlops_common.errors import DeployFailed, UserError
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


def test_a_failure_the_registry_never_recorded_is_given_to_it_at_each_skip_until_it_takes_it(watch_lines):
    """The late record (twentieth stop): asked with the move the skip compares with and the
    failure's message; a ledger still down is said once and tried again at the next skip."""
    tried, recorded = [], [False]

    def record(v, since, reason):
        tried.append((v, since, reason))
        if len(tried) < 3:
            raise UserError("the ledger database did not answer")
        recorded[0] = True
        return True

    failed = FailedVersions(recorded=lambda v: recorded[0], moved=lambda v: 7, record=record)
    failed.add(5, "deploy of v5 failed on host a at step 'smoke': golden outputs differ")
    assert [failed.skip(5) for _ in range(4)] == [True, True, True, True]
    assert len(tried) == 3 and {t[:2] for t in tried} == {(5, 7)}, tried     # the 4th: the registry says
    assert tried[0][2].endswith("golden outputs differ"), tried
    said = [m for m in watch_lines() if "could not record v5" in m]
    assert len(said) == 1 and "a restarted watch would deploy it again" in said[0], said


# --- backoff between failed passes (twentieth stop) ---------------------------------------------
class _Clocked:
    """A watch's clock and wake without sleeping: each wait records its timeout and moves the clock
    by it (nothing wakes it), and ``on_wait(n)`` may act at the n-th wait (a webhook)."""

    def __init__(self, on_wait=None):
        self.now, self.waits, self.on_wait, self._set = 0.0, [], on_wait, False

    def clock(self) -> float:
        return self.now

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    def wait(self, timeout: float) -> bool:
        self.waits.append(round(timeout, 6))
        if self.on_wait is not None:
            self.on_wait(len(self.waits))
        if self._set:
            return True
        self.now += timeout
        return False


def _watcher(statuses: list[str], c: _Clocked | None = None, **kw):
    """A Watcher whose passes say ``statuses`` in turn (``error``: MLflow refused the connection),
    then stop the watch."""
    from serving_sync.watch import Watcher

    it, n = iter(statuses), [0]

    def reconcile():
        n[0] += 1
        status = next(it, None)
        if status is None:
            w.stop_event.set()
            return "up_to_date", 5, "hosts serve v5"
        if status == "error":
            raise UserError(f"MLflow at http://127.0.0.1:9 refused the connection (pass {n[0]})")
        return status, 5, f"{status} v5"

    kw.setdefault("rand", lambda: 0.0)      # no jitter: the backoff's rule alone (the jitter has its own test)
    w = Watcher(reconcile, clock=c.clock if c is not None else time.monotonic, **kw)
    if c is not None:
        w.wake = c
    return w


@pytest.fixture
def watch_lines(caplog):
    mlops_logger = logging.getLogger("mlops")        # log.setup() stops it propagating to caplog's root
    mlops_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="mlops"):
            yield lambda: [r.getMessage() for r in {id(r): r for r in caplog.records}.values()    # once each
                           if r.name == "mlops.sync.watch"]
    finally:
        mlops_logger.removeHandler(caplog.handler)


def test_failed_passes_in_a_row_back_off_up_to_a_bound_and_a_good_pass_resets_it(watch_lines):
    """An MLflow or a fleet down made the watch try again every --interval for as long as it lasted
    (two full rounds of requests a second at --interval 0.5); the wait now doubles while passes
    fail, up to BACKOFF_MAX, is said in the failure's line, and is --interval again after a pass
    that did not fail."""
    statuses = ["error"] * 8 + ["up_to_date", "error", "failed", "failed", "skipped"]
    c = _Clocked()
    res = _watcher(statuses, c, interval=10.0).run()
    assert [p.status for p in res.passes] == statuses + ["up_to_date"]
    # after each pass: 10, 20, 40, 80, 160, 300 (the bound), 300, 300; a good pass: 10 again
    assert c.waits == [10, 20, 40, 80, 160, 300, 300, 300, 10, 10, 20, 40, 10], c.waits
    said = watch_lines()
    assert "reconcile (start) failed: MLflow at http://127.0.0.1:9 refused the connection (pass 1); " \
           "next try in 10s" in said, said
    assert any(m.endswith("(pass 3); next try in 40s") for m in said), said
    assert "reconcile (interval): failed: failed v5; next try in 20s" in said, said
    assert not [m for m in said if "next try" in m and ("up_to_date" in m or "skipped" in m)], said


def test_the_backoff_is_never_shorter_than_the_interval_and_ends_at_max_seconds():
    c = _Clocked()
    _watcher(["error"] * 9, c, interval=1000.0, max_seconds=3500).run()
    assert c.waits == [1000, 1000, 1000, 500], c.waits      # --max-seconds cuts the last wait


def test_a_webhook_ends_a_backoff_wait_at_once():
    def webhook_at(n):
        if n == 4:                   # a verified webhook during the 80 s wait: the pass runs now
            w.trigger("webhook")

    c = _Clocked(webhook_at)
    w = _watcher(["error"] * 5, c, interval=10.0)
    res = w.run()
    assert [p.trigger for p in res.passes][:5] == ["start", "interval", "interval", "interval", "webhook"]
    assert c.waits == [10, 20, 40, 80, 160], c.waits    # a webhook's pass that failed again backs off on
    assert c.now == 10 + 20 + 40 + 160, c.now           # the 80 s wait took no time


def test_a_signal_ends_a_long_backoff_wait_at_once():
    """The real wake: the first SIGTERM (``graceful``: stop_event, then the wake) during a 300 s
    backoff ends the watch at once; the test waits for the watch to be in that wait (an event)."""
    from serving_sync import watch as watch_mod

    w = _watcher(["error"] * 20, interval=0.5)
    w._failing = 30                                  # a long outage: the next wait is the bound
    waiting, timeouts = threading.Event(), []
    wait = w.wake.wait

    def watched(timeout=None):
        timeouts.append(timeout)
        waiting.set()
        return wait(timeout)

    w.wake.wait = watched
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    assert waiting.wait(30), "the watch never waited"
    w.stop_event.set()
    w.wake.set()
    t.join(10)
    assert not t.is_alive(), "the signal did not end the backoff wait"
    assert timeouts == [watch_mod.BACKOFF_MAX] and len(w.result.passes) == 1, (timeouts, w.result.passes)


def test_a_failures_line_says_the_watch_ends_when_max_seconds_comes_before_the_next_try(watch_lines):
    """Found by review (2026-12-07, twenty-first stop): with --max-seconds 100 a pass failing at
    70 s said "next try in 80s" though the watch ended 30 s later without one: the on-call waited
    for a try that never came. The line now says the watch's true next step."""
    c = _Clocked()
    res = _watcher(["error"] * 9, c, interval=10.0, max_seconds=100).run()
    # passes at 0, 10, 30, 70; the fourth's wait (80 s) is cut to the 30 s left, and nothing follows
    assert [p.status for p in res.passes] == ["error"] * 4 and c.waits == [10, 20, 40, 30], c.waits
    said = [m for m in watch_lines() if "failed" in m]
    assert said[0].endswith("(pass 1); next try in 10s"), said
    assert said[-1].endswith("; no next try: --max-seconds ends the watch in 30s (a webhook before then "
                             "runs one)"), said
    assert not [m for m in said if "next try in 80s" in m], said


def test_watchers_restarted_together_spread_their_retries_within_a_bound(watch_lines):
    """Found by review (2026-12-07, twenty-first stop): the backoff had no jitter, so watchers
    restarted together (a reboot, one upgrade) whose MLflow was down retried in lockstep, each at
    the same second for the whole outage, and hit it together when it came back. Each doubled
    wait is now up to JITTER shorter at random (never below --interval), and the line says the
    wait chosen."""
    import random

    from serving_sync import watch as watch_mod

    base = [10, 20, 40, 80, 160, 300, 300, 300]       # the backoff after each of 8 failed passes
    schedules = []
    for seed in range(8):                            # eight watchers, each its own random source
        c = _Clocked()
        _watcher(["error"] * 8, c, interval=10.0, rand=random.Random(seed).random).run()
        waits = c.waits[:8]
        assert waits[0] == 10, waits                # the first wait is --interval: never shorter
        for got, full in zip(waits, base):
            assert full * (1 - watch_mod.JITTER) - 0.05 <= got <= full, (waits, base)
        schedules.append(tuple(waits))
    assert len(set(schedules)) == 8, schedules       # no two in lockstep
    # the line says the wait the watch makes, not the backoff's rule
    c = _Clocked()
    _watcher(["error"] * 3, c, interval=10.0, rand=lambda: 0.5).run()
    assert c.waits[:3] == [10, 18, 36], c.waits
    said = [m for m in watch_lines() if "(pass 2)" in m or "(pass 3)" in m]
    assert [m.rsplit(";", 1)[1] for m in said[-2:]] == [" next try in 18s", " next try in 36s"], said


def test_a_failures_line_says_a_webhook_that_came_during_the_pass_runs_the_next_at_once(watch_lines):
    """Found by review (2026-12-07, twenty-first stop): a promotion's webhook that came while a
    pass was failing (a host down) woke the watch at once, but the failure's line said "next try
    in 40s": the on-call read a wait the watch did not make."""
    c = _Clocked()
    n = [0]

    def reconcile():
        n[0] += 1
        if n[0] == 3:
            w.trigger("webhook")       # a verified webhook while the third pass runs
        if n[0] <= 4:
            raise UserError(f"a: host down (pass {n[0]})")
        w.stop_event.set()
        return "up_to_date", 5, "hosts serve v5"

    from serving_sync.watch import Watcher

    w = Watcher(reconcile, interval=10.0, clock=c.clock, rand=lambda: 0.0)
    w.wake = c
    res = w.run()
    assert [p.trigger for p in res.passes] == ["start", "interval", "interval", "webhook", "interval"], res.passes
    assert c.waits[2] == 40 and c.now == 10 + 20 + 80, (c.waits, c.now)    # the 40 s wait took no time
    said = [m for m in watch_lines() if "host down" in m]
    assert said[2].endswith("(pass 3); next try at once: a webhook came during this pass"), said
    assert said[3].endswith("(pass 4); next try in 80s"), said
