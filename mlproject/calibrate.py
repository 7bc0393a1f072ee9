"""Measure how much good and bad batches move held-out accuracy (no MLflow, no registry).

For each seed: train "production" from scratch on the base set, make a good and a bad batch
with that seed, retrain from production's weights on base + batch (exactly what
``mlops retrain`` does), and compare held-out accuracy. The table calibrates the batch sizes in
``mlproject.datasets`` and the quality gate's tolerance:

    python -m mlproject.calibrate --seeds 1 2 3 4 5 [--repeats 8] [--epochs 10] [--json]

Measured on digits (450 held-out / 450 pool / 897 base; Adam lr 0.01, 10 epochs, batch 32):

    bad = pool x4 (1800): deltas -0.047 .. -0.038  (too close to the gate tolerance)
    bad = pool x6 (2700): deltas -0.082 .. -0.049
    bad = pool x8 (3600): deltas -0.127 .. -0.071  <- BAD_BATCH_REPEATS
    good = pool (450):    deltas +0.004 .. +0.031  (never below production)
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys

from .batches import Batch, make_batch
from .constants import BAD_BATCH_REPEATS, DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE
from .datasets import load_partition


def measure(seed: int, *, dataset: str = "digits", repeats: int = BAD_BATCH_REPEATS,
            epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
            learning_rate: float = DEFAULT_LEARNING_RATE) -> dict:
    """Held-out accuracy of production, good retrain and bad retrain for one seed."""
    import keras

    from .evaluate import evaluate_model
    from .train import TrainingData, TrainParams, fit_model

    part = load_partition(dataset)
    params = TrainParams(dataset=dataset, epochs=epochs, batch_size=batch_size,
                         learning_rate=learning_rate, seed=seed)
    quiet = io.StringIO()  # per-epoch lines are not wanted here
    production, _ = fit_model(params, TrainingData(dataset, part.base, part.heldout), stream=quiet)
    row = {"seed": seed,
           "production": evaluate_model(production, model_uri="-", dataset=dataset).accuracy}
    for kind in ("good", "bad"):
        batch = make_batch(kind, part.pool, seed, repeats=repeats)
        data = TrainingData(dataset, part.base, part.heldout, (Batch(kind, batch),), kind)
        start = keras.models.clone_model(production)
        start.set_weights(production.get_weights())
        model, _ = fit_model(params, data, start_model=start, stream=quiet)
        row[f"n_{kind}"] = len(batch)
        row[kind] = evaluate_model(model, model_uri="-", dataset=dataset).accuracy
        row[f"{kind}_delta"] = row[kind] - row["production"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["seed  production  good (delta)       bad (delta)",
             *(f"{r['seed']:>4}  {r['production']:.4f}      {r['good']:.4f} ({r['good_delta']:+.4f})  "
               f"{r['bad']:.4f} ({r['bad_delta']:+.4f})" for r in rows)]
    for kind in ("good", "bad"):
        d = [r[f"{kind}_delta"] for r in rows]
        lines.append(f"{kind} delta: min {min(d):+.4f}  max {max(d):+.4f}  mean {statistics.mean(d):+.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlproject.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--repeats", type=int, default=BAD_BATCH_REPEATS, help="bad batch = pool x REPEATS")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = p.parse_args(argv)
    from mlops_common.errors import UserError

    from .train import TrainParams

    try:    # before any training: --epochs 0 printed a table of untrained models, exit 0
        for s in a.seeds:
            TrainParams(dataset=a.dataset, epochs=a.epochs, learning_rate=a.learning_rate, seed=s).checked()
        if a.repeats < 1:
            raise UserError(f"--repeats must be at least 1, got {a.repeats}")
    except UserError as exc:
        p.error(exc.message)
    try:
        rows = [measure(s, dataset=a.dataset, repeats=a.repeats, epochs=a.epochs,
                        learning_rate=a.learning_rate) for s in a.seeds]
    except UserError as exc:    # a diverged training, Fashion-MNIST not downloadable: was a traceback
        print(f"{p.prog}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(rows) if a.json else table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
