"""The local server's REST API against TF Serving's own test models and expectations.

The cases follow TF Serving's ``http_rest_api_handler_test.cc`` and ``tensorflow_model_server_test.py``
(half_plus_two: y = 0.5x + 2; classify/regress signatures; the metadata JSON TF Serving returns),
run over real HTTP against ``python -m serving_host.local_server``.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re

import pytest
import requests

from tests.helpers import TF_SERVING_TESTDATA, order_free

TESTDATA = TF_SERVING_TESTDATA
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions"
M2 = "saved_model_half_plus_two_2_versions"     # kTestModelName in TF Serving's handler test
LABEL = "Version_Label"


def _config(extra_models: str = "", label: bool = False) -> str:
    labels = f'version_labels {{ key: "{LABEL}" value: 123 }}' if label else ""
    return f"""model_config_list {{
  config {{ name: "default" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" }}
  config {{ name: "{M2}" base_path: "{TWO_VERSIONS}" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 123 }} }} {labels} }}
  config {{ name: "both" base_path: "{TWO_VERSIONS}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }} }}
{extra_models}
}}
"""


def _save_multi_io_model(path) -> None:
    """A TF2 SavedModel with two named inputs (float, string) and four outputs."""
    import tensorflow as tf

    class Multi(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"),
                                      tf.TensorSpec([None], tf.string, name="s")])
        def serve(self, a, s):
            return {"sum": tf.reduce_sum(a, axis=1), "twice": a * 2.0,
                    "echo_bytes": s, "length": tf.strings.length(s)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
        def scalars(self, s):  # scalar outputs, one of each kind a client reads
            return {"first": s[0], "first_bytes": s[0], "count": tf.size(s, out_type=tf.int64),
                    "any": tf.reduce_any(tf.strings.length(s) > 2)}

    m = Multi()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve, "scalars": m.scalars})


def _export_keras_model(path) -> list[float]:
    """A tiny Keras model exported with ``model.export`` (the project's serving artifact)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.export(str(path), format="tf_saved_model", verbose=False)
    x = np.linspace(0, 1, 64, dtype="float32").reshape(1, 8, 8, 1)
    return model.predict(x, verbose=0)[0].tolist()


@pytest.fixture(scope="module")
def server(tfserving_session_factory, tmp_path_factory):
    models = tmp_path_factory.mktemp("rest-models")
    _save_multi_io_model(models / "multi" / "1")
    keras_expected = _export_keras_model(models / "keras" / "3")
    extra = (f'config {{ name: "multi" base_path: "{models / "multi"}" model_platform: "tensorflow" }}\n'
             f'config {{ name: "keras" base_path: "{models / "keras"}" model_platform: "tensorflow" }}')
    srv = tfserving_session_factory(tmp_path_factory.mktemp("rest-serving"), _config(extra))
    for name, version in (("default", 123), (M2, 123), ("both", 124), ("multi", 1), ("keras", 3)):
        srv.wait_for_state(name, version, "AVAILABLE")
    # Labels can only be assigned to loaded versions: add the label in a second config.
    srv.write_config(_config(extra, label=True))
    _wait_label(srv)
    srv.keras_expected = keras_expected
    yield srv
    srv.stop()


def _wait_label(srv, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.post(f"{srv.rest_url}/v1/models/{M2}/labels/{LABEL}:predict", json={"instances": [1.0]},
                          timeout=10)
        if r.status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"label never became usable: {r.status_code} {r.text}")


def call(srv, method: str, path: str, body=None, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return requests.request(method, srv.rest_url + path, data=data, timeout=30)


def error_of(r: requests.Response) -> str:
    assert r.headers["Content-Type"] == "application/json"
    return r.json()["error"]


# -- paths ----------------------------------------------------------------------------------
def test_paths_outside_v1_are_404_not_json(server):
    for path in ("/statuspage", "/index", "/"):
        r = call(server, "GET", path)
        assert r.status_code == 404
        assert r.headers["Content-Type"] == "text/html"


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/foo"), ("POST", "/v1/foo"), ("GET", "/v1/models/debug/model_name"),
    ("POST", "/v1/models"), ("GET", "/v1/models/foo:predict"), ("GET", "/v1/models/foo/version/50:predict"),
    ("POST", "/v1/models/foo/version/50:regress"), ("POST", "/v1/models/foo/versions/HELLO:regress"),
    ("POST", "/v1/models/foo/metadata"), ("POST", "/v1/models/foo/label/some_label:regress"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
    ("POST", "/v1/models/foo/versions/some_label:regress"), ("PUT", "/v1/models/default"),
    ("DELETE", "/v1/models/default"),
])
def test_unsupported_api_calls_are_malformed_requests(server, method, path):
    r = call(server, method, path)
    assert r.status_code == 400
    assert error_of(r) == f"Malformed request: {method} {path}"


def test_missing_model_name_and_bad_version_number(server):
    r = call(server, "GET", "/v1/models")
    assert r.status_code == 400 and "Missing model name" in error_of(r)
    # ParseModelInfo fails before MakeJsonFromStatus (http_rest_api_handler.cc:80-82): empty body.
    r = call(server, "POST", f"/v1/models/foo/versions/{2**64 - 1}:regress")
    assert r.status_code == 400 and r.content == b"" and r.headers["Content-Type"] == "application/json"


def test_paths_are_case_insensitive_like_tf_serving(server):
    r = call(server, "POST", "/V1/MODELS/default:predict", {"instances": [1.0]})
    assert r.status_code == 200 and r.json() == {"predictions": [2.5]}


# -- predict --------------------------------------------------------------------------------
def test_predict_model_name_and_version_errors_are_404(server):
    for path in ("/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                 f"/v1/models/{M2}/versions/99:predict"):
        r = call(server, "POST", path, {"instances": [1]})
        assert r.status_code == 404, path
    assert error_of(call(server, "POST", "/v1/models/foo:predict", {"instances": [1]})) == \
        "Servable not found for request: Latest(foo)"
    assert error_of(call(server, "POST", f"/v1/models/{M2}/versions/99:predict", {"instances": [1]})) == \
        f"Servable not found for request: Specific({M2}, 99)"


@pytest.mark.parametrize("body, status, fragment", [
    (b"", 400, "JSON Parse error: The document is empty"),
    (b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    (b'{ "instances": ["x", "y"] }', 400, "not of expected type: float"),
    (b'{ "signature_name": 100 }', 400, "'signature_name' key must be a string value."),
    (b'{ "signature_name": "nope", "instances": [1.0] }', 400,
     'Serving signature name: "nope" not found in signature def'),
])
def test_predict_request_errors(server, body, status, fragment):
    r = call(server, "POST", f"/v1/models/{M2}:predict", raw=body)
    assert r.status_code == status
    assert fragment in error_of(r)


def test_predict_with_unknown_label_is_400(server):
    r = call(server, "POST", f"/v1/models/{M2}/labels/Version_Nonexistent:predict", {"instances": ["x", "y"]})
    assert r.status_code == 400
    assert "Unrecognized servable version label" in error_of(r)


def test_predict_row_format_latest_version_and_label(server):
    # TF Serving feeds the batch as sent: [2, 2] runs although the signature says [-1, 1].
    r = call(server, "POST", f"/v1/models/{M2}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    for path in (f"/v1/models/{M2}/versions/123:predict", f"/v1/models/{M2}/labels/{LABEL}:predict"):
        assert call(server, "POST", path, {"instances": [1.0, 2.0]}).json() == {"predictions": [2.5, 3.0]}
    r = call(server, "POST", f"/v1/models/{M2}/versions/123:predict",
             {"signature_name": "serving_default", "instances": [3.0, 4.0]})
    assert r.json() == {"predictions": [3.5, 4.0]}


def test_predict_columnar_format(server):
    r = call(server, "POST", f"/v1/models/{M2}/versions/123:predict",
             {"signature_name": "serving_default", "inputs": [3.0, 4.0]})
    assert r.status_code == 200 and r.json() == {"outputs": [3.5, 4.0]}
    r = call(server, "POST", "/v1/models/default:predict", {"inputs": {"x": [[1.0], [2.0]]}})
    assert r.json() == {"outputs": [[2.5], [3.0]]}


def test_unversioned_requests_go_to_the_highest_loaded_version(server):
    states = server.version_states("both")
    assert states == {123: "AVAILABLE", 124: "AVAILABLE"}
    meta = call(server, "GET", "/v1/models/both/metadata").json()
    assert meta["model_spec"]["version"] == "124"
    assert call(server, "GET", "/v1/models/both/versions/123/metadata").json()["model_spec"]["version"] == "123"


def test_predict_b64_string_input_on_classify_signature(server):
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(20.0)
    b64 = base64.b64encode(ex.SerializeToString()).decode()
    r = call(server, "POST", "/v1/models/default:predict",
             {"signature_name": "classify_x_to_y", "instances": [{"b64": b64}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[12.0]]}


def test_a_tensorflow_error_text_holding_a_nul_byte_ends_at_it(server):
    """Documented difference (serving_host/README.md, "Differs: TensorFlow error texts"): bytes
    that are not a tf.Example fail in ParseExample, whose message quotes them. TF Serving keeps the
    whole text (its JSON writer escapes NUL as \\u0000, then the node: ``'ab\\u0000cd'\\n\\t
    [[{{node ParseExample/ParseExample}}]]``); TensorFlow's Python binding hands the text on as a
    C string, so here it ends at the first NUL. The status and the text before it are the same."""
    r = call(server, "POST", "/v1/models/default:predict",
             {"signature_name": "classify_x_to_y", "instances": [{"b64": base64.b64encode(b"ab\x00cd").decode()}]})
    assert r.status_code == 400
    assert error_of(r) == "Could not parse example input, value: 'ab"
    r = call(server, "POST", "/v1/models/default:predict",
             {"signature_name": "classify_x_to_y", "instances": [{"b64": base64.b64encode(b"ab\x01cd").decode()}]})
    assert r.status_code == 400          # without a NUL the whole text, as TF Serving writes it
    assert error_of(r) == ("Could not parse example input, value: 'ab\x01cd'\n\t "
                           "[[{{node ParseExample/ParseExample}}]]")


def test_predict_several_named_inputs_and_outputs(server):
    r = call(server, "POST", "/v1/models/multi:predict", {"instances": [
        {"a": [1.0, 2.0], "s": {"b64": base64.b64encode(b"hi").decode()}},
        {"a": [3.0, 4.0], "s": "yo!"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [
        {"sum": 3.0, "twice": [2.0, 4.0], "echo_bytes": {"b64": "aGk="}, "length": 2},
        {"sum": 7.0, "twice": [6.0, 8.0], "echo_bytes": {"b64": "eW8h"}, "length": 3}]}
    r = call(server, "POST", "/v1/models/multi:predict", {"inputs": {"a": [[1.0, 1.0]], "s": ["abcd"]}})
    assert r.json() == {"outputs": {"sum": [2.0], "twice": [[2.0, 2.0]],
                                    "echo_bytes": [{"b64": base64.b64encode(b"abcd").decode()}], "length": [4]}}
    r = call(server, "POST", "/v1/models/multi:predict", {"instances": [[1.0, 2.0]]})
    assert r.status_code == 400 and "instances is a plain list" in error_of(r)
    r = call(server, "POST", "/v1/models/multi:predict", {"instances": [{"a": [1.0, 2.0]}]})
    assert r.status_code == 400 and "keys must be equal to: a,s" in error_of(r)


def test_scalar_string_outputs_are_written_in_columnar_format(server):
    """A scalar string output left the session as a Python ``bytes``, not an array: the columnar
    answer was a 500 (``'bytes' object has no attribute 'dtype'``). TF Serving writes each scalar
    as a bare value (``AddTensorValues``), ``_bytes`` ones as ``{"b64": ...}``, every byte kept."""
    raw = b"ab\x00"
    r = call(server, "POST", "/v1/models/multi:predict",
             {"signature_name": "scalars", "inputs": [{"b64": base64.b64encode(raw).decode()}, "xyz"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": {"any": True, "count": 2, "first": "ab\x00",
                                    "first_bytes": {"b64": base64.b64encode(raw).decode()}}}
    r = call(server, "POST", "/v1/models/multi:predict", {"signature_name": "scalars", "instances": ["ab"]})
    assert r.status_code == 400 and error_of(r) == "Tensor name: any has no shape information "


def test_keras_exported_model_serves_what_keras_computes(server):
    import numpy as np

    x = np.linspace(0, 1, 64, dtype="float32").reshape(1, 8, 8, 1).tolist()
    r = call(server, "POST", "/v1/models/keras:predict", {"instances": x})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"][0]
    assert got == pytest.approx(server.keras_expected, abs=1e-6)
    meta = call(server, "GET", "/v1/models/keras/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    (inp,) = sig["inputs"].values()
    assert [int(d["size"]) for d in inp["tensor_shape"]["dim"]] == [-1, 8, 8, 1]


# -- classify / regress ---------------------------------------------------------------------
def test_regress(server):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    for path in (f"/v1/models/{M2}:regress", f"/v1/models/{M2}/versions/123:regress",
                 f"/v1/models/{M2}/labels/{LABEL}:regress"):
        r = call(server, "POST", path, body)
        assert r.status_code == 200 and r.json() == {"results": [42]}, path


def test_classify(server):
    r = call(server, "POST", f"/v1/models/{M2}:classify",
             {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]})
    assert r.status_code == 200 and r.json() == {"results": [[["", 12]]]}
    r = call(server, "POST", f"/v1/models/{M2}/labels/{LABEL}:classify",
             {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]})
    assert r.json() == {"results": [[["", 7]]]}


def test_classify_and_regress_errors(server):
    r = call(server, "POST", f"/v1/models/{M2}:regress", {"examples": [{"x": 1.0}]})
    assert r.status_code == 400
    assert error_of(r) == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                           "Was: tensorflow/serving/predict")
    r = call(server, "POST", f"/v1/models/{M2}:classify", {"signature_name": "classify_x_to_y"})
    assert r.status_code == 400 and "key 'examples' is expected and was not found" in error_of(r)
    r = call(server, "POST", "/v1/models/foo:classify", {"examples": [{"x": 1.0}]})
    assert r.status_code == 404


# -- status and metadata --------------------------------------------------------------------
AVAILABLE_123 = {"model_version_status": [
    {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_get_status(server):
    for path in (f"/v1/models/{M2}", f"/v1/models/{M2}/versions/123", f"/v1/models/{M2}/labels/{LABEL}"):
        r = call(server, "GET", path)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        assert r.json() == AVAILABLE_123, path


def test_status_lists_versions_highest_first(server):
    r = call(server, "GET", "/v1/models/both")
    assert [v["version"] for v in r.json()["model_version_status"]] == ["124", "123"]


def test_get_status_errors(server):
    r = call(server, "GET", "/v1/models/foo")
    assert r.status_code == 404 and error_of(r) == "Could not find any versions of model foo"
    r = call(server, "GET", f"/v1/models/{M2}/versions/7")
    assert r.status_code == 404 and error_of(r) == f"Could not find version 7 of model {M2}"


def test_metadata_matches_what_tf_serving_returns(server):
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    r = call(server, "GET", "/v1/models/default/metadata")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert order_free(r.json()) == order_free(expected)
    expected2 = json.loads((TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    for path in (f"/v1/models/{M2}/metadata", f"/v1/models/{M2}/versions/123/metadata",
                 f"/v1/models/{M2}/labels/{LABEL}/metadata"):
        assert order_free(call(server, "GET", path).json()) == order_free(expected2), path


def test_metadata_errors(server):
    r = call(server, "GET", "/v1/models/foo/metadata")
    assert r.status_code == 404 and error_of(r) == "Servable not found for request: Latest(foo)"


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    try:
        for i in range(20):
            conn.request("POST", "/v1/models/default:predict", body=json.dumps({"instances": [float(i)]}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read()) == {"predictions": [0.5 * i + 2]}
            if i == 0:
                sock = conn.sock
            assert conn.sock is sock  # the same TCP connection every time
    finally:
        conn.close()


def _http10(sock, request: bytes) -> tuple[bytes, bytes]:
    """Send one request on ``sock``; read its head and its Content-Length body -> (head, body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        body += chunk
    return head, body


def test_an_http_1_0_keep_alive_request_is_answered_as_libevent_answers_it(server):
    """ApacheBench ``ab -k`` sends HTTP/1.0 with ``Connection: Keep-Alive`` and keeps the
    connection only if the answer says keep-alive; otherwise it waits for the server to close it.
    libevent (evhttp_make_header_response) answers in the request's version and, for an HTTP/1.0
    keep-alive request, with ``Connection: keep-alive``. The local server kept the connection open
    but answered ``HTTP/1.1`` without the header, so each such request waited for the 30 s socket
    timeout. A plain HTTP/1.0 request is answered in HTTP/1.0 and the connection closed."""
    import socket

    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        for _ in range(2):              # the same connection serves the second request
            head, body = _http10(sock, b"POST /v1/models/default:predict HTTP/1.0\r\n"
                                       b"Connection: Keep-Alive\r\nContent-Length: 20\r\n\r\n"
                                       b'{"instances": [1.0]}')
            lines = head.split(b"\r\n")
            assert lines[0] == b"HTTP/1.0 200 OK", head
            assert b"Connection: keep-alive" in lines[1:], head
            assert json.loads(body) == {"predictions": [2.5]}
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        head, _ = _http10(sock, b"GET /v1/models/nope HTTP/1.0\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.0 404 Not Found", head
        assert b"keep-alive" not in head.lower()
        assert sock.recv(1) == b""      # closed after the answer, as HTTP/1.0 without keep-alive


def test_http_1_1_answers_carry_the_date_as_libevent_adds_it(server):
    """libevent's evhttp_make_header_response adds ``Date`` (RFC 1123, GMT) to every HTTP/1.1
    answer, between the handler's Content-Type and its own Content-Length; not to HTTP/1.0 ones.
    The local server sent none (a known limit until the twenty-fifth stop): a client or proxy that
    reads the server's clock from it (caching, clock-skew checks) got nothing."""
    import email.utils
    import socket
    import time

    for method, path in (("POST", f"/v1/models/{M2}:predict"), ("GET", "/v1/models/nope")):
        before = time.time()
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
            body = b'{"instances": [1.0]}' if method == "POST" else b""
            head, _ = _http10(sock, f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]
        assert names[:3] == [b"Content-Type", b"Date", b"Content-Length"], head
        date = next(line for line in head.split(b"\r\n") if line.startswith(b"Date: "))[6:].decode()
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", date), date
        assert before - 2 <= email.utils.parsedate_to_datetime(date).timestamp() <= time.time() + 1, date
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        head, _ = _http10(sock, b"GET /v1/models/nope HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 404") and b"\r\nDate:" not in head, head


def test_a_gzip_body_is_uncompressed_like_tf_serving(server):
    """TF Serving's HTTP server uncompresses a body whose Content-Encoding holds "gzip"
    (evhttp_request.cc ReadRequestGzipBytes, on by default, at most 100 MB); the local server read
    the compressed bytes as JSON ("Invalid encoding in string")."""
    import gzip

    body = json.dumps({"instances": [1.0, 2.0]}).encode()
    r = requests.post(f"{server.rest_url}/v1/models/{M2}:predict", data=gzip.compress(body),
                      headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5, 3.0]})
    # not gzip after all, or more than 100 MB once uncompressed: TF Serving hands on no body
    bomb = gzip.compress(b" " * (100 * 1024 * 1024 + 1), compresslevel=9)
    for data in (b"not gzip at all", bomb):
        r = requests.post(f"{server.rest_url}/v1/models/{M2}:predict", data=data,
                          headers={"Content-Encoding": "gzip"}, timeout=60)
        assert r.status_code == 400 and error_of(r).startswith("JSON Parse error: The document is empty"), r.text


def _served_alone(tmp_path, graph):
    """A TF1 SavedModel of ``graph()`` (its ``(inputs, outputs)`` tensors, as ``serving_default``),
    loaded as version 1 of "m", and the REST API over it alone: (the servable, the API)."""
    from contextlib import contextmanager

    import tensorflow as tf

    from serving_host import rest
    from serving_host.servable import Servable

    path = str(tmp_path / "1")
    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
        inputs, outputs = graph()
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={k: info(t) for k, t in inputs.items()}, outputs={k: info(t) for k, t in outputs.items()},
            method_name="tensorflow/serving/predict")
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    servable = Servable.load("m", 1, path)

    class Manager:
        @contextmanager
        def handle(self, *args):
            yield servable

    return servable, rest.RestApi(Manager())


def test_string_outputs_that_are_not_utf8_leave_as_their_bytes_as_in_tf_serving(tmp_path):
    """``AddSingleValueAndAdvance`` writes a DT_STRING output (not ``_bytes``) with rapidjson's
    ``writer.String(str.c_str(), str.size())``, which does not check UTF-8: the answer holds the
    tensor's bytes. This server replaced each byte that was not UTF-8 with U+FFFD."""
    import tensorflow as tf

    def graph():
        x = tf.compat.v1.placeholder(tf.string, [None], name="x")
        return {"x": x}, {"y": tf.strings.join([tf.fill(tf.shape(x), tf.constant(b"\xff")), x], name="y")}

    servable, api = _served_alone(tmp_path, graph)
    try:
        request = b'{"instances": ["a", "\\u00e9"]}'
        status, body = api.handle("POST", "/v1/models/m:predict", request)
    finally:
        servable.close()
    assert status == 200
    assert body == b'{\n    "predictions": ["\xffa", "\xff\xc3\xa9"\n    ]\n}'


def test_a_quantized_output_is_refused_over_rest_as_tf_serving_refuses_it(tmp_path):
    """TF Serving writes a predict's outputs to JSON from their TensorProtos, whose dtype is the
    graph's: ``AddSingleValueAndAdvance`` has no case for qint8 (nor quint8, qint16, quint16,
    qint32), so a quantized output answers 400 "Failed to write JSON value for tensor type: qint8".
    The session hands a quantized tensor back as plain integers, and this server wrote them as
    int8 numbers with 200, an answer TF Serving never gives. An empty one is still ``[]``."""
    import numpy as np
    import tensorflow as tf

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        return {"x": x}, {"q": tf.identity(tf.bitcast(tf.cast(x, tf.int8), tf.qint8), name="q"),
                          "y": tf.identity(x * 2, name="y")}

    servable, api = _served_alone(tmp_path, graph)
    try:
        assert servable.predict("", {"x": np.array([3.0], np.float32)})["q"].tolist() == [3]   # plain ints
        for body in (b'{"instances": [3.0, 4.0]}', b'{"inputs": [3.0]}'):
            status, text = api.handle("POST", "/v1/models/m:predict", body)
            assert (status, json.loads(text)) == (
                400, {"error": "Failed to write JSON value for tensor type: qint8"}), body
        status, text = api.handle("POST", "/v1/models/m:predict", b'{"inputs": {"x": []}}')
        assert (status, json.loads(text)) == (200, {"outputs": {"q": [], "y": []}})
    finally:
        servable.close()


def test_an_empty_resource_or_variant_input_is_run_as_tf_serving_runs_it(tmp_path):
    """``FillTensorProto`` makes a TensorProto of the signature's dtype and meets no value in
    ``{"inputs": []}``, so ``AddValueToTensor`` refuses nothing: TF Serving sends a DT_RESOURCE (or
    DT_VARIANT) tensor of shape [0], which ``Tensor::FromProto`` makes, and the session run's dtype
    check answers 400 "Expects arg[0] to be float but resource is provided" when the graph's tensor
    is another type. This server answered 501 "Conversion of JSON to type: resource", a text TF
    Serving never writes. Fed to a graph input of that very type, it is this server's own limit."""
    import tensorflow as tf

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        h = tf.compat.v1.placeholder(tf.resource, [None], name="h")
        return {"x": x, "h": h}, {"y": tf.identity(x * 2, name="y")}

    servable, api = _served_alone(tmp_path, graph)
    try:
        sig = servable.signatures["serving_default"]
        for dtype, name in ((20, "resource"), (21, "variant")):
            sig.inputs["x"].dtype = dtype          # a signature that says x is a resource (or variant)
            status, text = api.handle("POST", "/v1/models/m:predict", b'{"inputs": {"x": [], "h": []}}')
            assert (status, json.loads(text)) == (
                400, {"error": f"Expects arg[1] to be float but {name} is provided"}), name
        sig.inputs["x"].dtype = 1
        status, text = api.handle("POST", "/v1/models/m:predict", b'{"inputs": {"x": [1.0], "h": []}}')
        assert (status, json.loads(text)) == (501, {"error": "Feeding h:0 a resource tensor: the local server "
                                                             "cannot pass one to the model (TF Serving does)"})
        status, text = api.handle("POST", "/v1/models/m:predict", b'{"inputs": {"x": [1.0], "h": [1]}}')
        assert (status, json.loads(text)) == (501, {"error": "Conversion of JSON Value: 1 to type: resource"})
    finally:
        servable.close()


def test_status_and_metadata_text_is_written_as_tf_serving_writes_it(tfserving_factory, tmp_path):
    """TF Serving writes the status and metadata answers with C++ protobuf's MessageToJsonString:
    text outside ASCII as its UTF-8 bytes, and ``<``, ``>`` (and a few invisible code points) as
    ``\\u003c``, ``\\u003e``. This server wrote them with Python's ``MessageToJson``, which escapes
    every non-ASCII character (``mod\\u00e8le``) and leaves ``<`` as it is: a client comparing the
    text, or a person reading a failed load's message, saw something TF Serving never writes."""
    broken = tmp_path / "modèle<1>"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    config = f"""model_config_list {{
  config {{ name: "modèle<1>" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" }}
  config {{ name: "broken" base_path: "{broken}" model_platform: "tensorflow" }}
}}
"""
    srv = tfserving_factory(tmp_path / "serving", config, extra_args=("--max_num_load_retries=0",))
    srv.wait_for_state("broken", 1, "END")
    r = requests.get(f"{srv.rest_url}/v1/models/broken", timeout=30)
    assert r.status_code == 200
    message = f"Can't parse {broken}/1/saved_model.pb as binary proto"
    assert r.json()["model_version_status"][0]["status"]["error_message"] == message
    written = message.replace("<", "\\u003c").replace(">", "\\u003e").encode("utf-8")
    assert b'"error_message": "' + written + b'"' in r.content, r.content
    srv.wait_for_state("modèle<1>", 123, "AVAILABLE")
    r = requests.get(f"{srv.rest_url}/v1/models/mod%C3%A8le%3C1%3E/metadata", timeout=30)
    assert r.status_code == 200 and r.json()["model_spec"]["name"] == "modèle<1>"
    assert '"name": "modèle\\u003c1\\u003e"'.encode() in r.content, r.content


def test_a_failed_load_naming_a_file_that_is_not_utf8_keeps_status_and_reload_answering(tfserving_factory, tmp_path):
    """A version folder holding a dangling link whose name is not UTF-8 (b"\\xff") fails its
    resource reservation with the link's path in the message. TF Serving keeps the bytes, and its
    status answer shows each one C++ protobuf's JSON writer cannot decode as a space. This server
    kept the byte as a lone surrogate, which no protobuf string can hold: every status request for
    the model answered 500 "UnicodeEncodeError" (gRPC GetModelStatus UNKNOWN), and a ReloadConfig
    adding such a model did not end with its error."""
    import grpc
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
    )

    bad = tmp_path / "bad"
    (bad / "1").mkdir(parents=True)
    os.symlink("/nonexistent", os.path.join(bytes(bad / "1"), b"\xff"))
    config = f"""model_config_list {{
  config {{ name: "bad" base_path: "{bad}" model_platform: "tensorflow" }}
}}
"""
    srv = tfserving_factory(tmp_path / "serving", config, extra_args=("--max_num_load_retries=0",))
    message = (f"Error while attempting to reserve resources to load servable {{name: bad version: 1}}: "
               f"{bad}/1/ ; No such file or directory")
    assert srv.wait_for_state("bad", 1, "END")["status"] == {"error_code": "NOT_FOUND", "error_message": message}
    with grpc.insecure_channel(srv.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "bad"
        (status,) = stub.GetModelStatus(request, timeout=30).model_version_status
        assert (status.state, status.status.error_message) == (get_model_status_pb2.ModelVersionStatus.END, message)
        reload = model_management_pb2.ReloadConfigRequest()
        reload.config.model_config_list.config.add(name="again", base_path=str(bad), model_platform="tensorflow")
        with pytest.raises(grpc.RpcError) as e:
            stub.HandleReloadConfigRequest(reload, timeout=60)
        assert e.value.code() == grpc.StatusCode.UNKNOWN, e.value     # WaitUntilModelsAvailable
        assert f"{bad}/1/ ; No such file or directory" in e.value.details()
