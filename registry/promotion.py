"""Move ``production`` on a person's or a pipeline's word: promote, rollback, and the checks a
promotion makes (``check_deployable``, ``version_for_pipeline``).

Both moves run in ``alias_move.production_move`` (the promotion lock, intent row, alias move,
put back). Version tags mirror the key facts for the MLflow UI after the commit
(``promotion_view``: the ledger is the record; tags are a view of it), or later when the caller
defers them (``defer_tags=True``: ``mlops sync rollback`` switches the hosts first). A failed
deploy's revert is ``deploy_revert``; ``reconcile`` and ``check_agreement`` are in
``reconciliation``.
"""
from __future__ import annotations

from dataclasses import replace

from mlops_common import faultpoint, log
from mlops_common.errors import ConfigError, NotFoundError, RefusedError, UserError

from . import approver, description, promotion_view, tags, versions
from .alias_move import production_move
from .ledger import Entry, Ledger
from .move_checks import (
    approval_gate,
    check_approval_tie,
    check_forced_reason,
    check_gate_baseline,
    check_pipeline_rerun,
    check_promotable,
    check_rollback_from,
    check_rollback_tie,
    ever_held,
    gated_any,
    latest_gate,
    pipeline_move,
    production_at,
    rollback_overtaken,
)
from .promotion_rules import (
    last_real_move,
    rollback_choice,
    rollback_in_rollout,
    rollback_unfinished,
    version_label,
)
from .promotion_view import Promotion, confirmed_moves, row_promotion, tags_lag
from .provenance import Provenance, given

_log = log.get("registry.promotion")
_MOVES = ("promote", "rollback", "deploy", "intent")


def _let_in(model: str, version: int, arrived: Entry | None) -> Promotion | None:
    """The move that let ``version`` into production (``last_real_move``), as a promotion for its
    tags; None when there is none, or it was a failed deploy's automatic revert (whose target
    keeps the approver it had, on purpose)."""
    if arrived is None or arrived.to_version != version or (arrived.details or {}).get("automatic"):
        return None
    (p,) = confirmed_moves(model, [arrived])
    return p


def _refused(ledger: Ledger, model: str, action: str, version: int, by: Provenance, reason: str) -> None:
    current = versions.production_version(model)
    ledger.append(Entry(action=action, model=model, outcome="refused", from_version=current,
                        to_version=version, reason=reason, **by.row()))


