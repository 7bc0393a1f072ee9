"""Does the ``production`` alias sit where the ledger says, and the rows that record what
happened when it does not: pure functions on plain data (``agreement``, ``reconcile_rows``).

Intent rows: before a promotion moves the alias it commits an ``intent`` row (outcome
``pending``, ``details.move`` = promote / rollback); the move's ``ok`` row (or an ``intent``
row with outcome ``failed`` when the alias did not move) closes it by ``details.intent`` = its
id. The replay counts only ``ok`` moves, so an intent is no move until it is confirmed; an open
intent whose target the alias holds is what a process that died (or lost MLflow's answer)
between the move and its record leaves behind, and ``reconcile_rows`` confirms it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .ledger import Entry
from .promotion_rules import ledger_production, version_label


def open_intents(entries: Iterable[Entry]) -> list[Entry]:
    """Intent rows that no later row closes (``details.intent`` = their id), oldest first."""
    entries = list(entries)
    closed = {e.details.get("intent") for e in entries if e.details}
    return [e for e in entries if e.action == "intent" and e.outcome == "pending" and e.id not in closed]


@dataclass(frozen=True)
class Agreement:
    """Where the alias is, where the ledger says it is, and the intents still open."""

    alias: int | None
    ledger: int | None
    open_intents: tuple[Entry, ...] = ()
    ledger_deleted: bool = False        # the ledger's production version is gone from the registry
    ledger_empty: bool = False          # the ledger has no row of this model at all

    @property
    def agrees(self) -> bool:
        return self.alias == self.ledger

    def problem(self) -> str | None:
        """One line for a person, or None when there is nothing to say."""
        pending = ", ".join(f"#{i.id} ({i.details.get('move', 'promote')} to {version_label(i.to_version)} by "
                            f"{i.actor})" for i in self.open_intents)
        if self.agrees:
            return (f"open intent {pending}: a promotion is under way or died before moving the alias; "
                    f"`mlops registry reconcile` closes it") if pending else None
        if self.ledger_empty and self.alias is not None:
            # a wrong MLOPS_LEDGER_URL / MLOPS_HOME reads (or makes) an empty ledger: reconciling
            # there would write this move into a ledger nothing else reads
            return (f"production is {version_label(self.alias)} but this ledger has no row for the model: if "
                    f"mlops moved it, the rows are in another ledger (check MLOPS_LEDGER_URL and MLOPS_HOME "
                    f"against the jobs that promote and deploy); if it was set outside mlops, "
                    f"`mlops registry reconcile` records it")
        why = (f"intent {pending} moved it but was never recorded" if any(
            i.to_version == self.alias for i in self.open_intents)
            else DELETED_WITH_ALIAS.format(version_label(self.ledger)) if self.alias is None and self.ledger_deleted
            else "it was moved outside mlops (MLflow UI or API)")
        return (f"production is {version_label(self.alias)} but the ledger says {version_label(self.ledger)}: {why}; "
                f"`mlops registry reconcile` records it")

    def to_dict(self) -> dict:
        return {"alias": self.alias, "ledger": self.ledger, "agrees": self.agrees,
                "open_intents": [i.id for i in self.open_intents], "problem": self.problem()}


def agreement(alias: int | None, entries: Iterable[Entry], *, ledger_deleted: bool = False) -> Agreement:
    """Compare the ``production`` alias with the ledger's replay (pure). ``ledger_deleted``: the
    version the ledger names is no longer in the registry."""
    entries = list(entries)
    return Agreement(alias, ledger_production(entries), tuple(open_intents(entries)), ledger_deleted,
                     ledger_empty=not entries)


DELETED_WITH_ALIAS = "{} was deleted from the registry (MLflow removes its aliases with it)"


# Who let a version in when the alias was moved outside mlops (MLflow UI or API): not known, and
# not whoever recorded the move (the reconciler showed as its approver, a version that failed its
# gate included).
MOVED_OUTSIDE_APPROVER = "unknown (moved outside mlops)"


def reconcile_rows(model: str, alias: int | None, entries: Iterable[Entry], *, actor: str,
                   ledger_version_deleted: bool = False) -> list[Entry]:
    """The rows that make the ledger say what the alias shows (none when they agree and no
    intent is open): an open intent whose target the alias holds is confirmed with its own move
    row; every other open intent is closed as ``failed``; an alias moved outside mlops gets a
    move row of its own. Every row's reason says it came from reconciliation."""
    entries = list(entries)
    ledger = ledger_production(entries)
    rows: list[Entry] = []
    for i in open_intents(entries):
        move = i.details.get("move", "promote")
        what = f"intent #{i.id} ({move} {version_label(i.from_version)} -> {version_label(i.to_version)} by {i.actor})"
        if i.to_version == alias and alias != ledger:
            rows.append(Entry(action=move, model=model, outcome="ok", from_version=i.from_version,
                              to_version=i.to_version, actor=i.actor, pipeline_id=i.pipeline_id,
                              workflow_id=i.workflow_id,
                              reason=f"reconciled by {actor}: {what} moved production, but its "
                                     f"process ended before recording it",
                              details={**{k: v for k, v in i.details.items() if k != "move"},
                                       "intent": i.id, "reconciled_by": actor,
                                       "intent_reason": i.reason}))
            ledger = alias
        else:
            rows.append(Entry(action="intent", model=model, outcome="failed", from_version=i.from_version,
                              to_version=i.to_version, actor=actor,
                              reason=f"reconciled by {actor}: {what} did not move production "
                                     f"(it is {version_label(alias)})",
                              details={"intent": i.id}))
    if alias != ledger:
        how = (DELETED_WITH_ALIAS.format(version_label(ledger))
               if alias is None and ledger_version_deleted else "it was moved outside mlops (MLflow UI or API)")
        rows.append(Entry(action="promote" if alias is not None else "rollback", model=model, outcome="ok",
                          from_version=ledger, to_version=alias, actor=actor,
                          reason=f"reconciled by {actor}: production found on {version_label(alias)} while the "
                                 f"ledger said {version_label(ledger)}; {how}",
                          details={"reconciled_by": actor, "moved_outside": True,
                                   "approved_by": MOVED_OUTSIDE_APPROVER}))
    return rows
