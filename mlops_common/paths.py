"""Paths a command will write to, checked before it records anything."""
from __future__ import annotations

from pathlib import Path


def file_in_the_way(directory: str | Path) -> Path | None:
    """The first existing path among ``directory`` and its parents that is not a directory (a file
    that makes creating ``directory`` impossible), or None."""
    d = Path(directory)
    return next((p for p in (d, *d.parents) if p.exists() and not p.is_dir()), None)
