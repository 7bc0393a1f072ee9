"""Every shell script of the project passes shellcheck (installed by `make system-deps`)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import REPO

SCRIPTS = sorted([*REPO.glob("scripts/*.sh"), *REPO.glob("serving_host/*.sh"), REPO / ".ci" / "run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_passes(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("SKIPPED LOUDLY: shellcheck is not installed; run `make system-deps` "
                    "(apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 5
