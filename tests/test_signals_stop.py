"""A cancel that must not be lost: SIGTERM's KeyboardInterrupt can be dropped where it lands (a
``__del__``, C code that clears the error), and a CI run saw a training cancelled this way train on
for two minutes, its MLflow run RUNNING, until the SIGKILL. The stop is remembered and the training
raises it again at its next batch."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mlops.commands.signals import sigterm_as_ctrl_c
from mlops_common import stop
from tests.helpers import REPO, signal_at_every_line


def _dropped_sigterm() -> None:
    """SIGTERM this process and drop its KeyboardInterrupt, as a ``__del__`` drops it."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # the handler runs at the next bytecode boundary
            time.sleep(0.01)
    except KeyboardInterrupt:
        return
    raise AssertionError("SIGTERM did not interrupt within 10 s")


def test_a_training_whose_sigterm_interrupt_was_dropped_stops_at_its_next_batch():
    from mlproject.datasets import load_partition
    from mlproject.model import build_model, fit, seed_everything

    seed_everything(3)
    part = load_partition("digits")
    model = build_model((8, 8, 1), 10, 0.01)
    epochs: list[int] = []
    with sigterm_as_ctrl_c():
        _dropped_sigterm()
        with pytest.raises(KeyboardInterrupt):
            fit(model, part.base.take(np.arange(64)), part.heldout, epochs=30, batch_size=16, seed=3,
                on_epoch=lambda e, logs: epochs.append(e), stream=io.StringIO())
    assert epochs == []                         # not one epoch more after the cancel
    assert not stop.asked()                     # forgotten once the block has ended


def test_the_block_puts_back_both_handlers_and_forgets_the_stop():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with sigterm_as_ctrl_c():
        assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT)   # Ctrl-C remembered too
        _dropped_sigterm()
        assert stop.asked()
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_asked()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert not stop.asked()
    stop.raise_if_asked()                       # nothing asked: nothing raised


def test_a_custom_ctrl_c_handler_is_left_alone():
    def mine(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with sigterm_as_ctrl_c():
            assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


def test_under_deferred_the_first_signal_only_asks_and_the_block_raises_it_when_it_ends():
    """TensorFlow's C++ calls back into Python: an interrupt raised by the handler there was
    dropped or crashed the process (SIGSEGV). Under ``stop.deferred()`` the handler raises
    nothing; the stop is raised when the block ends, and a second signal raises at once."""
    with sigterm_as_ctrl_c():
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:      # the handler has run by now, raising nothing
                    time.sleep(0.01)
                assert stop.asked()
                reached = True
        assert reached
    with sigterm_as_ctrl_c():
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt), stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)        # asked ...
            os.kill(os.getpid(), signal.SIGTERM)        # ... and insisted: raised at once
            time.sleep(10)
        assert time.monotonic() - started < 5
    assert not stop.asked()
    assert stop.signalled("SIGTERM")            # no block left open: the next signal stops at once
    stop.clear()


@pytest.mark.parametrize("command", [("registry", "status"), ("registry", "reconcile"), ("sync", "status"),
                                     ("sync", "plan"), ("sync", "smoke")])
