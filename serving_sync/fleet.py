"""``mlops sync deploy`` for a fleet: prepare every host in parallel, switch a canary, bake, waves.

The rollout is a state machine (docs/architecture.md, "Rollout"):

1. Resolve the version (``production`` or ``--version N``), open every host and take every
   host's lock (base-directory order). Observe every host and plan (``plan.plan_host``); if every host is
   up to date, stop: nothing is downloaded, written or reloaded (``registry.deploys`` records a
   deploy that an earlier, killed run did not).
2. With ``--bake S``: read every changing host's TF Serving metrics (``canary.Baker``); a canary
   whose metrics cannot be read is refused before anything changes. Download what the plans need.
3. PREPARE, every host in parallel (``--parallel N``): publish, validation entry, smoke test. No
   main entry, label or unversioned route changes. A failure on any host puts every host back.
4. SWITCH, wave by wave (``rollout.shape``): the canary first, judged on its live traffic for
   ``--bake`` seconds against itself before the switch and the hosts still on the old version,
   then the other waves in parallel. A failure or a breach anywhere puts every switched host
   back (``HostRun.restore``), moves ``production`` back (``registry.promotion.revert_failed_deploy``,
   unless nothing says the version is to blame: a failed upload, a lost connection, an
   interrupt), tags the version and raises ``DeployFailed`` (exit 3) saying why: all of that is
   ``deploy_failure`` (``fail``, ``or_put_back``).
5. On success: ``deploy_status=deployed``, a ``deploy`` ledger row per host, retention (``--parallel`` hosts at once).
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from mlops_common import faultpoint, log
from mlops_common.errors import ConfigError, NotFoundError, UserError, reworded
from registry import deploys

from . import cancel, parallel, retention, rollout, verified
from . import manifest as mf
from .canary import Baker, CanaryFailed
from .connections import Heartbeat, connected, locked
from .deploy_failure import fail, not_the_versions_fault, or_put_back
from .errors import ProductionMoved, ProductionNotExpected
from .golden import download_bundle, fetch_golden
from .host_run import HostOutcome, HostRun
from .hosts import base_key
from .observe import observe_settled
from .options import DeployOptions
from .plan import Phase, peak_copies, peak_memory, plan_host
from .store import StoreCopies, host_uses, retire, s3_host_note

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
    timings: dict = field(default_factory=dict)   # seconds per phase (each host's steps: hosts[].steps)
    rollout: dict = field(default_factory=dict)   # rollout.Shape: canary, waves
    waves: list[dict] = field(default_factory=list)   # per wave: hosts, switch_seconds, bake, bake_seconds
    bake: list[dict] = field(default_factory=list)    # every bake.Verdict, with its measurements
    stores: list[dict] = field(default_factory=list)  # shared stores uploaded to once (store.StoreCopies)
    restore: dict | None = None          # a restore after a rollback: rolled_back_from, reason
    switched: list[str] = field(default_factory=list)   # hosts whose switch was recorded (deploy ok rows)
    message_extra: str = ""
    blames_version: bool = False         # a failure that says the version is bad (not a host, the network,
                                         # a signal, the ledger): production moved back, deploy_status=failed

    def answered_after(self, since: float) -> float | None:
        """Seconds from ``since`` until the last host answered with the new version's outputs."""
        times = [h.answered_at for h in self.hosts if h.answered_at is not None]
        return round(max(times) - since, 3) if times else None

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source, "status": self.status,
                "message": self.message, "seconds": round(self.seconds, 3), "registry": self.registry,
                "hosts": [h.to_dict() for h in self.hosts], "plans": self.plans, "timings": self.timings,
                "rollout": self.rollout, "waves": self.waves, "bake": self.bake, "stores": self.stores,
                "restore": self.restore}

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


def expected_production(model: str, production: int, expect: int | None) -> None:
    """``--expect-version N``: a CI job deploys the version it promoted or nothing. Production may
    have moved since (a rollback, or an earlier deploy of N that failed and moved it back, so a
    rerun of the job would find every host up to date on the old version and pass)."""
    if expect is not None and production != expect:
        raise ProductionNotExpected(f"production of '{model}' is v{production}, not v{expect} (--expect-version): "
                                    f"it moved after v{expect} was promoted (a rollback, or a failed deploy of "
                                    f"v{expect} moved it back: see `mlops registry history`); nothing was deployed",
                                    now=production)


class _Lazy:
    """The bundle / golden set, fetched once and only if a step needs it."""

    def __init__(self, model: str, version: int, workdir: Path):
        self.model, self.version, self.workdir = model, version, workdir
        self._bundle = None
        self._golden = None

    def bundle(self):
        if self._bundle is None:
            logger.info("downloading v%d of '%s' (SavedModel and golden set) from MLflow", self.version, self.model)
            # a SIGTERM stops the download at once, not at the first prepare step once it ended
            b = download_bundle(self.model, self.version, self.workdir / "bundle", check=cancel.check)
            self._bundle = (b.saved_model_dir, mf.build(b.saved_model_dir, known=b.sha256))
            self._golden = b.golden
        return self._bundle

    def golden(self):
        if self._golden is None:
            self._golden = fetch_golden(self.model, self.version)
        return self._golden


