"""The throw-away TF Serving of ``mlops sync infra-validate``: the local compatible server or the
pinned Docker image, started for one candidate's base folder and stopped after its checks.
"""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from mlops.detached_service import _log_hint, spawn, stop_pid, wait_http_ok
from mlops.local_services import model_server_command
from mlops.ports import free_port, free_ports
from mlops_common import log
from mlops_common.errors import ConfigError, ConnectionFailure

INSTALL_SCRIPT = Path(__file__).resolve().parents[1] / "serving_host" / "install_server.sh"
CONTAINER_BASE = "/models"
# The image is pulled first, on its own (`ensure_image`): a line every PULL_PROGRESS_EVERY seconds,
# and a limit under CircleCI's 10-minute no-output limit, so a slow pull ends with this command's
# line, not with CircleCI's "Too long with no output". `docker run -d` then only starts a container.
DOCKER_PULL_TIMEOUT = 540.0
PULL_PROGRESS_EVERY = 30.0
DOCKER_RUN_TIMEOUT = 120.0
DOCKER_STOP_TIMEOUT = 60.0
_log = log.get("throwaway_server")


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


def ensure_image(image: str) -> None:
    """Pull ``image`` unless Docker has it: progress lines meanwhile, one line if it fails or takes
    longer than ``DOCKER_PULL_TIMEOUT``."""
    import tempfile
    import time

    try:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60).returncode == 0:
            return
    except (OSError, subprocess.SubprocessError):
        pass                    # the pull says what is wrong with the engine
    _log.info("pulling %s (at most %.0fs)", image, DOCKER_PULL_TIMEOUT)
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["docker", "pull", "--quiet", image], stdout=subprocess.DEVNULL, stderr=err)
        try:
            while True:
                left = DOCKER_PULL_TIMEOUT - (time.monotonic() - start)
                if left <= 0:
                    raise ConnectionFailure(
                        f"docker pull {image} did not finish within {DOCKER_PULL_TIMEOUT:g}s (a slow or stuck "
                        f"download from the registry): rerun the job; if it keeps happening, check the runner's "
                        f"network and Docker Hub's status, or pull the image ahead (`docker pull {image}`)")
                try:
                    rc = proc.wait(timeout=min(PULL_PROGRESS_EVERY, left))
                    break
                except subprocess.TimeoutExpired:
                    _log.info("still pulling %s: %.0fs of at most %.0fs", image, time.monotonic() - start,
                              DOCKER_PULL_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc != 0:
            err.seek(0)
            last = (err.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise ConnectionFailure(f"docker pull {image} failed: {last}: check the image name, the runner's "
                                    f"network and Docker Hub's rate limit (log in to Docker Hub), then rerun the job")
    _log.info("pulled %s in %.0fs", image, time.monotonic() - start)


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


def docker_exited(name: str) -> str | None:
    """Why the throw-away container ``name`` is gone for good (it is ``--rm``: an exited one is
    removed), or None while it runs or when Docker cannot say."""
    try:
        r = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", name],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode == 0 and r.stdout.strip() != "false":
        return None
    if r.returncode != 0 and "no such" not in r.stderr.lower():     # "Error: No such object: ..."
        return None
    return (f"the throw-away docker TF Serving (container {name}) has exited (an out-of-memory kill or a "
            f"crash? it runs with --rm: its logs went with it)")


class _Throwaway:
    """A started throw-away server: what serving_sync.infra needs, plus how to stop it."""

    def __init__(self, kind: str, rest_url: str, serving_base: str, stop, exited=lambda: None):
        self.kind, self.rest_url, self.serving_base, self._stop = kind, rest_url, serving_base, stop
        self.exited = exited        # why the server is gone for good (None while it runs)

    def stop(self) -> None:
        self._stop()


def start_throwaway_server(kind: str, base: Path, *, timeout: float = 120.0) -> _Throwaway:
    """Start TF Serving for ``base``: ``local`` (the compatible server) or ``docker`` (the pinned
    image). The caller stops it with ``.stop()``."""
    import secrets

    rest_port, grpc_port = free_ports(2) if kind == "local" else (free_port(), None)   # distinct
    url = f"http://127.0.0.1:{rest_port}"
    if kind == "local":
        cmd = model_server_command(base=base, rest_port=rest_port, grpc_port=grpc_port)
        state = base.parent / "server-state"
        svc, proc = spawn("infra-validate-server", cmd, state=state, url=url,
                          health_url=f"{url}/v1/models/__probe__", timeout=timeout, ok=(404,), log_kept=False)

        try:    # a Ctrl-C (or SIGTERM) landing before the caller holds it: it is stopped here
            def exited() -> str | None:
                if proc.poll() is None:
                    return None
                return f"the throw-away local TF Serving exited with code {proc.returncode}{_log_hint(svc.log, False)}"
            return _Throwaway("local", url, str(base), lambda: stop_pid(proc.pid), exited)
        except BaseException:
            stop_pid(proc.pid)
            raise
    if kind == "docker":
        name, image = f"mlops-infra-validate-{secrets.token_hex(4)}", tfserving_image()
        cmd = docker_serving_command(image=image, base=base, rest_port=rest_port, name=name)
        ensure_image(image)
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=DOCKER_RUN_TIMEOUT)
        except BaseException as exc:    # its timeout, Ctrl-C: the daemon may create the container still
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ConnectionFailure(
                    f"docker run {image} did not return within {DOCKER_RUN_TIMEOUT:g}s (the image is "
                    f"here: is the Docker engine overloaded?): check `docker info` and rerun") from None
            raise
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConnectionFailure(f"docker run {image} failed: {last}")

        def stop() -> None:
            # a hung engine raised TimeoutExpired here, in a finally: a traceback in place of the
            # verdict (or of the start's failure), and the container left running unnamed
            try:
                subprocess.run(["docker", "stop", "-t", "5", name], capture_output=True, timeout=DOCKER_STOP_TIMEOUT)
                return
            except (OSError, subprocess.SubprocessError):
                pass
            try:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=DOCKER_STOP_TIMEOUT)
            except (OSError, subprocess.SubprocessError):
                _log.warning("could not stop the throw-away container %s (Docker did not answer); remove it "
                             "with `docker rm -f %s`", name, name)

        try:
            wait_http_ok(f"{url}/v1/models/__probe__", timeout=timeout, ok=(404,), gone=lambda: docker_exited(name))
            return _Throwaway("docker", url, CONTAINER_BASE, stop, lambda: docker_exited(name))
        except BaseException:
            stop()
            raise
    raise ConfigError(f"unknown server kind {kind!r}; use local or docker")


def throwaway_starter(kind: str, *, timeout: float = 120.0):
    """``serving_sync.infra``'s ``start_server``: a context manager per base that starts a throw-away
    server of ``kind`` for it and stops the server on the way out."""
    from serving_sync.infra import ThrowawayServer

    @contextlib.contextmanager
    def start_server(base: Path):
        srv = None
        try:    # no line between the start's return and this try: a signal there left the server running
            srv = start_throwaway_server(kind, base, timeout=timeout)
            yield ThrowawayServer(srv.kind, srv.rest_url, srv.serving_base, srv.exited)
        finally:
            if srv is not None:
                srv.stop()

    return start_server
