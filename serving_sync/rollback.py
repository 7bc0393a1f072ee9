"""``mlops sync rollback``: move ``production`` back in the registry, then deploy it.

The ledger row and the alias move come first (``registry.promotion.rollback``, under the
promotion lock). The version tags, a view of that row, are written after the hosts switched:
they are not on the path to the old outputs. They are written when the deploy fails too (the
deploy's own error is the one raised); the deploy tags the version rolled back from
``deploy_status=rolled_back`` once the old version serves (as after `registry rollback` + `sync deploy`).
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Callable

from mlops_common import log
from mlops_common.errors import DeployFailed, RefusedError, UserError, reworded
from registry import deploys
from registry.promotion_view import move_said, row_promotion

from . import fleet, fleet_fetch, fleet_plan, rollout
from .cancel import DeployInterrupted
from .errors import ProductionMoved
from .options import DeployOptions
from .store import check_pulls, check_reachable, check_settings

logger = log.get("sync.fleet")      # the deploy's logger: these lines are part of its output


@dataclass
class RollbackResult:
    registry: object                     # registry.promotion_view's Promotion (from_version, to_version, ...)
    deploy: fleet.FleetResult | None     # None: the deploy stopped before it had a result (a host lock)
    seconds_to_old_outputs: float | None     # from ``started`` until the old outputs answered
    switch_seconds: float | None             # the slowest host's switch
    seconds: float
    error: str | None = None             # a rollback that failed once the registry moved: its one line
    observed: int | None = None          # no deploy run: another rollback had already put every host on it
    superseded_by: object | None = None  # the move (a Promotion) that put production on what the deploy served

    @property
    def superseded(self) -> bool:
        """Another move (a promotion, a rollback, a failed deploy's revert) changed ``production``
        while this rollback deployed: the deploy, which deploys what production names once it holds
        the locks, served that version instead; ``superseded_by`` is that move, as the ledger has it."""
        return self.deploy is not None and self.deploy.version != self.registry.to_version

    @property
    def served_version(self) -> int | None:
        """The version the deploy left the hosts on; None when it failed (the hosts were put back).
        Without a deploy: the version every host was seen serving (``observed``), else None."""
        if self.deploy is None:
            return self.observed
        return None if self.deploy.status == "failed" else self.deploy.version

    def to_dict(self) -> dict:
        return {"registry": self.registry.to_dict(), "deploy": self.deploy.to_dict() if self.deploy else None,
                "served_version": self.served_version, "superseded": self.superseded,
                "superseded_by": self.superseded_by.to_dict() if self.superseded_by is not None else None,
                "seconds_to_old_outputs": self.seconds_to_old_outputs, "switch_seconds": self.switch_seconds,
                "seconds": round(self.seconds, 3), "error": self.error}


def check_rollout(model: str, hosts, *, to: int | None, opts: DeployOptions) -> None:
    """``--canary`` / ``--wave`` before the registry moves: against the fleet, then — for a canary
    of 2 or more, the only one the hosts that change can be too few for — against the hosts that
    would change for the version rolled back to (``to``, else where the ledger says), observed
    now. A host or registry that cannot be read leaves the check to the deploy (the rollback's
    own error says why)."""
    rollout.shape([h.name for h in hosts], canary=opts.canary, wave=opts.wave)
    if opts.canary is None or opts.canary < 2:
        return
    try:
        target = to if to is not None else deploys.DeployLedger(model).rollback_target()
        if target is None:
            return
        fp = fleet_plan.plan_fleet(model, hosts, version=target, opts=opts, annotate=False)
    except UserError:
        return
    if not fp.errors:
        rollout.shape([p.host for p in fp.plans if not p.up_to_date], canary=opts.canary, wave=opts.wave)


def installable(model: str, hosts, opts: DeployOptions) -> Callable[[int], None]:
    """``promotion.rollback``'s ``check_target``: the version picked must be installable before
    production moves to it (``promotion.artifacts_check``); files gone only under ``tfserving/``
    pass when no host would download them: every host that publishes the version has a copy
    its deploy verifies against the registration instead (``fleet_fetch.needs_download``, as
    ``fleet_fetch.fetch`` decides); a host that cannot be observed counts as one that would, and the
    refusal names it (its ``UserError``: it said "a host would need them"). Nor may its deploy need
    S3 credentials this machine lacks (``_uploadable``)."""
    from registry import promotion

    def unneeded(version: int, missing: list[str]) -> bool:
        if not all(p.startswith("tfserving/") for p in missing):
            return False
        return not fleet_fetch.needs_download(model, hosts, version, opts)

    artifacts = promotion.artifacts_check(model, "mlops sync rollback", unneeded=unneeded)

    def check(version: int) -> None:
        artifacts(version)
        _uploadable(model, hosts, version, opts)

    return check


def _uploadable(model: str, hosts, version: int, opts: DeployOptions) -> None:
    """Refuse a rollback whose deploy would upload ``version`` to a shared store without S3
    credentials on this machine (``AuthFailed``), or to a store that refuses us (a bucket gone,
    access denied, an endpoint that does not answer: ``check_reachable``, one LIST), before
    production moves: a host that pulls from the store and does not serve it loaded (or cannot
    be observed) needs that upload. A rollback that only switches hosts (the version kept warm,
    as retention keeps the rollback target) needs none. The hosts are observed only when the
    store cannot take the upload."""
    pulling = [h for h in hosts if getattr(h, "store", None) is not None]
    try:
        check_pulls(pulling)
        for store in {h.store.url: h.store for h in pulling}.values():
            check_reachable(store)
        return
    except UserError as refused:
        try:
            fp = fleet_plan.plan_fleet(model, pulling, version=version, opts=opts, annotate=False)
        except UserError:
            raise refused from None
        if fp.errors or any(p.publishes for p in fp.plans):
            raise refused from None


_RERUN_BREAKING = re.compile(r"rerun with --break-lock ([^\s;]+)")


def _rerun_is_a_deploy(message: str) -> str:
    """A refusal of the deploy after the registry moved (another deploy's host lock) said "rerun
    with --break-lock T": a rerun of `sync rollback` is refused then (its last rollback has no
    deploy since: ``promotion.rollback``, ``unrolled_ok``), so it names the deploy that takes the
    lock over and installs the version rolled back to."""
    return _RERUN_BREAKING.sub(lambda m: f"`mlops sync deploy --break-lock {m.group(1)}` takes it over (a rerun "
                                         f"of this `mlops sync rollback` is refused: production already moved)",
                               message)


def _stopped_before_the_hosts(exc: DeployInterrupted, promo) -> DeployInterrupted:
    """A rollback stopped after the registry moved and before its deploy reached the hosts (a
    signal while it connected or waited for a lock): the bare ``interrupted (SIGTERM)`` said
    neither that production names a version the hosts do not serve nor what finishes it (a stop
    inside the rollout says both already: ``deploy_failure.fail``, ``DeployInterrupted.in_rollout``)."""
    again = DeployInterrupted(f"{exc.message} before the deploy changed any host; production is "
                              f"v{promo.to_version} in the registry now (rolled back from v{promo.from_version}): "
                              f"`mlops sync deploy` installs v{promo.to_version} on the hosts")
    result = getattr(exc, "result", None)
    if result is not None:          # --json prints the same
        result.message = again.message
    again.result = result
    return again


def _where_production_is(exc: DeployFailed, promo) -> DeployFailed | None:
    """A rollback whose deploy failed without blaming the version rolled back to (a failed upload,
    a host's damaged copy of it, a lost connection): production stays on it, as after any such
    deploy (docs/architecture.md, "ROLLBACK"), while the hosts were put back on what they served.
    The deploy's last part, "production left at vN ...: rerun `mlops sync deploy`", becomes where
    production and the hosts stand and what to run: ``exc`` reworded (its ``--json`` result too),
    None when the deploy's line says something else."""
    result = getattr(exc, "result", None)
    note = getattr(result, "registry_note", "")
    if (result is None or result.version != promo.to_version or not note or not exc.message.endswith(note)
            or (result.registry or {}).get("left_at") != promo.to_version):
        return None
    to, frm = promo.to_version, promo.from_version
    serving: dict = {}
    for p in result.plans:
        serving.setdefault(p.get("current"), []).append(p["host"])
    stand = "; ".join(f"{', '.join(names)} serve{'s' if len(names) == 1 else ''} "
                      f"{f'v{c}' if c is not None else 'nothing'}" for c, names in serving.items())
    none = "" if to in serving else " but no host serves it"
    result.message = (
        f"{exc.message.removesuffix(note)}production is v{to} in the registry (rolled back from v{frm}){none}: "
        f"{stand}; v{to} is not blamed ({result.registry.get('reason')}): once the cause is fixed, "
        f"`mlops sync deploy` installs v{to} on the hosts; or `mlops sync rollback --to N` rolls back to "
        f"another version")
    return reworded(exc, result.message)


def _said(exc: BaseException, promo) -> BaseException:
    """What a rollback whose deploy raised ``exc`` raises: ``exc``, or it reworded to say where
    production and the hosts stand once the registry moved."""
    # ProductionMoved: production left the version rolled back to meanwhile; its line says where it is
    moved_only = promo.moved and isinstance(exc, UserError) and not isinstance(exc, (DeployFailed,
                                                                                        DeployInterrupted,
                                                                                        ProductionMoved))
    if moved_only:      # e.g. a host unreachable before the deploy changed anything: say what stands
        return reworded(exc, f"{_rerun_is_a_deploy(exc.message)}; production is v{promo.to_version} in the "
                             f"registry now (rolled "
                             f"back from v{promo.from_version}): once that is fixed, `mlops sync deploy` "
                             f"installs v{promo.to_version} on the hosts; or `mlops sync rollback --to N` "
                             f"rolls back to another version")
    if promo.moved and isinstance(exc, DeployInterrupted) and not exc.in_rollout:
        return _stopped_before_the_hosts(exc, promo)
    if promo.moved and isinstance(exc, DeployFailed) and (again := _where_production_is(exc, promo)):
        return again
    return exc


def _hosts_serve(plans, errors: dict) -> str:
    """Where the hosts stand, in a few words: ``web-1, web-2 serve v3; web-3 serves v2``."""
    serving: dict = {}
    for p in plans:
        serving.setdefault(p.current, []).append(p.host)
    said = [f"{', '.join(names)} serve{'s' if len(names) == 1 else ''} {f'v{c}' if c is not None else 'nothing'}"
            for c, names in serving.items()]
    if errors:
        said.append(f"{', '.join(errors)} could not be observed")
    return "; ".join(said)


def _already_rolled_back(model: str, hosts, promo, opts: DeployOptions, start: float) -> RollbackResult:
    """Another move put production where this rollback was asked to go after it read production
    (``promo.details.already_moved``: two people on call rolling back at once). That move's own
    command deploys it: this one changes nothing. Every host serving that version already is a
    no-op; else it is refused in one line saying where the hosts stand (the other deploy still
    under way, or stopped): deploying here too would have raced that deploy for the hosts' locks
    (and been told to break a live one's) or rolled out whatever production named by then."""
    to = promo.to_version
    if to is None:      # a failed first deploy removed production: no version held it before, none to install
        refused = RefusedError(f"production of '{model}' already moved off v{promo.from_version} "
                               f"({move_said(promo)}) after this rollback read it, and no version holds it now "
                               f"(none did before v{promo.from_version}): there is nothing to roll back to; nothing "
                               f"was changed: `mlops sync status` shows the hosts; promote a working version "
                               f"(`mlops registry promote --version N`), then `mlops sync deploy` installs it")
        refused.rollback = RollbackResult(promo, None, None, None, time.monotonic() - start, error=refused.message)
        raise refused
    said = (f"production of '{model}' already moved v{promo.from_version} -> v{to} ({move_said(promo)}) "
            f"after this rollback read it")
    fp = fleet_plan.plan_fleet(model, hosts, version=to, opts=opts, annotate=False)
    if fp.up_to_date:
        return RollbackResult(promo, None, None, None, time.monotonic() - start, observed=to)
    refused = RefusedError(f"{said}, and not every host serves v{to} yet ({_hosts_serve(fp.plans, fp.errors)}): "
                           f"its deploy is under way or stopped; nothing was changed: `mlops sync status` shows the "
                           f"hosts, and once no deploy is under way `mlops sync deploy` installs v{to}")
    refused.rollback = RollbackResult(promo, None, None, None, time.monotonic() - start, error=refused.message)
    raise refused


_READ_NOW = object()


def rollback_and_deploy(model: str, hosts, *, provenance, to: int | None = None, reason: str | None = None,
                        force: bool = False, opts: DeployOptions = DeployOptions(), break_lock: str | None = None,
                        lock_wait: float = 0.0, started: float | None = None,
                        on_moved: Callable[[object], None] | None = None, read_from=_READ_NOW) -> RollbackResult:
    """Roll ``production`` back (to ``to``, else the previous version in the ledger) as
    ``provenance`` (``registry.provenance.Provenance``: its rows and tags name who and where) and
    deploy it to ``hosts``. ``read_from``: the production version this rollback rolls back from,
    as the command read it when it started (default: read here), a compare-and-set
    (``promotion.rollback``): another rollback that got there first makes this one change nothing
    (``_already_rolled_back``). ``on_moved(promotion)`` runs between
    the registry move and the deploy; ``started`` (``time.monotonic()``) is where the timing starts.
    Raises what ``fleet.deploy`` raises (``DeployFailed`` with ``.result``), with ``.rollback``: this
    rollback's ``RollbackResult`` (``error`` its line; ``deploy`` None when the deploy had no result),
    which ``--json`` prints as on success."""
    from registry import promotion, versions

    start = time.monotonic() if started is None else started
    if read_from is _READ_NOW:
        read_from = versions.production_version(model)
    # a bad setting of the deploy: refused before production moves (S3 credentials when a host
    # pulls the version picked: ``installable``)
    check_settings(hosts, credentials=False)
    promo = promotion.rollback(model, to=to, reason=reason, provenance=provenance, force=force, defer_tags=True,
                               unrolled_ok=False, check_target=installable(model, hosts, opts), read_from=read_from)
    if promo.details.get("already_moved") is not None:
        return _already_rolled_back(model, hosts, promo, opts, start)
    if on_moved is not None:
        on_moved(promo)
    try:
        result = fleet.deploy(model, hosts, opts=opts, break_lock=break_lock, lock_wait=lock_wait,
                              reason=promo.reason, provenance=provenance)
    except BaseException as exc:
        with contextlib.suppress(Exception):   # the deploy's own error is the one to report
            promo.finish()
        out = _said(exc, promo)
        if isinstance(out, UserError):     # --json: the rollback's document, as on success (the move, the deploy)
            deployed = getattr(out, "result", None) or getattr(out, "deployed", None)
            out.rollback = RollbackResult(promo, deployed if isinstance(deployed, fleet.FleetResult) else None,
                                          None, None, time.monotonic() - start, error=out.message)
        if out is exc:
            raise
        raise out from None
    switch = max((h.switch_seconds for h in result.hosts if h.switch_seconds is not None), default=None)
    done = RollbackResult(promo, result, result.answered_after(start), switch, time.monotonic() - start,
                          superseded_by=_moved_to(model, result.version) if result.version != promo.to_version
                          else None)
    try:
        promo.finish()
        # The deploy tagged the version rolled back from when it restored this rollback's version
        # (fleet._tag_rolled_back); overtaken by another promotion, it deployed that one instead, and
        # the version rolled back from is tagged here (not when it is the one promoted again: it serves).
        if result.version != promo.to_version and promo.from_version not in (None, promo.to_version,
                                                                             result.version):
            deploys.tag(model, promo.from_version, deploys.ROLLED_BACK, promo.reason or "rollback")
    except UserError as exc:    # the hosts switched: --json still prints what they did (``error`` the line)
        done.error = exc.message
        exc.rollback = done
        raise
    return done


def _moved_to(model: str, version: int):
    """The move that made ``version`` production while this rollback deployed (the newest in the
    ledger, when it went there), as a ``Promotion``; None when the ledger does not say (unread)."""
    try:
        row = deploys.newest_move(model)
    except UserError as exc:
        logger.warning("could not read the ledger (%s)", exc.message)
        return None
    return row_promotion(model, row) if row is not None and row.to_version == version else None
