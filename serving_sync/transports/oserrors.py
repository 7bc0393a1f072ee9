"""Turn an ``OSError`` from writing on a host into one line that says what to fix."""
from __future__ import annotations

import errno

from mlops_common.errors import UserError

from ..errors import DiskFull, HostPermissionDenied

NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")
PERMISSION_TEXT = ("Permission denied", "Read-only file system", "Operation not permitted")


def host_os_error(exc: OSError, *, where: str, base: str, doing: str) -> UserError:
    """``where`` names the host, ``base`` its base directory, ``doing`` the action."""
    code = exc.errno
    detail = exc.strerror or str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{where}: no space left on the device holding {base} while {doing}; free "
                        f"space there (or lower retention) and rerun; nothing was published")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HostPermissionDenied(f"{where}: {detail} while {doing}; the deploy user needs write "
                                    f"access to {base}")
    return UserError(f"{where}: {detail} while {doing} under {base}")


def from_stderr(text: str, *, where: str, base: str, doing: str) -> UserError | None:
    """Classify a remote command's stderr the same way (None when it says nothing we know)."""
    for marker in NO_SPACE_TEXT:
        if marker in text:
            return host_os_error(OSError(errno.ENOSPC, marker), where=where, base=base, doing=doing)
    for marker in PERMISSION_TEXT:
        if marker in text:
            return host_os_error(OSError(errno.EACCES, marker), where=where, base=base, doing=doing)
    return None
