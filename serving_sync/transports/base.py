"""The one interface every way of reaching a serving host implements (file, ssh, s3).

Paths are relative POSIX paths under the host's base directory (``""`` = the base itself) and
are checked against traversal before any I/O. Errors a user can fix are raised as
``serving_sync.errors`` (one line); a missing file is ``FileNotFoundError``.
"""
from __future__ import annotations

import abc
import os

from ..errors import UserError
from ..manifest import HostListing, Manifest, build, compare
from ..names import BASE_FILES, check_relpath
from ..progress import ProgressFn

MAX_SMALL_FILE = 4 * 1024 * 1024  # read_file is for config, lock and manifest files
# A published version of up to this many files is flushed to disk file by file: only its own bytes
# are waited for (one syncfs waits for everything dirty on the host's file system: another
# writer's gigabyte made a 200 MB publish slower than SFTP put). More files, one syncfs: an fsync
# per file cost a 300-file version 0.1-0.7 s on ext4 here, the syncfs 0.02 s.
FLUSH_EACH_UP_TO = 64
# The operator's files in the base (``names.BASE_FILES``: models.config, monitoring.config), which
# config management often links elsewhere (/etc/tfserving/models.config): ``write_file_atomic``
# writes them through a link, its temp file and rename beside the link's target, as ``sed -i
# --follow-symlinks`` (replacing the link silently cut it off from the managed file). TF Serving
# opens the path it was given, so the OS follows the link. serving_sync's own files are never
# links (over SSH each check is a round trip).
LINKABLE = BASE_FILES


def whole_small_file(data: bytes, max_bytes: int, url: str, rel: str) -> bytes:
    """``data`` read as ``max_bytes + 1`` bytes at most: the whole file, or a refusal. A file cut at
    the limit and parsed anyway (a ``models.config`` cut at an entry's end) would be written back
    without the rest: other teams' entries lost."""
    if len(data) > max_bytes:
        raise UserError(f"{url}: {rel} is larger than {max_bytes / (1024 * 1024):g} MB, the most mlops reads of a "
                        f"config, lock or manifest file; nothing was changed: trim it or split the models "
                        f"among several TF Serving servers")
    return data


def line_break_name(where: str, path: str) -> UserError:
    """A name holding a line break under ``path`` on the host: never ours (``check_relpath``
    refuses one), and the host's line-based listing (find, the hash tool) cannot tell it from
    two names, so every reading of the folder stops with this line (file:// says the same)."""
    return UserError(f"{where}: a file name with a line break under {path}; remove or rename it on the "
                     f"host (find {path} -name '*[[:cntrl:]]*' lists it), then rerun")


def rel_path(rel: str) -> str:
    """``""`` for the base, else a checked, normalized relative path."""
    return "" if rel in ("", ".") else check_relpath(rel)


class Transport(abc.ABC):
    """Operations on one host's base directory."""

    scheme: str = ""
    #: True when ``rename`` of a directory is atomic (file, ssh). S3 has no rename: publish
    #: uploads everything but ``saved_model.pb``, verifies, then uploads it last.
    atomic_rename: bool = True
    #: True when ``create_exclusive`` makes the file with its bytes in one step (S3's conditional
    #: PUT); False where it creates it empty and writes after (file, ssh): the host lock reads its
    #: file back after creating it
    create_is_written: bool = False

    def __init__(self, url: str):
        self.url = url
        #: temp files of ``write_file_atomic`` not yet renamed or removed: a lost connection may
        #: have left them (only SSH fills it; a local write cannot be cut from its file system)
        self.cut_writes: set[str] = set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # --- reading -----------------------------------------------------------------------
    @abc.abstractmethod
    def list_dir(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (files and directories); ``[]`` if it does not exist."""

    @abc.abstractmethod
    def read_file(self, rel: str, max_bytes: int = MAX_SMALL_FILE) -> bytes:
        """Content of a small file; ``FileNotFoundError`` if absent."""

    @abc.abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether a file or directory (S3: any object under the prefix) exists."""

    @abc.abstractmethod
    def listing(self, rel: str) -> HostListing:
        """Hash every file under ``rel`` ON THE HOST (or store) and list its directories."""

    def verify(self, rel: str, manifest: Manifest) -> list[str]:
        """Problems between ``rel`` on the host and ``manifest`` (empty = identical)."""
        return compare(manifest, self.listing(rel))

    def shape(self, rel: str) -> tuple[dict[str, int], frozenset[str], tuple[str, ...]] | None:
        """Sizes of the files, the directories and anything else under ``rel``, without reading
        file content; None when this store cannot tell cheaply (then ``listing`` hashes)."""
        return None

    def disk_free(self) -> int | None:
        """Free bytes where the base lives, or None when the store has no such notion."""
        return None

    # --- writing -----------------------------------------------------------------------
    @abc.abstractmethod
    def write_file_atomic(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data`` so readers see the old or the new content, never a mix.
        A ``LINKABLE`` file that is a symbolic link is written through it (file, ssh)."""

    def remove_cut_writes(self, paths) -> None:
        """Remove the temp files another connection's lost writes left (its ``cut_writes``),
        under the lock it still holds. Nothing to do where writes cannot be cut mid-way."""

    @abc.abstractmethod
    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` only if it does not exist; False if it already exists."""

    def remove_if_same(self, rel: str, expected: bytes) -> bool:
        """Compare-and-delete: remove ``rel`` only if its content is still ``expected``.

        False when it is gone, changed or busy (then it is left as it is). Used by the host lock,
        so that a takeover removes exactly the lock that was read and judged. Filesystems do it
        under a guard file (``guarded_delete``); a store with conditional deletes overrides it.
        """
        from .guarded_delete import remove_if_same

        return remove_if_same(self, rel, expected)

    def lock_channel(self) -> "Transport":
        """A transport the lock's heartbeat thread may use beside this one (close it after)."""
        return self

    @abc.abstractmethod
    def upload_tree(self, local_dir: str | os.PathLike, dest_rel: str, manifest: Manifest,
                    progress: ProgressFn | None = None, *, min_free: int | None = None) -> int:
        """Upload the manifest's files (and directories) from ``local_dir`` to ``dest_rel``.

        Returns the bytes of file content sent. ``dest_rel`` must not exist yet on transports
        with atomic rename (it is a fresh temporary name). With ``min_free``, refuse with
        ``DiskFull`` before writing anything when the host reports less free space.
        """

    def upload_tree_hashing(self, local_dir: str | os.PathLike, dest_rel: str, tree: Manifest,
                            progress: ProgressFn | None = None, *,
                            min_free: int | None = None) -> tuple[int, Manifest]:
        """``upload_tree`` for a ``tree`` that may be a ``manifest.scan`` (no hashes yet).

        Returns (bytes sent, the hashed manifest). Transports that stream (ssh) hash in the
        same pass that sends; this default hashes first (``build`` is memoized per tree).
        """
        manifest = tree if tree.hashed else build(local_dir)
        return self.upload_tree(local_dir, dest_rel, manifest, progress, min_free=min_free), manifest

    @abc.abstractmethod
    def rename(self, src_rel: str, dst_rel: str) -> None:
        """Rename a directory; fails if ``dst_rel`` exists (never moves *into* it)."""

    @abc.abstractmethod
    def remove_tree(self, rel: str) -> None:
        """Remove a directory tree (S3: every object under the prefix); absent is fine."""

    @abc.abstractmethod
    def remove_file(self, rel: str) -> None:
        """Remove one file; absent is fine."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
