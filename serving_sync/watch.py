"""``mlops sync watch``: a reconcile loop (and the webhook that wakes it).

Every ``interval`` seconds, or at once when a verified webhook arrives, one pass runs
``reconcile()`` (observe -> plan -> deploy if anything is to do). The loop is bounded by
``max_seconds`` and/or ``once``. A failed pass is logged and the loop goes on; a version whose
deploy failed is not retried until ``production`` moves again (the failed deploy moved it back
anyway), so a broken version cannot make the loop hammer the hosts; the version's
``deploy_status=failed`` tag carries that across a restart of the watcher. Each deploy is the same
rollout as ``mlops sync deploy`` (prepare, canary, bake, waves). A pass that found ``production``
moved while it ran (its rollout overtaken by a newer version, which its hosts stay on, or put back
before its next wave; or a pass that only recorded what its hosts serve) is followed by the next
pass at once, not after
``interval`` — at most one such pass in a row, so a production that keeps moving cannot make the
loop spin. An interval pass that found what the pass before found (``up_to_date``, ``skipped``)
is one log line when it starts, then one every 10 minutes with its count, as an outage is.
Failed passes in a row (``error``, ``failed``: MLflow, the ledger or a host down) back off: the
wait before the next doubles from ``interval`` up to ``BACKOFF_MAX`` (never below ``interval``),
each doubled wait up to ``JITTER`` shorter at random (watchers restarted together spread out),
said in the failure's line ("next try in N s", or "no next try" when ``max_seconds`` ends the
watch first), and goes back to ``interval`` after a pass that did not fail; a webhook, a signal
or ``max_seconds`` ends that wait at once, as any other.
"""
from __future__ import annotations

import collections
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from mlops_common import log
from mlops_common.errors import UserError
from mlops_common.stop import Wake

from .cancel import DeployInterrupted

logger = log.get("sync.watch")

MIN_INTERVAL = 0.5
KEPT_PASSES = 200          # a watch runs for months: the newest passes are kept, the rest counted
INTERRUPTED = DeployInterrupted.exit_code   # 130: a deploy cut by a signal ends the watch with it
REPEAT_EVERY = 600.0       # an outage is said once, then again every 10 minutes with its count
BACKOFF_MAX = 300.0        # failed passes in a row: the wait doubles from --interval up to this (or --interval)
JITTER = 0.2               # ... each doubled wait up to this much shorter at random (never below --interval)
FAILING = ("error", "failed")   # passes that back off: the next one waits longer while they last
QUIET = ("up_to_date", "skipped")   # an interval pass saying what the one before said: once every REPEAT_EVERY
# a deploy that failed (hosts put back), production left on a version the hosts do not serve: not
# info lines like "hosts serve v5" (under systemd a line's level is its journal priority)
LEVELS = {"failed": logging.ERROR, "skipped": logging.WARNING}


# "37s": an error that differs from the one before only in a count of seconds (another deploy's lock,
# "last heartbeat 37s ago") is the same error, or each pass said it again while that deploy ran
_DURATION = re.compile(r"\b\d+(?:\.\d+)?s\b")


@dataclass
class _Outage:
    """Failed passes in a row: said when it starts or its error changes, every ``REPEAT_EVERY``
    seconds while it lasts, and when a pass succeeds again (a watch at a short interval during an
    MLflow outage wrote one error line per pass, two a second)."""

    since: float
    said: float
    message: str
    passes: int = 1


@dataclass
class _Same:
    """Interval passes in a row that found what the pass before found (``QUIET``): said once, then
    every ``REPEAT_EVERY`` seconds with their count (a watch at the default interval wrote 2,880
    identical lines a day, at ``--interval 0.5`` 172,800)."""

    key: tuple
    since: float
    said: float
    passes: int = 1


@dataclass
class Pass:
    at: float                  # seconds since the loop started
    trigger: str               # "start" | "interval" | "webhook" | "moved" (the pass before found production moved)
    status: str                # up_to_date | deployed | failed | skipped | stopped | moved | error | interrupted
    version: int | None = None
    message: str = ""
    exit_code: int | None = None   # an error's or an interrupt's (not serialized)
    again: bool = False        # production moved while it ran: the next pass at once (not serialized)

    def to_dict(self) -> dict:
        return {"at": round(self.at, 3), "trigger": self.trigger, "status": self.status,
                "version": self.version, "message": self.message}


