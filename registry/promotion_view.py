"""A move of ``production`` as a ``Promotion``, and the registry's view of it: the version tag
that shows who let a version in, and both versions' descriptions. The ledger is the record; the
tags are a view of it, written after the move's commit (or by ``Promotion.finish()`` when the
caller deferred them), again by ``reconciliation.reconcile``, or by the deploy that rolls a
rollback out (``show_rolled_out``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from mlops_common.errors import UserError

from . import description, tags, versions
from .ledger import Entry
from .provenance import Provenance


@dataclass
class Promotion:
    """What a promote / rollback / revert did, and who did it from where."""

    model: str
    action: str
    from_version: int | None
    to_version: int | None
    provenance: Provenance
    reason: str | None
    at: str
    ledger_id: int | None
    moved: bool = True
    forced: bool = False
    details: dict = field(default_factory=dict)
    # the registry's view of the move (version tags, candidate alias) while it is still to be
    # written: ``defer_tags=True`` leaves it to ``finish()``
    pending_view: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The ``--json`` document (flat, the same keys as the ledger row's who and where)."""
        p = self.provenance
        return {"model": self.model, "action": self.action, "from_version": self.from_version,
                "to_version": self.to_version, "actor": p.actor, "reason": self.reason, "at": self.at,
                "ledger_id": self.ledger_id, "moved": self.moved, "forced": self.forced,
                "approved_by": p.approved_by, "pipeline_id": p.pipeline_id, "workflow_id": p.workflow_id,
                "details": dict(self.details)}

    def finish(self) -> None:
        """Write the registry's view of this move (version tags, candidate alias) if the caller
        asked to defer it (``defer_tags=True``); a no-op otherwise or the second time."""
        pending, self.pending_view = self.pending_view, None
        if pending is not None:
            try:
                pending()
            except UserError as exc:   # the move itself is done and recorded: say so
                # a promotion of a version that passed its gate, run again, writes them (and moves
                # nothing); for a forced move or a rollback that command is refused or records a
                # promotion nobody made: reconcile writes the tags of the move the ledger records
                again = (f"mlops registry promote --version {self.to_version}"
                         if self.action == "promote" and not self.forced else "mlops registry reconcile")
                raise UserError(f"production of '{self.model}' is v{self.to_version} (ledger #{self.ledger_id}), "
                                f"but the version tags that show it in the MLflow UI could not be written "
                                f"({exc.message}); `{again}` writes them again once MLflow answers") from None


def promotion_tags(p: Promotion) -> dict[str, str]:
    """The version tag that shows a promotion in the MLflow versions list: who let it in (the
    CircleCI approver, else whoever promoted it). The rest of the story (when, from which
    version, why, ledger id, pipeline, forced) is the version's description and the ledger."""
    return {tags.APPROVED_BY: p.provenance.approved_by or p.provenance.actor}


def write_view(model: str, version: int | None, p: Promotion) -> None:
    """The registry's view of a move: the tag, then both versions' descriptions."""
    if version is not None:
        versions.set_tags(model, version, promotion_tags(p))
    description.refresh_quietly(model, version, p.from_version)


def tags_lag(model: str, p: Promotion, shown: dict[str, str] | None = None) -> bool:
    """Whether ``p``'s version does not show ``p`` yet (its approver tag differs): a reconcile or
    promotion whose tag writes failed after its row was committed. ``shown``: the version's tags
    if the caller just read them."""
    if p.to_version is None:
        return False
    if shown is None:
        shown = versions.get_version(model, p.to_version).tags
    return any(shown.get(k) != v for k, v in promotion_tags(p).items())


def confirmed_moves(model: str, rows: list[Entry], actor: str | None = None) -> list[Promotion]:
    """The moves reconciliation recorded, as promotions for the version tags: the tag shows who
    the ledger row names (and its approver), not who reconciled."""
    return [row_promotion(model, r, actor) for r in rows if r.action != "intent" and r.to_version is not None]


def row_promotion(model: str, r: Entry, actor: str | None = None) -> Promotion:
    """The move row ``r`` as a promotion (who, from where, its details); ``actor`` when it names none."""
    details = r.details if isinstance(r.details, dict) else {}
    mover = Provenance(actor=r.actor or actor or "", approved_by=details.get("approved_by"), pipeline_id=r.pipeline_id)
    return Promotion(model=model, action=r.action, from_version=r.from_version, to_version=r.to_version,
                     provenance=mover, reason=r.reason, at=r.at.isoformat(timespec="seconds"), ledger_id=r.id,
                     forced=bool(details.get("forced")), details=dict(details))


def move_said(p: Promotion) -> str:
    """Who moved production, as the lines that name another move say it: ``rollback by carol,
    ledger #8``; a failed deploy's automatic revert and a move made outside mlops say so (their
    actor ran the deploy, or reconciled)."""
    d, by = p.details, p.provenance.actor or "unknown"
    if d.get("automatic"):
        return (f"automatic rollback after the deploy of v{d.get('after_failed_deploy', p.from_version)} failed, "
                f"by {by}, ledger #{p.ledger_id}")
    if d.get("moved_outside"):
        return f"moved outside mlops, recorded by {by}, ledger #{p.ledger_id}"
    return f"{p.action} by {by}, ledger #{p.ledger_id}"


def show_rolled_out(model: str, row: Entry) -> bool:
    """The registry's view of the person's rollback ``row`` (its approver on ``row.to_version``,
    both descriptions), written by the deploy that puts it on the hosts when the tags do not show
    it yet: a `sync rollback` killed between its move and ``Promotion.finish()`` never wrote it,
    and `registry status` then took the stale tag for one changed outside mlops. Returns whether
    it wrote (one read of the version when it did not)."""
    (p,) = confirmed_moves(model, [row])
    if not tags_lag(model, p):
        return False
    write_view(model, row.to_version, p)
    return True