def observe_and_plan(conns, model: str, version: int, opts: DeployOptions, *, rollback_to: int | None = None):
    def observe(c):
        try:
            return observe_settled(c.host, c.transport, c.client, model, label=opts.label, timeout=opts.timeout,
                                   interval=opts.poll_interval)
        except UserError as exc:     # in a fleet, which host: TF Serving's address alone does not say
            if c.host.name in exc.message:
                raise
            raise reworded(exc, f"{c.host.name}: {exc.message}") from None

    observed = parallel.map_ordered(observe, conns, workers=opts.parallel, name="observe")
    plans = [plan_host(o.obs, version, keep_previous=opts.keep_previous, keep=opts.keep, label=opts.label,
                       fast=opts.fast, rollback_to=rollback_to) for o in observed]
    return observed, plans


@dataclass
class FleetPlan:
    model: str
    version: int
    source: str
    plans: list = field(default_factory=list)        # plan.HostPlan per reachable host
    errors: dict = field(default_factory=dict)       # host name -> one-line error
    rollout: dict = field(default_factory=dict)      # rollout.Shape of the hosts that change
    bake: dict = field(default_factory=dict)         # seconds, each_wave, limits
    peak: dict = field(default_factory=dict)         # host -> {"copies": [v...], "bytes": int | None}
    restore: dict | None = None                      # a restore after a rollback (see decide_rollout)

    @property
    def up_to_date(self) -> bool:
        return not self.errors and all(p.up_to_date for p in self.plans)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source,
                "up_to_date": self.up_to_date, "hosts": [p.to_dict() for p in self.plans],
                "errors": self.errors, "rollout": self.rollout, "bake": self.bake, "peak_memory": self.peak,
                "restore": self.restore}


def plan_fleet(model: str, hosts, *, version: int | None = None,
               opts: DeployOptions = DeployOptions(), annotate: bool = True) -> FleetPlan:
    """What ``deploy`` would do on each host, changing nothing (no lock, no write).
    ``annotate`` False (each ``sync watch`` pass): whether each host is up to date and its steps,
    without what only ``sync plan`` shows (peak memory from the artifact listing and the hosts'
    manifests, retention's rollback target, the rollout) — MLflow requests a pass need not make."""
    v, source = resolve_version(model, version)
    fp = FleetPlan(model, v, source)
    new_size = deploys.saved_model_size(model, v) if annotate else None
    rollback_to, unknown = None, None
    if annotate:
        try:     # what the deploy's retention keeps on every host (read there after the switch)
            rollback_to = deploys.DeployLedger(model).rollback_target()
        except UserError as exc:
            unknown = exc.message
    def one(host):
        """This host's plan and peak memory; a host that cannot be observed raises UserError."""
        with connected([host]) as conns:
            (o,), (p,) = observe_and_plan(conns, model, v, opts, rollback_to=rollback_to)
            if not annotate:
                return p, None
            copies = peak_copies(o.obs, v, fast=opts.fast)
            sizes = {x: _stored_size(conns[0].transport, model, x) for x in set(copies)}
        if sizes.get(v) is None:
            sizes[v] = new_size
        extra = [s3_host_note(host)] if host.target.scheme == "s3" else []
        if host.store is not None and p.publishes:   # a switch or "up to date" pulls nothing
            extra.append(f"pulls v{v} from the shared store {host.store.url} (uploaded once per deploy)")
        if unknown is not None and not p.up_to_date:     # the deploy removes nothing then, either
            p = dataclasses.replace(p, retention=())
            extra.append(f"retention removes nothing: where production would roll back to is unknown "
                         f"({unknown})")
        p = dataclasses.replace(p, notes=p.notes + tuple(extra))
        return p, {"copies": list(copies), "bytes": peak_memory(copies, sizes),
                   "sizes": {str(k): s for k, s in sorted(sizes.items())}}

    hosts = list(hosts)
    # every host at once (at most --parallel): a partition's silent hosts cost one wait, not one each
    for host, (result, exc) in zip(hosts, parallel.settle(one, hosts, workers=opts.parallel, name="plan")):
        if isinstance(exc, UserError):
            fp.errors[host.name] = exc.message
        elif exc is not None:
            raise exc
        else:
            p, peak = result
            fp.plans.append(p)
            if peak is not None:
                fp.peak[p.host] = peak
    if not annotate:
        return fp
    unjudged = unjudged_hosts(fp.plans, opts, lambda: deploys.DeployLedger(model).rolled_out(v))
    d = rollout_for(model, v, [p.host for p in fp.plans if not p.up_to_date], opts, unjudged)
    fp.restore, fp.rollout = d.restore, d.shape.to_dict()
    fp.bake = {"seconds": d.bake, "requested": d.opts.bake, "each_wave": d.opts.bake_each_wave,
               "limits": dataclasses.asdict(d.opts.limits), "parallel": d.opts.parallel, "fast": d.opts.fast}
    return fp


@dataclass(frozen=True)
class RolloutDecision:
    """How the changing hosts roll out — one decision for ``sync plan`` and ``sync deploy``, so the
    plan cannot say other than the deploy does."""

    opts: DeployOptions          # the options in force (a restore unstages them)
    restore: dict | None         # the rollback this deploy restores from (None: a deploy like any other)
    shape: rollout.Shape

    @property
    def bake(self) -> float:
        """Seconds the canary is judged: 0 when none was asked or there is no canary to judge."""
        return self.opts.bake if self.shape.bakeable else 0.0


