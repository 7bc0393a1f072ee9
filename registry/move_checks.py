"""May this move of ``production`` happen? Pure checks on plain data (ledger entries, a version's
status), each raising ``RefusedError`` with what to do instead.

- ``check_promotable``: may this version become production?
- ``check_gate_baseline``: did its passing gate compare it with today's production?
- ``approval_gate`` / ``check_approval_tie``: is a CircleCI approval used for the move it was
  given for (the version its pipeline gated; a rollback's approval followed no gate)?
  ``check_rollback_tie``: and a rollback's, for the version its pipeline's ``rollback-to`` names?
- ``pipeline_move`` / ``check_pipeline_rerun``: a CircleCI pipeline moves production once.
- ``production_at`` / ``check_rollback_from``: a rollback pipeline rolls back the production it was
  triggered against, not a newer one promoted while its approval waited.
- ``rollback_overtaken``: a rollback rolls back the production its command read, not the one
  another move (two people on call rolling back at once) left by the time it held the lock.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from mlops_common.errors import ConfigError, RefusedError

from .ledger import SERVER_MS, Entry
from .promotion_rules import MOVES, last_real_move, version_label
from .versions import parse_version


def check_forced_reason(force: bool, reason: str | None) -> None:
    """``--force`` only with a reason a person wrote (a default text is not one)."""
    if force and not (reason and reason.strip()):
        raise RefusedError("--force needs --reason \"...\" saying why the gate is bypassed; "
                           "it is recorded in the ledger and on the version")


def check_promotable(model: str, version: int, validation_status: str, *, force: bool = False,
                     reason: str | None = None) -> None:
    """Raise ``RefusedError`` unless the version passed the gate (or is forced with a reason)."""
    check_forced_reason(force, reason)
    if validation_status != "passed" and not force:
        raise RefusedError(f"version {version} of '{model}' has validation_status="
                           f"{validation_status or 'pending'}, not passed; run `mlops registry gate "
                           f"--version {version}` first, or use --force --reason \"...\"")


def latest_gate(entries: Iterable[Entry], version: int) -> Entry | None:
    """The newest ``gate`` row of ``version`` (None when the ledger has none)."""
    last = None
    for e in entries:
        if e.action == "gate" and e.to_version == version:
            last = e
    return last


def approval_gate(entries: Iterable[Entry], workflow_id: str, pipeline_id: str | None) -> Entry | None:
    """The gate a CircleCI approval in ``workflow_id`` was given after: the last ``gate`` row of
    that workflow (the gate job runs before the approval job in it), else the last of its pipeline
    ``pipeline_id`` (a rerun from failed is a new workflow of the same pipeline, where the gate
    job that passed does not run again); None when neither gated a version."""
    gates = [e for e in entries if e.action == "gate"]
    mine = [e for e in gates if e.workflow_id == workflow_id] or \
        ([e for e in gates if e.pipeline_id == pipeline_id] if pipeline_id else [])
    return mine[-1] if mine else None


def check_approval_tie(model: str, action: str, version: int | None, gate: Entry | None, workflow_id: str) -> None:
    """Raise ``RefusedError`` when a CircleCI approval is used for another move than the one it was
    given for. The approval job of build-deploy / retrain-deploy follows the gate of the version
    that pipeline trained: a promotion it approves must be of that version, and that gate passed
    (``gate``: ``approval_gate``). The rollback workflow has an approval and no gate: a rollback
    it approves must not use an approval that followed a gate (that one approved a version)."""
    fix = "or without CircleCI with --actor"
    if action == "promote":
        if gate is None:
            raise RefusedError(f"the approval in CircleCI workflow {workflow_id} follows no gate of '{model}' (its "
                               f"pipeline gated no version; a rollback's approval?), so it approves no version: "
                               f"promote {version} from the workflow that gated it, {fix}")
        if gate.to_version != version:
            raise RefusedError(f"the approval in CircleCI workflow {workflow_id} was given for version "
                               f"{gate.to_version} (gated there), not version {version}: promote {version} from "
                               f"the workflow that gated it, {fix}")
        if gate.outcome != "passed":
            raise RefusedError(f"version {version} of '{model}' failed its gate in CircleCI workflow {workflow_id} "
                               f"(ledger #{gate.id}), so its approval there approves nothing: gate it again in a "
                               f"new pipeline, {fix}")
    elif gate is not None:
        raise RefusedError(f"the approval in CircleCI workflow {workflow_id} was given for version "
                           f"{gate.to_version} (gated there), not for a rollback: roll back from the rollback "
                           f"workflow (run-rollback=true), {fix}")


def check_rollback_tie(requested: int | None, asked: list[str], workflow_id: str,
                       pipeline_id: str) -> None:
    """Raise ``RefusedError`` when a rollback workflow's CircleCI approval is used for another
    rollback than the one its pipeline was triggered for. ``asked``: the ``rollback-to`` values of
    that pipeline's compiled config (``approver.rollback_asked``; ``""``: empty, the previous
    production version); ``requested``: the ``--to`` of this rollback (None: the previous one). The
    approver saw the pipeline's parameters: the rollback they approved is that one only."""
    fix = "or without CircleCI with --actor"
    values = set(asked)
    if not values:
        raise RefusedError(f"the approval in CircleCI workflow {workflow_id} approves no rollback: its pipeline "
                           f"{pipeline_id} sets no rollback-to (ROLLBACK_TO) in its configuration; roll back from "
                           f"the rollback workflow (run-rollback=true), {fix}")
    if len(values) > 1:
        raise RefusedError(f"the configuration of CircleCI pipeline {pipeline_id} sets ROLLBACK_TO to "
                           f"{', '.join(repr(v) for v in sorted(values))}: which rollback its approval in workflow "
                           f"{workflow_id} was for is ambiguous; roll back from a rollback workflow, {fix}")
    (text,) = values
    if text:
        try:
            named = parse_version(text)     # as `mlops registry rollback --to "$ROLLBACK_TO"` reads it
        except ConfigError:
            raise RefusedError(f"CircleCI pipeline {pipeline_id} was triggered with rollback-to {text!r}, not a "
                               f"version number: its approval in workflow {workflow_id} approves no rollback; "
                               f"trigger it again with rollback-to=N, {fix}") from None
    else:
        named = None
    if named != requested:
        def what(v: int | None) -> str:
            return "the previous production version" if v is None else f"version {v}"

        def param(v: int | None) -> str:
            return "rollback-to empty" if v is None else f"rollback-to={v}"
        raise RefusedError(f"the approval in CircleCI workflow {workflow_id} was given for a rollback to "
                           f"{what(named)} (pipeline {pipeline_id} was triggered with {param(named)}), not to "
                           f"{what(requested)}: trigger a rollback pipeline with {param(requested)} and have it "
                           f"approved, {fix}")


