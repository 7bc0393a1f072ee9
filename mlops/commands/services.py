"""`mlops up` / `mlops down`: the embedded default's local services."""
from __future__ import annotations

from mlops.commands import flags, output
from mlops_common import log, settings
from mlops_common.errors import ConfigError, reworded


def register(sub) -> None:
    p = sub.add_parser("up", help="start (or reuse) the local MLflow server",
                       description="Start, or reuse if already running, a local `mlflow server` on "
                                   "127.0.0.1 with a SQLite backend store and a local artifact folder "
                                   "under the state folder (MLOPS_HOME, default ./.mlops). Waits until "
                                   "it answers and prints the UI URL.")
    p.add_argument("--port", type=flags.service_port, default=None,
                   help=f"port for MLflow (default: MLOPS_MLFLOW_PORT or {settings.DEFAULT_MLFLOW_PORT})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the local services started by `mlops up` / `mlops demo`",
                       description="Stop every local service recorded in the state folder "
                                   "(MLflow server, local model server).")
    p.set_defaults(func=cmd_down)


def cmd_up(args) -> int:
    from mlops.local_services import start_mlflow

    state = settings.state_dir()
    svc = start_mlflow(state, port=args.port if args.port is not None else settings.local_mlflow_port())
    if args.json:
        output.emit({"mlflow_ui": svc.url, "pid": svc.pid, "state_dir": str(state)})
    else:
        print(f"MLflow is up: {svc.url}  (state in {state}; log {svc.log})")
        print(f"Point other shells at it with: export MLFLOW_TRACKING_URI={svc.url}")
    return 0


def cmd_down(args) -> int:
    from mlops.detached_service import stop_service, stop_unrecorded

    state = settings.state_dir()
    try:
        records = sorted(state.glob("*.json"))
    except OSError as exc:      # a path too long: one line, not a traceback
        raise ConfigError(f"cannot read {state} ({exc.strerror or exc}); check MLOPS_HOME") from None
    stopped, refused = [], []
    for p in records:       # one that cannot be stopped (another user's) leaves the others stopped
        try:
            if stop_service(state, p.stem):
                stopped.append(p.stem)
        except ConfigError as exc:
            refused.append(exc)
    # then what runs for this state folder that no record names (the folder was removed under it)
    stopped += [f"{name} (no record)" for name in stop_unrecorded(state)]
    # a path of bytes that are not UTF-8 (MLOPS_HOME from a Latin-1 shell) shown as \xe9 (as every
    # command shows it): printed as it is, "nothing running for <it>" was a traceback
    if stopped or not refused:
        print("stopped: " + ", ".join(stopped) if stopped else f"nothing running for {log.printable(str(state))}")
    if len(refused) > 1:        # every one named, in the one line (only the first was)
        raise reworded(refused[0], "; ".join(exc.message for exc in refused))
    if refused:
        raise refused[0]
    return 0
