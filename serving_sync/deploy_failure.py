"""What a failed fleet deploy does: put every host back, move ``production`` back when the
version is to blame, tag it, and say why in one message (step 4 of ``fleet``'s docstring).

A module of its own because what a failure undoes, and whether the version is to blame, is a
job apart from running the rollout: ``fleet`` calls ``fail`` / ``or_put_back`` and raises what
they return.
"""
from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

from mlops_common import log
from mlops_common.errors import DeployFailed, UserError
from registry import deploys

from . import parallel
from .canary import CanaryFailed
from .cancel import DeployInterrupted
from .connections import in_use
from .errors import DiskFull, HostPermissionDenied, LedgerWriteFailed, ProductionMoved, SmokeFailed
from .host_run import HostRun, StepFailed

if TYPE_CHECKING:
    from .fleet_result import FleetResult

logger = log.get("sync.fleet")      # the deploy's logger: these lines are part of its output


def _restore_all(runs: list[HostRun]) -> tuple[list[tuple[HostRun, dict]], BaseException | None]:
    """``HostRun.restore`` on every host, in parallel (each never raises but for a forced interrupt),
    and the forced interrupt (a second signal) that came meanwhile, if any: the caller still records
    the put-back and moves production, then raises it. A forced interrupt lands in this thread while
    it waits for the put-backs (worker threads even for one host), which lets every host finish its
    put-back before it is seen here."""
    forced = None
    try:
        outcomes = parallel.settle(_restore, runs, workers=8, name="restore", inline=False, put_back=True)
    except BaseException as exc:  # noqa: BLE001 - raised by the caller once the put-back is recorded
        forced, outcomes = exc, [(r.outcome.restore, None) for r in runs]
    out = []
    for r, (info, exc) in zip(runs, outcomes):
        if exc is not None or info is None:
            forced = forced or exc
            info = r.outcome.restore or {"needed": r.touched, "ok": not r.touched,
                                         "error": str(exc or forced) or type(exc or forced).__name__}
        out.append((r, info))
    return out, forced


def _restore(run: HostRun) -> dict:
    """``HostRun.restore`` on a connection a forced stop's clean-up closes only once it is done:
    closed under it, the put-back's ``models.config`` write was cut mid-way."""
    with in_use(run.conn):
        return run.restore()


def _canary(result: FleetResult) -> str | None:
    """The verdict of this deploy's canary when it was judged before a later step failed (what a
    deploy that succeeds tags, ``fleet._succeeded``); None when it had no canary bake."""
    judged = [b["outcome"] for b in result.bake if b["host"] in result.rollout.get("canary", ())]
    return ",".join(judged) if judged else None


def or_put_back(result: FleetResult, recorder, run: HostRun, every: list[HostRun], step: str, fn, *args):
    """``fn(*args)`` between two phases of the switch (the bake's baseline window, a wave's ledger
    rows): whatever it raises — a signal, a ledger that stopped answering — puts every host back
    like a failed step, so the fleet is never left half switched."""
    try:
        return fn(*args)
    except BaseException as exc:
        raise fail(result, recorder, run, every, exc, step=step) from None


