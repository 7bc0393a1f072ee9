"""The test hook ``mlops_common.faultpoint``: pauses once per process and never changes
``os.environ`` (a deploy's other threads iterate it, e.g. requests reading proxy settings)."""
from __future__ import annotations

import os
import threading
import time

from mlops_common import faultpoint


def test_pauses_once_per_process_without_touching_the_environment(monkeypatch, tmp_path):
    marker = tmp_path / "paused"
    monkeypatch.setattr(faultpoint, "_fired", set())
    monkeypatch.setenv(faultpoint.PAUSE_AT, "after:switch")
    monkeypatch.setenv(faultpoint.MARKER, str(marker))
    monkeypatch.setenv(faultpoint.SECONDS, "30")
    before = dict(os.environ)
    faultpoint.reached("after:verify")                     # another phase: no pause, no marker
    assert not marker.exists()

    seen = []                                               # what the marker said, once it appeared

    def resume_when_paused():
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if marker.exists():
            seen.append(marker.read_text())
            marker.unlink()

    t = threading.Thread(target=resume_when_paused)
    t.start()
    faultpoint.reached("after:switch")                     # waits until the marker is removed
    t.join(timeout=15)
    assert seen == [f"{os.getpid()}\n"], "the phase did not pause (no marker naming this process)"
    assert not marker.exists() and dict(os.environ) == before
    monkeypatch.setenv(faultpoint.SECONDS, "0.5")
    faultpoint.reached("after:switch")                     # once per process: no second pause
    assert not marker.exists(), "paused a second time"


def test_a_stop_request_ends_the_pause(monkeypatch, tmp_path):
    monkeypatch.setattr(faultpoint, "_fired", set())
    monkeypatch.setenv(faultpoint.PAUSE_AT, "during:publish")
    monkeypatch.setenv(faultpoint.MARKER, str(tmp_path / "paused"))
    start = time.monotonic()
    faultpoint.reached("during:publish", stop=lambda: time.monotonic() - start > 0.2)
    assert 0.2 <= time.monotonic() - start < 10
