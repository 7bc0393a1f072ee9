"""Retention after a fleet deploy succeeded (step 5 of ``fleet``'s docstring): each host's old
versions and leftovers (``retention.plan`` / ``apply``, under the host's lock), and the shared
stores this deploy uploaded to (``store.retire``) — keeping what every host keeps, and where
production would roll back to. A failure here fails nothing: the next deploy cleans up.

``store_uses`` is written before the upload: what each host keeps, so another fleet's clean-up
keeps it too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mlops_common import log
from mlops_common.errors import UserError

from . import retention, verified
from .connections import in_use
from .host_run import HostRun
from .options import DeployOptions
from .store import StoreCopies, host_uses, read_uses, record_uses, retire

if TYPE_CHECKING:
    from .fleet_result import FleetResult

logger = log.get("sync.fleet")      # the deploy's logger: these lines are part of its output


def store_uses(conns, plans, v: int) -> dict:
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


def store_retention(result: FleetResult, runs: list[HostRun], opts: DeployOptions, rollback_to: int | None,
                     copies: StoreCopies | None = None, planned: int | None = None) -> None:
    """The shared stores this deploy uploaded to keep what the hosts keep (``store.retire``): this
    deploy's hosts' records are rewritten (the switch done, the version pulled), and every fleet's
    records in the store are kept. ``planned``: where production would roll back to as read before
    any host changed, which every host's retention keeps beside ``rollback_to`` (``host_retention``):
    kept here too (a move during the deploy changes the target read after the switch)."""
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
            | {p for r in runs if (p := _host_previous(r.plan)) is not None}
            | ({planned} if planned is not None else set()))
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
                                        held=copies.held if copies is not None else frozenset(),
                                        break_lock=copies.break_lock if copies is not None else None,
                                        give_up=copies.give_up if copies is not None else None)
        except UserError as exc:   # the deploy succeeded; the next one cleans up
            logger.warning("%s: retention failed (%s); it will be retried by the next deploy", entry["store"],
                           exc.message)
            entry["retention"] = {"error": exc.message}


def _host_previous(plan) -> int | None:
    """What a host keeps as its previous version: the one kept warm, else the one it served."""
    return plan.previous_kept if plan.previous_kept is not None else plan.current


def _shared_base_uses(run: HostRun) -> tuple[int, ...]:
    """An ``s3://`` host's base may be a shared store other fleets' ssh hosts pull from (their
    hosts file's ``store``; the same lock, ``<base>/.serving_sync/lock``): record there what this
    host keeps, as their deploys record their hosts' (their clean-up then keeps it), and keep what
    every record names. Nothing for other hosts (one listing per ``s3://`` host otherwise)."""
    if run.host.target.scheme != "s3":
        return ()
    plan = run.plan
    previous = _host_previous(plan)
    record_uses(run.transport, plan.model, host_uses([(run.host, plan.final.versions + plan.held_by_others
                                                       + ((previous,) if previous is not None else ()))]))
    return tuple(sorted(read_uses(run.transport, plan.model)))


def host_retention(run: HostRun, opts: DeployOptions, rollback_to: int | None = None,
                   planned: int | None = None) -> dict:
    """``planned``: where production would roll back to as read before any host changed (the
    plans' retention preview kept it: ``fleet_plan.with_retention``); kept beside ``rollback_to``."""
    with in_use(run.conn):      # a forced stop's clean-up closes it once this host's removals are done
        return _host_retention(run, opts, rollback_to, planned)


def _host_retention(run: HostRun, opts: DeployOptions, rollback_to: int | None, planned: int | None) -> dict:
    plan = run.plan
    try:
        run.heartbeat()               # raises at once if the lock's thread found it taken over
        # a dead deploy's half-written models.config and heartbeat files can lie there only when its
        # lock was taken over (a release removes the heartbeat before the lock): list the base and
        # .serving_sync then, not on every deploy (over SSH a listing is a dozen requests)
        lock = run.conn.lock
        took_over = lock is not None and lock.took_over
        rp = retention.plan(run.transport, plan.model, serving=plan.desired, previous=_host_previous(plan),
                            keep=opts.keep,
                            protected=tuple(plan.final.versions) + tuple(plan.held_by_others)
                            + tuple(x for x in (rollback_to, planned) if x is not None) + _shared_base_uses(run),
                            config_temps=took_over,
                            lock=(lock.info.token, lock.ttl) if took_over and lock.info else None)
        if (rp.remove_versions or rp.remove_uploads or rp.remove_config_temps or rp.remove_heartbeats
                or rp.remove_partials):    # S3: a numeric folder without saved_model.pb may be a new owner's upload
            run.heartbeat(force=True)     # deleting: only while the host is still ours (checked now)
        # dead folders too (S3: a removal killed after its saved_model.pb, an upload that did not
        # finish), and before the removal: one cut midway leaves no version it names as smoke-tested
        if gone := rp.remove_versions + rp.remove_partials:
            verified.forget(run.transport, plan.model, gone)
        retention.apply(run.transport, rp)
        return rp.to_dict()
    except (UserError, OSError) as exc:   # the deploy succeeded; cleaning up can wait for the next one
        message = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        logger.warning("%s: retention failed (%s); it will be retried by the next deploy", run.host.name, message)
        return {"error": message}
