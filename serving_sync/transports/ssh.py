"""``ssh://user@host:port/base`` hosts over paramiko (see ``ssh_connect`` for the security rules).

Speed: a version goes as ONE tar stream over one exec channel, with writes that avoid
paramiko's per-packet buffer copies; the same remote script checks free space first, then
extracts while hashing in the same pass (the host's ``python3`` for big uploads, else ``tee``
into ``openssl dgst``/``sha256sum``; ``ssh_scripts.upload_script``) — one process spawn per
publish. Small operations (stat, read, write, rename) use one SFTP session. Accounts without a
shell, ``tar`` or a hash tool fall back to pipelined SFTP writes and SFTP read-back hashing.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import secrets
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path

from mlops_common import log
from mlops_common.errors import UserError

from .. import manifest as mf
from ..errors import DiskFull, HostUnreachable
from ..hosts import Target
from ..manifest import HostListing, Manifest
from ..progress import ProgressFn
from . import ssh_connect
from .base import LINKABLE, MAX_SMALL_FILE, Transport, line_break_name, rel_path, whole_small_file
from .oserrors import from_stderr, host_os_error
from .ssh_scripts import (
    MARK,
    RESTRICTED,
    RESTRICTED_EXIT,
    SHELL_DEFAULTS,
    ScriptOutput,
    fetch_script,
    go_line,
    host_python_hashes,
    listing_script,
    parse_output,
    q,
    upload_script,
)
from .tarstream import Streamed, shared_hasher, stream_tree

logger = log.get("sync.ssh")

SFTP_CHUNK = 256 * 1024
FIRST_LINE_TIMEOUT = 15.0   # a shell answers the upload script's first line at once
# The downloader's exit status for "could not write the file" (fetch_script's ``@fetchrc``).
WRITE_FAILED = ("curl 23", "wget 3")
_TEMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{8}")     # write_file_atomic's temp files


class SshTransport(Transport):
    scheme = "ssh"
    atomic_rename = True

    def __init__(self, target: Target, client_transport, *, op_timeout: float = 120.0):
        self.target = target
        self.base = target.path
        self._t = client_transport
        self._sftp = None
        self._no_shell = False
        self._verified: dict[str, HostListing] = {}   # listings hashed right after an upload
        self._link_targets: dict[str, str] = {}       # _through_link, per connection
        self._no_fsync = False     # the SFTP server lacks fsync@openssh.com (said once)
        self.op_timeout = op_timeout
        self.where = ssh_connect.where_of(target)
        super().__init__(target.url)

    @classmethod
    def connect(cls, target: Target, *, known_hosts: Path | None = None,
                identity_file: Path | None = None, timeout: float = 15.0,
                op_timeout: float = 120.0) -> "SshTransport":
        """Connect, verify the host key and authenticate (keys only); one clear line on failure."""
        from mlops_common.lineage import os_user

        target = Target("ssh", target.path, host=target.host, port=target.port,
                        user=target.user or os_user())
        t = ssh_connect.connect(target, known_hosts=known_hosts, identity_file=identity_file,
                                timeout=timeout)
        return cls(target, t, op_timeout=op_timeout)

    @property
    def _under_base(self) -> str:
        return f"{self.where} under {self.base}"

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
        if not getattr(self, "_shares_connection", False):
            self._t.close()

    # --- plumbing ------------------------------------------------------------------------
    def _p(self, rel: str) -> str:
        rel = rel_path(rel)
        return posixpath.join(self.base, rel) if rel else self.base

    def _lost(self, doing: str, exc: BaseException) -> HostUnreachable:
        return HostUnreachable(f"{self.where}: lost the SSH connection while {doing} "
                               f"({ssh_connect.reason(exc)}); check the network and rerun (an interrupted "
                               f"upload is never published)")

    @contextmanager
    def _io(self, doing: str):
        """Translate connection-level failures into one line."""
        import paramiko

        try:
            yield
        except (UserError, FileNotFoundError, FileExistsError):
            raise
        except UnicodeDecodeError:  # paramiko decodes SFTP file names as UTF-8, strictly
            raise UserError(f"{self.where}: a file name under {self.base} is not UTF-8 text (found while "
                            f"{doing}); rename or remove that file on the host") from None
        except socket.timeout:
            raise HostUnreachable(f"{self.where}: no progress for {self.op_timeout:.0f}s while {doing}; "
                                  f"the connection stalled") from None
        except (EOFError, paramiko.SSHException, ConnectionError) as exc:
            raise self._lost(doing, exc) from None
        except OSError as exc:
            if not self._t.is_active():
                raise self._lost(doing, exc) from None
            raise host_os_error(exc, where=self.where, base=self.base, doing=doing) from None

    def _open_exec(self, command: str):
        ch = self._t.open_session(timeout=self.op_timeout)
        ch.settimeout(self.op_timeout)
        ch.exec_command(SHELL_DEFAULTS + command)
        return ch

    def _finish(self, ch, timeout: float | None = None, *, interruptible: bool = False) -> tuple[int, bytes, bytes]:
        """Read the command's output to the end and its exit status. ``interruptible``: for a
        command that runs for minutes in silence (a pull), a requested interrupt (SIGTERM from a
        cancelled CI job, Ctrl-C) ends the wait within half a second with ``DeployInterrupted``,
        instead of after the whole download; ``timeout`` is then the silence allowed."""
        timeout = timeout or self.op_timeout
        out = _read_interruptible(ch, timeout) if interruptible else _read_all(ch, stderr=False)
        err = _read_all(ch, stderr=True)
        if not ch.status_event.wait(timeout):
            raise socket.timeout()
        rc = ch.recv_exit_status()
        self._refuse_restricted(rc, out)
        return rc, out, err

    def _refuse_restricted(self, rc: int, out: bytes) -> None:
        """One line for a restricted login shell (every command's first words check), instead of
        taking the account for one without a shell and failing later in a confusing way."""
        if rc == RESTRICTED_EXIT and RESTRICTED.encode() in (line.strip() for line in out.splitlines()):
            raise UserError(f"{self.where}: the deploy user's login shell is restricted (rbash: no "
                            f"redirection, no cd), so the host scripts cannot run; give the user /bin/bash "
                            f"or /bin/sh (serving_host/install_server.sh creates it with /bin/bash)")

    def _exec(self, command: str) -> tuple[int, bytes, bytes]:
        """Run one command on the host: (exit code, stdout, stderr)."""
        ch = self._open_exec(command)
        try:
            ch.shutdown_write()
            return self._finish(ch)
        finally:
            ch.close()

    @property
    def sftp(self):
        if self._sftp is None:
            import paramiko

            with self._io("opening SFTP"):
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(
                        self._t, window_size=ssh_connect.WINDOW_SIZE, max_packet_size=ssh_connect.MAX_PACKET)
                except paramiko.SFTPError as exc:
                    # An SFTP server started through the login shell (Debian's default
                    # ``Subsystem sftp /usr/lib/openssh/sftp-server``): what a startup file
                    # prints comes before the protocol, as for OpenSSH's own sftp and scp.
                    raise UserError(
                        f"{self.where}: the SFTP session began with text that is not SFTP "
                        f"({ssh_connect.reason(exc)}): sshd starts the SFTP server through the deploy "
                        f"user's login shell, and a startup file (~/.bashrc, ~/.profile) prints; make it "
                        f"print only in interactive shells (first line of ~/.bashrc: "
                        f"case $- in *i*) ;; *) return;; esac) or set `Subsystem sftp internal-sftp` "
                        f"in the host's sshd_config") from None
                self._sftp.get_channel().settimeout(self.op_timeout)
        return self._sftp

    def _create(self, path: str):
        """Open a new file for writing (exclusive create), making its directories only when the
        host says they are missing: a stat per parent before every write was a round trip each,
        and a deploy's writes go to directories that exist."""
        try:
            return self.sftp.open(path, "wbx")
        except FileNotFoundError:     # SSH_FX_NO_SUCH_FILE: a parent is missing
            self._makedirs(posixpath.dirname(path))
        return self.sftp.open(path, "wbx")

    def _makedirs(self, path: str) -> None:
        """``mkdir -p`` over SFTP (a few cheap round trips, no process spawn). The folders it made
        and the first existing one above them are flushed (their entries: a new base, which a
        deploy's lock makes, must not vanish in a power loss): two round trips each, only when
        something was made."""
        missing: list[str] = []
        cur = path
        while cur not in ("", "/"):
            try:
                self.sftp.stat(cur)
                break
            except FileNotFoundError:
                missing.append(cur)
                cur = posixpath.dirname(cur)
        for d in reversed(missing):
            try:
                self.sftp.mkdir(d, 0o755)
            except OSError:
                if not self._isdir(d):
                    raise
                continue
            self.sftp.chmod(d, 0o755)     # mkdir's mode is masked by the SFTP server's umask
        for d in [cur, *reversed(missing)] if missing and cur else reversed(missing):
            self._fsync_dir(d)

    def _isdir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.sftp.stat(path).st_mode or 0)
        except FileNotFoundError:
            return False

    def _write_error(self, exc: OSError, doing: str, base: str | None = None) -> UserError:
        """SFTP reports most write errors as a bare 'Failure': say what is likely and how to check.
        ``base``: the folder written in, when not the base (a linked models.config's)."""
        base = base or self.base
        if exc.errno is not None:
            return host_os_error(exc, where=self.where, base=base, doing=doing)
        free = self.disk_free()
        if free is not None and free < 64 * 1024:
            return DiskFull(f"{self.where}: no space left under {base} while {doing}; free space "
                            f"on the host and rerun; nothing was published")
        return UserError(f"{self.where}: the SFTP server refused {doing} ({ssh_connect.reason(exc)}); "
                         f"check that the deploy user can write to {base}")

    # --- reading -------------------------------------------------------------------------
    def list_dir(self, rel: str = "") -> list[str]:
        with self._io(f"listing {rel or self.base}"):
            try:
                return sorted(self.sftp.listdir(self._p(rel)))
            except FileNotFoundError:
                return []

    def read_file(self, rel: str, max_bytes: int = MAX_SMALL_FILE) -> bytes:
        with self._io(f"reading {rel}"):
            with self.sftp.open(self._p(rel), "rb") as f:
                data = f.read(max_bytes + 1)
        return whole_small_file(data, max_bytes, self.url, rel)

    def exists(self, rel: str) -> bool:
        with self._io(f"checking {rel}"):
            try:
                self.sftp.lstat(self._p(rel))
                return True
            except FileNotFoundError:
                return False

    def listing(self, rel: str) -> HostListing:
        path = self._p(rel)
        cached = self._verified.pop(path, None)
        if cached is not None:
            return cached
        if not self._no_shell:
            with self._io(f"hashing {rel} on the host"):
                rc, out, err = self._exec(listing_script(path))
            res = parse_output(out)
            if rc == 3:
                raise FileNotFoundError(path)
            if "@linebreak" in res.flags:
                raise line_break_name(self.where, path)
            if res.shell and res.listing is not None and rc == 0:
                return res.listing
            if res.shell and "@nohash" not in res.flags:
                raise UserError(f"{self.where}: hashing {path} on the host failed (exit {rc}): "
                                f"{_last_line(err)}")
            self._no_shell = self._no_shell or not res.shell
        return self._listing_sftp(path)

    def _listing_sftp(self, root: str) -> HostListing:
        """Walk and read back every file over SFTP (hosts without a shell or a hash tool)."""
        with self._io(f"reading back {root}"):
            sizes, dirs, others = self._walk_sftp(root)
            files: dict[str, str] = {}
            for r in sizes:
                h = hashlib.sha256()
                with self.sftp.open(posixpath.join(root, r), "rb") as f:
                    f.prefetch(sizes[r])
                    while chunk := f.read(SFTP_CHUNK):
                        h.update(chunk)
                files[r] = h.hexdigest()
        return HostListing(files, dirs, others)

    def _walk_sftp(self, root: str) -> tuple[dict[str, int], frozenset[str], tuple[str, ...]]:
        sizes: dict[str, int] = {}
        dirs: set[str] = set()
        others: list[str] = []
        self.sftp.stat(root)   # FileNotFoundError when absent
        stack = [""]
        while stack:
            rel = stack.pop()
            for attr in self.sftp.listdir_attr(posixpath.join(root, rel) if rel else root):
                if "\n" in attr.filename:
                    raise line_break_name(self.where, root)
                r = f"{rel}/{attr.filename}" if rel else attr.filename
                mode = attr.st_mode or 0
                if stat.S_ISDIR(mode):
                    dirs.add(r)
                    stack.append(r)
                elif stat.S_ISREG(mode):
                    sizes[r] = attr.st_size or 0
                else:
                    others.append(r)
        return sizes, frozenset(dirs), tuple(sorted(others))

    def shape(self, rel: str) -> tuple[dict[str, int], frozenset[str], tuple[str, ...]] | None:
        """Names, kinds and sizes over SFTP: a few round trips, no process spawn on the host."""
        with self._io(f"listing {rel}"):
            return self._walk_sftp(self._p(rel))

    def disk_free(self) -> int | None:
        if self._no_shell:
            return None
        script = (f"d={q(self.base)}; while [ ! -d \"$d\" ]; do d=$(dirname -- \"$d\"); done; "
                  f"printf '\\n@df %s\\n' \"$(df -Pk -- \"$d\" | awk 'NR==2 {{print $4}}')\"")
        with self._io("checking free space"):
            rc, out, _ = self._exec(script)
        # its own tagged line: a login shell's startup file may print before it (text without a
        # newline, or a number)
        found = re.findall(rb"^@df (\d+)$", out, re.M)
        return int(found[-1]) * 1024 if rc == 0 and found else None

    # --- writing -------------------------------------------------------------------------
    def write_file_atomic(self, rel: str, data: bytes) -> None:
        path, doing, base = self._p(rel), f"writing {rel}", self.base
        with self._io(doing):
            target = self._through_link(rel)
        linked = target != path
        if linked:       # written through the link, beside its target (``base.LINKABLE``)
            path, doing, base = target, f"writing {rel} through its link to {target}", posixpath.dirname(target)
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp-{secrets.token_hex(4)}")
        with self._io(doing):
            self.cut_writes.add(tmp)    # until renamed or removed: a cut connection may leave it
            try:
                # never folders outside the base for a dangling link
                with (self.sftp.open(tmp, "wbx") if linked else self._create(tmp)) as f:
                    f.write(data)
                    self._fsync_and_close(f)   # on disk before the rename makes it the file
                self.sftp.chmod(tmp, 0o644)
                self.sftp.posix_rename(tmp, path)   # rename(2): readers see old or new, never a mix
                self.cut_writes.discard(tmp)
                # The folder is not flushed after the rename (file:// hosts flush it): two more
                # round trips a write, some fifteen a deploy (7.6 -> 9.2 s for a host 50 ms away).
                # Without it a power loss may bring the host back with the file as it was before
                # this write, whole, which the next deploy observes; never a short one.
            except OSError as exc:
                self._best_effort_remove(tmp)
                if not self._t.is_active():
                    raise
                raise self._write_error(exc, doing, base) from None
            except BaseException:
                self._best_effort_remove(tmp)
                raise

    def _through_link(self, rel: str) -> str:
        """Where a write of ``rel`` goes: the file a ``LINKABLE`` link leads to (followed hop by
        hop, relative targets from the link's folder), else ``rel`` itself. Checked once per
        connection (an lstat is a round trip; a deploy writes models.config four times)."""
        path = self._p(rel)
        if rel_path(rel) not in LINKABLE:
            return path
        if rel in self._link_targets:
            return self._link_targets[rel]
        target = path
        for _ in range(40):          # the kernel's own limit on links in a path
            try:
                st = self.sftp.lstat(target)
            except FileNotFoundError:
                break
            if not stat.S_ISLNK(st.st_mode or 0):
                break
            target = posixpath.join(posixpath.dirname(target), self.sftp.readlink(target))
        else:
            raise UserError(f"{self.where}: {path} is a loop of symbolic links; point it at the file "
                            f"TF Serving reads")
        self._link_targets[rel] = target
        return target

    def _best_effort_remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except FileNotFoundError:
            self.cut_writes.discard(path)
        except Exception:  # noqa: BLE001 - cleanup only
            pass
        else:
            self.cut_writes.discard(path)

    def _fsync_and_close(self, f, *, strict: bool = True) -> None:
        """Flush an open SFTP file to the host's disk (OpenSSH's ``fsync@openssh.com``, since
        6.5), then close it: what a power loss right after a publish would otherwise cut short.
        The fsync goes out just before the close, whose answer (the server runs requests in
        order) says both are done: no round trip of its own. A server without the extension is
        said once per connection and the publish goes on, as before. ``strict``: a failed flush
        (an I/O error) is raised; else ignored (folders, whose fsync some file systems refuse)."""
        if self._no_fsync:
            f.close()
            return
        from paramiko.sftp import CMD_EXTENDED, CMD_STATUS

        reply = _Reply()
        f.flush()
        self.sftp._async_request(reply, CMD_EXTENDED, "fsync@openssh.com", f.handle)
        f.close()
        if reply.kind != CMD_STATUS:
            return
        try:
            self.sftp._convert_status(reply.msg)
        except OSError as exc:
            if "unsupported" in str(exc).lower():
                self._no_fsync = True
                logger.warning("%s: the SFTP server cannot flush files to disk (no fsync@openssh.com): "
                               "a power loss right after this deploy may leave a published file short",
                               self.where)
            elif strict and "bad message" not in str(exc).lower():   # EINVAL: cannot be flushed
                raise

    def _fsync_dir(self, path: str) -> None:
        """Flush a folder's entries (a rename into it, a new name) to disk, best effort: OpenSSH's
        sftp-server opens a folder read-only as a file and fsyncs that handle (two round trips)."""
        if self._no_fsync:
            return
        try:
            f = self.sftp.open(path, "r")
        except OSError:        # not readable by the deploy user: its entries stay unflushed
            return
        with f:
            self._fsync_and_close(f, strict=False)

    def remove_cut_writes(self, paths) -> None:
        """Remove the temp files of writes another connection to this host lost mid-way (its
        ``cut_writes``: our own random names, never renamed into place), before its lock is
        released over this connection; they stayed until a lock takeover, which never came."""
        for path in sorted(paths):
            if not _TEMP_NAME.fullmatch(posixpath.basename(path)):
                continue
            with self._io(f"removing {path}"):
                try:
                    self.sftp.remove(path)
                    logger.info("%s: removed %s, left by the lost connection", self.where, path)
                except FileNotFoundError:
                    pass

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self._p(rel)
        doing = f"creating {rel}"
        with self._io(doing):
            failure: OSError | None = None
            for _ in range(5):
                try:
                    f = self._create(path)   # SSH_FXF_CREAT|EXCL -> O_CREAT|O_EXCL on the host
                except OSError as exc:
                    # SFTP says only "Failure" for an existing file. A file that is not there
                    # may have been removed just now by its holder: create again (bounded).
                    if self.exists(rel):
                        return False
                    failure = exc
                    continue
                try:
                    with f:
                        f.write(data)
                except OSError as exc:      # a full disk: the empty file would read as a corrupt lock
                    with contextlib.suppress(OSError):
                        self.sftp.remove(path)
                    raise self._write_error(exc, doing) from None
                return True
            raise self._write_error(failure, doing) from None

    def lock_channel(self) -> "SshTransport":
        # Same SSH connection, its own SFTP channel: paramiko's SFTPClient is not shared across threads.
        clone = SshTransport(self.target, self._t, op_timeout=self.op_timeout)
        clone._shares_connection = True
        return clone

    def upload_tree(self, local_dir, dest_rel: str, manifest: Manifest,
                    progress: ProgressFn | None = None, *, min_free: int | None = None) -> int:
        return self.upload_tree_hashing(local_dir, dest_rel, manifest, progress, min_free=min_free)[0]

    def upload_tree_hashing(self, local_dir, dest_rel: str, tree: Manifest,
                            progress: ProgressFn | None = None, *,
                            min_free: int | None = None) -> tuple[int, Manifest]:
        """The shared hasher hashes the tree while the tar streams; the host hashes as it extracts."""
        dest = self._p(dest_rel)
        if not self._no_shell:
            streamed = self._upload_tar(local_dir, dest, tree, progress, min_free)
            if streamed is not None:
                return streamed.sent, streamed.manifest
        manifest = tree if tree.hashed else mf.build(local_dir)
        return self._upload_sftp(local_dir, dest, manifest, progress, min_free), manifest

    def _upload_tar(self, local_dir, dest: str, manifest: Manifest, progress: ProgressFn | None,
                    min_free: int | None) -> Streamed | None:
        """Stream tar into the remote script; None when the host cannot (no shell or no tar)."""
        doing = f"uploading to {dest}"
        # Hashes while the host's shell starts. A big upload goes through the host's python3,
        # which checks per-file digests: no stream hash unless the host turns out to lack it.
        hasher = shared_hasher(local_dir, manifest, stream=not host_python_hashes(manifest.total_size))
        with self._io(doing):
            ch = self._open_exec(upload_script(posixpath.dirname(dest), dest, min_free,
                                               stream_bytes=manifest.total_size))
            try:
                state, head = _read_until_go(ch, b"@ready", mark_timeout=min(self.op_timeout, FIRST_LINE_TIMEOUT))
                streamed, send_error = None, None
                if state in ("silent", "other"):   # not our script (sftp-only, a forced command)
                    self._no_shell = True
                    return None
                if state == "go":
                    if parse_output(head).flags.get("@hashing") == "stream":   # no python3 there
                        hasher.want_stream()
                    try:
                        streamed = stream_tree(local_dir, manifest, _sender(ch), progress, hasher)
                    except (OSError, EOFError) as exc:   # the host stopped reading: see its status
                        send_error = exc
                try:
                    ch.shutdown_write()
                except (OSError, EOFError):
                    pass
                if send_error is not None and not self._t.is_active():
                    raise send_error
                rc, out, err = self._finish(ch, timeout=None if send_error is None else 30)
            finally:
                ch.close()
        self._refuse_restricted(rc, head)        # its line was read with the head
        res = parse_output(head + out)
        if not res.shell:
            self._no_shell = True
            return None
        if "@notar" in res.flags:
            return None
        if "@nospace" in res.flags:
            raise DiskFull.at(self._under_base, min_free, int(res.flags["@nospace"] or 0) * 1024)
        stderr = err.decode(errors="replace")
        if rc == 0 and streamed is not None and "@nohash" in res.flags:
            self._say_unsynced(res)
            return streamed   # no hash tool: verify() reads the files back over SFTP
        if "@linebreak" in res.flags:
            raise line_break_name(self.where, dest)
        if rc != 0 or send_error is not None or res.listing is None or streamed is None:
            known = from_stderr(stderr, where=self.where, base=self.base, doing=doing)
            if known is not None:
                raise known
            if rc == 96:
                raise UserError(f"{self.where}: cannot create {dest}: {_last_line(err)}")
            if send_error is not None:
                raise self._lost(doing, send_error)
            if rc == -1 and not self._t.is_active():   # no exit status: the connection died
                raise self._lost(doing, EOFError("the connection closed before the host reported"))
            raise UserError(f"{self.where}: extracting the upload on the host failed (exit {rc}): "
                            f"{_last_line(err)}")
        self._verified[dest] = _listing_of_upload(res, streamed)
        self._say_unsynced(res)
        return streamed

    def pull_tree(self, dest_rel: str, pull, *, min_free: int | None = None) -> int | None:
        """The host downloads ``pull`` (``store.Pull``) into ``dest_rel`` and hashes every file.

        Returns the bytes we sent (the URL list on stdin), or None when the host cannot pull
        (no shell, neither curl nor wget): the caller then streams the version instead.
        """
        from ..store import MIN_PULL_RATE, hide_presigned_urls

        if self._no_shell:
            return None
        dest = self._p(dest_rel)
        doing = f"downloading into {dest} from the shared store"
        payload = pull.script_input()
        nonce = secrets.token_hex(16)
        with self._io(doing):
            ch = self._open_exec(fetch_script(posixpath.dirname(dest), dest, min_free, nonce=nonce))
            try:
                # The URLs are credentials: written only once the host printed this call's go
                # line, which only our script prints. Before, they went at once, to whatever the
                # account runs (a forced command that is not a shell read them).
                state, head = _read_until_go(ch, go_line(nonce),
                                             mark_timeout=min(self.op_timeout, FIRST_LINE_TIMEOUT))
                if state in ("silent", "other"):     # not our script, still running: nothing sent
                    rc, out, err = -1, b"", b""
                elif state == "ended":               # ended before its go line: see why
                    ch.shutdown_write()
                    rc, out, err = self._finish(ch)
                else:
                    # No output while a big file downloads: allow the slowest rate the URLs are
                    # made for on top of the usual timeout (curl gives up on a stalled transfer).
                    timeout = self.op_timeout + pull.manifest.total_size / MIN_PULL_RATE
                    ch.settimeout(timeout)
                    _sender(ch)(payload)
                    ch.shutdown_write()
                    rc, out, err = self._finish(ch, timeout, interruptible=True)
            finally:
                ch.close()
        self._refuse_restricted(rc, head)        # its line was read with the head
        res = parse_output(head + out)
        if not res.shell:
            self._no_shell = True
            logger.warning("%s: the account did not run the pull script (no shell: an sftp-only account or "
                           "a forced command); nothing was sent to it, the version goes over SFTP instead "
                           "(give the deploy user a shell to pull from %s)", self.where, pull.store_url)
            return None
        if "@nofetch" in res.flags:
            logger.warning("%s: neither curl nor wget on the host: sending the version over SSH instead "
                           "(install curl to pull it from %s)", self.where, pull.store_url)
            return None
        if "@nospace" in res.flags:
            raise DiskFull.at(self._under_base, min_free, int(res.flags["@nospace"] or 0) * 1024,
                              nothing="downloaded")
        stderr = hide_presigned_urls(err.decode(errors="replace"))
        if rc == 99 and "@fetchsize" in res.flags:
            got, _, path = res.flags["@fetchsize"].partition(" ")
            entry = pull.manifest.by_path().get(path)
            raise UserError(f"{self.where}: the shared store {pull.store_url} answered {path} with {got} bytes, "
                            f"not its {entry.size if entry else '?'}: a redirect or an error page in place of the "
                            f"object (store_endpoint in the hosts file names an address the store redirects, "
                            f"e.g. http:// where it wants https://, or an endpoint of another region than the "
                            f"bucket's), or the object was replaced in the store since the upload; nothing was "
                            f"published")
        if rc == 97 and res.flags.get("@fetchrc") in WRITE_FAILED:
            raise self._download_write_error(res.flags["@fetchfailed"], stderr, doing)
        if rc == 97:
            last = _last_line(stderr.encode())
            hint = ("the URL was refused (403): check the clocks of this machine and the host, and that "
                    "the download took less than MLOPS_STORE_URL_EXPIRY plus one second per MB"
                    if re.search(r"\b403\b", last) else
                    "the object is not in the store (404): removed while this deploy ran, e.g. by another "
                    "fleet's retention on the same store; rerun the deploy (it uploads it again)"
                    if re.search(r"\b404\b", last) else
                    "check that the host reaches the store (store_endpoint in the hosts file)")
            raise UserError(f"{self.where}: the host could not download {res.flags['@fetchfailed']} from "
                            f"the shared store {pull.store_url} ({last}); {hint}; nothing was published")
        if rc == 0 and "@nohash" in res.flags:
            self._say_unsynced(res)
            return len(payload)     # no hash tool: verify() reads the files back over SFTP
        if "@linebreak" in res.flags:
            raise line_break_name(self.where, dest)
        if rc != 0 or res.listing is None:
            known = from_stderr(stderr, where=self.where, base=self.base, doing=doing)
            if known is not None:
                raise known
            raise UserError(f"{self.where}: downloading from the shared store failed on the host "
                            f"(exit {rc}): {_last_line(stderr.encode())}")
        self._verified[dest] = res.listing
        self._say_unsynced(res)
        return len(payload)

    def _say_unsynced(self, res: ScriptOutput) -> None:
        if res.flags.get("@synced") == "none":
            logger.warning("%s: the host has neither sync nor python3 to flush the version to disk: "
                           "a power loss right after this deploy may leave one of its files short",
                           self.where)

    def _download_write_error(self, path: str, stderr: str, doing: str) -> UserError:
        """The host's downloader could not write ``path`` (curl 23, wget 3): a full disk is
        ``DiskFull`` like a streamed upload's, not a store the host cannot reach."""
        known = from_stderr(stderr, where=self.where, base=self.base, doing=doing)
        if known is not None:
            return known
        free = self.disk_free()
        if free is not None and free < 64 * 1024:
            return host_os_error(OSError(errno.ENOSPC, "No space left on device"), where=self.where,
                                 base=self.base, doing=doing)
        return UserError(f"{self.where}: the host could not write {path} while {doing} "
                         f"({_last_line(stderr.encode())}); check free space and the deploy user's write "
                         f"access under {self.base}; nothing was published")

    def _upload_sftp(self, local_dir, dest: str, manifest: Manifest, progress: ProgressFn | None,
                     min_free: int | None) -> int:
        if min_free is not None:
            free = self.disk_free()
            if free is not None and free < min_free:
                raise DiskFull.at(self._under_base, min_free, free)
        sent = 0
        doing = f"uploading to {dest}"
        with self._io(doing):
            try:
                self._makedirs(posixpath.dirname(dest))
                # 0755 whatever the SFTP server's umask (``internal-sftp -u 077``): TF Serving may
                # run as another user (files are chmod 0644 below)
                for d in [dest, *(posixpath.join(dest, d) for d in manifest.dirs)]:
                    self.sftp.mkdir(d, 0o755)
                    self.sftp.chmod(d, 0o755)
                for entry in manifest.files:
                    remote = posixpath.join(dest, entry.path)
                    with open(os.path.join(local_dir, entry.path), "rb") as fin, \
                            self.sftp.open(remote, "wbx") as fout:
                        fout.set_pipelined(True)
                        while chunk := fin.read(SFTP_CHUNK):
                            fout.write(chunk)
                            sent += len(chunk)
                            if progress:
                                progress(len(chunk))
                        self._fsync_and_close(fout)   # after the writes (in order)
                    self.sftp.chmod(remote, 0o644)
                # the folders' entries, and the model folder's in the base (maybe just made)
                for d in [*(posixpath.join(dest, d) for d in manifest.dirs), dest,
                          posixpath.dirname(posixpath.dirname(dest))]:
                    self._fsync_dir(d)
            except OSError as exc:
                if not self._t.is_active():
                    raise
                raise self._write_error(exc, doing) from None
        return sent

    def rename(self, src_rel: str, dst_rel: str) -> None:
        src, dst = self._p(src_rel), self._p(dst_rel)
        with self._io(f"renaming {src_rel} to {dst_rel}"):
            if self.exists(dst_rel):
                raise FileExistsError(dst)
            self.sftp.rename(src, dst)   # SFTP rename refuses an existing target
            self._verified.pop(src, None)
            # the rename on disk: the version's files were flushed before it (the upload script,
            # ``_upload_sftp``), their folder's new name now
            self._fsync_dir(posixpath.dirname(dst))

    def remove_tree(self, rel: str) -> None:
        if not rel_path(rel):
            raise ValueError("refusing to remove the base directory")
        path = self._p(rel)
        self._verified.pop(path, None)
        with self._io(f"removing {rel}"):
            if not self._no_shell:
                rc, out, err = self._exec(f"echo @serving-sync; rm -rf -- {q(path)}")
                if b"@serving-sync" in out:
                    if rc != 0:
                        raise from_stderr(err.decode(errors="replace"), where=self.where,
                                          base=self.base, doing=f"removing {rel}") or UserError(
                            f"{self.where}: cannot remove {path}: {_last_line(err)}")
                    return
                self._no_shell = True
            self._rmtree_sftp(path)

    def _rmtree_sftp(self, path: str) -> None:
        """``rm -rf`` over SFTP: a symlink is removed, never followed (listing it would list, and
        then delete, what it points at — outside the base)."""
        try:
            if stat.S_ISLNK(self.sftp.lstat(path).st_mode or 0):
                self.sftp.remove(path)
                return
            attrs = self.sftp.listdir_attr(path)
        except FileNotFoundError:
            return
        for a in attrs:
            p = posixpath.join(path, a.filename)
            if stat.S_ISDIR(a.st_mode or 0):
                self._rmtree_sftp(p)
            else:
                self.sftp.remove(p)
        self.sftp.rmdir(path)

    def remove_file(self, rel: str) -> None:
        with self._io(f"removing {rel}"):
            try:
                self.sftp.remove(self._p(rel))
            except FileNotFoundError:
                pass


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