def decide_rollout(changing: list[str], opts: DeployOptions, restoring=None,
                   unjudged: tuple[str, ...] = ()) -> RolloutDecision:
    """The rollout of ``changing`` hosts (pure). ``restoring``: the ledger row of a rollback to this
    version, which held production before (``deploys.restoring``).

    Such a deploy restores it: no canary, one wave, no bake, whatever MLOPS_BAKE_SECONDS says — the
    fleet gets off the version rolled back from as fast as one host's switch, and the prepare phase
    still checks the restored version on every host before any switches. ``--canary``, ``--wave``
    or ``--bake`` on the command line (``opts.staged_restore``) keep the staged rollout."""
    restore = None
    if _could_restore(changing, opts) and restoring is not None:
        opts = dataclasses.replace(opts, canary=0, wave=None, bake=0.0, bake_each_wave=False)
        restore = {"rolled_back_from": restoring.from_version, "reason": restoring.reason}
        unjudged = ()        # no verdict is asked of a restore (as with --canary 0 or --bake 0)
    return RolloutDecision(opts, restore, rollout.shape(changing, canary=opts.canary, wave=opts.wave,
                                                        unjudged=unjudged))


def _could_restore(changing: list[str], opts: DeployOptions) -> bool:
    """Whether a restore would unstage this rollout: two or more hosts change, and no --canary,
    --wave or --bake asks for the staged one."""
    return len(changing) >= 2 and not opts.staged_restore


def rollout_for(model: str, version: int, changing: list[str], opts: DeployOptions,
                unjudged: tuple[str, ...] = ()) -> RolloutDecision:
    """``decide_rollout``, reading the ledger only when a restore could change the answer."""
    return decide_rollout(changing, opts,
                          deploys.restoring(model, version) if _could_restore(changing, opts) else None,
                          unjudged)


def unjudged_hosts(plans, opts: DeployOptions, rolled_out) -> tuple[str, ...]:
    """The hosts already on the version while others still change, when no rollout of it finished
    (``rolled_out()``, read only then): a deploy stopped between its canary's switch and its
    verdict left them there, so the next canary is the version's first verdict, even when it is
    the last host to switch (a restarted watcher, a rerun). Empty without a bake or a canary."""
    on = tuple(p.host for p in plans if p.up_to_date)
    if not on or len(on) == len(plans) or opts.bake <= 0 or opts.canary == 0:
        return ()
    return () if rolled_out() else on


def unjudged_everywhere(model: str, v: int, plans, opts: DeployOptions) -> bool:
    """Every host serves ``v``, which a deploy of it began and nothing judged
    (``DeployLedger.unjudged``), while a verdict is asked (a bake, a canary not 0, two hosts or
    more): a resumed rollout's canary is its last host, so a deploy stopped during that bake
    leaves the whole fleet on ``v`` with no row. Recording it ``deployed`` then
    (``record_converged``) would roll it out with no verdict. A version the registry says is
    deployed is not read further; nor is a restore asked, which has no bake (``decide_rollout``:
    a `sync rollback` killed after its switch is recorded as before)."""
    if len(plans) < 2 or opts.bake <= 0 or opts.canary == 0 or deploys.status(model, v) == deploys.DEPLOYED:
        return False
    if not deploys.DeployLedger(model).unjudged(v):
        return False
    return not _could_restore([p.host for p in plans], opts) or deploys.restoring(model, v) is None


def _not_to_record(model: str, v: int, source: str, plans, opts: DeployOptions) -> bool:
    """``record_converged``'s ``unless``, asked only when it would record: ``production`` read
    again first (another fleet's failed deploy of ``v`` may have tagged it ``failed`` and moved
    production back while these hosts were observed; recording them would write ``deployed``
    over that verdict), then ``unjudged_everywhere``. Raises ``ProductionMoved``: nothing was
    changed or recorded."""
    if source == "production":
        _still_production(model, v, tail="nothing was changed or recorded: rerun `mlops sync deploy`, it "
                                         "installs what production names now")
    return unjudged_everywhere(model, v, plans, opts)


def _stored_size(transport, model: str, version: int) -> int | None:
    """The SavedModel size the host's stored manifest gives (None: not published by us)."""
    from .publish import read_stored_manifest

    try:
        m = read_stored_manifest(transport, model, version)
    except UserError:
        return None
    return m.total_size if m is not None else None


def deploy(model: str, hosts, *, version: int | None = None, opts: DeployOptions = DeployOptions(),
           break_lock: str | None = None, lock_wait: float = 0.0, reason: str | None = None,
           provenance=None, expect: int | None = None, give_up_waiting=None) -> FleetResult:
    """Make every host serve ``version`` (default: production); see the module docstring.
    ``provenance`` (``registry.provenance.Provenance``, default: this job) names who and where in
    the ledger rows and tags the deploy writes. ``expect``: production must be that version, read
    before and again under the hosts' locks (``expected_production``). ``give_up_waiting`` (a
    callable; ``sync watch`` asked to stop): a wait for another deploy's lock ends at once."""
    seen: dict = {}
    try:
        return _deploy(model, hosts, version=version, opts=opts, break_lock=break_lock, lock_wait=lock_wait,
                       reason=reason, provenance=provenance, expect=expect, give_up_waiting=give_up_waiting,
                       seen=seen)
    except (cancel.DeployInterrupted, KeyboardInterrupt) as exc:
        # an interrupt outside the rollout phases (resolving, connecting, waiting for a lock,
        # observing) changed no host: it still gets its result, so `--json` prints one document
        if getattr(exc, "result", None) is None:
            exc.result = _interrupted_before_rollout(model, version, seen.get("result"), exc,
                                                     rollout_began=seen.get("rollout", False))
        raise


