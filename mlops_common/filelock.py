"""An exclusive ``flock`` held for a block, waited for in bounded polls (released by the kernel if
the process dies, so a killed holder never leaves it taken)."""
from __future__ import annotations

import contextlib
import fcntl
import time
from typing import IO, Callable, Iterator


@contextlib.contextmanager
def held(f: IO, *, timeout: float, poll: float, timed_out: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive lock on the open file ``f`` for the block; ``timed_out()`` is raised when
    another holder keeps it past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise timed_out() from None
            time.sleep(poll)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
