"""Publish a SavedModel as ``<base>/<model>/<version>/`` so TF Serving never sees it partial.

Hosts with rename (file, ssh): upload under ``<model>/.incoming-<version>-<stamp>-<random>``
(non-numeric, ignored by TF Serving), hash every file ON THE HOST against the manifest (ssh:
the host hashes the stream as it extracts it; on the client a hasher thread, shared by every
host that receives the tree, hashes each file and the stream while the sender sends), store the
manifest under ``.serving_sync/manifests/``, then rename to the numeric name.

S3 (no rename): upload every object except ``saved_model.pb`` under the final prefix, verify,
then upload ``saved_model.pb`` last and verify it: a version is loadable only when complete.
Unfinished multipart uploads under the prefix (a killed run's) are aborted first, under the lock.

Pull from a shared store (``store.Pull``, ssh hosts): the host downloads the version itself
into the same ``.incoming-*`` directory and hashes it; the rest (verify, manifest, rename) is
the same, so the guarantees are too. A host that cannot pull (no curl or wget) is streamed to.

Idempotent: a version already present and matching the manifest transfers 0 bytes; a present
version that differs is refused (versions are immutable). Any failure removes our temporary
upload (best effort; S3: not once the lock was lost, the objects may be the new owner's) and never
leaves a numeric directory behind.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

from mlops_common import log
from mlops_common.errors import ConfigError, UserError

from . import manifest as mf
from .errors import PublishRefused, VerifyFailed
from .layout import INCOMING_PREFIX, incoming_name, manifest_path, version_of, version_path
from .manifest import Manifest
from .names import check_model_name, check_version
from .progress import ProgressFn
from .transports.base import Transport

logger = log.get("sync.publish")

# Leave room for filesystem overhead (blocks, inodes) beyond the raw byte count.
SPACE_MARGIN = 1.05
# A stored manifest is about 130 bytes per file: the 4 MB cap of config and lock files is reached
# by a SavedModel of ~32,000 files (a big assets/ folder, many variables/ shards), whose every
# publish after the first was then refused over the file serving_sync wrote itself.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


@dataclass
class PublishResult:
    model: str
    version: int
    status: str                 # "uploaded" | "pulled" (from the shared store) | "already_present"
    bytes_transferred: int
    seconds: float
    path: str                   # <model>/<version> relative to the base
    store: str | None = None    # the shared store the host pulled from ("pulled")

    def to_dict(self) -> dict:
        return asdict(self)


def is_published(transport: Transport, model: str, version: int, manifest: Manifest) -> bool:
    """Whether a complete version is visible (S3: its ``saved_model.pb`` exists)."""
    vp = version_path(model, version)
    if transport.atomic_rename:
        return transport.exists(vp)
    return transport.exists(f"{vp}/{manifest.completion_file}")


def space_needed(manifest: Manifest) -> int:
    """Bytes to ask the host for: the files plus room for filesystem overhead."""
    return int(manifest.total_size * SPACE_MARGIN) + 64 * 1024


def _refuse_mismatch(where: str, vp: str, problems: list[str]) -> PublishRefused:
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return PublishRefused(
        f"{where}: {vp} already exists but differs from this version ({'; '.join(problems[:3])}{more}); "
        f"published versions are immutable: if it is a damaged leftover, remove {vp} there and "
        f"rerun, otherwise check that the registry and this host belong together")


def publish(transport: Transport, model: str, version: int, local_dir: str | os.PathLike,
            manifest: Manifest | None = None, progress: ProgressFn | None = None,
            pull=None, before_final: Callable[[], None] | None = None) -> PublishResult:
    """Publish ``local_dir``; ``manifest`` (from ``manifest.build``) is optional.
    ``before_final`` runs after the upload is verified, right before it is put into place (the
    rename, or S3's completion file): raising there publishes nothing (the host's lock is gone).

    Without it the tree is scanned (names, sizes) and hashed while it uploads (ssh); with it,
    the upload still hashes what it sends and refuses a file that changed since.
    """
    model = check_model_name(model)
    version = check_version(version)
    where = transport.url
    vp = version_path(model, version)
    start = time.monotonic()
    tree = manifest if manifest is not None else mf.scan(local_dir)
    tree.completion_file  # noqa: B018 - refuses a tree that is not a SavedModel

    if is_published(transport, model, version, tree):
        full = tree if tree.hashed else mf.build(local_dir)
        problems = _present_problems(transport, model, version, full)
        if problems:
            raise _refuse_mismatch(where, vp, problems)
        _store_manifest(transport, model, version, full)
        logger.info("%s: %s already present and verified; nothing to transfer", where, vp)
        return PublishResult(model, version, "already_present", 0, time.monotonic() - start, vp)

    if transport.atomic_rename:
        sent, pulled = _publish_with_rename(transport, model, version, local_dir, tree, progress, where, pull,
                                            before_final)
        if pulled:
            return PublishResult(model, version, "pulled", sent, time.monotonic() - start, vp, pull.store_url)
    else:
        full = tree if tree.hashed else mf.build(local_dir)
        sent = _publish_marker_last(transport, model, version, local_dir, full, progress, where, before_final)
    return PublishResult(model, version, "uploaded", sent, time.monotonic() - start, vp)


def _present_problems(transport: Transport, model: str, version: int, manifest: Manifest) -> list[str]:
    """Check a present version without re-reading its bytes when we can vouch for them.

    The manifest stored at publish time was written only after the host's bytes were checked
    against it, and a published directory is never written again: when that manifest equals
    ours and every name, kind and size on the host still matches, the version is ours (no
    process spawn, no hashing: a few SFTP round trips). Anything else is hashed on the host.
    """
    vp = version_path(model, version)
    try:
        stored = read_stored_manifest(transport, model, version)
    except ConfigError:
        stored = None
    if stored == manifest:
        shape = transport.shape(vp)
        if shape is not None:
            sizes, dirs, others = shape
            expected = manifest.by_path()
            files = {p: (expected[p].sha256 if p in expected and expected[p].size == n else "size-mismatch")
                     for p, n in sizes.items()}
            return mf.compare(manifest, mf.HostListing(files, dirs, others))
    return transport.verify(vp, manifest)


def _publish_with_rename(transport, model, version, local_dir, tree, progress, where,
                         pull=None, before_final=None) -> tuple[int, bool]:
    vp = version_path(model, version)
    tmp = f"{model}/{incoming_name(version)}"
    manifest = tree
    try:
        sent = None
        if pull is not None and hasattr(transport, "pull_tree") and tree == pull.manifest:
            sent = transport.pull_tree(tmp, pull, min_free=space_needed(tree))
        pulled = sent is not None
        if not pulled:
            hashed_at = time.time()
            sent, manifest = transport.upload_tree_hashing(local_dir, tmp, tree, progress,
                                                           min_free=space_needed(tree))
            mf.remember(local_dir, manifest, hashed_at=hashed_at)
        problems = transport.verify(tmp, manifest)
        if problems:
            raise VerifyFailed(f"{where}: the uploaded files do not match the manifest "
                               f"({'; '.join(problems[:3])}); nothing was published, rerun the deploy")
        if before_final is not None:
            before_final()
        _store_manifest(transport, model, version, manifest)
        transport.rename(tmp, vp)
    except FileExistsError:
        _cleanup(transport, tmp)
        # Someone published the same version concurrently (the lock should prevent this).
        manifest = manifest if manifest.hashed else mf.build(local_dir)
        problems = transport.verify(vp, manifest)
        if problems:
            try:      # the stored manifest we wrote describes our bytes, not the version there
                transport.remove_file(manifest_path(model, version))
            except (UserError, OSError):
                pass
            raise _refuse_mismatch(where, vp, problems) from None
        return 0, False
    except BaseException:
        _cleanup(transport, tmp)
        raise
    return sent, pulled


def _publish_marker_last(transport, model, version, local_dir, manifest, progress, where,
                         before_final=None) -> int:
    vp = version_path(model, version)
    marker = manifest.completion_file
    body = manifest.without({marker})
    head = manifest.only({marker})
    # A complete version with the other completion file (saved_model.pbtxt / .pb) is somebody's
    # published version, not a leftover: immutable, refused before anything is removed.
    foreign = [f"{name} is there, this version has {marker}" for name in mf.COMPLETION_FILES
               if name != marker and transport.exists(f"{vp}/{name}")]
    if foreign:
        raise _refuse_mismatch(where, vp, foreign)
    # Objects of the version already there (a dead process's partial upload, or another fleet's
    # deploy uploading the same version to a shared store right now) are written over, not
    # removed first: they are the same bytes whoever writes them (its manifest, checked below),
    # and removing them deleted a live upload of another deploy, which then failed. Objects that
    # are not the version's are removed.
    complete = lambda: transport.exists(f"{vp}/{marker}")      # noqa: E731
    try:
        # what is not the version's (a leftover of another build under the same number) goes
        wanted = {f.path for f in manifest.files}
        for rel in transport.files_under(vp):
            if rel not in wanted:
                transport.remove_file(f"{vp}/{rel}")
        # a killed run's unfinished multipart uploads (invisible parts, billed): we hold the lock
        if hasattr(transport, "abort_uploads"):
            transport.abort_uploads(vp)
        sent = transport.upload_tree(local_dir, vp, body, progress, min_free=space_needed(manifest))
        problems = transport.verify(vp, manifest if complete() else body)   # completed meanwhile: all of it
        if problems:
            raise VerifyFailed(f"{where}: the uploaded objects do not match the manifest "
                               f"({'; '.join(problems[:3])}); nothing was published, rerun the deploy")
        if before_final is not None:
            before_final()
        _store_manifest(transport, model, version, manifest)
        sent += transport.upload_tree(local_dir, vp, head, progress)
        problems = transport.verify(vp, manifest)
        if problems:
            raise VerifyFailed(f"{where}: {vp} does not match the manifest after upload "
                               f"({'; '.join(problems[:3])}); rerun the deploy")
    except BaseException:
        # never another deploy's good copy, nor anything once the lock is lost: its new owner may
        # be uploading this version to these very keys (its upload overwrites what we leave, or
        # its clean-up removes it); a clean-up there deleted the new owner's live upload
        if _still_ours(before_final) and not _complete_and_verified(transport, vp, manifest):
            _cleanup(transport, vp)
        raise
    return sent


def _still_ours(check: Callable[[], None] | None) -> bool:
    """Whether the lock's ``check`` (``before_final``) says it is still ours; False when it was
    taken over, or cannot be read (leave the objects: a clean-up under the lock removes a version
    without its completion file)."""
    if check is None:
        return True
    try:
        check()
    except Exception:  # noqa: BLE001 - LockHeld, or cannot tell: delete nothing
        return False
    return True


def _complete_and_verified(transport, vp: str, manifest: Manifest) -> bool:
    try:
        return transport.exists(f"{vp}/{manifest.completion_file}") and not transport.verify(vp, manifest)
    except Exception:  # noqa: BLE001 - cannot tell: the caller cleans up as before
        return False


def _store_manifest(transport: Transport, model: str, version: int, manifest: Manifest) -> None:
    path = manifest_path(model, version)
    data = manifest.to_json().encode()
    try:
        if transport.read_file(path, max_bytes=MAX_MANIFEST_BYTES) == data:
            return
    except FileNotFoundError:
        pass
    transport.write_file_atomic(path, data)


def read_stored_manifest(transport: Transport, model: str, version: int) -> Manifest | None:
    """The manifest stored when ``model/version`` was published (None if absent)."""
    path = manifest_path(model, version)
    try:
        return Manifest.from_json(transport.read_file(path, max_bytes=MAX_MANIFEST_BYTES),
                                  f"{transport.url}/{path}")
    except FileNotFoundError:
        return None


def _cleanup(transport: Transport, rel: str) -> None:
    try:
        transport.remove_tree(rel)
    except Exception as exc:  # noqa: BLE001 - best effort; retention removes leftovers later
        logger.warning("%s: could not remove the partial upload %s (%s); retention will remove it",
                       transport.url, rel, exc)


def published_versions(transport: Transport, model: str) -> list[int]:
    """Numeric version directories present for ``model`` on the host, ascending."""
    return sorted(v for n in transport.list_dir(check_model_name(model)) if (v := version_of(n)) is not None)


def incoming_dirs(transport: Transport, model: str) -> list[str]:
    """Names of temporary upload directories (``.incoming-*``) under ``<model>/``."""
    return [n for n in transport.list_dir(check_model_name(model)) if n.startswith(INCOMING_PREFIX)]
