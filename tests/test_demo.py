"""The README's first command: `mlops demo` runs the whole flow on the embedded default."""
from __future__ import annotations

import json

import pytest
import requests

from mlops.local_services import free_port, read_record
from tests.helpers import run_mlops

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_flow_and_leaves_services_running(tmp_path):
    home = tmp_path / "mlops"
    env = {"MLOPS_HOME": str(home), "MLOPS_MLFLOW_PORT": str(free_port()),
           "MLOPS_SERVING_REST_PORT": str(free_port()), "MLOPS_SERVING_GRPC_PORT": str(free_port()),
           "MLOPS_MODEL_NAME": "demo-model", "MLFLOW_TRACKING_URI": "", "MLOPS_HOSTS_FILE": "",
           "MLOPS_LEDGER_URL": ""}
    try:
        p = run_mlops("demo", "--yes", "--detach", env=env, cwd=tmp_path, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr
        out = p.stdout
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
        assert requests.get(f"{mlflow.url}/health", timeout=10).status_code == 200
        assert f"{serving.url}/v1/models/demo-model:predict" in out and "mlops sync rollback" in out
    finally:
        down = run_mlops("down", env=env, cwd=tmp_path, timeout=120)
    assert down.returncode == 0 and "mlflow-server" in down.stdout and "model-server" in down.stdout
    assert read_record(home, "model-server") is None and read_record(home, "mlflow-server") is None
