"""Make the ledger say where ``production`` is (``mlops registry reconcile``), and tell whether
it does (``mlops registry status``): the I/O around ``reconciliation_rules``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from mlops_common import log
from mlops_common.errors import ConnectionFailure, UserError
from mlops_common.text import printable

from . import description, tags, versions
from .alias_move import VIEW, reconcile_in
from .ledger import Entry, Ledger
from .promotion_rules import version_label
from .promotion_view import confirmed_moves, write_view
from .provenance import Provenance, given
from .reconciliation_rules import Agreement, agreement

_log = log.get("registry.reconcile")


def ledger_view(model: str, *, ledger: Ledger | None = None) -> list[Entry]:
    """What the ledger says about ``model``'s ``production`` alias: its current promote, rollback
    and intent rows, and its gate rows (one read; ``registry status`` passes them to
    ``check_agreement`` and ``history.status_rows``, which shows each version's last verdict)."""
    return (ledger or Ledger()).entries(model, actions=(*VIEW, "gate"), current=True)


def check_agreement(model: str, *, ledger: Ledger | None = None, entries: list[Entry] | None = None) -> Agreement:
    """Where ``production`` is, where the ledger says it is, and open intents (writes nothing).
    ``entries``: the rows ``ledger_view`` read, when the caller has them (else read here). A
    disagreement is read again under the promotion lock: a promotion that committed between the
    two reads is not a move made outside mlops."""
    ledger = ledger or Ledger()
    found = agreement(versions.production_version(model),
                      ledger_view(model, ledger=ledger) if entries is None else entries)
    if found.agrees:
        return found
    try:
        with ledger.serialized(model) as tx:
            found = agreement(versions.production_version(model), tx.entries(actions=VIEW))
            if found.ledger_empty and tx.entries(limit=1):     # its register or gate rows: the right ledger
                found = replace(found, ledger_empty=False)
    except ConnectionFailure as exc:
        # the lock cannot be had (a ledger this user may only read, a read-only disk, a promotion
        # holding it): `status` still says what it read, not nothing at the moment it matters
        _log.warning("could not read the ledger of '%s' again under the promotion lock (%s): what follows was "
                     "read without it; a promotion under way shows as a disagreement until it ends",
                     model, exc.message)
        if found.ledger_empty and ledger.entries(model, limit=1):
            found = replace(found, ledger_empty=False)
    if found.alias is None and found.ledger is not None and not versions.version_exists(model, found.ledger):
        found = replace(found, ledger_deleted=True)    # deleted, not moved: MLflow removed its alias with it
    return found


@dataclass
class Reconciliation:
    """What ``reconcile`` found and recorded."""

    model: str
    production: int | None
    rows: list[Entry]
    # versions whose ``approved_by`` tag did not say who the ledger records (edited or removed
    # outside mlops, or a move's tag write failed), written back
    retagged_versions: list[int] = field(default_factory=list)

    @property
    def retagged(self) -> bool:
        return bool(self.retagged_versions)

    def to_dict(self) -> dict:
        return {"model": self.model, "production": self.production,
                "rows": [r.to_dict() for r in self.rows], "retagged": self.retagged,
                "retagged_versions": list(self.retagged_versions)}


def reconcile(model: str, *, provenance: Provenance | None = None, actor: str | None = None,
              ledger: Ledger | None = None) -> Reconciliation:
    """Make the ledger say where ``production`` is, under the promotion lock (so no promotion is
    half-way): confirm an intent the alias shows, close intents that did not happen, record a
    move made outside mlops. Writes no row when they agree. Then, still under the lock, the
    ``approved_by`` tag of every version whose ledger names an approver is written back where it
    says someone else or is missing (``description.approver_to_restore``; one listing of the
    versions, one write per such version); a version the ledger says nothing about keeps its tag.
    ``actor``: shorthand for a ``provenance`` built from the environment."""
    by = given(provenance, actor)
    ledger = ledger or Ledger()
    with ledger.serialized(model) as tx:
        alias = versions.production_version(model)
        rows = reconcile_in(tx, model, alias, by.actor, announce=False)     # the caller prints each row once
        moves = confirmed_moves(model, rows, by.actor)
        entries = tx.entries(actions=VIEW)
        # commit the rows (SQLite: and end the read's write lock) before asking MLflow; the
        # promotion lock stays held: no move's row lands between what is read here and the writes
        tx.commit()
        written = moves[-1].to_version if moves else None      # its view is written below, as before
        stale = []
        for info in versions.list_versions(model):
            # the model's rows (``current``): every one about v<N> is this v<N>'s, whatever its writer's clock
            who = description.approver_to_restore(info.tags, entries, info.version)
            if who is not None and info.version != written:
                stale.append((info.version, who))
        for v, who in stale:
            try:
                versions.set_tags(model, v, {tags.APPROVED_BY: who})
            except UserError as exc:
                raise UserError(f"the ledger records {printable(who)} as the approver of v{v} of '{model}', but its "
                                f"`approved_by` tag could not be written back ({exc.message}); rerun "
                                f"`mlops registry reconcile` once MLflow answers") from None
    description.refresh_quietly(model, *(v for v, _ in stale))
    if moves:
        p = moves[-1]
        try:
            write_view(model, p.to_version, p)
        except UserError as exc:      # the rows are committed: a rerun finds the tags behind and writes them
            raise UserError(f"the ledger records production of '{model}' at {version_label(p.to_version)} "
                            f"(ledger #{p.ledger_id}), but the version tags that show it in the MLflow UI could "
                            f"not be written ({exc.message}); rerun `mlops registry reconcile` once MLflow "
                            f"answers") from None
    return Reconciliation(model, alias, rows, retagged_versions=[v for v, _ in stale])
