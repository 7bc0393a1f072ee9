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


def test_a_signal_while_a_worker_starts_is_raised_only_after_every_call_returned(monkeypatch):
    """Found by CI (sixteenth stop): a forced stop landing while ``ThreadPoolExecutor.submit``
    started its second worker (after the thread ran, before the pool listed it for joining)
    let ``settle`` raise while that worker still put its host back: the put-back was recorded
    as failed. Now every started call returns before the signal is raised."""
    real_start, starts, done = threading.Thread.start, [], []

    def start(self):
        real_start(self)
        starts.append(self.name)
        if len(starts) == 2:                # the signal lands just after the second worker ran
            raise KeyboardInterrupt

    def work(i):
        time.sleep(0.2 if i == 0 else 0.6)   # the first worker is busy: the second takes item 1
        done.append(i)
        return i

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        parallel.settle(work, [0, 1], workers=2, name="t")
    assert sorted(done) == [0, 1], "settle raised while a call was still running"


def test_a_signal_while_waiting_is_raised_after_every_call_and_a_second_one_stops_the_wait():
    import signal

    done, seen, second, freed, two_began = [], [], threading.Event(), threading.Event(), threading.Event()

    def work(i):
        if i == 0:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        elif i == 1 and second.is_set():
            assert two_began.wait(30)           # under way when the wait stops (none begins after)
            deadline = time.monotonic() + 30    # a safety bound: left at once
            while len(seen) < 2 and time.monotonic() < deadline:   # after the first was handled
                time.sleep(0.01)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        if i == 2 and second.is_set():         # still running when the second signal stops the wait
            two_began.set()
            freed.wait(30)
        time.sleep(0.3 if i != 2 else 1.0)
        done.append(i)
        return i

    def handler(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt(len(seen))

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(KeyboardInterrupt) as first:
            parallel.settle(work, [0, 2], workers=2, name="t")
        assert sorted(done) == [0, 2] and first.value.args == (1,)
        done.clear()
        second.set()
        with pytest.raises(KeyboardInterrupt) as stopped:
            parallel.settle(work, [0, 1, 2], workers=3, name="t")
        assert stopped.value.args == (3,) and 2 not in done, "the second signal did not stop the wait"
    finally:
        freed.set()
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 30           # the abandoned call still finishes in its thread
    while 2 not in done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(done) == [0, 1, 2]


def test_a_signal_inside_start_waits_for_the_call_of_a_thread_not_yet_seen_alive(monkeypatch):
    """A signal landing inside ``Thread.start`` (while it waits for the new thread to say it
    started) leaves a thread that runs, but has no ident or is not yet alive when ``settle``
    looks: ``settle`` raised while that thread still put its host back (sixteenth stop, review).
    Here the second worker runs its ``run`` in a thread of its own and stays unstarted to look at."""
    real_start, done, second_began, raised = threading.Thread.start, [], threading.Event(), threading.Event()

    def start(self):
        if not self.name.endswith("_1"):
            return real_start(self)
        real_start(threading.Thread(target=self.run, name="t_1_running"))
        raise KeyboardInterrupt

    def work(i):
        if i == 0:
            assert second_began.wait(5)         # the second worker takes item 1
        else:
            second_began.set()
            raised.wait(2)                      # a long put-back; over once settle raised (or 2 s)
        done.append(i)
        return i

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel.settle(work, [0, 1], workers=2, name="t")
        at_raise = sorted(done)
    finally:
        raised.set()
    assert at_raise == [0, 1], "settle raised while a call was still running"


def test_a_signal_inside_the_start_of_the_only_thread_lets_it_begin_no_call(monkeypatch):
    """``inline=False`` with one item (a single host's put-back): a signal inside the start of its
    only thread left no thread to wait for and no call counted yet; ``settle`` raised and the
    thread began the call afterwards, unwaited. Now no call begins once no thread surely runs."""
    real_start, calls, go, late = threading.Thread.start, [], threading.Event(), []

    def start(self):
        def later():
            if go.wait(5):                   # the thread gets going only after the signal was seen
                self.run()
        helper = threading.Thread(target=later, name="t_0_late")
        real_start(helper)
        late.append(helper)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel.settle(calls.append, [0], workers=8, name="t", inline=False)
    finally:
        go.set()
        monkeypatch.undo()
        for helper in late:
            helper.join(5)
    assert calls == [], "a call began after settle raised"


def _two_ctrl_c_while_two_calls_run(monkeypatch, **kw) -> list[int]:
    """``settle`` over four items, two workers: once items 0 and 1 are under way, two Ctrl-C land
    in its wait (out of ``join``, in the main thread); the second stops the wait. Returns every
    item whose call began, once the abandoned calls finished."""
    began, under_way, go = [], {0: threading.Event(), 1: threading.Event()}, threading.Event()
    real_join, raised = threading.Thread.join, []

    def work(i):
        began.append(i)
        if i in under_way:
            under_way[i].set()
            assert go.wait(10)
        return i

    def join(self, timeout=None):
        if threading.current_thread() is threading.main_thread() and self.name.startswith("twice_") \
                and len(raised) < 2:
            assert all(e.wait(10) for e in under_way.values())
            raised.append(1)
            raise KeyboardInterrupt(len(raised))
        return real_join(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", join)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            parallel.settle(work, [0, 1, 2, 3], workers=2, name="twice", **kw)
        assert e.value.args == (2,)
    finally:
        go.set()
        for t in [t for t in threading.enumerate() if t.name.startswith("twice_")]:
            real_join(t, 10)
            assert not t.is_alive(), f"{t.name} still runs"
    return sorted(began)


def test_after_a_second_signal_no_call_begins_unless_a_put_back():
    """Eighteenth stop: a second signal stopped ``settle``'s wait, but its threads went on to the
    next items: a prepare or switch phase began further hosts, retention removed versions on hosts
    whose locks the stop had released. Now no call begins after it; a put-back (``put_back``:
    the restore, the lock releases) still goes on to every item."""
    import _pytest.monkeypatch

    with _pytest.monkeypatch.MonkeyPatch.context() as mp:
        assert _two_ctrl_c_while_two_calls_run(mp) == [0, 1], "a call began after the second signal"
    with _pytest.monkeypatch.MonkeyPatch.context() as mp:
        assert _two_ctrl_c_while_two_calls_run(mp, put_back=True) == [0, 1, 2, 3]


def test_last_out_runs_what_was_queued_in_order_by_the_last_user_still_counted():
    """``parallel.LastOut`` (a connection's lock release, then its close; the work directory's
    removal): nothing queued runs under a call still under way; the last call runs it all, in the
    order queued, and what is queued while it runs (a close asked during the release) waits for
    it rather than running at once beside it; with no call under way ``done`` runs at once."""
    uses, ran = parallel.LastOut(), []
    assert uses.later(lambda: ran.append("x")) is False and ran == []     # no user: the caller's
    uses.done(lambda: ran.append("now"))
    assert ran == ["now"]
    ran.clear()

    def release():
        ran.append("release")
        uses.done(lambda: ran.append("close"))      # asked while the release runs: after it
        ran.append("release done")

    with uses.use():
        with uses.use():
            assert uses.later(release) is True
        assert ran == []                            # one call still under way
    assert ran == ["release", "release done", "close"]
    uses.done(lambda: ran.append("again"))
    assert ran[-1] == "again"
