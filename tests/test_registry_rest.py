"""The fast registry path: MLflow's REST API without ``import mlflow`` (registry/rest.py), the
ledger's schema check without alembic, deferred promotion tags — against real servers.

No timed assertions: what makes rollback fast is checked structurally (which modules load,
which calls happen in which order); the speed itself is measured by benchmarks/bench_rollback.py.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys

import pytest

from mlops.ports import free_port
from mlops_common.errors import ConfigError, ConnectionFailure, NotFoundError, UserError
from registry import promotion, rest, versions
from registry.ledger import Ledger
from tests.helpers import REPO, loopback_http


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_errors_are_one_actionable_line(mlops_env, monkeypatch, tmp_path):
    client = rest.rest()
    with pytest.raises(NotFoundError) as e:
        client.get("registered-models/get", {"name": "no-such-model"}, what="reading 'no-such-model'")
    assert _one_line(e.value).startswith("reading 'no-such-model': ") and "not found" in str(e.value)
    with pytest.raises(UserError, match="MLflow answered INVALID_PARAMETER_VALUE") as e:
        client.delete("registered-models/alias", {}, what="removing an alias")
    _one_line(e.value)
    # a custom message for a missing resource
    with pytest.raises(NotFoundError, match="registered model 'ghost' does not exist in the MLflow registry"):
        versions.registered_model_aliases("ghost")

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with pytest.raises(ConnectionFailure) as e:
        versions.production_version("m")
    assert f"cannot reach the MLflow server at {dead}" in _one_line(e.value)
    assert "fix MLFLOW_TRACKING_URI" in str(e.value)

    # a web server that is not MLflow (a plain static file server on loopback)
    (tmp_path / "index.html").write_text("<html>hello</html>")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    with loopback_http(handler) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with pytest.raises(ConfigError, match="does not look like an MLflow tracking server") as e:
            versions.production_version("m")
        _one_line(e.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ConfigError, match="must be the http"):
        versions.production_version("m")


def test_retry_decisions():
    d = rest.retry_delay
    assert d(1, 5, 1.0, status=503) == 1.0 and d(3, 5, 1.0, status=429) == 4.0
    assert d(5, 5, 1.0, status=503) is None                     # the last attempt
    assert d(1, 5, 1.0, status=404) is None and d(1, 5, 1.0, status=200) is None
    assert d(1, 5, 1.0, connection_error=True, answered=False) is None   # a server that is down: say so now
    assert d(2, 5, 0.5, connection_error=True, answered=True) == 1.0     # a reset after it answered
    assert d(4, 9, 100.0, status=500) == 30.0                   # capped


def test_credentials_come_from_the_environment(mlops_env, monkeypatch):
    uri = mlops_env["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-abcdef")
    assert rest.MlflowRest(uri).session.headers["Authorization"] == "Bearer tok-abcdef"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-123456")
    c = rest.MlflowRest(uri)
    assert c.session.auth == ("alice", "pw-123456") and "Authorization" not in c.session.headers
    pooled = rest.rest()
    assert rest.rest() is pooled                # one pooled client per server and credentials
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-rotated")
    rotated = rest.rest()                       # new credentials: a new client that sends them
    assert rotated is not pooled and rotated.session.auth == ("alice", "pw-rotated")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="MLFLOW_HTTP_REQUEST_TIMEOUT must be a number"):
        rest.MlflowRest(uri)


@pytest.mark.slow
def test_basic_auth_against_a_real_mlflow_auth_server(mlflow_basic_auth, monkeypatch):
    """``mlflow server --app-name basic-auth``: right credentials pass, wrong ones are one line."""
    user, password = mlflow_basic_auth.admin
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_basic_auth.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(NotFoundError, match="'nothing-here' does not exist"):   # authenticated
        versions.production_version("nothing-here")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    with pytest.raises(ConfigError, match=r"rejected the credentials \(HTTP 401\)") as e:
        versions.production_version("nothing-here")
    assert "wrong-password" not in _one_line(e.value)


def test_small_artifacts_and_bundles_come_through_the_proxy(make_version, tmp_path, tiny_serving_bundle):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    info = versions.get_version(model, v)
    root = versions.artifact_root(info.run_id)
    assert rest.MlflowRest.proxied(root)            # the default `mlflow server` proxies artifacts
    sig = versions.run_artifact_json(info.run_id, "golden/signature.json")
    assert sig == json.loads((tiny_serving_bundle / "golden" / "signature.json").read_text())
    assert versions.run_artifact_json(info.run_id, "golden/nothing.json") is None
    bundle = versions.download_bundle(model, v, tmp_path / "b")
    expected = {p.relative_to(tiny_serving_bundle / "tfserving"): p.read_bytes()
                for p in (tiny_serving_bundle / "tfserving").rglob("*") if p.is_file()}
    got = {p.relative_to(bundle.saved_model_dir): p.read_bytes() for p in bundle.saved_model_dir.rglob("*")
           if p.is_file()}
    assert got == expected and expected


def test_ledger_schema_head_is_read_without_alembic_and_agrees_with_it():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from registry import ledger_db

    cfg = Config()
    cfg.set_main_option("script_location", str(ledger_db.MIGRATIONS_DIR))
    assert ledger_db.script_head() == ScriptDirectory.from_config(cfg).get_current_head()


def test_rollback_can_defer_its_tags_until_finish(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    for v in (v1, v2):
        promotion.promote(model, v, actor="alice")
    promo = promotion.rollback(model, actor="bob", reason="deferred", defer_tags=True)
    # the record and the alias moved at once, in that order, under the lock ...
    assert versions.production_version(model) == v1
    row = Ledger().entries(model, actions=("rollback",))[-1]
    assert (row.from_version, row.to_version, row.actor, row.id) == (v2, v1, "bob", promo.ledger_id)
    # ... the MLflow UI's view of it only when the caller says so
    before = versions.get_version(model, v1)
    assert before.tags["approved_by"] == "alice" and "by bob" not in before.description
    promo.finish()
    after = versions.get_version(model, v1)
    assert after.tags["approved_by"] == "bob"
    assert f"**Approved by:** bob (rollback v{v2} → v{v1} by bob" in after.description
    assert f"ledger #{promo.ledger_id}; reason: deferred)" in after.description
    promo.finish()                          # once only
    assert promo.pending_view is None and "pending_view" not in promo.to_dict()


_HEAVY = ("import sys\nfrom mlops.cli import main\nrc = main(sys.argv[1:])\n"
          "print('HEAVY', sorted(m for m in ('mlflow', 'tensorflow', 'keras', 'alembic') if m in sys.modules),"
          " file=sys.stderr)\nsys.exit(rc)\n")


def _cli_modules(env, *args: str) -> str:
    p = subprocess.run([sys.executable, "-c", _HEAVY, *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, **env.env}, timeout=300)
    assert p.returncode == 0, p.stderr
    return next(line for line in p.stderr.splitlines() if line.startswith("HEAVY"))


def test_deploy_and_rollback_never_import_mlflow_or_alembic(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    assert env.deploy().status == "deployed"          # the ledger's schema exists from here on
    env.promote(v2)
    assert _cli_modules(env, "sync", "deploy") == "HEAVY []"     # publishes: the bundle came by REST
    env.serves(host, v2)
    assert _cli_modules(env, "sync", "rollback") == "HEAVY []"
    env.serves(host, v1)
    assert f"| rollback | v{v2} → v{v1} |" in versions.get_version(env.model, v1).description
    assert env.tags(v2)["deploy_status"] == "rolled_back"


def test_tls_problems_are_one_line_saying_what_to_fix(mlops_env):
    """Found by review (2026-12-05, third stop): ``https://`` to a server that speaks http said
    "cannot reach the MLflow server (connection refused or no route)" of a server that answered;
    an MLFLOW_TRACKING_CLIENT_CERT_PATH that does not exist was an OSError traceback from requests
    (every command: it is checked before each request, http or https)."""
    from tests.fixtures.faults import one_error_line
    from tests.helpers import run_mlops

    https = mlops_env["MLFLOW_TRACKING_URI"].replace("http://", "https://")
    r = run_mlops("registry", "status", env={"MLFLOW_TRACKING_URI": https})
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "the TLS handshake with the MLflow server" in line, line
    assert "connection refused" not in line and "write http:// in MLFLOW_TRACKING_URI" in line
    for argv in (["registry", "status"], ["registry", "rollback", "--reason", "x"], ["evaluate", "--version", "1"]):
        r = run_mlops(*argv, env={"MLFLOW_TRACKING_CLIENT_CERT_PATH": "/nonexistent/client.pem"})
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and "/nonexistent/client.pem" in line, line
        assert "fix MLFLOW_TRACKING_CLIENT_CERT_PATH" in line


def test_a_proxy_that_cannot_be_reached_is_named_not_the_mlflow_server(mlops_env):
    """Found by review (2026-12-05, third stop): with HTTP_PROXY naming a dead proxy, every command
    said "cannot reach the MLflow server ... start it with `mlops up`" of a server that runs."""
    from mlops.ports import free_port
    from tests.fixtures.faults import one_error_line
    from tests.helpers import run_mlops

    dead = f"http://127.0.0.1:{free_port()}"
    r = run_mlops("registry", "status", env={"HTTP_PROXY": dead, "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""})
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "cannot reach the HTTP proxy" in line and "NO_PROXY" in line, line
    assert "start it with `mlops up`" not in line


def test_a_429_or_503_waits_as_long_as_its_retry_after_says(monkeypatch):
    """A rate limiter in front of MLflow answers 429 with ``Retry-After``; MLflow's own client waits
    that long (MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER, on by default), this one retried after 1, 2,
    4 and 8 s regardless, and gave up within the window the server had asked it to wait."""
    answers = [(429, {"Retry-After": "7"}), (503, {"Retry-After": "120"}), (503, {"Retry-After": "soon"}),
               (200, {})]
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, headers = answers[len(seen)]
            seen.append(self.path)
            body = json.dumps({"registered_model": {"name": "m"}} if status == 200 else
                              {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}).encode()
            self.send_response(status)
            for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    with loopback_http(Handler) as url:
        client = rest.MlflowRest(url)
        slept = []
        client.sleep = slept.append
        doc = client.get("registered-models/get", {"name": "m"}, what="reading 'm'")
    assert doc == {"registered_model": {"name": "m"}} and len(seen) == 4
    # its own seconds; at most the backoff's cap of 30 s; a value that is not seconds: the backoff
    assert slept == [7.0, 30.0, 4.0]


def _answering(status: int, body: bytes, ctype: str, *, seen: list | None = None):
    """A loopback handler that answers every GET with ``status``, ``body`` and ``ctype``."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if seen is not None:
                seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    return Handler


