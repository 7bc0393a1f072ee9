"""``file://`` hosts: the base directory is on this machine (the embedded default)."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import shutil
import stat
from pathlib import Path

from ..errors import DiskFull
from ..manifest import HostListing, Manifest, sha256_file
from ..progress import ProgressFn
from .base import (
    FLUSH_EACH_UP_TO,
    LINKABLE,
    MAX_SMALL_FILE,
    Transport,
    line_break_name,
    rel_path,
    whole_small_file,
)
from .oserrors import host_os_error

CHUNK = 16 * 1024 * 1024


def copy_with_progress(src: str, dst: str, progress: ProgressFn | None) -> int:
    """Copy one file in large chunks (kernel copy where possible), reporting bytes sent."""
    sent = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        os.fchmod(fout.fileno(), 0o644)
        size = os.fstat(fin.fileno()).st_size
        use_kernel = hasattr(os, "copy_file_range")
        while sent < size:
            n = 0
            if use_kernel:
                try:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), min(CHUNK, size - sent))
                except OSError as exc:
                    if exc.errno in (18, 22, 38, 95):  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP
                        use_kernel = False
                        continue
                    raise
            else:
                buf = fin.read(CHUNK)
                n = len(buf)
                if n:
                    fout.write(buf)
            if n == 0:
                break
            sent += n
            if progress:
                progress(n)
    return sent


@functools.cache
def _syncfs_call():
    """libc's ``syncfs`` (Linux), or None."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


def syncfs(path: str | os.PathLike) -> bool:
    """Flush the whole file system that holds ``path`` (one syncfs(2), as OSTree commits): a
    version's files and folders in one call, where an fsync per file cost a 300-file version
    0.1 -> 1.0 s on ext4 here. False when this system has no syncfs or it failed: then the caller
    fsyncs each file."""
    call = _syncfs_call()
    if call is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return call(fd) == 0
    finally:
        os.close(fd)


def flush_tree(root: Path, files, dirs) -> None:
    """Every file and folder under ``root`` (and ``root``) on disk: fsync each for up to
    ``FLUSH_EACH_UP_TO`` files, else one syncfs (fsync each where there is none)."""
    files = list(files)
    if len(files) > FLUSH_EACH_UP_TO and syncfs(root):
        return
    for rel in files:
        with open(root / rel, "rb") as f:
            os.fsync(f.fileno())
    for d in sorted({(root / rel).parent for rel in files} | {root / d for d in dirs} | {root}):
        fsync_dir(d)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a new name, a rename into it) to disk, best effort: a
    directory the user cannot read, or a file system that refuses a directory's fsync, stays as
    the kernel writes it back."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


