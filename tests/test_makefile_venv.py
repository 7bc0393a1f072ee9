"""The Makefile's ``venv`` target: its stamp is the hash of what the venv is built from, not an
mtime. CircleCI's checkout gives requirements.lock a new mtime after the cached .venv is restored,
so with an mtime rule every job reinstalled on a cache hit. ``make -n`` in a scratch copy: nothing
is installed here."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

BUILT_FROM = ("requirements.lock", "pyproject.toml")
INSTALL = "pip install"


@pytest.fixture
def project(tmp_path) -> Path:
    if not shutil.which("make"):
        pytest.skip("SKIPPED LOUDLY: make is not installed")
    for name in ("Makefile", *BUILT_FROM):
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


def plan(project: Path) -> str:
    # as a person runs it: not as a sub-make of `make test` (CI), whose MAKEFLAGS print
    # "make[1]: Entering directory" lines around the plan
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    p = subprocess.run(["make", "--no-print-directory", "-n", "venv"], cwd=project, capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def stamp_as_make_venv_writes_it(project: Path) -> Path:
    """The stamp of a finished install, written by the recipe's own last line."""
    (project / ".venv").mkdir(exist_ok=True)
    last = [ln for ln in plan(project).splitlines() if ln.strip()][-1]
    assert last.startswith("sha256sum "), last
    subprocess.run(["bash", "-c", last], cwd=project, check=True, timeout=60)
    return project / ".venv" / ".installed"


def test_a_fresh_machine_installs(project):
    out = plan(project)
    assert "-m venv .venv" in out and INSTALL in out


def test_a_restored_venv_is_not_reinstalled_after_a_checkout_touched_the_lock(project):
    stamp = stamp_as_make_venv_writes_it(project)
    old = time.time() - 2 * 86400                             # the cache was saved two days ago ...
    os.utime(stamp, (old, old))
    for name in BUILT_FROM:                                   # ... and the checkout is new
        (project / name).touch()
    assert INSTALL not in plan(project)


@pytest.mark.parametrize("changed", BUILT_FROM)
def test_a_changed_lock_or_pyproject_reinstalls(project, changed):
    stamp = stamp_as_make_venv_writes_it(project)
    now = time.time() + 60
    os.utime(stamp, (now, now))                               # newer than everything: mtimes say current
    with open(project / changed, "a") as f:
        f.write("\n# changed\n")
    os.utime(project / changed, (now - 3600, now - 3600))
    assert INSTALL in plan(project)


def test_a_stamp_from_before_the_hash_reinstalls_once(project):
    stamp = stamp_as_make_venv_writes_it(project)
    stamp.write_text("")                                      # `touch .venv/.installed` of older Makefiles
    assert INSTALL in plan(project)
