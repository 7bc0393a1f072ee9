"""The base data sets behind one interface, their frozen partition, and content fingerprints.

Every data set is split once, with a fixed seed that depends on nothing but the data set, into
``heldout`` (the frozen "known data" every evaluation of every version uses), ``pool`` (samples
held back from training: the source of demo/test batches of new data) and ``base`` (what a
training run learns from). The training seed only splits ``base`` into train/validation and
initialises the model, so it can never move the held-out set.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mlops_common.errors import ConfigError, ConnectionFailure

from .constants import DATASETS, IMAGE_SIZE, PARTITION_SEED, SPLITS, VALIDATION_FRACTION, SplitSizes

FASHION_OFFLINE_HINT = "use the offline data set instead: --dataset digits"


@dataclass(frozen=True)
class Arrays:
    """Images float32 in [0, 1] with shape (N, H, W, 1) and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: np.ndarray) -> "Arrays":
        return Arrays(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Partition:
    base: Arrays
    pool: Arrays
    heldout: Arrays


def check_name(name: str) -> str:
    if name not in DATASETS:
        raise ConfigError(f"unknown data set '{name}'; choose one of: {', '.join(DATASETS)}")
    return name


def image_shape(name: str) -> tuple[int, int, int]:
    h, w = IMAGE_SIZE[check_name(name)]
    return (h, w, 1)


def concat(*parts: Arrays) -> Arrays:
    return Arrays(np.concatenate([p.images for p in parts]).astype(np.float32, copy=False),
                  np.concatenate([p.labels for p in parts]).astype(np.int64, copy=False))


def fingerprint(data: Arrays) -> str:
    """sha256 of the content (shapes, float32 image bytes, int64 label bytes): same data, same hash."""
    h = hashlib.sha256()
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    labels = np.ascontiguousarray(data.labels, dtype=np.int64)
    h.update(repr((images.shape, labels.shape)).encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()


def partition(data: Arrays, sizes: SplitSizes, seed: int = PARTITION_SEED) -> Partition:
    """Split ``data`` into held-out / pool / base with a fixed permutation (pure)."""
    if sizes.heldout + sizes.pool >= len(data):
        raise ValueError("split sizes leave no base data")
    order = np.random.default_rng(seed).permutation(len(data))
    h, p = sizes.heldout, sizes.heldout + sizes.pool
    return Partition(base=data.take(np.sort(order[p:])), pool=data.take(np.sort(order[h:p])),
                     heldout=data.take(np.sort(order[:h])))


def train_validation_split(data: Arrays, seed: int,
                           fraction: float = VALIDATION_FRACTION) -> tuple[Arrays, Arrays]:
    """Shuffle with the run's seed and hold ``fraction`` out for per-epoch validation (pure)."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_val = max(1, int(round(len(data) * fraction)))
    return data.take(order[n_val:]), data.take(order[:n_val])


def _sklearn_data_file(name: str) -> Path:
    """A data file scikit-learn ships (``sklearn/datasets/data/<name>``), located, not imported."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("scikit-learn is not installed, and the digits data set ships with it; "
                          "install the project's dependencies (make venv)")
    return Path(spec.origin).parent / "datasets" / "data" / name


def _digits() -> Arrays:
    """scikit-learn's bundled 8x8 digits (no network), read straight into uint8 then float32.

    The file is found from the package's location without importing scikit-learn: a process that
    only reads the data (``mlops data make-batch``) saves about 2.5 s. (TensorFlow's import still
    pulls scikit-learn in through ``keras.wrappers``, so training and evaluation gain nothing.)"""
    with gzip.open(_sklearn_data_file("digits.csv.gz"), "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 8, 8, 1).astype(np.float32) / np.float32(16.0)
    return Arrays(images, table[:, -1].astype(np.int64))


def _fashion_mnist(timeout: float = 60.0) -> Arrays:
    """Fashion-MNIST through Keras's own loader (downloads once into KERAS_HOME)."""
    import keras

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # bound a stalled download
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # noqa: BLE001 - keras raises bare Exception on fetch failure
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        cached = _fashion_mnist_cache()
        if cached is not None:      # nothing was downloaded: the copy Keras keeps is what fails to read
            raise ConfigError(f"the copy of Fashion-MNIST that Keras keeps in {cached} cannot be read ({reason}): "
                              f"a damaged or cut-off file; delete that folder to have it downloaded again, "
                              f"or {FASHION_OFFLINE_HINT}") from None
        raise ConnectionFailure(f"cannot download Fashion-MNIST ({reason}); {FASHION_OFFLINE_HINT}") from None
    finally:
        socket.setdefaulttimeout(old)
    images = np.concatenate([x_train, x_test])[..., None].astype(np.float32) / np.float32(255.0)
    return Arrays(images, np.concatenate([y_train, y_test]).astype(np.int64))


FASHION_MNIST_FILES = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")


def _fashion_mnist_cache() -> Path | None:
    """The folder where Keras keeps Fashion-MNIST, if every file of it is there (found as
    ``keras.utils.get_file`` finds it: KERAS_HOME or ~/.keras, /tmp/.keras when not writable).
    Keras deletes a download that fails, so after a failure a full folder was read, not fetched."""
    import os

    from keras.src.backend.config import keras_home

    base = os.path.expanduser(keras_home())
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    folder = Path(base) / "datasets" / "fashion-mnist"
    return folder if all((folder / name).is_file() for name in FASHION_MNIST_FILES) else None


def load(name: str) -> Arrays:
    """The whole data set ``name`` as float32 images in [0, 1], shape (N, H, W, 1)."""
    return {"digits": _digits, "fashion_mnist": _fashion_mnist}[check_name(name)]()


@lru_cache(maxsize=4)
def load_partition(name: str) -> Partition:
    """The frozen partition of data set ``name`` (cached: evaluation reads it per version)."""
    part = partition(load(name), SPLITS[check_name(name)])
    for arrays in (part.base, part.pool, part.heldout):  # shared by callers: make it read-only
        arrays.images.flags.writeable = False
        arrays.labels.flags.writeable = False
    return part


@lru_cache(maxsize=4)
def heldout_index(name: str):
    """Fingerprints of every held-out example of data set ``name`` (``validation.ExampleIndex``),
    which incoming batches must not contain. Images the pool holds too (the data set's own
    duplicates) are left out: batches of new data are made from the pool."""
    from .validation import ExampleIndex

    part = load_partition(name)
    return ExampleIndex.of(part.heldout.images, allowed=part.pool.images)
