"""Stream a directory tree as a tar archive in large writes (one SSH channel, no temp file).

``tarfile``'s own stream writer re-copies its buffer on every write (quadratic for big
buffers); here headers come from ``TarInfo.tobuf`` and file data goes straight to ``send``.
Owners are zeroed and modes normalized (0644 files, 0755 dirs) so the host's TF Serving
can read what the deploy user extracted.
"""
from __future__ import annotations

import os
import tarfile
from typing import Callable

from mlops_common.errors import UserError

from ..manifest import Manifest
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


def stream_tree(local_dir: str | os.PathLike, manifest: Manifest, send: Callable[[bytes], None],
                progress: ProgressFn | None = None) -> int:
    """Write the manifest's directories and files from ``local_dir`` as tar to ``send``.

    Returns the bytes of file content sent. A file whose size changed since the manifest was
    built aborts the stream (the host then rejects the truncated archive).
    """
    out = CoalescingSender(send)
    for d in manifest.dirs:
        out.write(_info(d, is_dir=True, mtime=os.stat(os.path.join(local_dir, d)).st_mtime))
    sent = 0
    for entry in manifest.files:
        path = os.path.join(local_dir, entry.path)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size != entry.size:
                raise UserError(f"{path} changed size since its manifest was built "
                                f"({entry.size} -> {st.st_size} bytes); rebuild and retry")
            out.write(_info(entry.path, is_dir=False, size=entry.size, mtime=st.st_mtime))
            remaining = entry.size
            while remaining:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise UserError(f"{path} shrank while being uploaded; retry")
                out.write(chunk)
                remaining -= len(chunk)
                sent += len(chunk)
                if progress:
                    progress(len(chunk))
            pad = (-entry.size) % BLOCK
            if pad:
                out.write(b"\0" * pad)
    out.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
    out.flush()
    return sent