def test_retry_settings_above_mlflows_own_limits_are_refused_in_one_line(monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): MLflow's client refuses
    MLFLOW_HTTP_REQUEST_MAX_RETRIES above 10 and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR above 120; this
    one took 100 retries (about 50 minutes of retrying a failing server)."""
    from tests.fixtures.faults import one_error_line
    from tests.helpers import run_mlops

    seen = []
    with loopback_http(_answering(503, b"<html>down</html>", "text/html", seen=seen)) as url:
        for name, limit, ok, over in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "10", "10", "100"),
                                      ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "120", "120", "120.5")):
            monkeypatch.setenv(name, ok)
            rest.MlflowRest(url)                            # the limit itself is allowed, as in MLflow
            monkeypatch.setenv(name, over)
            with pytest.raises(ConfigError) as e:
                rest.MlflowRest(url)
            assert f"{name} must be at most {limit}" in _one_line(e.value) and f"got '{over}'" in str(e.value)
            monkeypatch.delenv(name)
        r = run_mlops("registry", "status", env={"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "100"})
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "MLFLOW_HTTP_REQUEST_MAX_RETRIES must be at most 10" in line, r.stderr
    assert seen == []                                       # refused before the first request


def test_the_probe_waits_as_long_as_mlflow_http_request_timeout_says(monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): the server check waited 10 s whatever
    MLFLOW_HTTP_REQUEST_TIMEOUT said (a slow server behind a proxy failed it at 10 s with a 60 s
    setting; a 1 s setting still waited 10 s)."""
    import threading

    release = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            release.wait(30)                                # bounded: the test releases it
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    try:
        with loopback_http(Slow) as url:
            with pytest.raises(ConnectionFailure) as e:
                rest.MlflowRest(url).probe()
            release.set()
    finally:
        release.set()
    assert "did not answer within 1s" in _one_line(e.value)


