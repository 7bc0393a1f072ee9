"""Optional contract test: the local server answers like a real TensorFlow Serving.

Runs only when a real TF Serving is given (it is not installable here):

    TFSERVING_REST_URL=http://127.0.0.1:8501          # its REST API
    TFSERVING_MODEL_BASE_PATH=/var/models             # a directory this test may write, that the
                                                      # server reads models.config and models from
    TFSERVING_MODEL_BASE_PATH_IN_SERVER=/models       # the same directory as the server sees it
                                                      # (optional; default: TFSERVING_MODEL_BASE_PATH)

The server must run with ``--model_config_file=<base>/models.config`` and a config poll
interval (``serving_host/install_server.sh`` starts it that way). The test OVERWRITES that
models.config: use a dedicated instance. It publishes TF Serving's half_plus_two test model,
sends the same requests to both servers and compares status codes and JSON bodies.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.helpers import TF_SERVING_TESTDATA, order_free

HALF_PLUS_TWO_123 = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
REAL_URL = os.environ.get("TFSERVING_REST_URL", "")
REAL_BASE = os.environ.get("TFSERVING_MODEL_BASE_PATH", "")
REAL_BASE_IN_SERVER = os.environ.get("TFSERVING_MODEL_BASE_PATH_IN_SERVER", "") or REAL_BASE


def _requests(m: str) -> list[tuple[str, str, object]]:
    return [
        ("GET", f"/v1/models/{m}", None),
        ("GET", f"/v1/models/{m}/versions/123", None),
        ("GET", f"/v1/models/{m}/metadata", None),
        ("POST", f"/v1/models/{m}:predict", {"instances": [1.0, 2.0, 5.0]}),
        ("POST", f"/v1/models/{m}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}),
        ("POST", f"/v1/models/{m}/versions/123:predict", {"inputs": [3.0, 4.0]}),
        ("POST", f"/v1/models/{m}/labels/stable:predict", {"instances": [1.0]}),
        ("POST", f"/v1/models/{m}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}),
        ("POST", f"/v1/models/{m}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}),
        ("POST", f"/v1/models/{m}:predict", {"instances": ["x"]}),
        ("POST", f"/v1/models/{m}:predict", {"signature_name": 100}),
        ("POST", f"/v1/models/{m}/versions/99:predict", {"instances": [1.0]}),
        ("POST", f"/v1/models/{m}/labels/nope:predict", {"instances": [1.0]}),
        ("GET", f"/v1/models/{m}/versions/99", None),
        ("GET", "/v1/models/no_such_model_xyz", None),
        ("GET", "/v1/foo", None),
        ("GET", "/statuspage", None),
    ]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".models.config.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _config(base_in_server: str, m: str, labels: bool) -> str:
    lab = 'version_labels { key: "stable" value: 123 }' if labels else ""
    return (f'model_config_list {{ config {{ name: "{m}" base_path: "{base_in_server}/{m}" '
            f'model_platform: "tensorflow" {lab} }} }}\n')


def _wait(rest_url: str, path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.post(rest_url + path, json={"instances": [1.0]}, timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{rest_url}{path} never answered 200")


def _run_scenario(rest_url: str, base: Path, base_in_server: str, m: str) -> list[tuple[int, object]]:
    shutil.copytree(HALF_PLUS_TWO_123, base / m / "123")
    _write_atomic(base / "models.config", _config(base_in_server, m, labels=False))
    _wait(rest_url, f"/v1/models/{m}:predict")
    _write_atomic(base / "models.config", _config(base_in_server, m, labels=True))
    _wait(rest_url, f"/v1/models/{m}/labels/stable:predict")
    answers = []
    for method, path, body in _requests(m):
        r = requests.request(method, rest_url + path, data=None if body is None else json.dumps(body), timeout=30)
        try:
            payload = r.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            payload = {"error": "<message>"}   # compare shape and status; wording is checked elsewhere
        answers.append((r.status_code, order_free(payload)))
    return answers


@pytest.mark.skipif(not (REAL_URL and REAL_BASE),
                    reason="SKIPPED contract test against real TensorFlow Serving: set TFSERVING_REST_URL "
                           "and TFSERVING_MODEL_BASE_PATH (see this file's docstring) to run it")
def test_local_server_answers_like_real_tensorflow_serving(tfserving_factory, tmp_path):
    m = f"contract_{uuid.uuid4().hex[:8]}"
    real = _run_scenario(REAL_URL.rstrip("/"), Path(REAL_BASE), REAL_BASE_IN_SERVER.rstrip("/"), m)
    srv = tfserving_factory(tmp_path / "serving")
    local = _run_scenario(srv.rest_url, srv.base, str(srv.base), m)
    for (method, path, _), r, lo in zip(_requests(m), real, local):
        assert lo == r, f"{method} {path}: real TF Serving {r} != local server {lo}"


def test_contract_scenario_runs_on_the_local_server(tfserving_factory, tmp_path):
    """The scenario above, on the local server alone, so it stays runnable when no real server is given."""
    srv = tfserving_factory(tmp_path / "serving")
    m = "contract_local"
    answers = _run_scenario(srv.rest_url, srv.base, str(srv.base), m)
    sent = [(meth, p) for meth, p, _ in _requests(m)]
    assert answers[0][0] == 200 and answers[0][1]["model_version_status"][0]["state"] == "AVAILABLE"
    assert answers[3] == (200, {"predictions": [2.5, 3.0, 4.5]})
    assert answers[4] == (200, {"predictions": [[2.5, 3.0], [3.5, 4.0]]})
    assert answers[6] == (200, {"predictions": [2.5]})
    assert answers[sent.index(("GET", "/statuspage"))] == (404, None)
    assert answers[sent.index(("GET", "/v1/foo"))] == (400, {"error": "<message>"})
    assert all(status < 500 for status, _ in answers)
