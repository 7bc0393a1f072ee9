"""Which commit a training or a registration records: the one the code comes from, not the one
of whatever repository the command happens to be run in."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def _other_repo(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    (path / "f").write_text("x\n")
    _git(path, "add", "f")
    _git(path, "commit", "-q", "-m", "other")
    return _git(path, "rev-parse", "HEAD")


def _commit_seen(code_path: Path, cwd: Path) -> str:
    """``lineage.git_commit()`` of the code under ``code_path``, run from ``cwd`` outside CircleCI."""
    env = {k: v for k, v in os.environ.items() if k not in ("CIRCLE_SHA1", "GIT_DIR", "GIT_WORK_TREE")}
    env["PYTHONPATH"] = str(code_path)
    out = subprocess.run([sys.executable, "-c", "from mlops_common import lineage; print(lineage.git_commit())"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_commit_is_the_code_s_checkout_s_not_the_working_directory_s(tmp_path):
    """`mlops train` run from inside another repository recorded that repository's commit."""
    other = _other_repo(tmp_path / "elsewhere")
    ours = _git(REPO, "rev-parse", "HEAD")
    assert _commit_seen(REPO, tmp_path / "elsewhere") == ours != other


def test_code_installed_inside_another_checkout_records_no_commit(tmp_path):
    """Installed into a venv that lies inside some checkout, the code is not that checkout's."""
    _other_repo(tmp_path / "project")
    site = tmp_path / "project" / ".venv" / "site-packages"
    shutil.copytree(REPO / "mlops_common", site / "mlops_common", ignore=shutil.ignore_patterns("__pycache__"))
    assert _commit_seen(site, tmp_path / "project") == "None"


def test_circleci_s_commit_wins(monkeypatch):
    from mlops_common import lineage

    monkeypatch.setenv("CIRCLE_SHA1", "c" * 40)
    assert lineage.git_commit() == "c" * 40
