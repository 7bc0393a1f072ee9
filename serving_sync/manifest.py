"""The sha256 manifest of a SavedModel tree, and its comparison with what a host reports.

A publish is only trusted when every file hashed *on the host* matches the manifest and no
file or directory is missing or extra. Published version directories stay exactly the
SavedModel; manifests are stored beside them under ``.serving_sync/manifests/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from mlops_common import log
from mlops_common.errors import ConfigError, UserError

from .names import check_relpath

FORMAT = "serving_sync.manifest/1"
# Files TF Serving needs to recognise a SavedModel: published last on stores without rename.
COMPLETION_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass(frozen=True)
class FileEntry:
    path: str      # relative POSIX path
    size: int
    sha256: str    # hex


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]   # sorted by path
    dirs: tuple[str, ...] = ()     # every directory below the root (so empty ones survive), sorted

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @property
    def completion_file(self) -> str:
        """The SavedModel's ``saved_model.pb`` (or ``.pbtxt``): what makes the version loadable."""
        for name in COMPLETION_FILES:
            if name in self.by_path():
                return name
        raise UserError("the model directory is not a SavedModel: no saved_model.pb or "
                        "saved_model.pbtxt at its top level")

    @property
    def hashed(self) -> bool:
        """False for a ``scan`` (names and sizes only)."""
        return all(f.sha256 != UNHASHED for f in self.files)

    def without(self, paths: set[str] | frozenset[str]) -> "Manifest":
        return Manifest(tuple(f for f in self.files if f.path not in paths), self.dirs)

    def only(self, paths: set[str] | frozenset[str]) -> "Manifest":
        return Manifest(tuple(f for f in self.files if f.path in paths), ())

    def to_dict(self) -> dict:
        if not self.hashed:
            raise ValueError("a scanned manifest has no hashes to store")
        return {"format": FORMAT, "total_size": self.total_size, "dirs": list(self.dirs),
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]}

    def to_json(self) -> str:
        """Deterministic JSON: same tree, same bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest") -> "Manifest":
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValueError(f"unknown format {d.get('format')!r}")
            files = tuple(FileEntry(check_relpath(f["path"]), int(f["size"]), str(f["sha256"]).lower())
                          for f in d["files"])
            dirs = tuple(check_relpath(p) for p in d.get("dirs", []))
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise ConfigError(f"{source}: not a valid serving_sync manifest ({exc})") from None
        for f in files:
            if len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256):
                raise ConfigError(f"{source}: bad sha256 for {f.path!r}")
        return cls(tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(dirs)))


def matches_record(manifest: Manifest, recorded: dict[str, str], part: str) -> bool:
    """Whether ``manifest`` holds exactly the files recorded under ``part``/ at registration
    (``registry.bundle_hashes``: ``{"<part>/saved_model.pb": sha256, ...}``), hash for hash: no
    file missing, changed or added (pure)."""
    prefix = part + "/"
    want = {p[len(prefix):]: h for p, h in recorded.items() if p.startswith(prefix)}
    return bool(want) and manifest.hashed and {f.path: f.sha256 for f in manifest.files} == want


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


UNHASHED = ""   # FileEntry.sha256 of a scan: the streaming upload hashes while it reads


def scan(local_dir: str | os.PathLike) -> Manifest:
    """Names, sizes and directories without reading a byte (hashes left ``UNHASHED``).

    Refuses symlinks, special files and unsafe names, like ``build``. A streaming upload
    (``upload_tree_hashing``) fills the hashes in the same pass that sends the bytes. A tree
    hashed earlier in this process and unchanged since comes back hashed (see ``build``).
    """
    files, dirs, signature = _walk(Path(local_dir))
    memo = _MEMO.get(os.path.realpath(local_dir))
    if memo is not None and memo[0] == signature:
        return memo[1]
    manifest = Manifest(tuple(FileEntry(rel, st.st_size, UNHASHED) for rel, st in files), tuple(dirs))
    manifest.completion_file  # noqa: B018 - raises when this is not a SavedModel
    return manifest


# realpath -> (stat signature, manifest): a tree is hashed once per process (hosts, retries).
_MEMO: dict[str, tuple[tuple, Manifest]] = {}
# A file modified this recently could change again within the same mtime tick: not memoized.
_RACY_SECONDS = 2.0


def forget() -> None:
    """Drop every memoized manifest (the next ``build`` reads every byte again)."""
    _MEMO.clear()


def build(local_dir: str | os.PathLike, known: dict[str, str] | None = None) -> Manifest:
    """Hash every file under ``local_dir``; refuse symlinks, special files and unsafe names.

    Hashed once per process: a later call whose every file has the same size, mtime, ctime
    and inode reuses the earlier hashes (a fleet or a retry does not re-read the model).
    ``known``: sha256 by relative path that this process has just computed from these very files
    (the registry's check of a download), used instead of reading them again.
    """
    root = Path(local_dir)
    files, dirs, signature = _walk(root)
    key = os.path.realpath(root)
    memo = _MEMO.get(key)
    if memo is not None and memo[0] == signature:
        return memo[1]
    started = time.time()
    known = known or {}
    manifest = Manifest(tuple(FileEntry(rel, st.st_size, known.get(rel) or sha256_file(root / rel))
                              for rel, st in files), tuple(dirs))
    manifest.completion_file  # noqa: B018 - raises when this is not a SavedModel
    remember(root, manifest, signature, started)
    return manifest


def remember(local_dir: str | os.PathLike, manifest: Manifest, signature: tuple | None = None,
             hashed_at: float | None = None) -> None:
    """Keep ``manifest`` (hashed while streaming, say) for the next ``build`` of the same tree."""
    root = Path(local_dir)
    if signature is None:
        _, _, signature = _walk(root)
    hashed_at = time.time() if hashed_at is None else hashed_at
    file_sigs, dirs = signature
    newest = max((sig[3] for sig in file_sigs), default=0) / 1e9
    if manifest.hashed and newest < hashed_at - _RACY_SECONDS and dirs == manifest.dirs and \
            [(s[0], s[1]) for s in file_sigs] == [(f.path, f.size) for f in manifest.files]:
        _MEMO[os.path.realpath(root)] = (signature, manifest)


def _walk(root: Path) -> tuple[list[tuple[str, os.stat_result]], list[str], tuple]:
    """Regular files (sorted, with their stat) and directories under ``root``, names checked."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; expected a SavedModel directory")
    files: list[tuple[str, os.stat_result]] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            try:
                check_relpath(rel)
            except ConfigError:
                raise UserError(f"{root}: file name {rel!r} cannot be published (control character, "
                                f"line separator or backslash in the name); rename it in the "
                                f"SavedModel") from None
            try:     # os.walk gives undecodable bytes as surrogates ("caf\udce9" for Latin-1 b"caf\xe9")
                rel.encode("utf-8")
            except UnicodeEncodeError:
                # S3 keys and SFTP names are UTF-8 (botocore, paramiko failed on it with a traceback),
                # and so are the proto strings by which a SavedModel names its files
                raise UserError(f"{root}: file name '{log.printable(rel)}' cannot be published (not UTF-8); rename it "
                                f"in the SavedModel") from None
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise UserError(f"{root}: {rel} is a symbolic link; a published SavedModel must "
                                f"contain plain files only")
            if stat.S_ISDIR(st.st_mode):
                dirs.append(rel)
            elif stat.S_ISREG(st.st_mode):
                files.append((rel, st))
            else:
                raise UserError(f"{root}: {rel} is not a regular file or directory")
    files.sort(key=lambda e: e[0])
    dirs.sort()
    signature = (tuple(file_signature(rel, st) for rel, st in files), tuple(dirs))
    return files, dirs, signature


