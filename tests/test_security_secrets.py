"""Secrets stay in the environment; MLflow's basic-auth app works end to end.

One flow through the real command line, run once for the module, against ``mlflow server
--app-name basic-auth`` (a non-admin user created through MLflow's REST API), with a ledger in
PostgreSQL (password in ``MLOPS_LEDGER_URL``), the CircleCI-like API (``CIRCLE_TOKEN``, to read
who approved), a real S3 server (``AWS_SECRET_ACCESS_KEY``) and known values for every other
secret variable: validate an S3 batch, train, gate, promote (approver from CircleCI), deploy to a
local host, smoke-test, and one pass of ``sync watch`` with its webhook receiver
(``MLOPS_WEBHOOK_SECRET``).

Then every place something could leak is read back and searched for every secret (and for the
basic-auth header value): the commands' stdout and stderr; every param, tag and metric key of
every run, every version and registered-model tag, alias and description (MLflow's REST API, as
admin); every file under the MLflow server's folder (SQLite DB, auth DB, artifact store, log);
every ledger row; every file under ``$MLOPS_HOME`` and the serving host's base directory. (The
CircleCI workspace and job logs are checked by tests/test_circleci_e2e.py.)
"""
from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.fixtures.faults import one_error_line, tree_bytes
from tests.helpers import run_mlops

pytestmark = pytest.mark.slow


@dataclass
class Flow:
    url: str
    admin: tuple[str, str]
    user: str
    password: str
    env: dict
    secrets: dict                                   # variable -> secret value
    outputs: list = field(default_factory=list)     # (command, CompletedProcess)
    home: Path | None = None
    server_state: Path | None = None
    host_base: Path | None = None
    model: str = ""

    def run(self, *args: str, **extra) -> object:
        start = time.monotonic()
        r = run_mlops(*args, env={**self.env, **extra}, timeout=900)
        self.outputs.append((" ".join(args), r))
        print(f"mlops {' '.join(args)}: exit {r.returncode} in {time.monotonic() - start:.1f}s")
        return r

    def needles(self) -> dict[str, bytes]:
        """Every secret, plus the Authorization header value the credentials make."""
        out = {k: v.encode() for k, v in self.secrets.items()}
        out["basic-auth header"] = base64.b64encode(f"{self.user}:{self.password}".encode())
        return out


@pytest.fixture(scope="module")
def flow(mlflow_basic_auth, postgres_url, _circleci_server, s3_server, serving_pool, digits_batches,
         tmp_path_factory):
    from sqlalchemy.engine import make_url

    srv = mlflow_basic_auth
    user, password = f"deployer-{uuid.uuid4().hex[:6]}", "pw-" + secrets.token_hex(16)
    srv.create_user(user, password)
    home = tmp_path_factory.mktemp("secure-home")
    model = f"secure-{uuid.uuid4().hex[:8]}"
    api = _circleci_server
    workflow = api.add_workflow(approver="alice")
    server = serving_pool.take()
    (home / "hosts.toml").write_text(f'[[hosts]]\nname = "secure-host"\ntarget = "file://{server.base}"\n'
                                     f'rest_url = "{server.rest_url}"\ngrpc = "{server.grpc_address}"\n')
    bucket = s3_server.make_bucket("secure-batches")
    s3_server.client().upload_file(str(digits_batches.good), bucket, "incoming/good.npz")
    ledger_password = make_url(postgres_url).password
    assert ledger_password
    secret_values = {
        "MLFLOW_TRACKING_PASSWORD": password,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "CIRCLE_TOKEN": api.token,
        "MLOPS_WEBHOOK_SECRET": "whsec-" + secrets.token_hex(16),
        "SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/T0/B0/{secrets.token_hex(12)}",
        "MLOPS_LEDGER_URL": postgres_url,
    }
    env = {**s3_server.env(), **secret_values,
           "MLFLOW_TRACKING_URI": srv.url, "MLFLOW_TRACKING_USERNAME": user,
           "MLOPS_HOME": str(home), "MLOPS_MODEL_NAME": model,
           "CIRCLE_WORKFLOW_ID": workflow, "CIRCLE_PIPELINE_ID": "pipe-" + uuid.uuid4().hex[:8],
           "CIRCLECI_API_URL": api.url, "MLOPS_HOSTS_FILE": "", "MLOPS_SYNC_TARGET": ""}
    secret_values["ledger password"] = ledger_password
    f = Flow(srv.url, srv.admin, user, password, env, secret_values, home=home, server_state=srv.state,
             host_base=server.base, model=model)
    steps = [
        ("data", "validate", f"s3://{bucket}/incoming"),
        ("train", "--epochs", "3", "--json"),
        ("registry", "gate", "--version", "1", "--json"),
        ("registry", "promote", "--version", "1", "--json"),
        ("sync", "deploy", "--json"),
        ("sync", "smoke", "--json"),
        ("sync", "watch", "--once", "--webhook-port", "0", "--json"),
        ("registry", "history", "--json"),
        ("registry", "status", "--json"),
    ]
    try:
        for step in steps:
            r = f.run(*step)
            assert r.returncode == 0, f"{' '.join(step)} failed:\n{r.stderr[-3000:]}"
        yield f
    finally:
        serving_pool.give_back(server)


