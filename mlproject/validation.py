"""Checks that run before any training: a batch that fails them never reaches a model.

``problems()`` is a plain function on arrays (fast to test); ``check()`` turns the first
failing source into one line naming the file and what is wrong. ``check_not_heldout()`` refuses
a batch holding examples of the frozen held-out set (:class:`ExampleIndex`): the gate would
measure the model on images it was trained on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mlops_common.errors import UserError

from .constants import NUM_CLASSES


class DataError(UserError):
    """Incoming data is malformed; the message names the file and the problem."""


def problems(images: np.ndarray, labels: np.ndarray, *, image_size: tuple[int, int],
             num_classes: int = NUM_CLASSES) -> list[str]:
    """Everything wrong with one batch (empty list = valid).

    Expected: ``images`` float32 in [0, 1], finite, shape (N, H, W, 1) or (N, H, W) with
    (H, W) = ``image_size``, N > 0; ``labels`` integers in 0..num_classes-1, shape (N,).
    """
    found: list[str] = []
    h, w = image_size
    shape_ok = images.ndim in (3, 4) and images.shape[1:3] == (h, w) and (
        images.ndim == 3 or images.shape[3] == 1)
    if not shape_ok:
        found.append(f"images have shape {tuple(images.shape)}, expected (N, {h}, {w}, 1) or (N, {h}, {w})")
    n = images.shape[0] if images.ndim else 0
    if n == 0 or labels.size == 0:
        found.append("empty batch (0 examples)")
    if images.dtype != np.float32:
        found.append(f"images have dtype {images.dtype}, expected float32 in [0, 1]")
    if images.dtype.kind == "f" and images.size:
        bad = int(np.count_nonzero(~np.isfinite(images)))
        if bad:
            found.append(f"images contain {bad} NaN/infinite values")
        finite = images[np.isfinite(images)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            found.append(f"image values span [{finite.min():.4g}, {finite.max():.4g}], expected [0, 1]")
    if labels.ndim != 1:
        found.append(f"labels have shape {tuple(labels.shape)}, expected (N,)")
    elif labels.shape[0] != n:
        found.append(f"{labels.shape[0]} labels for {n} images")
    if labels.dtype.kind not in "iu":
        found.append(f"labels have dtype {labels.dtype}, expected integers 0..{num_classes - 1}")
    elif labels.size:
        outside = np.unique(labels[(labels < 0) | (labels >= num_classes)])
        if outside.size:
            shown = ", ".join(str(int(v)) for v in outside[:5])
            found.append(f"labels contain {shown} (expected integers 0..{num_classes - 1})")
    return found


def check(source: str, images: np.ndarray, labels: np.ndarray, *, image_size: tuple[int, int],
          num_classes: int = NUM_CLASSES) -> None:
    """Raise :class:`DataError` naming ``source`` unless the batch is valid."""
    found = problems(images, labels, image_size=image_size, num_classes=num_classes)
    if found:
        raise DataError(f"invalid data in {source}: {'; '.join(found)}; fix or remove that file")


# ---- examples of the held-out set ----

_CHUNK = 4096   # images ranked at a time (bounds the argsort's memory on large batches)


def _rows(images: np.ndarray) -> np.ndarray:
    return np.asarray(images).reshape(len(images), -1)


def _coarse_keys(flat: np.ndarray) -> list[bytes]:
    """Cheap pre-filter: which pixels hold the image's minimum and which its maximum."""
    if not flat.size:
        return [b""] * len(flat)
    marks = np.concatenate([flat == flat.min(axis=1, keepdims=True), flat == flat.max(axis=1, keepdims=True)],
                           axis=1)
    return [hashlib.sha256(row.tobytes()).digest() for row in np.packbits(marks, axis=1)]


def _rank_keys(flat: np.ndarray) -> list[bytes]:
    """sha256 of each image's dense-rank pattern: pixel i -> how many distinct values lie below it.

    Equal for the same image however it was scaled to [0, 1] (/16, /17, /max, min-max, float64
    then float32): any strictly increasing change of the pixel values keeps the pattern.
    """
    keys: list[bytes] = []
    for start in range(0, len(flat), _CHUNK):
        rows = flat[start:start + _CHUNK]
        order = np.argsort(rows, axis=1)
        ordered = np.take_along_axis(rows, order, axis=1)
        step = np.zeros(rows.shape, dtype=np.uint32)
        step[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        ranks = np.empty_like(step)
        np.put_along_axis(ranks, order, np.cumsum(step, axis=1, dtype=np.uint32), axis=1)
        keys += [hashlib.sha256(row.tobytes()).digest() for row in ranks]
    return keys


@dataclass(frozen=True)
class ExampleIndex:
    """Fingerprints of a set of images (e.g. the held-out set), to count copies of them in a batch.

    An image matches when its pixels have the same dense-rank pattern (:func:`_rank_keys`) as one
    of the set: exact copies, and copies scaled or stored differently. A copy cropped, shifted or
    with noise added is not recognised.
    """

    coarse: frozenset[bytes]
    fine: frozenset[bytes]

    @classmethod
    def of(cls, images: np.ndarray, *, allowed: np.ndarray | None = None) -> "ExampleIndex":
        """The index of ``images``, less any image also in ``allowed`` (data that may be trained on)."""
        flat = _rows(images)
        fine = frozenset(_rank_keys(flat))
        if allowed is not None and len(allowed):
            fine -= frozenset(_rank_keys(_rows(allowed)))
        return cls(frozenset(_coarse_keys(flat)), fine)

    def count(self, images: np.ndarray) -> int:
        """How many of ``images`` are in the set (finite values expected: validate first)."""
        flat = _rows(images)
        maybe = np.fromiter((k in self.coarse for k in _coarse_keys(flat)), dtype=bool, count=len(flat))
        if not maybe.any():
            return 0
        return sum(k in self.fine for k in _rank_keys(flat[maybe]))


def check_not_heldout(source: str, images: np.ndarray, heldout: ExampleIndex, *, dataset: str) -> None:
    """Raise :class:`DataError` naming ``source`` if it holds examples of ``dataset``'s held-out set."""
    n = heldout.count(images)
    if n:
        what, them = ("example", "it") if n == 1 else ("examples", "them")
        raise DataError(f"{source} holds {n} {what} of the {dataset} held-out set: the gate would measure "
                        f"the model on data it trained on; remove {them}")
