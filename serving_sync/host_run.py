"""Run one host's plan (``plan.HostPlan``), phase by phase, and put the host back exactly as it was.

``HostRun.execute(phase)`` runs that phase's planned steps in order — PREPARE: publish,
validation entry, smoke test; SWITCH: validation copy unloaded, main entry, switch, verify
through the label — and raises ``StepFailed`` naming the step. Each ``StepKind`` has exactly
one method (``_RUNNERS``). The caller (``fleet``) then calls ``HostRun.restore``: the exact
previous ``models.config`` text is written back and reloaded, and we wait until the previous
stable version is AVAILABLE and the label points at it again. When the previous version had
been unloaded (a switch to a lower version unloads the higher one), it is first loaded again
next to the current one, because TF Serving refuses a label on a version that is not loaded.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from mlops_common import faultpoint, log
from mlops_common.errors import UserError

from . import apply, cancel, host_config, retention, verified
from . import models_config as mc
from .errors import HostUnreachable, LedgerWriteFailed, LockHeld, SmokeFailed
from .names import has_control
from .observe import Observed
from .options import DeployOptions
from .plan import AVAILABLE, ConfigTarget, HostPlan, MainTarget, Phase, Step, StepKind, applied, compose
from .progress import make_progress
from .publish import incoming_dirs, publish
from .smoke import Golden, SmokeReport, run_smoke

logger = log.get("sync.host_run")

Recorder = Callable[..., None]   # recorder(action, outcome, *, host, from_version, to_version, reason, details)


class StepFailed(Exception):
    """A planned step failed on a host; ``error`` is the original exception."""

    def __init__(self, host: str, step: Step, error: BaseException):
        super().__init__(f"{host}: {step.kind}: {error}")
        self.host, self.step, self.error = host, step, error


@dataclass
class HostOutcome:
    host: str
    status: str                               # deployed | up_to_date | failed | restored | restore_failed |
    #                                           unchanged (another host failed before this one was touched)
    from_version: int | None
    to_version: int
    steps: list[dict] = field(default_factory=list)
    publish: dict | None = None
    smoke: list[dict] = field(default_factory=list)
    previous_kept: int | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    failed_step: str | None = None
    restore: dict | None = None
    switch_seconds: float | None = None
    answered_at: float | None = None          # time.monotonic() when the new outputs answered
    retention: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("answered_at")
        return d


class HostRun:
    """One host's deploy: the connection, what was observed, the plan, and how to undo it."""

    def __init__(self, conn, observed: Observed, plan: HostPlan, opts: DeployOptions, *,
                 golden: Callable[[], Golden], bundle: Callable[[], tuple],
                 record: Recorder | None = None, heartbeat: Callable[..., None] | None = None,
                 pull: Callable | None = None):
        self.conn = conn
        self.host = conn.host
        self.transport = conn.transport
        self.client = conn.client
        self.observed = observed
        self.plan = plan
        self.opts = opts
        self._golden = golden
        self._bundle = bundle               # () -> (saved_model_dir, manifest)
        self.keeps_copy = False             # use_bundle: the host's own copy, nothing downloaded for it
        self._pull = pull                   # (host, manifest) -> store.Pull | None (shared store)
        self.record = record or (lambda *a, **k: None)
        self.heartbeat = heartbeat or (lambda **_: None)    # Heartbeat(...): (force=False) -> None
        self.config = observed.config
        # what a put-back writes: the observed text, or the pinned one once PIN_MAIN ran (the
        # original's policy would load the published version at once)
        self.baseline: tuple[mc.ServingConfig, str | None] = (observed.config, observed.config_text)
        self.touched = False                # models.config may have been changed by us
        # TF Serving serves what the file holds (observed); False: the first write reloads even an
        # unchanged file (a killed deploy's, written but never reloaded)
        self.applied = applied(observed.obs, opts.label)
        self.connection_lost = False        # the transport died: the host, not the version, failed
        self.lock_lost: str | None = None   # another deploy took this host's lock: never touch it again
        # the prepare phase is the deploy's, not live traffic: its smoke test through the main
        # entry (``SMOKE_MAIN``) goes through the model's name, and TF Serving counts it with live
        # traffic; the validation copy's load, warmup and smoke test (up to 1,000 predicts) load
        # the host that serves live traffic meanwhile. On a host the bake judges, ``canary.Baker``
        # sets ``read_metrics`` (the host's metrics page, or None when unreadable), read just before
        # this host's first prepare step and just after its last: ``own_marks``, what the bake leaves
        # out of its window before the switch (``metrics_windows.window_outside``)
        self.read_metrics: Callable[[], object] | None = None
        self.own_marks: list[tuple[object, object]] = []
        self.outcome = HostOutcome(self.host.name, "failed", plan.current, plan.desired,
                                   previous_kept=plan.previous_kept, notes=list(plan.notes))

    @property
    def model(self) -> str:
        return self.plan.model

    def use_bundle(self, bundle: Callable[[], tuple]) -> None:
        """Publish from ``bundle`` instead: ``(None, manifest)`` when the host's copy of the
        version is to be verified against ``manifest`` in place (``fleet_fetch.fetch``)."""
        self._bundle, self.keeps_copy = bundle, True

    # --- execute -----------------------------------------------------------------------
    def execute(self, phase: Phase | None = None) -> HostOutcome:
        """Run the steps of ``phase`` (all steps when None); the outcome is ``deployed`` once the
        last step of the plan has run."""
        name = self.host.name
        steps = self.plan.steps if phase is None else self.plan.phase(phase)
        total = len(self.plan.steps)
        read = self.read_metrics if phase is Phase.PREPARE and steps else None
        before_prepare = read() if read is not None else None
        for step in steps:
            i = self.plan.steps.index(step) + 1
            try:
                self.heartbeat()
                cancel.check()
            except (LockHeld, cancel.DeployInterrupted) as exc:
                if isinstance(exc, LockHeld):
                    self.lock_lost = exc.message
                self.outcome.failed_step, self.outcome.error = step.kind, exc.message
                raise StepFailed(name, step, exc) from exc
            except Exception as exc:  # noqa: BLE001 - the heartbeat's write failed: the host, not the version
                self.connection_lost = True
                self.outcome.failed_step = step.kind
                self.outcome.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                raise StepFailed(name, step, exc) from exc
            logger.info("%s: %s [%d/%d] %s", name, step.kind.phase, i, total, step.text)
            start = time.monotonic()
            try:
                self._run(step)
            except BaseException as exc:
                self.outcome.failed_step = step.kind
                self.outcome.error = str(exc) or type(exc).__name__
                raise StepFailed(name, step, exc) from exc
            self.outcome.steps.append({"kind": str(step.kind), "phase": str(step.kind.phase), "text": step.text,
                                       "seconds": round(time.monotonic() - start, 3)})
            faultpoint.reached(f"after:{step.kind}", stop=cancel.requested)     # test hook, inert unless set
        if read is not None:        # a failed prepare ends the deploy: no bake
            self.own_marks.append((before_prepare, read()))
        if not self.plan.steps or (steps and steps[-1] is self.plan.steps[-1]):
            self.outcome.status = "deployed"
        return self.outcome

    def _run(self, step: Step) -> None:
        _RUNNERS[step.kind](self, step)

    def _publish(self, step: Step) -> None:
        saved_model_dir, manifest = self._bundle()
        self._remove_dead_uploads()
        progress = make_progress(manifest.total_size, f"{self.host.name}: uploading v{step.version}",
                                 json_mode=self.opts.json_mode)

        lock = getattr(self.conn, "lock", None)

        def sent(nbytes: int) -> None:        # an interrupt stops the upload between chunks
            cancel.check()
            if lock is not None:              # ... so does the lock's thread finding it taken over (no I/O):
                lock.kept()                   # the upload went on, renamed into the new owner's host; or
                                              # its beats failing: the upload ran on until it went stale
            progress(nbytes)
            faultpoint.reached("during:publish", stop=cancel.requested)     # test hook, inert unless set

        pull = self._pull(self.host, manifest) if self._pull is not None else None
        # the flag is up to TTL/4 old: right before the rename into place, the lock is read once
        ours = lock.check if lock is not None and hasattr(lock, "check") else None
        result = publish(self.transport, self.model, step.version, saved_model_dir, manifest, sent, pull=pull,
                         before_final=ours)
        progress.done()
        self.outcome.publish = result.to_dict()
        logger.info("%s: v%d %s (%d bytes in %.1fs)", self.host.name, step.version,
                    result.status.replace("_", " "), result.bytes_transferred, result.seconds)

    def _remove_dead_uploads(self) -> None:
        """After a takeover of a dead deploy's lock, its uploads (``.incoming-*``) are dead too
        (every upload holds the lock) and may hold the space this one needs: a deploy killed
        mid-upload made every rerun fail its free-space check until retention found them an hour
        old. Removed before this upload, not only after a successful deploy."""
        lock = getattr(self.conn, "lock", None)
        if lock is None or not getattr(lock, "took_over", False):
            return
        dead = sorted(n for n in incoming_dirs(self.transport, self.model) if not has_control(n))
        if dead:
            self.heartbeat(force=True)      # deleting: only while the host is still ours (checked now)
            retention.apply(self.transport, retention.RetentionPlan(self.model, remove_uploads=dead))

    def _write(self, target: ConfigTarget) -> None:
        config = compose(self.config, self.model, self.plan_base_path, target)
        self.touched = True
        apply.apply_config_over(self.host, self.transport, config, self.config, self.client,
                                timeout=self.opts.timeout, interval=self.opts.poll_interval,
                                stale=not self.applied)
        self.config, self.applied = config, True

    @property
    def plan_base_path(self) -> str:
        return self.observed.obs.base_path

    def _load(self, step: Step) -> None:
        self._write(step.config)

    def _pin(self, step: Step) -> None:
        """Pin a main entry that watches the base path to what it serves (nothing that serves
        changes); from now on that is what a put-back restores."""
        self._write(step.config)
        self.baseline = (self.config, mc.render(self.config))

    def _drop_validation(self, step: Step) -> None:
        """Unload the validation copy before the main entry loads the version (memory bound)."""
        self._write(step.config)
        apply.wait_gone(self.client, step.entry, step.unload, timeout=self.opts.timeout,
                        interval=self.opts.poll_interval)

    def _wait(self, step: Step) -> None:
        apply.wait_loaded(self.client, step.entry, step.version, timeout=self.opts.timeout,
                          interval=self.opts.poll_interval)

    def _smoke(self, step: Step) -> None:
        report = run_smoke(self.client, self.host.name, step.entry, self._golden(), step.version,
                           route_version=step.version, opts=self.opts.smoke)
        self._judge(report, f"smoke test of v{step.version} via {report.route}", "before the switch")
        verified.add(self.transport, self.model, step.version, route=report.route)

    def _switch(self, step: Step) -> None:
        start = time.monotonic()
        self._write(step.config)
        apply.wait_label(self.client, self.model, self.opts.label, step.version, timeout=self.opts.timeout)
        apply.wait_gone(self.client, self.model, step.unload, timeout=self.opts.timeout)
        self.outcome.switch_seconds = round(time.monotonic() - start, 3)

    def _verify(self, step: Step) -> None:
        golden = self._golden()
        via_label = run_smoke(self.client, self.host.name, self.model, golden, step.version,
                              label=self.opts.label, opts=self.opts.smoke, latency=False)
        unversioned = run_smoke(self.client, self.host.name, self.model, golden, step.version,
                                opts=self.opts.smoke, latency=False)
        report = SmokeReport(self.host.name, self.model, f"{via_label.route} + {unversioned.route} (unversioned)",
                             step.version, via_label.checks + [
                                 type(c)(f"unversioned_{c.name}", c.passed, c.message, c.seconds)
                                 for c in unversioned.checks])
        self._judge(report, f"check of v{step.version} after the switch", "after the switch")
        self.outcome.answered_at = time.monotonic()

    def _judge(self, report: SmokeReport, what: str, when: str) -> None:
        """Record ``report`` (its ledger row says ``when``: a host has two, one each side of its
        switch, and the version's page tells them apart by it) and raise if it failed."""
        doc = report.to_dict()
        self.outcome.smoke.append(doc)
        try:
            self.record("smoke_test", "passed" if report.passed else "failed", host=self.host.name,
                        from_version=self.plan.current, to_version=report.version,
                        reason=None if report.passed else report.summary(), details={**doc, "when": when})
        except UserError as exc:
            if report.passed:      # the version passed: only the record is missing
                raise LedgerWriteFailed(f"{self.host.name}: {what} passed, but the ledger could not record "
                                        f"it: {exc.message}") from None
            logger.warning("%s: the ledger could not record the failed %s (%s)", self.host.name, what,
                           exc.message)
        if not report.passed:
            raise SmokeFailed(f"{self.host.name}: {what} failed: {report.summary()}")
        logger.info("%s: %s passed (%s)", self.host.name, what,
                    ", ".join(f"{c.name}: {c.message}" for c in report.checks))

    # --- restore -----------------------------------------------------------------------
    def restore(self) -> dict:
        """Put the host back as observed before the deploy; never raises (reports instead)."""
        start = time.monotonic()
        lock = getattr(self.conn, "lock", None)
        if self.lock_lost is None and getattr(lock, "lost", None):
            self.lock_lost = lock.lost           # taken over while this host waited for its wave
        if self.lock_lost and self.touched:      # the host is another deploy's now: leave it to it
            info = {"needed": True, "ok": False, "seconds": 0.0,
                    "error": f"not put back: {self.lock_lost}"}
            self.outcome.status, self.outcome.restore = "restore_failed", info
            return info
        if not self.touched:
            info = {"needed": False, "ok": True, "seconds": 0.0}
            self.outcome.restore = info
            if self.outcome.failed_step is None:      # another host failed; this one was never changed
                self.outcome.status = "unchanged"
            return info
        try:
            self._restore()
            info = {"needed": True, "ok": True, "seconds": round(time.monotonic() - start, 3)}
            self.outcome.status = "restored"
        except BaseException as exc:  # noqa: BLE001 - reported to the person on call
            info = {"needed": True, "ok": False, "seconds": round(time.monotonic() - start, 3),
                    "error": str(exc) or type(exc).__name__}
            self.outcome.status = "restore_failed"
            if not isinstance(exc, Exception):
                self.outcome.restore = info
                raise
        self.outcome.restore = info
        return info

    def _restore(self) -> None:
        obs = self.observed.obs
        model, label, timeout = self.model, self.opts.label, self.opts.timeout
        original, text = self.baseline
        orig_main = original.entry(model)
        try:
            current = host_config.read(self.transport)
        except HostUnreachable:
            self._reconnect()
            current = host_config.read(self.transport)
        try:
            avail_now = {s.version for s in self.client.model_status(model) if s.state == AVAILABLE}
            needed = sorted({v for _, v in orig_main.labels}) if orig_main is not None else []
        except HostUnreachable:
            # TF Serving is down (restarting?): still write the original file back, it is what
            # TF Serving reads when it comes back; the waits below then say whether it did.
            avail_now, needed = set(), []
        missing = [v for v in needed if v not in avail_now]
        if missing and orig_main is not None and orig_main.policy == "specific":
            # TF Serving refuses a label on a version that is not loaded: load it back first,
            # next to what serves now, then write the original text.
            cur_main = current.entry(model)
            keep = set(cur_main.versions) if cur_main is not None and cur_main.policy == "specific" else set()
            labels = tuple((k, v) for k, v in (cur_main.labels if cur_main is not None else ()) if v in avail_now)
            interim = MainTarget(tuple(keep | set(orig_main.versions)), labels)
            config = compose(current, model, obs.base_path, ConfigTarget(interim, None))
            logger.info("%s: loading v%s again before restoring models.config", self.host.name,
                        ", v".join(map(str, missing)))
            apply.apply_text(self.host, self.transport, mc.render(config), timeout=timeout)
            for v in missing:
                apply.wait_loaded(self.client, model, v, timeout=timeout, interval=self.opts.poll_interval,
                                  cancellable=False)
        if text is None:
            text = mc.render(compose(current, model, obs.base_path, ConfigTarget(None, None)))
        apply.apply_text(self.host, self.transport, text, timeout=timeout)
        serving = obs.serving
        if serving is not None:
            apply.wait_loaded(self.client, model, serving, timeout=timeout, interval=self.opts.poll_interval,
                              cancellable=False)
            if obs.stable == serving:
                apply.wait_label(self.client, model, label, serving, timeout=timeout, cancellable=False)
            orig_versions = set(orig_main.versions) if orig_main is not None else set()
            extra = [v for v in sorted(avail_now) if v > serving and v not in orig_versions]
            apply.wait_gone(self.client, model, extra, timeout=timeout, cancellable=False)
        logger.info("%s: restored models.config%s", self.host.name,
                    f" (v{serving} serves again)" if serving is not None else "")

    def _reconnect(self) -> None:
        """The connection to the host died mid-deploy (e.g. an SSH cut): note it (the failure is
        not the version's fault) and open a new one, once, to put the host back."""
        from .transports import open_transport

        self.connection_lost = True
        logger.info("%s: the connection was lost; reconnecting to put the host back", self.host.name)
        old, self.transport = self.transport, open_transport(self.host)
        self.conn.transport = self.transport        # closed with the others at the end
        try:
            old.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


_RUNNERS: dict[StepKind, Callable[[HostRun, Step], None]] = {
    StepKind.PIN_MAIN: HostRun._pin,
    StepKind.PUBLISH: HostRun._publish,
    StepKind.LOAD_VALIDATION: HostRun._load,
    StepKind.WAIT_VALIDATION: HostRun._wait,
    StepKind.SMOKE_VALIDATION: HostRun._smoke,
    StepKind.SMOKE_MAIN: HostRun._smoke,
    StepKind.DROP_VALIDATION: HostRun._drop_validation,
    StepKind.LOAD_MAIN: HostRun._load,
    StepKind.WAIT_MAIN: HostRun._wait,
    StepKind.SWITCH: HostRun._switch,
    StepKind.VERIFY: HostRun._verify,
}
assert set(_RUNNERS) == set(StepKind), "every StepKind needs a runner"