def _interrupted_before_rollout(model: str, version: int | None, result: FleetResult | None,
                                exc: BaseException, *, rollout_began: bool = False) -> FleetResult:
    """The result of a deploy interrupted before its hosts were planned (nothing changed); a
    forced interrupt inside the phases keeps the result ``deploy_failure.fail`` wrote."""
    if result is not None and result.message:
        return result
    if result is None:
        result = FleetResult(model, version, "--version" if version is not None else "production", "failed")
    why = exc.message if isinstance(exc, UserError) else "interrupted"
    what = f"deploy of {f'v{result.version}' if result.version is not None else 'production'} of '{model}'"
    result.status = "failed"
    result.message = (f"{what} stopped before the rollout: {why}; no host was changed" if not rollout_began
                      else f"{what} stopped: {why}; check the hosts with `mlops sync status`")
    return result


def _deploy(model: str, hosts, *, version: int | None, opts: DeployOptions, break_lock: str | None,
            lock_wait: float, reason: str | None, provenance, expect: int | None, give_up_waiting,
            seen: dict) -> FleetResult:
    """``deploy``; ``seen["result"]``: its result as soon as there is one."""
    start = time.monotonic()
    v, source = resolve_version(model, version)
    if source == "production":
        expected_production(model, v, expect)
    elif expect is not None:
        raise ConfigError("--expect-version checks what production names; with --version N production is not "
                          "deployed: pass one of them")
    result = seen["result"] = FleetResult(model, v, source, "failed")
    t = result.lap("resolve_version", start)
    cancel.check()          # a signal while resolving: before any connection
    with connected(hosts) as conns, locked(conns, break_lock=break_lock, wait=lock_wait, model=model,
                                           give_up=give_up_waiting):
        t = result.lap("connect_and_lock", t)
        cancel.check()      # ... while connecting
        if source == "production":    # a rollback may have moved it while this deploy connected or waited
            now, _ = resolve_version(model, None)
            if now != v:
                expected_production(model, now, expect)
                logger.info("production moved from v%d to v%d while this deploy took the hosts' locks: "
                            "deploying v%d", v, now, now)
                v = result.version = now
        observed, plans = observe_and_plan(conns, model, v, opts)
        t = result.lap("observe_and_plan", t)
        cancel.check()      # ... while observing: not "up to date", nor a download
        for c in conns:
            if (note := s3_host_note(c.host)) is not None:
                logger.info("note: %s", note)
        result.plans = [p.to_dict() for p in plans]
        if all(p.up_to_date for p in plans):
            result.status = "up_to_date"
            result.hosts = [_unchanged(p) for p in plans]
            result.message = f"up to date: {_hosts(conns)} serve{'s' if len(conns) == 1 else ''} v{v} of '{model}'"
            recorded = deploys.record_converged(model, v, [(p.host, p.current) for p in plans], reason,
                                                unless=lambda: _not_to_record(model, v, source, plans, opts))
            if recorded is None:
                result.message += (f"; not recorded as deployed: no canary judged v{v} (a deploy stopped before its "
                                   f"canary's verdict switched the last host): `mlops sync deploy --bake 0` records "
                                   f"it as it is, `mlops sync rollback` moves production back")
                logger.warning("%s", result.message)
            elif recorded:
                logger.info("recorded v%d of '%s' as deployed: every host serves it, verified (an earlier "
                            "deploy stopped before recording it)", v, model)
            if source == "production":
                _tag_rolled_back(model, v, late=True)
            result.seconds = time.monotonic() - start
            return result
        recorder = deploys.DeployLedger(model, provenance=provenance)
        workdir = Path(tempfile.mkdtemp(prefix="mlops-deploy-"))
        try:
            lazy = _Lazy(model, v, workdir)
            copies = StoreCopies(model, v, uses=_store_uses(conns, plans, v),
                                 held=frozenset(base_key(c.host.target) for c in conns if c.host.target.scheme == "s3"))
            runs: list[HostRun] = []
            for conn, obsd, plan in zip(conns, observed, plans):
                if plan.up_to_date:
                    result.hosts.append(_unchanged(plan))
                    continue
                run = HostRun(conn, obsd, plan, opts, golden=lazy.golden, bundle=lazy.bundle,
                              record=recorder, heartbeat=Heartbeat([conn]), pull=copies.pull)
                result.hosts.append(run.outcome)
                runs.append(run)
            d = rollout_for(model, v, [r.host.name for r in runs], opts,
                            unjudged_hosts(plans, opts, lambda: recorder.rolled_out(v)))
            opts, result.restore, shape = d.opts, d.restore, d.shape
            if result.restore is not None:
                logger.info("v%d restores production (rolled back from v%s): every host switches at once, no "
                            "bake (--canary, --wave or --bake stage it)", v, result.restore["rolled_back_from"])
            result.rollout = shape.to_dict()
            if shape.unjudged and d.bake > 0:
                logger.info("v%d already serves on %s from a rollout nothing judged (a deploy stopped before its "
                            "canary's verdict): canary %s is judged before the rollout is recorded", v,
                            ", ".join(shape.unjudged), ", ".join(shape.canary))
            baker = Baker(model, runs, shape.judged(opts.bake_each_wave), opts) if d.bake > 0 else None
            if opts.bake > 0 and not shape.bakeable and runs:
                logger.info("no canary (%s): --bake %gs not used", "one host changes" if len(runs) == 1
                            else "--canary 0", opts.bake)
            if baker is not None:    # before anything changes: a judged host without metrics is refused here
                _before_prepare(result, recorder, runs, "bake", baker.start)
            # before touching any host: a registry problem changes nothing; a signal stops the download
            _before_prepare(result, recorder, runs, "download",
                            lazy.bundle if any(p.publishes for p in plans) else lazy.golden)
            t = result.lap("fetch_from_registry", t)
            stores = {r.host.store.url: r.host.store for r in runs if r.host.store is not None and r.plan.publishes}
            if stores:
                for store in stores.values():      # once per store, verified, before any host
                    _before_prepare(result, recorder, runs, "upload_to_store", copies.upload, store, *lazy.bundle())
                result.stores = copies.results()
                t = result.lap("upload_to_store", t)
            _log_shape(shape, opts, len(runs))
            seen["rollout"] = True      # from here a host may change
            _phase(result, recorder, runs, runs, Phase.PREPARE, opts.parallel)
            t = result.lap("prepare_hosts", t)
            by_name = {r.host.name: r for r in runs}
            for i, names in enumerate(shape.waves):
                wave = [by_name[n] for n in names]
                label = "canary" if i == 0 and shape.canary else f"wave {i + (0 if shape.canary else 1)}"
                logger.info("switch %s: %s", label, ", ".join(names))
                w0 = time.monotonic()
                if baker is not None:        # waits for the baseline window: a signal may end it
                    or_put_back(result, recorder, wave[0], runs, "bake", baker.before_switch, wave)
                if result.source == "production":   # a rollback during the prepare or a bake wins
                    or_put_back(result, recorder, wave[0], runs, "production", _still_production, model, v)
                _phase(result, recorder, runs, wave, Phase.SWITCH, opts.parallel)
                last = i == len(shape.waves) - 1
                entry = {"wave": label, "hosts": list(names)}
                if baker is not None and last and i == 0 and shape.unjudged:
                    # the only wave of a rollout that resumes one nothing judged: its verdict comes
                    # before any row says the fleet served the version
                    entry["switch_seconds"] = round(time.monotonic() - w0, 3)
                    _bake(result, recorder, baker, wave, [], runs, entry)
                or_put_back(result, recorder, wave[0], runs, "record", recorder.record_all,
                            [_deployed_row(recorder, run, v, reason, final=last) for run in wave])
                result.switched.extend(names)
                if last:     # test hook, inert unless set: the rollout recorded, its tags not yet
                    faultpoint.reached("deploy:after_final_rows", stop=cancel.requested)
                entry.setdefault("switch_seconds", round(time.monotonic() - w0, 3))
                if baker is not None and not last and (i == 0 or opts.bake_each_wave):
                    _bake(result, recorder, baker, wave, [by_name[n] for w in shape.waves[i + 1:] for n in w],
                          runs, entry)
                result.waves.append(entry)
            overtaken = None
            if runs and result.source == "production" and (moved := _moved_meanwhile(model, v)) is not None:
                if not _stays(recorder, v, moved, runs):
                    raise fail(result, recorder, runs[0], runs, moved, step="production")
                overtaken = moved
            t = result.lap("switch_hosts", t)
            _succeeded(result, recorder, runs, opts, copies)
            result.lap("record_and_retention", t)
            if overtaken is not None:
                result.seconds = time.monotonic() - start
                moved = ProductionMoved(model, v, overtaken.now, tail=(
                    f"the hosts stay on v{v}, which passed every check here and is recorded deployed; "
                    f"run `mlops sync deploy` to install v{overtaken.now}"))
                moved.deployed = result      # `sync watch`: a deployed pass, and the next one at once
                raise moved
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - start
    return result