def ever_held(entries: Iterable[Entry]) -> set[int]:
    """Every version an ``ok`` promotion or rollback made production at some point."""
    return {e.to_version for e in entries if e.action in MOVES and e.outcome == "ok" and e.to_version is not None}


def pipeline_move(entries: Iterable[Entry], pipeline_id: str) -> Entry | None:
    """The last move of production a CircleCI pipeline made itself (a failed deploy's automatic
    revert is not one): CircleCI reruns a whole job, and its promote or rollback step ran again."""
    own = [e for e in entries if e.action in MOVES and e.outcome == "ok" and e.pipeline_id == pipeline_id
           and not (e.details or {}).get("automatic")]
    return own[-1] if own else None


def check_pipeline_rerun(model: str, action: str, current: int | None, earlier: Entry | None,
                         requested: int | None) -> bool:
    """A pipeline moves production once: its job run again asks for the same move (``requested``:
    the version asked for; None, a rollback to "the previous one"). True: production is where that
    job put it, so the move is a no-op (the deploy after it resumes). ``RefusedError``: production
    moved since — the rerun promoted its failed version again, or rolled back one version
    further. Another move in the same pipeline (another version) is not a rerun."""
    if earlier is None or earlier.action != action or requested not in (None, earlier.to_version):
        return False
    if earlier.to_version != current:
        # `registry promote --pipeline-id` by hand is this pipeline's move too: name the command that is not
        by_hand = (f"`mlops registry promote --version {earlier.to_version}` (without --pipeline-id)"
                   if action == "promote" else "`mlops registry rollback --to N`")
        raise RefusedError(
            f"this CircleCI pipeline already moved production of '{model}' to "
            f"{version_label(earlier.to_version)} (ledger #{earlier.id}), and it is {version_label(current)} now "
            f"(its deploy failed and moved it back, or another move came since): a pipeline moves production "
            f"once; start a new pipeline, or move it by hand outside CircleCI with {by_hand}")
    return True


def production_at(entries: Iterable[Entry], when) -> int | None:
    """The version the ledger's ``ok`` moves had made production at ``when`` (CircleCI's clock; None:
    none yet). A move's time is its ``SERVER_MS`` stamp (the MLflow server's clock), not the row's
    ``at`` (its writer's: a laptop ten minutes behind made a promotion after the trigger count as
    before it, and the rollback undid it; found by review, twenty-second stop); a row from before
    the stamps goes by its ``at``. The stamp comes from a ``Date`` header, coarse and late: see
    ``_moved_at``."""
    held = None
    for e in entries:
        if e.action in MOVES and e.outcome == "ok" and (moved := _moved_at(e)) is not None and moved <= when:
            held = e.to_version
    return held


# How late a ``SERVER_MS`` stamp may be: a ``Date`` header has whole seconds, and the MLflow
# server's (uvicorn's) is refreshed about once a second, so a move came up to ~2 s after its stamp
# (measured here: 1.4 s); a margin above that for a loaded server.
STAMP_LATE_MS = 5000