def fail(result: FleetResult, recorder, run: HostRun, every: list[HostRun],
         exc: BaseException, *, step: str = "?") -> BaseException:
    """Put every host back, move production back, record; returns what to raise: DeployFailed
    (exit 3, also for a bug: one line, its traceback under -v), DeployInterrupted (130), or the
    original exception for a forced interrupt. ``exc``: a ``StepFailed``, a ``CanaryFailed`` (the
    bake's verdict), or what the bake raised."""
    step = str(exc.step.kind) if isinstance(exc, StepFailed) else step
    error = exc.error if isinstance(exc, StepFailed) else exc
    why = (error.message if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
    model, v = result.model, result.version
    put_back_from = result.end_running()         # the failed phase's time ends where the put-back begins
    put_back, not_back, rows = [], [], []
    restored, forced = _restore_all([run] + [r for r in reversed(every) if r is not run])
    for r, info in restored:
        if not info["needed"]:
            continue
        (put_back if info["ok"] else not_back).append(r)
        rows.append(recorder.entry("host_rollback", "ok" if info["ok"] else "failed", host=r.host.name,
                                   from_version=v, to_version=r.plan.current,
                                   reason=f"deploy of v{v} failed on {run.host.name}: {why}", details=info))
    try:
        recorder.record_all(rows)
    except UserError as exc:        # the hosts are back; the ledger is told what it can be told
        logger.warning("could not record the host rollbacks in the ledger (%s)", exc.message)
    result.timings["put_back"] = round(time.monotonic() - put_back_from, 3)
    interrupted = _interrupted(error)
    if interrupted and not isinstance(error, DeployInterrupted):
        why = "interrupted"
    kept_because = not_the_versions_fault(run, error, step=step) or _served_elsewhere(result, recorder)
    verdict = error.verdict if isinstance(error, CanaryFailed) else None
    result.blames_version = kept_because is None
    registry_note = registry_after_failure(result, recorder, run, why, step, kept_because=kept_because,
                                           canary=verdict.outcome if verdict is not None else _canary(result),
                                           not_back=[r.host.name for r in not_back])
    result.status = "failed"
    msg = [f"deploy of v{v} of '{model}' stopped after the canary: {why}" if verdict is not None else
           f"deploy of v{v} of '{model}' failed on host {run.host.name} at step '{step}': {why}"]
    if result.message_extra:
        msg.append(result.message_extra)
    if put_back:
        prev = sorted({r.plan.current for r in put_back}, key=lambda x: (x is None, x))
        msg.append(f"put back {', '.join(r.host.name for r in put_back)} to "
                   f"{' / '.join('v' + str(p) if p is not None else 'nothing (first deploy)' for p in prev)}")
    elif not not_back:
        msg.append("no host was changed")
    if not_back:
        msg.append("COULD NOT put back " + "; ".join(f"{r.host.name} ({r.outcome.restore.get('error')})"
                                                      for r in not_back)
                   + ": check those hosts with `mlops sync status` and fix them by hand")
    msg.append(registry_note)
    result.registry_note = registry_note
    result.message = "; ".join(m for m in msg if m)
    if forced is not None and isinstance(error, Exception):     # forced during the put-back: recorded first
        result.message += "; then forced to stop (a second signal)"
        return forced
    if not isinstance(error, Exception):       # KeyboardInterrupt / SystemExit: after putting back
        return error
    if not isinstance(error, UserError):         # a bug: hosts are back; one line, traceback under -v
        logger.debug("unexpected error in the deploy", exc_info=error)
        result.message = " ".join(f"{result.message}; this is a bug in mlops (unexpected "
                                  f"{type(error).__name__}): rerun with -v for its traceback".split())
    failed = DeployInterrupted(result.message) if interrupted else DeployFailed(result.message)
    if interrupted:
        failed.in_rollout = True                 # its message says what stands (rollback._stopped_before_the_hosts)
    failed.result = result                       # for --json
    return failed


def _interrupted(error: BaseException) -> bool:
    """Ctrl-C / SIGTERM (or the deploy's own cancel): not the version's fault."""
    return isinstance(error, DeployInterrupted) or not isinstance(error, Exception)


REGISTRY_UNREADABLE = "the registry could not be read before the switch, not the version"
PRODUCTION_MOVED = "production moved to another version meanwhile, not the version"
INTERRUPTED_BY_SIGNAL = "the deploy was interrupted"


def _served_elsewhere(result: FleetResult, recorder) -> str | None:
    """Hosts this deploy left alone already serve the version (a host added to a fleet on it):
    one host failing to take it does not make it bad, so production and its tags stay (moving
    production back named a version no host served, and the next deploy rolled it out). Only
    when a rollout of it finished (the ledger's verdict): a canary left switched by a deploy
    killed before its bake or its last wave vouches for nothing, and this failure is the first
    judgement of the version."""
    others = [p["host"] for p in result.plans if p.get("up_to_date") and p.get("current") == result.version]
    if not others:
        return None
    try:
        if not recorder.rolled_out(result.version):
            return None
    except UserError as exc:      # not knowing: leave production where it is, as before
        logger.warning("could not read the ledger (%s)", exc.message)
    return f"v{result.version} serves on {', '.join(others)}, which this deploy did not change; not the version"


def not_the_versions_fault(run: HostRun, exc: BaseException, *, step: str = "?") -> str | None:
    """Why production stays where it is after this failure, or None when the version is to blame.
    Production moves back only when something says the version is bad: not for an interrupt, a
    failed upload, a host that cannot be written to (a full disk, or a permission taken from the
    deploy user: at any step, e.g. writing models.config), a lost connection or lock, a ledger
    that could not record, a canary whose metrics could not be read, or a registry that could
    not be read before a wave (the hosts go back, and the next deploy or watch pass retries).
    A failed smoke test or canary bake is a verdict on the version: a connection the put-back
    found dropped (``HostRun._reconnect``, after the verdict: idle through a bake, a blip) does
    not explain it. Its lock taken over still does (the new owner may have changed the host)."""
    step = str(exc.step.kind) if isinstance(exc, StepFailed) else step
    error = exc.error if isinstance(exc, StepFailed) else exc
    return (INTERRUPTED_BY_SIGNAL if _interrupted(error)
            else f"publishing it to {run.host.name} failed, not the version" if step == "publish"
            else f"{run.host.name} could not be written to ({_write_failure(error)}), not the version"
            if isinstance(error, (DiskFull, HostPermissionDenied))
            else f"the connection to {run.host.name} was lost, not the version"
            if run.connection_lost and not isinstance(error, (SmokeFailed, CanaryFailed))
            else f"the deploy lock on {run.host.name} was taken over, not the version"
            if run.lock_lost
            else "the ledger could not record the deploy, not the version"
            if step == "record" or isinstance(error, LedgerWriteFailed)
            else "the canary's metrics could not be read, not the version"
            if step == "bake" and not isinstance(error, CanaryFailed)
            else PRODUCTION_MOVED
            if isinstance(error, ProductionMoved)
            else REGISTRY_UNREADABLE if step == "production" else None)


def _write_failure(error: BaseException) -> str:
    return "its disk is full" if isinstance(error, DiskFull) else "permission denied"


def registry_after_failure(result: FleetResult, recorder, run: HostRun, why: str,
                           step: str, *, kept_because: str | None, canary: str | None = None,
                           not_back: list[str] | tuple[str, ...] = ()) -> str:
    """Production after a failed deploy (moved back, left, or not involved), recorded; the note
    that says so. ``not_back``: the hosts that could not be put back (the note names them rather
    than say every host serves what production names again)."""
    from registry import deploy_revert, description

    model, v = result.model, result.version
    reason = f"{run.host.name}: {step}: {why}"
    try:
        if kept_because:        # upload failed, connection lost, or interrupted: nothing says v is bad
            result.registry = {"moved": False, "reason": kept_because}
            if step == "production" and kept_because != REGISTRY_UNREADABLE:
                note = ("rerun `mlops sync deploy` (or let the deploy that moved it run): it installs what "
                        "production names now")
            else:
                where = (f"production left at v{v}" if result.source == "production"
                         else "production not involved (--version)")
                fix = "" if kept_because == INTERRUPTED_BY_SIGNAL else "fix the cause and "
                note = (f"{where} ({kept_because}); {fix}rerun `mlops sync deploy`: it resumes where this one "
                        f"stopped")
                if result.source == "production":
                    result.registry["left_at"] = v      # production names v; the hosts were put back
            details = {"step": step, "registry_unchanged": True}
            if result.switched:       # its deploy ok rows were undone: the fleet did not keep serving it
                details["switched_put_back"] = list(result.switched)
            trouble = _record_failed(recorder, run, v, reason, details)
            return note + (f" (the ledger row could not be written: {trouble})" if trouble else "")
        if result.source != "production":
            deploys.tag(model, v, deploys.FAILED, reason, canary=canary)
            recorder("deploy", "failed", host=run.host.name, from_version=run.plan.current, to_version=v,
                     reason=reason, details={"step": step})
            description.refresh_quietly(model, v)       # the tag rebuilt it before this row
            result.registry = {"moved": False, "reason": "--version deploy: production not involved"}
            return f"v{v} tagged deploy_status=failed; production was not involved (--version)"
        rolling_back = recorder.rollback_in_rollout(v)
        to = recorder.previous_production(v)
        if to is None:   # production was set outside promote/rollback: what the hosts served
            to = _common([p["current"] for p in result.plans if p["current"] is not None])
        undoes_rollback = rolling_back is not None and to is not None and rolling_back.from_version == to
        promo = deploy_revert.revert_failed_deploy(model, v, to, reason, host=run.host.name, host_was=run.plan.current,
                                               provenance=recorder.provenance)
        if canary is not None:
            deploys.tag(model, v, deploys.FAILED, reason, canary=canary)
        result.registry = promo.to_dict()
        if not promo.moved:
            return (f"v{v} tagged deploy_status=failed; production was NOT moved (it is v"
                    f"{promo.details.get('production_was')} now, not v{v})")
        if to is None:
            return (f"v{v} tagged deploy_status=failed; production removed: there was no previous production "
                    f"version to go back to; promote a working version")
        if undoes_rollback:
            served = (f"which the hosts put back serve (not {', '.join(not_back)}: above)" if not_back
                      else "which the hosts still serve")
            return (f"the rollback to v{v} failed: production is v{to} again, {served} "
                    f"(ledger #{promo.ledger_id}); v{v} tagged deploy_status=failed; roll back to another "
                    f"version with `mlops sync rollback --to N`")
        return (f"production moved back to v{to} (ledger #{promo.ledger_id}); v{v} tagged "
                f"deploy_status=failed: fix the model or its golden set and register a new version")
    except UserError as exc:
        result.registry = {"moved": False, "error": exc.message}
        if not kept_because:
            # the ledger (its own database) still learns the deploy failed: else the newest deploy
            # row of v could be a canary's "ok", and later rollbacks would take v for a good target
            _record_failed(recorder, run, v, reason, {"step": step, "registry_error": exc.message})
        return f"could not update the registry ({exc.message}); check `mlops registry status`"


def _record_failed(recorder, run: HostRun, v: int, reason: str, details: dict) -> str | None:
    """The failed ``deploy`` row of ``v``; what kept the ledger from taking it (None: written)."""
    try:
        recorder("deploy", "failed", host=run.host.name, from_version=run.plan.current, to_version=v,
                 reason=reason, details=details)
    except UserError as exc:
        return exc.message
    return None


def _common(values: list[int]) -> int | None:
    return collections.Counter(values).most_common(1)[0][0] if values else None
