"""Stream a directory tree as a tar archive in large writes (one SSH channel, no temp file),
hashing every file (and, for hosts that hash the whole stream, the stream) on another core.

``tarfile``'s own stream writer re-copies its buffer on every write (quadratic for big
buffers); here headers come from ``TarInfo.tobuf`` and file data goes straight to ``send``.
Owners are zeroed and modes normalized (0644 files, 0755 dirs) so the host's TF Serving
can read what the deploy user extracted.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

from mlops_common.errors import UserError

from ..manifest import UNHASHED, FileEntry, Manifest, file_signature
from ..progress import ProgressFn

BLOCK = 512
READ_CHUNK = 1024 * 1024
COALESCE = 256 * 1024


class CoalescingSender:
    """Collect small writes into ~256 KiB sends; pass big ones straight through."""

    def __init__(self, send: Callable[[bytes], None], size: int = COALESCE):
        self._send, self._size = send, size
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        if len(data) >= self._size:
            self.flush()
            self._send(data)
            return
        self._buf += data
        if len(self._buf) >= self._size:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._send(bytes(self._buf))
            self._buf.clear()


@functools.lru_cache(maxsize=8192)
def _info(name: str, *, is_dir: bool, size: int = 0, mtime: int = 0) -> bytes:
    """One entry's header. Cached: the hasher builds each header first and the sender reuses
    it (``tobuf`` takes ~50 us, a cost that shows on models with thousands of assets)."""
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.mode = 0o755 if is_dir else 0o644
    ti.size = 0 if is_dir else size
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class StreamHasher(threading.Thread):
    """Read and hash the tree on another core, independently of the sender: the sha256 of each
    file (the manifest) and, when ``stream``, of the exact tar stream the sender writes.

    Started before the host's shell is even asked for, it works while the shell starts (a login
    shell with a ``.bashrc`` takes ~0.1 s) and keeps ahead of the sender, so hashing costs the
    upload little wall time; the second read of each file comes from the page cache. It proves
    the bytes it read; the host's hash of what it extracted proves those are the bytes that
    arrived, so a file rewritten between the two reads is refused, never published. The host
    hashes either the whole stream (``stream_digest``) or, with its python3, each file's bytes
    in the stream (``files_digest``): the latter needs no second hash of the bytes here, so a
    big upload starts without the stream hash and computes it only for a host that asks
    (``want_stream``).
    """

    def __init__(self, local_dir: str | os.PathLike, tree: Manifest, *, stream: bool = True):
        super().__init__(name="tar-stream-hasher", daemon=True)
        self.local_dir, self.tree = local_dir, tree
        self.files: list[str] = []
        self.digest = ""                      # sha256 of the tar stream, once computed
        self.error: BaseException | None = None
        self._stream = stream
        self._lock = threading.Lock()
        self._stream_pass: threading.Thread | None = None

    def run(self) -> None:
        try:
            self.files, self.digest = _hash_pass(self.local_dir, self.tree, stream=self._stream)
        except BaseException as exc:  # noqa: BLE001 - handed to the sender by result()
            self.error = exc

    def result(self) -> list[str]:
        """Each file's sha256, in the tree's order (raises what the read raised)."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.files

    def files_digest(self) -> str:
        """sha256 over the files' raw sha256 digests in stream order (what ``PY_TEE`` prints)."""
        return hashlib.sha256(b"".join(bytes.fromhex(h) for h in self.result())).hexdigest()

    def want_stream(self) -> None:
        """Start hashing the whole stream now (beside the send) if the first pass does not."""
        with self._lock:
            if self._stream or self._stream_pass is not None:
                return
            self._stream_pass = threading.Thread(target=self._hash_stream, name="tar-stream-hasher-2",
                                                 daemon=True)
            self._stream_pass.start()

    def stream_digest(self) -> str:
        self.result()
        self.want_stream()
        if self._stream_pass is not None:
            self._stream_pass.join()
        if self.error is not None:
            raise self.error
        return self.digest

    def _hash_stream(self) -> None:
        """The second pass reads every file again, so it re-hashes each one too: bytes changed
        since the first pass (whose hashes are the manifest) give a digest no host can match."""
        try:
            files, digest = _hash_pass(self.local_dir, self.tree, stream=True)
            self.digest = digest if files == self.files else "changed-since-hashed"
        except BaseException as exc:  # noqa: BLE001 - raised by stream_digest()
            self.error = exc


def _hash_pass(local_dir, tree: Manifest, *, stream: bool) -> tuple[list[str], str]:
    """One read of the tree: each file's sha256 and, when ``stream``, the tar stream's ("" if not)."""
    whole = hashlib.sha256() if stream else None
    files = [hashlib.sha256() for _ in tree.files]
    for data, index in _pieces(local_dir, tree):
        if whole is not None:
            whole.update(data)
        if index is not None:
            files[index].update(data)
    return [h.hexdigest() for h in files], whole.hexdigest() if whole is not None else ""