def _before_prepare(result: FleetResult, recorder, runs: list[HostRun], step: str, fn, *args):
    """``fn(*args)`` once the hosts are planned, before the prepare phase: an interrupt there
    ends the deploy as one in the phases does (a ``deploy`` row, the result for ``--json``), with
    no host changed; other errors go their own way."""
    try:
        return fn(*args)
    except (cancel.DeployInterrupted, KeyboardInterrupt) as exc:
        raise fail(result, recorder, runs[0], runs, exc, step=step) from None


def _still_production(model: str, v: int, *, tail: str = "") -> None:
    """Raise ``ProductionMoved`` unless ``v`` still holds production (read before each wave and
    after the last: a rollback — or another fleet's failed deploy moving it back — while this
    deploy prepared, baked or switched must not be overtaken by its next wave, nor find its
    version tagged ``deployed`` over the ``failed`` the other deploy wrote)."""
    from registry import versions

    now = versions.production_version(model)
    if now != v:
        raise ProductionMoved(model, v, now, tail=tail)


def _bake(result: FleetResult, recorder, baker: Baker, wave: list[HostRun], later: list[HostRun],
          runs: list[HostRun], entry: dict) -> None:
    """Judge the hosts of ``wave`` on their live traffic (``later``: hosts still on the old version,
    the baseline) and record the verdicts as ``canary`` rows; a breach puts every host back
    (raises). ``entry``: the wave's ``--json`` record, given the bake's figures."""
    b0 = time.monotonic()
    try:
        verdicts = baker.judge(wave, later)
    except BaseException as exc:
        raise fail(result, recorder, wave[0], runs, exc, step="bake") from None
    entry["bake"] = [vd.to_dict() for vd in verdicts]
    entry["bake_seconds"] = round(time.monotonic() - b0, 3)
    result.bake.extend(entry["bake"])
    for vd in verdicts:
        logger.info("%s", vd.line)
    bad = [vd for vd in verdicts if not vd.passed]
    if bad:
        result.waves.append(entry)
    by_name = {r.host.name: r for r in runs}
    try:
        recorder.record_all([recorder.entry("canary", "passed" if vd.passed else "failed", host=vd.host,
                                            from_version=by_name[vd.host].plan.current, to_version=result.version,
                                            reason=vd.line, details=vd.to_dict())
                             for vd in verdicts])
    except BaseException as exc:
        if not bad:
            raise fail(result, recorder, wave[0], runs, exc, step="record") from None
        logger.warning("could not record the canary verdicts in the ledger (%s)", getattr(exc, "message", exc))
    if bad:            # a breach stays a breach when its rows could not be written
        raise fail(result, recorder, by_name[bad[0].host], runs, CanaryFailed(bad[0]), step="bake")