def test_a_non_json_artifact_answer_says_what_the_json_one_says(monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): reading a small artifact, a proxy's HTML 502
    that lasted through the retries was "MLflow answered HTTP 502: Bad Gateway" (not "kept
    answering ... after N tries"), and an HTML 401/403 named no credentials to set."""
    root = "mlflow-artifacts:/0/abc/artifacts"
    with loopback_http(_answering(502, b"<html>Bad Gateway</html>", "text/html")) as url:
        client = rest.MlflowRest(url)
        slept = []
        client.sleep = slept.append
        with pytest.raises(ConnectionFailure) as e:
            client.artifact_bytes(root, "golden/signature.json", what="reading the signature")
    line = _one_line(e.value)
    assert line.startswith("reading the signature: ") and "kept answering HTTP 502 after 5 tries" in line, line
    assert slept == [1.0, 2.0, 4.0, 8.0]
    for status in (401, 403):
        with loopback_http(_answering(status, b"<html>denied</html>", "text/html")) as url:
            with pytest.raises(ConfigError) as e:
                rest.MlflowRest(url).artifact_bytes(root, "golden/signature.json", what="reading the signature")
        line = _one_line(e.value)
        assert f"rejected the credentials (HTTP {status})" in line and "MLFLOW_TRACKING_TOKEN" in line, line
    with loopback_http(_answering(404, b"<html>no</html>", "text/html")) as url:   # still: not there
        assert rest.MlflowRest(url).artifact_bytes(root, "golden/nothing.json", what="x") is None
