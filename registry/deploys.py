"""Deploy bookkeeping in one place: the version's deploy-status tags, the deploy ledger rows, and
where ``production`` goes back to after a failed deploy.

Every ``deploy_status`` write goes through ``tag`` (the MLflow UI shows the tag; the ledger is the
record); every deploy / smoke_test / host_rollback / canary row goes through ``DeployLedger``;
where a failed deploy moves production is ``promotion_rules.revert_target`` on the ledger: the
"previous production" rule ``mlops registry rollback`` follows, except that a failed rollout of a
rollback goes back to the version rolled back from; whether a deploy restores a version after a
rollback is ``promotion_rules.restoring_rollback`` on the same rows.
"""
from __future__ import annotations

from typing import Callable

from mlops_common import log
from mlops_common.errors import NotFoundError

from . import artifacts, tags, versions
from .ledger import Entry, Ledger, MoveCut
from .promotion_rules import (
    MOVES,
    PUT_BACK,
    deploy_verdict,
    failed_after_promotion,
    fleet_of,
    last_verdict,
    latest_deploys,
    moved,
    restoring_rollback,
    revert_target,
    rollback_choice,
    rollback_in_rollout,
    rolled_back_to,
)
from .promotion_rules import (
    rolled_back_before as rolled_back_before_rule,
)
from .provenance import Provenance

DEPLOY_STATUS = tags.DEPLOY_STATUS
DEPLOY_REASON = tags.DEPLOY_REASON
DEPLOY_CANARY = tags.DEPLOY_CANARY    # the canary's verdict outcome, when one was judged
DEPLOYED, FAILED, ROLLED_BACK = "deployed", "failed", "rolled_back"
_log = log.get("registry.deploys")


def tag(model: str, version: int, status: str, reason: str | None = None, *, canary: str | None = None) -> None:
    """Write the version's deploy-status tags (every key each time, so none is left over: a deploy
    without a canary says ``deploy_canary=none``, not an earlier deploy's verdict; the same tag
    under its name before the rename, ``deploy.reason`` / ``deploy.canary``, is removed), then
    rebuild the version's description, which shows them (a second MLflow write)."""
    written = {DEPLOY_STATUS: status, DEPLOY_REASON: reason or "none", DEPLOY_CANARY: canary or "none"}
    versions.set_tags(model, version, written)
    from .description import refresh_quietly

    try:        # a version tagged before the rename: its old deploy.reason / deploy.canary would stay
        old = tags.retired(versions.get_version(model, version).tags, written)
        if old:
            versions.delete_tags(model, version, old)
    except Exception as exc:  # noqa: BLE001 - the status is written; the old names are only clutter in the list
        _log.warning("could not remove the older tags of version %s of '%s': %s", version, model, exc)

    refresh_quietly(model, version)         # the description shows the deploy per host


def status(model: str, version: int) -> str | None:
    """The version's deploy status as the registry records it (None: never deployed)."""
    return versions.get_version(model, version).deploy_status


def failed_since_promoted(model: str, version: int) -> bool:
    """Did a deploy fail the version after its last promotion — tagged ``deploy_status=failed``, or
    a failed ``deploy`` row in the ledger when MLflow refused the tag? (A restarted ``mlops sync
    watch`` does not retry it, nor does one whose tag could not be written; promoting it again
    clears this.)

    Read: the version's rows from its newest move into production on (where ``last_verdict``
    starts over), unless a put-back among them reaches back to its deploy's first row."""
    return failure_recorded(model, version) is not None


def failure_recorded(model: str, version: int) -> str | None:
    """``failed_since_promoted``, saying where the registry holds the failure: ``deploy_status=failed``
    (the tag), or the ledger's failed ``deploy`` row when the version carries no such tag (MLflow
    refused it); None: no failure since its last promotion."""
    ledger, read = Ledger(), {"actions": MOVES + ("deploy",), "current": True, "to_version": version}
    entries = ledger.entries(model, since=MoveCut(to_version=version), **read)
    if any(e.action == "deploy" and deploy_verdict(e) == PUT_BACK for e in entries):
        entries = ledger.entries(model, **read)
    if status(model, version) == FAILED:
        return "deploy_status=failed" if failed_after_promotion(entries, version) else None
    if last_verdict(entries, version) == "failed":
        return "a failed deploy row in the ledger; MLflow holds no deploy_status=failed tag"
    return None


