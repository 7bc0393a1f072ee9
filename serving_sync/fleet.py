"""``mlops sync deploy`` for a fleet: one host at a time, all-new or all-old.

1. Resolve the version (``production`` or ``--version N``), open every host and take every
   host's lock (name order). 2. Observe every host and plan (``plan.plan_host``); if every host
   is up to date, stop: nothing is downloaded, written or reloaded. 3. Download what the plans
   need (the SavedModel only if something is published; else just the golden set). 4. Run each
   host's plan in hosts-file order. If host k fails, host k and hosts 1..k-1 are put back
   (``HostRun.restore``), ``production`` moves back (``registry.promotion.revert_failed_deploy``,
   unless the failure was in the upload itself: the version is not to blame and the next run
   resumes), the version is tagged, and ``DeployFailed`` (exit 3) says why and what to do.
5. On success: ``deploy_status=deployed``, a ``deploy`` ledger row per host, retention.
"""
from __future__ import annotations

import collections
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlops_common import lineage, log
from mlops_common.errors import DeployFailed, NotFoundError, UserError

from . import manifest as mf
from . import retention, verified
from .connections import Heartbeat, connected, locked
from .cancel import DeployInterrupted
from .deploy import DeployOptions, HostOutcome, HostRun, StepFailed
from .golden import download_bundle, fetch_golden
from .observe import observe_host
from .plan import plan_host

logger = log.get("sync.fleet")


@dataclass
class FleetResult:
    model: str
    version: int
    source: str                          # "production" | "--version"
    status: str                          # deployed | up_to_date | failed
    hosts: list[HostOutcome] = field(default_factory=list)
    plans: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    registry: dict | None = None
    message: str = ""
    started_at: float = 0.0              # time.monotonic() at start (not serialized)
    timings: dict = field(default_factory=dict)   # seconds per phase (each host's steps: hosts[].steps)

    def answered_after(self, since: float) -> float | None:
        """Seconds from ``since`` until the last host answered with the new version's outputs."""
        times = [h.answered_at for h in self.hosts if h.answered_at is not None]
        return round(max(times) - since, 3) if times else None

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source, "status": self.status,
                "message": self.message, "seconds": round(self.seconds, 3), "registry": self.registry,
                "hosts": [h.to_dict() for h in self.hosts], "plans": self.plans, "timings": self.timings}

    def lap(self, phase: str, since: float) -> float:
        """Record ``phase`` as lasting from ``since`` until now; returns now."""
        now = time.monotonic()
        self.timings[phase] = round(now - since, 3)
        return now


def resolve_version(model: str, version: int | None) -> tuple[int, str]:
    """The version to deploy: ``--version N`` (must exist) or the one holding ``production``."""
    from registry import versions

    if version is not None:
        return versions.get_version(model, version).version, "--version"
    v = versions.production_version(model)
    if v is None:
        raise NotFoundError(f"no version of '{model}' holds the production alias; promote one first "
                            f"(mlops registry promote --version N) or pass --version N")
    return v, "production"


class LedgerRecorder:
    """Ledger rows for deploy / smoke_test / host_rollback, with who and which pipeline."""

    def __init__(self, model: str):
        from registry.ledger import Ledger

        self.model = model
        self.ledger = Ledger()
        self.actor = lineage.os_user()

    def __call__(self, action: str, outcome: str, *, host=None, from_version=None, to_version=None,
                 reason=None, details=None) -> None:
        self.ledger.record(action, self.model, outcome=outcome, host=host, from_version=from_version,
                           to_version=to_version, reason=reason, details=details or {}, actor=self.actor,
                           pipeline_id=lineage.pipeline_id(), workflow_id=lineage.workflow_id())

    def previous_production(self, version: int) -> int | None:
        """Where ``production`` was before it last moved to ``version`` (None if unknown)."""
        for e in reversed(self.ledger.entries(self.model, actions=("promote", "rollback"))):
            if e.outcome == "ok" and e.to_version == version and e.from_version != version:
                return e.from_version
        return None


