"""`mlops data`: make demo/test batches of new data, and validate batches before training."""
from __future__ import annotations

import sys

from mlops.commands import flags, output

DATASET_HELP = "base data set: digits (bundled, offline; default) or fashion_mnist (downloaded by Keras)"


def register(sub) -> None:
    from mlproject.constants import DATASETS

    p = sub.add_parser("data", help="make and validate batches of new data (.npz)",
                       description="Batches of new data for `mlops retrain` are .npz files with arrays "
                                   "'images' (float32 in [0, 1], shape (N, H, W, 1) or (N, H, W)) and "
                                   "'labels' (integers 0..9), in a local folder or under s3://bucket/prefix.")
    dsub = p.add_subparsers(dest="data_command", metavar="COMMAND")
    dsub.required = True

    m = dsub.add_parser("make-batch", help="write a good or bad batch for demos and tests",
                        description="Write a batch built from the samples held back from the base set. "
                                    "good: new, correctly labelled samples (retraining on it must not hurt). "
                                    "bad: the held-back images repeated several times with labels shuffled "
                                    "independently of the images - well-formed, so it passes validation, "
                                    "but retraining on it clearly hurts the model and the gate must stop it.")
    m.add_argument("--kind", required=True, choices=("good", "bad"), help="which batch to write")
    m.add_argument("--out", required=True, metavar="PATH", type=flags.output_path,
                   help="output .npz file, an existing folder, or s3://bucket/key.npz")
    m.add_argument("--dataset", default="digits", choices=DATASETS, help=DATASET_HELP)
    m.add_argument("--seed", type=flags.seed, default=1, help="order/shuffle seed (default 1)")
    m.add_argument("--repeats", type=flags.repeats, default=None,
                   help="bad only: how many times the held-back images are repeated (default: calibrated value)")
    m.add_argument("--json", action="store_true", help="print the result as one JSON document")
    m.set_defaults(func=cmd_make_batch)

    v = dsub.add_parser("validate", help="check batches the way retraining will (shape, dtype, range, labels)",
                        description="Read every .npz batch at PATH_OR_S3 (a file, a folder of them, or "
                                    "s3://bucket/prefix) and check it exactly as `mlops retrain` does before "
                                    "training: shape, dtype, value range, NaN, label set, empty batch, examples of "
                                    "the held-out set, a batch that is a copy of another. "
                                    "Exits non-zero with one line naming the first bad file.")
    v.add_argument("location", metavar="PATH_OR_S3", type=flags.location)
    v.add_argument("--dataset", default="digits", choices=DATASETS, help=DATASET_HELP)
    v.add_argument("--json", action="store_true", help="print the per-file report as one JSON document")
    v.set_defaults(func=cmd_validate)


def cmd_make_batch(args) -> int:
    import contextlib
    from pathlib import Path

    from mlops_common.errors import ConfigError
    from mlproject import batches, s3
    from mlproject.constants import BAD_BATCH_REPEATS
    from mlproject.datasets import check_name, fingerprint, load_partition

    check_name(args.dataset)
    if args.repeats is not None and args.kind != "bad":
        raise ConfigError("--repeats applies to --kind bad only (a good batch is the held-back samples once)")
    out = args.out
    if s3.is_s3(out):
        s3.parse_uri(out)   # `s3://` (an unset bucket): the join below made it the local folder ./s3:/
    if (not s3.is_s3(out) and Path(out).is_dir()) or (s3.is_s3(out) and out.endswith("/")):
        out = out.rstrip("/") + "/" + batches.default_name(args.kind, args.dataset, args.seed)
    with contextlib.redirect_stdout(sys.stderr):  # loaders may print; stdout is for the result
        pool = load_partition(args.dataset).pool
        repeats = args.repeats if args.repeats is not None else BAD_BATCH_REPEATS
        data = batches.make_batch(args.kind, pool, args.seed, repeats=repeats)
        where = batches.write_batch(data, out)
    result = {"path": where, "kind": args.kind, "dataset": args.dataset, "seed": args.seed,
              "n": len(data), "fingerprint": fingerprint(data)}
    if args.kind == "bad":
        result["repeats"] = repeats
    if args.json:
        output.emit(result)
    else:
        how = (f"held-back samples x{repeats}, labels shuffled" if args.kind == "bad"
               else "held-back samples, correct labels")
        print(f"wrote {args.kind} batch: {len(data)} {args.dataset} examples ({how}) -> {where}")
    return 0


def cmd_validate(args) -> int:
    import contextlib

    from mlproject import batches
    from mlproject.validation import DataError

    with contextlib.redirect_stdout(sys.stderr):
        report = batches.inspect_batches(args.location, args.dataset)
    bad = [r for r in report if not r["ok"]]
    if args.json:
        output.emit({"location": args.location, "dataset": args.dataset, "ok": not bad, "batches": report})
    else:
        for r in report:
            print(f"ok   {r['source']}: {r['n']} examples" if r["ok"] else f"FAIL {r['source']}: {_why(r)}")
    if bad:
        more = f" ({len(bad) - 1} more invalid file(s))" if len(bad) > 1 else ""
        raise DataError(bad[0]["problem"] + more)
    return 0


def _why(row: dict) -> str:
    """A failed report row's problem without the file name it starts with (the row names it): a FAIL
    line said only the file, so every invalid file but the first went without its reason."""
    problem, source = row["problem"], row["source"]
    for head in (f"invalid data in {source}: ", f"{source} "):
        if problem.startswith(head):
            return problem[len(head):]
    return problem
