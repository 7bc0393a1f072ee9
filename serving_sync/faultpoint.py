"""Test hook: hold a deploy at a named phase so a reliability test can kill or disturb it there.

Inert unless ``MLOPS_TEST_PAUSE_AT`` is set (nothing else reads it). With
``MLOPS_TEST_PAUSE_AT=<phase>`` and ``MLOPS_TEST_PAUSE_MARKER=<file>``, the first time the deploy
reaches ``<phase>`` it writes its pid to the marker file and waits until the file is removed (the
test resumes it), an interrupt is requested, or ``MLOPS_TEST_PAUSE_SECONDS`` (default 120) pass.

Phases: ``during:publish`` (the first chunk of the upload was written: the temporary upload
directory is partial) and ``after:<step>`` after each plan step of ``serving_sync.plan``
(``after:publish`` = renamed into place, ``after:load_validation``, ``after:load_main``,
``after:switch``, ...). Used by tests/test_reliability_*.py (see docs/reliability.md).
"""
from __future__ import annotations

import os
import time

PAUSE_AT = "MLOPS_TEST_PAUSE_AT"
MARKER = "MLOPS_TEST_PAUSE_MARKER"
SECONDS = "MLOPS_TEST_PAUSE_SECONDS"


def reached(phase: str) -> None:
    """Pause here if the environment asks for ``phase`` (see the module docstring)."""
    if os.environ.get(PAUSE_AT) != phase or not os.environ.get(MARKER):
        return
    from . import cancel

    marker = os.environ[MARKER]
    try:
        with open(marker, "x") as f:        # once per process: a second host does not pause again
            f.write(f"{os.getpid()}\n")
    except OSError:
        return
    os.environ.pop(PAUSE_AT, None)
    deadline = time.monotonic() + float(os.environ.get(SECONDS) or 120)
    while os.path.exists(marker) and time.monotonic() < deadline and not cancel.requested():
        time.sleep(0.05)