class _Lazy:
    """The bundle / golden set, fetched once and only if a step needs it."""

    def __init__(self, model: str, version: int, workdir: Path):
        self.model, self.version, self.workdir = model, version, workdir
        self._bundle = None
        self._golden = None

    def bundle(self):
        if self._bundle is None:
            logger.info("downloading v%d of '%s' (SavedModel and golden set) from MLflow", self.version, self.model)
            b = download_bundle(self.model, self.version, self.workdir / "bundle")
            self._bundle = (b.saved_model_dir, mf.build(b.saved_model_dir))
            self._golden = b.golden
        return self._bundle

    def golden(self):
        if self._golden is None:
            self._golden = fetch_golden(self.model, self.version)
        return self._golden


def observe_and_plan(conns, model: str, version: int, opts: DeployOptions):
    observed = [observe_host(c.host, c.transport, c.client, model, label=opts.label) for c in conns]
    plans = [plan_host(o.obs, version, keep_previous=opts.keep_previous, keep=opts.keep, label=opts.label)
             for o in observed]
    return observed, plans


@dataclass
class FleetPlan:
    model: str
    version: int
    source: str
    plans: list = field(default_factory=list)        # plan.HostPlan per reachable host
    errors: dict = field(default_factory=dict)       # host name -> one-line error

    @property
    def up_to_date(self) -> bool:
        return not self.errors and all(p.up_to_date for p in self.plans)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source,
                "up_to_date": self.up_to_date, "hosts": [p.to_dict() for p in self.plans],
                "errors": self.errors}


def plan_fleet(model: str, hosts, *, version: int | None = None,
               opts: DeployOptions = DeployOptions()) -> FleetPlan:
    """What ``deploy`` would do on each host, changing nothing (no lock, no write)."""
    v, source = resolve_version(model, version)
    fp = FleetPlan(model, v, source)
    for host in hosts:
        try:
            with connected([host]) as conns:
                _, (p,) = observe_and_plan(conns, model, v, opts)
            fp.plans.append(p)
        except UserError as exc:
            fp.errors[host.name] = exc.message
    return fp


def deploy(model: str, hosts, *, version: int | None = None, opts: DeployOptions = DeployOptions(),
           break_lock: str | None = None, lock_wait: float = 0.0, reason: str | None = None) -> FleetResult:
    """Make every host serve ``version`` (default: production); see the module docstring."""
    start = time.monotonic()
    v, source = resolve_version(model, version)
    result = FleetResult(model, v, source, "failed", started_at=start)
    t = result.lap("resolve_version", start)
    with connected(hosts) as conns, locked(conns, break_lock=break_lock, wait=lock_wait, model=model):
        t = result.lap("connect_and_lock", t)
        observed, plans = observe_and_plan(conns, model, v, opts)
        t = result.lap("observe_and_plan", t)
        result.plans = [p.to_dict() for p in plans]
        if all(p.up_to_date for p in plans):
            result.status = "up_to_date"
            result.hosts = [_unchanged(p) for p in plans]
            result.message = f"up to date: {_hosts(conns)} serve{'s' if len(conns) == 1 else ''} v{v} of '{model}'"
            _record_if_unrecorded(model, v, plans, reason)
            result.seconds = time.monotonic() - start
            return result
        recorder = LedgerRecorder(model)
        heartbeat = Heartbeat(conns)
        workdir = Path(tempfile.mkdtemp(prefix="mlops-deploy-"))
        try:
            lazy = _Lazy(model, v, workdir)
            if any(p.publishes for p in plans):
                lazy.bundle()        # before touching any host: a registry problem changes nothing
            else:
                lazy.golden()
            t = result.lap("fetch_from_registry", t)
            runs: list[HostRun] = []
            for conn, obsd, plan in zip(conns, observed, plans):
                if plan.up_to_date:
                    result.hosts.append(_unchanged(plan))
                    continue
                run = HostRun(conn, obsd, plan, opts, golden=lazy.golden, bundle=lazy.bundle,
                              record=recorder, heartbeat=heartbeat)
                result.hosts.append(run.outcome)
                try:
                    run.execute()
                except BaseException as exc:
                    raise _fail(result, recorder, run, runs, exc) from None
                runs.append(run)
                recorder("deploy", "ok", host=conn.host.name, from_version=plan.current, to_version=v,
                         reason=reason, details={"steps": [s.kind for s in plan.steps],
                                                 "previous_kept": plan.previous_kept,
                                                 "publish": run.outcome.publish,
                                                 "switch_seconds": run.outcome.switch_seconds})
            t = result.lap("hosts", t)
            _succeeded(result, recorder, runs, opts)
            result.lap("record_and_retention", t)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - start
    return result


