"""Start the embedded default's local services: a real ``mlflow server`` and the local
TF-Serving-compatible model server, each reused when it already runs as asked.

Used by ``mlops up``/``mlops down``, ``mlops demo`` and by the test fixtures, so the tests run the
same server the quick start does. Each runs as a detached service (``mlops.detached_service``:
its own process group, a log and a record in the state folder).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from mlops.detached_service import (
    Service,
    forget,
    one_start_at_a_time,
    read_record,
    refuse_taken_ports,
    spawn,
    wait_http_ok,
    write_whole,
)
from mlops_common import settings
from mlops_common.errors import ConfigError, ConnectionFailure


def mlflow_server_command(*, port: int, artifacts_destination: str, workers: int = 1,
                          app_name: str | None = None) -> list[str]:
    """``mlflow server``'s argv; the backend store URI is in ``mlflow_server_env`` (argv is public)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--artifacts-destination", artifacts_destination,
           "--workers", str(workers)]
    if app_name:
        cmd += ["--app-name", app_name]
    return cmd


# MLflow 3's server also starts a job runner for its GenAI jobs (LLM judges, prompt optimization,
# trace roll-ups): about eight more Python processes, each importing MLflow. Nothing here uses those
# jobs, so the servers mlops starts run without them unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says.
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


# `mlflow server` takes each of its options from an MLFLOW_* variable too. These, meant for another
# server in the user's shell, moved where the local server writes or what it serves: with
# MLFLOW_REGISTRY_STORE_URI the quick start registered its models in that other database, with
# MLFLOW_DEFAULT_ARTIFACT_ROOT its runs' artifacts went to that folder or bucket, not the state folder.
SERVER_SETTINGS_NOT_INHERITED = (
    "MLFLOW_REGISTRY_STORE_URI", "MLFLOW_READ_REPLICA_BACKEND_STORE_URI", "MLFLOW_WORKSPACE_STORE_URI",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT", "MLFLOW_SERVE_ARTIFACTS", "MLFLOW_ARTIFACTS_ONLY",
    "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_STATIC_PREFIX", "MLFLOW_HOST", "MLFLOW_PORT", "MLFLOW_WORKERS",
)


