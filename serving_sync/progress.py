"""Upload progress on stderr (bytes, MB/s): shown on a terminal, silent otherwise or with --json.

Transports call the progress object with the number of bytes just sent; it is thread-safe
because the S3 transport uploads files in parallel.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

ProgressFn = Callable[[int], None]

MB = 1_000_000


class Progress:
    """Counts bytes sent; redraws one stderr line at most every ``interval`` seconds."""

    def __init__(self, total: int, label: str, *, enabled: bool | None = None,
                 stream: TextIO | None = None, interval: float = 0.5):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.interval = interval
        self.transferred = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.transferred += nbytes
            if not self.enabled:
                return
            now = time.monotonic()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw(now, end="")

    def _draw(self, now: float, end: str) -> None:
        pct = f" ({100 * self.transferred / self.total:.0f}%)" if self.total else ""
        elapsed = max(now - self._start, 1e-9)
        line = (f"\r{self.label}: {self.transferred / MB:.1f}/{self.total / MB:.1f} MB{pct} "
                f"{self.transferred / elapsed / MB:.1f} MB/s")
        self.stream.write(line + end)
        self.stream.flush()

    def done(self) -> None:
        """Finish the line (only if something was drawn or sent)."""
        if self.enabled and self.transferred:
            with self._lock:
                self._draw(time.monotonic(), end="\n")

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._start


def make_progress(total: int, label: str, *, json_mode: bool = False) -> Progress:
    """Progress for a CLI command: silent with ``--json`` or when stderr is not a terminal."""
    return Progress(total, label, enabled=False if json_mode else None)