def _record_if_unrecorded(model: str, v: int, plans, reason: str | None) -> None:
    """Every host already serves ``v`` and verified it there. If the registry does not say so (a
    deploy killed after its switch did the work, not the bookkeeping), record it now, so the
    registry converges too; otherwise write nothing (deploying twice changes nothing)."""
    from registry import versions

    if versions.get_version(model, v).deploy_status == "deployed":
        return
    recorder = LedgerRecorder(model)
    for p in plans:
        recorder("deploy", "ok", host=p.host, from_version=p.current, to_version=v, reason=reason,
                 details={"steps": [], "recorded_late": "the host already served this version, verified there; "
                                                        "an earlier deploy stopped before recording it"})
    versions.set_tags(model, v, {"deploy_status": "deployed", "deploy.reason": "none"})
    logger.info("recorded v%d of '%s' as deployed: every host serves it, verified (an earlier deploy stopped "
                "before recording it)", v, model)


def _unchanged(plan) -> HostOutcome:
    return HostOutcome(plan.host, "up_to_date", plan.current, plan.desired, previous_kept=plan.previous_kept,
                       notes=list(plan.notes))


def _hosts(conns) -> str:
    names = [c.host.name for c in conns]
    return f"host {names[0]}" if len(names) == 1 else f"hosts {', '.join(names)}"


def _succeeded(result: FleetResult, recorder: LedgerRecorder, runs: list[HostRun], opts: DeployOptions) -> None:
    from registry import versions

    try:
        versions.set_tags(result.model, result.version, {"deploy_status": "deployed", "deploy.reason": "none"})
    except UserError as exc:     # the hosts serve it; only the registry could not be told
        raise UserError(f"v{result.version} of '{result.model}' now serves on "
                        f"{', '.join(r.host.name for r in runs)}, but the registry could not record "
                        f"deploy_status=deployed ({exc.message}); rerun `mlops sync deploy` once MLflow "
                        f"answers: it records it") from None
    for run in runs:
        run.outcome.retention = _retention(run, opts)
    result.status = "deployed"
    parts = []
    for run in runs:
        o = run.outcome
        was = f"from v{o.from_version}" if o.from_version is not None else "first deploy"
        kept = f", v{o.previous_kept} kept warm" if o.previous_kept is not None else ""
        parts.append(f"{o.host} ({was}{kept})")
    result.message = f"deployed v{result.version} of '{result.model}' to {', '.join(parts)}"


def _retention(run: HostRun, opts: DeployOptions) -> dict:
    plan = run.plan
    try:
        rp = retention.plan(run.transport, plan.model, serving=plan.desired,
                            previous=plan.previous_kept if plan.previous_kept is not None else plan.current,
                            keep=opts.keep, protected=plan.final.versions)
        retention.apply(run.transport, rp)
        if rp.remove_versions:
            verified.forget(run.transport, plan.model, rp.remove_versions)
        return rp.to_dict()
    except UserError as exc:   # the deploy succeeded; cleaning up can wait for the next one
        logger.warning("%s: retention failed (%s); it will be retried by the next deploy", run.host.name, exc)
        return {"error": exc.message}