def _admin_get(flow, endpoint: str, params: dict | None = None) -> dict:
    r = requests.get(f"{flow.url}/api/2.0/mlflow/{endpoint}", params=params or {}, auth=flow.admin, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _admin_post(flow, endpoint: str, body: dict) -> dict:
    r = requests.post(f"{flow.url}/api/2.0/mlflow/{endpoint}", json=body, auth=flow.admin, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_whole_flow_authenticates_as_a_created_user(flow):
    # the work really went through the auth app as that user
    promote = json.loads(dict(flow.outputs)["registry promote --version 1 --json"].stdout)
    assert promote["to_version"] == 1 and promote["approved_by"] == "alice"
    smoke = json.loads(dict(flow.outputs)["sync smoke --json"].stdout)
    assert smoke["passed"] is True and smoke["version"] == 1
    rm = _admin_get(flow, "registered-models/get", {"name": flow.model})["registered_model"]
    assert {a["alias"]: a["version"] for a in rm.get("aliases", [])}.get("production") == "1"
    api = f"{flow.url}/api/2.0/mlflow"
    mine = requests.get(f"{api}/registered-models/get", params={"name": flow.model},
                        auth=(flow.user, flow.password), timeout=30)
    assert mine.status_code == 200
    # the auth app is really enforcing: nobody gets in without credentials, and another user
    # (default permission READ) may read but not change what the deploy user owns
    assert requests.get(f"{api}/registered-models/get", params={"name": flow.model}, timeout=30).status_code == 401
    reader = (f"reader-{uuid.uuid4().hex[:6]}", "pw-" + secrets.token_hex(8))
    r = requests.post(f"{api}/users/create", json={"username": reader[0], "password": reader[1]},
                      auth=flow.admin, timeout=30)
    assert r.status_code == 200, r.text
    assert requests.get(f"{api}/registered-models/get", params={"name": flow.model}, auth=reader,
                        timeout=30).status_code == 200
    r = requests.post(f"{api}/registered-models/alias", json={"name": flow.model, "alias": "production",
                                                            "version": "1"}, auth=reader, timeout=30)
    assert r.status_code == 403, r.text


@pytest.mark.parametrize("who", ["wrong password", "unknown user", "no credentials"])
def test_wrong_credentials_are_one_clear_line_that_never_echoes_them(flow, who):
    bad = "not-the-password-" + secrets.token_hex(6)
    creds = {"wrong password": {"MLFLOW_TRACKING_PASSWORD": bad},
             "unknown user": {"MLFLOW_TRACKING_USERNAME": "mallory", "MLFLOW_TRACKING_PASSWORD": bad},
             "no credentials": {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}}[who]
    before = tree_bytes(flow.host_base)
    for args in (("registry", "status"), ("sync", "deploy"), ("registry", "rollback"), ("train", "--epochs", "1")):
        r = run_mlops(*args, env={**flow.env, **creds}, timeout=300)
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and "rejected the credentials (HTTP 401)" in line, (args, line)
        assert "MLFLOW_TRACKING_USERNAME" in line and bad not in r.stderr + r.stdout
    assert tree_bytes(flow.host_base) == before
    assert len(_admin_get(flow, "registered-models/get", {"name": flow.model})["registered_model"]
               ["latest_versions"]) == 1                       # the train above registered nothing


def test_no_secret_reaches_outputs_mlflow_the_ledger_or_any_file(flow):
    from registry.ledger import Ledger

    needles = flow.needles()
    found: list[str] = []

    def search(where: str, data: bytes | str) -> None:
        blob = data.encode() if isinstance(data, str) else data
        found.extend(f"{name} in {where}" for name, n in needles.items() if n in blob)

    search("a planted value", b"..." + needles["CIRCLE_TOKEN"] + b"...")     # the search can fail
    assert found == ["CIRCLE_TOKEN in a planted value"]
    found.clear()
    # 1. what every command printed
    for cmd, r in flow.outputs:
        search(f"output of `mlops {cmd}`", r.stdout + r.stderr)
    # 2. MLflow, read back through its API: runs (params, tags, metric keys), versions, models
    experiments = _admin_post(flow, "experiments/search", {"max_results": 1000})["experiments"]
    runs = _admin_post(flow, "runs/search", {"experiment_ids": [e["experiment_id"] for e in experiments],
                                             "max_results": 1000}).get("runs", [])
    assert runs, "the flow logged no run"
    for run in runs:
        search(f"run {run['info']['run_id']}", json.dumps(run))
    search("experiments", json.dumps(experiments))
    for doc in (_admin_get(flow, "registered-models/search", {"max_results": 1000}),
                _admin_get(flow, "model-versions/search", {"max_results": 1000})):
        search("the model registry", json.dumps(doc))
    # 3. every file of the MLflow server: SQLite DB, auth DB, artifact store (every artifact of
    #    every run), its log
    artifacts = [p for p in (flow.server_state / "mlartifacts").rglob("*") if p.is_file()]
    assert any(p.name == "saved_model.pb" for p in artifacts) and any(p.name == "report.json" for p in artifacts)
    for rel, data in tree_bytes(flow.server_state).items():
        search(f"MLflow server file {rel}", data)
    # 4. the ledger (PostgreSQL), every column of every row
    rows = Ledger(flow.secrets["MLOPS_LEDGER_URL"]).entries()
    assert {r.action for r in rows} >= {"register", "gate", "promote", "deploy", "smoke_test"}
    for row in rows:
        search(f"ledger row {row.id}", repr(row))
    # 5. the state folder and the serving host
    for root in (flow.home, flow.host_base):
        for rel, data in tree_bytes(root).items():
            search(f"{root.name}/{rel}", data)
    assert found == [], found