def _moved_meanwhile(model: str, v: int) -> ProductionMoved | None:
    """After the last wave: did ``production`` move away from ``v`` while it switched (a rollback,
    another fleet's failed deploy moving it back)? Then the fleet is put back like before a wave,
    and ``v`` is not tagged ``deployed`` over the ``failed`` the other deploy wrote — unless a
    newer version overtook ``v`` (``_stays``: the hosts stay on it, and the deploy says so). A registry
    that cannot be read now is not a reason to undo a finished rollout: tagging it says so."""
    try:
        _still_production(model, v)
    except ProductionMoved as moved:
        return moved
    except UserError as exc:
        logger.warning("could not read production after the last wave (%s)", exc.message)
    return None


def _stays(recorder, v: int, moved: ProductionMoved, runs: list[HostRun]) -> bool:
    """``rollout.stays_when_overtaken`` with what it needs from the registry; a registry that
    cannot say whether ``v`` failed elsewhere puts the fleet back (as before the rule)."""
    try:
        failed = recorder.failed_elsewhere(v)
    except UserError as exc:
        logger.warning("could not read whether v%d failed elsewhere (%s): putting the hosts back", v, exc.message)
        return False
    return rollout.stays_when_overtaken(v, moved.now, {r.plan.current for r in runs}, failed)


def _log_shape(shape: rollout.Shape, opts: DeployOptions, n: int) -> None:
    logger.info("rollout: prepare %d host%s (%d at a time), then %s", n, "" if n == 1 else "s",
                min(opts.parallel, n) if n else 0,
                "; ".join((f"canary {', '.join(w)}" + (f", bake {opts.bake:g}s" if opts.bake and shape.bakeable
                                                        else ", no bake"))
                          if i == 0 and shape.canary else f"wave {', '.join(w)}" for i, w in enumerate(shape.waves)))


def _deployed_row(recorder, run: HostRun, v: int, reason: str | None, *, final: bool):
    """A host's ``deploy ok`` row, written once its wave switched; ``final``: the last wave's (a
    row of an earlier wave alone does not make the version one the fleet served:
    ``promotion_rules.deploy_verdict``)."""
    plan = run.plan
    return recorder.entry("deploy", "ok", host=run.host.name, from_version=plan.current, to_version=v, reason=reason,
                          details={"steps": [str(s.kind) for s in plan.steps], "previous_kept": plan.previous_kept,
                                   "publish": run.outcome.publish, "switch_seconds": run.outcome.switch_seconds,
                                   "final": final})


