"""Flushing SFTP writes to the host's disk with OpenSSH's ``fsync@openssh.com`` extension.

paramiko has no call for the extension: the request goes out pipelined through its
``SFTPClient`` internals and its answer is read with the close's. Functions of the
``SshTransport`` whose SFTP session they use (its ``_no_fsync``: a server without the extension).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mlops_common import log

if TYPE_CHECKING:
    from .ssh import SshTransport

logger = log.get("sync.ssh")


def fsync_and_close(t: SshTransport, f, *, strict: bool = True) -> None:
    """Flush an open SFTP file to the host's disk (OpenSSH's ``fsync@openssh.com``, since
    6.5), then close it: what a power loss right after a publish would otherwise cut short.
    The fsync goes out just before the close, whose answer (the server runs requests in
    order) says both are done: no round trip of its own. A server without the extension is
    said once per connection and the publish goes on, as before. ``strict``: a failed flush
    (an I/O error) is raised; else ignored (folders, whose fsync some file systems refuse)."""
    if t._no_fsync:
        f.close()
        return
    from paramiko.sftp import CMD_EXTENDED, CMD_STATUS

    reply = _Reply()
    f.flush()
    t.sftp._async_request(reply, CMD_EXTENDED, "fsync@openssh.com", f.handle)
    f.close()
    if reply.kind != CMD_STATUS:
        return
    try:
        t.sftp._convert_status(reply.msg)
    except OSError as exc:
        if "unsupported" in str(exc).lower():
            t._no_fsync = True
            logger.warning("%s: the SFTP server cannot flush files to disk (no fsync@openssh.com): "
                           "a power loss right after this deploy may leave a published file short",
                           t.where)
        elif strict and "bad message" not in str(exc).lower():   # EINVAL: cannot be flushed
            raise


def fsync_dir(t: SshTransport, path: str) -> None:
    """Flush a folder's entries (a rename into it, a new name) to disk, best effort: OpenSSH's
    sftp-server opens a folder read-only as a file and fsyncs that handle (two round trips)."""
    if t._no_fsync:
        return
    try:
        f = t.sftp.open(path, "r")
    except OSError:        # not readable by the deploy user: its entries stay unflushed
        return
    with f:
        fsync_and_close(t, f, strict=False)


class _Reply:
    """The answer to one pipelined SFTP request, kept when paramiko reads it."""
    kind = None
    msg = None

    def _async_response(self, kind, msg, num) -> None:
        self.kind, self.msg = kind, msg
