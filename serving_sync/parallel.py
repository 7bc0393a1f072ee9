"""One function over many hosts, a bounded number at once, answers in the hosts' order.

A fleet is connected and observed in about the time of its slowest host rather than the sum of
all of them, and what a person reads (which host failed first) does not depend on which thread
finished first.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def settle(fn: Callable[[T], R], items: Iterable[T], *, workers: int, name: str,
           on_signal: Callable[[], object] | None = None,
           inline: bool = True, put_back: bool = False) -> list[tuple[R | None, BaseException | None]]:
    """``(result, None)`` or ``(None, error)`` for each item, in the items' order, once every
    call has returned (``workers`` at most at once; one item runs in this thread unless not
    ``inline``, which keeps a signal out of the call even then).

    A signal in this thread (Ctrl-C, SIGTERM) is raised only after every call has returned, so a
    put-back is never abandoned half way (``on_signal``, called as it lands, tells the calls to stop
    early); a second one stops the wait, and no call begins after it (calls under way finish in
    their threads) unless ``put_back``: a put-back's or a release's calls go on to every item. Own threads rather than a
    ThreadPoolExecutor: its ``submit`` adds a new worker to the threads it joins only after the
    thread started, so a signal landing in between left that worker (and its host) unwaited."""
    items = list(items)
    if inline and (len(items) <= 1 or workers <= 1):
        out: list[tuple[R | None, BaseException | None]] = []
        for item in items:
            try:
                out.append((fn(item), None))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, in order
                out.append((None, exc))
        return out
    outcomes: list[tuple[R | None, BaseException | None] | None] = [None] * len(items)
    todo, taking = iter(range(len(items))), threading.Condition()
    running = [0]       # calls under way, counted under ``taking`` as their item is taken

    def work() -> None:
        while True:
            with taking:
                i = next(todo, None)
                if i is None:
                    return
                running[0] += 1
            try:
                outcomes[i] = (fn(items[i]), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, in order
                outcomes[i] = (None, exc)
            finally:
                with taking:
                    running[0] -= 1
                    taking.notify_all()

    threads = [threading.Thread(target=work, name=f"{name}_{n}") for n in range(max(1, min(workers, len(items))))]
    stop: BaseException | None = None
    launched = 0

    def signalled(stop: BaseException | None, exc: BaseException) -> BaseException:
        nonlocal todo
        if stop is not None and not put_back:   # a second signal: the threads take no other item
            with taking:
                todo = iter(())
        return _first_signal(stop, exc, on_signal)

    for t in threads:                    # each started thread takes items until none are left
        try:
            t.start()
            launched += 1
        except BaseException as exc:  # noqa: BLE001 - raised once every started call returned
            stop = signalled(stop, exc)
    if not launched:                     # no thread surely runs to the end: none begins a call now
        with taking:
            todo = iter(())
    for t in threads:
        while t.ident is not None and t.is_alive():
            try:
                t.join()
            except BaseException as exc:  # noqa: BLE001 - the first signal waits; a second one stops
                stop = signalled(stop, exc)
    # a signal inside ``start`` (while it waits for the new thread) leaves a thread that runs but
    # is not yet alive, or has no ident, for the joins above: its call is waited for by count
    # (every thread joined above ran until no item was left, or none was: no call begins now)
    with taking:
        while running[0]:
            try:
                taking.wait()
            except BaseException as exc:  # noqa: BLE001 - as above
                stop = signalled(stop, exc)
    if stop is not None:
        raise stop
    return outcomes  # type: ignore[return-value]  # every item was taken by a thread that ran to the end


def _first_signal(stop: BaseException | None, exc: BaseException,
                  on_signal: Callable[[], object] | None) -> BaseException:
    """The signal to raise once every call returned; a second one is raised at once."""
    if stop is not None:
        raise exc
    if on_signal is not None:
        on_signal()
    return exc


class Handover:
    """What the calls of a ``settle`` open or take, handed to its caller under a lock. A second
    signal makes ``settle`` raise while calls still run: the caller then ``leave``s (and cleans up
    what was handed over), and a call that returns later is told so by ``keep`` and undoes what it
    took itself (a lock taken, a connection opened after the stop stayed behind before)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = False

    def keep(self, hand: Callable[..., object], *args: object) -> bool:
        """``hand(*args)`` and True while the caller waits; False once it left (nothing is called)."""
        with self._lock:
            if self._left:
                return False
            hand(*args)
            return True

    @property
    def left(self) -> bool:
        """The caller stopped waiting: a call not begun yet takes nothing."""
        return self._left

    def leave(self) -> None:
        """From now on ``keep`` hands over nothing: what was handed over is the caller's to undo."""
        with self._lock:
            self._left = True


class LastOut:
    """Clean-ups that wait for the calls still using what they remove: each call runs inside
    ``use()``; ``later(fn)`` queues ``fn`` when a call is under way, for the last one to run as it
    leaves (still counted, so what is queued meanwhile runs after it, in order); ``done(fn)`` runs
    it now otherwise. A second signal stops ``settle``'s wait while calls still run: the deploy's
    work directory was removed under a prepare still uploading from it, and a host's connection
    closed (its lock released) under a step still changing the host (``connections.in_use``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._then: list[Callable[[], object]] = []

    @contextlib.contextmanager
    def use(self):
        with self._lock:
            self._users += 1
        try:
            yield
        finally:
            error: BaseException | None = None
            while True:
                with self._lock:
                    if self._users > 1 or not self._then:
                        self._users -= 1
                        break
                    fn = self._then.pop(0)
                try:
                    fn()
                except BaseException as exc:  # noqa: BLE001 - the rest still runs; the first is raised
                    error = error or exc
            if error is not None:
                raise error

    def later(self, fn: Callable[[], object]) -> bool:
        """Queue ``fn`` for the last call under way (True), or leave it to the caller (False)."""
        with self._lock:
            if self._users:
                self._then.append(fn)
                return True
        return False

    def done(self, fn: Callable[[], object]) -> None:
        """``fn()`` now, or by the last call still under way once it returns."""
        if not self.later(fn):
            fn()


def map_ordered(fn: Callable[[T], R], items: Iterable[T], *, workers: int, name: str,
                inline: bool = True) -> list[R]:
    """``fn`` over ``items`` (see ``settle``); the first failure in the items' order is raised."""
    outcomes = settle(fn, items, workers=workers, name=name, inline=inline)
    for _, exc in outcomes:
        if exc is not None:
            raise exc
    return [result for result, _ in outcomes]
