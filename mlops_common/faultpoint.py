"""Test hook: hold a process at a named phase so a reliability test can kill or disturb it there.

Inert unless ``MLOPS_TEST_PAUSE_AT`` is set (nothing else reads it). With
``MLOPS_TEST_PAUSE_AT=<phase>`` and ``MLOPS_TEST_PAUSE_MARKER=<file>``, the first time the process
reaches ``<phase>`` it writes its pid to the marker file and waits until the file is removed (the
test resumes it), ``stop()`` says so (a deploy's interrupt), or ``MLOPS_TEST_PAUSE_SECONDS``
(default 120) pass.

Phases (docs/reliability.md): a deploy's ``during:publish`` (the first chunk of the upload was
written), ``after:<step>`` after each plan step (``serving_sync.host_run``) and
``deploy:after_final_rows`` (the last wave's ``deploy`` rows committed, no tag written yet:
``serving_sync.fleet``); a promotion's
``promotion:after_intent`` (intent row committed, alias not moved) and ``promotion:after_alias``
(alias moved, outcome row not written) (``registry.alias_move``); a rollback's
``rollback:after_read`` (production read, the promotion lock not asked for yet)
(``registry.promotion``); a registration's
``register:after_version`` (version created, its ``register`` row not written) (``registry.register``);
an evaluation's ``evaluate:downloaded`` (the logged model is in its temporary folder, not loaded:
``mlproject.evaluate``, for ``mlops evaluate`` and ``registry gate``).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

PAUSE_AT = "MLOPS_TEST_PAUSE_AT"
MARKER = "MLOPS_TEST_PAUSE_MARKER"
SECONDS = "MLOPS_TEST_PAUSE_SECONDS"

_fired: set[str] = set()     # once per process; os.environ is left alone (other threads iterate it)
_lock = threading.Lock()


def reached(phase: str, *, stop: Callable[[], bool] | None = None) -> None:
    """Pause here if the environment asks for ``phase`` (see the module docstring)."""
    if os.environ.get(PAUSE_AT) != phase or not os.environ.get(MARKER):
        return
    with _lock:
        if phase in _fired:                 # a second host, or after the test resumed us
            return
        _fired.add(phase)
    marker = os.environ[MARKER]
    # whole or not at all: a test polls for the file and reads the pid at once (created empty,
    # then written, it was sometimes read between the two); the link fails if the marker exists
    tmp = f"{marker}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.link(tmp, marker)
    except OSError:
        return
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    deadline = time.monotonic() + float(os.environ.get(SECONDS) or 120)
    while os.path.exists(marker) and time.monotonic() < deadline and not (stop and stop()):
        time.sleep(0.05)