def test_every_command_stopped_by_sigterm_says_interrupted_and_exits_130(tmp_path, command):
    """Found at the twelfth stop: only the commands that wrapped themselves (train, evaluate, gate,
    promote, rollback, demo, infra-validate, the deploys) turned SIGTERM into Ctrl-C; the others
    died at once (exit -15 / 143, no line), unlike the same command cancelled with Ctrl-C. Each
    command is held reading a server (its MLflow, or its host's TF Serving) that accepts the
    connection and never answers."""
    import socket
    import subprocess
    import sys

    from tests.helpers import REPO

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLOPS_HOME": str(tmp_path),
               "MLOPS_MODEL_NAME": "held", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLOPS_SYNC_TARGET": f"file://{tmp_path / 'base'}", "MLOPS_SYNC_REST_URL": f"http://127.0.0.1:{port}"}
        for name in ("MLOPS_LEDGER_URL", "MLOPS_HOSTS_FILE"):
            env.pop(name, None)
        proc = subprocess.Popen([sys.executable, "-m", "mlops", *command], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            silent.settimeout(0.5)
            deadline = time.monotonic() + 120   # Python, mlflow and the command's imports first
            conn = None
            while conn is None and proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn, _ = silent.accept()
            assert conn is not None, (proc.poll(), proc.communicate(timeout=60) if proc.poll() is not None else "")
            with conn:
                time.sleep(0.5)                 # its request sent: it waits for the answer
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err[-3000:]


def test_the_innermost_block_says_what_each_signal_does():
    """One handler for every command (``stop.signalled``): outside a block a signal stops at once;
    in a deploy's block the first actions run, then the deploy is asked to stop at its safe
    points (said once), then one more signal forces it; while ``at_once()`` every signal stops."""
    said: list[str] = []
    try:
        assert stop.signalled("SIGTERM") and stop.reason() == "SIGTERM"
        stop.clear()
        with stop.at_safe_points(lambda name: said.append(f"graceful {name}"),
                                 announce=lambda name: said.append(f"asked {name}")):
            assert not stop.signalled("SIGTERM") and not stop.asked()
            assert not stop.signalled("SIGINT") and stop.reason() == "SIGINT"
            assert stop.signalled("SIGTERM")
        assert said == ["graceful SIGTERM", "asked SIGINT"]
        stop.clear()
        moved = False
        with stop.at_safe_points(at_once=lambda: not moved):
            assert stop.signalled("SIGTERM") and stop.asked()   # the registry has not moved: at once
            moved = True
            assert stop.signalled("SIGTERM")    # a signal after that one (a finalizer swallowed it): forced
        stop.clear()
        with stop.at_safe_points(at_once=lambda: not moved):
            assert not stop.signalled("SIGTERM") and stop.asked()   # moved: the first only asks
        assert stop.signalled("SIGTERM")        # the block is gone: at once again
    finally:
        stop.clear()


def test_a_deploy_leaves_an_ignored_ctrl_c_ignored():
    """A deploy started in the background of a script (`mlops sync deploy &`, nohup) has SIGINT
    ignored, as POSIX shells do: a Ctrl-C meant for the script must not stop the deploy. The
    deploy's own handler took SIGINT whatever it was before; now the one handler of every
    command takes it only from Python's default."""
    from mlops.commands.sync import _interrupts

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_as_ctrl_c(), _interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)                     # a handler would have run by now
            assert not stop.asked()
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.clear()


def test_nested_blocks_alike_each_leave_as_themselves():
    """Found in review: blocks were removed by equality (a dataclass), not identity, so an inner
    ``deferred()`` ending removed the outer one, equal to it, and kept itself; a signal in the outer
    block then made the outer's end raise ValueError, and the inner block stayed open for good (the
    next signal only asked instead of stopping the command)."""
    try:
        with pytest.raises(KeyboardInterrupt), stop.deferred():
            with stop.deferred():
                pass
            assert not stop.signalled("SIGTERM") and stop.asked()     # the outer block: it only asks
        assert stop.signalled("SIGTERM")        # no block left open: at once again
    finally:
        stop.clear()
        stop._blocks.clear()


def _no_space(name):
    raise OSError(28, "No space left on device")      # stderr redirected to a full disk


def test_a_failing_announcement_does_not_lose_the_stop():
    """Found by review (fifteenth stop): the deploy's announcement of a stop was printed before
    the stop was asked; a print that failed (stderr on a full disk) left the deploy not asked. Nor
    does the failed print escape the handler into the deploy step the signal landed in."""
    try:
        with stop.at_safe_points(announce=_no_space):
            assert stop.signalled("SIGHUP") is False
            assert stop.asked() and stop.reason() == "SIGHUP"
    finally:
        stop.clear()


