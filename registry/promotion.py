"""Move ``production``: promote, rollback, and revert after a failed deploy.

Each move runs inside ``Ledger.serialized(model)``: read current production -> append the ledger
row -> move the alias -> commit. Two promotions racing in two processes are serialized by the
database lock, so no row is lost and the alias ends where the last row says. If the alias moved
but the commit then fails, the alias is put back. Version tags mirror the key facts for the
MLflow UI after the commit (the ledger is the record; tags are a view of it), or later when the
caller defers them (``defer_tags=True``: ``mlops sync rollback`` switches the hosts first).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mlops_common import lineage, log
from mlops_common.errors import NotFoundError, RefusedError, UserError

from . import versions
from .ledger import Entry, Ledger
from .promotion_rules import check_promotable, failed_deploys, production_stack, rollback_target

_log = log.get("registry.promotion")
_MOVES = ("promote", "rollback", "deploy")


@dataclass
class Promotion:
    """What a promote / rollback / revert did."""

    model: str
    action: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str | None
    at: str
    ledger_id: int | None
    moved: bool = True
    forced: bool = False
    approved_by: str | None = None
    pipeline_id: str | None = None
    workflow_id: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def finish(self) -> None:
        """Write the registry's view of this move (version tags, candidate alias) if the caller
        asked to defer it (``defer_tags=True``); a no-op otherwise or the second time."""
        pending = self.__dict__.pop("_pending", None)
        if pending is not None:
            try:
                pending()
            except UserError as exc:   # the move itself is done and recorded: say so
                raise UserError(f"production of '{self.model}' is v{self.to_version} (ledger #{self.ledger_id}), "
                                f"but the version tags that show it in the MLflow UI could not be written "
                                f"({exc.message}); `mlops registry promote --version {self.to_version}` writes "
                                f"them again once MLflow answers") from None


def promotion_tags(p: Promotion) -> dict[str, str]:
    """The version tags that mirror a promotion or rollback for the MLflow UI. Every key is
    written each time, so no tag is left over from an earlier promotion."""
    return {"promoted_by": p.actor, "promoted_at": p.at, "promotion.kind": p.action,
            "promotion.from_version": str(p.from_version) if p.from_version is not None else "none",
            "promotion.ledger_id": str(p.ledger_id), "promotion_reason": p.reason or "none",
            "approved_by": p.approved_by or "none", "promotion.pipeline_id": p.pipeline_id or "none",
            "promotion.forced": "true" if p.forced else "false"}


def _restore(model: str, previous: int | None) -> None:
    try:
        if previous is None:
            versions.delete_alias(model, versions.PRODUCTION)
        else:
            versions.set_alias(model, versions.PRODUCTION, previous)
    except Exception as exc:  # noqa: BLE001 - report the original failure, mention this one
        _log.error(f"could not put alias '{versions.PRODUCTION}' of '{model}' back to "
                   f"{previous}: {exc}; check it with `mlops registry status`")


def _refused(ledger: Ledger, model: str, action: str, version: int, actor: str, reason: str,
             pipeline_id: str | None, workflow_id: str | None) -> None:
    current = versions.production_version(model)
    ledger.append(Entry(action=action, model=model, outcome="refused", from_version=current,
                        to_version=version, actor=actor, pipeline_id=pipeline_id,
                        workflow_id=workflow_id, reason=reason))


def _move(model: str, action: str, *, target, actor: str, reason: str | None, force: bool,
          approved_by: str | None, pipeline_id: str | None, workflow_id: str | None,
          details: dict, ledger: Ledger, defer_tags: bool = False) -> Promotion:
    """Shared body of promote and rollback. ``target(tx, current)`` picks the version under the lock.

    ``defer_tags``: the ledger row and the alias move happen here (under the lock, in that
    order); the version tags, a view of the ledger row for the MLflow UI, wait for
    ``Promotion.finish()`` — ``mlops sync rollback`` switches the hosts first."""
    moved_alias = False
    current = None
    try:
        with ledger.serialized(model) as tx:
            aliases = versions.registered_model_aliases(model)
            current = aliases.get(versions.PRODUCTION)
            v, extra = target(tx, current)
            info = versions.get_version(model, v, aliases=aliases)
            try:
                check_promotable(model, info.version, info.validation_status, force=force, reason=reason)
            except RefusedError as exc:
                raise _Refusal(info.version, exc) from None
            entry = tx.append(Entry(
                action=action, model=model, outcome="ok", from_version=current, to_version=info.version,
                actor=actor, pipeline_id=pipeline_id, workflow_id=workflow_id, reason=reason,
                details={**details, **extra, "forced": force, "approved_by": approved_by,
                         "validation_status": info.validation_status}))
            if current != info.version:
                versions.set_alias(model, versions.PRODUCTION, info.version)
                moved_alias = True
    except _Refusal as r:
        _refused(ledger, model, action, r.version, actor, str(r.error), pipeline_id, workflow_id)
        raise r.error from None
    except BaseException:
        if moved_alias:
            _restore(model, current)
        raise
    at = entry.at.isoformat(timespec="seconds")
    verb = "rolled back" if action == "rollback" else "promoted"
    if current == info.version:
        _log.info(f"version {info.version} of '{model}' already holds production; recorded anyway")
    else:
        _log.info(f"{verb} '{model}': production {current if current is not None else '(none)'} "
                  f"-> {info.version} by {actor}")
    promo = Promotion(model=model, action=action, from_version=current, to_version=info.version,
                      actor=actor, reason=reason, at=at, ledger_id=entry.id,
                      moved=current != info.version, forced=force, approved_by=approved_by,
                      pipeline_id=pipeline_id, workflow_id=workflow_id,
                      details={**details, **extra})
    held_candidate = aliases.get(versions.CANDIDATE) == info.version

    def write_view() -> None:
        versions.set_tags(model, info.version, promotion_tags(promo))
        if held_candidate:
            versions.delete_alias(model, versions.CANDIDATE)   # no longer awaiting approval

    promo._pending = write_view
    if not defer_tags:
        promo.finish()
    return promo


class _Refusal(Exception):
    def __init__(self, version: int, error: RefusedError):
        super().__init__(str(error))
        self.version, self.error = version, error


def promote(model: str, version, *, actor: str, reason: str | None = None, force: bool = False,
            approved_by: str | None = None, pipeline_id: str | None = None,
            workflow_id: str | None = None, details: dict | None = None,
            ledger: Ledger | None = None) -> Promotion:
    """Point ``production`` at ``version`` (it must have passed the gate unless forced with a reason)."""
    ledger = ledger or Ledger()
    v = versions.parse_version(version)
    return _move(model, "promote", target=lambda tx, current: (v, {}), actor=actor, reason=reason,
                 force=force, approved_by=approved_by,
                 pipeline_id=pipeline_id or lineage.pipeline_id(),
                 workflow_id=workflow_id or lineage.workflow_id(), details=details or {},
                 ledger=ledger)


def rollback(model: str, *, to=None, reason: str | None = None, actor: str, force: bool = False,
             approved_by: str | None = None, ledger: Ledger | None = None,
             defer_tags: bool = False) -> Promotion:
    """Point ``production`` back at ``to``, or at the version that held it before the current one.

    "Before" is read from the ledger, skipping versions whose deploy failed. Same checks and
    records as a promotion, marked as a rollback. ``defer_tags``: see ``_move``.
    """
    ledger = ledger or Ledger()
    explicit = versions.parse_version(to) if to is not None else None
    all_versions = {i.version: i.tags for i in versions.list_versions(model)}

    def target(tx, current):
        history = tx.entries(actions=_MOVES)
        if explicit is not None:
            if explicit == current:
                raise RefusedError(f"version {explicit} of '{model}' already holds production; "
                                   f"nothing to roll back")
            return explicit, {"rollback_of": current}
        stack = production_stack(history)
        failed = failed_deploys(history, all_versions)
        v = rollback_target(stack, current, failed)
        if v is None:
            skipped = sorted(set(stack) & failed)
            raise NotFoundError(
                f"nothing to roll back to for '{model}': the ledger shows no earlier production "
                f"version than {current}" + (f" whose deploy did not fail (skipped {skipped})" if skipped
                                             else "") + "; use `mlops registry promote --version N`")
        return v, {"rollback_of": current, "skipped_failed": sorted(failed & set(stack))}

    return _move(model, "rollback", target=target, actor=actor,
                 reason=reason or "rollback requested", force=force, approved_by=approved_by,
                 pipeline_id=lineage.pipeline_id(), workflow_id=lineage.workflow_id(),
                 details={}, ledger=ledger, defer_tags=defer_tags)


def revert_failed_deploy(model: str, failed_version, to_version, reason: str,
                         actor: str | None = None, *, host: str | None = None,
                         ledger: Ledger | None = None) -> Promotion:
    """After a failed deploy: production back to ``to_version``, failed version tagged, rows recorded.

    Records a ``deploy`` row (outcome failed) for ``failed_version`` and a ``rollback`` row.
    The alias is only moved if it still points at ``failed_version``; if someone promoted another
    version meanwhile it is left alone (the rollback row then says ``refused`` and why).
    ``to_version`` None removes ``production`` (the first deploy ever failed).
    """
    ledger = ledger or Ledger()
    failed = versions.parse_version(failed_version)
    to = versions.parse_version(to_version) if to_version is not None else None
    actor = actor or lineage.os_user()
    pid, wid = lineage.pipeline_id(), lineage.workflow_id()
    versions.get_version(model, failed)
    if to is not None:
        versions.get_version(model, to)
    from . import deploys

    deploys.tag(model, failed, deploys.FAILED, reason)
    moved_alias = False
    current = None
    try:
        with ledger.serialized(model) as tx:
            current = versions.production_version(model)
            tx.append(Entry(action="deploy", model=model, outcome="failed", from_version=to,
                            to_version=failed, actor=actor, pipeline_id=pid, workflow_id=wid,
                            host=host, reason=reason))
            if current == failed:
                entry = tx.append(Entry(action="rollback", model=model, outcome="ok", from_version=failed,
                                        to_version=to, actor=actor, pipeline_id=pid, workflow_id=wid,
                                        host=host, reason=reason,
                                        details={"after_failed_deploy": failed, "automatic": True}))
                if to is None:
                    versions.delete_alias(model, versions.PRODUCTION)
                else:
                    versions.set_alias(model, versions.PRODUCTION, to)
                moved_alias = True
            else:
                why = (f"production is version {current} now, not the failed {failed}; "
                       f"left it alone")
                entry = tx.append(Entry(action="rollback", model=model, outcome="refused",
                                        from_version=failed, to_version=to, actor=actor,
                                        pipeline_id=pid, workflow_id=wid, host=host,
                                        reason=f"{reason} ({why})"))
                _log.warning(f"not moving production of '{model}': {why}")
    except BaseException:
        if moved_alias:
            _restore(model, current)
        raise
    at = entry.at.isoformat(timespec="seconds")
    promo = Promotion(model=model, action="rollback", from_version=failed, to_version=to, actor=actor,
                      reason=reason, at=at, ledger_id=entry.id, moved=moved_alias,
                      pipeline_id=pid, workflow_id=wid,
                      details={"after_failed_deploy": failed, "production_was": current})
    if moved_alias and to is not None:      # every promotion tag: none left from the earlier promotion
        versions.set_tags(model, to, promotion_tags(promo))
    return promo
