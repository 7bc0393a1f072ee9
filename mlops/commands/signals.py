"""SIGTERM as Ctrl-C, for every command: ``mlops.cli`` runs each command under
``sigterm_as_ctrl_c``, so a cancelled CircleCI job, ``timeout`` or ``kill`` ends it the way Ctrl-C
does: its ``finally`` blocks run, one line ``interrupted``, exit 130. By default the process died
at once (exit 143, no line): a training left its MLflow run RUNNING for good, an evaluation its
downloaded model in TMPDIR, an infra validation its throw-away server and folder, a promotion
the path that records a move MLflow had applied. ``mlops sync`` deploys install their own handler
inside it (``mlops.commands.sync._interrupts``: stop at the deploy's safe points)."""
from __future__ import annotations

import contextlib
import signal

from mlops_common import stop


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM ends the block the way Ctrl-C does.

    The stop is also remembered (``mlops_common.stop``). Under ``stop.deferred()`` (TensorFlow's
    training loop, where an interrupt raised by the handler was dropped or crashed the process)
    the first signal only asks, and the loop raises it at its next batch; a second one raises at
    once. A deploy under ``stop.deferred()`` (``mlops demo``) stops at its own safe points on that
    ask (``DeployInterrupted``, hosts put back). Ctrl-C does the same while Python's own Ctrl-C
    handler is in place. Outside the main thread (``mlops.cli.main`` called from a thread)
    signals are left alone."""

    def interrupt(signum, frame):
        again = stop.asked()
        stop.ask(signal.Signals(signum).name)
        if again or not stop.deferring():
            raise KeyboardInterrupt

    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signals.append(signal.SIGINT)
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, interrupt)
    except ValueError:          # not the main thread: only it can set handlers
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.clear()
