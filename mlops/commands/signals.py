"""Signals for commands that clean up on Ctrl-C: SIGTERM (CircleCI cancelling a job, ``timeout``,
``kill``) is turned into the same KeyboardInterrupt, so their ``finally`` blocks run."""
from __future__ import annotations

import contextlib
import signal

from mlops_common import stop


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM ends the block the way Ctrl-C does. By default the process died at once: a training
    left its MLflow run RUNNING for good, an infra validation its throw-away server and folder.

    The stop is also remembered (``mlops_common.stop``). Under ``stop.deferred()`` (TensorFlow's
    training loop, where an interrupt raised by the handler was dropped or crashed the process)
    the first signal only asks, and the loop raises it at its next batch; a second one raises at
    once. A deploy under ``stop.deferred()`` (``mlops demo``) stops at its own safe points on that
    ask (``DeployInterrupted``, hosts put back). Ctrl-C does the same while Python's own Ctrl-C
    handler is in place."""

    def interrupt(signum, frame):
        again = stop.asked()
        stop.ask(signal.Signals(signum).name)
        if again or not stop.deferring():
            raise KeyboardInterrupt

    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signals.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.clear()
