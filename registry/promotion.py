"""Move ``production``: promote, rollback, and revert after a failed deploy.

Each move runs inside ``Ledger.serialized(model)`` (the promotion lock): read current production
-> record what the alias shows if the ledger disagrees (``reconcile_rows``) -> commit an
``intent`` row -> move the alias -> append the ``ok`` row that closes the intent -> commit. Two
promotions racing in two processes are serialized by the lock, so no row is lost and the alias
ends where the last row says. Whatever dies between the intent and the ok row (a SIGKILL, a
timeout, MLflow's answer lost after it applied the move), the ledger already names the version
the alias may be on; ``reconcile`` (also run at the start of every move) confirms or closes the
intent. If MLflow answers that the alias did not move, the intent is closed as failed; if the
alias moved but the final commit fails, the alias is put back. Version tags mirror the key facts for the
MLflow UI after the commit (the ledger is the record; tags are a view of it), or later when the
caller defers them (``defer_tags=True``: ``mlops sync rollback`` switches the hosts first).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from mlops_common import faultpoint, log
from mlops_common.errors import ConfigError, NotFoundError, RefusedError, UserError
from mlops_common.text import printable

from . import approver, description, tags, versions
from .ledger import Entry, Ledger, LockedLedger
from .promotion_rules import (
    Agreement,
    agreement,
    approval_gate,
    check_approval_tie,
    check_forced_reason,
    check_gate_baseline,
    check_pipeline_rerun,
    check_promotable,
    check_rollback_tie,
    ever_held,
    last_real_move,
    latest_gate,
    ledger_production,
    pipeline_move,
    reconcile_rows,
    rollback_choice,
    rollback_in_rollout,
    rollback_unfinished,
    version_label,
)
from .provenance import Provenance, given

_log = log.get("registry.promotion")
_MOVES = ("promote", "rollback", "deploy", "intent")
_VIEW = ("promote", "rollback", "intent")       # what the ledger says about the alias
_UNKNOWN = object()


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


def _write_view(model: str, version: int | None, p: Promotion) -> None:
    """The registry's view of a move: the tag, then both versions' descriptions."""
    if version is not None:
        versions.set_tags(model, version, promotion_tags(p))
    description.refresh_quietly(model, version, p.from_version)


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
        return _UNKNOWN


def _move_alias(tx, model: str, move: str, *, current: int | None, row: Entry) -> Entry:
    """Commit an intent row, point ``production`` at ``row.to_version``, append ``row`` (the
    ``ok`` move row, closing the intent; committed with the block).

    If the call fails, MLflow is asked where the alias is: moved (the answer was lost) -> go on
    (an interrupt: the move is recorded and committed, then the interrupt goes on up); not moved ->
    the intent is closed as failed and the error raised; no answer -> the intent stays open for
    ``reconcile`` and the error says so."""
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
    except BaseException as exc:
        seen = _production_or_unknown(model)
        if seen is _UNKNOWN or seen not in (to, current):
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
        _log.warning("MLflow moved production of '%s' to %s but its answer was lost; recording the move",
                     model, version_label(to))
    faultpoint.reached("promotion:after_alias")
    return tx.append(replace(row, details={**row.details, "intent": intent.id,
                                           **({"answer_lost": True} if lost_answer else {})}))


@dataclass
class _LockedMove:
    """A move of ``production`` under way inside ``_production_move`` (what it read, whether it moved)."""

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
        entry = _move_alias(self.tx, self.tx.model, row.action, current=self.current, row=row)
        self.moved, self.to = True, row.to_version
        return entry


@contextlib.contextmanager
def _production_move(ledger: Ledger, model: str, actor: str) -> Iterator[_LockedMove]:
    """What every move of ``production`` shares, in one place so the moves cannot drift apart:
    under the promotion lock, the alias is read and what the ledger missed recorded
    (``_reconcile_in``) before the caller decides; if the block fails once the alias moved (its
    last commit), the alias is put back unless the ledger recorded the move."""
    locked = None
    try:
        with ledger.serialized(model) as tx:
            aliases = versions.registered_model_aliases(model)
            current = aliases.get(versions.PRODUCTION)
            locked = _LockedMove(tx, aliases, current, _reconcile_in(tx, model, current, actor))
            yield locked
    except BaseException:
        if locked is not None and locked.moved:
            _restore_unless_recorded(ledger, model, locked.current, locked.to)
        raise


def _reconcile_in(tx, model: str, alias: int | None, actor: str) -> list[Entry]:
    """Append what the alias shows and the ledger does not (see ``reconcile_rows``)."""
    entries = tx.entries(actions=_VIEW)
    held = ledger_production(entries) if alias is None else None
    if held is not None:
        # SQLite: the read holds the database's write lock (BEGIN IMMEDIATE); end it (nothing is
        # appended yet) before asking MLflow, as ``_move`` does: other writers' rows would wait on
        # its answer. The promotion lock stays held.
        tx.commit()
    deleted = held is not None and not versions.version_exists(model, held)
    rows = [tx.append(r) for r in reconcile_rows(model, alias, entries, actor=actor, ledger_version_deleted=deleted)]
    for r in rows:
        _log.warning("ledger of '%s': %s", model, r.reason)
    return rows


def ledger_view(model: str, *, ledger: Ledger | None = None) -> list[Entry]:
    """What the ledger says about ``model``'s ``production`` alias: its current promote, rollback
    and intent rows (one read; ``registry status`` passes them to ``check_agreement`` and
    ``history.status_rows``)."""
    return (ledger or Ledger()).entries(model, actions=_VIEW, current=True)


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
    with ledger.serialized(model) as tx:
        found = agreement(versions.production_version(model), tx.entries(actions=_VIEW))
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
        rows = _reconcile_in(tx, model, alias, by.actor)
        moves = _confirmed_moves(model, rows, by.actor)
        entries = tx.entries(actions=_VIEW)
        # commit the rows (SQLite: and end the read's write lock) before asking MLflow; the
        # promotion lock stays held: no move's row lands between what is read here and the writes
        tx.commit()
        written = moves[-1].to_version if moves else None      # its view is written below, as before
        stale = []
        for info in versions.list_versions(model):
            who = description.approver_to_restore(info.tags, description.current(entries, info.created_at),
                                                  info.version)
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
            _write_view(model, p.to_version, p)
        except UserError as exc:      # the rows are committed: a rerun finds the tags behind and writes them
            raise UserError(f"the ledger records production of '{model}' at {version_label(p.to_version)} "
                            f"(ledger #{p.ledger_id}), but the version tags that show it in the MLflow UI could "
                            f"not be written ({exc.message}); rerun `mlops registry reconcile` once MLflow "
                            f"answers") from None
    return Reconciliation(model, alias, rows, retagged_versions=[v for v, _ in stale])


def _tags_lag(model: str, p: Promotion, shown: dict[str, str] | None = None) -> bool:
    """Whether ``p``'s version does not show ``p`` yet (its approver tag differs): a reconcile or
    promotion whose tag writes failed after its row was committed. ``shown``: the version's tags
    if the caller just read them."""
    if p.to_version is None:
        return False
    if shown is None:
        shown = versions.get_version(model, p.to_version).tags
    return any(shown.get(k) != v for k, v in promotion_tags(p).items())


def _let_in(model: str, version: int, arrived: Entry | None) -> Promotion | None:
    """The move that let ``version`` into production (``last_real_move``), as a promotion for its
    tags; None when there is none, or it was a failed deploy's automatic revert (whose target
    keeps the approver it had, on purpose)."""
    if arrived is None or arrived.to_version != version or (arrived.details or {}).get("automatic"):
        return None
    (p,) = _confirmed_moves(model, [arrived])
    return p


def _confirmed_moves(model: str, rows: list[Entry], actor: str | None = None) -> list[Promotion]:
    """The moves reconciliation recorded, as promotions for the version tags: the tag shows who
    the ledger row names (and its approver), not who reconciled."""
    out = []
    for r in rows:
        if r.action == "intent" or r.to_version is None:
            continue
        mover = Provenance(actor=r.actor or actor or "", approved_by=r.details.get("approved_by"),
                           pipeline_id=r.pipeline_id)
        out.append(Promotion(model=model, action=r.action, from_version=r.from_version, to_version=r.to_version,
                             provenance=mover, reason=r.reason, at=r.at.isoformat(timespec="seconds"),
                             ledger_id=r.id, forced=bool(r.details.get("forced"))))
    return out


def _refused(ledger: Ledger, model: str, action: str, version: int, by: Provenance, reason: str) -> None:
    current = versions.production_version(model)
    ledger.append(Entry(action=action, model=model, outcome="refused", from_version=current,
                        to_version=version, reason=reason, **by.row()))


def _move(model: str, action: str, *, target, by: Provenance, reason: str | None, force: bool,
          details: dict, ledger: Ledger, defer_tags: bool = False, requested: int | None = None) -> Promotion:
    """Shared body of promote and rollback. ``target(tx, current)`` picks the version under the lock;
    ``requested``: the version asked for, when the caller named one (a CircleCI rerun check).

    ``defer_tags``: the ledger row and the alias move happen here (under the lock, in that
    order); the version tags, a view of the ledger row for the MLflow UI, wait for
    ``Promotion.finish()`` — ``mlops sync rollback`` switches the hosts first.

    A CircleCI approval (``by.circleci_approval``) approves the move it was given for only
    (``check_approval_tie``; a rollback's, the rollback its pipeline's ``rollback-to`` names, read
    from CircleCI: ``check_rollback_tie``); refused before anything is written, as the approver did
    not ask for this move (a refusal row would name them)."""
    if by.circleci_approval:
        gate = approval_gate(ledger.entries(model, actions=("gate",), current=True), by.workflow_id,
                             by.approval_pipeline_id)
        check_approval_tie(model, action, requested, gate, by.workflow_id)
        if action == "rollback":
            check_rollback_tie(requested, approver.rollback_asked(by.approval_pipeline_id),
                               by.workflow_id, str(by.approval_pipeline_id))
    try:
        with _production_move(ledger, model, by.actor) as locked:
            tx, current, reconciled = locked.tx, locked.current, locked.reconciled
            if reconciled:
                tx.commit()       # recorded even when no target is found (a refused rollback)
            earlier = pipeline_move(tx.entries(actions=("promote", "rollback")), by.pipeline_id) \
                if by.pipeline_id else None
            if check_pipeline_rerun(model, action, current, earlier, requested):
                v, extra = current, {"rerun_of": earlier.id}
            else:
                v, extra = target(tx, current)
            # SQLite: a read here holds the database's write lock (BEGIN IMMEDIATE); end it before
            # asking MLflow, so other models' rows (a fleet deploy's) are not held up by its answer.
            # The promotion lock stays held: no other promotion of this model gets in.
            tx.commit()
            info = versions.get_version(model, v, aliases=locked.aliases)
            try:
                check_promotable(model, info.version, info.validation_status, force=force, reason=reason)
                verdicts = tx.entries(actions=("gate", "promote", "rollback"))     # one read
                arrived = last_real_move(verdicts) if current == info.version else None
                check_gate_baseline(model, info.version, current, latest_gate(verdicts, info.version),
                                    ever_held(verdicts), force=force)
            except RefusedError as exc:
                raise _Refusal(info.version, exc) from None
            entry = locked.record(Entry(
                action=action, model=model, outcome="ok", from_version=current, to_version=info.version,
                reason=reason, **by.row(),
                details={**details, **extra, "forced": force, "approved_by": by.approved_by,
                         "validation_status": info.validation_status}), move_alias=current != info.version)
    except _Refusal as r:
        _refused(ledger, model, action, r.version, by, str(r.error))
        raise r.error from None
    at = entry.at.isoformat(timespec="seconds")
    verb = "rolled back" if action == "rollback" else "promoted"
    if current == info.version:
        _log.info("version %s of '%s' already holds production; recorded anyway", info.version, model)
    else:
        _log.info("%s '%s': production %s -> %s by %s", verb, model,
                  current if current is not None else "(none)", info.version, by.actor)
    def write_view() -> None:
        for earlier in _confirmed_moves(model, reconciled):   # e.g. a killed re-promotion's approver
            if earlier.to_version != info.version:
                _write_view(model, earlier.to_version, earlier)
        # no longer awaiting approval; read again: another gate may have moved 'candidate' since
        if versions.registered_model_aliases(model).get(versions.CANDIDATE) == info.version:
            versions.delete_alias(model, versions.CANDIDATE)
        let_in = _let_in(model, info.version, arrived) if not promo.moved else None
        if promo.moved:
            _write_view(model, info.version, promo)     # after the alias change: it shows the aliases
        elif let_in is not None and _tags_lag(model, let_in, info.tags):
            # promoted again where it already served: who let it in stays (the ledger has both) —
            # written when the tags do not show it yet (a rerun after that move's tag writes failed)
            _write_view(model, info.version, let_in)
        elif not info.tags.get(tags.APPROVED_BY):
            _write_view(model, info.version, promo)
        else:
            description.refresh_quietly(model, info.version)

    promo = Promotion(model=model, action=action, from_version=current, to_version=info.version,
                      provenance=by, reason=reason, at=at, ledger_id=entry.id,
                      moved=current != info.version, forced=force, details={**details, **extra},
                      pending_view=write_view)
    if not defer_tags:
        promo.finish()
    return promo


class _Refusal(Exception):
    def __init__(self, version: int, error: RefusedError):
        super().__init__(str(error))
        self.version, self.error = version, error


def promote(model: str, version, *, provenance: Provenance | None = None, actor: str | None = None,
            reason: str | None = None, force: bool = False, details: dict | None = None,
            ledger: Ledger | None = None) -> Promotion:
    """Point ``production`` at ``version`` (it must have passed the gate unless forced with a reason).

    ``provenance``: who and from where (the CLI builds it); ``actor`` alone is shorthand for one
    built from the environment."""
    check_forced_reason(force, reason)      # a usage mistake: refused before any row, as rollback
    ledger = ledger or Ledger()
    v = versions.parse_version(version)
    return _move(model, "promote", target=lambda tx, current: (v, {}), by=given(provenance, actor),
                 reason=reason, force=force, details=details or {}, ledger=ledger, requested=v)


def rollback(model: str, *, to=None, reason: str | None = None, provenance: Provenance | None = None,
             actor: str | None = None, force: bool = False,
             ledger: Ledger | None = None, defer_tags: bool = False, unrolled_ok: bool = True) -> Promotion:
    """Point ``production`` back at ``to``, or at the version that held it before the current one.

    "Before" is read from the ledger, skipping versions whose deploy failed. Same checks and
    records as a promotion, marked as a rollback. ``defer_tags``: see ``_move``. ``actor``:
    shorthand for a ``provenance`` built from the environment (tests, scripts).
    ``unrolled_ok`` False (``sync rollback``): refuse a step back while the last one is not on the
    hosts yet — a rerun of a rollback killed after its move went one version further down.
    """
    check_forced_reason(force, reason)      # before the default text below stands in for one
    by = given(provenance, actor)
    ledger = ledger or Ledger()
    explicit = versions.parse_version(to) if to is not None else None
    all_versions = {i.version: i.tags for i in versions.list_versions(model)}

    def target(tx, current):
        history = tx.entries(actions=_MOVES)
        pending = (rollback_in_rollout(history, current)
                   if not unrolled_ok and current is not None and explicit in (None, current) else None)
        if pending is not None:     # a rerun of a `sync rollback` (--to N) whose deploy never finished
            raise RefusedError(f"the last rollback of '{model}' (v{pending.from_version} -> v{current}) has no "
                               f"deploy recorded since (interrupted, or made with `registry rollback`): "
                               f"`mlops sync deploy` installs v{current}, or records it where the hosts serve "
                               f"it; to roll back further, `mlops sync rollback --to N`")
        unfinished = (rollback_unfinished(history, current, all_versions)
                      if not unrolled_ok and current is not None and explicit in (None, current) else None)
        if unfinished is not None:  # a rerun of a `sync rollback` stopped after its rollout, before its tags
            raise _Unfinished(unfinished)
        if explicit is not None:
            if explicit == current:
                raise RefusedError(f"version {explicit} of '{model}' already holds production; "
                                   f"nothing to roll back")
            return explicit, {"rollback_of": current}
        if current is None:
            raise NotFoundError(f"nothing to roll back to for '{model}': no version holds production; "
                                f"use `mlops registry promote --version N`")
        choice = rollback_choice(history, all_versions, current)
        if choice.version is None:
            skipped = sorted(set(choice.skipped_failed) | set(choice.skipped_deleted))
            raise NotFoundError(
                f"nothing to roll back to for '{model}': the ledger shows no earlier production "
                f"version than {current}" + (f" whose deploy did not fail and that still exists (skipped "
                                             f"{skipped})" if skipped else "")
                + "; use `mlops registry promote --version N`")
        details = {"rollback_of": current, "skipped_failed": list(choice.skipped_failed)}
        if choice.skipped_deleted:
            details["skipped_deleted"] = list(choice.skipped_deleted)
        return choice.version, details

    try:
        return _move(model, "rollback", target=target, by=by, reason=reason or "rollback requested",
                     force=force, details={}, ledger=ledger, defer_tags=defer_tags, requested=explicit)
    except _Unfinished as u:
        return _finishing(model, u.row, defer_tags=defer_tags)


class _Unfinished(Exception):
    """``rollback``'s target: the last rollback is on the hosts but its command stopped before its
    tags (``promotion_rules.rollback_unfinished``); no new move, that one is finished."""

    def __init__(self, row: Entry):
        super().__init__(f"rollback #{row.id} unfinished")
        self.row = row


def _finishing(model: str, row: Entry, *, defer_tags: bool) -> Promotion:
    """The rollback ``row`` again, as the promotion that finishes it: nothing moves or is
    recorded (its rows are in the ledger); its view (``to_version``'s approver, both
    descriptions) is written by ``finish()``, the tag of the version rolled back from by the
    deploy that follows (every host already serves ``to_version``: ``fleet._tag_rolled_back``)."""
    (original,) = _confirmed_moves(model, [row])
    _log.info("the rollback of '%s' v%s -> v%s (ledger #%s) is on the hosts but stopped before its tags; "
              "finishing it (run again to roll back further)", model, row.from_version, row.to_version, row.id)

    def write_view() -> None:
        _write_view(model, row.to_version, original)

    promo = replace(original, moved=False, details={**(row.details or {}), "finishes": row.id},
                    pending_view=write_view)
    if not defer_tags:
        promo.finish()
    return promo


def show_rolled_out(model: str, row: Entry) -> bool:
    """The registry's view of the person's rollback ``row`` (its approver on ``row.to_version``,
    both descriptions), written by the deploy that puts it on the hosts when the tags do not show
    it yet: a `sync rollback` killed between its move and ``Promotion.finish()`` never wrote it,
    and `registry status` then took the stale tag for one changed outside mlops. Returns whether
    it wrote (one read of the version when it did not)."""
    (p,) = _confirmed_moves(model, [row])
    if not _tags_lag(model, p):
        return False
    _write_view(model, row.to_version, p)
    return True


def revert_failed_deploy(model: str, failed_version, to_version, reason: str,
                         actor: str | None = None, *, host: str | None = None, host_was: int | None = _UNKNOWN,
                         ledger: Ledger | None = None, provenance: Provenance | None = None) -> Promotion:
    """After a failed deploy: production back to ``to_version``, failed version tagged, rows recorded.

    Records a ``deploy`` row (outcome failed) for ``failed_version`` and a ``rollback`` row.
    The alias is only moved if it still points at ``failed_version``; if someone promoted another
    version meanwhile it is left alone (the rollback row then says ``refused`` and why).
    ``to_version`` None removes ``production`` (the first deploy ever failed). ``actor``:
    shorthand for a ``provenance`` built from the environment. ``host_was``: what ``host``
    served before the deploy (the failed ``deploy`` row's ``from_version``; default ``to_version``).
    """
    by = given(provenance, actor)
    ledger = ledger or Ledger()
    failed = versions.parse_version(failed_version)
    to = versions.parse_version(to_version) if to_version is not None else None
    versions.get_version(model, failed)
    from . import deploys

    deploys.tag(model, failed, deploys.FAILED, reason)      # first: whatever happens next, it failed
    if to is not None:
        versions.get_version(model, to)
    with _production_move(ledger, model, by.actor) as locked:     # a killed promotion's move is recorded first
        current = locked.current
        locked.tx.append(Entry(action="deploy", model=model, outcome="failed",
                               from_version=to if host_was is _UNKNOWN else host_was,
                               to_version=failed, host=host, reason=reason, **by.row()))
        if current == failed:
            entry = locked.record(Entry(
                action="rollback", model=model, outcome="ok", from_version=failed, to_version=to,
                host=host, reason=reason, **by.row(),
                details={"after_failed_deploy": failed, "automatic": True}), move_alias=True)
        else:
            why = (f"production is version {current} now, not the failed {failed}; "
                   f"left it alone")
            entry = locked.tx.append(Entry(action="rollback", model=model, outcome="refused",
                                           from_version=failed, to_version=to, host=host,
                                           reason=f"{reason} ({why})", **by.row()))
            _log.warning("not moving production of '%s': %s", model, why)
    at = entry.at.isoformat(timespec="seconds")
    promo = Promotion(model=model, action="rollback", from_version=failed, to_version=to,
                      provenance=by, reason=reason, at=at, ledger_id=entry.id, moved=locked.moved,
                      details={"after_failed_deploy": failed, "production_was": current})
    if locked.moved:     # `to` keeps the approver it had; both descriptions show the rollback
        description.refresh_quietly(model, to, failed)
    else:                # the tag rebuilt it before the failed deploy row
        description.refresh_quietly(model, failed)
    return promo


def check_deployable(model: str, version: int, *, force: bool = False, reason: str | None = None,
                     ledger: Ledger | None = None) -> None:
    """``mlops sync deploy --version N`` (and ``sync plan``'s answer to it): the version goes on the
    hosts' ``stable`` label without an approval or a move of ``production``, so it must pass what
    a promotion of it would — ``check_promotable`` and ``check_gate_baseline`` (a verdict against
    an earlier production says nothing about today's) — unless forced with a reason. Production
    itself was checked when it was promoted. Reads only; ``RefusedError`` when refused."""
    current = versions.production_version(model)
    if version == current:
        return
    info = versions.get_version(model, version)
    check_promotable(model, info.version, info.validation_status, force=force, reason=reason)
    verdicts = (ledger or Ledger()).entries(model, actions=("gate", "promote", "rollback"), current=True)
    check_gate_baseline(model, info.version, current, latest_gate(verdicts, info.version), ever_held(verdicts),
                        force=force)


def version_for_pipeline(model: str, pipeline_id: str, version: int | None = None) -> int:
    """The version a CircleCI pipeline may promote: the one it registered (tag ``pipeline_id``),
    never whatever ``candidate`` points at now; ``version``, when given, must be that one."""
    # also a version registered before the tag's rename (``ci.pipeline_id``), as ``tags.read`` reads it
    found = sorted({(i.model, i.version): i for name in (tags.PIPELINE_ID, tags.LEGACY[tags.PIPELINE_ID])
                    for i in versions.find_by_tag(name, pipeline_id)
                    if tags.read(i.tags, tags.PIPELINE_ID) == pipeline_id}.values(), key=lambda i: (i.model, i.version))
    mine = [i for i in found if i.model == model]
    if version is not None:
        if any(i.version == version for i in mine):
            return version
        info = versions.get_version(model, version)  # NotFoundError if it does not exist at all
        tagged = tags.read(info.tags, tags.PIPELINE_ID)
        raise RefusedError(f"version {version} of '{model}' was registered by "
                           f"{'pipeline ' + tagged if tagged else 'no CircleCI pipeline'}, not by "
                           f"pipeline {pipeline_id}; refusing to promote another pipeline's version")
    if len(mine) == 1:
        return mine[0].version
    if len(mine) > 1:
        raise ConfigError(f"CircleCI pipeline {pipeline_id} registered several versions of '{model}' "
                          f"({', '.join('v' + str(i.version) for i in mine)}); promote one with --version N")
    if found:
        others = ", ".join(f"'{i.model}' v{i.version}" for i in found)
        raise ConfigError(f"CircleCI pipeline {pipeline_id} registered {others}, not a version of "
                          f"'{model}'; check --model-name / MLOPS_MODEL_NAME")
    raise NotFoundError(f"no version of any registered model is tagged pipeline_id={pipeline_id}; "
                        f"check the pipeline id (the train job of that pipeline registers it)")
