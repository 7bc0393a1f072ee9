"""The README's first command: `mlops demo` runs the whole flow on the embedded default."""
from __future__ import annotations

import json
import os

import pytest
import requests

from mlops.local_services import read_record
from tests.helpers import run_mlops

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


def test_a_demo_whose_first_version_fails_the_gate_exits_non_zero(tmp_path):
    """Nothing serves when v1 fails the gate: the quick start must not end "Done" with exit 0."""
    from mlops.local_services import free_port

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
