"""Incoming data for retraining: ``.npz`` batches (arrays ``images``, ``labels``).

A location is a ``.npz`` file, a local folder of them (its direct ``*.npz`` children), or an
``s3://bucket/prefix``: one object when it names a ``.npz``, else every ``*.npz`` in the folder
``prefix/`` and its sub-folders (dated uploads such as ``incoming/2026-01/``), never in a sibling
that shares the prefix (``s3://b/incoming`` does not read ``incoming-rejected/``).
Batches are read without pickle, validated (a batch holding held-out examples is refused too, as
is a copy of another batch, and one too large for memory in one line) before anything trains, and
written atomically. ``make_batch`` builds the demo/test batches from
the pool of samples held back from the base set.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlops_common.errors import ConfigError, NotFoundError, exc_text

from . import s3, validation
from .constants import BAD_BATCH_REPEATS, IMAGE_SIZE
from .datasets import Arrays, check_name, heldout_index

KINDS = ("good", "bad")


@dataclass(frozen=True)
class Batch:
    source: str   # file path or s3:// URI, for messages and the run's `incoming` param
    data: Arrays


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def check_location(location: str, what: str = "incoming data") -> str:
    """``location`` if it is a local path or an ``s3://bucket/...`` without credentials, else one
    line that does not echo it. ``https://user:pw@host/b.npz`` was read (or, for ``--out``, written:
    exit 0) as the local folder ``./https:/user:pw@host/``, the password in the message and on disk;
    ``s3://user:pw@bucket`` was echoed with botocore's bucket-name error."""
    m = _SCHEME.match(location)
    if m and m.group(1) != "s3":
        raise ConfigError(f"{what}: a {m.group(1)}:// URL is not supported; give a local .npz file, a "
                          f"folder of them, or s3://bucket/prefix (in lower case)")
    if m and re.match(r"[^/]*[@:]", location[len("s3://"):]):
        raise ConfigError(f"{what}: an s3:// location is s3://bucket/prefix, without a user name, password "
                          f"or port; S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    return location


def make_batch(kind: str, pool: Arrays, seed: int, *, repeats: int = BAD_BATCH_REPEATS) -> Arrays:
    """A batch of new data from ``pool`` (pure).

    ``good``: the pool's samples with their correct labels, in a seeded order.
    ``bad``: the pool's images ``repeats`` times, each time with the labels shuffled
    independently of the images (well-formed, but the labels are noise) - large enough
    relative to the base set that retraining on it clearly hurts.
    """
    rng = np.random.default_rng(seed)
    if kind == "good":
        return pool.take(rng.permutation(len(pool)))
    if kind == "bad":
        if repeats < 1:
            raise ConfigError("--repeats must be at least 1")
        images = np.concatenate([pool.images] * repeats)
        labels = np.concatenate([rng.permutation(pool.labels) for _ in range(repeats)])
        return Arrays(images.astype(np.float32, copy=False), labels.astype(np.int64, copy=False))
    raise ConfigError(f"unknown batch kind '{kind}'; choose one of: {', '.join(KINDS)}")


def to_npz_bytes(data: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.asarray(data.images, dtype=np.float32),
                        labels=np.asarray(data.labels, dtype=np.int64))
    return buf.getvalue()


def write_batch(data: Arrays, out: str) -> str:
    """Write ``data`` to a local ``.npz`` path (temp file + rename) or an ``s3://`` key."""
    check_location(out, "--out")
    if not out.endswith(".npz"):      # an S3 key too: a retrain reads only *.npz, locally and in S3
        raise ConfigError(f"--out '{out}' must end in .npz (or name a folder: an existing local one, or "
                          f"s3://bucket/prefix/ with the slash)")
    raw = to_npz_bytes(data)
    if s3.is_s3(out):
        s3.put_bytes(out, raw)
        return out
    path = Path(out).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"--out '{out}': cannot write there ({exc.strerror}: {exc.filename})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path.resolve())


def parse_npz(source: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The ``images`` and ``labels`` arrays of one ``.npz`` (no pickle), or a DataError naming it."""
    def bad(problem: str) -> validation.DataError:
        return validation.DataError(f"invalid data in {source}: {problem}")

    if not raw.startswith(b"PK"):
        raise bad("not a .npz file (no zip header; empty or corrupt?); replace the file")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise bad(f"no '{missing[0]}' array (found: {', '.join(z.files) or 'none'}); "
                          f"a batch needs arrays 'images' and 'labels'")
            arrays = z["images"], z["labels"]
        for name, a in zip(("images", "labels"), arrays):
            if not isinstance(a, np.ndarray):     # a member that is not a .npy: numpy hands back its bytes
                raise bad(f"'{name}' is not a numpy array (not a .npy inside the .npz); save the batch with "
                          f"numpy.savez")
        return arrays
    except validation.DataError:
        raise
    except MemoryError:                           # a header that declares an array larger than memory
        raise bad("declares an array too large to load (a corrupt .npy header?); replace the file") from None
    except ValueError as exc:
        if "Object arrays cannot be loaded" in str(exc):
            raise bad("holds object (pickled) arrays, which are never loaded; save plain numeric "
                      "arrays with numpy.savez") from None
        if "Header info length" in str(exc):    # numpy's message suggests allow_pickle: not the cause
            raise bad("has a .npy header over numpy's 10,000-byte limit (a corrupt or hand-made file); "
                      "save the batch with numpy.savez") from None
        raise bad(f"cannot read it as a .npz batch ({exc_text(exc, 100)}); replace the file") from None
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, KeyError,
            RuntimeError, NotImplementedError) as exc:    # zip: "is encrypted", "compression method"
        raise bad(f"cannot read it as a .npz batch ({exc_text(exc, 100)}); replace the file") from None


def _unreadable(location: str, exc: OSError) -> ConfigError:
    return ConfigError(f"incoming data '{location}': cannot read it ({exc.strerror or exc}); check the "
                       f"path and that this user may read it")


def _local_sources(location: str) -> list[Path]:
    try:
        path = Path(location).expanduser()
        is_file, is_dir = path.is_file(), path.is_dir()
    except RuntimeError:                    # "~nosuchuser/...": no such home directory
        raise ConfigError(f"incoming data '{location}': '{location.split('/')[0]}' is not a user with a "
                          f"home directory; give the full path") from None
    except OSError as exc:                  # a name too long, ...
        raise _unreadable(location, exc) from None
    if is_file:
        return [path]
    if is_dir:
        try:
            named = sorted(p for p in path.iterdir() if p.suffix.lower() == ".npz" and not p.is_dir())
            files = [p for p in named if p.is_file()]
        except OSError as exc:              # a folder this user may not list (glob said "no batches")
            raise _unreadable(location, exc) from None
        for p in named:     # skipped, the retrain trained on the other batches and said nothing
            if not p.is_file():
                raise _not_a_batch_file(p)
        if not files:
            raise NotFoundError(f"no .npz batches in folder {path}; put batches there "
                                f"(e.g. `mlops data make-batch --kind good --out {path}/batch.npz`)")
        return files
    kind = _special_kind(path)
    if kind:                                # a FIFO was "does not exist"; opening it would block for ever
        raise ConfigError(f"incoming data '{location}' is {kind}, not a regular file; give a .npz file, a "
                          f"folder of them, or s3://bucket/prefix")
    raise NotFoundError(f"incoming data '{location}' does not exist; give a .npz file, a folder "
                        f"of them, or s3://bucket/prefix")


def _not_a_batch_file(path: Path) -> ConfigError:
    """A ``*.npz`` entry of an incoming folder that is no file: a link to a file that is not there
    (git-annex or DVC content not fetched), a FIFO, a socket."""
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return ConfigError(f"incoming data '{path}' is a symbolic link to '{target}', which does not exist; "
                           f"fetch the file it points to or remove the link")
    return ConfigError(f"incoming data '{path}' is {_special_kind(path) or 'not a regular file'}, not a "
                       f".npz file; remove it from the folder")


def _special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a file nor a folder (stat only, never opened)."""
    import stat

    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _raw_sources(location: str):
    """(source, bytes) for every batch at ``location``."""
    check_location(location)
    if s3.is_s3(location):
        bucket, key = s3.parse_uri(location)
        if key.lower().endswith(".npz"):    # one object, like a local file (BATCH.NPZ too)
            yield location, _read(location, lambda: s3.get_bytes(bucket, key))
            return
        # Otherwise a folder: every *.npz in it and its sub-folders, none from a sibling.
        keys = s3.list_keys(location, suffix=".npz")
        if not keys:
            raise NotFoundError(f"no .npz batches under s3://{bucket}/{s3.folder_prefix(key)}; "
                                f"upload batches there first")
        for key in keys:
            yield f"s3://{bucket}/{key}", _read(f"s3://{bucket}/{key}", lambda k=key: s3.get_bytes(bucket, k))
        return
    for path in _local_sources(location):
        try:
            raw = _read(str(path), path.read_bytes)
        except OSError as exc:
            raise _unreadable(str(path), exc) from None
        yield str(path), raw


def _read(source: str, read) -> bytes:
    try:
        return read()
    except MemoryError:
        raise _too_large(source) from None


def load_batch(source: str, raw: bytes, dataset: str) -> Batch:
    """Parse and validate one batch; images come out (N, H, W, 1). Raises DataError naming it,
    also when it holds examples of the data set's frozen held-out set."""
    images, labels = parse_npz(source, raw)
    validation.check(source, images, labels, image_size=IMAGE_SIZE[check_name(dataset)])
    validation.check_not_heldout(source, images, heldout_index(dataset), dataset=dataset)
    if images.ndim == 3:
        images = images[..., None]
    return Batch(source, Arrays(images, labels.astype(np.int64)))


def copy_check(batch: Batch, seen: dict[bytes, str]) -> None:
    """Raise DataError when ``batch`` holds the same examples as a batch already in ``seen``
    (content fingerprint -> source; ``batch`` is added). A copied file (``a copy.npz``, a second
    download, the same examples saved in another order) was trained on twice without a word."""
    key = _content_key(batch.data)
    if key in seen:
        raise validation.DataError(f"invalid data in {batch.source}: the same examples as {seen[key]} (a copy?), "
                                   f"which a retrain would learn twice; remove one of the two files")
    seen[key] = batch.source


def _content_key(data: Arrays) -> bytes:
    """sha256 of the batch's (image, label) examples in sorted order: the same for any order of them."""
    n = len(data)
    rows = np.concatenate([np.ascontiguousarray(data.images, dtype=np.float32).reshape(n, -1).view(np.uint8),
                           np.ascontiguousarray(data.labels, dtype=np.int64).reshape(n, 1).view(np.uint8)], axis=1)
    keyed = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()
    return hashlib.sha256(np.sort(keyed).tobytes()).digest()


def _too_large(source: str) -> validation.DataError:
    return validation.DataError(f"invalid data in {source}: too large to load into this machine's memory (a "
                                f"retrain loads every batch whole); split it into smaller batches")


def _load(source: str, raw: bytes, dataset: str, seen: dict[bytes, str]) -> Batch:
    """``load_batch`` and ``copy_check``; a batch too large for memory is a DataError naming it."""
    try:
        batch = load_batch(source, raw, dataset)
        copy_check(batch, seen)
        return batch
    except MemoryError:
        raise _too_large(source) from None


def read_batches(location: str, dataset: str) -> list[Batch]:
    """Read and validate every batch at ``location``; stops at the first invalid one."""
    check_name(dataset)
    seen: dict[bytes, str] = {}
    return [_load(source, raw, dataset, seen) for source, raw in _raw_sources(location)]


def inspect_batches(location: str, dataset: str) -> list[dict]:
    """A report line per batch at ``location``: ``{source, ok, n, problem}`` (for ``data validate``)."""
    check_name(dataset)
    report = []
    seen: dict[bytes, str] = {}
    for source, raw in _raw_sources(location):
        try:
            batch = _load(source, raw, dataset, seen)
            report.append({"source": source, "ok": True, "n": len(batch.data), "problem": None})
        except validation.DataError as exc:
            report.append({"source": source, "ok": False, "n": None, "problem": exc.message})
    return report


def default_name(kind: str, dataset: str, seed: int) -> str:
    return f"{kind}-{dataset}-seed{seed}.npz"
