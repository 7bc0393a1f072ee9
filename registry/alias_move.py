"""Move the ``production`` alias under the promotion lock, so the ledger always names the
version the alias may be on.

Each move runs inside ``Ledger.serialized(model)`` (the promotion lock): read current production
-> record what the alias shows if the ledger disagrees (``reconcile_rows``) -> commit an
``intent`` row -> move the alias -> append the ``ok`` row that closes the intent -> commit. Two
promotions racing in two processes are serialized by the lock, so no row is lost and the alias
ends where the last row says. Whatever dies between the intent and the ok row (a SIGKILL, a
timeout, MLflow's answer lost after it applied the move), the ledger already names the version
the alias may be on; ``reconcile`` (also run at the start of every move) confirms or closes the
intent. If MLflow answers that the alias did not move, the intent is closed as failed; if the
alias moved but the final commit fails, the alias is put back. ``production_move`` is that frame,
for promote, rollback and ``deploy_revert.revert_failed_deploy``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from mlops_common import faultpoint, log
from mlops_common.errors import UserError

from . import versions
from .ledger import Entry, Ledger, LockedLedger
from .promotion_rules import ledger_production, version_label
from .reconciliation_rules import reconcile_rows

_log = log.get("registry.promotion")      # the moves' logger: these lines are part of their output
VIEW = ("promote", "rollback", "intent")       # what the ledger says about the alias
UNKNOWN = object()


def _restore(model: str, previous: int | None) -> None:
    try:
        if previous is None:
            versions.delete_alias(model, versions.PRODUCTION)
        else:
            versions.set_alias(model, versions.PRODUCTION, previous)
    except Exception as exc:  # noqa: BLE001 - report the original failure, mention this one
        _log.error("could not put alias '%s' of '%s' back to %s: %s; check it with `mlops registry status`",
                   versions.PRODUCTION, model, previous, exc)


def _restore_unless_recorded(ledger: Ledger, model: str, previous: int | None, moved_to: int | None) -> None:
    """After a move whose last commit failed: put ``production`` back to ``previous`` — under the
    promotion lock, and only while the alias still names ``moved_to`` and the ledger does not
    record that move. Without the lock another promotion could get in first (confirm this move's
    intent and move on), and the put-back would undo its move; a commit whose answer was lost is
    recorded, and stays. When the lock cannot be had the alias stays where it is: the move's open
    intent is what ``mlops registry reconcile`` settles."""
    try:
        with ledger.serialized(model) as tx:
            if versions.production_version(model) != moved_to:
                return
            if ledger_production(tx.entries(actions=("promote", "rollback"))) == moved_to:
                return
            tx.commit()     # SQLite: end the read's write lock before asking MLflow (the promotion lock stays)
            _restore(model, previous)
    except Exception as exc:  # noqa: BLE001 - report the original failure, mention this one
        _log.error("could not put alias '%s' of '%s' back to %s (%s): its intent row stays open; run "
                   "`mlops registry reconcile`", versions.PRODUCTION, model, previous,
                   getattr(exc, "message", exc))


def _point(model: str, version: int | None) -> None:
    if version is None:
        versions.delete_alias(model, versions.PRODUCTION)
    else:
        versions.set_alias(model, versions.PRODUCTION, version)


def _production_or_unknown(model: str):
    try:
        return versions.production_version(model)
    except Exception:  # noqa: BLE001 - MLflow cannot tell us now: the caller says so
        return UNKNOWN


def _move_alias(tx, model: str, move: str, *, current: int | None, row: Entry,
                moved: Callable[[], None] = lambda: None) -> Entry:
    """Commit an intent row, point ``production`` at ``row.to_version``, append ``row`` (the
    ``ok`` move row, closing the intent; committed with the block).

    If the call fails, MLflow is asked where the alias is: moved (the answer was lost) -> go on
    (an interrupt: the move is recorded and committed, then the interrupt goes on up); not moved ->
    the intent is closed as failed and the error raised; no answer -> the intent stays open for
    ``reconcile`` and the error says so. ``moved()`` is called as soon as the alias is known to
    have moved, so that an interrupt from then on (before the ``ok`` row) finds the move to put back."""
    to = row.to_version
    # the intent and its closing rows carry the move's who, where, host and versions
    # ... and its details (forced, approved_by, ...): a reconcile that confirms it copies them
    intent = tx.append(replace(row, action="intent", outcome="pending", from_version=current,
                               details={**row.details, "move": move}))
    tx.commit()
    faultpoint.reached("promotion:after_intent")
    lost_answer = False
    try:
        _point(model, to)
        moved()
    except BaseException as exc:
        seen = _production_or_unknown(model)
        if seen is UNKNOWN or seen not in (to, current):
            if isinstance(exc, UserError):
                raise UserError(f"{exc.message}; whether production of '{model}' moved to {version_label(to)} "
                                f"is unknown: ledger intent #{intent.id} records the attempt, and "
                                f"`mlops registry reconcile` settles it once MLflow answers") from None
            raise
        if seen != to:
            tx.append(replace(row, action="intent", outcome="failed", from_version=current,
                              reason=f"the alias did not move: {exc}", details={"intent": intent.id}))
            tx.commit()
            raise
        if not isinstance(exc, Exception):      # Ctrl-C / SIGTERM, not a lost answer: record, then stop
            tx.append(replace(row, details={**row.details, "intent": intent.id, "interrupted": True}))
            tx.commit()
            raise
        lost_answer = True
        moved()
        _log.warning("MLflow moved production of '%s' to %s but its answer was lost; recording the move",
                     model, version_label(to))
    faultpoint.reached("promotion:after_alias")
    return tx.append(replace(row, details={**row.details, "intent": intent.id,
                                           **({"answer_lost": True} if lost_answer else {})}))


@dataclass
class _LockedMove:
    """A move of ``production`` under way inside ``production_move`` (what it read, whether it moved)."""

    tx: LockedLedger
    aliases: dict[str, int]
    current: int | None
    reconciled: list[Entry]
    moved: bool = False
    to: int | None = None

    def record(self, row: Entry, *, move_alias: bool) -> Entry:
        """Append ``row``; with ``move_alias``, through ``_move_alias`` (production to ``row.to_version``)."""
        if not move_alias:
            return self.tx.append(row)
        def moved() -> None:    # from the alias call's answer on: an interrupt before the row puts it back
            self.moved, self.to = True, row.to_version

        return _move_alias(self.tx, self.tx.model, row.action, current=self.current, row=row, moved=moved)


@contextlib.contextmanager
def production_move(ledger: Ledger, model: str, actor: str) -> Iterator[_LockedMove]:
    """What every move of ``production`` shares, in one place so the moves cannot drift apart:
    under the promotion lock, the alias is read and what the ledger missed recorded
    (``reconcile_in``) before the caller decides; if the block fails once the alias moved (its
    last commit), the alias is put back unless the ledger recorded the move."""
    locked = None
    try:
        with ledger.serialized(model) as tx:
            aliases = versions.registered_model_aliases(model)
            current = aliases.get(versions.PRODUCTION)
            locked = _LockedMove(tx, aliases, current, reconcile_in(tx, model, current, actor))
            yield locked
    except BaseException:
        if locked is not None and locked.moved:
            _restore_unless_recorded(ledger, model, locked.current, locked.to)
        raise


def reconcile_in(tx, model: str, alias: int | None, actor: str, *, announce: bool = True) -> list[Entry]:
    """Append what the alias shows and the ledger does not (see ``reconcile_rows``); ``announce``:
    each row's reason as a warning (a move's only word of it; `registry reconcile` prints its rows)."""
    entries = tx.entries(actions=VIEW)
    held = ledger_production(entries) if alias is None else None
    if held is not None:
        # SQLite: the read holds the database's write lock (BEGIN IMMEDIATE); end it (nothing is
        # appended yet) before asking MLflow, as ``_move`` does: other writers' rows would wait on
        # its answer. The promotion lock stays held.
        tx.commit()
    deleted = held is not None and not versions.version_exists(model, held)
    rows = [tx.append(r) for r in reconcile_rows(model, alias, entries, actor=actor, ledger_version_deleted=deleted)]
    for r in rows if announce else ():
        _log.warning("ledger of '%s': %s", model, r.reason)
    return rows