class _Reply:
    """The answer to one pipelined SFTP request, kept when paramiko reads it."""
    kind = None
    msg = None

    def _async_response(self, kind, msg, num) -> None:
        self.kind, self.msg = kind, msg


def _last_line(err: bytes) -> str:
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no error output"


def _sender(ch):
    """``sendall`` without paramiko's copy of the remaining buffer per packet (memoryview slices)."""
    def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = ch.send(view)
            if n <= 0:
                raise EOFError("the host closed the upload channel")
            view = view[n:]
    return send


def _read_until_go(ch, go: bytes, *, mark_timeout: float) -> tuple[str, bytes]:
    """Read a script's stdout until the line ``go``; return how it went and what was read. The
    upload waits for ``@ready`` (then streams), the pull for its nonce line (then sends the URLs).

    ``"go"``: the line came (our script runs and waits for its input). ``"ended"``: stdout ended
    first (the script stopped early: ``@nofetch``, ``@nospace``, a restricted shell; or a program
    that is not our script exited). ``"silent"`` / ``"other"``: no ``MARK`` line within
    ``mark_timeout`` and nothing / something else printed: the account runs another program
    (``ForceCommand internal-sftp``, a forced command), which must not be sent anything. Once
    ``MARK`` is there, the wait for ``go`` is the channel's timeout (``socket.timeout``).
    """
    buf = b""
    mark = MARK.encode()
    saved = ch.gettimeout()
    deadline = time.monotonic() + mark_timeout
    try:
        while True:
            lines = buf.split(b"\n")[:-1]
            if go in lines:
                return "go", buf
            marked = mark in lines
            if marked:
                ch.settimeout(saved)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ("other" if buf else "silent"), buf
                ch.settimeout(left)
            try:
                data = ch.recv(4096)
            except socket.timeout:
                if marked:
                    raise
                continue
            if not data:
                return "ended", buf + b"\n"
            buf += data
    finally:
        ch.settimeout(saved)


def _read_interruptible(ch, timeout: float, poll: float = 0.5) -> bytes:
    """stdout to its end, checking for a requested interrupt every ``poll`` seconds; more than
    ``timeout`` seconds without output is a stall (``socket.timeout``). Leaves the channel's
    timeout at ``timeout``."""
    from ..cancel import check

    chunks: list[bytes] = []
    ch.settimeout(poll)
    quiet_since = time.monotonic()
    try:
        while True:
            try:
                data = ch.recv(65536)
            except socket.timeout:
                check()
                if time.monotonic() - quiet_since > timeout:
                    raise
                continue
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            quiet_since = time.monotonic()
    finally:
        ch.settimeout(timeout)


def _read_all(ch, *, stderr: bool) -> bytes:
    chunks = []
    recv = ch.recv_stderr if stderr else ch.recv
    while True:
        data = recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
