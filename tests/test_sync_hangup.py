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
import io
import json

import pytest

from mlops_common import log
from tests.helpers import PtyCommand


@pytest.mark.slow   # a real deploy in a real `mlops sync watch`
def test_a_hangup_during_a_watchs_deploy_lets_it_finish_and_stop(deploy_env, tmp_path):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    cmd = PtyCommand(("sync", "watch", "--interval", "3600", "--max-seconds", "300", "--json", "--timeout", "60"),
                     env.env, tmp_path / "paused", "after:load_validation")
    try:
        cmd.wait_paused()                           # the deploy holds there, its lock taken, hosts prepared
        cmd.hang_up()                               # the terminal hangs up: SIGHUP
        cmd.marker.unlink()                         # the deploy goes on
        out = cmd.communicate(timeout=120)
    finally:
        cmd.close()
    assert cmd.proc.returncode == 0, (cmd.proc.returncode, cmd.text())
    passes = json.loads(out)["passes"]
    assert [(p["status"], p["version"]) for p in passes] == [("deployed", v2)], passes
    env.serves(host, v2)                            # the deploy finished, not cut half-way
    assert not (host.base / ".serving_sync" / "lock").exists()
    assert v1 != v2


@pytest.mark.slow   # a real `mlops sync deploy`
def test_a_hangup_during_a_deploy_puts_the_host_back_as_sigterm_does(deploy_env, tmp_path):
    """SIGTERM's contract (docs/architecture.md): the deploy stops at its next safe point, the
    hosts are put back, the lock released, production left as it is, exit 130; its lines to the
    hung-up terminal are dropped, its ``--json`` document (stdout, a pipe) still printed."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    config_before = env.config_text(host)
    v2 = env.register("b")
    env.promote(v2)
    cmd = PtyCommand(("sync", "deploy", "--json", "--timeout", "60"), env.env, tmp_path / "paused",
                     "after:load_validation")
    try:
        cmd.wait_paused()
        cmd.hang_up()                               # the pause ends on the stop it asks for
        out = cmd.communicate(timeout=120)
    finally:
        cmd.close()
    assert cmd.proc.returncode == 130, (cmd.proc.returncode, cmd.text())
    doc = json.loads(out)
    assert doc["status"] == "failed" and doc["version"] == v2 and "interrupted (SIGHUP)" in doc["message"], doc
    assert env.config_text(host) == config_before
    env.serves(host, v1)
    assert not (host.base / ".serving_sync" / "lock").exists()
    assert env.production() == v2 and env.tags(v2).get("deploy_status") != "failed"
    row = env.ledger(("deploy",))[-1]
    assert (row.outcome, row.to_version) == ("failed", v2) and row.reason.endswith("interrupted (SIGHUP)")
    assert env.deploy().status == "deployed"       # the next run completes, no --break-lock needed


@pytest.mark.slow   # a real `mlops sync rollback`
def test_a_hangup_during_a_rollbacks_deploy_puts_the_host_back_as_sigterm_does(deploy_env, tmp_path):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.release("b")
    config_before = env.config_text(host)
    cmd = PtyCommand(("sync", "rollback", "--reason", "v2 is slow", "--timeout", "60"), env.env,
                     tmp_path / "paused", "after:switch")
    try:
        cmd.wait_paused()
        assert env.production() == v1               # the registry moved back; the host not yet
        cmd.hang_up()
        cmd.communicate(timeout=120)
    finally:
        cmd.close()
    assert cmd.proc.returncode == 130, (cmd.proc.returncode, cmd.text())
    assert env.config_text(host) == config_before
    env.serves(host, v2)
    assert not (host.base / ".serving_sync" / "lock").exists()
    assert env.production() == v1
    assert env.deploy().status == "deployed"       # what the error line says to run
    env.serves(host, v1)


def test_a_failed_write_that_is_no_hangup_is_still_reported():
    """Only a terminal's EIO is a hangup: a full disk where the output is redirected still fails."""

    class Full(io.StringIO):
        name = "out.json"

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(log.OutputLost) as lost:
        log.RedactingStream(Full()).write("x\n")
    assert lost.value.stream == "out.json"


def test_a_terminal_that_answers_eio_without_a_sighup_is_dropped_too():
    """The rule (docs/architecture.md): a terminal's EIO is dropped whether or not SIGHUP came, as
    for a command whose SIGHUP is ignored (``nohup`` with stderr left on the terminal) or a
    background job of an orphaned process group (TOSTOP): no one can read that output, and the
    command goes on. Here a pty that is not this process's controlling terminal: its hangup
    sends no signal here."""
    import os

    master, slave = os.openpty()
    stream = open(slave, "w", buffering=1, closefd=True)
    try:
        out = log.RedactingStream(stream)       # made at the start, as by `mlops.cli`
        os.close(master)                        # hung up: writes to the slave fail with EIO
        with pytest.raises(OSError) as raw:
            os.write(slave, b"x\n")
        assert raw.value.errno == errno.EIO
        out.write("progress\n")                 # dropped, not OutputLost
        out.flush()
        out.write("more\n")
        assert os.path.samefile(f"/proc/self/fd/{slave}", os.devnull)
    finally:
        stream.close()
