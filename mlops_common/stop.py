"""A stop that a signal asked for, remembered, and raised where it is safe to raise.

Python runs a signal handler wherever the main thread happens to be, and a KeyboardInterrupt
raised there can land under TensorFlow's C++, which calls back into Python: there it was dropped
(a training cancelled by CircleCI trained on, its MLflow run RUNNING, until the SIGKILL) or it
crashed the process (SIGSEGV, seen here raised inside TensorFlow's tensor constructor). So the
handler sets this flag; inside ``deferred()`` (a training's ``fit``) it raises nothing, and the
loop raises the interrupt at its own safe points (after each batch) or when the block ends.

It is the one flag for "a signal asked for a stop": a deploy's safe points read it too
(``serving_sync.cancel.check`` raises ``DeployInterrupted``), whether ``mlops sync``'s handler
asked or ``sigterm_as_ctrl_c``'s did while a deploy ran under ``deferred()`` (``mlops demo``).
"""
from __future__ import annotations

import contextlib
import threading

_asked = threading.Event()
_depth = {"n": 0}
_why = {"reason": ""}


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


def deferring() -> bool:
    """True inside ``deferred()``: a signal handler should only ``ask()``."""
    return _depth["n"] > 0


@contextlib.contextmanager
def deferred():
    """Code under which an interrupt must not be raised by the handler (TensorFlow's C++ calls
    back into Python). Its loop calls ``raise_if_asked()`` at safe points; a stop asked during
    the block is raised when it ends."""
    _depth["n"] += 1
    try:
        yield
    finally:
        _depth["n"] -= 1
    raise_if_asked()


def raise_if_asked() -> None:
    """Raise the KeyboardInterrupt when a signal asked for a stop: a safe point in a loop."""
    if _asked.is_set():
        raise KeyboardInterrupt