def file_signature(rel: str, st: os.stat_result) -> tuple:
    """What says a file is unchanged since it was hashed: path, size, inode, latest of mtime/ctime."""
    return rel, st.st_size, st.st_ino, max(st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class HostListing:
    """What a host reported about a directory: file hashes, directories, anything else."""

    files: dict[str, str]            # rel path -> sha256 hex
    dirs: frozenset[str] = frozenset()
    others: tuple[str, ...] = ()     # symlinks, devices... (never expected)
    check_dirs: bool = True          # False for stores without directories (S3)


def compare(manifest: Manifest, listing: HostListing) -> list[str]:
    """Problems between the manifest and a host listing (empty list = identical)."""
    problems: list[str] = []
    expected = manifest.by_path()
    for path in sorted(set(expected) - set(listing.files)):
        problems.append(f"missing file {path}")
    for path in sorted(set(listing.files) - set(expected)):
        problems.append(f"unexpected file {path}")
    for path in sorted(set(expected) & set(listing.files)):
        if listing.files[path].lower() != expected[path].sha256:
            problems.append(f"sha256 mismatch for {path}")
    if listing.check_dirs:
        needed = set(manifest.dirs)
        for path in sorted(needed - listing.dirs):
            problems.append(f"missing directory {path}")
        for path in sorted(listing.dirs - needed):
            problems.append(f"unexpected directory {path}")
    for path in listing.others:
        problems.append(f"unexpected non-regular file {path}")
    return problems


def parse_hash_lines(text: str) -> dict[str, str]:
    """Parse ``sha256sum`` / ``openssl dgst -r`` / ``shasum`` output lines for ``./rel`` paths."""
    out: dict[str, str] = {}
    for line in text.split("\n"):   # not splitlines(): "\r" and friends are not line ends here
        if not line.strip():
            continue
        # GNU sha256sum starts the line of a name with a backslash (or a line break) with one and
        # escapes the name: its line was "unexpected" (a ValueError out of a present version's check)
        escaped = line.startswith("\\")
        digest, sep, rest = line[escaped:escaped + 64], line[escaped + 64:escaped + 65], line[escaped + 65:]
        if sep != " " or len(digest) != 64:
            raise ValueError(f"unexpected hash output line {line[:120]!r}")
        if rest[:1] in (" ", "*"):
            rest = rest[1:]
        if escaped:
            rest = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), rest)
        out[_strip_dot(rest)] = digest.lower()
    return out


def _strip_dot(path: str) -> str:
    return path[2:] if path.startswith("./") else path
