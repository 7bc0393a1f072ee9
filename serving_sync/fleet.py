"""``mlops sync deploy`` for a fleet: prepare every host in parallel, switch a canary, bake, waves.

The rollout is a state machine (docs/architecture.md, "Rollout"):

1. Resolve the version (``production`` or ``--version N``: ``resolve``), open every host and
   take every host's lock (base-directory order). Observe every host and plan
   (``fleet_plan.observe_and_plan``, ``plan.plan_host``); if every host is up to date, stop:
   nothing is downloaded, written or reloaded (``registry.deploys`` records a deploy that an
   earlier, killed run did not).
2. With ``--bake S``: read every changing host's TF Serving metrics (``canary.Baker``); a canary
   whose metrics cannot be read is refused before anything changes. Download what the plans need
   (``fleet_fetch``: a host's kept copy verified against the registration needs none).
3. PREPARE, every host in parallel (``--parallel N``): publish, validation entry, smoke test. No
   main entry, label or unversioned route changes. A failure on any host puts every host back.
4. SWITCH, wave by wave (``rollout_decision.rollout_for``, ``rollout.shape``): the canary first,
   judged on its live traffic for ``--bake`` seconds against itself before the switch and the
   hosts still on the old version, then the other waves in parallel. A failure or a breach
   anywhere puts every switched host back (``HostRun.restore``), moves ``production`` back
   (``registry.deploy_revert.revert_failed_deploy``, unless nothing says the version is to blame: a
   failed upload, a lost connection, an interrupt), tags the version and raises ``DeployFailed``
   (exit 3) saying why: all of that is ``deploy_failure`` (``fail``, ``or_put_back``).
5. On success: ``deploy_status=deployed``, a ``deploy`` ledger row per host, retention (``--parallel`` hosts at once):
   ``deploy_retention``.

This module runs the states; what it asks of others lives in their modules (``sync plan`` shows
the same OBSERVE and rollout decision through ``fleet_plan.plan_fleet``, changing nothing).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import tempfile
import threading
import time
from pathlib import Path

from mlops_common import faultpoint, log
from mlops_common.errors import ConfigError, NotFoundError, UserError
from mlops_common.paths import full_disk_is_one_line
from registry import deploys, description

from . import cancel, deploy_retention, parallel, rollout
from .canary import Baker, CanaryFailed
from .connections import Heartbeat, connected, in_use, locked
from .deploy_failure import fail, not_the_versions_fault, or_put_back
from .errors import ProductionMoved
from .fleet_fetch import Lazy, fetch
from .fleet_plan import observe_and_plan, rollback_kept, with_retention
from .fleet_result import FleetResult
from .host_run import HostOutcome, HostRun
from .hosts import base_key
from .options import DeployOptions
from .plan import Phase
from .resolve import expected_production, resolve_version
from .rollout_decision import rollout_for, unjudged_everywhere, unjudged_hosts
from .store import StoreCopies, check_pulls, check_reachable, check_settings, s3_host_note

logger = log.get("sync.fleet")


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


def deploy(model: str, hosts, *, version: int | None = None, opts: DeployOptions = DeployOptions(),
           break_lock: str | None = None, lock_wait: float = 0.0, reason: str | None = None,
           provenance=None, expect: int | None = None, give_up_waiting=None) -> FleetResult:
    """Make every host serve ``version`` (default: production); see the module docstring.
    ``provenance`` (``registry.provenance.Provenance``, default: this job) names who and where in
    the ledger rows and tags the deploy writes. ``expect``: production must be that version, read
    before and again under the hosts' locks (``expected_production``). ``give_up_waiting`` (a
    callable; ``sync watch`` asked to stop): a wait for another deploy's lock (a host's, or the shared
    store's before its upload or clean-up) ends at once."""
    seen: dict = {}
    start = time.monotonic()
    try:
        return _deploy(model, hosts, version=version, opts=opts, break_lock=break_lock, lock_wait=lock_wait,
                       reason=reason, provenance=provenance, expect=expect, give_up_waiting=give_up_waiting,
                       seen=seen)
    except BaseException as exc:
        # an interrupt outside the rollout phases (resolving, connecting, waiting for a lock,
        # observing) changed no host: it still gets its result, so `--json` prints one document
        if isinstance(exc, (cancel.DeployInterrupted, KeyboardInterrupt)) and getattr(exc, "result", None) is None:
            exc.result = _interrupted_before_rollout(model, version, seen.get("result"), exc,
                                                     rollout_began=seen.get("rollout", False))
        if isinstance(exc, UserError) and getattr(exc, "result", None) is None and seen.get("rollout"):
            # after hosts changed (e.g. they serve it, but MLflow refused deploy_status=deployed):
            # `--json` still prints what the hosts did
            exc.result = seen["result"]
            exc.result.message = exc.result.message or exc.message
        result = getattr(exc, "result", None)
        if isinstance(result, FleetResult) and not result.seconds:     # a failed deploy's --json: how long
            result.end_running()
            result.seconds = time.monotonic() - start
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
    # a bad setting: one line before the registry is read or a host touched (S3 credentials: once
    # a host is known to pull from its store, below; a switch uploads nothing)
    check_settings(hosts, credentials=False)
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
        # the retention each host's plan names is the one its retention then runs (as `sync plan` says)
        kept = rollback_kept(model) if not all(p.up_to_date for p in plans) else (None, None)
        plans = parallel.map_ordered(lambda cop: _with_retention(*cop, opts, kept), list(zip(conns, observed, plans)),
                                     workers=opts.parallel, name="plan")
        t = result.lap("observe_and_plan", t)
        result.begin("fetch_from_registry", t)
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
                                                unless=lambda: _not_to_record(model, v, source, plans, opts),
                                                fleet=opts.fleet)
            if recorded is None:
                result.message += (f"; not recorded as deployed: no canary judged v{v} (a deploy stopped before its "
                                   f"canary's verdict switched the last host): `mlops sync deploy --bake 0` records "
                                   f"it as it is, `mlops sync rollback` moves production back")
                logger.warning("%s", result.message)
            elif recorded:
                logger.info("recorded v%d of '%s' as deployed: every host serves it, verified (an earlier "
                            "deploy stopped before recording it)", v, model)
            if source == "production" and not opts.fleet:
                _tag_rolled_back(model, v, late=True)
            result.seconds = time.monotonic() - start
            return result
        recorder = deploys.DeployLedger(model, provenance=provenance, fleet=opts.fleet)
        with full_disk_is_one_line(f"deploying v{v} of '{model}'", tempfile.gettempdir(),
                                   tail="nothing was changed on the hosts"):
            workdir = Path(tempfile.mkdtemp(prefix="mlops-deploy-"))
        users = parallel.LastOut()      # host steps still uploading from it after a second Ctrl-C
        try:
            lazy = Lazy(model, v, workdir)
            copies = StoreCopies(model, v, uses=deploy_retention.store_uses(conns, plans, v),
                                 held={base_key(c.host.target): c.lock for c in conns if c.host.target.scheme == "s3"},
                                 break_lock=break_lock, give_up=give_up_waiting)
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
            # a host with the version on disk pulls nothing (its publish verifies that copy first)
            pulling = [r.host for r in runs if r.host.store is not None and r.plan.publishes
                       and v not in r.observed.obs.published]
            stores = {h.store.url: h.store for h in pulling}
            check_pulls(pulling)       # S3 credentials, before the download; none for a switch
            for store in stores.values():      # a store that refuses us: said before the download
                _before_prepare(result, recorder, runs, "upload_to_store", check_reachable, store)
            # before touching any host: a registry problem changes nothing; a signal stops the download
            _before_prepare(result, recorder, runs, "download", fetch, model, v, runs, lazy)
            t = result.lap("fetch_from_registry", t)
            if stores:
                result.begin("upload_to_store", t)
                for store in stores.values():      # once per store, verified, before any host
                    _before_prepare(result, recorder, runs, "upload_to_store", copies.upload, store, *lazy.bundle())
                result.stores = copies.results()
                t = result.lap("upload_to_store", t)
            _log_shape(shape, opts, len(runs))
            seen["rollout"] = True      # from here a host may change
            result.begin("prepare_hosts", t)
            _phase(result, recorder, runs, runs, Phase.PREPARE, opts.parallel, users)
            t = result.lap("prepare_hosts", t)
            result.begin("switch_hosts", t)
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
                _phase(result, recorder, runs, wave, Phase.SWITCH, opts.parallel, users)
                last = i == len(shape.waves) - 1
                entry = {"wave": label, "hosts": list(names)}
                if baker is not None and last and i == 0 and shape.unjudged:
                    # the only wave of a rollout that resumes one nothing judged: its verdict comes
                    # before any row says the fleet served the version
                    entry["switch_seconds"] = round(time.monotonic() - w0, 3)
                    _bake(result, recorder, baker, wave, [], runs, entry)
                try:
                    recorder.record_all([_deployed_row(recorder, run, v, reason, final=last) for run in wave])
                except BaseException as exc:       # the wave switched: ``--json`` lists it, as after a breach
                    entry.setdefault("switch_seconds", round(time.monotonic() - w0, 3))
                    result.waves.append(entry)
                    raise fail(result, recorder, wave[0], runs, exc, step="record") from None
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
            result.begin("record_and_retention", t)
            _succeeded(result, recorder, runs, opts, copies, kept)
            result.lap("record_and_retention", t)
            if overtaken is not None:
                result.seconds = time.monotonic() - start
                moved = ProductionMoved(model, v, overtaken.now, tail=(
                    f"the hosts stay on v{v}, which passed every check here and is recorded deployed; "
                    f"run `mlops sync deploy` to install v{overtaken.now}"))
                moved.deployed = result      # `sync watch`: a deployed pass, and the next one at once
                raise moved
        finally:       # by the last host step still under way, if any (its bundle is read from here)
            users.done(functools.partial(shutil.rmtree, workdir, ignore_errors=True))
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
        # the wave switched: ``--json`` lists it, as after a breach (with no verdict to give)
        entry["bake_seconds"] = round(time.monotonic() - b0, 3)
        result.waves.append(entry)
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
    """The rollout in one line: each wave, and which are baked (with ``--bake-each-wave`` every
    judged one, ``rollout.Shape.judged``: the line named the canary's bake alone)."""
    judged = set(shape.judged(opts.bake_each_wave)) if opts.bake else set()
    logger.info("rollout: prepare %d host%s (%d at a time), then %s", n, "" if n == 1 else "s",
                min(opts.parallel, n) if n else 0,
                "; ".join((f"canary {', '.join(w)}" if i == 0 and shape.canary else f"wave {', '.join(w)}")
                          + (f", bake {opts.bake:g}s" if judged.intersection(w) else
                             ", no bake" if i == 0 and shape.canary else "")
                          for i, w in enumerate(shape.waves)))


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
           at_once: int, users: parallel.LastOut | None = None) -> None:
    """Run ``phase`` on ``runs``, at most ``at_once`` at once (each step inside ``users.use()``). If
    any host fails, every host of ``every`` is put back (``deploy_failure.fail``) and what to raise
    is raised: the first failure in hosts order."""
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
    workers = min(at_once, len(runs))

    returned: list[str] = []

    def execute(item: tuple[int, HostRun]) -> None:
        i, run = item
        try:
            if i < workers or not stopped.is_set():      # else queued behind a host that failed
                with in_use(run.conn), (users.use() if users is not None else contextlib.nullcontext()):
                    run.execute(phase)  # a forced stop's clean-up closes it (and the workdir) once done
        except BaseException as exc:  # noqa: BLE001 - judged below, in hosts order
            stopped.set()
            failures[run.host.name] = exc
        finally:
            returned.append(run.host.name)

    try:        # in worker threads even for one host: a forced interrupt lands here, not in a step
        parallel.settle(execute, list(enumerate(runs)), workers=workers, name=f"{phase}", inline=False,
                        on_signal=lambda: cancel.request("interrupted"))      # stop the others too
    except BaseException as exc:  # noqa: BLE001 - a forced interrupt in this thread
        if len(returned) < len(runs):        # a second one, before every host returned: stop now
            raise
        failures["\0main"] = exc
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
    from registry import promotion_view, versions

    try:
        row = deploys.rolled_back_from(model, version)     # a restore or not (--to a version never in production)
        frm, why = (row.from_version, row.reason) if row is not None else (None, None)
        if frm is None or frm == version or (late and deploys.status(model, frm) != deploys.DEPLOYED) \
                or versions.production_version(model) == frm:
            return
        deploys.tag(model, frm, deploys.ROLLED_BACK, why or "rollback")
        for earlier in deploys.rolled_back_before(model, version):    # v3 -> v2, v2 -> v1, then this deploy
            with contextlib.suppress(NotFoundError):                  # deleted since: nothing to tag
                if deploys.status(model, earlier.from_version) == deploys.DEPLOYED:
                    deploys.tag(model, earlier.from_version, deploys.ROLLED_BACK, earlier.reason or "rollback")
        # who rolled back, on the version rolled back to: `sync rollback` writes it after this
        # deploy; one killed before that (the rerun is refused, a deploy finishes it) never did
        promotion_view.show_rolled_out(model, row)
        if late:
            logger.info("tagged v%d of '%s' rolled_back: the rollback to v%d is on every host (its deploy "
                        "stopped before saying so)", frm, model, version)
    except UserError as exc:        # the hosts serve the restored version: only a tag is missing
        logger.warning("could not tag the version rolled back from rolled_back (%s)", exc.message)


