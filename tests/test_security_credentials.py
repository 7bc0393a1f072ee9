"""Credentials never travel in URIs we print or on any process's command line.

- ``MLFLOW_TRACKING_URI`` with user info is refused in one line that does not echo it.
- ``mlflow db upgrade`` and ``mlflow server`` (and its workers) started by us get the backend
  store URI (database password included) through their environment: every process's
  ``/proc/<pid>/cmdline`` — readable by every user of the machine — is scanned while they run.
- ``scripts/notify-failure.sh`` hands the Slack webhook URL to curl on stdin, not argv.
- The ledger's secret guard checks raw values, so quotes, backslashes and non-ASCII characters
  inside ``details`` cannot hide a secret.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops_common import settings
from mlops_common.errors import ConfigError, RefusedError
from tests.helpers import REPO, run_mlops


def _cmdlines() -> dict[int, bytes]:
    """Every process's argv as the kernel shows it to any user."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    out[int(d)] = f.read()
            except OSError:
                pass
    return out


class ArgvWatch:
    """Scan every process's argv every 20 ms (bounded by ``max_seconds``) for ``needle``."""

    def __init__(self, needle: bytes, marker: bytes, max_seconds: float = 300):
        self.needle, self.marker, self.max_seconds = needle, marker, max_seconds
        self.leaks: list[bytes] = []
        self.seen_marker = 0
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            for cmd in _cmdlines().values():
                if self.needle in cmd:
                    self.leaks.append(cmd.replace(b"\0", b" "))
                if self.marker in cmd:
                    self.seen_marker += 1
            self.scans += 1
            self._stop.wait(0.02)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# --- MLFLOW_TRACKING_URI -------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["http://alice:s3cr3t-pw@127.0.0.1:9", "https://alice@mlflow.example.com",
                                 "http://:s3cr3t-pw@127.0.0.1:9/"])
def test_tracking_uri_with_user_info_is_refused(uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError) as e:
        settings.tracking_uri()
    assert "MLFLOW_TRACKING_USERNAME" in str(e.value) and "s3cr3t-pw" not in str(e.value)
    assert "alice" not in str(e.value)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/?token=s3cr3t-tok", "https://mlflow.example.com/?api_key=s3cr3t-tok",
                                 "http://127.0.0.1:9/p?a=1&Password=s3cr3t-tok", "http://127.0.0.1:9/?X-Amz-Signature=s3cr3t-tok"])
def test_tracking_uri_with_a_credential_in_its_query_is_refused_without_echoing_it(uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError) as e:
        settings.tracking_uri()
    assert "MLFLOW_TRACKING_TOKEN" in str(e.value) and "s3cr3t-tok" not in str(e.value)


def test_a_credential_in_a_database_urls_query_is_redacted_on_its_own(monkeypatch):
    # libpq takes ?password=; an error quoting the value alone must not show it
    monkeypatch.setenv("MLOPS_LEDGER_URL", "postgresql://u@127.0.0.1:9/l?sslmode=disable&password=p%40ss-w0rd-long")
    secrets = settings.secret_values()
    assert "p%40ss-w0rd-long" in secrets and "p@ss-w0rd-long" in secrets
    assert "disable" not in secrets
    from mlops_common.log import redact
    said = redact('connection failed: password "p@ss-w0rd-long" rejected')
    assert said == 'connection failed: password "***" rejected'


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com/x@y", "databricks",
                                 "http://127.0.0.1:5000/?experiment=3"])
