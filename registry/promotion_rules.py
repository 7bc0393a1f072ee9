"""Promotion and rollback decisions: pure functions on plain data (ledger entries, tags).

- ``check_promotable``: may this version become production?
- ``check_gate_baseline``: did its passing gate compare it with today's production?
- ``approval_gate`` / ``check_approval_tie``: is a CircleCI approval used for the move it was
  given for (the version its pipeline gated; a rollback's approval followed no gate)?
  ``check_rollback_tie``: and a rollback's, for the version its pipeline's ``rollback-to`` names?
- ``production_stack``: replay the ledger into the list of versions that held production,
  where a rollback pops back to the version it returned to (so rolling back twice goes two
  steps back instead of undoing the first rollback).
- ``failed_deploys``: versions whose deploy failed (latest ledger ``deploy`` row failed, or tag
  ``deploy_status=failed``).
- ``rollback_target``: the version that held production before the current one, skipping
  failed deploys, preferring one that was deployed.
- ``previous_production``: the one "previous production" rule: where production goes back to
  from ``version`` (``mlops registry rollback`` follows it, through ``rollback_choice``).
- ``revert_target``: where a failed deploy of ``version`` moves production: ``rollback_choice``,
  except for the rollout of a person's rollback (``rollback_in_rollout``), which goes back to the
  version rolled back from.
- ``restoring_rollback``: is deploying ``version`` a restore (production rolled back to a version
  that held it before)? ``mlops sync`` then switches every host at once, without a bake.
- ``agreement`` / ``reconcile_rows``: does the ``production`` alias sit where the ledger says,
  and the rows that record what happened when it does not.

Intent rows: before a promotion moves the alias it commits an ``intent`` row (outcome
``pending``, ``details.move`` = promote / rollback); the move's ``ok`` row (or an ``intent``
row with outcome ``failed`` when the alias did not move) closes it by ``details.intent`` = its
id. The replay counts only ``ok`` moves, so an intent is no move until it is confirmed; an open
intent whose target the alias holds is what a process that died (or lost MLflow's answer)
between the move and its record leaves behind, and ``reconcile_rows`` confirms it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from mlops_common.errors import ConfigError, RefusedError

from . import tags as T
from .ledger import Entry
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
        raise RefusedError(
            f"this CircleCI pipeline already moved production of '{model}' to "
            f"{version_label(earlier.to_version)} (ledger #{earlier.id}), and it is {version_label(current)} now "
            f"(its deploy failed and moved it back, or another move came since): a pipeline moves production "
            f"once; start a new pipeline, or move it by hand outside CircleCI")
    return True


def check_gate_baseline(model: str, version: int, current: int | None, gate: Entry | None,
                        held: set[int], *, force: bool = False) -> None:
    """Raise ``RefusedError`` when ``version``'s passing gate compared it with another version
    than the one in production now.

    Two pipelines that overlap at the approval both pass their gates against v1; once one is
    promoted, the other's verdict says nothing about how it compares with the new production
    (it may be far worse). A version that held production before (promoting it again is how a
    person rolls back), the version already in production, a forced move and a version whose
    gate left no ledger row (the tag is all there is) are not refused here."""
    if force or version == current or version in held or gate is None or gate.outcome != "passed":
        return
    if gate.from_version != current:
        raise RefusedError(
            f"version {version} of '{model}' passed its gate against {version_label(gate.from_version)}, but "
            f"production is now {version_label(current)}: run `mlops registry gate --version {version}` again "
            f"(it compares with {version_label(current)}), or use --force --reason \"...\"")


def production_stack(entries: Iterable[Entry]) -> list[int]:
    """Versions that held production, oldest first, as left by promotions and rollbacks."""
    stack: list[int] = []
    for e in entries:
        if e.outcome != "ok":
            continue
        if e.action == "promote" and e.to_version is not None:
            if not stack or stack[-1] != e.to_version:
                stack.append(e.to_version)
        elif e.action == "rollback":
            if e.to_version is None:  # production removed (first ever deploy failed)
                if stack and stack[-1] == e.from_version:
                    stack.pop()
            elif e.to_version in stack:
                del stack[len(stack) - stack[::-1].index(e.to_version):]
            else:
                stack.append(e.to_version)
    return stack


def judged(e: Entry) -> bool:
    """Does this ``deploy`` row say something about its version? A failure that left the registry
    unchanged (upload failed, connection or lock lost, interrupted) does not: the version is
    retried, and it stays a rollback target."""
    return not (e.outcome == "failed" and (e.details or {}).get("registry_unchanged"))


PARTIAL, PUT_BACK, MOVED = "partial", "put_back", "moved"


def deploy_verdict(e: Entry) -> str | None:
    """What one ``deploy`` row says about its version: ``ok`` (it served on the fleet), ``failed``,
    ``partial`` (an ``ok`` of a wave before the last, ``details.final`` false: the rollout had not
    finished — a deploy killed after its canary), ``put_back`` (a failure that did not blame the
    version, after which this deploy put back hosts it had switched: its ``ok`` rows were undone),
    or None (nothing: a failure that left the registry and the hosts as they were)."""
    details = e.details or {}
    if e.outcome == "ok" and details.get("final") is False:
        return PARTIAL
    if judged(e):
        return e.outcome
    return PUT_BACK if details.get("switched_put_back") else None


def _verdicts(entries: Iterable[Entry], *, moves: bool) -> dict[int, str]:
    """Each version's newest verdict (``deploy_verdict``; with ``moves``, an ok promotion or
    rollback to it is ``moved``). A put-back undoes the rows of its own deploy (``details.deploy``,
    the id every row of one ``mlops sync deploy`` carries): the version's verdict goes back to what
    it was before that deploy's first row — an earlier full rollout stays ``ok``, an earlier
    failure ``failed``; with nothing before, ``put_back``."""
    out: dict[int, str] = {}
    before: dict[tuple[int, str], str | None] = {}
    for e in entries:
        v = e.to_version
        if v is None:
            continue
        if e.action in MOVES:
            if moves and e.outcome == "ok":
                out[v] = MOVED
            continue
        if e.action != "deploy" or (verdict := deploy_verdict(e)) is None:
            continue
        run = (e.details or {}).get("deploy")
        if run is not None:
            before.setdefault((v, run), out.get(v))
        if verdict == PUT_BACK:
            prior = before.get((v, run)) if run is not None else None
            verdict = prior if prior in ("ok", "failed", MOVED) else PUT_BACK
        out[v] = verdict
    return out


def latest_deploys(entries: Iterable[Entry]) -> dict[int, str]:
    """Each version's deploy verdict (``_verdicts``): only ``ok`` means the fleet served it (a
    canary that was put back, or a rollout that stopped after its canary, is not a version the
    fleet served, so no rollback goes to it and restoring it stages the rollout again)."""
    return _verdicts(entries, moves=False)


def last_verdict(entries: Iterable[Entry], version: int) -> str | None:
    """The newest of: an ok move of ``production`` to ``version`` (a promotion or a rollback to it:
    ``moved``), a deploy of it that finished (``ok``), one that blamed it (``failed``), one that
    did not finish (``partial``, ``put_back``); None: none of these. A failure that left the
    registry unchanged does not count (``judged``)."""
    return _verdicts([e for e in entries if e.to_version == version], moves=True).get(version)


def failed_after_promotion(entries: Iterable[Entry], version: int) -> bool:
    """Did a deploy fail ``version`` after it last moved into production or last deployed fully
    (``last_verdict``)? No row at all: yes (the caller's ``deploy_status=failed`` tag alone says
    it failed)."""
    return last_verdict(entries, version) not in (MOVED, "ok")


def failed_deploys(entries: Iterable[Entry], tags_by_version: Mapping[int, Mapping[str, str]]) -> set[int]:
    """Versions whose latest deploy row failed or that are tagged ``deploy_status=failed``."""
    failed = {v for v, outcome in latest_deploys(entries).items() if outcome == "failed"}
    failed |= {v for v, tags in tags_by_version.items() if tags.get(T.DEPLOY_STATUS) == "failed"}
    return failed


def rollback_target(stack: list[int], current: int | None, failed: set[int],
                    deployed: set[int] = frozenset()) -> int | None:
    """The newest version in ``stack`` other than ``current`` whose deploy did not fail; of those,
    the newest that was ``deployed`` (a deploy ``ok`` row) when any was: a version promoted and
    replaced before a deploy never ran on the hosts, and going back to it would roll out an untried
    version in the middle of an incident (a registry used without ``mlops sync`` has no deploy rows:
    the newest)."""
    candidates = [v for v in reversed(stack) if v != current and v not in failed]
    return next((v for v in candidates if v in deployed), candidates[0] if candidates else None)


def previous_production(entries: Iterable[Entry], version: int | None, failed: set[int] = frozenset(),
                        existing: set[int] | None = None) -> int | None:
    """Where ``production`` goes back to from ``version``: ``rollback_target`` on the ledger's
    production stack, skipping versions whose deploy failed and, given ``existing`` (the registry's
    versions), those deleted since."""
    entries = list(entries)
    stack = production_stack(entries)
    skip = set(failed) | (set() if existing is None else {v for v in stack if v not in existing})
    deployed = {v for v, outcome in latest_deploys(entries).items() if outcome == "ok"}
    return rollback_target(stack, version, skip, deployed)



@dataclass(frozen=True)
class RollbackChoice:
    """Where ``production`` goes back to (None: nowhere known), and what was passed over."""

    version: int | None
    skipped_failed: tuple[int, ...] = ()      # held production, but their deploy failed
    skipped_deleted: tuple[int, ...] = ()     # held production, deleted from the registry since


def rollback_choice(entries: Iterable[Entry], tags_by_version: Mapping[int, Mapping[str, str]],
                    current: int | None) -> RollbackChoice:
    """``previous_production`` from ``current`` on the ledger's rows and the registry's versions
    (``tags_by_version``: every existing version's tags): the one rule of ``mlops registry
    rollback`` and of a failed deploy moving production back."""
    entries = list(entries)
    stack = production_stack(entries)
    failed = failed_deploys(entries, tags_by_version)
    deleted = {v for v in stack if v not in tags_by_version}
    return RollbackChoice(previous_production(entries, current, failed, existing=set(tags_by_version)),
                          tuple(sorted(failed & set(stack))), tuple(sorted(deleted)))


def revert_target(entries: Iterable[Entry], tags_by_version: Mapping[int, Mapping[str, str]],
                  version: int, *, deploy_id: str | None = None) -> int | None:
    """Where ``production`` goes back to when ``version``'s deploy fails: the move that made it
    production, undone. That is ``rollback_choice`` — but for a rollback to ``version``: its
    hosts were put back to the version rolled back from, and going one more step down the stack
    named a version no host served (and the next deploy would have rolled it out everywhere)."""
    entries = list(entries)
    undone = rollback_in_rollout(entries, version, deploy_id=deploy_id)
    if undone is not None and undone.from_version in tags_by_version:
        return undone.from_version
    return rollback_choice(entries, tags_by_version, version).version


def rollback_in_rollout(entries: Iterable[Entry], version: int, *, deploy_id: str | None = None) -> Entry | None:
    """The rollback this deploy of ``version`` rolls out, if that is what it does: the newest
    ``ok`` move is a rollback to ``version`` that a person asked for (not a failed deploy's
    automatic revert) and no other deploy rolled ``version`` out since (a later deploy, e.g. to
    a new host, is not that rollback's rollout; this deploy's own canary rows, ``deploy_id``,
    and any wave before a rollout's last do not count). ``entries``: promote, rollback and
    deploy rows."""
    last, deployed_since = None, False
    for e in entries:
        if moved(e):
            last, deployed_since = e, False
        elif e.action == "deploy" and e.to_version == version and deploy_verdict(e) == "ok" \
                and (deploy_id is None or (e.details or {}).get("deploy") != deploy_id):
            deployed_since = True
    if last is None or last.action != "rollback" or last.to_version != version or last.from_version is None:
        return None
    if deployed_since or (last.details or {}).get("automatic"):
        return None
    return last


def rolled_back_to(entries: Iterable[Entry], version: int) -> Entry | None:
    """The person's rollback that made ``version`` production, when it is the newest move (a no-op
    row aside): its ``from_version`` is the version rolled back from, which a deploy serving
    ``version`` tags ``rolled_back`` — a restore or not (``--to`` a version that never held
    production). Not a failed deploy's automatic revert: that version is tagged ``failed``."""
    last = next((e for e in reversed(list(entries)) if moved(e)), None)
    if last is None or last.action != "rollback" or last.to_version != version \
            or last.from_version in (None, version) or (last.details or {}).get("automatic"):
        return None
    return last


def rollback_unfinished(entries: Iterable[Entry], version: int,
                        tags_by_version: Mapping[int, Mapping[str, str]]) -> Entry | None:
    """The person's rollback to ``version`` whose rollout is on the hosts (its ``deploy`` rows:
    ``rollback_in_rollout`` is None) but whose command stopped before it was done: the version
    rolled back from still says ``deploy_status=deployed`` (the deploy tags it ``rolled_back`` as
    its last step, after retention). Its rows cannot tell it from a finished rollback; that tag
    can, and a rerun finishes it instead of stepping back one more version (the same sign as
    ``sync deploy``'s late tag, ``fleet._tag_rolled_back``). ``entries``: promote, rollback and
    deploy rows; ``tags_by_version``: every existing version's tags."""
    last = rolled_back_to(entries, version)
    if last is None:
        return None
    rolled_back_from = tags_by_version.get(last.from_version)
    if rolled_back_from is not None and T.read(rolled_back_from, T.DEPLOY_STATUS) == "deployed":
        return last
    return None


MOVES = ("promote", "rollback")


def moved(e: Entry) -> bool:
    """Is ``e`` an ``ok`` move that changed where ``production`` is? A move recorded where the
    version already held production (a CircleCI job run again, a promotion of production itself:
    ``from_version`` = ``to_version``) moved nothing: it is not the rollback a deploy rolls out,
    nor what a restore rolled back from."""
    return e.action in MOVES and e.outcome == "ok" and e.from_version != e.to_version


def last_move(entries: Iterable[Entry]) -> Entry | None:
    """The newest ``ok`` move row (promote or rollback), or None."""
    last = None
    for e in entries:
        if e.action in MOVES and e.outcome == "ok":
            last = e
    return last


def last_real_move(entries: Iterable[Entry]) -> Entry | None:
    """The newest move that changed where ``production`` is (``moved``): the one that let the
    ledger's production version in. A move recorded where the version already held production (a
    rerun, a promotion of production itself) let nothing in, so its actor is not the approver."""
    last = None
    for e in entries:
        if moved(e):
            last = e
    return last


def ledger_production(entries: Iterable[Entry]) -> int | None:
    """The version the ledger says holds production: the target of the newest ``ok`` move."""
    last = last_move(entries)
    return None if last is None else last.to_version


def restoring_rollback(entries: Iterable[Entry], version: int) -> Entry | None:
    """The rollback row that made ``version`` production again, when the newest ``ok`` move is a
    rollback to ``version``, ``version`` held production before it, and its latest ``deploy`` row
    is ``ok`` (it served); else None. ``entries``: the ``promote``, ``rollback`` and ``deploy`` rows.

    Deploying such a version restores one the fleet served: it passed its canary then, and the
    prepare phase still loads and smoke-tests it on every host, so it switches everywhere at once
    and nothing bakes (a bake would keep the version rolled back from on the other hosts, and
    judge the restored one against it). A promotion of an older version, or a rollback ``--to`` a
    version that never held production or whose deploy failed, is a deploy like any other."""
    entries = list(entries)
    held: set[int] = set()
    last: Entry | None = None
    for e in entries:
        if not moved(e):
            continue
        if last is not None and last.to_version is not None:
            held.add(last.to_version)
        last = e
    if (last is None or last.action != "rollback" or last.to_version != version or version not in held
            or latest_deploys(entries).get(version) != "ok"):
        return None
    return last


def open_intents(entries: Iterable[Entry]) -> list[Entry]:
    """Intent rows that no later row closes (``details.intent`` = their id), oldest first."""
    entries = list(entries)
    closed = {e.details.get("intent") for e in entries if e.details}
    return [e for e in entries if e.action == "intent" and e.outcome == "pending" and e.id not in closed]


def version_label(version: int | None, none: str = "(none)") -> str:
    """``v3``, or ``none`` for no version: how every registry message names a version."""
    return none if version is None else f"v{version}"



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