@dataclass
class WatchResult:
    """The newest ``KEPT_PASSES`` passes, and how many passes of each status there were in all."""

    passes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=KEPT_PASSES))
    counts: collections.Counter = field(default_factory=collections.Counter)
    webhook: dict | None = None

    def add(self, p: Pass) -> None:
        self.passes.append(p)
        self.counts[p.status] += 1

    @property
    def dropped(self) -> int:
        """Passes run but no longer kept (the oldest)."""
        return sum(self.counts.values()) - len(self.passes)

    def to_dict(self) -> dict:
        return {"passes": [p.to_dict() for p in self.passes], "counts": dict(self.counts),
                "dropped": self.dropped, "webhook": self.webhook}


class Watcher:
    """``reconcile()`` returns (status, version, message), or (status, version, message, again)
    where ``again`` asks for the next pass at once (production moved while it ran); exceptions
    become an ``error`` pass."""

    def __init__(self, reconcile: Callable[[], tuple[str, int | None, str]], *, interval: float,
                 max_seconds: float | None = None, once: bool = False,
                 clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random):
        if interval < MIN_INTERVAL:
            raise UserError(f"--interval must be at least {MIN_INTERVAL} seconds, got {interval}")
        if max_seconds is not None and max_seconds <= 0:
            raise UserError(f"--max-seconds must be positive, got {max_seconds}")
        self.reconcile = reconcile
        self.interval, self.max_seconds, self.once = interval, max_seconds, once
        self.clock, self.rand = clock, rand     # rand: a number in [0, 1), the backoff's jitter
        self.wake = Wake()
        self.stop_event = threading.Event()
        self._reason = "start"
        self.result = WatchResult()
        self._outage: _Outage | None = None
        self._same: _Same | None = None
        self._failing = 0          # failed passes in a row (``FAILING``): the backoff's exponent
        self._deadline: float | None = None     # the clock's value at which --max-seconds ends the watch
        self._wait = interval      # before the next interval pass: chosen after each pass (``_choose_wait``)

    def next_wait(self) -> float:
        """Seconds before the next interval pass, as chosen after the last pass (``_choose_wait``)."""
        return self._wait

    def _backoff(self) -> float:
        """``interval``, doubled for each failed pass in a row after the first, up to
        ``BACKOFF_MAX`` (or ``interval`` when that is longer). A watch whose MLflow or hosts were
        down tried again every ``interval`` for as long as it lasted: two passes a second at
        ``--interval 0.5``, each a full round of requests to the registry and every host."""
        if self._failing <= 1:
            return self.interval
        return max(self.interval, min(self.interval * 2.0 ** min(self._failing - 1, 64), BACKOFF_MAX))

    def _choose_wait(self) -> None:
        """The wait before the next interval pass: the backoff, a doubled one made up to ``JITTER``
        shorter at random (to 0.1 s, never below ``interval``). Watchers restarted together (a
        reboot, one upgrade) whose MLflow was down retried in lockstep, every one of them at the
        same second for the whole outage, and hit it together when it came back."""
        wait = self._backoff()
        if wait > self.interval:
            wait = max(self.interval, round(wait * (1.0 - JITTER * self.rand()), 1))
        self._wait = wait

    def trigger(self, reason: str = "webhook") -> None:
        self._reason = reason
        self.wake.set()

    def _pass(self, start: float, reason: str) -> Pass:
        exit_code, again = None, False
        try:
            status, version, message, *rest = self.reconcile()
            again = bool(rest and rest[0])
        except KeyboardInterrupt:         # a forced interrupt: the pass it cut is reported, then it goes on
            self.result.add(Pass(self.clock() - start, reason, "interrupted", None,
                                 "interrupted (forced) in the middle of a pass", INTERRUPTED))
            raise
        except UserError as exc:          # a deploy interrupted by a signal ends the watch (exit 130)
            status = "interrupted" if exc.exit_code == INTERRUPTED else "error"
            version, message, exit_code = None, exc.message, exc.exit_code
        except Exception as exc:  # noqa: BLE001 - a controller keeps reconciling (a deploy puts its hosts back itself)
            status, version = "error", None
            message = (f"unexpected {type(exc).__name__}: {exc} (a bug in mlops; the watch goes on and "
                       f"tries again at the next pass)")
        p = Pass(self.clock() - start, reason, status, version, message, exit_code, again)
        self.result.add(p)
        self._failing = self._failing + 1 if status in FAILING else 0
        self._choose_wait()        # before the lines that say it
        if status != "error":
            # a pass the stop cut (maybe in the request an outage makes wait) says nothing of the outage
            if (o := self._outage) is not None and status != "stopped":
                # at the outage's own level: under systemd the filter that showed it (`journalctl -p
                # err`, an alert on it) must show that it ended, or the on-call waits on a fixed outage
                logger.error("reconcile recovered after %d failed pass%s in %.0fs",
                             o.passes, "" if o.passes == 1 else "es", self.clock() - o.since)
                self._outage = None
            self._said(reason, status, version, message)
        elif not self.once:        # with --once the failed pass is the command's one error line
            self._failed(reason, message)
        return p

    def _said(self, reason: str, status: str, version: int | None, message: str) -> None:
        now, s, key = self.clock(), self._same, (status, version, message)
        level = LEVELS.get(status, logging.INFO)
        if reason == "interval" and s is not None and s.key == key:
            s.passes += 1
            if now - s.said >= REPEAT_EVERY:
                s.said = now
                logger.log(level, "reconcile still %s (%d passes in %.0fs): %s", status, s.passes, now - s.since,
                           message)
            return
        self._same = _Same(key, now, now) if status in QUIET else None
        logger.log(level, "reconcile (%s): %s: %s%s", reason, status, message, self._next_try())

    def _next_try(self) -> str:
        """``; next try in N s`` after a failed pass that is not the watch's last; when
        ``--max-seconds`` ends the watch before that wait does, that instead (the next step): a
        line promising a try the watch would never make sent the on-call to wait for it. A webhook
        that came during the pass runs the next at once: "next try in 300s" then was untrue too."""
        if not self._failing or self.once or self.stop_event.is_set():
            return ""
        wait = self.next_wait()
        left = self._deadline - self.clock() if self._deadline is not None else None
        if self.wake.is_set() and (left is None or left > 0):     # it ends the wait before it begins
            return "; next try at once: a webhook came during this pass"
        if left is not None and left <= wait:
            return (f"; no next try: --max-seconds ends the watch in {max(0.0, round(left, 1)):g}s "
                    f"(a webhook before then runs one)")
        return f"; next try in {wait:g}s"

    def _failed(self, reason: str, message: str) -> None:
        self._same = None
        now, o = self.clock(), self._outage
        if o is None:
            self._outage = _Outage(now, now, message)
            logger.error("reconcile (%s) failed: %s%s", reason, message, self._next_try())
            return
        o.passes += 1
        if _DURATION.sub("Ns", message) != _DURATION.sub("Ns", o.message):
            o.message, o.said = message, now
            logger.error("reconcile (%s) failed: %s%s", reason, message, self._next_try())
        elif now - o.said >= REPEAT_EVERY:
            o.said, o.message = now, message
            logger.error("reconcile still failing (%d passes in %.0fs): %s%s", o.passes, now - o.since, message,
                         self._next_try())

    def run(self) -> WatchResult:
        start = self.clock()
        deadline = start + self.max_seconds if self.max_seconds is not None else None
        self._deadline = deadline
        last = self._pass(start, "start")
        while not self.once and not self.stop_event.is_set() and last.status != "interrupted":
            if last.again and last.trigger != "moved" and (deadline is None or self.clock() < deadline):
                self.wake.clear()             # a webhook about that move: this pass reads production anyway
                self._reason = "interval"
                last = self._pass(start, "moved")     # one at once, not two in a row: bounded
                continue
            timeout = self.next_wait()       # longer after failed passes in a row (backoff, jitter)
            if deadline is not None:
                timeout = min(timeout, deadline - self.clock())
                if timeout <= 0:
                    break
            woke = self.wake.wait(timeout)
            self.wake.clear()
            if self.stop_event.is_set() or (deadline is not None and self.clock() >= deadline and not woke):
                break
            reason, self._reason = (self._reason if woke else "interval"), "interval"
            last = self._pass(start, reason)
        return self.result


