"""The embedded default's service records (``<state>/<name>.json``) never make ``mlops down`` /
``mlops up`` / the demo signal or trust a program that merely got the recorded pid (after a
reboot, a crash, pid reuse): a record names its process by pid *and* start time. Real processes
(a ``sleep`` in its own session, as a stale server would be), the real CLI, the real local model
server."""
from __future__ import annotations

import json
import random
import subprocess
import time
from http.server import BaseHTTPRequestHandler

import pytest

from mlops import detached_service, local_services
from mlops.ports import free_port, free_ports, port_in_use
from mlops_common.errors import ConfigError, ConnectionFailure
from mlops_common.procs import pid_alive, process_identity
from tests.helpers import REPO, run_mlops


class _Healthy(BaseHTTPRequestHandler):
    """A server that answers every GET with an empty 200 (a health URL that is up)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stranger():
    """Another program, leader of its own session like a server we would have started."""
    p = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield p
    p.kill()
    p.wait(timeout=10)


def _refuse_signals_to(monkeypatch, pid: int) -> None:
    """Signals to ``pid`` (its group too) fail as the kernel fails them for another user's process."""
    import os

    def refused(real):
        def call(target, sig):
            if target == pid:
                raise PermissionError(1, "Operation not permitted")
            return real(target, sig)
        return call

    monkeypatch.setattr(os, "kill", refused(os.kill))
    monkeypatch.setattr(os, "killpg", refused(os.killpg))


def _record(state, name, pid, identity=None, url="http://127.0.0.1:9"):
    state.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "pid": pid, "url": url, "log": str(state / f"{name}.log")}
    if identity is not None:
        doc["identity"] = identity
    (state / f"{name}.json").write_text(json.dumps(doc))


@pytest.mark.skipif(not process_identity(1), reason="SKIPPED LOUDLY: no /proc: a pid is all a record can name")
def test_mlops_down_never_signals_a_program_that_got_a_recorded_pid(tmp_path, stranger):
    state = tmp_path / ".mlops"
    _record(state, "mlflow-server", stranger.pid, identity="another-boot:12345")   # pid reused
    _record(state, "model-server", stranger.pid)                                     # old record, no identity
    r = run_mlops("down", env={"MLOPS_HOME": str(state)})
    assert r.returncode == 0, r.stderr
    assert f"nothing running for {state}" in r.stdout
    time.sleep(0.3)
    assert stranger.poll() is None and pid_alive(stranger.pid)          # untouched
    assert not list(state.glob("*.json"))                               # the stale records are gone


def test_mlops_down_stops_the_process_it_recorded(tmp_path):
    state = tmp_path / ".mlops"
    p = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        _record(state, "mlflow-server", p.pid, identity=process_identity(p.pid))
        r = run_mlops("down", env={"MLOPS_HOME": str(state)})
        assert r.returncode == 0 and "stopped: mlflow-server" in r.stdout, r.stdout + r.stderr
        p.wait(timeout=20)
    finally:
        p.kill()


def test_a_record_that_is_not_a_service_is_ignored_not_a_traceback(tmp_path):
    state = tmp_path / ".mlops"
    state.mkdir()
    (state / "notes.json").write_text("[1, 2]")
    (state / "other.json").write_text('{"name": "x", "pid": {"a": 1}, "url": "u", "log": "l"}')
    assert detached_service.read_record(state, "notes") is None and detached_service.read_record(state, "other") is None
    r = run_mlops("down", env={"MLOPS_HOME": str(state)})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    # found by review (2026-12-05, third stop): every command that uses the local server read its
    # record's url without these checks: `[]` or a url that is not text was a TypeError traceback
    for record in ("[]", '{"url": 5}', '{"url": ["x"]}'):
        (state / "mlflow-server.json").write_text(record)
        r = run_mlops("registry", "status", env={"MLOPS_HOME": str(state), "MLFLOW_TRACKING_URI": "",
                                                 "MLOPS_MLFLOW_PORT": "1"})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "cannot reach the MLflow server at http://127.0.0.1:1 " in r.stderr, r.stderr


