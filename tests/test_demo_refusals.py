"""`mlops demo` refuses bad input before anything starts: `--epochs 0` (it was checked after both
servers had started), a `$MLOPS_HOME/hosts.toml` the demo did not write (it was overwritten: a
person's own hosts lost), a second demo on the same state folder (two flows trained, promoted and
deployed into each other). And the closing text offers a rollback only when there is a version to
go back to (`--quick` on a fresh state suggested one that would be refused). Real `mlops` processes;
no server is started by these tests, and a run that starts one fails them."""
from __future__ import annotations

import fcntl
import http.server
import json
from pathlib import Path

import pytest

from mlops.demo import HOSTS_MARK, available_versions, check_hosts_file, closing_text, hosts_toml
from mlops.ports import free_port
from mlops_common.errors import ConfigError
from tests.helpers import REPO, loopback_http, run_mlops

MINE = '[[hosts]]\nname = "web-1"\ntarget = "ssh://deploy@web-1/srv/models"\nrest_url = "http://web-1:8501"\n'


def _env(home: Path) -> dict[str, str]:
    return {"MLOPS_HOME": str(home), "MLOPS_MLFLOW_PORT": str(free_port()),
            "MLOPS_SERVING_REST_PORT": str(free_port()), "MLOPS_SERVING_GRPC_PORT": str(free_port()),
            "MLOPS_MODEL_NAME": "demo-refusals", "MLFLOW_TRACKING_URI": "", "MLOPS_HOSTS_FILE": "",
            "MLOPS_LEDGER_URL": ""}


def _demo(home: Path, *extra: str, env: dict[str, str] | None = None):
    """``mlops demo --quick`` with this checkout's code (the cwd is not the repository, so the
    editable install would name another tree's), and ``mlops down`` if it started a server."""
    env = {**(env or _env(home)), "PYTHONPATH": str(REPO)}
    try:
        return run_mlops("demo", "--yes", "--detach", "--quick", "--epochs", "1", *extra, env=env,
                         cwd=home.parent, timeout=300)
    finally:
        if any(home.glob("*.json")) or any(home.glob("*.log")):      # a server started: stop it
            run_mlops("down", env=env, cwd=home.parent, timeout=120)


def _started_nothing(home: Path) -> None:
    leftovers = sorted(p.name for p in home.glob("*") if p.suffix in (".json", ".log")) if home.exists() else []
    assert leftovers == [], f"the refused demo started something: {leftovers}"
    assert not (home / "serving").exists()


def _one_line(r) -> str:
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_zero_epochs_is_refused_before_any_server_starts(tmp_path):
    home = tmp_path / "mlops"
    line = _one_line(_demo(home, "--epochs", "0"))
    assert "--epochs must be at least 1, got 0" in line
    _started_nothing(home)


def test_a_model_name_the_serving_host_refuses_is_refused_before_any_server_starts(tmp_path):
    """Found by review (2026-12-07, nineteenth stop): MLOPS_MODEL_NAME="my model" started both
    servers, trained and registered v1, gated it and promoted it to production, then the deploy
    refused the name: production on a version no host can serve. `mlops train` refuses it first."""
    home = tmp_path / "mlops"
    line = _one_line(_demo(home, env={**_env(home), "MLOPS_MODEL_NAME": "my model",
                                      "MLOPS_GATE_MIN_ACCURACY": "0.1"}))
    assert "model name (MLOPS_MODEL_NAME) 'my model' is not allowed" in line, line
    _started_nothing(home)


@pytest.mark.parametrize("var, value, says", [
    ("MLOPS_LOCK_TTL", "10m", "MLOPS_LOCK_TTL must be a number of seconds"),
    ("MLOPS_GATE_MIN_ACCURACY", "high", "MLOPS_GATE_MIN_ACCURACY must be a number such as 0.05")])
def test_a_malformed_gate_or_deploy_setting_is_refused_before_any_server_starts(tmp_path, var, value, says):
    """Found by review (2026-12-07, nineteenth stop): MLOPS_LOCK_TTL=10m (a setting of the deploy)
    was refused only at the deploy step, once v1 had been trained, gated and promoted: production on
    a version no host served; a malformed gate rule only after the servers had started and v1 had
    been trained and registered."""
    home = tmp_path / "mlops"
    line = _one_line(_demo(home, env={**_env(home), "MLOPS_GATE_MIN_ACCURACY": "0.1", var: value}))
    assert says in line, line
    _started_nothing(home)