class PassStopped(BaseException):
    """Raised from the signal handler by the watch's first signal while its pass only reads (the
    registry, the ledger, the hosts: ``FleetReconciler.phase`` "reading"), so a request to an
    MLflow that does not answer ends at once; nothing is begun then that a stop would leave
    half-done. A BaseException: no ``except Exception`` on the way turns it into an error pass."""


class FailedVersions:
    """Versions whose deploy failed, not to be retried in a loop. With ``recorded`` (e.g.
    ``registry.deploys.failure_recorded``, whose text says where, for ``where``) the registry
    decides, asked at each pass that would deploy: a version tagged failed (or with a failed ledger
    row) since its last promotion is skipped — by a restarted watcher too — and one promoted again
    is tried again, with or without a webhook. A failure in this
    watch that the registry never recorded (MLflow refused the tag and the ledger row was lost)
    counts too, until production moves to the version through mlops: ``moved`` (the newest ledger
    move to it, e.g. ``registry.deploys.last_move_to``) changes, or a webhook says so (``forget``).
    Such a failure is written to the registry by ``record(version, moved, reason)`` (e.g.
    ``registry.deploys.record_failure_late``) at each skip until it takes it, so a restarted watch
    (which remembers nothing) skips the version too; it was deployed again once after every restart.
    Without ``recorded``, the versions that failed in this watch."""

    def __init__(self, recorded: Callable[[int], bool] | None = None,
                 moved: Callable[[int], object] | None = None,
                 record: Callable[[int, object, str], bool] | None = None):
        self.failed: set[int] = set()
        self.recorded, self.moved, self.record = recorded, moved, record
        self._unrecorded: dict[int, object] = {}   # failed here: ``moved`` at the first skip after
        self._why: dict[int, str] = {}              # the failure's message, for ``record``
        self._how: dict[int, str | None] = {}       # where the registry holds it (``recorded``'s text)
        self._record_said: set[int] = set()         # a ``record`` that failed: said once per version

    def skip(self, version: int) -> bool:
        if self.recorded is None:
            return version in self.failed
        if how := self.recorded(version):
            self.failed.add(version)
            self._unrecorded.pop(version, None)     # the registry holds it: it decides from now on
            self._how[version] = how if isinstance(how, str) else None
            return True
        if version in self._unrecorded:             # failed here, the registry never took it
            now = self.moved(version) if self.moved is not None else None
            if self._unrecorded[version] is _UNSET:
                self._unrecorded[version] = now
            if self._unrecorded[version] == now:    # not moved to it through mlops since
                self._record(version, now)
                return True
        self.forget(version)
        return False

    def _record(self, version: int, moved: object) -> None:
        """Give the registry the failure it never took (see the class); tried again at the next skip."""
        if self.record is None:
            return
        why = self._why.get(version) or "deploy failed"
        try:
            self.record(version, moved, f"recorded by sync watch after the registry could not take it: {why}")
        except UserError as exc:
            if version not in self._record_said:
                self._record_said.add(version)
                logger.warning("could not record v%d's failed deploy in the ledger (%s): a restarted watch would "
                               "deploy it again; tried again at the next pass", version, exc.message)

    def add(self, version: int, why: str = "") -> None:
        self.failed.add(version)
        self._unrecorded[version] = _UNSET
        self._why[version] = why

    def where(self, version: int) -> str:
        """Where a skipped ``version``'s failure is known, for the skip's line."""
        if self.recorded is None:
            return "in this watch"
        if version in self._unrecorded:
            return "in this watch; the registry could not record it"
        return f"{self._how.get(version) or 'deploy_status=failed'} since its last promotion"

    def forget(self, version: int) -> None:
        """Try ``version`` again (a person promoted it)."""
        self.failed.discard(version)
        self._unrecorded.pop(version, None)
        self._why.pop(version, None)
        self._record_said.discard(version)