@pytest.mark.skipif(not process_identity(1), reason="SKIPPED LOUDLY: no /proc: a pid is all a record can name")
def test_the_model_server_is_started_afresh_when_its_record_names_another_program(tmp_path, stranger):
    """The demo reused any live pid's record and wrote a hosts file pointing at nothing."""
    state, base = tmp_path / ".mlops", tmp_path / "serving"
    rest, grpc = free_ports(2)
    _record(state, "model-server", stranger.pid, identity="another-boot:1", url=f"http://127.0.0.1:{rest}")
    svc = local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc)
    try:
        assert svc.pid != stranger.pid and svc.running
        import requests

        assert requests.get(f"{svc.url}/v1/models/__probe__", timeout=10).status_code == 404
        assert stranger.poll() is None                                   # and the stranger lives on
        assert local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc).pid == svc.pid   # reused
    finally:
        detached_service.stop_service(state, "model-server")
    assert not pid_alive(svc.pid)


def test_asking_for_a_taken_port_leaves_the_running_server_alone(tmp_path):
    """`mlops up --port P2` (and the demo's model server) stopped the healthy server first, then
    refused because P2 was taken: nothing ran afterwards."""
    import socket

    import requests

    from mlops_common.errors import ConfigError

    state, base = tmp_path / ".mlops", tmp_path / "serving"
    rest, grpc, other = free_ports(3)
    svc = local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc)
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", other))
        holder.listen(1)
        with pytest.raises(ConfigError, match=f"port {other} .* taken .*model-server keeps running on {svc.url}"):
            local_services.start_model_server(state, base, rest_port=rest, grpc_port=other)
        assert svc.running and requests.get(f"{svc.url}/v1/models/__probe__", timeout=10).status_code == 404
        assert detached_service.read_record(state, "model-server").pid == svc.pid
    finally:
        holder.close()
        detached_service.stop_service(state, "model-server")


def test_a_start_whose_first_process_dies_leaves_no_worker_behind(tmp_path):
    """The first process died during the health wait and was reaped: stopping it by its pid did
    nothing, and its worker kept the port ("taken by another program" at the next `mlops up`)."""
    marker = f"{random.randint(10**6, 10**7)}.5"
    port = free_ports(1)[0]
    with pytest.raises(Exception):
        detached_service.spawn("svc", ["bash", "-c", f"sleep {marker} & exit 1"], state=tmp_path / "state",
                 url=f"http://127.0.0.1:{port}", health_url=f"http://127.0.0.1:{port}/", timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", f"sleep {marker}"]).returncode == 0:
        time.sleep(0.1)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
    subprocess.run(["pkill", "-KILL", "-f", f"sleep {marker}"], capture_output=True)
    assert left == [] and not (tmp_path / "state" / "svc.json").exists()


def test_a_worker_caught_inside_execve_is_still_known_as_ours(monkeypatch):
    """Found by a targeted run (2026-12-08, twenty-fifth stop; the test above failed once under
    load): a member of the group read while inside execve has an empty environment (the kernel
    sets the new one up after switching the process to its new memory), so the group was judged
    not ours and the worker of a first process that died at once was left running. An empty read
    is asked again (for at most ``EXEC_SETTLE_S``); another program's environment is not."""
    mark = "m-1234"
    reads: list[str] = []

    def environ(pid: str) -> bytes:
        reads.append(pid)
        if pid == "12" and reads.count("12") == 1:
            return b""                                        # mid-execve
        return {"11": b"HOME=/x\0PATH=/bin", "12": f"A=1\0{detached_service.SERVICE_MARK}={mark}".encode()}[pid]

    monkeypatch.setattr(detached_service, "group_members", lambda pgid: iter(["11", "12"]))
    monkeypatch.setattr(detached_service, "_environ", environ)
    assert detached_service._group_is_ours(4242, mark)
    assert reads.count("12") == 2
    # a group whose members all carry another environment: not ours, at once
    reads.clear()
    monkeypatch.setattr(detached_service, "group_members", lambda pgid: iter(["11"]))
    start = time.monotonic()
    assert not detached_service._group_is_ours(4242, mark) and reads == ["11"]
    assert time.monotonic() - start < 0.5
    # one that stays empty (a zombie) is given up after EXEC_SETTLE_S
    monkeypatch.setattr(detached_service, "EXEC_SETTLE_S", 0.2)
    monkeypatch.setattr(detached_service, "_environ", lambda pid: b"")
    start = time.monotonic()
    assert not detached_service._group_is_ours(4242, mark)
    assert 0.15 <= time.monotonic() - start < 2.0


def test_a_state_path_too_long_is_one_line_for_up_and_down(tmp_path):
    """A 300-character folder name in MLOPS_HOME: `mlops up` and `mlops down` ended in an
    `OSError: File name too long` traceback."""
    state = tmp_path / ("x" * 300)
    for command in (("down",), ("up", "--json")):
        r = run_mlops(*command, env={"MLOPS_HOME": str(state)}, timeout=120)
        assert r.returncode == 2, (command, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr


def _worker_of(leader: subprocess.Popen, timeout: float = 30.0) -> int:
    """The pid of the other process in ``leader``'s process group (bash's ``sleep 120 &``), once
    bash has started it: polled (bounded), as a loaded machine may take well over 0.3 s to fork."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["pgrep", "-g", str(leader.pid)], capture_output=True, text=True).stdout.split()
        others = [int(p) for p in out if int(p) != leader.pid]
        if others:
            return others[0]
        assert leader.poll() is None and time.monotonic() < deadline, f"no worker in group {leader.pid} yet"
        time.sleep(0.05)


# --- found by review -----------------------------------------------------------------------------
@pytest.mark.skipif(not process_identity(1), reason="SKIPPED LOUDLY: no /proc: a pid is all a record can name")
def test_a_record_without_identity_never_signals_even_a_program_named_mlflow(tmp_path):
    """An old record (no identity) named any live pid with the word mlflow in its argv ours: another
    user's `python -m mlflow server` was killed by `mlops down`."""
    other = subprocess.Popen(["python3", "-c", "import time; time.sleep(120)", "-m", "mlflow", "server"],
                             start_new_session=True)
    try:
        _record(tmp_path / "state", "mlflow-server", other.pid)
        assert not detached_service.stop_service(tmp_path / "state", "mlflow-server")
        time.sleep(0.3)
        assert other.poll() is None and not (tmp_path / "state" / "mlflow-server.json").exists()
    finally:
        other.kill()
        other.wait(timeout=10)


@pytest.mark.skipif(not process_identity(1), reason="SKIPPED LOUDLY: no /proc: a pid is all a record can name")
def test_down_stops_what_is_left_of_a_service_whose_first_process_died(tmp_path):
    """MLflow's first process killed: its worker (same process group) kept the port and `mlops up`
    blamed "another program"; `mlops down` said nothing ran."""
    leader = subprocess.Popen(["bash", "-c", "sleep 120 & wait"], start_new_session=True)
    try:
        worker = _worker_of(leader)
        state = tmp_path / "state"
        _record(state, "mlflow-server", leader.pid, identity=process_identity(leader.pid))
        leader.kill()
        leader.wait(timeout=10)
        assert pid_alive(worker)
        assert detached_service.stop_service(state, "mlflow-server")
        deadline = time.monotonic() + 10
        while pid_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker)
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(leader.pid)], capture_output=True)