@pytest.mark.parametrize("same", [("MLOPS_MLFLOW_PORT", "MLOPS_SERVING_REST_PORT"),
                                  ("MLOPS_SERVING_REST_PORT", "MLOPS_SERVING_GRPC_PORT")])
def test_one_port_for_two_servers_is_refused_before_any_server_starts(tmp_path, same):
    """Found by review (2026-12-05, third stop): MLflow started on the port, then the model server
    found it taken (by that MLflow): the demo stopped, MLflow left running."""
    home = tmp_path / "mlops"
    env = _env(home)
    env[same[1]] = env[same[0]]
    line = _one_line(_demo(home, env=env))
    assert f"{same[0]} and {same[1]} are both {env[same[0]]}" in line, line
    _started_nothing(home)


def test_a_serving_port_another_program_holds_is_refused_before_mlflow_starts(tmp_path):
    """Found by review (2026-12-05, third stop): MLflow started first, then the model server's port
    was found taken: the demo stopped with MLflow left running."""
    import socket

    home = tmp_path / "mlops"
    env = _env(home)
    with socket.create_server(("127.0.0.1", int(env["MLOPS_SERVING_REST_PORT"]))):
        r = _demo(home, env=env)
    line = _one_line(r)
    assert f"port {env['MLOPS_SERVING_REST_PORT']} on 127.0.0.1 is taken by another program" in line, line
    assert "MLOPS_SERVING_REST_PORT" in line
    _started_nothing(home)


def test_a_serving_port_another_program_holds_is_refused_before_mlflow_starts_after_a_reboot(tmp_path):
    """Found by review (2026-12-06, seventeenth stop): the check above was skipped when the state
    folder still held the model server's record of a process that is gone (a reboot, a crash: no
    `mlops down` ran), as it always does then: MLflow started, the model server's port was found
    taken, and the demo stopped with MLflow left running."""
    import socket

    home = tmp_path / "mlops"
    env = _env(home)
    home.mkdir()
    (home / "model-server.json").write_text(json.dumps(
        {"name": "model-server", "pid": 2 ** 22 - 7, "identity": "another-boot:12345",
         "url": f"http://127.0.0.1:{env['MLOPS_SERVING_REST_PORT']}", "log": str(home / "model-server.log"),
         "ports": {"grpc": int(env["MLOPS_SERVING_GRPC_PORT"])}}))
    with socket.create_server(("127.0.0.1", int(env["MLOPS_SERVING_REST_PORT"]))):
        r = _demo(home, env=env)
    line = _one_line(r)
    assert f"port {env['MLOPS_SERVING_REST_PORT']} on 127.0.0.1 is taken by another program" in line, line
    assert not (home / "mlflow-server.log").exists(), "MLflow was started before the refusal"


def test_a_hosts_file_the_demo_did_not_write_is_left_alone(tmp_path):
    home = tmp_path / "mlops"
    home.mkdir()
    (home / "hosts.toml").write_text(MINE)
    line = _one_line(_demo(home))
    assert str(home / "hosts.toml") in line and "not written by `mlops demo`" in line
    assert "another MLOPS_HOME" in line
    assert (home / "hosts.toml").read_text() == MINE
    _started_nothing(home)


def test_a_second_demo_on_the_same_state_folder_is_refused(tmp_path):
    home = tmp_path / "mlops"
    home.mkdir()
    with open(home / "demo.lock", "a+") as held:          # the first demo, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _one_line(_demo(home))
    assert "another `mlops demo` is running" in line and str(home) in line
    _started_nothing(home)


def test_a_hosts_file_an_earlier_demo_wrote_may_be_replaced(tmp_path):
    path = tmp_path / "hosts.toml"
    check_hosts_file(path)                                  # none yet
    path.write_text(hosts_toml(tmp_path / "serving", "http://127.0.0.1:8501", "127.0.0.1:8500"))
    assert path.read_text().startswith(HOSTS_MARK)
    check_hosts_file(path)                                  # the demo's own: fine
    path.write_text("\n" + path.read_text())                # a person edited it (the mark is no longer first)
    with pytest.raises(ConfigError, match="not written by `mlops demo`"):
        check_hosts_file(path)