_UNSET = object()


class WatchedHosts:
    """The hosts a watch reconciles, read again from the hosts file at the start of each pass when
    its bytes changed (a watch runs for months: a host added to hosts.toml was never deployed and a
    removed one made every pass an error until a restart). A change of the hosts is one log line;
    a changed file that does not load (a typo, a half-written edit, deleted) or that ``check``
    refuses keeps the hosts read before, said once per such content, and the next change is read
    again. ``path`` None (one host from MLOPS_SYNC_TARGET): the hosts never change."""

    def __init__(self, hosts: list, path, load: Callable[[], list], check: Callable[[list], None] | None = None):
        self.hosts, self.path, self.load, self.check = hosts, path, load, check
        self._seen = self._read()
        self._refused: bytes | str | None = None

    def _read(self) -> bytes | str | None:
        if self.path is None:
            return None
        try:
            return self.path.read_bytes()
        except OSError as exc:          # deleted, unreadable: load() says it
            return f"{type(exc).__name__}:{exc.errno}"

    def __call__(self) -> list:
        seen = self._read()
        if seen == self._seen:
            return self.hosts
        self._seen = seen
        try:
            hosts = self.load()
            if self.check is not None:
                self.check(hosts)
        except UserError as exc:
            if seen != self._refused:
                self._refused = seen
                logger.error("hosts file %s changed but cannot be used, the watch keeps its %d host%s (%s) until "
                             "it is fixed: %s", self.path, len(self.hosts), "" if len(self.hosts) == 1 else "s",
                             ", ".join(h.name for h in self.hosts), exc.message)
            return self.hosts
        before, after = {h.name: h for h in self.hosts}, {h.name: h for h in hosts}
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before and after[n] != before[n]]
        if added or removed or changed or self._refused is not None:
            said = [f"{what} {', '.join(names)}" for what, names in
                    (("added", added), ("removed", removed), ("changed", changed)) if names]
            # a file refused before was an error line: its fix is said at that level too (see ``_pass``)
            logger.log(logging.INFO if self._refused is None else logging.ERROR,
                       "hosts file %s changed: %s; the watch now reconciles %d host%s%s", self.path,
                       "; ".join(said) or "the same hosts as before", len(hosts), "" if len(hosts) == 1 else "s",
                       "" if self._refused is None else " (the refused file's error above has ended)")
        self.hosts, self._refused = hosts, None
        return hosts


