"""`mlops registry webhook create` against real MLflow servers, with a real local receiver.

A dedicated MLflow server is started with the server-side settings the command's --help
documents (http scheme and loopback receiver allowed, a fixed encryption key); moving
`production` must then reach the receiver, HMAC-signed with the secret from the environment.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import secrets
import time
from pathlib import Path

import pytest

from registry import versions
from registry.client import tracking_client
from tests.helpers import mlflow_client, run_mlops
from tests.lab.receiver import post_receiver


@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory):
    """An MLflow server configured for a plain-http receiver on 127.0.0.1 (see the command's help)."""
    from cryptography.fernet import Fernet

    from mlops.detached_service import stop_service
    from mlops.local_services import start_mlflow
    from mlops.ports import free_port

    state = tmp_path_factory.mktemp("mlflow-webhooks")
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    svc = start_mlflow(state, port=free_port(), env=env)
    yield svc.url, state
    stop_service(state, "mlflow-server")


@pytest.fixture
def receiver():
    """A local HTTP receiver on 127.0.0.1 that queues (headers, body) of every POST."""
    got: queue.Queue = queue.Queue()

    def answer(path: str, headers: dict, body: bytes) -> int:
        got.put((headers, body.decode()))
        return 200

    with post_receiver(answer) as url:
        yield f"{url}/mlflow-hook", got


def _wait_for_alias_event(got: queue.Queue, alias: str, timeout: float = 60) -> tuple[dict, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            headers, body = got.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        doc = json.loads(body)
        if doc.get("entity") == "model_version_alias" and doc["data"].get("alias") == alias:
            return headers, body
    raise AssertionError(f"no model_version_alias.created delivery for '{alias}' within {timeout}s")


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_webhook_fires_on_production_move_signed_with_the_env_secret(
        webhook_mlflow, receiver, mlops_env, make_version, monkeypatch):
    url, state = webhook_mlflow
    hook_url, got = receiver
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    tracking_client()                      # fluent MLflow (used by make_version) -> this server
    secret = "whsec-" + secrets.token_hex(20)
    env = {"MLFLOW_TRACKING_URI": url, "MLOPS_WEBHOOK_SECRET": secret}

    r = run_mlops("registry", "webhook", "create", "--url", hook_url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["created"] is True and created["events"] == ["model_version_alias.created"]
    assert created["url"] == hook_url and created["status"] == "ACTIVE"
    # running it again updates the same webhook instead of adding a second one
    r2 = run_mlops("registry", "webhook", "create", "--url", hook_url, env=env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.startswith(f"updated webhook 'mlops-deploy-on-alias' ({created['id']})")
    hooks = [w for w in tracking_client().list_webhooks() if w.name == "mlops-deploy-on-alias"]
    assert len(hooks) == 1

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    r3 = run_mlops("registry", "promote", "--version", str(v), "--actor", "alice", env=env)
    assert r3.returncode == 0, r3.stderr
    assert versions.production_version(model) == v

    headers, body = _wait_for_alias_event(got, "production")
    doc = json.loads(body)
    assert (doc["action"], doc["data"]["name"], str(doc["data"]["version"])) == ("created", model, str(v))
    signed = f"{headers['x-mlflow-delivery-id']}.{headers['x-mlflow-timestamp']}.{body}"
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), signed.encode(),
                                                 hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["x-mlflow-signature"], expected)

    # the secret is nowhere we write: not in output, the ledger, MLOPS_HOME or version tags,
    # and MLflow itself keeps it only encrypted
    for res in (r, r2, r3):
        assert secret not in res.stdout + res.stderr
    assert _files_containing(Path(os.environ["MLOPS_HOME"]), secret.encode()) == []
    assert all(secret not in val for val in versions.get_version(model, v).tags.values())
    assert _files_containing(state, secret.encode()) == []


def test_server_without_http_settings_gets_a_clear_hint(mlops_env):
    """The session's MLflow server has the defaults: https only, private IPs blocked."""
    secret_env = {"MLOPS_WEBHOOK_SECRET": "whsec-" + secrets.token_hex(20)}
    r = run_mlops("registry", "webhook", "create", "--url", "http://127.0.0.1:9/hook", env=secret_env)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the MLflow server refused the URL") and \
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https" in line
    r = run_mlops("registry", "webhook", "create", "--url", "https://127.0.0.1:9/hook", env=secret_env)
    assert r.returncode == 2 and "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true" in r.stderr


def test_secret_must_come_from_the_environment(mlops_env, monkeypatch):
    monkeypatch.delenv("MLOPS_WEBHOOK_SECRET", raising=False)
    r = run_mlops("registry", "webhook", "create", "--url", "https://hooks.example.com/x")
    assert r.returncode == 2 and "error: MLOPS_WEBHOOK_SECRET is not set" in r.stderr
    r = run_mlops("registry", "webhook", "create", "--url", "https://hooks.example.com/x",
                  "--secret-env", "s3cr3t-value!")
    assert r.returncode == 2 and "must be the NAME of an environment variable" in r.stderr
    r = run_mlops("registry", "webhook", "create", "--url", "https://hooks.example.com/x",
                  env={"MLOPS_WEBHOOK_SECRET": "q7x9z"})
    assert r.returncode == 2 and "too short (5 characters)" in r.stderr and "q7x9z" not in r.stderr


def test_help_documents_the_server_side_settings():
    r = run_mlops("registry", "webhook", "create", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for needle in ("MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true",
                   "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "SQL backend", "model_version_alias.created",
                   "--secret-env"):
        assert needle in text, needle


def test_a_percent_encoded_secret_in_the_url_is_refused_and_redacted(mlops_env, monkeypatch):
    """The guard looked for the secret as written: `?t=<urlencoded secret>` passed, MLflow stored
    it and stdout printed it in full (the redaction did not know the encoded form either)."""
    from urllib.parse import quote

    from mlops_common import settings

    secret = "whsec-Zq8pLm3Kt7Vw2Xy9Rb4Nc6/+="
    for encoded in (quote(secret, safe=""), secret.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")):
        r = run_mlops("registry", "webhook", "create", "--url", f"https://hooks.example.com/x?t={encoded}",
                      env={"MLOPS_WEBHOOK_SECRET": secret})
        assert r.returncode == 2 and "contains the secret" in r.stderr, r.stderr
        assert encoded not in r.stderr + r.stdout and secret not in r.stderr + r.stdout
    monkeypatch.setenv("MLOPS_WEBHOOK_SECRET", secret)
    assert quote(secret, safe="") in settings.secret_values()


def test_a_credential_in_the_urls_query_is_refused_before_mlflow_stores_it(webhook_mlflow, mlops_env):
    """`--url` refused `user:password@` ("MLflow stores the URL and shows it to everyone") but took
    `?token=...`: MLflow stored it and the command printed it whole into the CI log."""
    url, _ = webhook_mlflow
    token = "tok-" + secrets.token_hex(12)
    env = {"MLFLOW_TRACKING_URI": url, "MLOPS_WEBHOOK_SECRET": "whsec-" + secrets.token_hex(20)}
    for hook in (f"http://127.0.0.1:9/hook?token={token}", f"http://127.0.0.1:9/hook?a=1&api_key={token}"):
        r = run_mlops("registry", "webhook", "create", "--url", hook, "--name", "query-credential",
                      "--json", env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines() == [
            "error: --url must not carry a credential in its query string (a token, key, signature or "
            "password parameter): MLflow stores the URL and shows it to everyone who can read the model; "
            "the receiver checks MLflow's HMAC signature instead"], r.stderr
        assert token not in r.stdout + r.stderr
    assert [w for w in mlflow_client(url).list_webhooks() if w.name == "query-credential"] == []


def test_a_second_webhook_of_the_same_name_is_removed_not_left_firing(webhook_mlflow, mlops_env):
    """MLflow does not keep webhook names unique (two `webhook create` at once, or one made by
    hand): `create` updated the first of that name and left the other firing at the old URL with
    the old secret."""
    url, _ = webhook_mlflow
    client = mlflow_client(url)
    for _ in range(2):
        client.create_webhook(name="twice-made", url="http://127.0.0.1:9/old", secret="old-" + secrets.token_hex(10),
                              events=["model_version_alias.created"])
    env = {"MLFLOW_TRACKING_URI": url, "MLOPS_WEBHOOK_SECRET": "whsec-" + secrets.token_hex(20)}
    r = run_mlops("registry", "webhook", "create", "--url", "http://127.0.0.1:9/new", "--name", "twice-made",
                  "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    hooks = [w for w in client.list_webhooks() if w.name == "twice-made"]
    assert [(w.webhook_id, w.url) for w in hooks] == [(doc["id"], "http://127.0.0.1:9/new")]
    assert len(doc["removed_duplicates"]) == 1 and doc["removed_duplicates"][0] != doc["id"]


def test_updating_a_webhook_that_pointed_at_another_receiver_says_which(webhook_mlflow, mlops_env):
    """Found by review (2026-12-07, nineteenth stop): `webhook create` matches by --name, whose default
    is one name for every receiver: a second fleet's operator creating the webhook for their own
    `sync watch` moved the first fleet's webhook to the new URL, and the command said only "updated
    webhook": the first watch silently got no more deliveries. It now says which receiver it
    pointed at before (scheme, host, port and path only: one made by hand may hold a token)."""
    url, _ = webhook_mlflow
    client = mlflow_client(url)
    token = "tok-" + secrets.token_hex(12)
    client.create_webhook(name="fleet-hook", url=f"http://127.0.0.1:9/fleet-a?token={token}",
                          secret="old-" + secrets.token_hex(10), events=["model_version_alias.created"])
    env = {"MLFLOW_TRACKING_URI": url, "MLOPS_WEBHOOK_SECRET": "whsec-" + secrets.token_hex(20)}
    r = run_mlops("registry", "webhook", "create", "--url", "http://127.0.0.1:9/fleet-b", "--name", "fleet-hook",
                  env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("updated webhook 'fleet-hook'") and "-> http://127.0.0.1:9/fleet-b" in lines[0], lines
    assert lines[1].startswith("it pointed at http://127.0.0.1:9/fleet-a?... before: that receiver gets no more "
                               "deliveries"), lines
    assert token not in r.stdout + r.stderr
    r = run_mlops("registry", "webhook", "create", "--url", "http://127.0.0.1:9/fleet-b", "--name", "fleet-hook",
                  "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["replaced_url"] is None, r.stdout + r.stderr   # the same URL
