"""A version onto an SSH host: one streamed tar, a pull from the shared store, or SFTP writes.

Speed: a version goes as ONE tar stream over one exec channel, with writes that avoid
paramiko's per-packet buffer copies; the same remote script checks free space first, then
extracts while hashing in the same pass (the host's ``python3`` for big uploads, else ``tee``
into ``openssl dgst``/``sha256sum``; ``ssh_scripts.upload_script``) — one process spawn per
publish. Accounts without a shell, ``tar`` or a hash tool fall back to pipelined SFTP writes
and SFTP read-back hashing. Functions of the ``SshTransport`` they serve (``t``): its
connection, its SFTP session, what it learned of the host (no shell) and its verified listings.
"""
from __future__ import annotations

import errno
import os
import posixpath
import re
import secrets
import socket
from typing import TYPE_CHECKING

from mlops_common import log
from mlops_common.errors import UserError

from ..errors import DiskFull
from ..manifest import HostListing, Manifest
from ..progress import ProgressFn
from .base import line_break_name
from .oserrors import from_stderr, host_os_error
from .sftp_fsync import fsync_and_close, fsync_dir
from .ssh_channel import last_line, read_until_go, sender
from .ssh_connect import SFTP_CHUNK
from .ssh_scripts import ScriptOutput, fetch_script, go_line, host_python_hashes, parse_output, upload_script
from .tarstream import Streamed, shared_hasher, stream_tree

if TYPE_CHECKING:
    from .ssh import SshTransport

logger = log.get("sync.ssh")

FIRST_LINE_TIMEOUT = 15.0   # a shell answers the upload script's first line at once
# The downloader's exit status for "could not write the file" (fetch_script's ``@fetchrc``).
WRITE_FAILED = ("curl 23", "wget 3")


def upload_tar(t: SshTransport, local_dir, dest: str, manifest: Manifest, progress: ProgressFn | None,
               min_free: int | None) -> Streamed | None:
    """Stream tar into the remote script; None when the host cannot (no shell or no tar)."""
    doing = f"uploading to {dest}"
    # Hashes while the host's shell starts. A big upload goes through the host's python3,
    # which checks per-file digests: no stream hash unless the host turns out to lack it.
    hasher = shared_hasher(local_dir, manifest, stream=not host_python_hashes(manifest.total_size))
    with t._io(doing):
        ch = t._open_exec(upload_script(posixpath.dirname(dest), dest, min_free,
                                        stream_bytes=manifest.total_size))
        try:
            state, head = read_until_go(ch, b"@ready", mark_timeout=min(t.op_timeout, FIRST_LINE_TIMEOUT),
                                        where=t.where)
            streamed, send_error = None, None
            if state in ("silent", "other"):   # not our script (sftp-only, a forced command)
                t._no_shell = True
                return None
            if state == "go":
                if parse_output(head).flags.get("@hashing") == "stream":   # no python3 there
                    hasher.want_stream()
                try:
                    streamed = stream_tree(local_dir, manifest, sender(ch), progress, hasher)
                except (OSError, EOFError) as exc:   # the host stopped reading: see its status
                    send_error = exc
            try:
                ch.shutdown_write()
            except (OSError, EOFError):
                pass
            if send_error is not None and not t._t.is_active():
                raise send_error
            rc, out, err = t._finish(ch, timeout=None if send_error is None else 30)
        finally:
            ch.close()
    res = _script_output(t, rc, head, out)
    if not res.shell:
        return None
    if "@notar" in res.flags:
        return None
    if "@nospace" in res.flags:
        raise DiskFull.at(t._under_base, min_free, int(res.flags["@nospace"] or 0) * 1024)
    stderr = err.decode(errors="replace")
    if rc == 0 and streamed is not None and "@nohash" in res.flags:
        _say_unsynced(t, res)
        return streamed   # no hash tool: verify() reads the files back over SFTP
    if "@linebreak" in res.flags:
        raise line_break_name(t.where, dest)
    if rc != 0 or send_error is not None or res.listing is None or streamed is None:
        known = from_stderr(stderr, where=t.where, base=t.base, doing=doing)
        if known is not None:
            raise known
        if rc == 96:
            raise UserError(f"{t.where}: cannot create {dest}: {last_line(err)}")
        if send_error is not None:
            raise t._lost(doing, send_error)
        if rc == -1 and not t._t.is_active():   # no exit status: the connection died
            raise t._lost(doing, EOFError("the connection closed before the host reported"))
        raise UserError(f"{t.where}: extracting the upload on the host failed (exit {rc}): "
                        f"{last_line(err)}")
    t._verified[dest] = _listing_of_upload(res, streamed)
    _say_unsynced(t, res)
    return streamed