class LocalTransport(Transport):
    scheme = "file"
    atomic_rename = True

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base)
        super().__init__(f"file://{self.base}")

    def _p(self, rel: str) -> Path:
        rel = rel_path(rel)
        return self.base / rel if rel else self.base

    def _err(self, exc: OSError, doing: str):
        return host_os_error(exc, where=self.url, base=str(self.base), doing=doing)

    def list_dir(self, rel: str = "") -> list[str]:
        try:
            return sorted(os.listdir(self._p(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:      # EACCES (NFS root_squash), EIO: one line naming the host, as ssh's
            raise self._err(exc, f"listing {rel or self.base}") from None

    def read_file(self, rel: str, max_bytes: int = MAX_SMALL_FILE) -> bytes:
        """FileNotFoundError when ``rel`` is not there (a host with no config yet); any other
        OS error (a directory where the file belongs, a base that is a file) is one line."""
        try:
            with open(self._p(rel), "rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._err(exc, f"reading {rel}") from None
        return whole_small_file(data, max_bytes, self.url, rel)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._p(rel))

    def listing(self, rel: str) -> HostListing:
        files, dirs, others = _walk(self._p(rel), lambda full, st: sha256_file(full), self.url)
        return HostListing(files, dirs, others)

    def shape(self, rel: str) -> tuple[dict[str, int], frozenset[str], tuple[str, ...]] | None:
        root = self._p(rel)
        if not root.is_dir():
            raise FileNotFoundError(str(root))
        return _walk(root, lambda full, st: st.st_size, self.url)

    def disk_free(self) -> int | None:
        p = self.base
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free

    def write_file_atomic(self, rel: str, data: bytes) -> None:
        path = self._p(rel)
        linked = rel_path(rel) in LINKABLE and path.is_symlink()
        if linked:     # written through the link, beside its target (``sed -i --follow-symlinks``)
            path = Path(os.path.realpath(path))
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            if not linked:          # never folders outside the base for a dangling link
                _make_dirs_flushed(path.parent)
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            fsync_dir(path.parent)      # the rename on disk too
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if linked:
                raise host_os_error(exc, where=self.url, base=str(path.parent),
                                    doing=f"writing {rel} through its link to {path}") from None
            raise self._err(exc, f"writing {rel}") from None

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self._p(rel)
        try:
            _make_dirs_flushed(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._err(exc, f"creating {rel}") from None
        made = None
        try:
            try:
                made = os.fstat(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as exc:      # a full disk: the empty file would read as a corrupt lock
            # only the file this call made: stalled past SETTLE_S, it may have been taken over as a
            # dead creator's, and the name now another deploy's lock
            with contextlib.suppress(OSError):
                now = os.stat(path)
                if made is not None and (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
                    path.unlink()
            raise self._err(exc, f"creating {rel}") from None
        return True

    def upload_tree(self, local_dir, dest_rel: str, manifest: Manifest,
                    progress: ProgressFn | None = None, *, min_free: int | None = None) -> int:
        dest = self._p(dest_rel)
        if min_free is not None:
            free = self.disk_free()
            if free is not None and free < min_free:
                raise DiskFull.at(self.url, min_free, free)
        sent = 0
        try:
            _make_dirs_flushed(dest.parent)
            dest.mkdir()            # a fresh temporary name: must not exist
            os.chmod(dest, 0o755)
            for d in manifest.dirs:
                _make_dirs(dest / d)
            for f in manifest.files:
                _make_dirs((dest / f.path).parent)
                sent += copy_with_progress(os.path.join(local_dir, f.path), str(dest / f.path), progress)
            # on disk before the rename publishes them, and the model folder's entry in the base
            # (``_make_dirs`` may have just made it)
            flush_tree(dest, [f.path for f in manifest.files], manifest.dirs)
            fsync_dir(dest.parent.parent)
        except OSError as exc:
            raise self._err(exc, f"uploading to {dest_rel}") from None
        return sent

    def rename(self, src_rel: str, dst_rel: str) -> None:
        src, dst = self._p(src_rel), self._p(dst_rel)
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} exists")
        try:
            os.rename(src, dst)
            fsync_dir(dst.parent)       # the rename on disk (the files were flushed before it)
        except OSError as exc:
            raise self._err(exc, f"renaming {src_rel} to {dst_rel}") from None

    def remove_tree(self, rel: str) -> None:
        path = self._p(rel)
        if not rel_path(rel):
            raise ValueError("refusing to remove the base directory")
        try:
            if path.is_symlink() or not path.is_dir():
                path.unlink()       # a link (never what it points at) or a file, as ``rm -rf``
            else:
                shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._err(exc, f"removing {rel}") from None

    def remove_file(self, rel: str) -> None:
        try:
            self._p(rel).unlink(missing_ok=True)
        except OSError as exc:
            raise self._err(exc, f"removing {rel}") from None


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p`` whose new folders are 0755 whatever the umask (TF Serving may run as another
    user; ``mkdir``'s mode is masked by the umask, a CI runner's 077 made them 0700). Returns the
    folders it made, the topmost first."""
    if path.is_dir():
        return []
    made = _make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return made
    os.chmod(path, 0o755)
    return [*made, path]


def _make_dirs_flushed(path: Path) -> None:
    """``_make_dirs``, then the folders it made and the first existing one above them on disk
    (their entries): a new base, made by a deploy's lock or its first upload, must not vanish in
    a power loss after the deploy reported it published."""
    made = _make_dirs(path)
    if made:
        for d in [made[0].parent, *made]:
            fsync_dir(d)


def _walk(root, of_file, where: str) -> tuple[dict, frozenset[str], tuple[str, ...]]:
    """Every entry under ``root`` without following links: ``{file: of_file(path, lstat)}``, the
    directories, and anything else (links, devices) by relative path. A name with a line break
    stops it, as it stops an ssh:// host's listing (``base.line_break_name``)."""
    files: dict = {}
    dirs: set[str] = set()
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            if "\n" in name:
                raise line_break_name(where, str(root))
            full = os.path.join(dirpath, name)
            r = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                dirs.add(r)
            elif stat.S_ISREG(st.st_mode):
                files[r] = of_file(full, st)
            else:
                others.append(r)
    return files, frozenset(dirs), tuple(sorted(others))