def _phase(result: FleetResult, recorder, every: list[HostRun], runs: list[HostRun], phase: Phase,
           parallel: int) -> None:
    """Run ``phase`` on ``runs``, at most ``parallel`` at once. If any host fails, every host of
    ``every`` is put back (``deploy_failure.fail``) and what to raise is raised: the first failure
    in hosts order."""
    if not runs:
        return
    failures: dict[str, BaseException] = {}
    # Once a host failed, every host is going to be put back: a host whose turn has not come
    # (more hosts than --parallel) is not started — it would upload and smoke-test, or switch to
    # and serve, a version the deploy already stops. Set by the failing worker itself, before the
    # pool hands it the next host. Hosts already running finish their phase (a smoke test failing
    # on one of them is still the failure reported).
    # The first `workers` hosts start at once whatever a thread's start-up latency: one of them is
    # never "waiting for its turn", even when another fails before its thread runs.
    stopped = threading.Event()
    workers = min(parallel, len(runs))

    def execute(run: HostRun, queued: bool):
        if queued and stopped.is_set():
            return None
        try:
            return run.execute(phase)
        except BaseException:
            stopped.set()
            raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{phase}") as pool:
        futures = {pool.submit(execute, run, i >= workers): run for i, run in enumerate(runs)}
        try:
            for fut in as_completed(futures):
                exc = fut.exception()
                if exc is not None:
                    failures[futures[fut].host.name] = exc
        except BaseException as exc:        # a forced interrupt in this thread: stop the others too
            cancel.request("interrupted")
            for fut, run in futures.items():
                if fut.done() and fut.exception() is not None:
                    failures.setdefault(run.host.name, fut.exception())
            failures["\0main"] = exc
            pool.shutdown(wait=True)
    if not failures:
        return
    order = [r.host.name for r in runs]
    by_name = {r.host.name: r for r in runs}
    failed = [n for n in order if n in failures]
    # the first failure that says the version is bad, else the first in hosts order: a lost
    # connection on one host must not hide a failed smoke test on another (the version is blamed)
    first = next((n for n in failed if not_the_versions_fault(by_name[n], failures[n]) is None),
                 failed[0] if failed else None)
    exc = failures.get("\0main") if first is None else failures[first]
    run = next((r for r in runs if r.host.name == first), runs[0])
    others = [n for n in order if n in failures and n != first]
    if others:
        result.message_extra = f"also failed: {', '.join(others)}"
    raise fail(result, recorder, run, every, exc) from None


def _unchanged(plan) -> HostOutcome:
    return HostOutcome(plan.host, "up_to_date", plan.current, plan.desired, previous_kept=plan.previous_kept,
                       notes=list(plan.notes))


def _hosts(conns) -> str:
    names = [c.host.name for c in conns]
    return f"host {names[0]}" if len(names) == 1 else f"hosts {', '.join(names)}"


def _tag_rolled_back(model: str, version: int, *, late: bool = False) -> None:
    """A deploy of the version a person's rollback made production (the newest move: a restore,
    or ``--to`` a version that never held it) tags the version rolled back from ``rolled_back``
    once the version rolled back to serves — whichever way the rollback came
    (`sync rollback`; `registry rollback` then `sync deploy`, CircleCI's rollback workflow; `sync
    watch`), where only `sync rollback` did before and the other ways left it ``deployed``. Not
    when that version is production again (promoted again meanwhile: it serves), nor after a
    failed deploy's automatic revert (that version says ``failed``).

    ``late`` (every host already served ``version``): only if that version still says
    ``deployed`` — the rollback's deploy was killed after its switch, before it wrote the tag."""
    from registry import promotion, versions

    try:
        row = deploys.rolled_back_from(model, version)     # a restore or not (--to a version never in production)
        frm, why = (row.from_version, row.reason) if row is not None else (None, None)
        if frm is None or frm == version or (late and deploys.status(model, frm) != deploys.DEPLOYED) \
                or versions.production_version(model) == frm:
            return
        deploys.tag(model, frm, deploys.ROLLED_BACK, why or "rollback")
        # who rolled back, on the version rolled back to: `sync rollback` writes it after this
        # deploy; one killed before that (the rerun is refused, a deploy finishes it) never did
        promotion.show_rolled_out(model, row)
        if late:
            logger.info("tagged v%d of '%s' rolled_back: the rollback to v%d is on every host (its deploy "
                        "stopped before saying so)", frm, model, version)
    except UserError as exc:        # the hosts serve the restored version: only a tag is missing
        logger.warning("could not tag the version rolled back from rolled_back (%s)", exc.message)


def _succeeded(result: FleetResult, recorder, runs: list[HostRun], opts: DeployOptions,
               copies: StoreCopies | None = None) -> None:
    canary = [b for b in result.bake if b["host"] in result.rollout.get("canary", ())]
    try:
        deploys.tag(result.model, result.version, deploys.DEPLOYED,
                    canary=",".join(b["outcome"] for b in canary) if canary else None)
    except UserError as exc:     # the hosts serve it; only the registry could not be told
        raise UserError(f"v{result.version} of '{result.model}' now serves on "
                        f"{', '.join(r.host.name for r in runs)}, but the registry could not record "
                        f"deploy_status=deployed ({exc.message}); rerun `mlops sync deploy` once MLflow "
                        f"answers: it records it") from None
    # Cleanup on --parallel hosts at once: on an SSH host removing a version is one command through
    # the deploy user's shell, and a fleet waited for those one after the other. Where the
    # registry would roll back to now stays (a rollback is then a switch, not a new upload) —
    # for a --version deploy too, whose own predecessor is not production's.
    try:
        rollback_to = recorder.rollback_target()
    except UserError as exc:       # not knowing what to keep: remove nothing this time
        logger.warning("could not read where production would roll back to (%s); nothing removed from "
                       "the hosts this time: the next deploy cleans up", exc.message)
        for run in runs:
            run.outcome.retention = {"skipped": exc.message}
        for entry in result.stores:
            entry["retention"] = {"skipped": exc.message}
    else:
        for run, info in zip(runs, parallel.map_ordered(lambda r: _retention(r, opts, rollback_to), runs,
                                                         workers=opts.parallel, name="retention")):
            run.outcome.retention = info
        _store_retention(result, runs, opts, rollback_to, copies)
    # read again, not the rollout's answer: this deploy's own ok rows can make it a restore now
    # (a rollback --to a version whose earlier deploy failed). Last: until it is written, a rerun
    # of the `sync rollback` behind it finishes that rollback instead of rolling back further
    # (``promotion_rules.rollback_unfinished``), so a deploy stopped during retention counts too.
    _tag_rolled_back(result.model, result.version)
    result.status = "deployed"
    parts = []
    for run in runs:
        o = run.outcome
        was = f"from v{o.from_version}" if o.from_version is not None else "first deploy"
        kept = f", v{o.previous_kept} kept warm" if o.previous_kept is not None else ""
        parts.append(f"{o.host} ({was}{kept})")
    result.message = f"deployed v{result.version} of '{result.model}' to {', '.join(parts)}"


