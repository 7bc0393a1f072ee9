"""Helpers shared by tests (not fixtures)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# TF Serving's own test models, copied into the repository (see its README.md).
TF_SERVING_TESTDATA = REPO / "tests" / "testdata" / "tensorflow_serving"


def run_mlops(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
              cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``mlops`` command line in a subprocess (as a user would)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mlops", *args], env=full_env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, input=input)


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr, in order."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@contextlib.contextmanager
def loopback_http(handler):
    """A threaded HTTP server on 127.0.0.1 with ``handler`` for the block; yields its base URL
    (``http://127.0.0.1:<port>``), then stops it and frees the port."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def mlflow_client(uri: str):
    """An ``MlflowClient`` whose tracking AND registry are ``uri``: never the process-wide
    registry URI another test (or ``registry.client``) set with ``mlflow.set_registry_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def mlflow_process_state(env: dict[str, str] | None = None):
    """Apply ``env`` to ``os.environ`` for the block, then put the environment AND MLflow's
    process-wide URIs and active experiment back. ``mlflow.set_registry_uri`` /
    ``set_tracking_uri`` / ``set_experiment`` (called in-process by registry.client and mlproject)
    change module globals and ``os.environ`` (MLFLOW_REGISTRY_URI, MLFLOW_EXPERIMENT_ID, ...);
    without this a later test or subprocess talks to an earlier test's server or experiment."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            from mlflow.tracking import fluent
            from mlflow.tracking._model_registry import utils as registry_utils
            from mlflow.tracking._tracking_service import utils as tracking_utils

            registry_utils._registry_uri = None
            tracking_utils._tracking_uri = None
            fluent._active_experiment_id = None
        os.environ.clear()
        os.environ.update(saved)


def order_free(obj):
    """``obj`` with every dict sorted by key and every list sorted: for comparing JSON answers
    whose order TF Serving does not promise (model status lists, metadata maps)."""
    import json

    if isinstance(obj, dict):
        return {k: order_free(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return sorted((order_free(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    return obj


def sigterm_when_held(proc: subprocess.Popen, marker: Path, *, before_signal=None, timeout: float = 300.0) -> str:
    """``sigterm_when`` the process is held at its faultpoint (``marker`` exists)."""
    return sigterm_when(proc, marker.exists, before_signal=before_signal, timeout=timeout)


def sigterm_when(proc: subprocess.Popen, ready, *, before_signal=None, timeout: float = 300.0,
                 poll: float = 0.2) -> str:
    """Wait (bounded) until ``ready()``, run ``before_signal``, send SIGTERM as a cancelled CI job
    would, and return its stderr; a process that outlives all that is killed."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll)
        assert ready(), proc.poll()
        if before_signal is not None:
            before_signal()
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def signal_at_every_line(work, handler, *, timeout: float, traced=None, armed=None) -> set:
    """Run ``work()`` in a daemon thread (a hung one must not hang pytest) with ``handler()`` run at
    every line of what ``work`` calls (not of ``work`` itself), once a line, as Python may run a
    signal handler between any two lines of the main thread; the test fails if ``work`` has not
    ended within ``timeout`` seconds. ``traced(frame)`` picks the frames whose lines count (all,
    unless given), ``armed()`` says whether the handler would run yet (a line passed while it would
    not stays unfired). Returns the ``(code, line)`` pairs it ran at."""
    import threading

    fired: set = set()
    own = getattr(work, "__code__", None)

    def tracer(frame, event, arg):
        if frame.f_code is own or (traced is not None and not traced(frame)):
            return None
        if event == "line" and (frame.f_code, frame.f_lineno) not in fired and (armed is None or armed()):
            fired.add((frame.f_code, frame.f_lineno))
            handler()
        return tracer

    def run():
        sys.settrace(tracer)
        try:
            work()
        finally:
            sys.settrace(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=timeout)
    assert not t.is_alive(), "the signal handler waited for a lock its own thread held"
    return fired


class PtyCommand:
    """``mlops <args>`` on a pseudo-terminal that is its controlling terminal (stdin and stderr;
    stdout too with ``stdout_on_terminal``, else a pipe, so a ``--json`` document can be read),
    held by the fault point ``pause_at`` (``mlops_common.faultpoint``; ``marker`` its file) until
    the test calls ``hang_up`` (the master is closed: the kernel sends SIGHUP to the command, its
    session leader, and every later write to the terminal fails with EIO). ``seen``: what the
    terminal showed before. Every wait is bounded."""

    def __init__(self, args, env: dict[str, str], marker: Path | None = None, pause_at: str = "",
                 hold_seconds: float = 180, stdout_on_terminal: bool = False):
        self.marker = marker
        self.seen = b""
        pause = {"MLOPS_TEST_PAUSE_AT": pause_at, "MLOPS_TEST_PAUSE_MARKER": str(marker),
                 "MLOPS_TEST_PAUSE_SECONDS": str(hold_seconds)} if marker is not None else {}
        self.master, slave = os.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlops", *args], cwd=REPO, stdin=slave, stderr=slave,
                stdout=slave if stdout_on_terminal else subprocess.PIPE, text=True,
                env={**os.environ, **env, **pause}, start_new_session=True, preexec_fn=_controlling_terminal)
        finally:
            os.close(slave)

    def text(self) -> str:
        return self.seen.decode(errors="replace")[-3000:]

    def wait_for(self, predicate, seconds: float = 180) -> PtyCommand:
        """Until ``predicate()`` holds, draining the terminal meanwhile; the command must not end."""
        import errno
        import select
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not predicate():
            assert self.proc.poll() is None, self.text()
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
        assert predicate(), self.text()
        return self

    def wait_paused(self, seconds: float = 180) -> PtyCommand:
        """Until the command holds at its fault point."""
        return self.wait_for(lambda: self.marker.exists() and bool(self.marker.read_text().strip()), seconds)

    def hang_up(self) -> None:
        os.close(self.master)
        self.master = -1

    def communicate(self, timeout: float = 120) -> str | None:
        """Its stdout (a pipe) once it ended; an AssertionError if it did not end in ``timeout`` s."""
        try:
            return self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`mlops` did not end {timeout:g} s after the hangup") from None

    def close(self) -> None:
        """Idempotent: the terminal closed, the command's process group killed if still running."""
        import signal

        if self.master >= 0:
            self.hang_up()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=30)


def _controlling_terminal() -> None:         # in the child, after setsid: the pty on fd 2 is its terminal
    import fcntl
    import termios

    fcntl.ioctl(2, termios.TIOCSCTTY, 0)