def test_the_closing_text_offers_a_rollback_only_when_there_is_somewhere_to_go():
    services = {"mlflow": "http://127.0.0.1:5000", "serving": "http://127.0.0.1:8501"}
    first = closing_text(services, "digits", 1, Path("/tmp/request.json"), None)
    assert "mlops sync rollback" not in first
    assert "nothing to roll back to yet: v1 is the first version to serve production" in first
    # found by review (2026-12-07, nineteenth stop): a full run whose later versions failed their
    # gate was told to "run the demo without --quick", which it had done
    full = closing_text(services, "digits", 1, Path("/tmp/request.json"), None, quick=False)
    assert "--quick" not in full and "mlops sync rollback" not in full
    assert ("nothing to roll back to yet: v1 is the only version that has served production (the later ones "
            "did not pass their gate or deploy)") in full
    later = closing_text(services, "digits", 2, Path("/tmp/request.json"), 1)
    assert 'mlops sync rollback --reason "why"   (to v1, kept warm' in later
    # found by a sweep (2026-12-06): a run whose deploy of v2 failed left v1 unloaded, and the text
    # still promised an instant rollback to a warm v1
    cold = closing_text(services, "digits", 2, Path("/tmp/request.json"), 1, warm=False)
    assert "(to v1, not loaded on the host any more: the rollback loads and smoke-tests it first)" in cold
    assert "kept warm" not in cold
    for text in (first, later):
        assert "curl -s -X POST http://127.0.0.1:8501/v1/models/digits:predict -d @/tmp/request.json" in text


