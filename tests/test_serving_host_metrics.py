"""The local server's Prometheus page, line for line as TF Serving's exporter writes it.

Unit part: the cases of ``tensorflow_serving/util/prometheus_exporter_test.cc`` on our exporter,
and TF Serving's bucket limits (``util.cc``: scale 10 µs, power 1.8, 33 buckets). Server part:
a real ``python -m serving_host.local_server --monitoring_config_file=...`` after real REST
traffic, read with ``prometheus_client.parser`` and compared line by line.
"""
from __future__ import annotations

import pytest

from serving_host import metrics as m


def _registry_with(name, kind, labels, buckets=()):
    r = m.Registry()
    r.define(name, kind, labels, buckets)
    return r


# --- prometheus_exporter_test.cc ------------------------------------------------------------

def test_exporter_counter():
    r = _registry_with("/test/path/total", m.COUNTER, ("name",))
    r.counter("/test/path/total", ("abc",), 2)
    assert r.page() == '# TYPE :test:path:total counter\n:test:path:total{name="abc"} 2\n'


def test_exporter_histogram():
    r = _registry_with("/test/path/histogram", m.HISTOGRAM, ("status",),
                       m.exponential_buckets(1, 2, 10))
    for v in (2, 20, 200):
        r.sample("/test/path/histogram", ("good",), v)
    lines = [
        "# TYPE :test:path:histogram histogram",
        ':test:path:histogram_bucket{status="good",le="1"} 0',
        ':test:path:histogram_bucket{status="good",le="2"} 0',
        ':test:path:histogram_bucket{status="good",le="4"} 1',
        ':test:path:histogram_bucket{status="good",le="8"} 1',
        ':test:path:histogram_bucket{status="good",le="16"} 1',
        ':test:path:histogram_bucket{status="good",le="32"} 2',
        ':test:path:histogram_bucket{status="good",le="64"} 2',
        ':test:path:histogram_bucket{status="good",le="128"} 2',
        ':test:path:histogram_bucket{status="good",le="256"} 3',
        ':test:path:histogram_bucket{status="good",le="512"} 3',
        ':test:path:histogram_bucket{status="good",le="+Inf"} 3',
        ':test:path:histogram_sum{status="good"} 222',
        ':test:path:histogram_count{status="good"} 3']
    assert r.page() == "\n".join(lines) + "\n"


def test_exporter_sanitize_label_value():
    r = _registry_with("/test/path/total", m.COUNTER, ("name",))
    r.counter("/test/path/total", ('"abc\\"',), 2)
    assert r.page() == '# TYPE :test:path:total counter\n:test:path:total{name="\\"abc\\\\\\""} 2\n'


def test_exporter_sanitize_label_name():
    r = _registry_with("/test/path/total", m.COUNTER, ("my-name+1",))
    r.counter("/test/path/total", ("abc",), 2)
    assert r.page() == '# TYPE :test:path:total counter\n:test:path:total{my_name_1="abc"} 2\n'


def test_exporter_sanitize_metric_name():
    r = _registry_with("0/path-total_count", m.COUNTER, ("name",))
    r.counter("0/path-total_count", ("abc",), 2)
    assert r.page() == "# TYPE _0:path:total_count counter\n_0:path:total_count{name=\"abc\"} 2\n"


def test_exporter_unlabelled_and_empty_metrics():
    """No labels: ``NAME{} x`` and ``_bucket{le=..}``; a metric without cells keeps its TYPE line."""
    r = m.Registry()
    r.define("/a/scalar", m.COUNTER, ())
    r.define("/b/hist", m.HISTOGRAM, (), (1.0,))
    r.define("/c/empty", m.COUNTER, ("x",))
    r.counter("/a/scalar", (), 7)
    r.sample("/b/hist", (), 0.5)
    assert r.page() == ("# TYPE :a:scalar counter\n:a:scalar{} 7\n# TYPE :b:hist histogram\n"
                        ':b:hist_bucket{le="1"} 1\n:b:hist_bucket{le="+Inf"} 1\n:b:hist_sum{} 0.5\n'
                        ":b:hist_count{} 1\n# TYPE :c:empty counter\n")