def test_tracking_uris_without_user_info_pass(uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert settings.tracking_uri() == uri


def test_the_cli_refuses_it_in_one_line_without_echoing_it(tmp_path):
    r = run_mlops("registry", "status", env={"MLFLOW_TRACKING_URI": "http://alice:s3cr3t-pw@127.0.0.1:9",
                                             "MLOPS_HOME": str(tmp_path)}, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: MLFLOW_TRACKING_URI must not contain"), r.stderr
    assert "s3cr3t-pw" not in r.stdout + r.stderr and "alice" not in r.stdout + r.stderr


# --- backend store URI: environment, not argv ---------------------------------------------------
@pytest.mark.slow   # runs `mlflow db upgrade` and starts `mlflow server`
def test_mlflow_db_upgrade_and_server_never_show_the_database_password_on_argv(postgres_server, tmp_path):
    import sqlalchemy as sa

    from mlops import mlflow_db
    from mlops.detached_service import read_record, stop_service
    from mlops.local_services import start_mlflow
    from mlops.ports import free_port

    url = postgres_server.create_database("argv")         # password in the URL, as users write it
    password = sa.engine.make_url(url).password
    assert password and len(password) >= 8
    needle = password.encode()
    with ArgvWatch(needle, marker=mlflow_db.UPGRADE_URI_VAR.encode()) as watch:
        seconds = mlflow_db.run_upgrade(url, env={k: v for k, v in os.environ.items() if k != "PGPASSWORD"})
    assert watch.seen_marker > 0, "the scan never saw the upgrade process (it would prove nothing)"
    assert watch.leaks == [] and seconds > 0
    assert mlflow_db.ensure_schema_current(url).action == mlflow_db.CURRENT

    state = tmp_path / "server"
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "MLFLOW_TRACKING_URI")}
    svc = start_mlflow(state, port=free_port(), backend_store_uri=url, env=env)
    try:
        cmdlines = _cmdlines()
        rec = read_record(state, "mlflow-server")
        assert rec is not None and rec.pid in cmdlines
        assert [c for c in cmdlines.values() if needle in c] == []     # the server and its children
        with open(f"/proc/{rec.pid}/environ", "rb") as f:  # where it went instead (owner-only file)
            assert b"MLFLOW_BACKEND_STORE_URI=" in f.read()
        assert requests_ok(f"{svc.url}/api/2.0/mlflow/experiments/search?max_results=1")
    finally:
        stop_service(state, "mlflow-server")
    assert password not in (state / "mlflow-server.log").read_text(errors="replace")


def requests_ok(url: str) -> bool:
    import requests

    return requests.get(url, timeout=30).status_code == 200


# --- scripts/notify-failure.sh ------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("curl") is None, reason="SKIPPED LOUDLY: curl is not installed")
def test_notify_failure_keeps_the_webhook_url_off_curls_argv():
    token = "T0KEN-" + os.urandom(8).hex()
    got: list[tuple[str, bytes]] = []

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            got.append((self.path, self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            time.sleep(0.5)                 # keep curl alive long enough to be seen
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f'http://127.0.0.1:{server.server_address[1]}/services/{token}/x"y\\z'
    try:
        with ArgvWatch(token.encode(), marker=b"\0-K\0-\0") as watch:
            r = subprocess.run(["bash", str(REPO / "scripts" / "notify-failure.sh")], capture_output=True,
                               text=True, timeout=60, env={**os.environ, "SLACK_WEBHOOK_URL": hook,
                                                           "CIRCLE_JOB": 'deploy "prod" \\ é'})
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0 and r.stdout.strip() == "failure notification sent", r.stdout + r.stderr
    assert len(got) == 1 and token in got[0][0]
    assert got[0][0].endswith('/x%22y%5Cz') or got[0][0].endswith('/x"y\\z'), got[0][0]
    assert 'deploy "prod" \\ é' in json.loads(got[0][1])["text"]
    assert watch.seen_marker > 0 and watch.leaks == [], watch.leaks
    assert token not in r.stdout + r.stderr


# --- the ledger's secret guard --------------------------------------------------------------------
@pytest.mark.parametrize("secret", ['pa"ss\\word-1', "pässwörd-ü", 'x\\"y\\\\z-long', "tab\there-x"])
def test_the_ledger_refuses_a_secret_hidden_by_json_escaping(secret, monkeypatch, tmp_path):
    from registry.ledger import Ledger

    monkeypatch.setenv("MLOPS_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    ledger = Ledger()
    for details in ({"note": f"token={secret}"}, {"nested": [{"deep": ["a", f"<{secret}>"]}]},
                    {f"key-{secret}": 1}):
        with pytest.raises(RefusedError, match="secret environment variable"):
            ledger.record("deploy", "digits", outcome="ok", details=details)
    with pytest.raises(RefusedError):
        ledger.record("deploy", "digits", outcome="ok", reason=f"because {secret}")
    ledger.record("deploy", "digits", outcome="ok", details={"note": "nothing secret here"})
    assert len(ledger.entries("digits")) == 1