def _moved_at(e: Entry) -> datetime | None:
    """When ``e`` moved production: its writer's ``at`` when that lies in the span its
    ``SERVER_MS`` stamp allows (the clocks agree; the finer figure), else the end of that span.
    A move is never taken for earlier than it could have been: one just after a rollback
    pipeline's trigger read as before it made the approved rollback undo it (exit 0; the stamp
    alone did, being up to ~2 s early), where one just before read as after only refuses the
    rollback in one line (a new pipeline is triggered)."""
    ms = (e.details or {}).get(SERVER_MS) if isinstance(e.details, dict) else None
    if not isinstance(ms, int) or isinstance(ms, bool):
        return e.at
    lo = datetime.fromtimestamp(ms / 1000, timezone.utc)
    hi = datetime.fromtimestamp((ms + STAMP_LATE_MS) / 1000, timezone.utc)
    return e.at if e.at is not None and lo <= e.at < hi else hi


def check_rollback_from(model: str, current: int | None, then: int | None, pipeline_id: str,
                        workflow_id: str) -> None:
    """Raise ``RefusedError`` when production moved between the trigger of the rollback pipeline
    whose approval is used (``then``: production when it was triggered) and now: that rollback
    was asked to take production off ``then``; applied now it would undo a newer promotion
    (a rollback to "the previous one" even back onto ``then``)."""
    if current != then:
        raise RefusedError(
            f"production of '{model}' is {version_label(current)} now, but was {version_label(then)} when CircleCI "
            f"pipeline {pipeline_id} asked for this rollback: the approval in workflow {workflow_id} was for "
            f"a rollback from {version_label(then)}; trigger a new rollback pipeline if "
            f"{version_label(current)} should go, or roll back without CircleCI with --actor")


def rollback_overtaken(model: str, read: int | None, current: int | None, explicit: int | None,
                       moves: Iterable[Entry]) -> Entry | None:
    """A compare-and-set: the rollback read production as ``read`` before it waited for the
    promotion lock and finds ``current`` under it. Unchanged: None, the rollback goes on. Moved
    meanwhile by the move ``moves``' newest (``last_real_move``): that row when production is
    already where this rollback was asked to go (``--to`` it, or without ``--to`` a rollback off
    ``read`` made by someone else: two people on call undoing the same version) — a no-op;
    anything else raises ``RefusedError`` naming who moved it to what (stepping back from
    ``current`` would undo a move this rollback's person never saw)."""
    if current == read:
        return None
    last = last_real_move(moves)
    if last is not None and last.to_version == current:
        if explicit is not None and explicit == current:
            return last
        if explicit is None and last.action == "rollback" and last.from_version == read:
            return last
    by = (f" ({last.action} by {last.actor or 'unknown'}, ledger #{last.id})"
          if last is not None and last.to_version == current else "")
    raise RefusedError(
        f"production of '{model}' moved from {version_label(read)} to {version_label(current)}{by} after this "
        f"rollback read it: nothing was changed; to roll back {version_label(current)} as well, run the "
        f"rollback again")


def gated_any(entries: Iterable[Entry]) -> bool:
    """Does the ledger hold a ``gate`` row of the model (its versions are gated through mlops)?"""
    return any(e.action == "gate" for e in entries)


def check_gate_baseline(model: str, version: int, current: int | None, gate: Entry | None,
                        held: set[int], *, force: bool = False, gated: bool = False) -> bool:
    """Raise ``RefusedError`` when ``version``'s passing gate compared it with another version
    than the one in production now.

    Two pipelines that overlap at the approval both pass their gates against v1; once one is
    promoted, the other's verdict says nothing about how it compares with the new production
    (it may be far worse). A version that held production before (promoting it again is how a
    person rolls back), the version already in production and a forced move are not refused here.

    A version with no ``gate`` row, while the ledger holds gate rows of the model (``gated``:
    ``gated_any``; its versions go through ``mlops registry gate``), is refused: its ``passed``
    tag was set by hand (MLflow UI or API), and a tag anyone with write access to the registry
    can set is no verdict. With no gate row of the model at all (a ledger started after its
    versions were gated) the tag is all there is, and it is trusted (the move says so).

    Called after ``check_promotable`` (the tag says ``passed``): a latest gate row that did not
    pass disagrees with the tag. Two gates of the version at once can leave it so (one's
    ``failed`` row after the other's ``passed`` row, the ``passed`` tag last); which verdict
    holds is not known, so it is refused until gated again.

    Returns True when the move trusts the tag alone (no gate row of the model at all), which the
    move records and says."""
    if force or version == current or version in held:
        return False
    if gate is None:
        if gated:
            raise RefusedError(
                f"version {version} of '{model}' is tagged validation_status=passed but the ledger has no gate of "
                f"it (the tag was set outside `mlops registry gate`, in the MLflow UI or API): run `mlops registry "
                f"gate --version {version}`, or use --force --reason \"...\"")
        return True
    if gate.outcome != "passed":
        raise RefusedError(
            f"version {version} of '{model}' is tagged validation_status=passed but its latest gate "
            f"(ledger #{gate.id}) {gate.outcome}: two gates of it disagree; run `mlops registry gate "
            f"--version {version}` again, or use --force --reason \"...\"")
    if gate.from_version != current:
        raise RefusedError(
            f"version {version} of '{model}' passed its gate against {version_label(gate.from_version)}, but "
            f"production is now {version_label(current)}: run `mlops registry gate --version {version}` again "
            f"(it compares with {version_label(current)}), or use --force --reason \"...\"")
    return False
