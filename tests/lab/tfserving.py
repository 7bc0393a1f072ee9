"""A real local TF-Serving-compatible server (``python -m serving_host.local_server``) for the lab.

``make_factory(tmp_root) -> (factory, handles)``; the pytest fixtures ``tfserving_factory``
(function scope) and ``tfserving_session_factory`` (session scope) in tests/fixtures/tfserving.py
wrap it (stopping every handle at teardown)::

    def test_x(tfserving_factory, tmp_path):
        srv = tfserving_factory(tmp_path / "serving")            # empty-but-valid models.config
        srv.write_config('model_config_list { config { name: "m" base_path: "%s/m" '
                         'model_platform: "tensorflow" } }' % srv.base)
        srv.wait_for_state("m", 1, "AVAILABLE")
        requests.post(f"{srv.rest_url}/v1/models/m:predict", json={...})

``factory(base_dir, config_text=None, *, grpc=True, poll_seconds=1, config_poll_seconds=None,
extra_args=())`` starts the server the way the embedded default does::

    python -m serving_host.local_server --rest_api_port=P --port=G --model_config_file=<base>/models.config
        --model_config_file_poll_wait_seconds=1 --file_system_poll_wait_seconds=1

on free loopback ports, waits (bounded) until its REST port answers, and stops it at teardown.
The handle has ``rest_url``, ``grpc_address`` (None without gRPC), ``base``, ``config_path``,
``log_path``, ``stop()``, ``restart()``, ``write_config(text)`` (atomic: temp file + rename, as
serving_sync writes it), ``status(model)`` and ``wait_for_state(model, version, state)``.
Pass ``extra_args=("--max_num_load_retries=0",)`` to make failed loads end in END at once
(the default, like TF Serving, retries 5 times a minute apart). ``config_poll_seconds=0`` reads
models.config only at start (then only gRPC ReloadConfig changes the config: with polling on,
the file is re-applied every interval, as real TF Serving does, and would undo a gRPC reload
that the file does not match).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from mlops.detached_service import stop_pid
from mlops.ports import free_port

REPO = Path(__file__).resolve().parents[2]
EMPTY_CONFIG = "model_config_list {\n}\n"
START_TIMEOUT = 120.0


@dataclass
class TFServingHandle:
    base: Path
    config_path: Path
    rest_port: int
    grpc_port: int | None
    log_path: Path
    args: list[str]
    proc: subprocess.Popen | None = None
    _session: requests.Session = field(default_factory=requests.Session)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_address(self) -> str | None:
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "serving_host.local_server", *self.args]

    def start(self) -> "TFServingHandle":
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                         cwd=REPO)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"local_server exited with {self.proc.returncode}; log:\n{self.log()[-3000:]}")
            try:
                requests.get(f"{self.rest_url}/v1/models/__probe__", timeout=2)
                return self
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"local_server did not answer on {self.rest_url} within {START_TIMEOUT:.0f}s; "
                           f"log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout=15)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def restart(self) -> "TFServingHandle":
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_config(self, text: str) -> None:
        """Replace models.config atomically (temp file + rename), as serving_sync does."""
        tmp = self.config_path.with_name(f".models.config.tmp-{os.getpid()}-{time.monotonic_ns()}")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def status(self, model: str) -> dict:
        r = self._session.get(f"{self.rest_url}/v1/models/{model}", timeout=10)
        return {"http": r.status_code, **r.json()}

    def version_states(self, model: str) -> dict[int, str]:
        s = self.status(model)
        return {int(v["version"]): v["state"] for v in s.get("model_version_status", [])}

    def wait_for_state(self, model: str, version: int, state: str, timeout: float = 60.0) -> dict:
        """Poll (bounded) until ``version`` of ``model`` reports ``state``; return that status entry."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status(model)
            for v in last.get("model_version_status", []):
                if int(v["version"]) == version and v["state"] == state:
                    return v
            time.sleep(0.1)
        raise AssertionError(f"{model} version {version} did not reach {state} in {timeout}s; last "
                             f"status: {last}; log tail:\n{self.log()[-2000:]}")


def make_factory(tmp_root: Path):
    handles: list[TFServingHandle] = []

    def factory(base_dir: Path | str | None = None, config_text: str | None = None, *, grpc: bool = True,
                poll_seconds: int = 1, config_poll_seconds: int | None = None,
                extra_args: tuple[str, ...] | list[str] = ()) -> TFServingHandle:
        base = Path(base_dir) if base_dir is not None else tmp_root / f"serving-{len(handles)}"
        base.mkdir(parents=True, exist_ok=True)
        config_path = base / "models.config"
        if config_text is not None or not config_path.exists():
            config_path.write_text(EMPTY_CONFIG if config_text is None else config_text)
        rest_port = free_port()
        grpc_port = free_port() if grpc else None
        while grpc_port == rest_port:
            grpc_port = free_port()
        args = [f"--rest_api_port={rest_port}", f"--port={grpc_port or 0}",
                f"--model_config_file={config_path}",
                f"--model_config_file_poll_wait_seconds="
                f"{poll_seconds if config_poll_seconds is None else config_poll_seconds}",
                f"--file_system_poll_wait_seconds={poll_seconds}", *extra_args]
        log_path = tmp_root / f"tfserving-{len(handles)}-{rest_port}.log"
        handle = TFServingHandle(base, config_path, rest_port, grpc_port, log_path, args)
        handles.append(handle)
        return handle.start()

    return factory, handles
