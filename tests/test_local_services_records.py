"""The embedded default's service records (``<state>/<name>.json``) never make ``mlops down`` /
``mlops up`` / the demo signal or trust a program that merely got the recorded pid (after a
reboot, a crash, pid reuse): a record names its process by pid *and* start time. Real processes
(a ``sleep`` in its own session, as a stale server would be), the real CLI, the real local model
server."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from mlops import local_services as ls
from mlops_common.procs import pid_alive, process_identity
from tests.helpers import run_mlops


@pytest.fixture
def stranger():
    """Another program, leader of its own session like a server we would have started."""
    p = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield p
    p.kill()
    p.wait(timeout=10)


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
    assert ls.read_record(state, "notes") is None and ls.read_record(state, "other") is None
    r = run_mlops("down", env={"MLOPS_HOME": str(state)})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(not process_identity(1), reason="SKIPPED LOUDLY: no /proc: a pid is all a record can name")
def test_the_model_server_is_started_afresh_when_its_record_names_another_program(tmp_path, stranger):
    """The demo reused any live pid's record and wrote a hosts file pointing at nothing."""
    state, base = tmp_path / ".mlops", tmp_path / "serving"
    rest, grpc = ls.free_ports(2)
    _record(state, "model-server", stranger.pid, identity="another-boot:1", url=f"http://127.0.0.1:{rest}")
    svc = ls.start_model_server(state, base, rest_port=rest, grpc_port=grpc)
    try:
        assert svc.pid != stranger.pid and svc.running
        import requests

        assert requests.get(f"{svc.url}/v1/models/__probe__", timeout=10).status_code == 404
        assert stranger.poll() is None                                   # and the stranger lives on
        assert ls.start_model_server(state, base, rest_port=rest, grpc_port=grpc).pid == svc.pid   # reused
    finally:
        ls.stop_service(state, "model-server")
    assert not pid_alive(svc.pid)
