"""The one place for data set names, split and batch sizes, and default hyper-parameters.

Plain values only (no numpy, no TensorFlow): the CLI reads them to build ``--help``.
Calibrated with ``python -m mlproject.calibrate`` (see its docstring for the table).
"""
from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("digits", "fashion_mnist")
DEFAULT_DATASET = "digits"
NUM_CLASSES = 10
IMAGE_SIZE = {"digits": (8, 8), "fashion_mnist": (28, 28)}


@dataclass(frozen=True)
class SplitSizes:
    """How many examples go to the frozen held-out set and the held-back pool; base is the rest."""

    heldout: int
    pool: int


# ---- The one place where split and batch sizes live (see mlproject/calibrate.py). ----
SPLITS = {
    "digits": SplitSizes(heldout=450, pool=450),             # 1797 = 450 + 450 + 897 base
    "fashion_mnist": SplitSizes(heldout=10_000, pool=10_000),  # 70000 = 10k + 10k + 50k base
}
PARTITION_SEED = 20_260_101    # fixed forever: changing it changes every held-out set
VALIDATION_FRACTION = 0.1      # of the training data (base + incoming), split by the run's seed
BAD_BATCH_REPEATS = 8          # a bad batch = the pool this many times, labels shuffled each time
                               # (x8 on digits: 3600 noisy vs 897 base -> held-out drop 0.07..0.13)
GOLDEN_SIZE = 8                # held-out images in the golden smoke set

# Default hyper-parameters (calibrated on digits, see mlproject/calibrate.py).
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_SEED = 1