def test_down_never_signals_a_group_named_by_a_record_of_another_boot(tmp_path):
    """After a reboot the recorded number may be any program's process group: a record of
    another boot whose first process is gone had `mlops down` kill that program's processes."""
    leader = subprocess.Popen(["bash", "-c", "sleep 120 & wait"], start_new_session=True)
    try:
        worker = _worker_of(leader)
        state = tmp_path / "state"
        leader.kill()
        leader.wait(timeout=10)
        _record(state, "mlflow-server", leader.pid, identity="0000-another-boot:12345")
        r = run_mlops("down", env={"MLOPS_HOME": str(state)})
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
        assert pid_alive(worker), r.stdout                     # another program's: untouched
        assert not list(state.glob("*.json"))
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(leader.pid)], capture_output=True)


def test_down_never_signals_a_group_another_program_made_with_the_recorded_number(tmp_path):
    """Found by review (2026-12-06, seventeenth stop): once the recorded server and its group were
    gone, the number could be given to another program's process that made a group of it and
    exited, its children living on (a daemon's double fork, a shell's pipeline): `mlops down` of
    that stale record killed them as the server's leftovers. A record names its processes by a
    mark in their environment now; a group without it is left alone."""
    leader = subprocess.Popen(["bash", "-c", "sleep 120 & wait"], start_new_session=True)
    try:
        worker = _worker_of(leader)
        state = tmp_path / "state"
        _record(state, "mlflow-server", leader.pid, identity=process_identity(leader.pid))
        doc = json.loads((state / "mlflow-server.json").read_text())
        (state / "mlflow-server.json").write_text(json.dumps({**doc, "mark": "0123456789abcdef"}))
        leader.kill()
        leader.wait(timeout=10)
        assert pid_alive(worker)
        assert not detached_service.stop_service(state, "mlflow-server")
        time.sleep(0.3)
        assert pid_alive(worker), "another program's process was killed"
        assert not list(state.glob("*.json"))
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(leader.pid)], capture_output=True)