def test_latency_buckets_are_tf_servings():
    assert len(m.LATENCY_BUCKETS) == 33
    assert [m.format_double(b) for b in m.LATENCY_BUCKETS[:8]] == [
        "10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22"]
    assert m.LATENCY_BUCKETS[-1] == pytest.approx(10 * 1.8 ** 32)
    assert m.format_double(m.LATENCY_BUCKETS[-1]).endswith("e+09")


def test_value_on_a_limit_goes_to_the_next_bucket():
    """TensorFlow's Histogram uses upper_bound: a sample equal to a limit is not 'le' it."""
    r = _registry_with("/h", m.HISTOGRAM, (), (10.0, 18.0))
    r.sample("/h", (), 10)
    assert ':h_bucket{le="10"} 0' in r.page() and ':h_bucket{le="18"} 1' in r.page()


def test_label_value_count_is_checked():
    r = _registry_with("/x", m.COUNTER, ("a", "b"))
    with pytest.raises(ValueError):
        r.counter("/x", ("only-one",))


# --- a running server ------------------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402

import requests  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.helpers import REPO, TF_SERVING_TESTDATA  # noqa: E402

TWO_VERSIONS = TF_SERVING_TESTDATA / "saved_model_half_plus_two_2_versions"
METRICS_PATH = "/monitoring/prometheus/metrics"
P = ":tensorflow:serving:"
TYPE_LINES = [f"# TYPE {P}model_warmup_latency histogram", f"# TYPE {P}model_warmup_records_read counter",
              f"# TYPE {P}request_count counter", f"# TYPE {P}request_example_count_total counter",
              f"# TYPE {P}request_example_counts histogram", f"# TYPE {P}request_latency histogram",
              f"# TYPE {P}runtime_latency histogram"]
MODEL = 'traffic"\\q'  # a name that needs escaping, as the exporter escapes it
ESCAPED = 'traffic\\"\\\\q'


@pytest.fixture(scope="module")
def server(tfserving_session_factory, tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics-serving")
    monitoring = base / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    quoted = MODEL.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))
    config = (f'model_config_list {{ config {{ name: "{quoted}" '
              f'base_path: "{TWO_VERSIONS}" model_platform: "tensorflow" '
              f"model_version_policy {{ specific {{ versions: 123 }} }} }} }}\n")
    srv = tfserving_session_factory(base, config, grpc=False,
                                    extra_args=(f"--monitoring_config_file={monitoring}",))
    yield srv  # the REST port answers only after the initial config is loaded: no status polls
    srv.stop()