def last_move_to(model: str, version: int) -> int | None:
    """The id of the newest ledger row that moved ``production`` to ``version`` (a promotion or a
    rollback through mlops), or None: ``mlops sync watch`` tries a version whose failure the
    registry never recorded again once this changes."""
    rows = [e.id for e in Ledger().entries(model, actions=MOVES, current=True, to_version=version,
                                           since=MoveCut(to_version=version, none="nothing"))
            if e.outcome == "ok" and e.id is not None]
    return max(rows, default=None)


def record_failure_late(model: str, version: int, moved_since: int | None, reason: str,
                        ledger: Ledger | None = None) -> bool:
    """The failed ``deploy`` row of ``version`` that its failed deploy could not write (MLflow
    refused the ``failed`` tag and the ledger did not answer then), written by the ``mlops sync
    watch`` that saw it fail, so that a restarted watch skips the version too. Under the promotion
    lock, and only while the newest move of production to ``version`` is still ``moved_since``
    (``last_move_to`` when the watch first skipped it): a promotion through mlops since then is a
    new try, which a late row would wrongly mark failed. True when written."""
    ledger = ledger or Ledger()
    with ledger.serialized(model) as locked:
        moves = [e.id for e in locked.entries(actions=MOVES)
                 if e.to_version == version and e.outcome == "ok" and e.id is not None]
        if max(moves, default=None) != moved_since:
            return False
        locked.append(Entry(action="deploy", model=model, outcome="failed", to_version=version, reason=reason,
                            details={"recorded_late": "sync watch"}, **Provenance.from_environment().row()))
    return True


def _since_moved(ledger: Ledger, model: str, actions: tuple[str, ...] = MOVES) -> list[Entry]:
    """The model's current rows of ``actions`` from its newest move that changed where production
    is (``promotion_rules.moved``) on; [] without one. What ``rolled_back_to`` and
    ``rollback_in_rollout`` decide on: the database reads these rows, not the model's history."""
    return ledger.entries(model, actions=actions, current=True, since=MoveCut(changed=True, none="nothing"))


def _last_moved(ledger: Ledger, model: str) -> Entry | None:
    return next((e for e in _since_moved(ledger, model) if moved(e)), None)


def newest_move(model: str, ledger: Ledger | None = None) -> Entry | None:
    """The newest row that changed where ``production`` is (a promotion, a person's rollback, a
    failed deploy's revert, a move reconciled from outside mlops); None without one."""
    return _last_moved(ledger or Ledger(), model)


def restoring(model: str, version: int, ledger: Ledger | None = None) -> Entry | None:
    """The rollback row that made ``version`` production again, if deploying it restores a version
    that held production before (``promotion_rules.restoring_rollback``); else None. The rows
    since the newest move first: all of them only when that move is a rollback to ``version``."""
    ledger = ledger or Ledger()
    last = _last_moved(ledger, model)
    if last is None or last.action != "rollback" or last.to_version != version:
        return None         # what restoring_rollback answers then, on every row
    return restoring_rollback(ledger.entries(model, actions=(*MOVES, "deploy"), current=True), version)


def rolled_back_from(model: str, version: int, ledger: Ledger | None = None) -> Entry | None:
    """The person's rollback that made ``version`` production, when it is the newest move
    (``promotion_rules.rolled_back_to``): a deploy serving ``version`` tags its ``from_version``
    ``rolled_back``. None otherwise."""
    return rolled_back_to(_since_moved(ledger or Ledger(), model), version)


def rolled_back_before(model: str, version: int, ledger: Ledger | None = None) -> list[Entry]:
    """``promotion_rules.rolled_back_before``: the earlier rollbacks of a chain that ended at
    ``version`` before any reached the hosts. The earlier moves and deploys are read only after such a
    rollback."""
    ledger = ledger or Ledger()
    if rolled_back_to(_since_moved(ledger, model), version) is None:
        return []           # what the rule answers then, on every row
    return rolled_back_before_rule(ledger.entries(model, actions=(*MOVES, "deploy"), current=True), version)


