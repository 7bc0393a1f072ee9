"""SIGHUP (a dropped SSH session, a closed terminal) as SIGTERM (found by review, fifteenth stop:
it killed any command outright, exit 129, a deploy's hosts maybe half switched and its lock left).
The first one lets a watch finish the deploy under way and stop; after the hangup every write to the
terminal fails with EIO, and those writes (the signal's own line, the deploy's progress) are
dropped instead of ending the command as "output lost".

Real: a pseudo-terminal whose master the test closes (the kernel sends SIGHUP to the command, its
session leader), the MLflow fixture, a file:// host and a local TF-Serving-compatible server.
Every wait is bounded.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from mlops_common import log
from tests.helpers import REPO


def _controlling_terminal() -> None:         # in the child, after setsid: the pty on fd 2 is its terminal
    fcntl.ioctl(2, termios.TIOCSCTTY, 0)


@pytest.mark.slow   # a real deploy in a real `mlops sync watch`
def test_a_hangup_during_a_watchs_deploy_lets_it_finish_and_stop(deploy_env, tmp_path):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    marker = tmp_path / "paused"
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlops", "sync", "watch", "--interval", "3600", "--max-seconds", "300", "--json",
         "--timeout", "60"], cwd=REPO, stdin=slave, stderr=slave, stdout=subprocess.PIPE, text=True,
        env={**os.environ, **env.env, "MLOPS_TEST_PAUSE_AT": "after:load_validation",
             "MLOPS_TEST_PAUSE_MARKER": str(marker), "MLOPS_TEST_PAUSE_SECONDS": "180"},
        start_new_session=True, preexec_fn=_controlling_terminal)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 180          # the deploy holds there, its lock taken, hosts prepared
        while time.monotonic() < deadline and not (marker.exists() and marker.read_text().strip()):
            assert proc.poll() is None, seen.decode(errors="replace")
            if select.select([master], [], [], 0.05)[0]:
                try:
                    seen += os.read(master, 65536)      # keep the terminal drained
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
        assert marker.exists(), seen.decode(errors="replace")
        os.close(master)                            # the terminal hangs up: SIGHUP
        master = -1
        marker.unlink()                             # the deploy goes on
        try:
            out = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            raise AssertionError("the watch did not stop after the hangup and its deploy") from None
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, (proc.returncode, seen.decode(errors="replace")[-3000:])
    passes = json.loads(out)["passes"]
    assert [(p["status"], p["version"]) for p in passes] == [("deployed", v2)], passes
    env.serves(host, v2)                            # the deploy finished, not cut half-way
    assert not (host.base / ".serving_sync" / "lock").exists()
    assert v1 != v2


def test_a_failed_write_that_is_no_hangup_is_still_reported():
    """Only a terminal's EIO is a hangup: a full disk where the output is redirected still fails."""

    class Full(io.StringIO):
        name = "out.json"

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(log.OutputLost) as lost:
        log.RedactingStream(Full()).write("x\n")
    assert lost.value.stream == "out.json"
