"""``deploy/mlops-watch.service``, the example systemd unit for ``mlops sync watch``: systemd
accepts it, every flag it passes exists, its stop timeout outlasts a deploy, and it holds no secret.

Found by review (2026-12-06, tenth stop): the README said `systemctl stop` lets a deploy under way
finish, but a unit written from it got systemd's 90 s stop timeout, which SIGKILLs a deploy with a
longer bake mid-rollout; no unit was shipped.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

UNIT = REPO / "deploy" / "mlops-watch.service"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_accepts_the_watch_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed; the unit was not checked by systemd")
    # the unit's paths are an install's: point ExecStart at this checkout's mlops and run as root
    text = UNIT.read_text().replace("/srv/mlops/.venv/bin/mlops", str(REPO / ".venv" / "bin" / "mlops"))
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (p.stdout + p.stderr).splitlines() if UNIT.name in line or "Unknown" in line]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


def test_the_watch_unit_runs_flags_that_exist_and_outlasts_a_deploy_when_stopped():
    s = _settings()
    words = shlex.split(s["ExecStart"][0])
    assert words[0].endswith("/mlops") and words[1:3] == ["sync", "watch"], words
    p = subprocess.run([sys.executable, "-m", "mlops", "sync", "watch", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for flag in (w for w in words if w.startswith("--")):
        assert flag in p.stdout, f"`mlops sync watch` has no option {flag}"
    # the first SIGTERM finishes the deploy under way: the stop timeout outlasts CircleCI's 300 s
    # bake, the --timeout waits of a deploy and the lock it may wait for
    assert int(s["TimeoutStopSec"][0]) >= 900, s["TimeoutStopSec"]
    # ... and a deploy still under way --stop-within after it is put back before systemd's SIGKILL,
    # with time left for the put-back (nineteenth stop)
    within = float(words[words.index("--stop-within") + 1])
    assert within <= int(s["TimeoutStopSec"][0]) - 240, (within, s["TimeoutStopSec"])
    assert s["KillSignal"] == ["SIGTERM"] and s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["on-failure"]


def test_the_watch_unit_takes_secrets_from_an_environment_file_only():
    s = _settings()
    assert s.get("EnvironmentFile"), "settings and secrets come from an EnvironmentFile"
    inline = " ".join(s.get("Environment", []) + s["ExecStart"])
    for name in ("TOKEN", "SECRET", "PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLOPS_LEDGER_URL"):
        assert name not in inline.upper(), inline