def test_the_rollback_is_called_warm_only_for_a_version_the_model_server_has_available():
    """TF Serving's status answer: v1 still AVAILABLE beside v2, v0 being unloaded (END)."""
    doc = {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "3", "state": "END", "status": {"error_code": "OK", "error_message": ""}}]}

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(doc if self.path == "/v1/models/digits" else {"error": "not found"}).encode()
            self.send_response(200 if self.path == "/v1/models/digits" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with loopback_http(Status) as url:
        assert available_versions(url, "digits") == {1, 2}
        assert available_versions(url, "other") == set()                 # 404: it cannot say
    assert available_versions(f"http://127.0.0.1:{free_port()}", "digits") == set()   # nothing listens


def test_the_closing_text_can_be_pasted_as_printed():
    """Found by a sweep (2026-12-04): a state folder with a space broke the curl line; after `make
    demo` the `mlops ...` lines were not on PATH; a shell that exports another MLFLOW_TRACKING_URI
    (or ledger, hosts file) sent them to another registry without a word."""
    import shlex

    from mlops.demo import foreign_settings

    services = {"mlflow": "http://127.0.0.1:5000", "serving": "http://127.0.0.1:8501",
                "hosts": Path("/s/hosts.toml")}
    text = closing_text(services, "digits", 2, Path("/tmp/my state/request.json"), 1, mlops=".venv/bin/mlops")
    curl = next(line for line in text.splitlines() if "curl" in line).split("Predict:", 1)[1].strip()
    assert shlex.split(curl)[-1] == "@/tmp/my state/request.json"
    assert ".venv/bin/mlops sync status" in text and "Stop:      .venv/bin/mlops down" in text
    assert ".venv/bin/mlops sync rollback" in text and "Note:" not in text
    theirs = {"MLFLOW_TRACKING_URI": "http://team:5000", "MLOPS_LEDGER_URL": "postgresql://u@db/l",
              "MLOPS_HOSTS_FILE": "/etc/mlops/hosts.toml", "HOME": "/root"}
    found = foreign_settings(theirs, services)
    assert sorted(found) == ["MLFLOW_TRACKING_URI", "MLOPS_HOSTS_FILE", "MLOPS_LEDGER_URL"]
    assert foreign_settings({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000/", "MLOPS_HOSTS_FILE": "/s/hosts.toml"},
                            services) == {}
    noted = closing_text(services, "digits", 2, Path("/r.json"), 1, shell_env=found)
    assert noted.endswith("Note: your shell sets MLFLOW_TRACKING_URI, MLOPS_HOSTS_FILE, MLOPS_LEDGER_URL, which "
                          "would send these commands elsewhere; unset them first")
    assert "postgresql" not in noted                        # names only: a URL may hold a password


def test_ctrl_d_at_the_approval_prompt_is_no_approval(monkeypatch):
    """Found by a sweep (2026-12-04): an EOFError traceback, with both services left running."""
    import builtins

    from mlops.demo import DemoOptions, approve

    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr(builtins, "input", eof)
    assert approve(3, DemoOptions(yes=False)) is False
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")
    assert approve(3, DemoOptions(yes=False)) is True


@pytest.mark.parametrize("folder", ["my state", "c#-projects", "what?", "100%41", 'say "hi"', "back\\slash", "é😀"])
def test_the_hosts_file_names_the_serving_folder_whatever_its_path_holds(tmp_path, folder):
    """Found by review (2026-12-06, fourteenth stop): the demo wrote ``file://<path>`` as it was, so
    a state folder with ``#`` or ``?`` was refused at the deploy step (after v1 was promoted) as a
    URL with a fragment or a query, ``%41`` named another folder, and ``"`` or ``\\`` was not TOML."""
    from serving_sync.hosts import parse_hosts_toml

    base = tmp_path / folder / ".mlops" / "serving"
    (host,) = parse_hosts_toml(hosts_toml(base, "http://127.0.0.1:8501", "127.0.0.1:8500"), "hosts.toml")
    assert host.target.scheme == "file" and host.target.path == str(base)


def test_ctrl_c_at_the_end_leaves_the_services_to_a_demo_started_since(tmp_path, monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): the demo releases its lock before it waits for
    Ctrl-C, so a second `make demo` in another terminal runs on the same services; a Ctrl-C in the
    first terminal then stopped both servers under the second demo's training or deploy."""
    import subprocess
    import time
    from types import SimpleNamespace

    from mlops import demo, detached_service
    from mlops_common.procs import pid_alive, process_identity

    home = tmp_path / "mlops"
    home.mkdir()
    monkeypatch.setenv("MLOPS_HOME", str(home))
    servers = {}
    for name in ("model-server", "mlflow-server"):      # stand-ins for the two servers, as recorded
        p = subprocess.Popen(["sleep", "120"], start_new_session=True)
        servers[name] = p
        detached_service.write_record(home, detached_service.Service(
            name, p.pid, "http://127.0.0.1:9", home / f"{name}.log", process_identity(p.pid)))

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "time", SimpleNamespace(sleep=ctrl_c, monotonic=time.monotonic))   # the demo's wait only
    try:
        with open(home / "demo.lock", "a+") as held:          # the second demo, running
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            demo.wait_for_ctrl_c()
            assert all(p.poll() is None and pid_alive(p.pid) for p in servers.values())
        demo.wait_for_ctrl_c()                               # no other demo: Ctrl-C stops them
        for p in servers.values():
            p.wait(timeout=30)
    finally:
        for p in servers.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_the_wait_at_the_end_names_mlops_down_as_this_shell_reaches_it(tmp_path, monkeypatch, capsys):
    """Found by review (2026-12-07, nineteenth stop): after `make demo`, which puts no `mlops` on
    PATH, the closing text's "Stop:" line named the virtualenv's script but the line under it said
    "Press Ctrl-C to stop them (or run `mlops down` later)": command not found."""
    import sys
    import time
    from types import SimpleNamespace

    from mlops import demo

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")         # no `mlops` on it, as after `make demo`
    monkeypatch.chdir(tmp_path)

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "time", SimpleNamespace(sleep=ctrl_c, monotonic=time.monotonic))
    demo.wait_for_ctrl_c()
    script = Path(sys.executable).parent / "mlops"
    assert script.exists()                              # the test runs from the project's virtualenv
    out = capsys.readouterr().out
    assert f"(or run `{script} down` later)" in out, out


