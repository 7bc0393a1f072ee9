"""The CircleCI API token (`Circle-Token`) goes to the configured address only, never along a redirect."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

TOKEN = "circle-SECRET-7d0e41b2c9"


def _server(host: str, handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_the_circleci_token_never_follows_a_redirect_to_another_address(monkeypatch, code):
    """``requests`` strips only ``Authorization`` on a redirect to another host: the ``Circle-Token``
    header went along to wherever a ``Location`` pointed (another host, or http://). Now a redirect
    is one line naming CIRCLECI_API_URL, and nothing but the configured address sees the token."""
    from mlops_common.errors import UserError
    from registry import approver

    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server API
            seen.append(self.headers.get("Circle-Token"))
            body = b'{"items": [], "next_page_token": null}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    other = _server("127.0.0.2", Elsewhere)

    class Redirecting(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(code)
            self.send_header("Location", f"http://127.0.0.2:{other.server_address[1]}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    api = _server("127.0.0.1", Redirecting)
    try:
        monkeypatch.setenv("CIRCLECI_API_URL", f"http://127.0.0.1:{api.server_address[1]}")
        with pytest.raises(UserError) as info:
            approver._get("/workflow/wf1/job", TOKEN)
        assert seen == []                         # the other address got no request at all
        message = info.value.message
        assert "\n" not in message and f"HTTP {code}" in message and "CIRCLECI_API_URL" in message
        assert TOKEN not in message
    finally:
        for s in (api, other):
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/?circle-token=circle-QUERY-5b1f0a9e",
                                 "http://127.0.0.1:9/api/v2?api_key=circle-QUERY-5b1f0a9e"])
def test_a_credential_in_the_circleci_api_urls_query_is_refused_without_echoing_it(tmp_path, url):
    """Found by the eighteenth stop's secrets review: CircleCI's API once took its token as
    ``?circle-token=``; in CIRCLECI_API_URL it was echoed in "cannot reach the CircleCI API at ..."
    (only a password was masked), into the CI log. Now one line naming CIRCLE_TOKEN, exit 2,
    before any request, the value nowhere."""
    from tests.helpers import run_mlops

    env = {"CIRCLECI_API_URL": url, "CIRCLE_TOKEN": TOKEN, "CIRCLE_WORKFLOW_ID": "wf-1",
           "CIRCLE_PIPELINE_ID": "pl-1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           "MLOPS_HOME": str(tmp_path / "home")}
    r = run_mlops("registry", "promote", "--version", "1", env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "QUERY-5b1f0a9e" not in r.stdout + r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: CIRCLECI_API_URL must not carry a credential in its query string (it would be printed in "
        "logs); put the token in CIRCLE_TOKEN"], r.stderr
