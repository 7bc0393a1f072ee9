"""A stop that a signal asked for, remembered, and raised where it is safe to raise.

Python runs a signal handler wherever the main thread happens to be, and a KeyboardInterrupt
raised there can land under TensorFlow's C++, which calls back into Python: there it was dropped
(a training cancelled by CircleCI trained on, its MLflow run RUNNING, until the SIGKILL) or it
crashed the process (SIGSEGV, seen here raised inside TensorFlow's tensor constructor). So the
one handler (``mlops.commands.signals.sigterm_as_ctrl_c``, around every command) asks
``signalled`` what a signal should do: outside any block below it stops the command at once;
inside ``at_safe_points()`` (a deploy) or ``deferred()`` (a training's ``fit``) it only sets
this flag, and the code raises at its own safe points (after each batch; a deploy's
``serving_sync.cancel.check`` raises ``DeployInterrupted`` and puts the hosts back).

It is the one flag for "a signal asked for a stop", and the blocks are the one place that says
how a signal stops the code running now.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import sys
from typing import Callable


class Wake:
    """``threading.Event``'s set, is_set, clear and wait, safe to ``set`` from a signal handler
    (this module's flag; ``sync watch``'s wake): Python runs a handler in the main thread between
    two of its lines, maybe while that thread holds the Event's lock (in ``set``, in ``clear``,
    going into or out of ``wait``), and ``Event.set`` then waited forever for that lock — the
    command hung until SIGKILL. ``SimpleQueue.put`` is reentrant (no lock a handler can wait for)."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def set(self) -> None:
        self._q.put(True)

    def is_set(self) -> bool:
        return not self._q.empty()

    def clear(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()

    def wait(self, timeout: float | None = None) -> bool:
        try:
            self._q.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return False
        self._q.put(True)          # set until ``clear``, as an Event
        return True


_asked = Wake()
_why = {"reason": ""}


@dataclasses.dataclass(eq=False)     # removed by identity: two blocks alike are two blocks
class _Block:
    """How a signal stops the innermost block: the n-th signal runs ``first[n]`` (``sync watch``:
    finish the pass, then stop); the next one calls ``announce`` and asks; one more stops at
    once. While ``at_once()`` every signal asks and stops at once (``sync rollback`` before the
    registry moved: nothing a safe point would put back has begun)."""

    first: tuple[Callable[[str], None], ...]
    announce: Callable[[str], None] | None
    at_once: Callable[[], bool]
    signals: int = 0


_blocks: list[_Block] = []


def ask(reason: str = "") -> None:
    """Remember that a signal (``reason``: its name, e.g. ``SIGTERM``) asked the command to stop."""
    _why["reason"] = reason
    _asked.set()


def asked() -> bool:
    return _asked.is_set()


def reason() -> str:
    """What asked (``ask``'s reason), "" when nothing did or it was not said."""
    return _why["reason"] if _asked.is_set() else ""


def clear() -> None:
    """Forget it: the block the signal was meant for has ended."""
    _asked.clear()
    _why["reason"] = ""


def tell(text: str) -> None:
    """``text`` as a line on stderr, from a signal handler. The handler runs in the main thread
    between two of its lines, maybe inside a write to stderr: the buffered stream then raises
    ``RuntimeError: reentrant call`` (it escaped into the deploy step the signal landed in), so
    the line goes straight to the file descriptor instead. A stderr that cannot be written (a
    full disk, a closed pipe) loses the line, never the stop."""
    try:
        print(text, file=sys.stderr, flush=True)
    except RuntimeError:                # reentrant: the signal landed in a write to stderr
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(sys.stderr.fileno(), (text + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def signalled(name: str) -> bool:
    """A signal named ``name`` arrived: do what the innermost block says (see ``_Block``) and
    remember the stop. True when the handler must stop the command at once (KeyboardInterrupt)."""
    if not _blocks:
        ask(name)
        return True
    block = _blocks[-1]
    n, block.signals = block.signals, block.signals + 1
    if block.at_once():
        ask(name)
        return True
    if n < len(block.first):
        block.first[n](name)
        return False
    if n > len(block.first):
        return True
    ask(name)                       # before the announcement: a print that fails cannot lose the stop
    if block.announce is not None:
        try:                        # announcements print through ``tell``; any other that fails
            block.announce(name)    # (stderr on a full disk) must not cut the deploy step the
        except OSError:             # signal landed in, which the block exists to keep whole
            pass
    return False


@contextlib.contextmanager
def at_safe_points(*first: Callable[[str], None], announce: Callable[[str], None] | None = None,
                   at_once: Callable[[], bool] = lambda: False):
    """Code a signal must not cut where it stands (a deploy: hosts half switched): after the
    ``first`` actions a signal only asks, and the code raises at its own safe points; one more
    signal forces it. A stop asked late, after the last safe point, does not undo work done."""
    block = _Block(first, announce, at_once)
    _blocks.append(block)
    try:
        yield
    finally:
        _blocks.remove(block)       # by identity: a block of another thread may have come after it


@contextlib.contextmanager
def deferred():
    """Code under which an interrupt must not be raised by the handler (TensorFlow's C++ calls
    back into Python). Its loop calls ``raise_if_asked()`` at safe points; a stop asked during
    the block is raised when it ends."""
    with at_safe_points():
        yield
    raise_if_asked()


def raise_if_asked() -> None:
    """Raise the KeyboardInterrupt when a signal asked for a stop: a safe point in a loop."""
    if _asked.is_set():
        raise KeyboardInterrupt
