"""The README's first command: `mlops demo` runs the whole flow on the embedded default."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from mlops.detached_service import read_record
from tests.helpers import run_mlops, sigterm_when_held

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_flow_and_leaves_services_running(demo_flow):
    """The demo runs once per session (tests/fixtures/demo.py); `mlops down` at the end of the
    session must stop both services (checked in the fixture's teardown)."""
    demo_flow.check()
    home, out = demo_flow.home, demo_flow.process.stdout
    assert "passed the quality gate" in out and "failed the quality gate" in out
    assert "v1 kept warm" in out
    serving = read_record(home, "model-server")
    mlflow = read_record(home, "mlflow-server")
    assert serving and mlflow, "the services must stay up after the demo"
    # v2 serves through the stable label and the unversioned route; the curl example works.
    meta = requests.get(f"{serving.url}/v1/models/demo-model/labels/stable/metadata", timeout=10).json()
    assert meta["model_spec"]["version"] == "2"
    request = json.loads((home / "demo" / "request.json").read_text())
    r = requests.post(f"{serving.url}/v1/models/demo-model:predict", json=request, timeout=10)
    assert r.status_code == 200 and len(r.json()["predictions"]) == len(request["instances"])
    # the local host serves TF Serving's Prometheus page, as install_server.sh enables it on real hosts
    page = requests.get(f"{serving.url}/monitoring/prometheus/metrics", timeout=10)
    assert page.status_code == 200
    assert ':tensorflow:serving:request_count{model_name="demo-model",status="OK"}' in page.text
    assert requests.get(f"{mlflow.url}/health", timeout=10).status_code == 200
    assert f"{serving.url}/v1/models/demo-model:predict" in out and "mlops sync rollback" in out


def _group_cmdlines(pgid: int) -> list[str]:
    """Command lines of the processes in process group ``pgid`` (a service mlops started leads one)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:   # field 5: pgrp
            found.append(cmdline)
    return found


def test_the_local_mlflow_server_runs_without_mlflows_job_runner(demo_flow):
    """MLflow 3 starts a job runner for its GenAI jobs (about eight more Python processes); the
    servers mlops starts leave it off (mlops/local_services.py), and nothing here needs it."""
    demo_flow.check()
    mlflow = read_record(demo_flow.home, "mlflow-server")
    group = _group_cmdlines(mlflow.pid)
    assert any("mlflow" in c and "server" in c for c in group), group     # the scan sees the server
    assert not [c for c in group if "mlflow.server.jobs" in c or "huey" in c], group


@pytest.fixture(scope="module")
def served_once(tmp_path_factory):
    """A state of its own (the session's demo is shared with the UI tests, which count its
    versions): one quick demo that serves v1, the services left up; `mlops down` at the end."""
    from mlops.ports import free_port

    cwd = tmp_path_factory.mktemp("demo-again")
    env = {"MLOPS_HOME": str(cwd / "state"), "MLOPS_MLFLOW_PORT": str(free_port()),
           "MLOPS_SERVING_REST_PORT": str(free_port()), "MLOPS_SERVING_GRPC_PORT": str(free_port()),
           "MLOPS_MODEL_NAME": "demo-again", "MLFLOW_TRACKING_URI": "", "MLOPS_HOSTS_FILE": "",
           "MLOPS_LEDGER_URL": ""}
    try:
        first = run_mlops("demo", "--yes", "--detach", "--quick", env=env, cwd=cwd, timeout=600)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        yield cwd, env
    finally:
        down = run_mlops("down", env=env, cwd=cwd, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def test_a_second_demo_on_the_same_state_still_says_what_serves_and_how_to_use_it(served_once):
    """Found by a sweep (2026-12-04): run again, the demo's new version fails against the one the
    first run served, and the closing text (URLs, curl, rollback, stop) never printed. Also: a team
    ledger exported in the shell received the demo's rows."""
    cwd, env = served_once
    team_ledger = cwd / "team-ledger.db"
    r = run_mlops("demo", "--yes", "--detach", "--quick", "--epochs", "1", cwd=cwd, timeout=600,
                  env={**env, "MLOPS_LEDGER_URL": f"sqlite:///{team_ledger}"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed the quality gate" in r.stdout
    assert "/v1/models/demo-again:predict -d @" in r.stdout and "down" in r.stdout.splitlines()[-2], r.stdout
    assert "nothing to roll back to yet: v1 is the first version to serve production" in r.stdout
    assert "Note: your shell sets MLOPS_LEDGER_URL" in r.stdout
    assert not team_ledger.exists()                 # the demo's rows went to its own ledger
    serving = read_record(Path(env["MLOPS_HOME"]), "model-server")
    meta = requests.get(f"{serving.url}/v1/models/demo-again/labels/stable/metadata", timeout=10).json()
    assert meta["model_spec"]["version"] == "1"     # what the first run served still serves


def test_the_demo_trains_in_its_own_experiment_whatever_the_shell_names_for_another_server(served_once):
    """Found by review (2026-12-07, nineteenth stop): the demo pointed itself at its own MLflow server
    but kept the shell's MLFLOW_EXPERIMENT_ID (set for the team's server): its training stopped with
    "No Experiment with id=... exists" after both services had started; MLFLOW_EXPERIMENT_NAME filed
    its runs under that name, not the model's experiment the README points at."""
    from mlflow import MlflowClient

    cwd, env = served_once
    client = MlflowClient(read_record(Path(env["MLOPS_HOME"]), "mlflow-server").url)
    runs_before = len(client.search_runs([client.get_experiment_by_name("demo-again").experiment_id]))
    r = run_mlops("demo", "--yes", "--detach", "--quick", "--epochs", "1", cwd=cwd, timeout=600,
                  env={**env, "MLFLOW_EXPERIMENT_ID": "424242", "MLFLOW_EXPERIMENT_NAME": "team-experiment",
                       "MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert client.get_experiment_by_name("team-experiment") is None
    assert len(client.search_runs([client.get_experiment_by_name("demo-again").experiment_id])) == runs_before + 1


def test_a_demo_stopped_midway_says_what_keeps_running_and_leaves_no_half_registered_version(served_once,
                                                                                             tmp_path):
    """SIGTERM (a cancelled job, `timeout`) killed the demo at once: its MLflow run stayed RUNNING
    for good and nothing said the services were still up (found by a sweep, 2026-12-04). Held
    where MLflow has created the version and its ledger row is not written yet."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    cwd, env = served_once
    home = Path(env["MLOPS_HOME"])
    marker = tmp_path / "marker"
    full_env = {**os.environ, **env, "MLOPS_TEST_PAUSE_AT": "register:after_version",
                "MLOPS_TEST_PAUSE_MARKER": str(marker)}
    client = MlflowClient(read_record(home, "mlflow-server").url)
    before = {v.version for v in client.search_model_versions("name='demo-again'")}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "demo", "--yes", "--detach", "--quick", "--epochs", "1"],
                            env=full_env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = sigterm_when_held(proc, marker)
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1] == "interrupted" and "Traceback" not in err, err[-3000:]
    assert lines[-2].startswith("the local services keep running (state in ") and lines[-2].endswith("down` stops them")
    assert {v.version for v in client.search_model_versions("name='demo-again'")} == before
    assert read_record(home, "mlflow-server") and read_record(home, "model-server")


def test_the_demo_runs_behind_a_proxy_that_cannot_reach_its_own_services(served_once):
    """Found by review (2026-12-07, nineteenth stop): with HTTP_PROXY set and 127.0.0.1 not in
    NO_PROXY (a company network), every request of the demo to its own services went to the proxy:
    its MLflow server, answering, was taken for dead after 120 s and stopped. The demo now reaches
    its loopback services directly (here the proxy is a port nothing listens on): the running
    server is reused, and a version is trained, gated, promoted and deployed."""
    from mlops.ports import free_port

    cwd, env = served_once
    home = Path(env["MLOPS_HOME"])
    before = read_record(home, "mlflow-server")
    dead = f"http://127.0.0.1:{free_port()}"
    proxied = {**env, "no_proxy": "", "NO_PROXY": "",
               **{name: dead for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY")}}
    r = run_mlops("demo", "--yes", "--detach", "--quick", cwd=cwd, timeout=600, env=proxied)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "deployed v" in r.stdout and "Done in" in r.stdout, r.stdout
    assert read_record(home, "mlflow-server").pid == before.pid      # reused, not stopped


def test_the_demo_deploys_under_a_umask_that_lets_any_user_write(tmp_path):
    """Found by review (2026-12-07, nineteenth stop): under umask 000 (WSL, some containers) the demo
    wrote its state folder and hosts file writable by any user, and its own deploy refused that hosts
    file ("may be written by any user ... chmod o-w"), once v1 had been promoted: production on a
    version no host served."""
    import stat

    from mlops.ports import free_port

    home = tmp_path / "mlops"
    env = {"MLOPS_HOME": str(home), "MLOPS_MLFLOW_PORT": str(free_port()),
           "MLOPS_SERVING_REST_PORT": str(free_port()), "MLOPS_SERVING_GRPC_PORT": str(free_port()),
           "MLOPS_MODEL_NAME": "demo-umask", "MLFLOW_TRACKING_URI": "", "MLOPS_HOSTS_FILE": "",
           "MLOPS_LEDGER_URL": "", "MLOPS_GATE_MIN_ACCURACY": "0.1"}
    before = os.umask(0)                # the demo's process inherits it
    try:
        r = run_mlops("demo", "--quick", "--yes", "--detach", "--epochs", "1", env=env, cwd=tmp_path, timeout=600)
    finally:
        os.umask(before)
        down = run_mlops("down", env=env, cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stderr
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "deployed v1 of 'demo-umask'" in r.stdout, r.stdout
    for path in (home, home / "hosts.toml"):
        assert not path.stat().st_mode & stat.S_IWOTH, oct(path.stat().st_mode)


def test_a_demo_whose_first_version_fails_the_gate_exits_non_zero(tmp_path):
    """Nothing serves when v1 fails the gate: the quick start must not end "Done" with exit 0."""
    from mlops.ports import free_port

    home = tmp_path / "mlops"
    env = {"MLOPS_HOME": str(home), "MLOPS_MLFLOW_PORT": str(free_port()),
           "MLOPS_SERVING_REST_PORT": str(free_port()), "MLOPS_SERVING_GRPC_PORT": str(free_port()),
           "MLOPS_MODEL_NAME": "demo-gate-fails", "MLFLOW_TRACKING_URI": "", "MLOPS_HOSTS_FILE": "",
           "MLOPS_LEDGER_URL": "", "MLOPS_GATE_MIN_ACCURACY": "0.9999"}
    try:
        r = run_mlops("demo", "--quick", "--yes", "--detach", "--epochs", "1", env=env, cwd=tmp_path, timeout=600)
    finally:
        down = run_mlops("down", env=env, cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stderr
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: the first version failed the gate:"), r.stderr
