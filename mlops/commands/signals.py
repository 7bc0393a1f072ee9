"""SIGTERM (and SIGHUP) as Ctrl-C, for every command: ``mlops.cli`` runs each command under
``sigterm_as_ctrl_c``, so a cancelled CircleCI job, ``timeout``, ``kill`` or a dropped SSH session
ends it the way Ctrl-C does: its ``finally`` blocks run, one line ``interrupted``, exit 130. By default the process died
at once (exit 143, no line): a training left its MLflow run RUNNING for good, an evaluation its
downloaded model in TMPDIR, an infra validation its throw-away server and folder, a promotion
the path that records a move MLflow had applied. Code that a signal must not cut where it stands
says so with ``mlops_common.stop``'s blocks (a deploy stops at its safe points, a training after
its batch); this one handler asks them."""
from __future__ import annotations

import contextlib
import signal

from mlops_common import stop


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM ends the block the way Ctrl-C does; so does SIGHUP unless it is ignored (``nohup``).

    The stop is also remembered (``mlops_common.stop``). Inside ``stop.deferred()`` (TensorFlow's
    training loop, where an interrupt raised by the handler was dropped or crashed the process)
    or ``stop.at_safe_points()`` (a deploy) the first signal only asks, and the code stops at its
    next safe point (the next batch; ``DeployInterrupted``, hosts put back); a second one raises
    at once (``stop.signalled``). Ctrl-C does the same while Python's own Ctrl-C handler is in
    place. Outside the main thread (``mlops.cli.main`` called from a thread) signals are left
    alone."""

    hung_up = []

    def interrupt(signum, frame):
        # a dropped SSH session can deliver SIGHUP more than once (the kernel's hangup to the
        # foreground group, bash passing its own on to its jobs, the session leader's exit): a
        # SIGHUP is no person's next request, so it never takes a stop a step further
        if signum == signal.SIGHUP:
            if hung_up or stop.asked():
                return
            hung_up.append(True)
        if stop.signalled(signal.Signals(signum).name):
            raise KeyboardInterrupt

    signals = [signal.SIGTERM]
    # SIGHUP (an SSH session dropped, a terminal closed) is SIGTERM: it killed a deploy or a watch
    # outright (exit 129, hosts maybe half switched, its lock left); left alone when ignored (nohup)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signals.append(signal.SIGHUP)
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