def mlflow_server_env(backend_store_uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (or ours) plus the backend store URI, which ``mlflow server`` reads from
    ``MLFLOW_BACKEND_STORE_URI``: a database password never reaches a command line. MLflow's job
    runner is off unless ``env`` turns it on (see ``JOB_EXECUTION``); the server settings of
    ``SERVER_SETTINGS_NOT_INHERITED`` are dropped (the command and the state folder say them)."""
    base = env if env is not None else os.environ
    kept = {k: v for k, v in base.items() if k not in SERVER_SETTINGS_NOT_INHERITED}
    return {JOB_EXECUTION: "false", **kept, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}


def check_state_path(state: Path) -> None:
    """One line naming MLOPS_HOME when the state folder's path holds bytes that are not UTF-8:
    ``mlops up`` made the folder and the MLflow database and started the server, then printing
    "MLflow is up ... (state in <it>)" was a traceback (``mlops demo`` its first step's line); the
    ledger refuses such a path too. Before anything is made or started."""
    settings.check_utf8("the state folder's path (MLOPS_HOME, default ./.mlops)", str(state),
                        "it cannot be printed nor name the ledger's SQLite file; point MLOPS_HOME at a "
                        "folder whose path is UTF-8")


def start_mlflow(state: Path, *, port: int, backend_store_uri: str | None = None,
                 artifacts_destination: str | None = None, workers: int = 1,
                 app_name: str | None = None, env: dict[str, str] | None = None,
                 port_setting: str = "MLOPS_MLFLOW_PORT (or --port)") -> Service:
    """Start (or reuse) the local MLflow server for ``state`` and wait until it answers.
    ``port_setting``: what a port taken by another program tells the user to set."""
    check_state_path(state)
    with one_start_at_a_time(state, "mlflow-server"):
        return _start_mlflow(state, port=port, backend_store_uri=backend_store_uri,
                             artifacts_destination=artifacts_destination, workers=workers,
                             app_name=app_name, env=env, port_setting=port_setting)


def build_digest(cmd: list[str], *, dists: tuple[str, ...] = (), code: Path | None = None) -> str:
    """What a service runs, in a few bytes: its command (this virtualenv's python, its flags), the
    versions of ``dists`` and the sources under ``code``. A server a record names is reused only
    when this is unchanged: one left running by another checkout on the same MLOPS_HOME, or before a
    `git pull` or a reinstall of MLflow, was reused (an older MLflow on the upgraded database's
    files, an older model server) and nothing said so."""
    import hashlib
    import json
    from importlib import metadata

    h = hashlib.sha256(json.dumps(cmd).encode())
    for dist in dists:
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=?".encode())
    for path in sorted(code.rglob("*.py")) if code is not None else ():
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def _start_mlflow(state: Path, *, port: int, backend_store_uri: str | None, artifacts_destination: str | None,
                  workers: int, app_name: str | None, env: dict[str, str] | None, port_setting: str) -> Service:
    artifacts = artifacts_destination or str(state / "mlartifacts").replace("%", "%25")
    cmd = mlflow_server_command(port=port, artifacts_destination=artifacts, workers=workers, app_name=app_name)
    build = build_digest(cmd, dists=("mlflow",))
    rec = read_record(state, "mlflow-server")
    if rec and rec.running and rec.url == f"http://127.0.0.1:{port}" and rec.build == build:
        try:
            wait_http_ok(f"{rec.url}/health", timeout=10)
            return rec
        except ConnectionFailure:
            pass
    refuse_taken_ports(rec, {port: port_setting}, state=state)   # before the running one stops
    if rec is not None:     # not answering, half gone, or on another port than asked: start again
        forget(state, rec)
    refuse_taken_ports(None, {port: port_setting}, state=state)
    from mlops.mlflow_db import prepare_backend_store  # migrations first: see mlops/mlflow_db.py

    # a state folder under `what?/` put the database beside it, one under `100%41/` the database and
    # the artifacts (`artifacts`: MLflow unquotes the destination as a URI's path) in `100A/`
    backend = prepare_backend_store(backend_store_uri or settings.sqlite_url(state / "mlflow.db"), env=env)
    url = f"http://127.0.0.1:{port}"
    svc, _ = spawn("mlflow-server", cmd, state=state, url=url, health_url=f"{url}/health",
                   env=mlflow_server_env(backend, env), build=build)
    return svc


EMPTY_MODELS_CONFIG = "model_config_list {\n}\n"
# TF Serving's Prometheus page, as serving_host/install_server.sh enables it on real hosts: a canary
# bake (`mlops sync deploy --bake S`) reads it.
METRICS_PATH = "/monitoring/prometheus/metrics"
MONITORING_CONFIG = f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n'


def model_server_command(*, base: Path, rest_port: int, grpc_port: int,
                         config_poll_seconds: int = 1, monitoring_config: Path | None = None) -> list[str]:
    """The local TF-Serving-compatible server with the flags the embedded default uses.

    Failed loads end at once (``--max_num_load_retries=0``): versions are verified before they
    are published, so a load failure is not transient and the deploy should learn it now.
    """
    return [sys.executable, "-m", "serving_host.local_server",
            f"--rest_api_port={rest_port}", f"--port={grpc_port}",
            f"--model_config_file={base / 'models.config'}",
            f"--model_config_file_poll_wait_seconds={config_poll_seconds}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
            "--allow_version_labels_for_unavailable_models=true",
            *([f"--monitoring_config_file={monitoring_config}"] if monitoring_config else [])]


def start_model_server(state: Path, base: Path, *, rest_port: int, grpc_port: int,
                       name: str = "model-server", config_poll_seconds: int = 1) -> Service:
    """Start (or reuse) the local TF-Serving-compatible server serving ``base``.

    Writes an empty-but-valid ``models.config`` if there is none. Production hosts run real
    TensorFlow Serving instead (serving_host/install_server.sh).
    """
    with one_start_at_a_time(state, name):
        return _start_model_server(state, base, rest_port=rest_port, grpc_port=grpc_port, name=name,
                                   config_poll_seconds=config_poll_seconds)


def _start_model_server(state: Path, base: Path, *, rest_port: int, grpc_port: int, name: str,
                        config_poll_seconds: int) -> Service:
    monitoring = state / f"{name}.monitoring.config"
    cmd = model_server_command(base=base, rest_port=rest_port, grpc_port=grpc_port,
                               config_poll_seconds=config_poll_seconds, monitoring_config=monitoring)
    build = build_digest(cmd, dists=("tensorflow",), code=Path(__file__).resolve().parents[1] / "serving_host")
    rec = read_record(state, name)
    asked = {"grpc": grpc_port}
    if rec and rec.running and rec.url == f"http://127.0.0.1:{rest_port}" and rec.ports == asked \
            and rec.build == build:
        try:
            wait_http_ok(f"{rec.url}/v1/models/__probe__", timeout=10, ok=(404,))
            return rec
        except ConnectionFailure:
            pass
    wanted = {rest_port: "MLOPS_SERVING_REST_PORT", grpc_port: "MLOPS_SERVING_GRPC_PORT"}
    refuse_taken_ports(rec, wanted, state=state)        # before the running one stops
    if rec is not None:     # not answering, half gone, or on other ports than asked: start again
        forget(state, rec)
    config = base / "models.config"
    try:
        base.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)      # the monitoring config goes there
    except OSError as exc:
        raise ConfigError(f"cannot write {config} ({exc.strerror or exc}); point MLOPS_HOME at a folder "
                          f"you can write") from None
    if not config.exists():     # whole or not at all: a truncated one was kept, and the next start served it
        write_whole(config, EMPTY_MODELS_CONFIG)
    refuse_taken_ports(None, wanted, state=state)
    url = f"http://127.0.0.1:{rest_port}"
    write_whole(monitoring, MONITORING_CONFIG)     # a full MLOPS_HOME: one line, no truncated file
    svc, _ = spawn(name, cmd, state=state, url=url, health_url=f"{url}/v1/models/__probe__",
                   ok=(404,), ports=asked, build=build)
    return svc
