"""The CircleCI workflows of .circleci/config.yml, run end to end on this machine.

Real MLflow server, real OpenSSH sshd (the serving host is reached over SSH with a pinned host
key), the local TF-Serving-compatible server, and a local CircleCI-like API that records who
approved. The tests run in order and share one pipeline history:

1. build-deploy: v1 trained, gated, held until approved, promoted, deployed, smoke-tested.
2. retrain-deploy (good batch): v2 serves after approval; v1 stays loaded for an instant rollback.
3. retrain-deploy (bad batch): the gate fails, `hold` is never reached, v2 keeps serving.
4. rollback: v1 serves again; the ledger says who and why.
5. the runs compare side by side through MLflow's REST API.
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.lab.circleci import LocalCircleCI

pytestmark = pytest.mark.slow

SECRET_PASSWORD = "pw-" + uuid.uuid4().hex  # a known fake secret: it must appear nowhere we write


class Receiver:
    """A local stand-in for a Slack incoming webhook: records what it is sent."""

    def __init__(self):
        self.posts: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/services/T0/B0/xyz"

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def pipeline(mlflow_server, sshd, ssh_user_key, tfserving_session_factory, _circleci_server,
             digits_batches, tmp_path_factory):
    """Everything the workflows need: contexts, a serving host over SSH, the CircleCI-like API."""
    from tests.fixtures.circleci_api import CircleCIAPI

    root = tmp_path_factory.mktemp("circleci-e2e")
    base = root / "serving"
    server = tfserving_session_factory(base)
    hosts = root / "hosts.toml"
    hosts.write_text(
        "[[hosts]]\n"
        'name = "serving-1"\n'
        f'target = "{sshd.target(base)}"\n'
        f'rest_url = "{server.rest_url}"\n'
        f'grpc = "{server.grpc_address}"\n'
        'known_hosts = "~/.ssh/known_hosts"\n'
    )
    api: CircleCIAPI = _circleci_server
    slack = Receiver()
    model = f"e2e-{uuid.uuid4().hex[:8]}"
    contexts = {
        "mlops-tracking": {
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLOPS_MODEL_NAME": model,
            "MLOPS_LEDGER_URL": f"sqlite:///{root / 'ledger.db'}",
            "SLACK_WEBHOOK_URL": slack.url,
            "MLFLOW_TRACKING_PASSWORD": SECRET_PASSWORD,  # unused by the open server; must never leak
        },
        "mlops-deploy": {
            "CIRCLE_TOKEN": api.token,
            "CIRCLECI_API_URL": api.url,
            "MLOPS_HOSTS_FILE": str(hosts),
            "MLOPS_KNOWN_HOSTS": Path(sshd.known_hosts).read_text().strip(),
        },
    }
    state = {"root": root, "ssh_key": ssh_user_key[0], "server": server, "api": api, "slack": slack, "model": model,
             "contexts": contexts, "approvals": [], "results": {}}
    yield state
    slack.close()


def run(pipeline, name: str, *, parameters: dict, approver: str | None, trigger="webhook"):
    ci = LocalCircleCI(pipeline["root"] / "runs", parameters={"dataset": "digits", **parameters},
                       trigger_source=trigger, contexts=pipeline["contexts"],
                       project_env={"TF_CPP_MIN_LOG_LEVEL": "3", "MLOPS_INFRA_SERVER": "local"},  # no Docker here
                       ssh_key=pipeline["ssh_key"],
                       skip_jobs={"test"})    # `bash .ci/run` is this very suite
    assert ci.workflows() == [name]
    api = pipeline["api"]

    def on_start(workflow_id, jobs):
        approval = next((j for j in jobs if j.startswith("hold")), "hold")
        api.set_pipeline_config(ci.pipeline_id, compiled=ci.compiled())    # what a rollback's approval is for
        api.add_workflow(workflow_id=workflow_id, approval_name=approval, pipeline_id=ci.pipeline_id, name=name)

    def approve(job, workflow_id):
        pipeline["approvals"].append((name, job, _registry_state(pipeline)))
        if approver:
            api.approve(workflow_id, approver)
        return approver

    return ci, ci.run_workflow(name, approve=approve, on_start=on_start)


def _registry_state(pipeline) -> dict:
    from registry import versions

    os.environ["MLFLOW_TRACKING_URI"] = pipeline["contexts"]["mlops-tracking"]["MLFLOW_TRACKING_URI"]
    model = pipeline["model"]
    return {"production": versions.production_version(model),
            "versions": {v.version: (v.aliases, v.validation_status) for v in versions.list_versions(model)}}


def _stable_version(server, model) -> int:
    r = requests.get(f"{server.rest_url}/v1/models/{model}/labels/stable/metadata", timeout=10)
    r.raise_for_status()
    return int(r.json()["model_spec"]["version"])


def _unversioned_version(server, model) -> int:
    states = requests.get(f"{server.rest_url}/v1/models/{model}", timeout=10).json()["model_version_status"]
    return max(int(s["version"]) for s in states if s["state"] == "AVAILABLE")


def _golden(model, version, tmp):
    from registry import versions

    bundle = versions.download_bundle(model, version, tmp / f"bundle-{version}")
    return bundle.golden_request, bundle.golden_response


def _predict_stable(server, model, request):
    r = requests.post(f"{server.rest_url}/v1/models/{model}/labels/stable:predict", json=request, timeout=10)
    r.raise_for_status()
    return r.json()


def _assert_close(got, expected):
    import numpy as np

    assert np.allclose(np.asarray(got), np.asarray(expected), atol=1e-4), "served outputs differ from the golden set"


def _ledger(pipeline):
    from registry.ledger import Ledger

    return Ledger(pipeline["contexts"]["mlops-tracking"]["MLOPS_LEDGER_URL"]).entries(pipeline["model"])


def _assert_no_secret_written(pipeline, result):
    secrets = [SECRET_PASSWORD, pipeline["api"].token]
    for folder in (result.workspace, result.artifacts):
        for path in folder.rglob("*"):
            if path.is_file():
                text = path.read_bytes().decode("utf-8", "replace")
                assert not any(s in text for s in secrets), f"a secret was written to {path}"
    assert {p.name for p in result.workspace.iterdir()} == {"version"}
    for job in result.jobs.values():
        for step in job.steps:
            assert not any(s in step.output for s in secrets), f"a secret reached the log of {job.name}"


def test_build_deploy_trains_gates_waits_for_approval_then_serves_v1(pipeline, tmp_path):
    ci, res = run(pipeline, "build-deploy", parameters={}, approver="alice")
    assert all(res.status(j) in ("success", "approved") for j in res.order), res.log()
    version = int((res.workspace / "version").read_text())
    assert version == 1
    # While held, the version was a candidate and not yet production.
    (_, job, state), = pipeline["approvals"]
    assert job == "hold" and state["production"] is None
    assert "candidate" in state["versions"][1][0] and state["versions"][1][1] == "passed"

    model, server = pipeline["model"], pipeline["server"]
    assert _stable_version(server, model) == 1
    request, expected = _golden(model, 1, tmp_path)
    _assert_close(_predict_stable(server, model, request)["predictions"], expected["predictions"])

    from registry import versions
    info = versions.get_version(model, 1)
    assert info.tags.get("approved_by") == "alice" and info.deploy_status == "deployed"
    actions = [(e.action, e.outcome) for e in _ledger(pipeline)]
    assert ("gate", "passed") in actions and ("promote", "ok") in actions and ("deploy", "ok") in actions
    # Evidence for the approver and results for CircleCI's test tab.
    assert list(res.artifacts.rglob("report.md")), "the gate report was not stored as an artifact"
    (page,) = res.artifacts.rglob("report.html")
    assert 'class="verdict passed">PASSED' in page.read_text() and 'id="per-class-chart"' in page.read_text()
    assert list(res.artifacts.rglob("gate.xml")) and list(res.artifacts.rglob("smoke.xml"))
    _assert_no_secret_written(pipeline, res)
    pipeline["results"]["build"] = res


def test_retrain_with_a_good_batch_serves_v2_and_keeps_v1_warm(pipeline, digits_batches, tmp_path):
    ci, res = run(pipeline, "retrain-deploy", parameters={"run-retrain": True,
                                                          "incoming": str(digits_batches.good)},
                  approver="alice")
    assert all(res.status(j) in ("success", "approved") for j in res.order), res.log()
    model, server = pipeline["model"], pipeline["server"]
    assert int((res.workspace / "version").read_text()) == 2
    assert _stable_version(server, model) == 2 and _unversioned_version(server, model) == 2
    states = {int(s["version"]): s["state"] for s in
              requests.get(f"{server.rest_url}/v1/models/{model}", timeout=10).json()["model_version_status"]}
    assert states.get(1) == "AVAILABLE", f"v1 should stay loaded for an instant rollback: {states}"
    from registry import versions
    assert versions.get_version(model, 2).tags.get("retrained_from") == "1"
    _assert_no_secret_written(pipeline, res)


def test_retrain_with_the_bad_batch_stops_at_the_gate(pipeline, digits_batches):
    approvals_before = len(pipeline["approvals"])
    posts_before = len(pipeline["slack"].posts)
    ci, res = run(pipeline, "retrain-deploy", parameters={"run-retrain": True,
                                                          "incoming": str(digits_batches.bad)},
                  approver="alice")
    assert res.status("retrain") == "success" and res.status("gate") == "failed", res.log()
    assert all(res.status(j) == "blocked" for j in ("infra-validate", "hold", "promote-and-deploy"))
    assert len(pipeline["approvals"]) == approvals_before, "nobody may be asked to approve a failed gate"
    model, server = pipeline["model"], pipeline["server"]
    assert _stable_version(server, model) == 2
    gate_rows = [e for e in _ledger(pipeline) if e.action == "gate" and e.to_version == 3]
    assert gate_rows and gate_rows[-1].outcome == "failed" and "accuracy" in (gate_rows[-1].reason or "")
    # CircleCI stores artifacts and test results after a failed step too: the failed gate's report
    # and JUnit file are there for the person who reads why (the harness skipped them until 2026-12-05).
    gate_job = res.artifacts / "gate"
    assert list(gate_job.rglob("report.html")) and list(gate_job.rglob("gate.xml")), res.log()
    # The on_fail step told the team.
    new_posts = pipeline["slack"].posts[posts_before:]
    assert new_posts and "gate" in new_posts[-1]["text"]
    _assert_no_secret_written(pipeline, res)


def test_rollback_through_the_api_serves_v1_again_and_records_who_and_why(pipeline, tmp_path):
    reason = "customer reports wrong digits since v2"
    ci, res = run(pipeline, "rollback", parameters={"run-rollback": True, "rollback-reason": reason},
                  approver="bob")
    assert all(res.status(j) in ("success", "approved") for j in res.order), res.log()
    model, server = pipeline["model"], pipeline["server"]
    assert _stable_version(server, model) == 1 and _unversioned_version(server, model) == 1
    request, expected = _golden(model, 1, tmp_path)
    _assert_close(_predict_stable(server, model, request)["predictions"], expected["predictions"])
    row = [e for e in _ledger(pipeline) if e.action == "rollback"][-1]
    assert (row.from_version, row.to_version) == (2, 1)
    assert row.reason == reason
    details = json.loads(row.details or "{}") if isinstance(row.details, str) else (row.details or {})
    assert "bob" in (row.actor or "") or details.get("approved_by") == "bob"


def test_runs_compare_side_by_side_through_the_mlflow_rest_api(pipeline):
    uri = pipeline["contexts"]["mlops-tracking"]["MLFLOW_TRACKING_URI"]
    model = pipeline["model"]
    runs = {}
    for v in (1, 2):
        mv = requests.get(f"{uri}/api/2.0/mlflow/model-versions/get",
                          params={"name": model, "version": str(v)}, timeout=10).json()["model_version"]
        run = requests.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": mv["run_id"]},
                           timeout=10).json()["run"]
        runs[v] = ({p["key"]: p["value"] for p in run["data"].get("params", [])},
                   {m["key"]: m["value"] for m in run["data"].get("metrics", [])}, mv["run_id"])
    (p1, m1, _), (p2, m2, run2) = runs[1], runs[2]
    assert p1["dataset"] == p2["dataset"] == "digits"
    assert "incoming" in p2 and p2.get("retrained_from") == "1"
    assert 0.8 <= m1["heldout_accuracy"] <= 1 and 0.8 <= m2["heldout_accuracy"] <= 1
    history = requests.get(f"{uri}/api/2.0/mlflow/metrics/get-history",
                           params={"run_id": run2, "metric_key": "val_accuracy"}, timeout=10).json()
    assert len(history["metrics"]) >= 2, "per-epoch metrics are what the UI charts"