_SHARED: OrderedDict[tuple, StreamHasher] = OrderedDict()
_SHARED_LOCK = threading.Lock()
SHARED_KEEP = 4   # trees whose hashers stay shared (a fleet deploys one version; a watcher moves on)


def shared_hasher(local_dir: str | os.PathLike, tree: Manifest, *, stream: bool = True) -> StreamHasher:
    """A started ``StreamHasher`` of this tree, shared by every upload of it in this process.

    A fleet's hosts (in parallel or in waves) and a retry hash the model once, not once per
    host. Sharing is safe: each host's own digest must equal the hasher's, so bytes that
    changed since the hasher read them are refused, never published. The key holds every
    file's ``manifest.file_signature`` (the memo's test of "unchanged"), so a tree changed
    since gets a fresh hasher. ``stream``: hash the whole stream in the first pass too (a
    shared hasher without it computes it when a host asks).
    """
    try:
        files = tuple(file_signature(f.path, os.stat(os.path.join(local_dir, f.path))) for f in tree.files)
    except OSError:
        return _started(StreamHasher(local_dir, tree, stream=stream))   # not shared: the upload reports the file
    key = (os.path.realpath(local_dir), tree.dirs, files)
    with _SHARED_LOCK:
        hasher = _SHARED.get(key)
        if hasher is None or hasher.error is not None:
            hasher = _SHARED[key] = _started(StreamHasher(local_dir, tree, stream=stream))
            while len(_SHARED) > SHARED_KEEP:
                _SHARED.popitem(last=False)
        _SHARED.move_to_end(key)
        return hasher


def _started(hasher: StreamHasher) -> StreamHasher:
    hasher.start()
    return hasher


def forget() -> None:
    """Drop the shared hashers and cached headers (with ``manifest.forget``: the next publish
    hashes every byte and builds every header)."""
    with _SHARED_LOCK:
        _SHARED.clear()
    _info.cache_clear()


@dataclass
class Streamed:
    sent: int              # bytes of file content
    manifest: Manifest     # hashed by the StreamHasher (the host's hash proves they were sent)
    hasher: StreamHasher   # its stream_digest() / files_digest() are what the host's must equal


def stream_tree(local_dir: str | os.PathLike, tree: Manifest, send: Callable[[bytes], None],
                progress: ProgressFn | None = None, hasher: StreamHasher | None = None) -> Streamed:
    """Write ``tree``'s directories and files from ``local_dir`` as tar to ``send``.

    ``hasher`` (default: ``shared_hasher`` of the tree) supplies the manifest and the digests
    the host's must equal. ``tree`` may be a ``manifest.scan`` (no hashes) or a built
    manifest; a file whose size changed since aborts (before the host can extract it), one whose
    bytes changed is refused (the manifest no longer matches).
    """
    hasher = hasher or shared_hasher(local_dir, tree)
    out = CoalescingSender(send)
    sent = 0
    for data, index in _pieces(local_dir, tree):
        out.write(data)
        if index is not None:
            sent += len(data)
            if progress:
                progress(len(data))
    out.flush()
    hashes = hasher.result()
    entries: list[FileEntry] = []
    for entry, digest_of_file in zip(tree.files, hashes, strict=True):
        if entry.sha256 not in (UNHASHED, digest_of_file):
            raise UserError(f"{os.path.join(local_dir, entry.path)} changed since its manifest was built "
                            f"(sha256 differs); rebuild and retry; nothing was published")
        entries.append(FileEntry(entry.path, entry.size, digest_of_file))
    return Streamed(sent, Manifest(tuple(entries), tree.dirs), hasher)


def _pieces(local_dir, tree: Manifest) -> Iterator[tuple[bytes, int | None]]:
    """The tar stream of ``tree``, piece by piece: ``(bytes, index of the file they belong to)``
    for file content, ``(bytes, None)`` for headers and padding. The sender and the hasher
    both walk this, so they agree on every byte."""
    for d in tree.dirs:
        yield _info(d, is_dir=True, mtime=int(os.stat(os.path.join(local_dir, d)).st_mtime)), None
    for index, entry in enumerate(tree.files):
        path = os.path.join(local_dir, entry.path)
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if st.st_size != entry.size:
                raise UserError(f"{path} changed size since its manifest was built "
                                f"({entry.size} -> {st.st_size} bytes); rebuild and retry")
            yield _info(entry.path, is_dir=False, size=entry.size, mtime=int(st.st_mtime)), None
            remaining = entry.size
            while remaining:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise UserError(f"{path} shrank while being uploaded; retry")
                yield chunk, index
                remaining -= len(chunk)
            pad = (-entry.size) % BLOCK
            if pad:
                yield b"\0" * pad, None
    yield b"\0" * (2 * BLOCK), None   # end-of-archive marker
