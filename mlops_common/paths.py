"""Paths a command will write to, checked before it records anything."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


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


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or quota (``ENOSPC``, ``EDQUOT``) here: the OSError itself, or
    MLflow's client error carrying its message (a download failure lists one per file; not a
    server's answer, a RestException, which is about the server's disk)."""
    import errno
    import os

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    names = [c.__name__ for c in type(exc).__mro__]
    if "MlflowException" not in names or "RestException" in names:
        return False
    text = str(getattr(exc, "message", exc))
    return any(os.strerror(code) in text for code in (errno.ENOSPC, errno.EDQUOT))


@contextlib.contextmanager
def full_disk_is_one_line(what: str, folder: str | Path, *, tail: str = "") -> Iterator[None]:
    """A full disk or quota while this machine writes into ``folder`` raises one line (``what``:
    what was being done) saying where to free space, instead of a traceback or a line that blames
    what was being downloaded; ``tail`` ends it (what was not changed)."""
    from .errors import ConfigError

    try:
        yield
    except Exception as exc:
        if not disk_full(exc):
            raise
        raise ConfigError(f"{what}: no space left on the disk of {local_folder(folder)} on this machine; free "
                          f"space there and rerun{'; ' + tail if tail else ''}") from None


def local_folder(folder: str | Path) -> str:
    """``folder`` as a full-disk line names it: TMPDIR when it is there (a temporary folder under
    it is gone by the time the line is read), else itself."""
    import tempfile

    folder, tmp = Path(folder), Path(tempfile.gettempdir())
    return f"{tmp} (TMPDIR)" if folder == tmp or tmp in folder.parents else str(folder)
