"""Test hook: hold a promotion at a named phase so a reliability test can kill it there.

The registry's twin of ``serving_sync.faultpoint`` (same variables; registry may not import
serving_sync). Inert unless ``MLOPS_TEST_PAUSE_AT`` is set. With ``MLOPS_TEST_PAUSE_AT=<phase>``
and ``MLOPS_TEST_PAUSE_MARKER=<file>``, the first time a promotion reaches ``<phase>`` it writes
its pid to the marker file and waits until the file is removed or ``MLOPS_TEST_PAUSE_SECONDS``
(default 120) pass.

Phases: ``promotion:after_intent`` (the intent row is committed, the alias not moved yet) and
``promotion:after_alias`` (the alias moved, its outcome row not written). Used by
tests/test_reliability_promotion.py (see docs/reliability.md).
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
    marker = os.environ[MARKER]
    try:
        with open(marker, "x") as f:
            f.write(f"{os.getpid()}\n")
    except OSError:
        return
    os.environ.pop(PAUSE_AT, None)
    deadline = time.monotonic() + float(os.environ.get(SECONDS) or 120)
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
