"""Checks that run before any training: a batch that fails them never reaches a model.

``problems()`` is a plain function on arrays (fast to test); ``check()`` turns the first
failing source into one line naming the file and what is wrong.
"""
from __future__ import annotations

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
