"""Where ``production`` goes back to: pure functions replaying the ledger's moves and deploys
(plain data: ledger entries, tags). Whether a move may happen is ``move_checks``; whether the alias
agrees with the ledger, ``reconciliation_rules``.

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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from . import tags as T
from .ledger import Entry


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


def fleet_of(e: Entry) -> str | None:
    """The fleet a row's deploy went to when it is another than the configured one (``details.fleet``:
    the hosts file ``sync deploy --hosts`` named); None: the configured fleet's."""
    fleet = (e.details or {}).get("fleet") if isinstance(e.details, dict) else None
    return fleet if isinstance(fleet, str) and fleet else None


def deploy_verdict(e: Entry, fleet: str | None = None) -> str | None:
    """What one ``deploy`` row says about its version on ``fleet`` (None: the configured one):
    ``ok`` (it served on the fleet), ``failed``,
    ``partial`` (an ``ok`` of a wave before the last, ``details.final`` false: the rollout had not
    finished — a deploy killed after its canary), ``put_back`` (a failure that did not blame the
    version, after which this deploy put back hosts it had switched: its ``ok`` rows were undone),
    or None (nothing: a failure that left the registry and the hosts as they were). A row of
    another fleet (``fleet_of``) says only ``failed``: the version failed on a host, whichever
    fleet; its rollout there is not one of this fleet (found by review, twenty-second stop: a
    staging rollout made the version "deployed" for the rollback target and a restore, and
    cleared the configured fleet's failure for ``sync watch``)."""
    details = e.details or {}
    if e.outcome == "ok" and details.get("final") is False:
        verdict = PARTIAL
    elif judged(e):
        verdict = e.outcome
    else:
        verdict = PUT_BACK if details.get("switched_put_back") else None
    return verdict if verdict == "failed" or fleet_of(e) == fleet else None


def _verdicts(entries: Iterable[Entry], *, moves: bool, fleet: str | None = None) -> dict[int, str]:
    """Each version's newest verdict on ``fleet`` (``deploy_verdict``; with ``moves``, an ok promotion or
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
        if e.action != "deploy" or (verdict := deploy_verdict(e, fleet)) is None:
            continue
        run = (e.details or {}).get("deploy")
        if run is not None:
            before.setdefault((v, run), out.get(v))
        if verdict == PUT_BACK:
            prior = before.get((v, run)) if run is not None else None
            verdict = prior if prior in ("ok", "failed", MOVED) else PUT_BACK
        out[v] = verdict
    return out


def latest_deploys(entries: Iterable[Entry], fleet: str | None = None) -> dict[int, str]:
    """Each version's deploy verdict on ``fleet`` (``_verdicts``; None: the configured fleet): only
    ``ok`` means the fleet served it (a
    canary that was put back, or a rollout that stopped after its canary, is not a version the
    fleet served, so no rollback goes to it and restoring it stages the rollout again)."""
    return _verdicts(entries, moves=False, fleet=fleet)


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


def rolled_back_before(entries: Iterable[Entry], version: int) -> list[Entry]:
    """The person's rollbacks just before ``rolled_back_to``'s, each to the version the next one
    rolled back from (v3 -> v2, then v2 -> v1 before v2 reached the hosts), newest first: a deploy
    serving ``version`` tags their ``from_version`` ``rolled_back`` too — where it still says
    ``deployed``, the one the hosts served came first in the chain. ``entries``: the move rows,
    and the ``deploy`` rows: the chain ends at a rollback whose version a rollout put on the fleet
    before the next rollback (two rollbacks each deployed: the hosts served the second one's
    version rolled back from, not the first one's)."""
    segments: list[tuple[Entry, set[int]]] = []     # each move, and the versions rolled out after it
    for e in entries:
        if moved(e):
            segments.append((e, set()))
        elif e.action == "deploy" and segments and e.to_version is not None and deploy_verdict(e) == "ok":
            segments[-1][1].add(e.to_version)
    last = rolled_back_to([e for e, _ in segments], version)
    out: list[Entry] = []
    for e, rolled_out in reversed(segments[:-1] if last is not None else []):
        if e.action != "rollback" or (e.details or {}).get("automatic") or e.from_version in (None, version) \
                or e.to_version != (out[-1] if out else last).from_version or e.to_version in rolled_out:
            break
        out.append(e)
    return out


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


def version_label(version: int | None, none: str = "(none)") -> str:
    """``v3``, or ``none`` for no version: how every registry message names a version."""
    return none if version is None else f"v{version}"