def rollback_unrecorded(model: str, version: int, ledger: Ledger | None = None) -> Entry | None:
    """The person's rollback to ``version`` (the newest move) whose bookkeeping a deploy of
    ``version`` still has to write though every host may serve it already — a `sync rollback`
    killed after its switch: no deploy rolled it out (``rollback_in_rollout``: `sync rollback`
    refuses to step further), or the version rolled back from still says ``deployed``
    (``rollback_unfinished``: a rerun would finish it instead of stepping back). ``fleet.deploy``
    on hosts that serve ``version`` writes both (``record_converged``, the late ``rolled_back``
    tag). None otherwise (one ledger read; one registry read only after a rollback)."""
    entries = _since_moved(ledger or Ledger(), model, (*MOVES, "deploy"))    # all the two rules read
    if (row := rollback_in_rollout(entries, version)) is not None:
        return row
    last = rolled_back_to(entries, version)
    if last is None:
        return None
    try:
        frm = status(model, last.from_version)
    except NotFoundError:       # the version rolled back from was deleted: nothing to tag
        return None
    return last if frm == DEPLOYED else None


class DeployLedger:
    """Ledger rows for deploy / smoke_test / host_rollback / canary, with who and which pipeline
    (``provenance``; default: the OS user in this job). One instance per deploy: its
    ``deploy_id`` is on every row it writes (``details.deploy``)."""

    def __init__(self, model: str, ledger: Ledger | None = None, provenance: Provenance | None = None,
                 fleet: str | None = None):
        import uuid

        self.model = model
        self.fleet = fleet          # another fleet's hosts file than the configured one: on every row
        self.ledger = ledger or Ledger()
        self.provenance = provenance or Provenance.from_environment()
        self.deploy_id = uuid.uuid4().hex[:16]   # on every row: a put-back undoes only its own deploy's rows

    def __call__(self, action: str, outcome: str, **fields) -> None:
        """Write one row now (``fields`` as for ``entry``)."""
        self.ledger.append(self.entry(action, outcome, **fields))

    def entry(self, action: str, outcome: str, *, host=None, from_version=None, to_version=None,
              reason=None, details=None) -> Entry:
        """One row as it would be written (for ``record_all``)."""
        fleet = {"fleet": self.fleet} if self.fleet else {}
        return Entry(action=action, model=self.model, outcome=outcome, host=host, from_version=from_version,
                     to_version=to_version, reason=reason,
                     details={**(details or {}), "deploy": self.deploy_id, **fleet},
                     **self.provenance.row())

    def record_all(self, entries: list[Entry]) -> None:
        """Rows of several hosts (a wave's deploys, a fleet's host rollbacks) in one transaction."""
        self.ledger.append_all(entries)

    def rollback_target(self) -> int | None:
        """Where ``mlops registry rollback`` would move production now (None: no production, or
        nowhere known): what retention keeps on every host, whichever version was deployed."""
        current = versions.production_version(self.model)
        if current is None:
            return None
        entries = self.ledger.entries(self.model, actions=("promote", "rollback", "deploy"), current=True)
        return rollback_choice(entries, self._tags(), current).version

    def rollback_in_rollout(self, version: int) -> Entry | None:
        """The person's rollback that deploying ``version`` rolls out (``promotion_rules``)."""
        return rollback_in_rollout(_since_moved(self.ledger, self.model, (*MOVES, "deploy")),
                                   version, deploy_id=self.deploy_id)

    def _before_this_deploy(self, *actions: str) -> list[Entry]:
        """The model's current rows of ``actions``, this deploy's own left out."""
        return [e for e in self.ledger.entries(self.model, actions=actions, current=True)
                if (e.details or {}).get("deploy") != self.deploy_id]

    def rolled_out(self, version: int) -> bool:
        """Whether a rollout of ``version`` finished on the fleet before this deploy (its verdict
        is ``ok``: ``promotion_rules.latest_deploys``, this deploy's own rows left out). A host
        switched by a deploy killed after its canary, or by one whose rows were never written,
        does not count: nothing judged the version there."""
        return self._verdict_elsewhere(version) == "ok"

    def failed_elsewhere(self, version: int) -> bool:
        """Whether another deploy failed ``version`` since it last moved into production (its last
        verdict, this deploy's own rows left out, is ``failed``; or its tag says so): another fleet
        judged it bad while this one rolled it out."""
        return self._verdict_elsewhere(version) == "failed" or status(self.model, version) == FAILED

    def _verdict_elsewhere(self, version: int) -> str | None:
        """``version``'s last deploy verdict (``promotion_rules.latest_deploys``), this deploy's own
        rows left out."""
        return latest_deploys(self._before_this_deploy(*MOVES, "deploy"), self.fleet).get(version)

    def unjudged(self, version: int) -> bool:
        """Whether a deploy of ``version`` began on the fleet (its prepare smoke-tested it: a
        ``smoke_test`` row) and nothing judged it since: no rollout of it finished (``rolled_out``)
        and no canary of it passed its bake (a ``canary passed`` row). One read. Hosts that
        served it before any deploy of it (a fleet adopted as it is) are not this."""
        entries = self._before_this_deploy(*MOVES, "deploy", "canary", "smoke_test")
        # this fleet's: another fleet's smoke test or canary says nothing of these hosts
        mine = {(e.action, e.outcome) for e in entries if e.to_version == version and fleet_of(e) == self.fleet}
        began = any(action == "smoke_test" for action, _ in mine)
        # latest_deploys reads only the moves and deploy rows among them
        return began and ("canary", "passed") not in mine and latest_deploys(entries, self.fleet).get(version) != "ok"

    def _tags(self) -> dict[int, dict[str, str]]:
        return {i.version: i.tags for i in versions.list_versions(self.model)}

    def previous_production(self, version: int) -> int | None:
        """Where ``production`` goes back to when ``version``'s deploy fails (None: nowhere known):
        ``promotion_rules.revert_target``, on the ledger rows and registry tags ``mlops registry
        rollback`` reads."""
        entries = self.ledger.entries(self.model, actions=("promote", "rollback", "deploy"),
                                     current=True)
        return revert_target(entries, self._tags(), version, deploy_id=self.deploy_id)


