"""Bounded retries with exponential backoff for transient failures (5xx, resets)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def retry(fn: Callable[[], T], *, is_transient: Callable[[BaseException], bool],
          attempts: int = 5, first_delay: float = 0.5, max_delay: float = 8.0) -> T:
    """Call ``fn`` until it succeeds, a non-transient error occurs, or ``attempts`` run out."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised unless transient
            if attempt == attempts or not is_transient(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