def upload_sftp(t: SshTransport, local_dir, dest: str, manifest: Manifest, progress: ProgressFn | None,
                min_free: int | None) -> int:
    if min_free is not None:
        free = t.disk_free()
        if free is not None and free < min_free:
            raise DiskFull.at(t._under_base, min_free, free)
    sent = 0
    doing = f"uploading to {dest}"
    with t._io(doing):
        try:
            t._makedirs(posixpath.dirname(dest))
            # 0755 whatever the SFTP server's umask (``internal-sftp -u 077``): TF Serving may
            # run as another user (files are chmod 0644 below)
            for d in [dest, *(posixpath.join(dest, d) for d in manifest.dirs)]:
                t.sftp.mkdir(d, 0o755)
                t.sftp.chmod(d, 0o755)
            for entry in manifest.files:
                remote = posixpath.join(dest, entry.path)
                with open(os.path.join(local_dir, entry.path), "rb") as fin, \
                        t.sftp.open(remote, "wbx") as fout:
                    fout.set_pipelined(True)
                    while chunk := fin.read(SFTP_CHUNK):
                        fout.write(chunk)
                        sent += len(chunk)
                        if progress:
                            progress(len(chunk))
                    fsync_and_close(t, fout)   # after the writes (in order)
                t.sftp.chmod(remote, 0o644)
            # the folders' entries, and the model folder's in the base (maybe just made)
            for d in [*(posixpath.join(dest, d) for d in manifest.dirs), dest,
                      posixpath.dirname(posixpath.dirname(dest))]:
                fsync_dir(t, d)
        except OSError as exc:
            if not t._t.is_active():
                raise
            raise t._write_error(exc, doing) from None
    return sent


def pull_tree(t: SshTransport, dest_rel: str, pull, *, min_free: int | None = None) -> int | None:
    """The host downloads ``pull`` (``store.Pull``) into ``dest_rel`` and hashes every file.

    Returns the bytes we sent (the URL list on stdin), or None when the host cannot pull
    (no shell, neither curl nor wget): the caller then streams the version instead.
    """
    from ..store import MIN_PULL_RATE, hide_presigned_urls

    if t._no_shell:
        return None
    dest = t._p(dest_rel)
    doing = f"downloading into {dest} from the shared store"
    payload = pull.script_input()
    nonce = secrets.token_hex(16)
    send_error = None
    with t._io(doing):
        ch = t._open_exec(fetch_script(posixpath.dirname(dest), dest, min_free, nonce=nonce))
        try:
            # The URLs are credentials: written only once the host printed this call's go
            # line, which only our script prints. Before, they went at once, to whatever the
            # account runs (a forced command that is not a shell read them).
            state, head = read_until_go(ch, go_line(nonce),
                                        mark_timeout=min(t.op_timeout, FIRST_LINE_TIMEOUT), where=t.where)
            if state in ("silent", "other"):     # not our script, still running: nothing sent
                rc, out, err = -1, b"", b""
            elif state == "ended":               # ended before its go line: see why
                ch.shutdown_write()
                rc, out, err = t._finish(ch)
            else:
                # No output while a big file downloads: allow the slowest rate the URLs are
                # made for on top of the usual timeout (curl gives up on a stalled transfer).
                timeout = t.op_timeout + pull.manifest.total_size / MIN_PULL_RATE
                ch.settimeout(timeout)
                try:
                    sender(ch)(payload)
                except socket.timeout:
                    raise
                except (OSError, EOFError) as exc:  # the script ended (a refused download) before it read
                    send_error = exc                # the whole list (longer than the channel buffers): see why
                    if not t._t.is_active():
                        raise
                try:
                    ch.shutdown_write()
                except (OSError, EOFError):
                    pass
                rc, out, err = t._finish(ch, timeout if send_error is None else 30, interruptible=True)
        finally:
            ch.close()
    res = _script_output(t, rc, head, out)
    if not res.shell:
        logger.warning("%s: the account did not run the pull script (no shell: an sftp-only account or "
                       "a forced command); nothing was sent to it, the version goes over SFTP instead "
                       "(give the deploy user a shell to pull from %s)", t.where, pull.store_url)
        return None
    if "@nofetch" in res.flags:
        logger.warning("%s: neither curl nor a GNU wget on the host (BusyBox's cannot read the URLs from "
                       "stdin): sending the version over SSH instead "
                       "(install curl to pull it from %s)", t.where, pull.store_url)
        return None
    if "@nospace" in res.flags:
        raise DiskFull.at(t._under_base, min_free, int(res.flags["@nospace"] or 0) * 1024,
                          nothing="downloaded")
    stderr = hide_presigned_urls(err.decode(errors="replace"))
    if rc == 99 and "@fetchsize" in res.flags:
        got, _, path = res.flags["@fetchsize"].partition(" ")
        entry = pull.manifest.by_path().get(path)
        raise UserError(f"{t.where}: the shared store {pull.store_url} answered {path} with {got} bytes, "
                        f"not its {entry.size if entry else '?'}: a redirect or an error page in place of the "
                        f"object (store_endpoint in the hosts file names an address the store redirects, "
                        f"e.g. http:// where it wants https://, or an endpoint of another region than the "
                        f"bucket's), or the object was replaced in the store since the upload; nothing was "
                        f"published")
    if rc == 97 and res.flags.get("@fetchrc") in WRITE_FAILED:
        raise _download_write_error(t, res.flags["@fetchfailed"], stderr, doing)
    if rc == 97:
        last = last_line(stderr.encode())
        hint = ("the URL was refused (403): check the clocks of this machine and the store, and that "
                "the download took less than MLOPS_STORE_URL_EXPIRY plus one second per MB"
                + ("; the deploy signed it with temporary AWS credentials (AWS_SESSION_TOKEN, an assumed "
                   "role), and such a URL stops working when they expire, whatever MLOPS_STORE_URL_EXPIRY "
                   "says: give the deploy credentials that last until it ends"
                   if pull.temporary_credentials else "")
                if re.search(r"\b403\b", last) else
                "the object is not in the store (404): removed while this deploy ran, e.g. by another "
                "fleet's retention on the same store; rerun the deploy (it uploads it again)"
                if re.search(r"\b404\b", last) else
                "check that the host reaches the store (store_endpoint in the hosts file)")
        if "@proxy" in res.flags:
            hint += (f"; the host's environment names a proxy (http_proxy, https_proxy or ALL_PROXY), "
                     f"which {res.flags.get('@fetchrc', 'curl').split(' ')[0]} goes through unless no_proxy "
                     f"names the store's host: the answer may be the proxy's")
        raise UserError(f"{t.where}: the host could not download {res.flags['@fetchfailed']} from "
                        f"the shared store {pull.store_url} ({last}); {hint}; nothing was published")
    if rc == 0 and "@nohash" in res.flags:
        _say_unsynced(t, res)
        return len(payload)     # no hash tool: verify() reads the files back over SFTP
    if "@linebreak" in res.flags:
        raise line_break_name(t.where, dest)
    if rc != 0 or res.listing is None or send_error is not None:
        known = from_stderr(stderr, where=t.where, base=t.base, doing=doing)
        if known is not None:
            raise known
        if send_error is not None:
            raise t._lost(doing, send_error)
        raise UserError(f"{t.where}: downloading from the shared store failed on the host "
                        f"(exit {rc}): {last_line(stderr.encode())}")
    t._verified[dest] = res.listing
    _say_unsynced(t, res)
    return len(payload)


