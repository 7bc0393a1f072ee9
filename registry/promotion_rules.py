"""Promotion and rollback decisions: pure functions on plain data (ledger entries, tags).

- ``check_promotable``: may this version become production?
- ``production_stack``: replay the ledger into the list of versions that held production,
  where a rollback pops back to the version it returned to (so rolling back twice goes two
  steps back instead of undoing the first rollback).
- ``failed_deploys``: versions whose deploy failed (latest ledger ``deploy`` row failed, or tag
  ``deploy_status=failed``).
- ``rollback_target``: the version that held production before the current one, skipping
  failed deploys.
- ``previous_production``: the one "previous production" rule: where production goes back to
  from ``version`` (``mlops registry rollback`` and a failed deploy both follow it).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from mlops_common.errors import RefusedError

from .ledger import Entry


def check_promotable(model: str, version: int, validation_status: str, *, force: bool = False,
                     reason: str | None = None) -> None:
    """Raise ``RefusedError`` unless the version passed the gate (or is forced with a reason)."""
    if force and not (reason and reason.strip()):
        raise RefusedError("--force needs --reason \"...\" saying why the gate is bypassed; "
                           "it is recorded in the ledger and on the version")
    if validation_status != "passed" and not force:
        raise RefusedError(f"version {version} of '{model}' has validation_status="
                           f"{validation_status or 'pending'}, not passed; run `mlops registry gate "
                           f"--version {version}` first, or use --force --reason \"...\"")


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


def failed_deploys(entries: Iterable[Entry], tags_by_version: Mapping[int, Mapping[str, str]]) -> set[int]:
    """Versions whose latest deploy row failed or that are tagged ``deploy_status=failed``."""
    latest: dict[int, str] = {}
    for e in entries:
        if e.action == "deploy" and e.to_version is not None:
            latest[e.to_version] = e.outcome
    failed = {v for v, outcome in latest.items() if outcome == "failed"}
    failed |= {v for v, tags in tags_by_version.items() if tags.get("deploy_status") == "failed"}
    return failed


def rollback_target(stack: list[int], current: int | None, failed: set[int]) -> int | None:
    """The newest version in ``stack`` other than ``current`` whose deploy did not fail."""
    for v in reversed(stack):
        if v != current and v not in failed:
            return v
    return None


def previous_production(entries: Iterable[Entry], version: int | None, failed: set[int] = frozenset()) -> int | None:
    """Where ``production`` goes back to from ``version``: ``rollback_target`` on the ledger's
    production stack (the newest earlier holder whose deploy did not fail)."""
    return rollback_target(production_stack(entries), version, set(failed))
