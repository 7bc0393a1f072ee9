"""``ssh://user@host:port/base`` hosts over paramiko: the ``Transport`` operations on SSH.

Small operations (stat, read, write, rename) use one SFTP session; a listing, the free space
and a tree's removal are one shell command each (``ssh_scripts``), SFTP where the account has
no shell. How a version gets there: ``ssh_upload``; reading an exec channel: ``ssh_channel``;
flushing SFTP writes to disk: ``sftp_fsync``; the connection and its security rules: ``ssh_connect``.
"""
from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import secrets
import socket
import stat
from contextlib import contextmanager
from pathlib import Path

from mlops_common import log
from mlops_common.errors import UserError

from .. import manifest as mf
from ..errors import DiskFull, HostUnreachable
from ..hosts import Target
from ..manifest import HostListing, Manifest
from ..progress import ProgressFn
from . import sftp_fsync, ssh_connect, ssh_upload
from .base import LINKABLE, MAX_SMALL_FILE, Transport, line_break_name, rel_path, whole_small_file
from .oserrors import from_stderr, host_os_error
from .ssh_channel import exec_command, invoke_subsystem, last_line, read_output
from .ssh_connect import SFTP_CHUNK
from .ssh_scripts import RESTRICTED, RESTRICTED_EXIT, host_command, listing_script, parse_output, q

logger = log.get("sync.ssh")

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

    def _sftp_closed(self) -> bool:
        """Whether this transport's SFTP channel was closed (the SSH connection may be fine)."""
        return self._sftp is not None and self._sftp.get_channel().closed

    def _channel_lost(self, doing: str, exc: BaseException) -> HostUnreachable:
        return HostUnreachable(f"{self.where}: the SFTP channel closed while {doing} ({ssh_connect.reason(exc)}), "
                               f"the SSH connection still up; this is not a permission problem (the host's "
                               f"sshd or its SFTP server ended the channel: its log says why, e.g. "
                               f"MaxSessions); rerun the deploy (an interrupted upload is never published)")

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
                                  f"the connection stalled: check the network path and that the host answers "
                                  f"(`ssh -p {self.target.port} {self.target.user}@{self.target.host} true`; its "
                                  f"load, a hung disk or NFS mount under {self.base}), then rerun") from None
        except (EOFError, paramiko.SSHException, ConnectionError) as exc:
            if self._t.is_active() and self._sftp_closed():
                raise self._channel_lost(doing, exc) from None
            raise self._lost(doing, exc) from None
        except OSError as exc:
            if not self._t.is_active():
                raise self._lost(doing, exc) from None
            if self._sftp_closed():
                raise self._channel_lost(doing, exc) from None
            raise host_os_error(exc, where=self.where, base=self.base, doing=doing) from None

    def _open_exec(self, command: str):
        ch = self._t.open_session(timeout=self.op_timeout)
        ch.settimeout(self.op_timeout)
        exec_command(ch, host_command(command), self.op_timeout)
        return ch

    def _finish(self, ch, timeout: float | None = None, *, interruptible: bool = False) -> tuple[int, bytes, bytes]:
        """Read the command's output to the end and its exit status. ``interruptible``: for a
        command that runs for minutes in silence (a pull), a requested interrupt (SIGTERM from a
        cancelled CI job, Ctrl-C) ends the wait within half a second with ``DeployInterrupted``,
        instead of after the whole download; ``timeout`` is then the silence allowed."""
        timeout = timeout or self.op_timeout
        # Both streams together (ssh_channel.read_output); the silence allowed is the channel's
        # timeout, ``timeout`` when interruptible.
        out, err = read_output(ch, timeout if interruptible else (ch.gettimeout() or timeout),
                               interruptible=interruptible, where=self.where)
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
                            f"redirection, no cd), so the host scripts cannot run; give the user one of the "
                            f"supported shells: bash (/bin/bash), sh/dash (/bin/sh) or zsh (/usr/bin/zsh) "
                            f"(serving_host/install_server.sh creates it with /bin/bash)")

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
                    # paramiko's from_transport waits for the channel (an hour), the subsystem
                    # and the version exchange (no limit): each wait is op_timeout here
                    ch = self._t.open_session(window_size=ssh_connect.WINDOW_SIZE,
                                              max_packet_size=ssh_connect.MAX_PACKET, timeout=self.op_timeout)
                    ch.settimeout(self.op_timeout)
                    try:
                        invoke_subsystem(ch, "sftp", self.op_timeout)
                        self._sftp = paramiko.SFTPClient(ch)
                    except BaseException:
                        ch.close()
                        raise
                except socket.timeout:
                    raise HostUnreachable(
                        f"{self.where}: the SFTP server did not answer within {self.op_timeout:.0f}s; check the "
                        f"host's sshd `Subsystem sftp` (internal-sftp does not start the deploy user's login "
                        f"shell) and that the user's startup files (~/.bashrc, ~/.profile) do not wait") from None
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
            sftp_fsync.fsync_dir(self, d)

    def _isdir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.sftp.stat(path).st_mode or 0)
        except FileNotFoundError:
            return False

    def _write_error(self, exc: OSError, doing: str, base: str | None = None) -> UserError:
        """SFTP reports most write errors as a bare 'Failure': say what is likely and how to check.
        ``base``: the folder written in, when not the base (a linked models.config's)."""
        base = base or self.base
        if self._sftp_closed():      # not a refusal: the channel is gone ("Socket is closed")
            return self._channel_lost(doing, exc)
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
                                f"{last_line(err)}")
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
                    sftp_fsync.fsync_and_close(self, f)   # on disk before the rename makes it the file
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
            streamed = ssh_upload.upload_tar(self, local_dir, dest, tree, progress, min_free)
            if streamed is not None:
                return streamed.sent, streamed.manifest
        manifest = tree if tree.hashed else mf.build(local_dir)
        return ssh_upload.upload_sftp(self, local_dir, dest, manifest, progress, min_free), manifest

    def pull_tree(self, dest_rel: str, pull, *, min_free: int | None = None) -> int | None:
        """The host downloads ``pull`` (``store.Pull``) into ``dest_rel`` (``ssh_upload.pull_tree``)."""
        return ssh_upload.pull_tree(self, dest_rel, pull, min_free=min_free)

    def rename(self, src_rel: str, dst_rel: str) -> None:
        src, dst = self._p(src_rel), self._p(dst_rel)
        with self._io(f"renaming {src_rel} to {dst_rel}"):
            if self.exists(dst_rel):
                raise FileExistsError(dst)
            self.sftp.rename(src, dst)   # SFTP rename refuses an existing target
            self._verified.pop(src, None)
            # the rename on disk: the version's files were flushed before it (the upload script,
            # ``ssh_upload.upload_sftp``), their folder's new name now
            sftp_fsync.fsync_dir(self, posixpath.dirname(dst))

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
                            f"{self.where}: cannot remove {path}: {last_line(err)}")
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
