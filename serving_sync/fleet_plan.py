"""What ``mlops sync deploy`` would do on every host, changing nothing (``mlops sync plan``, each
``sync watch`` pass): observe every host and plan it (``plan.plan_host``), and the rollout the
deploy would take (``rollout_decision``). ``observe_and_plan`` is also the deploy's OBSERVE state.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mlops_common.errors import UserError, reworded
from registry import deploys

from . import metrics_scrape, parallel
from .canary import unreadable_canary
from .connections import connected
from .lock import HostLock
from .observe import observe_settled
from .options import DeployOptions
from .plan import peak_copies, peak_memory, plan_host, retention_preview
from .resolve import resolve_version
from .rollout_decision import rollout_for, unjudged_hosts
from .store import check_credentials, check_reachable, check_settings, host_uses, read_uses, s3_host_note


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
    refused: str | None = None                       # what the deploy refuses before any host changes

    @property
    def up_to_date(self) -> bool:
        return not self.errors and all(p.up_to_date for p in self.plans)

    @property
    def deploy_refused(self) -> str | None:
        """What the deploy refuses first: a host it cannot observe (the first, in hosts order: it
        fails there before any host changes, as it connects and observes), else ``refused``."""
        return next(iter(self.errors.values()), None) or self.refused

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source,
                "up_to_date": self.up_to_date, "hosts": [p.to_dict() for p in self.plans],
                "errors": self.errors, "rollout": self.rollout, "bake": self.bake, "peak_memory": self.peak,
                "restore": self.restore, "deploy_refused": self.deploy_refused}


def plan_fleet(model: str, hosts, *, version: int | None = None,
               opts: DeployOptions = DeployOptions(), annotate: bool = True) -> FleetPlan:
    """What ``deploy`` would do on each host, changing nothing (no lock, no write).
    ``annotate`` False (each ``sync watch`` pass): whether each host is up to date and its steps,
    without what only ``sync plan`` shows (peak memory from the artifact listing and the hosts'
    manifests, retention's rollback target, the rollout) — MLflow requests a pass need not make."""
    if annotate:        # what the deploy refuses first (``sync watch`` checks it when it reads the hosts)
        hosts = list(hosts)
        check_settings(hosts, credentials=False)     # S3 credentials: once the plans say a host pulls
    v, source = resolve_version(model, version)
    fp = FleetPlan(model, v, source)
    new_size = deploys.saved_model_size(model, v) if annotate else None
    rollback_to, unknown = rollback_kept(model) if annotate else (None, None)
    pulled: dict = {}                # the stores the deploy uploads to (url -> Store)
    def one(host):
        """This host's plan and peak memory; a host that cannot be observed raises UserError."""
        with connected([host]) as conns:
            (o,), (p,) = observe_and_plan(conns, model, v, opts, rollback_to=rollback_to)
            if not annotate:
                return p, None
            # every copy the peak may hold (a leftover validation copy too: ``peak_copies``)
            candidates = set(peak_copies(o.obs, v))
            sizes = {x: _stored_size(conns[0].transport, model, x) for x in candidates}
            p, gone = with_retention(p, o.obs, conns[0], opts, (rollback_to, unknown))
            lock = HostLock(conns[0].transport).preview()      # read only: the plan takes no lock
        if sizes.get(v) is None:
            sizes[v] = new_size
        copies = peak_copies(o.obs, v, fast=opts.fast, sizes=sizes)
        sizes = {x: s for x, s in sizes.items() if x in copies or x == v}
        extra = [s3_host_note(host)] if host.target.scheme == "s3" else []
        if lock is not None:
            line, refused = lock
            extra.append("locked: " + ("`mlops sync deploy` refuses this at once (or waits for it with "
                                       "--lock-wait S): " if refused else "") + line)
        if host.store is not None and p.publishes and v not in o.obs.published:
            pulled.setdefault(host.store.url, host.store)
        if host.store is not None and p.publishes:   # a switch or "up to date" pulls nothing
            # nor a host with the version on disk: its publish verifies that copy (``fleet_fetch.fetch``)
            extra.append(f"keeps its own copy of v{v}: verified on the host, nothing pulled from the shared store "
                         f"{host.store.url}" if v in o.obs.published else
                         f"pulls v{v} from the shared store {host.store.url} (uploaded once per deploy)")
        p = dataclasses.replace(p, notes=p.notes + tuple(extra) + gone)
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
    for store in list(pulled.values())[:1]:       # S3 credentials as the deploy, before its download
        check_credentials(store)
    unjudged = unjudged_hosts(fp.plans, opts, lambda: deploys.DeployLedger(model, fleet=opts.fleet).rolled_out(v))
    d = rollout_for(model, v, [p.host for p in fp.plans if not p.up_to_date], opts, unjudged)
    fp.restore, fp.rollout = d.restore, d.shape.to_dict()
    fp.bake = {"seconds": d.bake, "requested": d.opts.bake, "each_wave": d.opts.bake_each_wave,
               "limits": dataclasses.asdict(d.opts.limits), "parallel": d.opts.parallel, "fast": d.opts.fast}
    if d.bake > 0:
        fp.refused = _unjudgeable(model, {h.name: h for h in hosts}, d.shape.judged(d.opts.bake_each_wave), d.opts)
    for store in pulled.values():    # after the bake's first read, before the download: as the deploy
        if fp.refused is not None:
            break
        try:
            check_reachable(store)
        except UserError as exc:
            fp.refused = exc.message
    return fp


def _unjudgeable(model: str, by_name: dict, judged, opts: DeployOptions) -> str | None:
    """What the deploy's bake refuses before any host changes (``canary.Baker.start``): a host it
    judges whose TF Serving metrics cannot be read (one read each, as the deploy's first)."""
    for n in sorted(judged):
        try:
            metrics_scrape.scrape(n, by_name[n].metrics, model)
        except UserError as exc:
            return unreadable_canary(exc.message, opts.bake_each_wave)
    return None


def rollback_kept(model: str) -> tuple[int | None, str | None]:
    """(where production would roll back to, None) — what the deploy's retention keeps on every
    host — or (None, why it cannot be read): the deploy then removes nothing."""
    try:
        return deploys.DeployLedger(model).rollback_target(), None
    except UserError as exc:
        return None, exc.message


def with_retention(p, obs, conn, opts: DeployOptions, kept: tuple[int | None, str | None]):
    """(``p`` with the versions its deploy's retention removes after the switch, notes to add):
    the one preview ``sync plan`` prints and the deploy's ``plans[]`` carry, by the rule
    ``deploy_retention.host_retention`` removes by (``retention.choose``), with what it keeps:
    ``kept`` (``rollback_kept``: the deploy keeps that one too, and removes nothing when it is
    unknown) and, on a host without rename (S3), dead folders and other fleets' records
    (``_s3_retention``)."""
    rollback_to, unknown = kept
    if p.up_to_date:
        return p, ()
    if unknown is not None:
        return dataclasses.replace(p, retention=()), (
            f"retention removes nothing: where production would roll back to is unknown ({unknown})",)
    p = dataclasses.replace(p, retention=retention_preview(obs, p.desired, p.final, p.previous_kept, keep=opts.keep,
                                                           rollback_to=rollback_to))
    if not conn.transport.atomic_rename:
        p = _s3_retention(p, obs, conn.transport, conn.host, opts, rollback_to)
    return p, ()


def _s3_retention(p, obs, transport, host, opts: DeployOptions, rollback_to: int | None):
    """``p`` with the retention an ``s3://`` host's deploy runs (``deploy_retention``): folders
    without ``saved_model.pb`` are no version and go, and what other fleets' records in the base
    name stays (read only: an old record is left for the deploy to remove). This host's own record
    is not read: the deploy rewrites it first with what the plan keeps anyway."""
    partial = tuple(x for x in obs.incomplete if x != p.desired)     # observed (``observe_host``)

    def preview(in_use=()):
        return retention_preview(obs, p.desired, p.final, p.previous_kept, keep=opts.keep, rollback_to=rollback_to,
                                 partial=partial, in_use=in_use)

    removed = preview()
    if removed and host.target.scheme == "s3":     # the records only keep: read when something would go
        own = frozenset(host_uses([(host, ())]))
        removed = preview(tuple(read_uses(transport, p.model, prune=False, skip=own)))
    return dataclasses.replace(p, retention=removed)


def _stored_size(transport, model: str, version: int) -> int | None:
    """The SavedModel size the host's stored manifest gives (None: not published by us)."""
    from .publish import read_stored_manifest

    try:
        m = read_stored_manifest(transport, model, version)
    except UserError:
        return None
    return m.total_size if m is not None else None
