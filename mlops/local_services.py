"""Start and stop the embedded default's local services (a real ``mlflow server``).

Used by ``mlops up``/``mlops down`` and by the test fixtures, so the tests run the same
server the quick start does. Each service runs detached in its own process group, logs to
a file in the state folder, and is recorded in ``<state>/<name>.json`` (pid, its start time,
url) so a later command can reuse or stop it — and never signals a program that got the pid
after a reboot or a crash.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from mlops_common import log
from mlops_common.errors import ConfigError, ConnectionFailure
from mlops_common.procs import boot_id, is_process, pid_alive, process_identity

_log = log.get("local_services")

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL = (32768, 60999)   # Linux's default (macOS and Windows use 49152-65535)
LISTEN_FLOOR = 10000                  # below: well-known ports and the usual fixed service ports
_MAX_TRIES = 200


def ephemeral_range(text: str | None = None) -> tuple[int, int]:
    """The ports the kernel gives to the local end of outgoing connections (and to ``bind(0)``):
    Linux's ``ip_local_port_range``, or its default where that cannot be read."""
    if text is None:
        try:
            text = Path(EPHEMERAL_RANGE_FILE).read_text()
        except OSError:
            return DEFAULT_EPHEMERAL
    try:
        lo, hi = (int(x) for x in text.split())
    except ValueError:
        return DEFAULT_EPHEMERAL
    return (lo, hi) if 0 < lo <= hi <= 65535 else DEFAULT_EPHEMERAL


def listen_port_ranges(ephemeral: tuple[int, int], floor: int = LISTEN_FLOOR) -> list[range]:
    """The ports from ``floor`` to 65535 outside the ephemeral range (pure; empty when none)."""
    lo, hi = ephemeral
    return [r for r in (range(floor, min(lo, 65536)), range(max(hi + 1, floor), 65536)) if len(r)]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports for services about to start, outside the ephemeral range.

    ``bind(0)`` answers with an ephemeral port, and a service takes seconds to bind what it was
    given (the model server imports TensorFlow first): in between, any outgoing connection on the
    machine may get that port as its local end, and the service dies with "Address already in
    use" (seen with 25 model servers started in a row). Outside that range the kernel never hands
    a port out by itself. Each port is checked by binding it (held until all ``n`` are chosen, so
    they differ); the choice uses the OS's randomness, so processes that seeded ``random`` alike
    (test workers) do not pick alike. Falls back to ``bind(0)`` when no such range is left.
    """
    ranges = listen_port_ranges(ephemeral_range())
    total = sum(len(r) for r in ranges)
    pick = random.SystemRandom()
    k, every = test_port_slice()
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        while len(ports) < n:
            s = held.enter_context(socket.socket())
            for _ in range(_MAX_TRIES if total else 0):
                port = _nth(ranges, pick.randrange(total))
                if port % every != k:
                    continue
                try:    # a port already held (chosen a moment ago) fails here too
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    continue
            else:
                s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


TEST_PORT_SLICE = "MLOPS_TEST_PORT_SLICE"


def test_port_slice() -> tuple[int, int]:
    """``(k, n)``: choose only ports whose number is ``k`` modulo ``n``. A test hook, inert unless
    ``MLOPS_TEST_PORT_SLICE=k/n`` is set (tests/conftest.py sets it per pytest-xdist worker): two
    workers each start hundreds of services, each binding its port seconds after choosing it, and
    one could choose the port the other had just chosen ("Address already in use")."""
    k, _, n = os.environ.get(TEST_PORT_SLICE, "").partition("/")
    if k.isdigit() and n.isdigit() and 0 <= int(k) < int(n):
        return int(k), int(n)
    return 0, 1


def _nth(ranges: list[range], k: int) -> int:
    """The ``k``-th port of the ranges taken one after another."""
    for r in ranges:
        if k < len(r):
            return r[k]
        k -= len(r)
    raise IndexError(k)


def free_port() -> int:
    """One free loopback port for a service about to start (see ``free_ports``)."""
    return free_ports(1)[0]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: Path
    identity: str = ""       # procs.process_identity(pid) when started
    ports: dict = field(default_factory=dict)     # what it was started with, e.g. {"grpc": 8500}

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "pid": self.pid, "url": self.url, "log": str(self.log),
                           "identity": self.identity, "ports": self.ports})

    @property
    def running(self) -> bool:
        """Its process is still the one we started (not another program that got the pid). A
        record without an identity is trusted only where none can be read (no /proc): on Linux
        it matched any process with ``mlflow`` in its argv — another user's server too."""
        return is_process(self.pid, self.identity)


