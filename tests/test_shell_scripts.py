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


@pytest.mark.parametrize("installed,expect_install", [("3.10.4\n3.11.2\n3.11.10\n", None),
                                                      ("3.10.4\n", "3.11.12")])
def test_ensure_python311_uses_an_installed_311_before_building_one(tmp_path, installed, expect_install):
    """It always took the newest 3.11 of `pyenv install --list`: on a machine image carrying
    3.11.x already, every new cache key built Python from source (minutes)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pyenv.log"
    bin_dir.mkdir()
    (bin_dir / "python3.11").write_text("#!/bin/sh\nexit 1\n")        # none on PATH
    (bin_dir / "pyenv").write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$1" in
  versions) printf '{installed}' ;;
  install) if [ "$2" = --list ]; then printf '  3.11.11\\n  3.11.12\\n  3.12.1\\n'; fi ;;
  root) echo /fake/pyenv ;;
esac
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    bash_env = tmp_path / "bash_env"
    r = subprocess.run(["bash", str(REPO / "scripts" / "ensure-python311.sh")], capture_output=True, text=True,
                       timeout=60, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "BASH_ENV": str(bash_env)})
    assert r.returncode == 0, r.stderr
    chosen = expect_install or "3.11.10"
    assert bash_env.read_text() == f"export MLOPS_PYTHON=/fake/pyenv/versions/{chosen}/bin/python3.11\n"
    installs = [line for line in log.read_text().splitlines() if line.startswith("install -s")]
    assert installs == ([f"install -s {expect_install}"] if expect_install else [])