def test_the_wait_at_the_end_ends_when_mlops_down_stopped_the_services(tmp_path, monkeypatch, capsys):
    """Found by review (2026-12-07, nineteenth stop): the README says the demo keeps the services
    running until Ctrl-C "or `make down` from another terminal"; after that `make down` the demo
    still waited, for good, for a Ctrl-C to stop services that no longer ran. Stand-ins for the two
    servers, as recorded; the real `mlops down` in another process."""
    import subprocess
    import threading

    from mlops import demo, detached_service
    from mlops_common.procs import process_identity

    home = tmp_path / "mlops"
    home.mkdir()
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setattr(demo, "WAIT_POLL_SECONDS", 0.1, raising=False)
    servers = []
    for name in ("model-server", "mlflow-server"):
        p = subprocess.Popen(["sleep", "120"], start_new_session=True)
        servers.append(p)
        detached_service.write_record(home, detached_service.Service(
            name, p.pid, "http://127.0.0.1:9", home / f"{name}.log", process_identity(p.pid)))
    waiting = threading.Thread(target=demo.wait_for_ctrl_c, daemon=True)
    try:
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive(), "the wait ended while both services ran"
        down = run_mlops("down", env={"MLOPS_HOME": str(home), "PYTHONPATH": str(REPO)}, timeout=120)
        assert down.returncode == 0 and "stopped: mlflow-server, model-server" in down.stdout, down.stdout + down.stderr
        waiting.join(timeout=30)
        assert not waiting.is_alive(), "the demo still waits for a Ctrl-C after `mlops down`"
        assert "the services are no longer running" in capsys.readouterr().out
    finally:
        for p in servers:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


def test_a_version_not_approved_is_told_how_to_approve_it_later_as_this_shell_can(tmp_path, monkeypatch, capsys):
    """Found by review (2026-12-07, nineteenth stop): "not approved. Approve later with: mlops registry
    promote --version 1 && mlops sync deploy": after `make demo` no `mlops` is on PATH, and after the
    Ctrl-C the demo then asks for, `mlops up` brought MLflow back but nothing the model server: the
    promotion went through and the deploy failed, production on a version no host served."""
    import sys

    from mlops import demo

    monkeypatch.setenv("PATH", "/usr/bin:/bin")         # no `mlops` on it, as after `make demo`
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "gate", lambda model, version: (True, "passed"))
    monkeypatch.setattr(demo, "approve", lambda version, opts: False)
    assert demo.release("digits", 1, demo.DemoOptions(), 3, {}) is False
    script = Path(sys.executable).parent / "mlops"
    out = capsys.readouterr().out
    assert f"with: {script} registry promote --version 1 && {script} sync deploy" in out, out
    assert "while these services still run" in out, out


def test_mlflows_port_held_by_another_program_names_the_setting_the_demo_takes(tmp_path):
    """Found by review (2026-12-06, fourteenth stop): the line said to set MLOPS_MLFLOW_PORT "(or
    --port)", and `mlops demo` has no --port (`mlops up` has)."""
    import socket

    home = tmp_path / "mlops"
    env = _env(home)
    with socket.create_server(("127.0.0.1", int(env["MLOPS_MLFLOW_PORT"]))):
        line = _one_line(_demo(home, env=env))
    assert line.endswith(f"port {env['MLOPS_MLFLOW_PORT']} on 127.0.0.1 is taken by another program; set "
                         f"MLOPS_MLFLOW_PORT to a free port"), line
    _started_nothing(home)


def test_an_error_mid_demo_says_which_services_keep_running_and_how_to_stop_them(tmp_path, monkeypatch, capsys):
    """Found by review (2026-12-06, seventeenth stop): a refusal after the services started (e.g.
    `.mlops/hosts.toml` on a full disk) left them running and said nothing about them: the hint
    came only after an interrupt. It now names them and `mlops down`, before the error line."""
    import subprocess

    from mlops import demo, detached_service
    from mlops_common.procs import process_identity

    home = tmp_path / "mlops"
    home.mkdir()
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setattr(demo, "check_options", lambda opts: None)
    p = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        detached_service.write_record(home, detached_service.Service(
            "model-server", p.pid, "http://127.0.0.1:9", home / "model-server.log", process_identity(p.pid)))

        def full_disk(opts):
            raise ConfigError("cannot write .mlops/hosts.toml (No space left on device)")

        monkeypatch.setattr(demo, "run", full_disk)
        with pytest.raises(ConfigError):
            demo.main(demo.DemoOptions(), detach=True)
        err = capsys.readouterr().err
        assert "the local services keep running (model-server;" in err and "down` stops them" in err, err
        p.kill()
        p.wait(timeout=10)
        with pytest.raises(ConfigError):            # nothing running: nothing said about services
            demo.main(demo.DemoOptions(), detach=True)
        assert "keep running" not in capsys.readouterr().err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