def record_converged(model: str, version: int, hosts: list[tuple[str, int | None]], reason: str | None,
                     *, unless: Callable[[], bool] = lambda: False, fleet: str | None = None) -> bool | None:
    """Every host already serves ``version``, verified there. If the registry does not say so (a
    deploy killed after its switch did the work, not the bookkeeping — or a rollback's deploy,
    where ``version`` says deployed from before but the ledger has not seen the rollback rolled
    out), record it now and return True; otherwise write nothing (deploying twice changes nothing)
    and return False. ``unless()``, asked only when it would record: write nothing, return None
    (the deploy's reason not to: ``rollout_decision.unjudged_everywhere``). ``fleet``: hosts of
    another fleet than the configured one, which say nothing of the version's ``deploy_status``."""
    if fleet:
        return False
    rows = DeployLedger(model)
    if status(model, version) == DEPLOYED and rows.rollback_in_rollout(version) is None:
        return False
    if unless():
        return None
    rows.record_all([rows.entry("deploy", "ok", host=host, from_version=current, to_version=version, reason=reason,
                                details={"steps": [], "recorded_late": "the host already served this version, "
                                                                       "verified there; an earlier deploy "
                                                                       "stopped before recording it"})
                     for host, current in hosts])
    tag(model, version, DEPLOYED)
    return True


def saved_model_size(model: str, version: int) -> int | None:
    """Bytes of the version's ``tfserving/`` SavedModel, from the run's artifact listing (None when
    the listing is not available through the tracking server). A listing without ``saved_model.pb``
    raises what the deploy's download would: a plan must not show steps the deploy refuses."""
    from mlops_common.errors import NotFoundError, UserError

    from .rest import MlflowRest, rest
    from .versions import artifact_root

    try:
        info = versions.get_version(model, version)
        if not info.run_id or not MlflowRest.proxied(artifact_root(info.run_id)):
            return None
        files = rest().artifact_files(info.run_id, artifacts.TFSERVING, what=f"listing v{version} of '{model}'")
    except UserError:
        return None
    if f"{artifacts.TFSERVING}/saved_model.pb" not in {f["path"] for f in files}:
        raise NotFoundError(f"version {version} of '{model}': tfserving/ has no saved_model.pb; it is not a "
                            f"SavedModel")
    return sum(f["file_size"] for f in files)
