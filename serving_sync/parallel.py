"""One function over many hosts, a bounded number at once, answers in the hosts' order.

A fleet is connected and observed in about the time of its slowest host rather than the sum of
all of them, and what a person reads (which host failed first) does not depend on which thread
finished first.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def settle(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
           name: str) -> list[tuple[R | None, BaseException | None]]:
    """``(result, None)`` or ``(None, error)`` for each item, in the items' order, once every
    call has returned (``workers`` at most at once; one item runs in this thread)."""
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        out: list[tuple[R | None, BaseException | None]] = []
        for item in items:
            try:
                out.append((fn(item), None))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, in order
                out.append((None, exc))
        return out
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix=name) as pool:
        futures = [pool.submit(fn, item) for item in items]
        wait(futures)
    return [(None, f.exception()) if f.exception() is not None else (f.result(), None) for f in futures]


def map_ordered(fn: Callable[[T], R], items: Iterable[T], *, workers: int, name: str) -> list[R]:
    """``fn`` over ``items`` (see ``settle``); the first failure in the items' order is raised."""
    outcomes = settle(fn, items, workers=workers, name=name)
    for _, exc in outcomes:
        if exc is not None:
            raise exc
    return [result for result, _ in outcomes]
