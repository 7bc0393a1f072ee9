"""Lineage facts about where a run or an action came from: git commit and CircleCI ids.

Read from the environment (CircleCI's built-in variables) and git; used both for MLflow run
tags (mlproject) and, gathered once into ``registry.provenance.Provenance`` at the edge, for
version tags and ledger rows (registry).
"""
from __future__ import annotations

import getpass
import os
import subprocess

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


def git_commit(cwd: str | None = None) -> str | None:
    sha = os.environ.get("CIRCLE_SHA1")
    if sha:
        return sha
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=cwd, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