def _script_output(t: SshTransport, rc: int, head: bytes, out: bytes) -> ScriptOutput:
    """What the upload or the pull script printed: ``head``, read while waiting for its go line,
    then the rest. A restricted shell is refused; an account that did not run the script (no
    shell) is remembered, so that the transport uses SFTP from then on."""
    t._refuse_restricted(rc, head)        # its line was read with the head
    res = parse_output(head + out)
    if not res.shell:
        t._no_shell = True
    return res


def _say_unsynced(t: SshTransport, res: ScriptOutput) -> None:
    if res.flags.get("@synced") == "none":
        logger.warning("%s: the host has neither sync nor python3 to flush the version to disk: "
                       "a power loss right after this deploy may leave one of its files short",
                       t.where)


def _download_write_error(t: SshTransport, path: str, stderr: str, doing: str) -> UserError:
    """The host's downloader could not write ``path`` (curl 23, wget 3): a full disk is
    ``DiskFull`` like a streamed upload's, not a store the host cannot reach."""
    known = from_stderr(stderr, where=t.where, base=t.base, doing=doing)
    if known is not None:
        return known
    free = t.disk_free()
    if free is not None and free < 64 * 1024:
        return host_os_error(OSError(errno.ENOSPC, "No space left on device"), where=t.where,
                             base=t.base, doing=doing)
    return UserError(f"{t.where}: the host could not write {path} while {doing} "
                     f"({last_line(stderr.encode())}); check free space and the deploy user's write "
                     f"access under {t.base}; nothing was published")


def _listing_of_upload(res: ScriptOutput, streamed: Streamed) -> HostListing:
    """What the host extracted, as a listing ``compare`` can judge against the manifest.

    Stream-hashed: the host's digest of what it extracted — of its files' bytes in the stream
    (python3 hosts) or of the whole tar stream — must be the one of what we hashed, and each
    file's size must match; then each file holds exactly the bytes we hashed. Else (two-pass
    hosts) the host's own per-file hashes.
    """
    listing = res.listing
    if res.sizes is None:
        return listing
    if res.files_sha256 is not None:
        same_stream = res.files_sha256 == streamed.hasher.files_digest()
    else:
        same_stream = res.stream_sha256 is not None and res.stream_sha256 == streamed.hasher.stream_digest()
    expected = streamed.manifest.by_path()
    files = {}
    for path, size in res.sizes.items():
        entry = expected.get(path)
        files[path] = entry.sha256 if entry and same_stream and entry.size == size else "stream-mismatch"
    return HostListing(files, listing.dirs, listing.others)