def test_a_watchs_failing_first_signal_line_still_stops_it_after_the_pass(tmp_path):
    """Found by review (fifteenth stop): `sync watch`'s first signal printed its line, then set the
    stop: a print that failed left the watch running pass after pass. The registry and the deploy
    on stand-ins; the signal's handler is called from the first pass with a stderr that fails."""
    path = tmp_path / "hosts.toml"
    path.write_text('[[hosts]]\nname = "a"\ntarget = "file:///srv/a"\nrest_url = "http://127.0.0.1:8501"\n')
    code = f"""
import sys
from types import SimpleNamespace
from serving_sync import fleet_plan
from mlops import cli
from mlops_common import stop
from tests.helpers import REPO
passes = []
class Full:
    def write(self, text):
        raise OSError(28, "No space left on device")
    def flush(self):
        pass
def plan(model, hosts, **kw):
    passes.append(1)
    if len(passes) == 1:
        err, sys.stderr = sys.stderr, Full()
        try:
            stop.signalled("SIGTERM")
        except OSError:
            pass
        finally:
            sys.stderr = err
    return SimpleNamespace(errors={{}}, up_to_date=True, version=3)
fleet_plan.plan_fleet = plan
import serving_sync.watch as w
w.FleetReconciler._unrecorded = lambda self, v: None
rc = cli.main(["sync", "watch", "--model-name", "digits", "--hosts", {str(path)!r}, "--interval", "0.5",
               "--max-seconds", "3", "--json"])
print("passes", len(passes), file=sys.stderr)
sys.exit(rc)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "passes 1\n" in p.stderr, p.stderr[-3000:]


def test_a_second_sighup_never_forces_a_stop_a_second_sigterm_does():
    """Found by review (fifteenth stop): a dropped SSH session can deliver SIGHUP twice (the
    kernel's hangup to the foreground group, bash passing its own on to its jobs). With SIGHUP
    handled as SIGTERM, the second one forced the stop at once: a deploy cut where it stood. A
    SIGHUP now only asks; a person's second SIGTERM (or Ctrl-C) still forces."""
    previous = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with sigterm_as_ctrl_c():
            with stop.at_safe_points():
                os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.01)                      # let the handlers run (delivered on the next bytecode)
                assert stop.asked() and stop.reason() == "SIGHUP"
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1)
        finished = []
        with sigterm_as_ctrl_c():                     # sync watch: its first signal finishes the pass
            with stop.at_safe_points(finished.append):
                os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.01)
                assert finished == ["SIGHUP"] and not stop.asked()    # not taken on to "stop the deploy"
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_signal_asks_whichever_line_of_the_flags_set_or_clear_it_lands_on():
    """Python runs a signal handler in the main thread between two of its lines, also inside
    another handler or ``stop.ask`` (``fleet``'s ``on_signal``). With ``stop``'s flag a
    ``threading.Event``, a handler landing while that thread held the Event's lock (in ``set`` or
    ``clear``) waited for the lock forever: the command hung until SIGKILL. Here the "handler"
    runs at every line ``ask`` and ``clear`` execute (once each), as a signal may."""
    seen = []

    def main_thread_work():
        stop.ask("interrupted")
        stop.clear()
        seen.append(stop.asked())

    # the handler does, outside any block, what it does: asks
    fired = signal_at_every_line(main_thread_work, lambda: stop.signalled("SIGTERM"), timeout=10)
    try:
        assert len(seen) == 1 and fired
        assert stop.signalled("SIGTERM") and stop.asked() and stop.reason() == "SIGTERM"
    finally:
        stop.clear()


class _SignalInsideWrite(io.RawIOBase):
    """A stderr file whose first write is where a signal lands: the handler runs while the main
    thread is inside the buffered stream's write, as Python runs it between two lines."""

    def __init__(self, path, handler):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.handler, self.fired = handler, []

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def write(self, b):
        if not self.fired:
            self.fired.append(True)
            self.handler()
        return os.write(self.fd, bytes(b))


def test_a_signal_landing_in_a_write_to_stderr_still_says_it_and_cuts_no_step(tmp_path):
    """Found by review (seventeenth stop): the deploy's announcement of a stop and `sync watch`'s
    first-signal line were printed from the signal handler through stderr's buffered stream; a
    signal landing while the main thread was writing to stderr (a progress line) made that print
    raise ``RuntimeError: reentrant call``, which escaped into the deploy step it landed in. The
    line now goes straight to the file descriptor then."""
    from mlops.commands import sync

    lines = []
    path = tmp_path / "stderr"
    signalled = []

    def handler():
        signalled.append(stop.signalled("SIGTERM"))

    raw = _SignalInsideWrite(path, handler)
    err = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", line_buffering=True)
    saved, sys.stderr = sys.stderr, err
    try:
        with sync._interrupts():
            print("prepare a: done", file=sys.stderr, flush=True)     # must not raise
            lines.append("after")
    finally:
        sys.stderr = saved
        err.close()
        stop.clear()
    text = path.read_text()
    assert lines == ["after"] and signalled == [False]
    assert "prepare a: done" in text
    assert "SIGTERM: stopping the deploy at its next safe point" in text, text
