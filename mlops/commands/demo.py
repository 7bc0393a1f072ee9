"""`mlops demo`: the quick start — the whole flow on the embedded default."""
from __future__ import annotations


def register(sub) -> None:
    from mlops.commands import flags

    p = sub.add_parser(
        "demo", help="run the whole flow locally: train, gate, approve, promote, deploy, smoke-test",
        description="Start a local MLflow server and a local TF-Serving-compatible model server "
                    "(production uses real TensorFlow Serving), then run what the CircleCI "
                    "pipeline runs: train and register a version, gate it against production, ask "
                    "for approval, promote it, deploy it to the local serving host with a smoke "
                    "test; then retrain on a good batch (approved and deployed, the previous version "
                    "kept warm) and on the tutorial's bad batch (stopped by the gate). Leaves MLflow's "
                    "UI and the model server running and prints their URLs, a curl predict example "
                    "and how to roll back. Ctrl-C at the end, or `mlops down` at any time, stops "
                    "everything.",
        epilog="State lives in MLOPS_HOME (default ./.mlops). Ports: MLOPS_MLFLOW_PORT (5000), "
               "MLOPS_SERVING_REST_PORT (8501), MLOPS_SERVING_GRPC_PORT (8500).")
    p.add_argument("--yes", action="store_true",
                   help="approve every version that passes the gate without asking (non-interactive use)")
    p.add_argument("--quick", action="store_true", help="train, gate and deploy one version only")
    p.add_argument("--detach", action="store_true",
                   help="return when the flow is done, leaving the services running (default when "
                        "not run from a terminal)")
    p.add_argument("--epochs", type=flags.epochs, default=10, help="training epochs (default 10)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from mlops.demo import DemoOptions, main

    return main(DemoOptions(yes=args.yes, quick=args.quick, epochs=args.epochs), detach=args.detach)
