"""Stream a directory tree as a tar archive in large writes (one SSH channel, no temp file),
hashing every file and the whole stream in the same pass that reads it.

``tarfile``'s own stream writer re-copies its buffer on every write (quadratic for big
buffers); here headers come from ``TarInfo.tobuf`` and file data goes straight to ``send``.
Owners are zeroed and modes normalized (0644 files, 0755 dirs) so the host's TF Serving
can read what the deploy user extracted.
"""
from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
from dataclasses import dataclass
from typing import Callable

from mlops_common.errors import UserError

from ..manifest import UNHASHED, FileEntry, Manifest
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


def _info(name: str, *, is_dir: bool, size: int = 0, mtime: float = 0) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.mode = 0o755 if is_dir else 0o644
    ti.size = 0 if is_dir else size
    ti.mtime = int(mtime)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class _Hasher(threading.Thread):
    """sha256 of each file and of the whole stream on a second core (hashlib releases the GIL),
    so the sending thread only reads and encrypts."""

    def __init__(self):
        super().__init__(name="tar-stream-hasher", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=64)
        self.stream = hashlib.sha256()
        self.files: list[str] = []
        self._file = None

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            kind, data = item
            if kind == "stream":
                self.stream.update(data)
            elif kind == "file":
                self._file.update(data)
            elif kind == "begin":
                self._file = hashlib.sha256()
            else:                                  # "end"
                self.files.append(self._file.hexdigest())

    def put(self, kind: str, data=b"") -> None:
        self.queue.put((kind, data))

    def finish(self) -> None:
        self.queue.put(None)
        self.join()


@dataclass
class Streamed:
    sent: int              # bytes of file content
    manifest: Manifest     # hashed from the very bytes that were sent
    digest: str            # sha256 of the whole tar stream (what the host hashes as it extracts)


def stream_tree(local_dir: str | os.PathLike, tree: Manifest, send: Callable[[bytes], None],
                progress: ProgressFn | None = None) -> Streamed:
    """Write ``tree``'s directories and files from ``local_dir`` as tar to ``send``, hashing as it reads.

    One read per byte: each chunk feeds the file's sha256 (the manifest), the stream's sha256
    (checked against the host's) and the channel. ``tree`` may be a ``manifest.scan`` (no
    hashes) or a built manifest; a file whose size or bytes changed since then aborts (size:
    before the host can extract it) or is refused (bytes: the manifest no longer matches).
    """
    hasher = _Hasher()
    hasher.start()

    def hashed_send(data) -> None:
        hasher.put("stream", data)
        send(data)

    try:
        sent = _stream(local_dir, tree, CoalescingSender(hashed_send), hasher, progress)
    finally:
        hasher.finish()
    entries: list[FileEntry] = []
    for entry, digest in zip(tree.files, hasher.files, strict=True):
        if entry.sha256 not in (UNHASHED, digest):
            raise UserError(f"{os.path.join(local_dir, entry.path)} changed since its manifest was built "
                            f"(sha256 differs); rebuild and retry; nothing was published")
        entries.append(FileEntry(entry.path, entry.size, digest))
    return Streamed(sent, Manifest(tuple(entries), tree.dirs), hasher.stream.hexdigest())


def _stream(local_dir, tree: Manifest, out: CoalescingSender, hasher: _Hasher,
            progress: ProgressFn | None) -> int:
    for d in tree.dirs:
        out.write(_info(d, is_dir=True, mtime=os.stat(os.path.join(local_dir, d)).st_mtime))
    sent = 0
    for entry in tree.files:
        path = os.path.join(local_dir, entry.path)
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if st.st_size != entry.size:
                raise UserError(f"{path} changed size since its manifest was built "
                                f"({entry.size} -> {st.st_size} bytes); rebuild and retry")
            out.write(_info(entry.path, is_dir=False, size=entry.size, mtime=st.st_mtime))
            hasher.put("begin")
            remaining = entry.size
            while remaining:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise UserError(f"{path} shrank while being uploaded; retry")
                hasher.put("file", chunk)
                out.write(chunk)
                remaining -= len(chunk)
                sent += len(chunk)
                if progress:
                    progress(len(chunk))
            hasher.put("end")
            pad = (-entry.size) % BLOCK
            if pad:
                out.write(b"\0" * pad)
    out.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
    out.flush()
    return sent