def _page(srv) -> requests.Response:
    r = requests.get(srv.rest_url + METRICS_PATH, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain", r.text[:300]
    return r


def _traffic(srv) -> None:
    from urllib.parse import quote

    url = f"{srv.rest_url}/v1/models/{quote(MODEL, safe='')}"
    for x in (1.0, 2.0, 3.0):
        assert requests.post(url + ":predict", json={"instances": [x]}, timeout=30).status_code == 200
    r = requests.post(url + ":classify", json={"signature_name": "classify_x_to_y",
                                               "examples": [{"x": 20.0}]}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(url + ":regress", json={"signature_name": "regress_x_to_y",
                                              "examples": [{"x": 80.0}]}, timeout=30)
    assert r.status_code == 200, r.text
    assert requests.get(url, timeout=30).status_code == 200
    assert requests.get(url + "/metadata", timeout=30).status_code == 200
    assert requests.post(url + ":predict", data=b"{not json", timeout=30).status_code == 400
    for _ in range(2):
        r = requests.post(f"{srv.rest_url}/v1/models/no_such_model:predict", json={"instances": [1]},
                          timeout=30)
        assert r.status_code == 404
    assert requests.post(f"{srv.rest_url}/v1/foo", data=b"{}", timeout=30).status_code == 400


def test_page_after_real_rest_traffic(server):
    before = _page(server).text
    assert f'{P}request_count{{model_name="{ESCAPED}"' not in before
    _traffic(server)
    text = _page(server).text
    lines = text.split("\n")
    assert text.endswith("\n") and lines[-1] == ""
    assert [x for x in lines if x.startswith("#")] == TYPE_LINES  # no HELP, sorted by TF name
    assert not any("_created" in x or x.startswith(f"{P}request_count_total") for x in lines)

    # request_count: every request under /v1/, by status (http_server.cc)
    for line in (f'{P}request_count{{model_name="{ESCAPED}",status="OK"}} 7',
                 f'{P}request_count{{model_name="{ESCAPED}",status="INVALID_ARGUMENT"}} 1',
                 f'{P}request_count{{model_name="no_such_model",status="NOT_FOUND"}} 2',
                 f'{P}request_count{{model_name="",status="INVALID_ARGUMENT"}} 1'):
        assert line in lines, line

    # request_latency: OK requests only, API = the REST verb ("" for GET), 33 limits + +Inf
    les = [m.format_double(b) for b in m.LATENCY_BUCKETS] + ["+Inf"]
    for api, count in (("predict", 3), ("classify", 1), ("regress", 1), ("", 2)):
        labels = f'model_name="{ESCAPED}",API="{api}",entrypoint="REST"'
        buckets = [x for x in lines if x.startswith(f"{P}request_latency_bucket{{{labels},le=")]
        assert [x.split('le="')[1].split('"')[0] for x in buckets] == les
        values = [int(x.rsplit(" ", 1)[1]) for x in buckets]
        assert values == sorted(values) and values[-1] == count
        assert f"{P}request_latency_count{{{labels}}} {count}" in lines
        (sum_line,) = [x for x in lines if x.startswith(f"{P}request_latency_sum{{{labels}}} ")]
        assert float(sum_line.rsplit(" ", 1)[1]) > 0
    # runtime_latency: the session run of Predict/Classify/Regress (runtime TF1)
    for api, count in (("Predict", 3), ("Classify", 1), ("Regress", 1)):
        assert f'{P}runtime_latency_count{{model_name="{ESCAPED}",API="{api}",runtime="TF1"}} {count}' in lines

    # a well-kept parser reads the same values
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {(s.labels["model_name"], s.labels["status"]): s.value for s in fams[f"{P}request_count"].samples}
    assert counts[(MODEL, "OK")] == 7 and counts[("no_such_model", "NOT_FOUND")] == 2
    assert fams[f"{P}request_latency"].type == "histogram"
    hist = {s.labels["le"]: s.value for s in fams[f"{P}request_latency"].samples
            if s.name.endswith("_bucket") and s.labels["model_name"] == MODEL and s.labels["API"] == "predict"}
    assert len(hist) == 34 and hist["+Inf"] == 3
    assert {f"{P}model_warmup_latency", f"{P}model_warmup_records_read"} <= set(fams)


def test_page_is_served_for_any_method_and_head_has_no_body(server):
    r = requests.head(server.rest_url + METRICS_PATH, timeout=10)
    assert r.status_code == 200 and r.content == b""
    r = requests.post(server.rest_url + METRICS_PATH, data=b"ignored", timeout=10)
    assert r.status_code == 200 and r.text.startswith("# TYPE ")
    r = requests.get(server.rest_url + METRICS_PATH + "/more", timeout=10)  # exact path only
    assert r.status_code == 404 and r.headers["Content-Type"] == "text/html"


# --- the monitoring config -------------------------------------------------------------------
def test_metrics_path_from_monitoring_config():
    from serving_host import config as cfg

    assert cfg.metrics_path('prometheus_config { enable: true, path: "/m" }') == "/m"
    assert cfg.metrics_path("prometheus_config { enable: true }") == METRICS_PATH
    assert cfg.metrics_path('prometheus_config { path: "/m" }') is None
    assert cfg.metrics_path("") is None
    with pytest.raises(Exception, match="Invalid protobuf file"):
        cfg.metrics_path("prometheus_config { enabled: true }")


def test_bad_monitoring_config_stops_the_start_with_one_line(tmp_path):
    bad = tmp_path / "monitoring.config"
    bad.write_text("prometheus_config { enable: maybe }\n")
    p = subprocess.run([sys.executable, "-m", "serving_host.local_server", "--rest_api_port=1",
                        f"--model_base_path={tmp_path}", f"--monitoring_config_file={bad}"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 1, p.stderr
    last = p.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: Invalid protobuf file:") and "Traceback" not in p.stderr
    assert last.endswith("fix --monitoring_config_file and start again")


def test_request_latency_starts_once_the_body_has_arrived(tfserving_session_factory, tmp_path):
    """TF Serving's handler runs once libevent has the whole request (evhttp_server.cc), so a
    client slow to send its body does not count as server latency (it counted here: a bake then
    judged the clients' upload time)."""
    import socket
    import time

    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    config = (f'model_config_list {{ config {{ name: "slowbody" base_path: "{TWO_VERSIONS}" '
              f'model_platform: "tensorflow" }} }}\n')
    srv = tfserving_session_factory(tmp_path, config, grpc=False,
                                    extra_args=(f"--monitoring_config_file={monitoring}",))
    try:
        port = int(srv.rest_url.rsplit(":", 1)[1])
        body = b'{"instances": [1.0]}'
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/models/slowbody:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
            time.sleep(2.0)                                  # the client is slow with the rest
            s.sendall(body[5:])
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        fams = {f.name: f for f in text_string_to_metric_families(_page(srv).text)}
        (total,) = [x.value for x in fams[f"{P}request_latency"].samples
                    if x.name.endswith("_sum") and x.labels["model_name"] == "slowbody"]
        assert total < 1_000_000, f"{total} µs: the 2 s the body took to arrive counted as latency"
    finally:
        srv.stop()


def test_request_latency_counts_uncompressing_a_gzip_body(monkeypatch):
    """http_server.cc ProcessRequest takes its start time, then reads the body with
    ReadRequestBytes, which is where a gzip body is uncompressed (evhttp_request.cc
    ReadRequestGzipBytes): uncompressing is request latency there; only the body's arrival is not
    (the arrival was taken out, and the uncompressing with it)."""
    import gzip
    import io
    import time
    from contextlib import contextmanager

    from serving_host import http_body, rest

    real_gunzip = http_body.gunzip

    def slow_gunzip(data, *args, **kwargs):
        time.sleep(0.5)                            # a large body takes this long to uncompress
        return real_gunzip(data, *args, **kwargs)

    class Manager:
        @contextmanager
        def handle(self, *args):
            yield None

    monkeypatch.setattr(http_body, "gunzip", slow_gunzip)
    recorded = []
    monkeypatch.setattr(rest.metrics, "record_request", lambda *args: recorded.append(args))
    api = rest.RestApi(Manager())
    bodies = []
    monkeypatch.setattr(api, "_process", lambda r, body: bodies.append(body) or "{}")
    data = gzip.compress(b'{"instances": [1.0]}')
    body = http_body.Body({"Content-Encoding": "gzip", "Content-Length": str(len(data))}, io.BytesIO(data), 1 << 20)
    assert api.handle("POST", "/v1/models/gz:predict", body.read) == (200, "{}")
    assert bodies == [b'{"instances": [1.0]}']
    ((name, api_label, entrypoint, code, seconds),) = recorded
    assert (name, api_label, entrypoint, code) == ("gz", "predict", "REST", "OK")
    assert seconds >= 0.5, f"{seconds:.3f} s: uncompressing the body was left out of request_latency"


def test_the_monitoring_config_is_not_read_when_rest_is_off(tmp_path):
    """TF Serving reads --monitoring_config_file only when it starts the REST port (server.cc:
    inside ``if (server_options.http_port != 0)``): with --rest_api_port=0 a missing or broken
    file is never parsed and the gRPC server runs. This server refused to start."""
    import time

    from mlops.ports import free_port

    port = free_port()              # not bind(0): an ephemeral port may be some connection's by the time it binds
    bad = tmp_path / "monitoring.config"
    bad.write_text("prometheus_config { enable: maybe }\n")
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "serving_host.local_server", f"--port={port}",
                              "--rest_api_port=0", "--model_name=half",
                              f"--model_base_path={TF_SERVING_TESTDATA / 'saved_model_half_plus_two_cpu'}",
                              f"--monitoring_config_file={bad}"], stderr=err, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while p.poll() is None and "Running gRPC ModelServer" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert p.poll() is None, log.read_text()[-2000:]
    finally:
        p.terminate()
        p.wait(30)
