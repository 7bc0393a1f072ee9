"""`mlops sync watch` and its MLflow webhook receiver.

Unit tests of the signature check (MLflow's own signing code is used to make the deliveries),
the receiver over real HTTP on 127.0.0.1, and one end-to-end run: a real MLflow server
configured for webhooks delivers ``model_version_alias.created`` when ``production`` is moved
back to an older version (as the MLflow UI does it: no CI, no ledger row), the running
``mlops sync watch`` verifies it and rolls the host back.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from serving_sync.webhook import Receiver, sign, verify, wants_reconcile
from tests.helpers import REPO

SECRET = "whsec-" + "k" * 32


def mlflow_signed(secret: str, body: dict, *, timestamp: int | None = None) -> tuple[dict, bytes]:
    """Headers and body exactly as MLflow's delivery code makes them."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    payload = json.dumps(body)
    delivery = secrets.token_hex(8)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return ({"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": ts,
             "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, ts, payload)}, payload.encode())


EVENT = {"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
         "data": {"name": "digits", "alias": "production", "version": "3"}}


def test_our_signature_is_mlflows():
    headers, body = mlflow_signed(SECRET, EVENT)
    assert sign(SECRET, headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"], body.decode()) == \
        headers["X-MLflow-Signature"]


def test_verify_accepts_a_fresh_signed_delivery_and_rejects_everything_else():
    now = time.time()
    headers, body = mlflow_signed(SECRET, EVENT)
    ok = verify(SECRET, headers, body, now=now)
    assert ok.status == 202 and ok.event["data"]["version"] == "3"
    # header names are case-insensitive
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body, now=now).ok
    assert verify("another-secret-of-some-length", headers, body, now=now).status == 401
    assert verify(SECRET, headers, body.replace(b'"3"', b'"1"'), now=now).status == 401      # tampered
    assert verify(SECRET, {**headers, "X-MLflow-Timestamp": str(int(now) + 1)}, body, now=now).status == 401
    assert verify(SECRET, {k: v for k, v in headers.items() if k != "X-MLflow-Signature"}, body,
                  now=now).status == 401
    assert verify(SECRET, {**headers, "X-MLflow-Signature": "v1,AAAA"}, body, now=now).status == 401
    old_headers, old_body = mlflow_signed(SECRET, EVENT, timestamp=int(now) - 301)
    stale = verify(SECRET, old_headers, old_body, now=now)
    assert stale.status == 400 and "replay" in stale.reason
    assert "clock" in stale.reason and "NTP" in stale.reason     # every delivery refused: a clock off
    future_headers, future_body = mlflow_signed(SECRET, EVENT, timestamp=int(now) + 400)
    assert verify(SECRET, future_headers, future_body, now=now).status == 400
    bad_ts = {**headers, "X-MLflow-Timestamp": "yesterday"}
    bad_ts["X-MLflow-Signature"] = sign(SECRET, headers["X-MLflow-Delivery-Id"], "yesterday", body.decode())
    assert verify(SECRET, bad_ts, body, now=now).status == 400


def test_only_production_moves_of_our_model_trigger():
    assert wants_reconcile(EVENT, "digits")
    assert not wants_reconcile(EVENT, "other-model")
    assert not wants_reconcile({**EVENT, "data": {**EVENT["data"], "alias": "candidate"}}, "digits")
    assert not wants_reconcile({**EVENT, "action": "deleted"}, "digits")
    assert not wants_reconcile({"entity": "registered_model", "action": "created", "data": {}}, "digits")


def test_receiver_over_http_triggers_once_per_delivery():
    got = []
    rec = Receiver(SECRET, "digits", got.append).start()
    try:
        url = rec.url
        assert url.startswith("http://127.0.0.1:")
        headers, body = mlflow_signed(SECRET, EVENT)
        r = requests.post(url, data=body, headers={**headers, "X-MLflow-Signature": "v1,Zm9v"}, timeout=10)
        assert r.status_code == 401 and got == []
        r = requests.post(url, data=body, headers=headers, timeout=10)
        assert r.status_code == 202 and len(got) == 1 and got[0]["data"]["version"] == "3"
        r = requests.post(url, data=body, headers=headers, timeout=10)      # MLflow retried the same delivery
        assert r.status_code == 200 and "duplicate" in r.json()["message"] and len(got) == 1
        h2, b2 = mlflow_signed(SECRET, {**EVENT, "data": {**EVENT["data"], "alias": "candidate"}})
        r = requests.post(url, data=b2, headers=h2, timeout=10)
        assert r.status_code == 200 and "ignored" in r.json()["message"] and len(got) == 1
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(2 * 1024 * 1024))    # announced, never read
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        assert requests.get(url, timeout=10).status_code == 405
        assert rec.counts["accepted"] == 1 and rec.counts["rejected_401"] == 1
    finally:
        rec.stop()


def test_watch_needs_the_secret_in_the_environment(deploy_env):
    deploy_env.add_host("file")
    r = deploy_env.cli("sync", "watch", "--once", "--webhook-port", "0", extra_env={"MLOPS_WEBHOOK_SECRET": ""})
    assert r.returncode == 2 and "error: --webhook-port needs MLOPS_WEBHOOK_SECRET" in r.stderr
    r = deploy_env.cli("sync", "watch", "--once", "--webhook-port", "0",
                       extra_env={"MLOPS_WEBHOOK_SECRET": "q7x9z"})
    assert r.returncode == 2 and "too short (5 characters)" in r.stderr and "q7x9z" not in r.stderr
    # the variable `registry webhook create --secret-env` named is the one read (it was always
    # MLOPS_WEBHOOK_SECRET, so a webhook created with another variable could never be verified)
    r = deploy_env.cli("sync", "watch", "--once", "--webhook-port", "0", "--secret-env", "HOOK_SECRET",
                       extra_env={"MLOPS_WEBHOOK_SECRET": "", "HOOK_SECRET": ""})
    assert r.returncode == 2 and "error: --webhook-port needs HOOK_SECRET" in r.stderr
    r = deploy_env.cli("sync", "watch", "--once", "--webhook-port", "0", "--secret-env", "HOOK_SECRET",
                       extra_env={"MLOPS_WEBHOOK_SECRET": "", "HOOK_SECRET": "q7x9z"})
    assert r.returncode == 2 and "HOOK_SECRET is too short (5 characters)" in r.stderr and "q7x9z" not in r.stderr
    r = deploy_env.cli("sync", "watch", "--once", "--webhook-port", "0", "--secret-env", "q7x9z-secret")
    assert r.returncode == 2 and "NAME of an environment variable" in r.stderr and "q7x9z" not in r.stderr


def test_watch_once_deploys_when_production_moved_and_then_is_a_no_op(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.register("a")
    env.promote(v1)
    r = env.cli("sync", "watch", "--once", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(p["trigger"], p["status"], p["version"]) for p in doc["passes"]] == [("start", "deployed", v1)]
    env.serves(host, v1)
    r = env.cli("sync", "watch", "--once", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["passes"][0]["status"] == "up_to_date"


def test_watch_once_with_a_broken_version_rolls_back_and_exits_3(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    bad = env.register("golden_edited")
    env.promote(bad)
    r = env.cli("sync", "watch", "--once")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "golden_outputs" in r.stderr and "Traceback" not in r.stderr
    env.serves(host, v1)
    assert env.production() == v1


def test_watch_once_whose_deploy_is_refused_is_one_line_without_grpcs_thread_tracebacks(deploy_env):
    """Found by the bad-input sweep (2026-12-05, ninth stop): a watch pass observes the hosts (gRPC
    reachability), its deploy observes them again, then refuses at once (there ``--canary 2`` of 2
    hosts, refused at the watch's start since; here a bake on hosts without a metrics page): the
    command exited within gRPC's connectivity poll and closed the channels under it, and
    "ValueError: Cannot invoke RPC: Channel closed!" came as a thread traceback per host after
    the one error line."""
    env = deploy_env
    env.add_hosts(2)                        # servers without --monitoring_config_file
    env.promote(env.register("a"))          # production on no host yet: the pass deploys
    r = env.cli("sync", "watch", "--once", "--bake", "1")
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cannot read TF Serving's metrics" in lines[0], \
        r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_a_restarted_watcher_does_not_retry_a_version_whose_deploy_failed(deploy_env):
    """The failure is remembered in the registry (deploy_status=failed), not in the process: a new
    watcher that finds the failed version in production again skips it; a new promotion clears it."""
    from registry.client import tracking_client

    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    bad = env.register("golden_edited")
    env.promote(bad)
    assert env.cli("sync", "watch", "--once").returncode == 3       # first watcher: rolled back
    assert env.production() == v1 and env.tags(bad)["deploy_status"] == "failed"
    # The alias is moved back by hand in the MLflow UI (no promotion through mlops, no ledger row).
    tracking_client().set_registered_model_alias(env.model, "production", str(bad))
    deploys_before = len(env.ledger(("deploy",)))
    r = env.cli("sync", "watch", "--once", "--json")                # a new watcher process
    assert r.returncode == 0, r.stdout + r.stderr
    first = json.loads(r.stdout)["passes"][0]
    assert (first["status"], first["version"]) == ("skipped", bad), first
    assert "deploy_status=failed" in first["message"]
    assert len(env.ledger(("deploy",))) == deploys_before            # nothing was tried
    env.serves(host, v1)
    env.promote(bad)                                 # a promotion through mlops clears the memory
    assert env.cli("sync", "watch", "--once").returncode == 3


# --- end to end: MLflow delivers the webhook ------------------------------------------------------
@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory):
    """An MLflow server that may deliver webhooks to a plain-http receiver on 127.0.0.1."""
    from cryptography.fernet import Fernet

    from mlops.detached_service import stop_service
    from mlops.local_services import start_mlflow
    from mlops.ports import free_port

    state = tmp_path_factory.mktemp("mlflow-watch-webhooks")
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(), "MLFLOW_WEBHOOK_CACHE_TTL": "1"}
    svc = start_mlflow(state, port=free_port(), env=env)
    yield svc.url
    stop_service(state, "mlflow-server")


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


@pytest.mark.slow
def test_re_promoting_an_older_version_in_mlflow_rolls_the_hosts_back_through_the_webhook(
        deploy_env, webhook_mlflow, monkeypatch):
    from mlops.ports import free_port
    from registry.client import tracking_client
    from registry.webhooks import ensure_webhook

    env = deploy_env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", webhook_mlflow)
    env.env["MLFLOW_TRACKING_URI"] = webhook_mlflow
    secret = "whsec-" + secrets.token_hex(20)
    monkeypatch.setenv("MLOPS_WEBHOOK_SECRET", secret)
    host = env.add_host("file")
    port = free_port()
    ensure_webhook(f"http://127.0.0.1:{port}/mlflow-hook", name=f"watch-{env.model}"[:60])
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    env.deploy()
    env.promote(v2)
    env.deploy()
    env.serves(host, v2)

    proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "watch", "--interval", "3600",
                             "--max-seconds", "240", "--webhook-port", str(port), "--json"],
                            cwd=REPO, env={**os.environ, **env.env, "MLOPS_WEBHOOK_SECRET": secret},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        _wait_port(port)
        deadline = time.monotonic() + 60       # the first pass (hosts already serve v2) is over
        while time.monotonic() < deadline and not any("reconcile (start): up_to_date" in x for x in lines):
            time.sleep(0.1)
        assert any("reconcile (start): up_to_date" in x for x in lines), lines
        # a forged delivery is refused and changes nothing
        forged = requests.post(f"http://127.0.0.1:{port}/mlflow-hook", data=json.dumps(EVENT),
                               headers={"X-MLflow-Signature": "v1,Zm9yZ2Vk", "X-MLflow-Delivery-Id": "x",
                                        "X-MLflow-Timestamp": str(int(time.time()))}, timeout=10)
        assert forged.status_code == 401
        # "the MLflow UI": move production back to v1 directly in the registry (no CI, no ledger)
        tracking_client().set_registered_model_alias(env.model, "production", str(v1))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("reconcile (webhook): deployed" in x for x in lines):
            time.sleep(0.2)
        env.serves(host, v1)
    finally:
        proc.send_signal(signal.SIGTERM)       # graceful: the current pass ends first
        out = proc.stdout.read()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        err = "".join(lines)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert any(p["trigger"] == "webhook" and p["status"] == "deployed" and p["version"] == v1
               for p in doc["passes"]), doc
    assert doc["webhook"]["accepted"] >= 1 and doc["webhook"]["rejected_401"] == 1
    assert secret not in out + err


def test_a_watch_pass_asks_mlflow_only_what_it_uses(deploy_env, monkeypatch):
    """Each pass planned the fleet as `sync plan` does: the version's artifact listing, the
    hosts' stored sizes and the ledger's rollback target, every pass, for nothing it reads."""
    from registry import deploys
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions
    from serving_sync.watch import FleetReconciler

    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")

    def not_in_a_pass(*a, **k):
        raise AssertionError("a watch pass asked for what only `sync plan` shows")

    monkeypatch.setattr(deploys, "saved_model_size", not_in_a_pass)
    monkeypatch.setattr(deploys.DeployLedger, "rollback_target", not_in_a_pass)
    for k, v in env.env.items():
        monkeypatch.setenv(k, v)
    status, version, _ = FleetReconciler(env.model, load_hosts(), DeployOptions(), status_known=lambda v: True)()
    assert (status, version) == ("up_to_date", v1)
    env.serves(host, v1)