def _store_uses(conns, plans, v: int) -> dict:
    """Per store, what each of this deploy's hosts (changed or not) keeps, and ``v`` it pulls:
    recorded in the store before the upload, so another fleet's clean-up keeps them."""
    out: dict[str, list] = {}
    for c, p in zip(conns, plans):
        if c.host.store is not None:
            out.setdefault(c.host.store.url, []).append((c.host, _kept_by(p) | {v}))
    return {url: host_uses(pairs) for url, pairs in out.items()}


def _kept_by(plan) -> set[int]:
    """What a host keeps after its plan: the versions it loads, its previous, other entries' ones."""
    return ({*plan.final.versions, *plan.held_by_others}
            | {x for x in (plan.current, plan.previous_kept) if x is not None})


def _store_retention(result: FleetResult, runs: list[HostRun], opts: DeployOptions, rollback_to: int | None,
                     copies: StoreCopies | None = None) -> None:
    """The shared stores this deploy uploaded to keep what the hosts keep (``store.retire``): this
    deploy's hosts' records are rewritten (the switch done, the version pulled), and every fleet's
    records in the store are kept."""
    stores = {r.host.store.url: r.host.store for r in runs if r.host.store is not None}
    after: dict[str, list] = {}
    for url, host_versions in ((copies.uses if copies is not None else {}) or {}).items():
        after[url] = dict(host_versions)
    for r in runs:
        if r.host.store is not None:
            after.setdefault(r.host.store.url, {}).update(
                host_uses([(r.host, r.plan.final.versions + r.plan.held_by_others
                            + ((p,) if (p := _host_previous(r.plan)) is not None else ()))]))
    kept = ({v for r in runs for v in r.plan.final.versions}
            | {p for r in runs if (p := _host_previous(r.plan)) is not None})
    if result.stores and result.source != "production":
        # a store may be shared by fleets (staging and production): a --version deploy removed the
        # production version another fleet had just uploaded and was pulling (found by a sweep)
        from registry import versions

        try:
            if (prod := versions.production_version(result.model)) is not None:
                kept.add(prod)
        except UserError as exc:
            logger.warning("could not read production (%s); nothing removed from the stores this time",
                           exc.message)
            for entry in result.stores:
                entry["retention"] = {"skipped": exc.message}
            return
    kept = tuple(sorted(kept))
    for entry in result.stores:
        try:
            entry["retention"] = retire(stores[entry["store"]], result.model, serving=result.version,
                                        previous=rollback_to, keep=opts.keep, protected=kept,
                                        uses=after.get(entry["store"], {}),
                                        held=copies.held if copies is not None else frozenset())
        except UserError as exc:   # the deploy succeeded; the next one cleans up
            logger.warning("%s: retention failed (%s); it will be retried by the next deploy", entry["store"],
                           exc.message)
            entry["retention"] = {"error": exc.message}


def _host_previous(plan) -> int | None:
    """What a host keeps as its previous version: the one kept warm, else the one it served."""
    return plan.previous_kept if plan.previous_kept is not None else plan.current


def _retention(run: HostRun, opts: DeployOptions, rollback_to: int | None = None) -> dict:
    plan = run.plan
    try:
        run.heartbeat()               # raises at once if the lock's thread found it taken over
        # a dead deploy's half-written models.config can lie in the base only when its lock was
        # taken over: list the base then, not on every deploy (over SSH a listing is 4 round trips)
        lock = run.conn.lock
        took_over = lock is not None and lock.took_over
        rp = retention.plan(run.transport, plan.model, serving=plan.desired, previous=_host_previous(plan),
                            keep=opts.keep,
                            protected=tuple(plan.final.versions) + tuple(plan.held_by_others)
                            + (() if rollback_to is None else (rollback_to,)), config_temps=took_over)
        if rp.remove_versions or rp.remove_uploads or rp.remove_config_temps:
            run.heartbeat(force=True)     # deleting: only while the host is still ours (checked now)
        retention.apply(run.transport, rp)
        if rp.remove_versions:
            verified.forget(run.transport, plan.model, rp.remove_versions)
        return rp.to_dict()
    except (UserError, OSError) as exc:   # the deploy succeeded; cleaning up can wait for the next one
        message = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        logger.warning("%s: retention failed (%s); it will be retried by the next deploy", run.host.name, message)
        return {"error": message}