def _fail(result: FleetResult, recorder: LedgerRecorder, run: HostRun, done: list[HostRun],
          exc: BaseException) -> BaseException:
    """Put hosts back, move production back, record; returns what to raise: DeployFailed (exit 3),
    DeployInterrupted (130), or the original exception when it is a bug or a forced interrupt."""
    step = exc.step.kind if isinstance(exc, StepFailed) else "?"
    error = exc.error if isinstance(exc, StepFailed) else exc
    why = (error.message if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
    model, v = result.model, result.version
    put_back, not_back = [], []
    for r in [run] + list(reversed(done)):
        info = r.restore()
        if not info["needed"]:
            continue
        (put_back if info["ok"] else not_back).append(r)
        recorder("host_rollback", "ok" if info["ok"] else "failed", host=r.host.name, from_version=v,
                 to_version=r.plan.current, reason=f"deploy of v{v} failed on {run.host.name}: {why}",
                 details=info)
    # Ctrl-C / SIGTERM: not the version's fault
    interrupted = isinstance(error, DeployInterrupted) or not isinstance(error, Exception)
    if interrupted and not isinstance(error, DeployInterrupted):
        why = "interrupted"
    # production stays where it is when nothing says the version is bad
    kept_because = ("the deploy was interrupted" if interrupted
                    else "the upload failed, not the version" if step == "publish"
                    else f"the connection to {run.host.name} was lost, not the version"
                    if run.connection_lost else None)
    registry_note = _registry_after_failure(result, recorder, run, why, step, kept_because=kept_because)
    result.status = "failed"
    msg = [f"deploy of v{v} of '{model}' failed on host {run.host.name} at step '{step}': {why}"]
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
    result.message = "; ".join(m for m in msg if m)
    if not isinstance(error, Exception):       # KeyboardInterrupt / SystemExit: after putting back
        return error
    if not isinstance(error, UserError):
        logger.error("%s", result.message)
        return error                             # a bug: it keeps its traceback
    failed = DeployInterrupted(result.message) if interrupted else DeployFailed(result.message)
    failed.result = result                       # for --json
    return failed


def _registry_after_failure(result: FleetResult, recorder: LedgerRecorder, run: HostRun, why: str,
                            step: str, *, kept_because: str | None) -> str:
    from registry import promotion, versions

    model, v = result.model, result.version
    reason = f"{run.host.name}: {step}: {why}"
    try:
        if kept_because:        # upload failed, connection lost, or interrupted: nothing says v is bad
            recorder("deploy", "failed", host=run.host.name, from_version=run.plan.current, to_version=v,
                     reason=reason, details={"step": step, "registry_unchanged": True})
            result.registry = {"moved": False, "reason": kept_because}
            return (f"production left at v{v} ({kept_because}); fix the cause and rerun `mlops sync deploy`: it "
                    f"resumes where this one stopped")
        if result.source != "production":
            versions.set_tags(model, v, {"deploy_status": "failed", "deploy.reason": reason})
            recorder("deploy", "failed", host=run.host.name, from_version=run.plan.current, to_version=v,
                     reason=reason, details={"step": step})
            result.registry = {"moved": False, "reason": "--version deploy: production not involved"}
            return f"v{v} tagged deploy_status=failed; production was not involved (--version)"
        to = recorder.previous_production(v)
        if to is None:   # production was set outside promote/rollback: what the hosts served
            to = _common([p["current"] for p in result.plans if p["current"] is not None])
        promo = promotion.revert_failed_deploy(model, v, to, reason, host=run.host.name)
        result.registry = promo.to_dict()
        if not promo.moved:
            return (f"v{v} tagged deploy_status=failed; production was NOT moved (it is v"
                    f"{promo.details.get('production_was')} now, not v{v})")
        if to is None:
            return (f"v{v} tagged deploy_status=failed; production removed: there was no previous production "
                    f"version to go back to; promote a working version")
        return (f"production moved back to v{to} (ledger #{promo.ledger_id}); v{v} tagged "
                f"deploy_status=failed: fix the model or its golden set and register a new version")
    except UserError as exc:
        result.registry = {"moved": False, "error": exc.message}
        return f"could not update the registry ({exc.message}); check `mlops registry status`"


def _common(values: list[int]) -> int | None:
    return collections.Counter(values).most_common(1)[0][0] if values else None
