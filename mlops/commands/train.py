"""`mlops train`, `mlops retrain`, `mlops evaluate`: MLflow runs and registered versions.

Human progress (epochs, links) goes to stderr; stdout carries the result only (one JSON
document with --json).
"""
from __future__ import annotations

import contextlib
import sys

from mlops.commands import flags, output


def _training_args(p, *, retrain: bool) -> None:
    from mlproject.constants import DATASETS, DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_SEED

    if retrain:     # `auto`: a name for the default, which `mlflow run -e retrain` must pass
        p.add_argument("--dataset", choices=(*DATASETS, "auto"), default="auto",
                       help="base data set (default: auto = the production version's data set, else digits); "
                            "digits is bundled and works offline, fashion_mnist is downloaded by Keras")
    else:
        p.add_argument("--dataset", choices=DATASETS, default=None,
                       help="base data set (default: digits); digits is bundled and works offline, "
                            "fashion_mnist is downloaded by Keras")
    p.add_argument("--epochs", type=flags.epochs, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=flags.batch_size, default=DEFAULT_BATCH_SIZE,
                   help=f"default {DEFAULT_BATCH_SIZE}")
    p.add_argument("--learning-rate", type=flags.number, default=DEFAULT_LEARNING_RATE,
                   help=f"Adam learning rate (default {DEFAULT_LEARNING_RATE})")
    p.add_argument("--seed", type=flags.seed, default=DEFAULT_SEED,
                   help=f"seed for the train/validation split, weights and shuffling (default {DEFAULT_SEED}); "
                        f"the held-out set never depends on it")
    flags.add_model_name(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")


def register(sub) -> None:
    from mlproject.constants import DATASETS

    p = sub.add_parser("train", help="train the CNN, log an MLflow run and register a new version",
                       description="Train the CNN (Conv2D 8x3x3/2 relu -> Flatten -> Dense softmax) on the "
                                   "base set, log one MLflow run (params, per-epoch metrics, held-out "
                                   "metrics, plots, the MLflow model, a TF-Serving SavedModel under "
                                   "tfserving/ and a golden smoke set under golden/) and register it as a "
                                   "new version (validation_status=pending). Under `mlflow run` "
                                   "(MLFLOW_RUN_ID set) it logs into that run. A registration that fails "
                                   "names the finished run and the `mlops registry register` command "
                                   "that registers it later.")
    _training_args(p, retrain=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrain", help="retrain from production on base + new batches and register",
                       description="Continue training the version that holds the `production` alias "
                                   "(from scratch when none does, or with --from-scratch) on the base set "
                                   "plus the incoming .npz batches, which are validated first: invalid data "
                                   "stops the command before anything is logged or registered. Registers a "
                                   "new version tagged retrained_from=<version>|scratch. A registration that "
                                   "fails names the finished run and the `mlops registry register` command "
                                   "that registers it later.")
    p.add_argument("--incoming", required=True, metavar="PATH_OR_S3", type=flags.location,
                   help="new data: a .npz batch, a folder of them, or s3://bucket/prefix")
    p.add_argument("--from-scratch", nargs="?", const=True, default=False, type=flags.true_or_false,
                   metavar="true|false",
                   help="start from fresh weights instead of the production version; also as a value, "
                        "--from-scratch=true|false (default false), as `mlflow run -P from_scratch=...` passes it")
    _training_args(p, retrain=True)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("evaluate", help="evaluate a registered version on the frozen held-out set",
                       description="Load version N from the registry and measure accuracy, loss and "
                                   "per-class accuracy on the frozen held-out set of its data set (the "
                                   "version's dataset tag). The quality gate uses the same numbers.")
    p.add_argument("--version", type=flags.version_number, required=True, help="registered version number")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="override the version's dataset tag")
    flags.add_model_name(p)
    p.add_argument("--json", action="store_true", help="print the evaluation as one JSON document")
    p.set_defaults(func=cmd_evaluate)


def _params(args):
    from mlproject.train import TrainParams

    dataset = None if args.dataset == "auto" else args.dataset     # retrain's auto: production's, else digits
    return TrainParams(dataset=dataset, epochs=args.epochs, batch_size=args.batch_size,
                       learning_rate=args.learning_rate, seed=args.seed)


def _report(result: dict, as_json: bool) -> int:
    if as_json:
        output.emit(result)
        return 0
    m = result["metrics"]
    origin = ""
    if "retrained_from" in result:
        origin = (" (from scratch)" if result["retrained_from"] == "scratch"
                  else f" (retrained from version {result['retrained_from']})")
    print(f"registered {result['model_name']} version {result['version']}{origin}: held-out accuracy "
          f"{m['heldout_accuracy']:.4f}, loss {m['heldout_loss']:.4f} on {result['dataset']}")
    print(f"  run:           {result['run_url']}")
    print(f"  model version: {result['version_url']}")
    print(f"  next:          mlops registry gate --version {result['version']}")
    return 0


def _new_model_name(args) -> str:
    """The registered model name, checked before any training: it becomes a directory and a
    models.config entry on every serving host, so a name the hosts would refuse (``../x``,
    ``a/b``) is refused now rather than after training and registering."""
    from mlops_common import settings
    from serving_sync.names import check_model_name

    return check_model_name(settings.model_name(args.model_name),
                            what="model name (--model-name / MLOPS_MODEL_NAME)")


def cmd_train(args) -> int:
    name = _new_model_name(args)
    from mlproject.train import train

    with contextlib.redirect_stdout(sys.stderr):  # libraries print; stdout: the result
        result = train(name, _params(args))
    return _report(result, args.json)


def cmd_retrain(args) -> int:
    name = _new_model_name(args)
    from mlproject.train import retrain

    with contextlib.redirect_stdout(sys.stderr):
        result = retrain(name, _params(args), args.incoming, from_scratch=args.from_scratch)
    return _report(result, args.json)


def cmd_evaluate(args) -> int:
    from mlops_common import settings
    from mlproject.evaluate import evaluate_version, log_to_active_project_run
    from mlproject.tracking import project_run_id

    name = settings.model_name(args.model_name)
    project_run_id()        # a leftover MLFLOW_RUN_ID is refused before the evaluation, not after
    with contextlib.redirect_stdout(sys.stderr):
        ev = evaluate_version(name, args.version, dataset=args.dataset)
        log_to_active_project_run(ev)
    if args.json:
        output.emit(ev.to_dict())
    else:
        print(f"{ev.model_uri} on the {ev.dataset} held-out set (n={ev.n}): accuracy {ev.accuracy:.4f}, "
              f"loss {ev.loss:.4f}")
        worst = sorted(ev.per_class_accuracy.items(), key=lambda kv: kv[1])[:3]
        print("  weakest classes: " + ", ".join(f"{k}: {v:.3f}" for k, v in worst))
        if ev.non_probability_outputs:
            print(f"  {ev.non_probability_outputs} of {ev.n} images were answered with outputs that are not "
                  f"class probabilities (NaN, infinite, logits): the gate fails such a version")
    return 0
