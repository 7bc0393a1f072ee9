"""The sshd fixture itself (tests/fixtures/sshd.py): what it leaves on the machine."""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys

import pytest

from tests.helpers import REPO

USER = "mlopsudeltest"       # this test's own: other tests use mlopssynctest

_INNER = f'''
import os, pwd, subprocess

def test_a_user_with_a_process_left(sshd_factory):
    sshd_factory(user={USER!r})
    pw = pwd.getpwnam({USER!r})
    # what a closed session's sshd child does: run on as the user for a while after the test
    p = subprocess.Popen(["setpriv", f"--reuid={{pw.pw_uid}}", f"--regid={{pw.pw_gid}}", "--clear-groups",
                          "sleep", "120"])
    with open(os.environ["INNER_PIDFILE"], "w") as f:
        f.write(str(p.pid))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="SKIPPED LOUDLY: creating a test user needs root (CI is root)")
def test_a_user_the_factory_created_is_gone_after_the_session_even_with_a_process_left(tmp_path):
    """Found by review (2026-12-07, eighteenth stop): the teardown ran ``userdel`` without
    ``--force``; a session's sshd child still running as the user made it refuse ("currently used
    by process"), silently, so every run left the user on the machine (``mlopssynctest``)."""
    try:
        pwd.getpwnam(USER)
        pytest.fail(f"user {USER!r} exists before the test (left by an earlier run?); remove it: userdel {USER}")
    except KeyError:
        pass
    (tmp_path / "test_inner.py").write_text(_INNER)
    pidfile = tmp_path / "pid"
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.fixtures.sshd",
                            "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                           cwd=REPO, env={**os.environ, "INNER_PIDFILE": str(pidfile)},
                           capture_output=True, text=True, timeout=300)
        assert "1 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
        with pytest.raises(KeyError):
            pwd.getpwnam(USER)
        assert r.returncode == 0, r.stdout[-3000:]
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)    # the sleep this test started
            except ProcessLookupError:
                pass
        subprocess.run(["userdel", "--force", USER], capture_output=True, timeout=30)
