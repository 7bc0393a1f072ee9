"""Paths a command will write to, checked before it records anything."""
from __future__ import annotations

from pathlib import Path


def file_in_the_way(directory: str | Path) -> Path | None:
    """The first existing path among ``directory`` and its parents that is not a directory (a file
    that makes creating ``directory`` impossible), or None."""
    d = Path(directory)
    return next((p for p in (d, *d.parents) if p.exists() and not p.is_dir()), None)


def check_writable_dir(directory: str | Path, what: str) -> None:
    """Create ``directory`` (and its parents) and write and remove a probe file in it, so a report
    that cannot be written is refused before anything is recorded (a read-only folder or one
    without permission passed a check for a file in the way, and the gate then recorded its
    verdict and failed on the report). ``what`` starts the one-line message (e.g. ``--junit F``)."""
    import os
    import tempfile

    from .errors import ConfigError

    d = Path(directory)
    bad = file_in_the_way(d)
    if bad is not None:
        raise ConfigError(f"{what}: {bad} is a file, not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {d} ({exc.strerror or exc}); name a folder you can "
                          f"write") from None
