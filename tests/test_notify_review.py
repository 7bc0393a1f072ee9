"""Reviews of 2026-12-05 (ninth stop): notifications and `registry webhook create`, against real
local HTTP servers on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import REPO
from tests.lab.receiver import post_receiver

NOTIFY = REPO / "scripts" / "notify-failure.sh"


def _notify(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(NOTIFY)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLACK_WEBHOOK_URL": url})


@pytest.fixture
def answering():
    """A receiver on 127.0.0.1 that answers every POST with the status its path names (/302, /204)."""
    got: list[str] = []

    def answer(path: str, headers: dict, body: bytes) -> int:
        got.append(path)
        return int(path.strip("/").split("/")[0])

    with post_receiver(answer, location="https://127.0.0.1:9/elsewhere") as url:
        yield url, got


@pytest.mark.skipif(shutil.which("curl") is None, reason="SKIPPED LOUDLY: curl is not installed")
def test_notify_failure_says_sent_only_when_an_http_receiver_took_the_post(answering, tmp_path):
    """`file://` (or any scheme curl knows) "sent" nothing to Slack, and a redirect (Slack's answer
    to a URL it moved, or plain http) is not a delivery: both printed "failure notification sent"."""
    base, got = answering
    r = _notify(f"{base}/200/services/T0KEN")
    assert r.returncode == 0 and r.stdout.strip() == "failure notification sent", r.stdout + r.stderr
    r = _notify(f"{base}/204/services/T0KEN")
    assert r.returncode == 0 and r.stdout.strip() == "failure notification sent", r.stdout + r.stderr

    r = _notify(f"{base}/302/services/T0KEN")
    assert r.returncode == 0, r.stdout + r.stderr
    assert got[-1] == "/302/services/T0KEN"
    assert r.stdout.strip() == "could not send the failure notification (the webhook answered HTTP 302)"

    target = tmp_path / "hook"
    target.write_text("x")
    r = _notify(f"file://{target}")
    assert r.returncode == 0, r.stdout + r.stderr
    line = r.stdout.strip()
    assert line.startswith("could not send the failure notification") and len(r.stdout.splitlines()) == 1, line
    assert str(target) not in r.stdout + r.stderr and r.stderr == ""


@pytest.mark.skipif(shutil.which("curl") is None, reason="SKIPPED LOUDLY: curl is not installed")
def test_notify_failure_trims_a_pasted_newline_and_names_whitespace_inside(answering):
    """A webhook URL pasted into the context with a trailing newline was never delivered, and the
    job said only "curl exit 3". The ends are trimmed; whitespace inside is named."""
    base, got = answering
    r = _notify(f"  {base}/200/services/T0KEN\n")
    assert r.returncode == 0 and r.stdout.strip() == "failure notification sent", r.stdout + r.stderr
    assert got == ["/200/services/T0KEN"]
    r = _notify(f"{base}/200/services/T0 KEN")
    assert r.returncode == 0 and len(got) == 1
    assert r.stdout.strip() == ("could not send the failure notification (SLACK_WEBHOOK_URL has whitespace "
                                "inside it; set it again in the context)")
    assert "T0" not in r.stdout + r.stderr


def test_a_webhook_url_that_does_not_parse_is_named_so_not_blamed_on_its_port(tmp_path):
    """`http://[::1/hook` (an unclosed IPv6 bracket) said "--url has a port that is not a number
    from 1 to 65535": urlsplit's ValueError was taken for a bad port."""
    from tests.helpers import run_mlops

    env = {"MLOPS_WEBHOOK_SECRET": "whsec-" + "q" * 24, "MLOPS_HOME": str(tmp_path),
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    r = run_mlops("registry", "webhook", "create", "--url", "http://[::1/hook", env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --url is not a valid URL (Invalid IPv6 URL): 'http://[::1/hook'"]
    r = run_mlops("registry", "webhook", "create", "--url", "http://127.0.0.1:99999/hook", env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --url has a port that is not a number from 1 to 65535: 'http://127.0.0.1:99999/hook'"]