def _move(model: str, action: str, *, target, by: Provenance, reason: str | None, force: bool,
          details: dict, ledger: Ledger, defer_tags: bool = False, requested: int | None = None,
          check_target=None) -> Promotion:
    """Shared body of promote and rollback. ``target(tx, current)`` picks the version under the lock;
    ``requested``: the version asked for, when the caller named one (a CircleCI rerun check);
    ``check_target(version)``: the caller's own check of the version picked, before anything
    moves (raises ``RefusedError``: recorded as refused).

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
        if gate is None and action == "promote":
            # no gate of a model that does not exist (a mistyped --model-name): say that, not "no gate"
            versions.registered_model_aliases(model)
        check_approval_tie(model, action, requested, gate, by.workflow_id)
    asked_at = None
    if by.circleci_approval and action == "rollback":
        check_rollback_tie(requested, approver.rollback_asked(by.approval_pipeline_id),
                           by.workflow_id, str(by.approval_pipeline_id))
        asked_at = approver.pipeline_created(str(by.approval_pipeline_id))
    try:
        with production_move(ledger, model, by.actor) as locked:
            tx, current, reconciled = locked.tx, locked.current, locked.reconciled
            if reconciled:
                tx.commit()       # recorded even when no target is found (a refused rollback)
            earlier = pipeline_move(tx.entries(actions=("promote", "rollback")), by.pipeline_id) \
                if by.pipeline_id else None
            if check_pipeline_rerun(model, action, current, earlier, requested):
                v, extra = current, {"rerun_of": earlier.id}
            else:
                if asked_at is not None:    # refused before anything moves: the approver did not ask for it
                    check_rollback_from(model, current, production_at(tx.entries(actions=("promote", "rollback")),
                                                                      asked_at),
                                        str(by.approval_pipeline_id), by.workflow_id)
                v, extra = target(tx, current)
            # SQLite: a read here holds the database's write lock (BEGIN IMMEDIATE); end it before
            # asking MLflow, so other models' rows (a fleet deploy's) are not held up by its answer.
            # The promotion lock stays held: no other promotion of this model gets in.
            tx.commit()
            info = versions.get_version(model, v, aliases=locked.aliases)
            try:
                check_promotable(model, info.version, info.validation_status, force=force, reason=reason)
                if check_target is not None and current != info.version:
                    check_target(info.version)
                verdicts = tx.entries(actions=("gate", "promote", "rollback"))     # one read
                arrived = last_real_move(verdicts) if current == info.version else None
                if check_gate_baseline(model, info.version, current, latest_gate(verdicts, info.version),
                                       ever_held(verdicts), force=force, gated=gated_any(verdicts)):
                    # no gate of the model in this ledger: the tag is all there is; say so, and record it
                    extra = {**extra, "trusted_tag": True}
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
    if extra.get("trusted_tag"):    # said once the move is made: a refused or failed one trusted nothing
        _log.warning("version %s of '%s' has no gate row in the ledger (none of '%s' has): its "
                     "validation_status=passed tag was trusted as it is", info.version, model, model)
    at = entry.at.isoformat(timespec="seconds")
    verb = "rolled back" if action == "rollback" else "promoted"
    if current == info.version:
        _log.info("version %s of '%s' already holds production; recorded anyway", info.version, model)
    else:
        _log.info("%s '%s': production %s -> %s by %s", verb, model,
                  current if current is not None else "(none)", info.version, by.actor)
    def write_view() -> None:
        for earlier in confirmed_moves(model, reconciled):   # e.g. a killed re-promotion's approver
            if earlier.to_version != info.version:
                promotion_view.write_view(model, earlier.to_version, earlier)
        # no longer awaiting approval; read again: another gate may have moved 'candidate' since
        if versions.registered_model_aliases(model).get(versions.CANDIDATE) == info.version:
            versions.delete_alias(model, versions.CANDIDATE)
        let_in = _let_in(model, info.version, arrived) if not promo.moved else None
        if promo.moved:
            promotion_view.write_view(model, info.version, promo)     # after the alias change: it shows the aliases
        elif let_in is not None and tags_lag(model, let_in, info.tags):
            # promoted again where it already served: who let it in stays (the ledger has both) —
            # written when the tags do not show it yet (a rerun after that move's tag writes failed)
            promotion_view.write_view(model, info.version, let_in)
        elif not info.tags.get(tags.APPROVED_BY):
            promotion_view.write_view(model, info.version, promo)
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
            ledger: Ledger | None = None, check_target=None) -> Promotion:
    """Point ``production`` at ``version`` (it must have passed the gate unless forced with a reason).

    ``provenance``: who and from where (the CLI builds it); ``actor`` alone is shorthand for one
    built from the environment. ``check_target(version)``: the caller's check that the version
    can be installed (``artifacts_check``: ``registry promote``'s; promoting an older version
    again is how a person rolls back), made before anything moves (raises ``RefusedError``)."""
    check_forced_reason(force, reason)      # a usage mistake: refused before any row, as rollback
    ledger = ledger or Ledger()
    v = versions.parse_version(version)
    return _move(model, "promote", target=lambda tx, current: (v, {}), by=given(provenance, actor),
                 reason=reason, force=force, details=details or {}, ledger=ledger, requested=v,
                 check_target=check_target)


_READ_NOW = object()


def rollback(model: str, *, to=None, reason: str | None = None, provenance: Provenance | None = None,
             actor: str | None = None, force: bool = False,
             ledger: Ledger | None = None, defer_tags: bool = False, unrolled_ok: bool = True,
             check_target=None, read_from=_READ_NOW) -> Promotion:
    """Point ``production`` back at ``to``, or at the version that held it before the current one.

    "Before" is read from the ledger, skipping versions whose deploy failed. Same checks and
    records as a promotion, marked as a rollback. ``defer_tags``: see ``_move``. ``actor``:
    shorthand for a ``provenance`` built from the environment (tests, scripts).
    ``unrolled_ok`` False (``sync rollback``): refuse a step back while the last one is not on the
    hosts yet — a rerun of a rollback killed after its move went one version further down.
    ``check_target(version)``: the caller's check that the version picked can be installed
    (``artifacts_check``: ``registry rollback``'s, ``sync rollback``'s; raises ``RefusedError``;
    nothing moves).
    ``read_from``: the production version the caller saw (``registry rollback`` and ``sync
    rollback`` read it as they start; default: read here, before waiting for the promotion lock).
    A compare-and-set: when
    another move changed production before this one held the lock, it is a no-op if production
    is already where this rollback was asked to go (``.moved`` False, ``details.already_moved``
    the other move's ledger id), else refused naming that move (``move_checks.rollback_overtaken``):
    two rollbacks at once undo one version, not two.
    """
    check_forced_reason(force, reason)      # before the default text below stands in for one
    if read_from is _READ_NOW:
        read_from = versions.production_version(model)
    by = given(provenance, actor)
    ledger = ledger or Ledger()
    explicit = versions.parse_version(to) if to is not None else None

    def target(tx, current):
        history = tx.entries(actions=_MOVES)
        already = rollback_overtaken(model, read_from, current, explicit, history)
        if already is not None:
            raise _Already(already)
        picking = explicit in (None, current)       # no other version named: this rollback picks one
        if picking:
            # the registry's versions and their tags, read under the promotion lock: read before it,
            # a version deleted (or tagged failed) while this rollback waited was still picked, and
            # the move then failed on "not found". SQLite: end the read's write lock before asking
            # MLflow (nothing is appended yet; the promotion lock stays held)
            tx.commit()
            all_versions = {i.version: i.tags for i in versions.list_versions(model)}
        rerun_check = picking and not unrolled_ok and current is not None
        pending = rollback_in_rollout(history, current) if rerun_check else None
        if pending is not None:     # a rerun of a `sync rollback` (--to N) whose deploy never finished
            raise RefusedError(f"the last rollback of '{model}' (v{pending.from_version} -> v{current}) has no "
                               f"deploy recorded since ({_why_not_deployed(pending)}): "
                               f"`mlops sync deploy` installs v{current}, or records it where the hosts serve "
                               f"it; to roll back further, `mlops sync rollback --to N`")
        unfinished = rollback_unfinished(history, current, all_versions) if rerun_check else None
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

    faultpoint.reached("rollback:after_read")
    try:
        return _move(model, "rollback", target=target, by=by, reason=reason or "rollback requested",
                     force=force, details={} if unrolled_ok else {"command": SYNC_ROLLBACK}, ledger=ledger,
                     defer_tags=defer_tags, requested=explicit, check_target=check_target)
    except _Unfinished as u:
        return _finishing(model, u.row, defer_tags=defer_tags)
    except _Already as a:
        other = row_promotion(model, a.row)       # production removed by it (a first deploy failed) too
        _log.info("production of '%s' already moved %s -> %s (%s by %s, ledger #%s) after this rollback read it; "
                  "nothing changed", model, version_label(a.row.from_version), version_label(a.row.to_version),
                  a.row.action, a.row.actor, a.row.id)
        return replace(other, moved=False, details={**(a.row.details or {}), "already_moved": a.row.id})


def artifacts_check(model: str, command: str, *, unneeded=None):
    """A rollback's or a promotion's ``check_target``: the version picked must still have its
    artifacts in the store before production moves to it. They are listed
    (``versions.missing_artifacts``, no download); some gone (a cleanup of old runs) refuse it, in
    one line naming ``command --to N`` (``command --version N`` for ``mlops registry promote``),
    unless ``unneeded(version, missing)`` says no host needs them (``mlops sync rollback``:
    every host still has that version); a ``UserError`` from it (a host that cannot be observed)
    refuses too, naming it. Without it (``mlops registry rollback`` / ``promote``: the
    hosts are not known) any file gone refuses. A listing that cannot be read (the artifact store
    or MLflow's artifact API failing) leaves it to the deploy, with a warning that says so: the
    move goes ahead unchecked, and the deploy's download fails before any host changes."""
    promoting = command.endswith(" promote")
    def check(version: int) -> None:
        try:
            missing = versions.missing_artifacts(model, version)
        except UserError as exc:
            _log.warning("could not check that v%d of '%s' still has its artifacts (%s): production moves "
                         "without that check; if they cannot be read, the deploy fails at its download, "
                         "before any host changes", version, model, exc.message)
            return
        unchecked = None
        try:
            if missing and unneeded is not None and unneeded(version, missing):
                return
        except UserError as exc:     # a host that cannot be observed may need them: refused, saying which
            unchecked = exc.message
        if not missing:
            return
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        hosts = (f"whether a host would need them could not be checked ({unchecked})" if unchecked is not None else
                 "a host would need them" if unneeded is not None
                 else "`mlops sync deploy` would need them on any host that lacks that version")
        also = ("" if unneeded is not None or not all(p.startswith("tfserving/") for p in missing)
                else f"; if every host still has v{version}, `mlops sync rollback --to {version}` checks the "
                     f"hosts and switches them")
        rerun = "rerun once it can be, " if unchecked is not None else ""
        move, instead = ((f"promote v{version} of '{model}'", f"`{command} --version N` promotes another version")
                         if promoting else
                         (f"roll '{model}' back to v{version}", f"`{command} --to N` rolls back to another version"))
        raise RefusedError(f"cannot {move}: its artifacts are gone from the artifact store ({shown} missing) and "
                           f"{hosts}; nothing was changed: {rerun}{instead} (or restore them){also}")
    return check


SYNC_ROLLBACK = "sync rollback"      # a rollback row's ``details.command``: its deploy follows at once


def _why_not_deployed(row: Entry) -> str:
    """Why the rollback ``row`` has no deploy since, as far as its row tells (rows of `sync rollback`
    say so; one written before they did, or by `registry rollback`, could be either)."""
    if (row.details or {}).get("command") == SYNC_ROLLBACK:
        return ("the deploy of its `sync rollback` recorded no rollout: it was refused (e.g. on another "
                "deploy's host lock, or a host it could not reach) or stopped")
    return "made with `registry rollback`, or its `sync rollback`'s deploy was refused (e.g. on a host lock) or stopped"


class _Already(Exception):
    """``rollback``'s target: another move put production where this rollback was asked to go after
    it read production (``move_checks.rollback_overtaken``); nothing moves or is recorded."""

    def __init__(self, row: Entry):
        super().__init__(f"already moved by ledger #{row.id}")
        self.row = row


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
    (original,) = confirmed_moves(model, [row])
    _log.info("the rollback of '%s' v%s -> v%s (ledger #%s) is on the hosts but stopped before its tags; "
              "finishing it (run again to roll back further)", model, row.from_version, row.to_version, row.id)

    def write_view() -> None:
        promotion_view.write_view(model, row.to_version, original)

    promo = replace(original, moved=False, details={**(row.details or {}), "finishes": row.id},
                    pending_view=write_view)
    if not defer_tags:
        promo.finish()
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
                        force=force, gated=gated_any(verdicts))


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