def test_a_start_is_recorded_before_its_wait_and_forgotten_when_it_fails(tmp_path):
    """A start killed during its health wait left a server nobody recorded; a failed one is
    stopped and its record dropped. A log of blank lines no longer turns the message into a
    traceback."""
    state = tmp_path / "state"
    seen = []

    def record_seen(*a, **k):
        seen.append(detached_service.read_record(state, "svc"))
        raise ConnectionFailure("not answering")

    orig = detached_service.wait_http_ok
    detached_service.wait_http_ok = record_seen
    try:
        with pytest.raises(ConnectionFailure):
            detached_service.spawn("svc", ["sleep", "60"], state=state, url="http://127.0.0.1:9", health_url="http://127.0.0.1:9/")
    finally:
        detached_service.wait_http_ok = orig
    assert seen and seen[0] is not None and seen[0].identity
    assert not pid_alive(seen[0].pid) and detached_service.read_record(state, "svc") is None
    with pytest.raises(ConnectionFailure, match="exited with code 3"):
        detached_service.spawn("blank", ["bash", "-c", "echo; echo; exit 3"], state=state, url="http://127.0.0.1:9",
                 health_url="http://127.0.0.1:9/", timeout=10)



def test_a_ctrl_c_while_the_start_is_recorded_leaves_no_server_running(tmp_path, monkeypatch):
    """``mlops up`` turns SIGTERM and Ctrl-C into a KeyboardInterrupt raised where the main thread
    stands. One landing after the server started and before the wait's ``try`` (while its identity
    was read for the record) left the server running with no record: nothing stopped it, and
    ``mlops down`` did not know it. Now it is stopped, and nothing is recorded."""
    state = tmp_path / "state"
    marker = str(random.randint(10_000_000, 99_999_999) + 0.5)

    def interrupted(pid):
        raise KeyboardInterrupt

    monkeypatch.setattr(detached_service, "process_identity", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            detached_service.spawn("svc", ["sleep", marker], state=state, url="http://127.0.0.1:9",
                                   health_url="http://127.0.0.1:9/", timeout=10)
        left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
        assert left == [], f"the server started before the interrupt still runs: {left}"
        assert detached_service.read_record(state, "svc") is None
    finally:
        subprocess.run(["pkill", "-KILL", "-f", f"sleep {marker}"], capture_output=True)

def test_a_sigterm_landing_as_the_server_process_is_made_leaves_no_server_running(tmp_path, monkeypatch):
    """Found by review (2026-12-06, seventeenth stop): a SIGTERM or Ctrl-C (a KeyboardInterrupt
    under every command's handler) landing as ``Popen`` returned, its child already running (the
    handler runs between two lines, here as Popen's own last ones finish), raised before the
    process was known to the start's clean-up: the server ran on, recorded nowhere. Now it is
    stopped and nothing is recorded."""
    import os
    import signal

    from mlops.commands.signals import sigterm_as_ctrl_c

    started = []

    class SignalledPopen(subprocess.Popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            started.append(self)
            os.kill(os.getpid(), signal.SIGTERM)

    state = tmp_path / "state"
    monkeypatch.setattr(detached_service.subprocess, "Popen", SignalledPopen)
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
            detached_service.spawn("svc", ["sleep", "120"], state=state, url="http://127.0.0.1:9",
                                   health_url="http://127.0.0.1:9/", timeout=10)
        assert started and started[0].poll() is not None, "the server started before the signal still runs"
        assert detached_service.read_record(state, "svc") is None
    finally:
        for p in started:
            p.kill()
            p.wait(timeout=10)


def test_a_state_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    r = run_mlops("up", env={"MLOPS_HOME": str(blocker / "state"), "MLOPS_MLFLOW_PORT": str(free_port())},
                  timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "MLOPS_HOME" in r.stderr


def test_a_full_state_folder_at_the_model_servers_start_is_one_line(tmp_path, tmpfs):
    """Found by review (2026-12-06, seventeenth stop): the model server's monitoring config was
    written with a bare ``write_text``: on a full MLOPS_HOME (its models.config already there, as
    on a second `mlops demo`) the start was an ENOSPC traceback, and a truncated file was left.
    Now one line naming the file and MLOPS_HOME, and nothing started."""
    state = tmpfs("1m")
    (state / ".model-server.start-lock").touch()
    with open(state / "filler", "wb", buffering=0) as f:      # bounded: 1 MiB of tmpfs is full within 1024 writes
        for _ in range(1024):
            try:
                f.write(b"x" * 4096)
            except OSError:
                break
    base = tmp_path / "serving"
    base.mkdir()
    (base / "models.config").write_text(local_services.EMPTY_MODELS_CONFIG)
    rest, grpc = free_ports(2)
    with pytest.raises(ConfigError, match=r"cannot write .*model-server\.monitoring\.config .*MLOPS_HOME"):
        local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc)
    assert detached_service.read_record(state, "model-server") is None
    assert not port_in_use(rest)
    assert not (state / "model-server.monitoring.config").exists()


def test_a_full_serving_base_at_the_first_start_leaves_no_truncated_models_config(tmp_path, tmpfs):
    """Found by review (2026-12-06, seventeenth stop): the first, empty models.config was written
    with a bare ``write_text``: on a full disk it was left empty, and the next start kept it as the
    server's config (it exists). Now one line, and no models.config."""
    base = tmpfs("1m")
    with open(base / "filler", "wb", buffering=0) as f:      # bounded: 1 MiB of tmpfs is full within 1024 writes
        for _ in range(1024):
            try:
                f.write(b"x" * 4096)
            except OSError:
                break
    rest, grpc = free_ports(2)
    with pytest.raises(ConfigError, match=r"cannot write .*models\.config .*MLOPS_HOME"):
        local_services.start_model_server(tmp_path / "state", base, rest_port=rest, grpc_port=grpc)
    assert not (base / "models.config").exists()
    assert not port_in_use(rest)


def test_the_demo_without_a_terminal_or_yes_refuses_before_it_starts_anything(tmp_path):
    """Without a terminal nobody can approve: it started both servers, deployed nothing and exited 0."""
    home = tmp_path / "home"
    r = run_mlops("demo", "--quick", env={"MLOPS_HOME": str(home)}, input="", timeout=120)
    assert r.returncode == 2 and "--yes" in r.stderr and "Traceback" not in r.stderr
    assert not list(home.glob("*.json"))          # no service was started


def test_a_server_that_never_answers_is_named_with_its_logs_last_line(tmp_path):
    """"did not answer within 0s; see <log>": the limit was rounded away, and a throw-away
    server's log (infra-validate's) had been removed with its folder by the time anyone read it."""
    from mlops_common.errors import ConnectionFailure

    log = tmp_path / "server.log"
    log.write_text("starting\nE0000 could not bind the gRPC port\n")
    port = free_ports(1)[0]
    with pytest.raises(ConnectionFailure) as e:
        detached_service.wait_http_ok(f"http://127.0.0.1:{port}/", timeout=0.3, log=log)
    assert "within 0.3s" in e.value.message and e.value.message.endswith(": E0000 could not bind the gRPC port")
    assert f"see {log}" in e.value.message
    # a throw-away server's log is quoted, not named (it is gone by the time anyone reads the
    # line); without a log the line said "see None" (docker's infra-validate server, re-checks)
    with pytest.raises(ConnectionFailure) as e:
        detached_service.wait_http_ok(f"http://127.0.0.1:{port}/", timeout=0.3, log=log, log_kept=False)
    assert str(log) not in e.value.message and e.value.message.endswith("s: E0000 could not bind the gRPC port")
    with pytest.raises(ConnectionFailure) as e:
        detached_service.wait_http_ok(f"http://127.0.0.1:{port}/", timeout=0.3)
    assert e.value.message.endswith("did not answer within 0.3s"), e.value.message


def test_a_server_is_waited_for_directly_whatever_proxy_the_environment_names(monkeypatch):
    """Found by review (2026-12-07, nineteenth stop): with HTTP_PROXY set and 127.0.0.1 not in
    NO_PROXY (a company network), the wait for a local service asked the proxy, which cannot reach
    this machine's loopback: `mlops up` and the demo waited 120 s for a server that answered, then
    stopped it with "did not answer". Here the proxy is a port nothing listens on."""
    from tests.helpers import loopback_http

    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with loopback_http(_Healthy) as url:
        started = time.monotonic()
        detached_service.wait_http_ok(f"{url}/health", timeout=5)
        assert time.monotonic() - started < 4


def test_down_stops_a_service_whose_state_folder_was_removed_under_it(tmp_path):
    """Found by review (2026-12-07, nineteenth stop): `rm -rf .mlops` (or `git clean -fdx`) with the
    demo's services running took their records with it: `mlops down` said "nothing running", the
    next `mlops up` or demo "port taken by another program", and nothing stopped them. A service now
    carries its state folder in its environment: `mlops down` finds and stops it, and the refusal
    of its port says so."""
    import shutil
    import sys

    home = tmp_path / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc, proc = detached_service.spawn("web-server", [sys.executable, "-m", "http.server", str(port), "--bind",
                                                      "127.0.0.1"], state=home, url=url, health_url=f"{url}/")
    try:
        shutil.rmtree(home)                                 # the state folder removed under it
        env = {"MLOPS_HOME": str(home), "PYTHONPATH": str(REPO)}
        up = run_mlops("up", "--port", str(port), env=env, timeout=120)
        assert up.returncode == 2 and "Traceback" not in up.stderr, up.stderr
        assert f"web-server, started for {home}, still runs with no record of it" in up.stderr, up.stderr
        assert "`mlops down` or `make down` stops it" in up.stderr
        down = run_mlops("down", env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == "stopped: web-server (no record)", down.stdout
        proc.wait(timeout=30)
        assert not port_in_use(port)
        again = run_mlops("down", env=env, timeout=120)      # nothing left: nothing said stopped
        assert again.stdout.strip() == f"nothing running for {home}", again.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_two_ups_at_once_start_one_server_and_both_name_it(tmp_path):
    """Two `mlops up` at the same moment both started a server: one lost the port and its error
    path removed the winner's record (or both reported different pids); the server that listened
    was recorded nowhere and `mlops down` could not stop it."""
    import os
    import sys

    from tests.helpers import REPO

    state = tmp_path / "state"
    port = free_ports(1)[0]
    env = {**os.environ, "MLOPS_HOME": str(state)}
    procs = [subprocess.Popen([sys.executable, "-m", "mlops", "up", "--json", "--port", str(port)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        pids = {json.loads(o[0])["pid"] for o in outs}
        rec = detached_service.read_record(state, "mlflow-server")
        assert len(pids) == 1 and rec is not None and rec.pid in pids and rec.running
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        r = run_mlops("down", env={"MLOPS_HOME": str(state)})
        pattern = f"--artifacts-destination {state}/"
        leaked = subprocess.run(["pkill", "-f", "--", pattern], capture_output=True).returncode
    assert r.returncode == 0 and "stopped: mlflow-server" in r.stdout
    assert leaked == 1 and not port_in_use(port)                  # pkill found nothing left


def test_a_state_folder_with_a_question_mark_or_percent_keeps_mlflows_database_and_artifacts_inside(tmp_path,
                                                                                                     monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): ``sqlite:///<state>/mlflow.db`` of a state folder
    under ``what?/`` was read as a database at ``what`` beside it (the ledger's too), and under
    ``100%41/`` the database and the artifacts went to ``100A/``."""
    import sqlalchemy as sa
    from mlflow import MlflowClient

    from mlops_common import settings

    state = tmp_path / "what?" / "100%41" / "my home#1"
    monkeypatch.setenv("MLOPS_HOME", str(state))
    assert sa.engine.make_url(settings.ledger_url()).database == str(state / "ledger.db")
    svc = local_services.start_mlflow(state, port=free_port())
    try:
        client = MlflowClient(tracking_uri=svc.url)
        run = client.create_run("0")
        client.log_text(run.info.run_id, "x", "a.txt")
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["a.txt"]
    finally:
        detached_service.stop_service(state, "mlflow-server")
    assert (state / "mlflow.db").is_file()
    assert list(state.glob("mlartifacts/*/*/artifacts/a.txt"))
    assert not (tmp_path / "what").exists() and not (tmp_path / "what?" / "100A").exists()
    # MLflow's server makes the database's folder from the URL as written: for `?` and `%`, which
    # the URL must quote, an empty folder of that name (no file) is all it leaves beside the state
    assert [p for p in tmp_path.rglob("*") if p.is_file() and state not in p.parents] == []


def test_a_server_left_by_another_build_of_the_project_is_started_afresh(tmp_path):
    """Found by review (2026-12-06, fourteenth stop): a server left running on the state folder by
    another checkout, or before a `git pull` or a reinstall of MLflow, was reused whatever it ran:
    its record said only pid, url and ports. A record whose build is not this one's (every record
    written before builds were recorded) names a server to replace; this one's is reused."""
    state, base = tmp_path / ".mlops", tmp_path / "serving"
    rest, grpc = free_ports(2)
    old = local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc)
    try:
        doc = json.loads((state / "model-server.json").read_text())
        doc.pop("build", None)                                     # as the code before wrote it
        (state / "model-server.json").write_text(json.dumps(doc))
        new = local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc)
        assert new.pid != old.pid and new.running and not pid_alive(old.pid)
        assert local_services.start_model_server(state, base, rest_port=rest, grpc_port=grpc).pid == new.pid
    finally:
        detached_service.stop_service(state, "model-server")
        if pid_alive(old.pid):
            detached_service.stop_pid(old.pid)


def test_mlflow_settings_in_the_users_shell_do_not_move_where_mlops_up_writes(tmp_path):
    """Found by review (2026-12-06, fifteenth stop): `mlflow server` reads each option from an
    MLFLOW_* variable too, and `mlops up` passed the shell's on. With MLFLOW_REGISTRY_STORE_URI (set
    for another server) the quick start's models were registered in that other database, and with
    MLFLOW_DEFAULT_ARTIFACT_ROOT its runs' artifacts were written to that folder."""
    from tests.helpers import mlflow_client

    state, other = tmp_path / ".mlops", tmp_path / "another server"
    other.mkdir()
    port = free_port()
    r = run_mlops("up", "--json", "--port", str(port), env={
        "MLOPS_HOME": str(state), "MLFLOW_REGISTRY_STORE_URI": f"sqlite:///{other}/registry.db",
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": str(other / "artifacts")})
    try:
        assert r.returncode == 0, r.stderr[-2000:]
        client = mlflow_client(json.loads(r.stdout)["mlflow_ui"])   # its registry too, not the process's
        client.create_registered_model("quick-start-model")
        run = client.create_run("0")
        client.log_text(run.info.run_id, "x", "a.txt")
        assert [m.name for m in client.search_registered_models()] == ["quick-start-model"]
    finally:
        down = run_mlops("down", env={"MLOPS_HOME": str(state)})
    assert down.returncode == 0 and "stopped: mlflow-server" in down.stdout
    assert list(other.rglob("*")) == []                                  # nothing of it went there
    assert list(state.glob("mlartifacts/*/*/artifacts/a.txt"))


def test_a_start_whose_port_another_server_took_meanwhile_fails_not_reports_the_other_server(tmp_path):
    """Found by review (2026-12-06, fifteenth stop): two `mlops up` of two state folders on one port
    at once (two checkouts' `make demo`) both passed the taken-port check; the one that could not
    bind took the other's answer to its health check for its own, said "MLflow is up" and recorded
    a server that had exited, so its models went to the other state folder's database. A start
    whose process cannot bind, while another program answers on that port, now fails."""
    import sys
    import threading
    from http.server import ThreadingHTTPServer

    other = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)        # the other checkout's server
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    state = tmp_path / ".mlops"
    # a server that binds its port after a moment, as MLflow does after its imports
    cmd = [sys.executable, "-c", "import socket, time; time.sleep(0.5); s = socket.socket(); "
           f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"]
    try:
        with pytest.raises(ConnectionFailure) as e:
            detached_service.spawn("mlflow-server", cmd, state=state, url=f"http://127.0.0.1:{port}",
                                   health_url=f"http://127.0.0.1:{port}/health", timeout=30)
    finally:
        other.shutdown()
        other.server_close()
    assert f"port {port} on 127.0.0.1 was taken by another program" in e.value.message, e.value.message
    assert "Address already in use" in e.value.message
    assert detached_service.read_record(state, "mlflow-server") is None
    # a server that does bind its port is taken at its word
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    svc, proc = detached_service.spawn("plain", cmd, state=state, url=f"http://127.0.0.1:{port}",
                                       health_url=f"http://127.0.0.1:{port}/", timeout=30)
    try:
        assert svc.running and detached_service.read_record(state, "plain").pid == proc.pid
    finally:
        assert detached_service.stop_service(state, "plain")
        proc.wait(timeout=20)


def test_a_services_log_is_rotated_at_each_start_and_the_previous_one_bounded(tmp_path, monkeypatch):
    """Found by review (2026-12-06, fifteenth stop): ``<name>.log`` was appended to at every start,
    forever. A start now moves the previous log to ``<name>.log.1`` (its last LOG_KEEP_BYTES, from a
    whole line), dropping the one before."""
    state = tmp_path / "state"
    monkeypatch.setattr(detached_service, "LOG_KEEP_BYTES", 100)
    log, old = state / "svc.log", state / "svc.log.1"

    def start(text: str) -> None:
        with pytest.raises(ConnectionFailure):
            detached_service.spawn("svc", ["bash", "-c", f"printf '{text}'; exit 3"], state=state,
                                   url="http://127.0.0.1:9", health_url="http://127.0.0.1:9/")

    start("first run\\n")
    assert log.read_text() == "first run\n" and not old.exists()
    start("second run\\n")
    assert (log.read_text(), old.read_text()) == ("second run\n", "first run\n")
    start("".join(f"line {i:03d} of a long run\\n" for i in range(50)))
    start("fourth run\\n")
    assert log.read_text() == "fourth run\n"
    kept = old.read_text()
    assert len(kept) <= 100 and kept.endswith("line 049 of a long run\n") and kept.startswith("line ")
    assert sorted(p.name for p in state.iterdir() if "svc" in p.name) == ["svc.log", "svc.log.1"]


@pytest.mark.skipif(not process_identity(1), reason="SKIPPED LOUDLY: no /proc: a pid is all a record can name")
def test_down_of_a_server_another_user_runs_is_one_line_and_keeps_its_record(tmp_path, stranger, monkeypatch):
    """Found by review (2026-12-06, fifteenth stop): `mlops down` of a server root started fell back
    from killpg to kill on PermissionError, which raised PermissionError again: a traceback. Another
    user's process is played here by signals to ``stranger`` failing as the kernel fails them."""
    _refuse_signals_to(monkeypatch, stranger.pid)
    state = tmp_path / "state"
    _record(state, "mlflow-server", stranger.pid, process_identity(stranger.pid), url="http://127.0.0.1:5999")
    with pytest.raises(ConfigError) as err:
        detached_service.stop_service(state, "mlflow-server")
    assert "\n" not in err.value.message
    assert err.value.message.startswith(f"cannot stop mlflow-server at http://127.0.0.1:5999 (pid {stranger.pid}): "
                                        f"it runs as another user")
    assert stranger.poll() is None and (state / "mlflow-server.json").exists()


def test_down_stops_the_other_services_when_one_runs_as_another_user(tmp_path, stranger, monkeypatch):
    """Found by review (2026-12-06, seventeenth stop): `mlops down` stopped at the first service it
    could not stop (MLflow started by root, say, sorted first): the model server after it was left
    running and said nothing of. Now every other service is stopped, then the one line."""
    from types import SimpleNamespace

    from mlops.commands.services import cmd_down

    state = tmp_path / "state"
    mine = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        _record(state, "mlflow-server", stranger.pid, process_identity(stranger.pid))
        _record(state, "model-server", mine.pid, process_identity(mine.pid))
        monkeypatch.setenv("MLOPS_HOME", str(state))
        _refuse_signals_to(monkeypatch, stranger.pid)
        with pytest.raises(ConfigError, match="cannot stop mlflow-server .*another user"):
            cmd_down(SimpleNamespace())
        assert mine.wait(timeout=20) is not None, "the model server was left running"
        assert stranger.poll() is None and (state / "mlflow-server.json").exists()
        assert not (state / "model-server.json").exists()
        # two it cannot stop: both named in the one line (only the first was)
        _record(state, "webhook-server", stranger.pid, process_identity(stranger.pid))
        with pytest.raises(ConfigError) as e:
            cmd_down(SimpleNamespace())
        assert "\n" not in e.value.message, e.value.message
        assert "cannot stop mlflow-server" in e.value.message and "cannot stop webhook-server" in e.value.message, \
            e.value.message
    finally:
        mine.kill()
        mine.wait(timeout=10)


def test_a_log_rotation_that_cannot_write_the_tail_leaves_no_partial_copy(tmp_path, monkeypatch):
    """Found by review (2026-12-06, sixteenth stop): the previous log's tail is written beside
    ``<name>.log.1`` and renamed into place; a write that failed (a full disk) left that partial
    ``.<name>.log.1.<pid>.tmp`` in the state folder, one more at each start. It is removed now,
    and the log is appended to as before."""
    from pathlib import Path

    log = tmp_path / "svc.log"
    log.write_text("".join(f"line {i:03d}\n" for i in range(50)))
    real = Path.write_bytes

    def full_disk(self, data):
        real(self, data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    detached_service.rotate_log(log, keep=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svc.log"]
    assert log.read_text().startswith("line 000\n")
