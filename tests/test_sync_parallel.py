"""serving_sync.parallel: bounded, ordered fan-out over hosts (connect, observe, restore)."""
from __future__ import annotations

import threading
import time

import pytest

from serving_sync import parallel


def test_answers_come_in_the_items_order_and_at_most_workers_run_at_once():
    running, most, lock = 0, 0, threading.Lock()

    def work(i):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * (5 - i % 5))          # later items finish first
        with lock:
            running -= 1
        return i * i

    assert parallel.map_ordered(work, range(10), workers=3, name="t") == [i * i for i in range(10)]
    assert most == 3


def test_the_first_failure_in_order_is_raised_after_every_call_returned():
    done = []

    def work(i):
        if i == 1:
            time.sleep(0.1)                      # fails last in time, first in order
            raise ValueError("one")
        if i == 3:
            raise KeyError("three")
        done.append(i)
        return i

    with pytest.raises(ValueError, match="one"):
        parallel.map_ordered(work, range(5), workers=5, name="t")
    assert sorted(done) == [0, 2, 4]
    outcomes = parallel.settle(work, range(5), workers=2, name="t")
    assert [r for r, _ in outcomes] == [0, None, 2, None, 4]
    assert [type(e).__name__ if e else None for _, e in outcomes] == [None, "ValueError", None, "KeyError", None]


def test_one_item_or_one_worker_runs_in_the_calling_thread():
    me = threading.get_ident()
    assert parallel.map_ordered(lambda _: threading.get_ident(), [1], workers=8, name="t") == [me]
    assert parallel.map_ordered(lambda _: threading.get_ident(), [1, 2], workers=1, name="t") == [me, me]
    assert parallel.settle(lambda _: 1 / 0, [1], workers=1, name="t")[0][0] is None
