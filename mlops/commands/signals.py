"""Signals for commands that clean up on Ctrl-C: SIGTERM (CircleCI cancelling a job, ``timeout``,
``kill``) is turned into the same KeyboardInterrupt, so their ``finally`` blocks run."""
from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM ends the block the way Ctrl-C does. By default the process died at once: a training
    left its MLflow run RUNNING for good, an infra validation its throw-away server and folder."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
