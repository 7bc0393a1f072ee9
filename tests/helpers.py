"""Helpers shared by tests (not fixtures)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# TF Serving's own test models, copied into the repository (see its README.md).
TF_SERVING_TESTDATA = REPO / "tests" / "testdata" / "tensorflow_serving"


def run_mlops(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
              cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``mlops`` command line in a subprocess (as a user would)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mlops", *args], env=full_env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, input=input)


@contextlib.contextmanager
def loopback_http(handler):
    """A threaded HTTP server on 127.0.0.1 with ``handler`` for the block; yields its base URL
    (``http://127.0.0.1:<port>``), then stops it and frees the port."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def mlflow_client(uri: str):
    """An ``MlflowClient`` whose tracking AND registry are ``uri``: never the process-wide
    registry URI another test (or ``registry.client``) set with ``mlflow.set_registry_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def mlflow_process_state(env: dict[str, str] | None = None):
    """Apply ``env`` to ``os.environ`` for the block, then put the environment AND MLflow's
    process-wide URIs and active experiment back. ``mlflow.set_registry_uri`` /
    ``set_tracking_uri`` / ``set_experiment`` (called in-process by registry.client and mlproject)
    change module globals and ``os.environ`` (MLFLOW_REGISTRY_URI, MLFLOW_EXPERIMENT_ID, ...);
    without this a later test or subprocess talks to an earlier test's server or experiment."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            from mlflow.tracking import fluent
            from mlflow.tracking._model_registry import utils as registry_utils
            from mlflow.tracking._tracking_service import utils as tracking_utils

            registry_utils._registry_uri = None
            tracking_utils._tracking_uri = None
            fluent._active_experiment_id = None
        os.environ.clear()
        os.environ.update(saved)


def order_free(obj):
    """``obj`` with every dict sorted by key and every list sorted: for comparing JSON answers
    whose order TF Serving does not promise (model status lists, metadata maps)."""
    import json

    if isinstance(obj, dict):
        return {k: order_free(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return sorted((order_free(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    return obj


def sigterm_when_held(proc: subprocess.Popen, marker: Path, *, before_signal=None, timeout: float = 300.0) -> str:
    """``sigterm_when`` the process is held at its faultpoint (``marker`` exists)."""
    return sigterm_when(proc, marker.exists, before_signal=before_signal, timeout=timeout)


def sigterm_when(proc: subprocess.Popen, ready, *, before_signal=None, timeout: float = 300.0,
                 poll: float = 0.2) -> str:
    """Wait (bounded) until ``ready()``, run ``before_signal``, send SIGTERM as a cancelled CI job
    would, and return its stderr; a process that outlives all that is killed."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll)
        assert ready(), proc.poll()
        if before_signal is not None:
            before_signal()
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
