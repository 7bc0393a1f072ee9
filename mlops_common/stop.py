"""A stop that a signal asked for, remembered after its KeyboardInterrupt.

Python runs a signal handler wherever the main thread happens to be, and the KeyboardInterrupt it
raises there is not always seen: raised inside a ``__del__`` or under C code that clears the error,
it is dropped and the command runs on (a training cancelled by CircleCI kept training, its MLflow
run RUNNING, until the SIGKILL). So the handler also sets this flag, and long loops check it at
their own safe points (the training at each batch) and raise the interrupt again there.
"""
from __future__ import annotations

import threading

_asked = threading.Event()


def ask() -> None:
    """Remember that a signal asked the command to stop."""
    _asked.set()


def asked() -> bool:
    return _asked.is_set()


def clear() -> None:
    """Forget it: the block the signal was meant for has ended."""
    _asked.clear()


def raise_if_asked() -> None:
    """Raise the KeyboardInterrupt again when a signal asked for a stop: a safe point in a loop."""
    if _asked.is_set():
        raise KeyboardInterrupt
