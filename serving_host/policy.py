"""TF Serving's ``AvailabilityPreservingPolicy`` as a pure function.

Given a snapshot of one model's versions, pick the next transition. It never unloads the last
serving version before a newly aspired one is ready, so traffic that does not name a version
always finds one: a new version is loaded before the old one is unloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

# Harness states (TF Serving's LoaderHarness::State, simplified).
NEW = "new"              # aspired, not yet asked to load       -> reported as START
LOADING = "loading"      # loading (including load retries)     -> LOADING
READY = "ready"          # serving                               -> AVAILABLE
UNLOADING = "unloading"  # being unloaded                        -> UNLOADING
DISABLED = "disabled"    # unloaded                              -> END (OK)
ERROR = "error"          # failed to load; never retried         -> END (error)


@dataclass(frozen=True)
class Snapshot:
    version: int
    state: str
    is_aspired: bool


@dataclass(frozen=True)
class Action:
    kind: str      # "load" | "unload"
    version: int


def next_action(versions: list[Snapshot]) -> Action | None:
    """The next load or unload for one model, or None when nothing should change.

    1. Unload the lowest non-aspired serving version when no version is aspired, when an
       aspired version is already serving, or when more than one non-aspired version serves.
    2. Otherwise load the highest aspired version that has not been loaded yet.
    """
    has_aspired = any(v.is_aspired for v in versions)
    has_aspired_serving = any(v.is_aspired and v.state == READY for v in versions)
    unaspired_serving = [v.version for v in versions if not v.is_aspired and v.state == READY]
    if unaspired_serving and (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1):
        return Action("unload", min(unaspired_serving))
    new_aspired = [v.version for v in versions if v.is_aspired and v.state == NEW]
    if new_aspired:
        return Action("load", max(new_aspired))
    return None