def _with_retention(conn, observed, plan, opts: DeployOptions, kept):
    """``plan`` with its retention preview (``fleet_plan.with_retention``) and that one's notes."""
    plan, notes = with_retention(plan, observed.obs, conn, opts, kept)
    return dataclasses.replace(plan, notes=plan.notes + notes)


def _succeeded(result: FleetResult, recorder, runs: list[HostRun], opts: DeployOptions,
               copies: StoreCopies | None = None, kept: tuple[int | None, str | None] = (None, None)) -> None:
    canary = [b for b in result.bake if b["host"] in result.rollout.get("canary", ())]
    try:
        if opts.fleet:
            # another fleet (`--hosts` naming another file than the configured one): `deployed` would
            # say the configured fleet serves it (found by review, twenty-first stop); its rows say
            # which fleet, and the page shows them
            logger.info("v%d of '%s' serves on %s of the fleet in %s; its deploy_status tag is the "
                        "configured fleet's and is left as it is", result.version, result.model,
                        ", ".join(r.host.name for r in runs), opts.fleet)
            description.refresh_quietly(result.model, result.version)
        else:
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
    # for a --version deploy too, whose own predecessor is not production's — and so does the one
    # the plans' retention kept (``kept``, read before any host changed: what each plan said goes)
    planned, unknown = kept
    rollback_to = None
    if unknown is None:
        try:
            rollback_to = recorder.rollback_target()
        except UserError as exc:
            unknown = exc.message
    if unknown is not None:       # not knowing what to keep: remove nothing this time
        logger.warning("could not read where production would roll back to (%s); nothing removed from "
                       "the hosts this time: the next deploy cleans up", unknown)
        for run in runs:
            run.outcome.retention = {"skipped": unknown}
        for entry in result.stores:
            entry["retention"] = {"skipped": unknown}
    else:
        for run, info in zip(runs, parallel.map_ordered(
                lambda r: deploy_retention.host_retention(r, opts, rollback_to, planned), runs,
                workers=opts.parallel, name="retention", inline=False)):   # a removal: never in this thread
            run.outcome.retention = info
        deploy_retention.store_retention(result, runs, opts, rollback_to, copies, planned)
    # the versions the hosts served until now: their pages say which hosts this deploy took from
    # them (they read "web-1 ok" as if they served there still; review, nineteenth stop)
    description.refresh_quietly(result.model, *sorted({r.outcome.from_version for r in runs}
                                                       - {None, result.version}))
    # read again, not the rollout's answer: this deploy's own ok rows can make it a restore now
    # (a rollback --to a version whose earlier deploy failed). Last: until it is written, a rerun
    # of the `sync rollback` behind it finishes that rollback instead of rolling back further
    # (``promotion_rules.rollback_unfinished``), so a deploy stopped during retention counts too.
    if not opts.fleet:
        _tag_rolled_back(result.model, result.version)
    result.status = "deployed"
    parts = []
    for run in runs:
        o = run.outcome
        was = f"from v{o.from_version}" if o.from_version is not None else "first deploy"
        kept = f", v{o.previous_kept} kept warm" if o.previous_kept is not None else ""
        parts.append(f"{o.host} ({was}{kept})")
    result.message = f"deployed v{result.version} of '{result.model}' to {', '.join(parts)}"

