"""Compare-and-delete on a plain filesystem (file and ssh hosts), under a guard file.

A filesystem has no atomic "delete this file if it still holds these bytes". Renaming the file
aside first is not enough: between reading and renaming, another process may have replaced it,
and the rename then moves (and may lose) the newcomer's lock. So every compare-and-delete of a
file takes a guard first, ``<file>.cad``, by exclusive create. While the guard is held nobody
else can delete the file, and a new file can only appear after a delete, so the bytes read under
the guard are the bytes deleted.

The guard is held for a few round trips. A process killed while holding it leaves it behind;
a guard older than ``GUARD_STALE`` seconds (by the creator's clock, written inside it) is removed
by the next caller, and a holder that was stalled for half that long between taking the guard
and deleting gives up rather than delete a file someone else may have written meanwhile. A
holder whose create and write took over ``READ_BACK_AFTER`` reads its guard back: one stalled
between creating and writing it may have had it broken as a dead caller's (a breaker reads an
unwritten guard again a second later before it breaks it, so a quicker holder cannot have). Two
callers breaking the same dead guard in the same instant is the one case this cannot order; it
needs a crash inside that window first.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Transport

GUARD_WAIT = 5.0      # seconds to wait for another caller's guard before giving up (False)
GUARD_STALE = 30.0    # a guard older than this was left by a dead process
READ_BACK_AFTER = 0.5  # a create + write slower than this reads its guard back (half _created's second)
_POLL = 0.02


def guard_path(rel: str) -> str:
    return f"{rel}.cad"


def remove_if_same(t: "Transport", rel: str, expected: bytes, *, clock=time.time, sleep=time.sleep,
                   wait: float = GUARD_WAIT) -> bool:
    """Remove ``rel`` only if it still holds ``expected``; False if it is gone, changed, or busy."""
    guard = guard_path(rel)
    mine = json.dumps({"created": clock(), "pid": os.getpid(), "nonce": secrets.token_hex(6)}).encode()
    took = _take(t, guard, mine, clock=clock, sleep=sleep, wait=wait)
    if took is None:
        return False
    taken = time.monotonic()
    try:
        try:
            if took > READ_BACK_AFTER and t.read_file(guard) != mine:
                # stalled between creating the guard and writing it, it was broken as a dead
                # caller's: the other caller holds it now
                return False
            current = t.read_file(rel)
        except FileNotFoundError:
            return False
        if current != expected:
            return False
        if time.monotonic() - taken > GUARD_STALE / 2:
            # stalled while holding the guard (a slow round trip): another caller may have judged
            # it dead, deleted the file and written its own; what we read may no longer be there
            return False
        t.remove_file(rel)
        return True
    finally:
        _release(t, guard, mine)


def _create(t: "Transport", guard: str, mine: bytes) -> float | None:
    """Seconds the exclusive create (and its write) took; None: the guard exists."""
    start = time.monotonic()
    return time.monotonic() - start if t.create_exclusive(guard, mine) else None


def _take(t: "Transport", guard: str, mine: bytes, *, clock, sleep, wait: float) -> float | None:
    """The guard taken: the seconds its create took (None: not taken)."""
    deadline = time.monotonic() + wait
    while True:
        took = _create(t, guard, mine)
        if took is not None:
            return took
        if time.monotonic() >= deadline:
            break
        sleep(_POLL)
    # Still there after the wait: take it only if its creator died long ago.
    created = _created(t, guard, sleep)
    if created is None:
        return _create(t, guard, mine)
    if clock() - created <= GUARD_STALE:
        return None
    t.remove_file(guard)
    return _create(t, guard, mine)


def _created(t: "Transport", guard: str, sleep) -> float | None:
    """When the guard was taken (None: it is gone). One still unreadable a second later was cut
    short by a crash between its create and its write: as old as can be."""
    for attempt in range(2):
        try:
            return float(json.loads(t.read_file(guard))["created"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            if attempt == 0:
                sleep(1.0)     # a live creator finishes its few-byte write long before this
    return float("-inf")


def _release(t: "Transport", guard: str, mine: bytes) -> None:
    """Remove the guard if it is still ours (it is, unless we were stalled past GUARD_STALE)."""
    try:
        if t.read_file(guard) == mine:
            t.remove_file(guard)
    except FileNotFoundError:
        pass