class FleetReconciler:
    """One pass of ``mlops sync watch``: plan the fleet against ``production`` and deploy when the
    hosts differ, with the same rollout as ``mlops sync deploy``. A version whose deploy failed
    because of the version (recorded since its last promotion) is skipped until it is promoted
    again or production moves; a failure that does not blame the version is retried next pass; a
    named lock takeover (``--break-lock TOKEN``) is used on the first pass only, never carried on.
    ``stopping`` (the watch was asked to stop: SIGTERM from systemd, Ctrl-C): a pass that has not
    begun its deploy does not begin one, and one waiting for another deploy's lock (``--lock-wait``,
    or the shared store's before its upload) gives up at once — nothing changed, nothing to finish
    (``stopped``).
    Hosts that already serve production while the version has no ``deploy_status`` at all (a
    deploy killed after its switch), or while a person's rollback to it was not finished (a `sync
    rollback` killed after its switch: ``deploys.rollback_unrecorded``), go through
    ``fleet.deploy`` once, which records it, as ``mlops sync deploy`` would; once per version —
    per rollback for the latter — in a watch (a registry refusing the tag is not asked at every
    pass), and never over a status another deploy wrote. That deploy expects the version (as
    ``--expect-version``): production moved meanwhile makes it no rollout of another version but a
    ``moved`` pass, and the next pass runs at once; so does a rollout overtaken after its last wave
    by a newer version (a ``deployed`` pass: its hosts stay on it), and one put back before a wave
    because production moved (a ``moved`` pass: not a failure)."""

    def __init__(self, model: str, hosts, opts, *, lock_wait: float = 0.0, break_lock: str | None = None,
                 recorded: Callable[[int], bool] | None = None, status_known: Callable[[int], bool] | None = None,
                 rollback_unrecorded: Callable[[int], object] | None = None,
                 stopping: Callable[[], bool] = lambda: False, read_hosts: Callable[[], list] | None = None,
                 moved: Callable[[int], object] | None = None):
        from registry import deploys

        registry_decides = recorded is None
        if recorded is None:
            def recorded(v: int) -> str | None:     # where the registry holds v's failure, or None
                return deploys.failure_recorded(model, v)
        if status_known is None:
            def status_known(v: int) -> bool:       # any status: a deploy recorded what it did
                return deploys.status(model, v) not in (None, "", "none")
        if rollback_unrecorded is None:
            def rollback_unrecorded(v: int):      # the ledger row of a rollback to v not finished, or None
                return deploys.rollback_unrecorded(model, v)
        self.model, self.hosts, self.opts, self.lock_wait = model, hosts, opts, lock_wait
        record = None
        if moved is None and registry_decides:
            def moved(v: int):          # the newest promotion or rollback to v in the ledger
                return deploys.last_move_to(model, v)

            def record(v: int, since, reason: str) -> bool:    # a failure the registry never took
                return deploys.record_failure_late(model, v, since, reason)
            record = self._writing(record)
        self.failed = FailedVersions(recorded=recorded, moved=moved, record=record)
        self.status_known, self.rollback_unrecorded = status_known, rollback_unrecorded
        self._record_tried: set[tuple] = set()     # (version, rollback row id or None)
        self._break_lock = break_lock
        self.stopping = stopping
        self.read_hosts = read_hosts      # the hosts file read again at each pass (``WatchedHosts``)
        # what the pass under way does: None (none), "reading" (the registry, the ledger, the
        # hosts: a stop may cut it where it stands, ``stop_reading``), "recording" (a ledger
        # write), "deploying" (``fleet.deploy``: a stop waits for its safe points)
        self.phase: str | None = None

    def stop_reading(self) -> None:
        """The watch's first signal, from its handler: a pass that only reads stops where it is
        (``PassStopped``, a ``stopped`` pass). It waited for the request under way instead: an
        MLflow that did not answer held a `systemctl stop` for the request's whole timeout
        (MLFLOW_HTTP_REQUEST_TIMEOUT, 60 s), and its retries' backoff."""
        if self.phase == "reading":
            raise PassStopped

    def _writing(self, write: Callable) -> Callable:
        """``write`` (a ledger write of the pass) run whole: a stop during it waits for it."""
        def run(*args):
            self.phase = "recording"
            try:
                return write(*args)
            finally:
                self.phase = "reading"
        return run

    def __call__(self) -> tuple:
        try:
            return self._read_then_deploy()
        except PassStopped:      # the first signal, while the pass only read
            return "stopped", None, ("the watch is stopping: its pass stopped before any deploy began, "
                                     "while it read the registry or the hosts (nothing was changed)")

    def _read_then_deploy(self) -> tuple:
        from .errors import NoProduction

        # --break-lock TOKEN is spent by the first pass, whatever it did (up to date, skipped, an
        # error): a token carried until the first pass that deploys could break a lock days later
        token, self._break_lock = self._break_lock, None
        try:
            self.phase = "reading"
            if self.read_hosts is not None:
                self.hosts = self.read_hosts()
            return self._reconcile(token)
        except KeyboardInterrupt:       # `sync watch --once`'s signal while the pass only read: stopped
            if self.phase != "reading":
                raise
            raise PassStopped from None
        except NoProduction:     # resolve_version's "or pass --version N": the watch has no such flag
            return "error", None, (f"no version of '{self.model}' holds the production alias (it was deleted, or "
                                   f"the version it named): nothing to deploy, the hosts keep what they serve; "
                                   f"promote one (mlops registry promote --version N) and the next pass deploys it")
        finally:
            self.phase = None

    def _reconcile(self, token: str | None) -> tuple:
        from mlops_common.errors import DeployFailed

        from . import fleet, fleet_plan
        from .errors import LockHeld, ProductionMoved, ProductionNotExpected

        fp = fleet_plan.plan_fleet(self.model, self.hosts, opts=self.opts, annotate=False)
        if fp.errors:
            return "error", fp.version, "; ".join(f"{h}: {e}" for h, e in fp.errors.items())
        if fp.up_to_date:
            unrecorded = self._unrecorded(fp.version)
            if unrecorded is None or unrecorded in self._record_tried:
                return "up_to_date", fp.version, f"hosts serve v{fp.version}"
        recording = fp.up_to_date         # a deploy or rollback killed after its switch: deploy records it, once
        if recording:
            self._record_tried.add(unrecorded)
        elif self.failed.skip(fp.version):
            # not "waiting for production to move": the alias set again in the MLflow UI moved it, and
            # still only a promotion through mlops (its ledger row) clears the failure
            return "skipped", fp.version, (f"v{fp.version}'s deploy failed ({self.failed.where(fp.version)}); "
                                           f"not tried again until it is promoted again "
                                           f"with `mlops registry promote --version {fp.version}` (setting "
                                           f"the alias in the MLflow UI or API does not clear it) or "
                                           f"production moves to another version")
        if self.stopping():
            return "stopped", fp.version, f"the watch is stopping: v{fp.version} not deployed (nothing was changed)"
        self.phase = "deploying"          # from here a stop waits for the deploy's safe points
        try:
            # recording: only what these hosts serve; production moved since makes it no rollout
            r = fleet.deploy(self.model, self.hosts, opts=self.opts, break_lock=token, lock_wait=self.lock_wait,
                             give_up_waiting=self.stopping, expect=fp.version if recording else None)
        except DeployFailed as exc:
            result = getattr(exc, "result", None)
            # the version the deploy handled: production read again under the locks (a promotion
            # or rollback after this pass's plan), not necessarily the plan's
            v = result.version if result is not None and result.version is not None else fp.version
            from .deploy_failure import PRODUCTION_MOVED

            if result is not None and (result.registry or {}).get("reason") == PRODUCTION_MOVED:
                # put back before a wave (or after the last) because production moved: not a
                # failure of anything, and the version production names now is installed at once
                return "moved", v, f"{exc.message}; the next pass runs at once", True
            if result is None or result.blames_version:     # a host or the network: the next pass retries
                self.failed.add(v, exc.message)
            return "failed", v, exc.message
        except ProductionMoved as exc:
            if (r := exc.deployed) is not None:      # overtaken after its last wave: the hosts stay on it
                return r.status, r.version, (f"{r.message}; production moved from v{r.version} to v{exc.now} "
                                             f"while it ran: the hosts stay on v{r.version}, which passed every "
                                             f"check and is recorded deployed; the next pass installs v{exc.now} "
                                             f"at once"), True
            return self._moved(fp.version, exc.now)
        except ProductionNotExpected as exc:     # a recording pass: production moved before the locks
            return self._moved(fp.version, exc.now)
        except UserError as exc:
            if isinstance(exc, LockHeld) and self.stopping():     # gave up waiting: nothing was changed
                return "stopped", fp.version, (f"the watch is stopping: stopped waiting for a lock, v{fp.version} "
                                               f"not deployed (nothing was changed): {exc.message}")
            if not recording or isinstance(exc, DeployInterrupted):     # a signal ends the watch (130)
                raise
            logger.warning("hosts serve v%d, but it could not be recorded as deployed (%s); `mlops sync "
                           "deploy` records it", fp.version, exc.message)
            return "up_to_date", fp.version, f"hosts serve v{fp.version} (not recorded: {exc.message})"
        return r.status, r.version, r.message

    def _moved(self, version: int, now: int | None) -> tuple:
        """Production moved from ``version`` before this pass's deploy changed or recorded anything."""
        to = f"v{now}" if now is not None else "no version"
        return "moved", version, (f"production moved from v{version} to {to} while this pass ran; nothing was "
                                  f"changed or recorded: the next pass runs at once"), True

    def _unrecorded(self, version: int) -> tuple | None:
        """What hosts serving ``version`` leave to record: ``(version, None)`` when it has no
        ``deploy_status``, ``(version, row id)`` for a person's rollback to it not finished; else
        None."""
        if (version, None) not in self._record_tried and not self.status_known(version):
            return version, None
        row = self.rollback_unrecorded(version)
        return None if row is None else (version, row.id)

    def production_moved(self, event: dict) -> None:
        """A verified webhook. Without the registry (``recorded``) the version it names may be tried
        again; with it, the registry decides at the next pass (a promotion through mlops since the
        failure), since an alias set in the MLflow UI sends the same event."""
        if self.failed.recorded is not None:
            return
        try:
            self.failed.forget(int((event.get("data") or {}).get("version")))
        except (TypeError, ValueError):
            pass