def _record_path(state: Path, name: str) -> Path:
    return state / f"{name}.json"


def read_record(state: Path, name: str) -> Service | None:
    path = _record_path(state, name)
    try:
        if not path.is_file():
            return None
        text = path.read_text()
    except OSError as exc:      # a name too long, a folder that cannot be read: one line, not a traceback
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); point MLOPS_HOME at a folder you "
                          f"can read and write") from None
    try:
        d = json.loads(text)
        return Service(d["name"], int(d["pid"]), d["url"], Path(d["log"]), str(d.get("identity") or ""),
                       dict(d.get("ports") or {}))
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None


def wait_http_ok(url: str, *, timeout: float, proc: subprocess.Popen | None = None,
                 log: Path | None = None, ok: tuple[int, ...] = (200,), log_kept: bool = True) -> None:
    """Poll ``url`` until it answers a status in ``ok``, the process dies, or ``timeout`` passes.
    The failure names ``log`` when it stays (``log_kept``), and quotes its last line either way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConnectionFailure(f"the service exited with code {proc.returncode} before answering "
                                    f"at {url}{_log_hint(log, log_kept)}")
        try:
            if requests.get(url, timeout=2).status_code in ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise ConnectionFailure(f"{url} did not answer within {timeout:g}s{_log_hint(log, log_kept)}")


def _log_hint(log: Path | None, kept: bool) -> str:
    """"; see <log>: <its last line>" for a message; the path only when the log stays (a
    throw-away server's log, infra-validate's, goes with its folder before anyone opens it) and
    nothing at all without a log (it read "see None")."""
    if log is None:
        return ""
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    last = (tail.strip().splitlines() or [""])[-1]
    return (f"; see {log}" if kept else "") + (f": {last}" if last else "")


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


def mlflow_server_env(backend_store_uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (or ours) plus the backend store URI, which ``mlflow server`` reads from
    ``MLFLOW_BACKEND_STORE_URI``: a database password never reaches a command line. MLflow's job
    runner is off unless ``env`` turns it on (see ``JOB_EXECUTION``)."""
    base = env if env is not None else os.environ
    return {JOB_EXECUTION: "false", **base, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}


