"""Lineage facts about where a run or an action came from: git commit and CircleCI ids.

Read from the environment (CircleCI's built-in variables) and git; used both for MLflow run
tags (mlproject) and, gathered once into ``registry.provenance.Provenance`` at the edge, for
version tags and ledger rows (registry).
"""
from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path

# CircleCI built-in variable -> tag key.
CI_VARS = {
    "CIRCLE_PIPELINE_ID": "ci.pipeline_id",
    "CIRCLE_PIPELINE_NUMBER": "ci.pipeline_number",
    "CIRCLE_WORKFLOW_ID": "ci.workflow_id",
    "CIRCLE_WORKFLOW_JOB_ID": "ci.workflow_job_id",
    "CIRCLE_JOB": "ci.job",
    "CIRCLE_BUILD_NUM": "ci.build_num",
    "CIRCLE_BUILD_URL": "ci.build_url",
    "CIRCLE_BRANCH": "ci.branch",
    "CIRCLE_PROJECT_REPONAME": "ci.project",
}


# the folder holding mlops_common, mlproject and registry: the checkout the code runs from, when it is one
CODE_ROOT = Path(__file__).resolve().parent.parent


def git_commit(cwd: str | None = None) -> str | None:
    """CircleCI's commit; else the commit checked out where this code lives (``cwd``: in that folder's
    checkout instead); None when the code is not in a git checkout of its own. Not the working
    directory's: ``mlops train`` run from inside another repository recorded that one's commit, and
    code installed in a venv inside a checkout would name the checkout it does not come from."""
    sha = os.environ.get("CIRCLE_SHA1")
    if sha:
        return sha
    root = Path(cwd) if cwd else CODE_ROOT
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             cwd=root, env=env, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split("\n") if out.returncode == 0 else []
    if len(lines) < 2 or not lines[1].strip():
        return None
    if cwd is None and Path(lines[0]).resolve() != CODE_ROOT:
        return None       # installed (site-packages) inside some other checkout: not this code's commit
    return lines[1].strip()


def ci_tags() -> dict[str, str]:
    """CircleCI ids present in the environment, as ``ci.*`` tags (empty outside CircleCI)."""
    return {tag: os.environ[var] for var, tag in CI_VARS.items() if os.environ.get(var)}


def lineage_tags() -> dict[str, str]:
    tags = ci_tags()
    sha = git_commit()
    if sha:
        tags["git_commit"] = sha
    return tags


def pipeline_id() -> str | None:
    return os.environ.get("CIRCLE_PIPELINE_ID") or None


def workflow_id() -> str | None:
    return os.environ.get("CIRCLE_WORKFLOW_ID") or None


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
