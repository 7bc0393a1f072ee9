"""Helpers shared by tests (not fixtures)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

def run_mlops(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
              cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``mlops`` command line in a subprocess (as a user would)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mlops", *args], env=full_env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, input=input)