def spawn(name: str, cmd: list[str], *, state: Path, url: str, health_url: str,
          env: dict[str, str] | None = None, timeout: float = 120,
          ok: tuple[int, ...] = (200,), ports: dict | None = None,
          log_kept: bool = True) -> tuple[Service, subprocess.Popen]:
    """Start ``cmd`` detached, record it as service ``name`` at once (a start killed during the
    wait — a CI cancel, a closed terminal — leaves a server ``mlops down`` can still stop), wait
    for ``health_url``; on any failure stop it and forget it."""
    log = state / f"{name}.log"
    with open_in_state(state, log.name, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    svc = Service(name, proc.pid, url, log, process_identity(proc.pid), dict(ports or {}))
    try:
        write_record(state, svc)
        wait_http_ok(health_url, timeout=timeout, proc=proc, log=log, ok=ok, log_kept=log_kept)
    except BaseException:
        stop_pid(proc.pid)
        _stop_orphans(svc)      # its first process died (and was reaped): a worker kept the port
        _record_path(state, name).unlink(missing_ok=True)
        raise
    return svc, proc


def open_in_state(state: Path, name: str, mode: str):
    """``open(state / name, mode)``, creating the state folder; one line when it cannot be written."""
    try:
        state.mkdir(parents=True, exist_ok=True)
        return open(state / name, mode)
    except OSError as exc:
        raise ConfigError(f"cannot write the state folder {state} ({exc.strerror or exc}); point "
                          f"MLOPS_HOME at a folder you can write") from None


def write_whole(path: Path, text: str) -> None:
    """``text`` at ``path``, whole or not at all (written beside it, then renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); point MLOPS_HOME at a folder "
                          f"you can write") from None


def write_record(state: Path, svc: Service) -> None:
    """The service's record, whole or not at all."""
    write_whole(_record_path(state, svc.name), svc.to_json())


def _term_then_kill(send, gone, timeout: float) -> bool:
    """SIGTERM with ``send``, wait up to ``timeout`` for ``gone()``, then SIGKILL likewise. False
    when there was nothing to signal (``send`` found no process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            send(sig)
        except ProcessLookupError:
            return sig is signal.SIGKILL
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(0.1)
    return True


def stop_pid(pid: int, *, timeout: float = 15) -> None:
    """SIGTERM the process group of ``pid`` (its own group: ``spawn`` starts a session), else
    ``pid`` alone, then SIGKILL if it does not exit in time."""
    try:
        own_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return

    def send(sig) -> None:
        try:        # never signal a group the process merely belongs to
            (os.killpg if own_group else os.kill)(pid, sig)
        except PermissionError:
            os.kill(pid, sig)

    def gone() -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return not pid_alive(pid)

    _term_then_kill(send, gone, timeout)


def _stop_orphans(rec: Service, *, timeout: float = 15) -> bool:
    """The rest of a service whose first process died (MLflow's uvicorn worker keeps the port):
    its process group, which ``spawn`` made with the recorded pid as its number. Linux does not
    give that number to a new process while the group lives, so every member is ours — in the boot
    the record was made in: after a reboot the number may be any program's group (it killed
    another program's processes). True when there were any."""
    boot = rec.identity.split(":", 1)[0]
    if not rec.identity or not boot or boot != boot_id() or pid_alive(rec.pid):
        return False        # the number is another program's now (or never was ours to judge)

    def send(sig) -> None:
        try:
            os.killpg(rec.pid, sig)
        except PermissionError:
            raise ProcessLookupError from None     # not ours to signal: as if there were none

    def gone() -> bool:
        try:
            os.killpg(rec.pid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        return False

    return _term_then_kill(send, gone, timeout)


def forget(state: Path, rec: Service) -> bool:
    """Stop what is left of a recorded service and drop its record. True when something of it ran;
    a record whose pid is now another program's is dropped without a signal."""
    ran = rec.running
    if ran:
        stop_pid(rec.pid)
    else:
        ran = _stop_orphans(rec)
    try:
        _record_path(state, rec.name).unlink(missing_ok=True)
    except OSError as exc:      # a read-only state folder: it is stopped; say the record stays
        _log.warning("%s is stopped, but its record %s could not be removed (%s)", rec.name,
                    _record_path(state, rec.name), exc.strerror or exc)
    return ran


def stop_service(state: Path, name: str) -> bool:
    """Stop service ``name`` if its recorded process (or what is left of it) still runs, and
    forget it. True when it ran."""
    rec = read_record(state, name)
    return False if rec is None else forget(state, rec)


def refuse_taken_ports(rec: Service | None, ports: dict[int, str]) -> None:
    """One line for a port another program holds. With ``rec`` (a service of ours that runs):
    only ports it does not hold itself, checked before it is stopped — `mlops up --port P2`
    stopped a healthy server on P1, then refused because P2 was taken."""
    if rec is not None and not rec.running:
        return
    own = set() if rec is None else {*(rec.ports or {}).values(), urlsplit(rec.url).port}
    for port, what in ports.items():
        if port not in own and port_in_use(port):
            kept = f"; {rec.name} keeps running on {rec.url}" if rec is not None else ""
            raise ConfigError(f"port {port} on 127.0.0.1 is taken by another program{kept}; set {what} "
                              f"to a free port")


@contextlib.contextmanager
def _one_start_at_a_time(state: Path, name: str, timeout: float = 300):
    """Hold ``state``'s start lock for service ``name`` (``flock``, released if the process dies).
    Two `mlops up` at once both started a server: one lost the port, its error path removed the
    winner's record, and the server that listened was recorded nowhere."""
    from mlops_common import filelock

    def timed_out() -> Exception:
        return ConfigError(f"another start of {name} for {state} has held its lock for {timeout:g}s; wait "
                           f"for it or run `mlops down`")

    with open_in_state(state, f".{name}.start-lock", "a") as f, \
            filelock.held(f, timeout=timeout, poll=0.1, timed_out=timed_out):
        yield


def start_mlflow(state: Path, *, port: int, backend_store_uri: str | None = None,
                 artifacts_destination: str | None = None, workers: int = 1,
                 app_name: str | None = None, env: dict[str, str] | None = None) -> Service:
    """Start (or reuse) the local MLflow server for ``state`` and wait until it answers."""
    with _one_start_at_a_time(state, "mlflow-server"):
        return _start_mlflow(state, port=port, backend_store_uri=backend_store_uri,
                             artifacts_destination=artifacts_destination, workers=workers,
                             app_name=app_name, env=env)


def _start_mlflow(state: Path, *, port: int, backend_store_uri: str | None, artifacts_destination: str | None,
                  workers: int, app_name: str | None, env: dict[str, str] | None) -> Service:
    rec = read_record(state, "mlflow-server")
    if rec and rec.running and rec.url == f"http://127.0.0.1:{port}":
        try:
            wait_http_ok(f"{rec.url}/health", timeout=10)
            return rec
        except ConnectionFailure:
            pass
    refuse_taken_ports(rec, {port: "MLOPS_MLFLOW_PORT (or --port)"})   # before the running one stops
    if rec is not None:     # not answering, half gone, or on another port than asked: start again
        forget(state, rec)
    refuse_taken_ports(None, {port: "MLOPS_MLFLOW_PORT (or --port)"})
    from mlops.mlflow_db import prepare_backend_store  # migrations first: see mlops/mlflow_db.py

    backend = prepare_backend_store(backend_store_uri or f"sqlite:///{state / 'mlflow.db'}", env=env)
    artifacts = artifacts_destination or str(state / "mlartifacts")
    url = f"http://127.0.0.1:{port}"
    cmd = mlflow_server_command(port=port, artifacts_destination=artifacts, workers=workers, app_name=app_name)
    svc, _ = spawn("mlflow-server", cmd, state=state, url=url, health_url=f"{url}/health",
                   env=mlflow_server_env(backend, env))
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
    with _one_start_at_a_time(state, name):
        return _start_model_server(state, base, rest_port=rest_port, grpc_port=grpc_port, name=name,
                                   config_poll_seconds=config_poll_seconds)


def _start_model_server(state: Path, base: Path, *, rest_port: int, grpc_port: int, name: str,
                        config_poll_seconds: int) -> Service:
    rec = read_record(state, name)
    asked = {"grpc": grpc_port}
    if rec and rec.running and rec.url == f"http://127.0.0.1:{rest_port}" and rec.ports == asked:
        try:
            wait_http_ok(f"{rec.url}/v1/models/__probe__", timeout=10, ok=(404,))
            return rec
        except ConnectionFailure:
            pass
    wanted = {rest_port: "MLOPS_SERVING_REST_PORT", grpc_port: "MLOPS_SERVING_GRPC_PORT"}
    refuse_taken_ports(rec, wanted)        # before the running one stops
    if rec is not None:     # not answering, half gone, or on other ports than asked: start again
        forget(state, rec)
    config = base / "models.config"
    try:
        base.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)      # the monitoring config goes there
        if not config.exists():
            config.write_text(EMPTY_MODELS_CONFIG)
    except OSError as exc:
        raise ConfigError(f"cannot write {config} ({exc.strerror or exc}); point MLOPS_HOME at a folder "
                          f"you can write") from None
    refuse_taken_ports(None, wanted)
    url = f"http://127.0.0.1:{rest_port}"
    monitoring = state / f"{name}.monitoring.config"
    monitoring.write_text(MONITORING_CONFIG)
    cmd = model_server_command(base=base, rest_port=rest_port, grpc_port=grpc_port,
                               config_poll_seconds=config_poll_seconds, monitoring_config=monitoring)
    svc, _ = spawn(name, cmd, state=state, url=url, health_url=f"{url}/v1/models/__probe__",
                   ok=(404,), ports=asked)
    return svc


# --- throw-away servers for `mlops sync infra-validate` -------------------------------------
INSTALL_SCRIPT = Path(__file__).resolve().parents[1] / "serving_host" / "install_server.sh"
CONTAINER_BASE = "/models"


def tfserving_image() -> str:
    """The ``tensorflow/serving`` image pinned in serving_host/install_server.sh (one source)."""
    import re

    m = re.search(r'^IMAGE="([^"]+)"', INSTALL_SCRIPT.read_text(), re.M)
    if not m:
        raise ConfigError(f"{INSTALL_SCRIPT} does not pin IMAGE=\"tensorflow/serving:...\"")
    return m.group(1)


def docker_available(timeout: float = 15.0) -> bool:
    """Whether a Docker engine answers (``docker info`` succeeds)."""
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_serving_command(*, image: str, base: Path, rest_port: int, name: str) -> list[str]:
    """``docker run`` of real TF Serving reading ``base`` (read-only) as /models, REST on loopback.

    The entrypoint is the server binary itself (as serving_host/install_server.sh runs it): the
    image's default entrypoint script would add ``--model_name``/``--model_base_path``.
    """
    return ["docker", "run", "--rm", "-d", "--name", name,
            "-v", f"{Path(base).resolve()}:{CONTAINER_BASE}:ro",
            "-p", f"127.0.0.1:{rest_port}:8501",
            "--entrypoint", "tensorflow_model_server",
            image,
            "--port=8500", "--rest_api_port=8501",
            f"--model_config_file={CONTAINER_BASE}/models.config",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1"]


class _Throwaway:
    """A started throw-away server: what serving_sync.infra needs, plus how to stop it."""

    def __init__(self, kind: str, rest_url: str, serving_base: str, stop):
        self.kind, self.rest_url, self.serving_base, self._stop = kind, rest_url, serving_base, stop

    def stop(self) -> None:
        self._stop()


def start_throwaway_server(kind: str, base: Path, *, timeout: float = 120.0) -> _Throwaway:
    """Start TF Serving for ``base``: ``local`` (the compatible server) or ``docker`` (the pinned
    image). The caller stops it with ``.stop()``."""
    import secrets

    rest_port = free_port()
    url = f"http://127.0.0.1:{rest_port}"
    if kind == "local":
        grpc_port = free_port()
        cmd = model_server_command(base=base, rest_port=rest_port, grpc_port=grpc_port)
        state = base.parent / "server-state"
        _, proc = spawn("infra-validate-server", cmd, state=state, url=url,
                        health_url=f"{url}/v1/models/__probe__", timeout=timeout, ok=(404,), log_kept=False)
        return _Throwaway("local", url, str(base), lambda: stop_pid(proc.pid))
    if kind == "docker":
        name = f"mlops-infra-validate-{secrets.token_hex(4)}"
        cmd = docker_serving_command(image=tfserving_image(), base=base, rest_port=rest_port, name=name)
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConnectionFailure(f"docker run {tfserving_image()} failed: {last}")

        def stop() -> None:
            subprocess.run(["docker", "stop", "-t", "5", name], capture_output=True, timeout=60)

        try:
            wait_http_ok(f"{url}/v1/models/__probe__", timeout=timeout, ok=(404,))
        except BaseException:
            stop()
            raise
        return _Throwaway("docker", url, CONTAINER_BASE, stop)
    raise ConfigError(f"unknown server kind {kind!r}; use local or docker")


def throwaway_starter(kind: str, *, timeout: float = 120.0):
    """``serving_sync.infra``'s ``start_server``: a context manager per base that starts a throw-away
    server of ``kind`` for it and stops the server on the way out."""
    from serving_sync.infra import ThrowawayServer

    @contextlib.contextmanager
    def start_server(base: Path):
        srv = start_throwaway_server(kind, base, timeout=timeout)
        try:
            yield ThrowawayServer(srv.kind, srv.rest_url, srv.serving_base)
        finally:
            srv.stop()

    return start_server
