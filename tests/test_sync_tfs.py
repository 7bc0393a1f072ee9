"""The serving_sync pieces composed against the local TF-Serving-compatible server and a real
SavedModel: publish -> models.config (file poll or gRPC reload) -> wait AVAILABLE -> metadata and
predict -> validation entry keeps unversioned/stable traffic on the old version -> switch.
Also: TF Serving's own error message on a failed load, bounded waits, unreachable servers."""
from __future__ import annotations

import json
import shutil
import uuid
from types import SimpleNamespace

import pytest

from serving_sync import apply, host_config
from serving_sync import manifest as mf
from serving_sync import models_config as mc
from serving_sync.errors import HostUnreachable, ServingError, ServingTimeout
from serving_sync.layout import MODELS_CONFIG
from serving_sync.publish import publish
from serving_sync.tfs_client import TFServingClient, available_verdict, gone_verdict, normalize_signature, parse_status
from serving_sync.tfs_reload import reload_config
from serving_sync.transports.local import LocalTransport
from tests.helpers import loopback_http

MODEL = "digits"


@pytest.fixture
def bundle(tiny_serving_bundle):
    saved = tiny_serving_bundle / "tfserving"
    golden = tiny_serving_bundle / "golden"
    return saved, mf.build(saved), json.loads((golden / "request.json").read_text()), \
        json.loads((golden / "response.json").read_text()), json.loads((golden / "signature.json").read_text())


@pytest.fixture
def pooled(serving_pool):
    """A local server borrowed from the session's pool (``--max_num_load_retries=0``, a clean base,
    given back at teardown) and model names no test used before on it: TF Serving keeps the
    state of every version it has seen, so a name of its own makes it as new as a fresh server."""
    srv = serving_pool.take()
    suffix = uuid.uuid4().hex[:8]
    yield SimpleNamespace(srv=srv, base=srv.base, model=f"digits_{suffix}", other=f"other_model_{suffix}",
                          never=f"never-configured-{suffix}")
    serving_pool.give_back(srv)


def write_config(t: LocalTransport, state: mc.ModelState) -> str:
    text, _ = host_config.write(t, mc.apply_state(host_config.read(t), state))
    return text


def close(a, b, tol=1e-5) -> bool:
    return all(abs(x - y) <= tol for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.mark.slow
def test_publish_config_load_predict_then_validate_and_switch(pooled, bundle):
    saved, m, request, golden, signature = bundle
    srv, base, model = pooled.srv, pooled.base, pooled.model
    t = LocalTransport(base)
    client = TFServingClient(srv.rest_url)
    mbase = mc.model_base_path(str(base), model)

    publish(t, model, 1, saved, m)
    write_config(t, mc.ModelState(model, mbase, (1,)))
    apply.wait_loaded(client, model, 1, timeout=60, interval=0.2)
    write_config(t, mc.ModelState(model, mbase, (1,), {"stable": 1}))
    apply.wait_label(client, model, "stable", 1, timeout=30, interval=0.2)
    assert client.signature(model, label="stable") == signature
    assert close(client.predict(model, request)["predictions"], golden["predictions"])

    # v2 (same bytes, new number) loads in the validation entry only: stable/unversioned stay on v1
    publish(t, model, 2, saved, m)
    write_config(t, mc.ModelState(model, mbase, (1,), {"stable": 1}, validate=2))
    apply.wait_loaded(client, mc.validation_name(model), 2, timeout=60, interval=0.2)
    assert [s.version for s in client.model_status(model) if s.state == "AVAILABLE"] == [1]
    assert client.label_version(model, "stable") == 1
    assert close(client.predict(mc.validation_name(model), request, version=2)["predictions"],
                 golden["predictions"])

    # switch: load v2 in the main entry (v1 kept), then move stable, then drop the validation entry
    write_config(t, mc.ModelState(model, mbase, (1, 2), {"stable": 1}))
    apply.wait_loaded(client, model, 2, timeout=60, interval=0.2)
    write_config(t, mc.ModelState(model, mbase, (1, 2), {"stable": 2}))
    apply.wait_label(client, model, "stable", 2, timeout=30, interval=0.2)
    apply.wait_gone(client, mc.validation_name(model), [2], timeout=30, interval=0.2)
    assert close(client.predict(model, request, label="stable")["predictions"], golden["predictions"])
    # the previous version stays loaded for an instant rollback
    assert {s.version for s in client.model_status(model) if s.state == "AVAILABLE"} == {1, 2}


def _serving_v1(pooled, saved, m):
    """The ``pooled`` server with v1 of its model published, in models.config and AVAILABLE:
    (server, REST client)."""
    srv, base, model = pooled.srv, pooled.base, pooled.model
    t = LocalTransport(base)
    client = TFServingClient(srv.rest_url)
    publish(t, model, 1, saved, m)
    write_config(t, mc.ModelState(model, mc.model_base_path(str(base), model), (1,)))
    apply.wait_loaded(client, model, 1, timeout=60, interval=0.2)
    return srv, client


def _grpc_only_serving_v1(tfserving_factory, base, saved, m):
    """A server that reads models.config only at start (gRPC reloads only), v1 published,
    reloaded and AVAILABLE: (server, transport, client, the config text)."""
    srv = tfserving_factory(base, config_poll_seconds=0)
    t = LocalTransport(base)
    client = TFServingClient(srv.rest_url)
    publish(t, MODEL, 1, saved, m)
    text = write_config(t, mc.ModelState(MODEL, mc.model_base_path(str(base), MODEL), (1,)))
    assert reload_config(srv.grpc_address, text).ok
    apply.wait_loaded(client, MODEL, 1, timeout=60, interval=0.2)
    return srv, t, client, text


def test_grpc_reload_applies_the_config_at_once_and_reports_tf_servings_refusal(tfserving_factory, tmp_path,
                                                                                 bundle):
    saved, m, request, golden, _ = bundle
    base = tmp_path / "serving"
    srv, t, client, text = _grpc_only_serving_v1(tfserving_factory, base, saved, m)
    # a label on a version that is not loaded: TF Serving refuses the whole config, with its reason
    bad = mc.render(mc.apply_state(mc.parse(text), mc.ModelState(
        MODEL, mc.model_base_path(str(base), MODEL), (1, 5), {"stable": 5})))
    with pytest.raises(ServingError) as e:
        reload_config(srv.grpc_address, bad)
    msg = str(e.value)
    assert "\n" not in msg and "FAILED_PRECONDITION" in msg and "label" in msg
    assert client.version_status(MODEL, 1).state == "AVAILABLE"


def test_a_switch_refused_because_a_config_poll_reapplied_an_older_file_is_applied_again(tfserving_factory,
                                                                                          tmp_path, bundle):
    """TF Serving's config poll reads models.config outside its config lock; one that read the file
    before our last write can apply that older text after our reload and unload the version we
    loaded. The switch's label is then refused (from the file too, on every poll). The deploy's
    write puts the previous config back, waits for the version and switches again, once."""
    from types import SimpleNamespace

    from serving_sync import apply

    saved, m, request, golden, _ = bundle
    base = tmp_path / "serving"
    srv, t, client, text = _grpc_only_serving_v1(tfserving_factory, base, saved, m)
    host = SimpleNamespace(name="web-1", grpc=srv.grpc_address)
    mbase = mc.model_base_path(str(base), MODEL)
    previous = mc.parse(text)                  # what this host applied last: v1 loaded, no label
    switch = mc.apply_state(previous, mc.ModelState(MODEL, mbase, (1,), {"stable": 1}))
    # the stale poll: an older text (the model not yet configured) applied after our reload
    assert reload_config(srv.grpc_address, "model_config_list {}").ok
    apply.wait_gone(client, MODEL, [1], timeout=30, interval=0.1)
    with pytest.raises(ServingError) as e:     # what the switch met: the label is refused
        reload_config(srv.grpc_address, mc.render(switch))
    assert apply.refused_label(e.value)

    apply.apply_config_over(host, t, switch, previous, client, timeout=30, interval=0.1)
    assert client.label_version(MODEL, "stable") == 1
    assert close(client.predict(MODEL, request, label="stable")["predictions"], golden["predictions"])
    assert host_config.read(t) == switch                   # the file says what TF Serving applied
    # a label on a version the previous config did not load is refused at once, not retried
    bad = mc.apply_state(previous, mc.ModelState(MODEL, mbase, (1, 5), {"stable": 5}))
    with pytest.raises(ServingError) as e:
        apply.apply_config_over(host, t, bad, switch, client, timeout=5, interval=0.1)
    assert apply.refused_label(e.value) and client.label_version(MODEL, "stable") == 1


def test_kept_connections_reach_a_tf_serving_that_restarted(tfserving_factory, tmp_path, bundle):
    """The gRPC channel (kept per address) and the REST connection pool (kept per client) were
    opened before TF Serving stopped and came back on the same ports: the reload and requests
    after it get through at once, on a new channel."""
    from serving_sync import tfs_reload

    saved, m, request, golden, _ = bundle
    base = tmp_path / "serving"
    srv, t, client, text = _grpc_only_serving_v1(tfserving_factory, base, saved, m)
    assert close(client.predict(MODEL, request)["predictions"], golden["predictions"])
    before = tfs_reload._channels[srv.grpc_address]
    assert tfs_reload._channel(srv.grpc_address) == (before, True)

    srv.stop()                  # a reload now finds it down: the kept channel backs off
    with pytest.raises(HostUnreachable):
        reload_config(srv.grpc_address, text, timeout=5)
    with pytest.raises(HostUnreachable):
        client.model_status(MODEL)
    srv.start()                 # same ports; the next reload must not wait out the channel's backoff
    publish(t, MODEL, 2, saved, m)
    text = write_config(t, mc.ModelState(MODEL, mc.model_base_path(str(base), MODEL), (2,)))
    assert reload_config(srv.grpc_address, text, timeout=5).ok
    apply.wait_loaded(client, MODEL, 2, timeout=60, interval=0.2)
    assert close(client.predict(MODEL, request, version=2)["predictions"], golden["predictions"])
    assert tfs_reload._channels[srv.grpc_address] is not before


def test_failed_load_ends_with_tf_servings_error_message(pooled, tmp_path, bundle):
    saved, m, *_ = bundle
    srv, base, model = pooled.srv, pooled.base, pooled.model      # --max_num_load_retries=0
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel protobuf")
    t = LocalTransport(base)
    publish(t, model, 3, broken, mf.build(broken))
    write_config(t, mc.ModelState(model, mc.model_base_path(str(base), model), (3,)))
    client = TFServingClient(srv.rest_url)
    with pytest.raises(ServingError) as e:
        apply.wait_loaded(client, model, 3, timeout=60, interval=0.2)
    msg = str(e.value)
    assert "\n" not in msg and f"loading {model} version 3 failed" in msg
    status = client.version_status(model, 3)
    assert status.state == "END" and status.error_message and status.error_message in msg


def test_waits_are_bounded_and_say_the_last_state(pooled):
    srv, never = pooled.srv, pooled.never
    client = TFServingClient(srv.rest_url)
    with pytest.raises(ServingTimeout) as e:
        apply.wait_loaded(client, never, 1, timeout=1.0, interval=0.2)
    assert "within 1s" in str(e.value) and "not known to TF Serving yet" in str(e.value)
    assert client.model_status(never) == []
    assert client.label_version(never, "stable") is None
    with pytest.raises(ServingError, match="HTTP 404"):
        client.metadata(never)


def test_unreachable_rest_is_one_clear_line():
    from mlops.ports import free_port

    port = free_port()                  # nothing listens there
    with pytest.raises(HostUnreachable) as e:
        TFServingClient(f"http://127.0.0.1:{port}", timeout=2).model_status(MODEL)
    assert "\n" not in str(e.value) and "not reachable" in str(e.value)
    with pytest.raises(HostUnreachable, match="gRPC .* unreachable"):
        reload_config(f"127.0.0.1:{port}", "model_config_list {}", timeout=2)


def test_the_client_takes_proxy_and_auth_from_the_environment_once(monkeypatch):
    """What requests would take for the URL: HTTP_PROXY unless NO_PROXY covers the host, and basic
    auth from user:password in the URL; decided when the client is made, not per request."""
    import urllib3

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    direct = TFServingClient("http://127.0.0.1:8501")
    assert not isinstance(direct._http, urllib3.ProxyManager) and direct._headers == {}
    proxied = TFServingClient("http://tfs-user:s3cret@serving.example:8501")
    assert isinstance(proxied._http, urllib3.ProxyManager)
    assert proxied._http.proxy.host == "proxy.example" and proxied._http.proxy.port == 3128
    assert proxied._headers == urllib3.make_headers(basic_auth="tfs-user:s3cret")


# --- pure parts ------------------------------------------------------------------------------
def test_status_parsing_and_wait_verdicts():
    body = {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "3", "state": "END", "status": {"error_code": "NOT_FOUND", "error_message": "no pb"}},
        {"version": "4", "state": "LOADING", "status": {}},
        {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}}]}
    st = parse_status(body)
    assert [s.version for s in st] == [2, 3, 4, 1]
    assert available_verdict(st, 2).done
    v3 = available_verdict(st, 3)
    assert v3.failed and v3.detail == "no pb"
    assert available_verdict(st, 4) == available_verdict(st, 4) and not available_verdict(st, 4).done
    assert available_verdict(st, 1).failed and "unloaded" in available_verdict(st, 1).detail
    assert available_verdict(st, 9).detail == "not known to TF Serving yet"
    assert gone_verdict(st, 1).done and gone_verdict(st, 9).done and not gone_verdict(st, 2).done


def test_signature_normalization_of_tf_serving_metadata():
    meta = {"model_spec": {"name": "m", "version": "1"}, "metadata": {"signature_def": {"signature_def": {
        "__saved_model_init_op": {"outputs": {"__saved_model_init_op": {
            "dtype": "DT_INVALID", "tensor_shape": {"dim": [], "unknown_rank": True}}}},
        "serving_default": {
            "inputs": {"inputs": {"dtype": "DT_FLOAT", "name": "serving_default_inputs:0", "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": "8", "name": ""}, {"size": "8", "name": ""},
                        {"size": "1", "name": ""}], "unknown_rank": False}}},
            "outputs": {"output_0": {"dtype": "DT_FLOAT", "name": "StatefulPartitionedCall:0", "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": "10", "name": ""}], "unknown_rank": False}}},
            "method_name": "tensorflow/serving/predict"},
        "other": {"inputs": {"x": {"dtype": "DT_STRING", "tensor_shape": {"unknown_rank": True}}},
                  "outputs": {}, "method_name": "tensorflow/serving/predict"}}}}}
    assert normalize_signature(meta, ("serving_default",)) == {"serving_default": {
        "method_name": "tensorflow/serving/predict",
        "inputs": {"inputs": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
        "outputs": {"output_0": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}
    everything = normalize_signature(meta)
    assert sorted(everything) == ["other", "serving_default"]
    assert everything["other"]["inputs"]["x"]["shape"] is None


def test_version_published_over_ssh_loads_and_predicts(pooled, sshd, bundle):
    from serving_sync.transports import open_transport
    from tests.test_sync_support import ssh_host

    saved, m, request, golden, signature = bundle
    srv, base, model = pooled.srv, pooled.base, pooled.model
    t = open_transport(ssh_host(sshd, base))
    try:
        assert publish(t, model, 4, saved, m).status == "uploaded"
        text = mc.render(mc.apply_state(mc.ServingConfig(), mc.ModelState(
            model, mc.model_base_path(str(base), model), (4,))))
        t.write_file_atomic(MODELS_CONFIG, text.encode())
        client = TFServingClient(srv.rest_url)
        apply.wait_loaded(client, model, 4, timeout=60, interval=0.2)
        assert client.signature(model, version=4) == signature
        assert close(client.predict(model, request, version=4)["predictions"], golden["predictions"])
        assert publish(t, model, 4, saved, m).bytes_transferred == 0
    finally:
        t.close()


def test_a_wait_polls_soon_then_backs_off_to_its_interval_and_stays_bounded(monkeypatch):
    """A tiny model is AVAILABLE within tens of ms: the second poll comes after 10 ms, not after
    the interval; the pauses double up to the interval, and their count is bounded by the timeout."""
    from serving_sync import tfs_client
    from serving_sync.tfs_client import TFServingClient, WaitVerdict, iter_pauses

    p = list(iter_pauses(120, 0.2))
    assert p[:6] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.2] and set(p[5:]) == {0.2}
    assert sum(p) >= 120 and len(p) <= 120 / 0.2 + 6
    assert list(iter_pauses(0, 0.5)) == [] and list(iter_pauses(0.05, 0.5)) == [0.01, 0.02, 0.04]
    slept = []
    monkeypatch.setattr(tfs_client.time, "sleep", slept.append)
    answers = iter([WaitVerdict(False, detail="LOADING")] * 3 + [WaitVerdict(True)])
    TFServingClient("http://127.0.0.1:9").wait_until("loading m version 1", lambda: next(answers),
                                                     timeout=5, interval=0.2)
    assert slept == [0.01, 0.02, 0.04]
    calls = []
    with pytest.raises(tfs_client.ServingTimeout):
        TFServingClient("http://127.0.0.1:9").wait_until(
            "loading m version 1", lambda: calls.append(1) or WaitVerdict(False, detail="LOADING"),
            timeout=0.3, interval=0.1)
    assert len(calls) <= len(list(iter_pauses(0.3, 0.1))) + 1


def test_a_proxy_that_cannot_be_reached_is_named_not_tf_serving(monkeypatch):
    """Found by review (2026-12-05, third stop): with HTTP_PROXY naming a dead proxy, a host's TF
    Serving was reported "not reachable; check that it runs and the host's rest_url"."""
    from mlops.ports import free_port

    for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HostUnreachable) as e:
        TFServingClient("http://serving.example:8501", timeout=2).model_status(MODEL)
    line = str(e.value)
    assert "\n" not in line and "cannot reach the HTTP proxy" in line and "NO_PROXY" in line, line
    assert "check that it runs" not in line


def test_a_proxy_that_asks_for_credentials_gets_those_in_http_proxy(monkeypatch):
    """``requests`` sends ``user:password@`` of HTTP_PROXY as Proxy-Authorization; the client set
    up its proxy the way requests does but dropped them, so an authenticating proxy answered 407
    on every host (found by the security review, 2026-12-05, fourth stop). A real proxy on
    127.0.0.1 here demands them and answers for TF Serving when they come."""
    import base64
    from http.server import BaseHTTPRequestHandler

    expected = "Basic " + base64.b64encode(b"proxy-user:pr0xy-pass").decode()
    seen: list[tuple[str, str | None]] = []

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("Proxy-Authorization")))
            ok = self.headers.get("Proxy-Authorization") == expected
            body = (b'{"model_version_status": [{"version": "3", "state": "AVAILABLE", "status": {}}]}'
                    if ok else b"proxy authentication required")
            self.send_response(200 if ok else 407)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_http(Proxy) as url:
        for var in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", url.replace("http://", "http://proxy-user:pr0xy-pass@"))
        statuses = TFServingClient("http://serving.example:8501", timeout=5).model_status(MODEL)
    assert [(s.version, s.state) for s in statuses] == [(3, "AVAILABLE")]
    assert seen == [(f"http://serving.example:8501/v1/models/{MODEL}", expected)]


@pytest.fixture
def endless_rest():
    """A web server on 127.0.0.1 that is not TF Serving: /big answers with a body far larger than
    any TF Serving answer (bounded: 96 MB), /slow trickles a byte every 0.25 s (bounded: 24 bytes),
    each read well within the client's read timeout."""
    import time
    from http.server import BaseHTTPRequestHandler

    class Endless(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            big = "/big" in self.path
            chunk, count, pause = (b"x" * 65536, 96 * 16, 0.0) if big else (b"x", 24, 0.25)
            self.send_response(200)
            self.send_header("Content-Length", str(len(chunk) * count))
            self.end_headers()
            try:
                for _ in range(count):
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if pause:
                        time.sleep(pause)     # the slow server itself, not a synchronisation
            except OSError:                   # the client went away
                pass

    with loopback_http(Endless) as url:
        yield url


def test_an_answer_past_the_size_bound_or_the_timeout_is_one_line(endless_rest, monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): the client read the whole body (``r.data``)
    whatever its length and for as long as it came, each read within the timeout: a rest_url naming
    another web server (a file server, a stream) held the deploy and its memory. Now at most
    MAX_BODY_BYTES within the request's timeout, then one line."""
    import time

    from serving_sync import tfs_client

    for var in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    client = TFServingClient(f"{endless_rest}/big", timeout=5)
    with pytest.raises(ServingError) as e:
        client.model_status(MODEL)
    line = str(e.value)
    assert "\n" not in line and f"more than {tfs_client.MAX_BODY_BYTES // (1024 * 1024)} MB" in line, line
    with pytest.raises(ServingError, match="more than"):   # the cut connection is not read again
        client.model_status(MODEL)
    slow = TFServingClient(f"{endless_rest}/slow", timeout=1)
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as e:
        slow.model_status(MODEL)
    assert time.monotonic() - started < 3.5, "the answer was read past the request's timeout"
    assert "did not finish its answer within 1s" in str(e.value), str(e.value)


def test_an_answer_whose_headers_trickle_ends_at_the_requests_timeout(monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): only the body was read within the request's
    timeout; a server sending its status line and headers a byte every 0.25 s (each well within
    the read timeout; bounded: 60 bytes) held the client for as long as it sent. Now the whole
    answer is read within the timeout, and a server that answers at once still gets every request
    of a client over one kept connection."""
    import time
    from http.server import BaseHTTPRequestHandler

    ports: list[int] = []
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"x" * 20 + b"\r\n"

    class SlowHeaders(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            ports.append(self.client_address[1])
            if "/slowhead" not in self.path:
                body = json.dumps({"model_version_status": [{"version": "3", "state": "AVAILABLE"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            try:
                for i in range(len(head)):
                    self.wfile.write(head[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.25)          # the slow server itself, not a synchronisation
                self.wfile.write(b"Content-Length: 2\r\n\r\n{}")
            except OSError:                   # the client went away
                pass
            self.close_connection = True

    for var in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with loopback_http(SlowHeaders) as url:
        slow = TFServingClient(f"{url}/slowhead", timeout=1)
        started = time.monotonic()
        with pytest.raises(HostUnreachable) as e:
            slow.model_status(MODEL)
        assert time.monotonic() - started < 3, "the headers were read past the request's timeout"
        assert "did not answer within 1s" in str(e.value) and "\n" not in str(e.value), str(e.value)
        fast = TFServingClient(url, timeout=5)
        assert [s.version for s in fast.model_status(MODEL)] == [3]
        assert [s.version for s in fast.model_status(MODEL)] == [3]
        assert len(ports) == 3 and ports[1] == ports[2], ports   # the second reused the connection
        fast.close()
        slow.close()


@pytest.mark.slow
def test_a_version_answering_exactly_its_golden_float32_outputs_passes_the_smoke_test_at_atol_0(
        pooled, bundle):
    """(found by review) the golden set writes each float32 output as its shortest text
    (``mlproject.export``), TF Serving as ``%.9g``: the same float32 values differ by ~1e-9 as
    doubles, and ``--atol 0`` failed a version that answered exactly what it was exported with."""
    import numpy as np

    from mlproject.export import predict_response
    from serving_sync.smoke import Golden, SmokeOptions, run_smoke

    saved, m, request, golden, signature = bundle
    model = pooled.model
    srv, client = _serving_v1(pooled, saved, m)
    exported = predict_response({"output_0": np.asarray(golden["predictions"], np.float32)})
    for response, atol in ((exported, 0.0), (golden, 0.0), (exported, 1e-4)):
        report = run_smoke(client, "h", model, Golden(request, response, signature), 1, route_version=1,
                           opts=SmokeOptions(atol=atol, requests=20, budget_ms=60_000))
        assert report.passed, report.summary()
    # one float32 step off is still a difference at atol 0; a NaN is never equal to itself
    rows = np.asarray(golden["predictions"], np.float32)
    for bad in (np.nextafter(rows[0, 0], np.float32(1)), np.float32("nan")):
        off = rows.copy()
        off[0, 0] = bad
        report = run_smoke(client, "h", model, Golden(request, predict_response({"output_0": off}), signature), 1,
                           route_version=1, opts=SmokeOptions(atol=0.0), latency=False)
        assert not report.passed and "1 value(s) differ by more than atol 0" in report.summary()
    client.close()


@pytest.mark.parametrize("answer, vias", [
    ({"model_spec": {"version": "latest"}}, ("stable",)),     # a version route does not read it
    ({"model_spec": "x"}, ("stable", "version")),
    ({"model_spec": {"version": "3"}, "metadata": "x"}, ("stable", "version"))])
def test_json_that_is_not_tf_servings_is_a_failed_smoke_check_not_a_traceback(answer, vias):
    """(found by review) a rest_url answering 200 with JSON whose TF Serving fields have other
    types (a version that is no number, an object that is a string) raised ValueError or
    AttributeError out of ``mlops sync smoke`` (and a deploy's smoke step)."""
    from http.server import BaseHTTPRequestHandler
    from types import SimpleNamespace

    from serving_sync.smoke import Golden
    from serving_sync.smoke_hosts import smoke_hosts

    class Odd(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    golden = Golden({"instances": [[1.0]]}, {"predictions": [[1.0]]}, {"serving_default": {
        "method_name": "tensorflow/serving/predict", "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 1]}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 1]}}}})
    with loopback_http(Odd) as url:
        for via in vias:
            (report,) = smoke_hosts([SimpleNamespace(name="h", rest_url=url)], MODEL, 3, golden, via=via)
            assert not report.passed
            (check,) = report.checks
            # --via version asks the version's status first: the status answer is the odd one then
            assert check.name == "reachable" and ("with JSON that is not TF Serving's" in check.message or (
                via == "version" and "not as TF Serving does; check the host's rest_url" in check.message)), \
                check.message


@pytest.mark.slow
def test_a_smoke_via_a_label_not_assigned_says_why_and_which_command_fixes_it(pooled, bundle):
    """(found by review) ``mlops sync smoke --via stable`` against a host that serves the version but
    was never deployed with labels (installed by hand, or models.config written before the first
    deploy) said "stable -> nothing, expected v1", as it did for a host that serves no version of
    the model at all: neither why nor what to do. Now each says what holds on the host and which
    command fixes it; a label on another version names both ways out."""
    from types import SimpleNamespace

    from serving_sync.smoke import Golden, SmokeOptions
    from serving_sync.smoke_hosts import smoke_hosts

    saved, m, request, golden, signature = bundle
    srv, base, model, other = pooled.srv, pooled.base, pooled.model, pooled.other
    t = LocalTransport(base)
    client = TFServingClient(srv.rest_url)
    mbase = mc.model_base_path(str(base), model)
    publish(t, model, 1, saved, m)
    publish(t, model, 2, saved, m)
    write_config(t, mc.ModelState(model, mbase, (1, 2)))
    apply.wait_loaded(client, model, 1, timeout=60, interval=0.2)
    apply.wait_loaded(client, model, 2, timeout=60, interval=0.2)
    hosts = [SimpleNamespace(name="web-1", rest_url=srv.rest_url)]
    opts = SmokeOptions(requests=20, budget_ms=60_000)

    def label_check(model: str, version: int):
        (report,) = smoke_hosts(hosts, model, version, Golden(request, golden, signature), via="stable", opts=opts)
        assert not report.passed and [c.name for c in report.checks] == ["label"], report.to_dict()
        assert report.host == "web-1"
        return report.checks[0].message

    message = label_check(model, 2)
    assert message == ("stable -> nothing, expected v2: no version holds the label 'stable' on this host (TF "
                       "Serving serves v1, v2 without it); `mlops sync deploy` assigns it, or --via version "
                       "tests v2's own route"), message
    message = label_check(other, 2)
    assert message == ("stable -> nothing, expected v2: TF Serving on this host serves no version of "
                       f"'{other}'; deploy v2 with `mlops sync deploy`"), message
    write_config(t, mc.ModelState(model, mbase, (1, 2), {"stable": 1}))
    apply.wait_label(client, model, "stable", 1, timeout=30, interval=0.2)
    message = label_check(model, 2)
    assert message == ("stable -> 1, expected v2: the host serves another version; deploy v2 with `mlops sync "
                       "deploy`, or smoke-test v1 with --version 1"), message
    (report,) = smoke_hosts(hosts, model, 1, Golden(request, golden, signature), via="stable", opts=opts)
    assert report.passed and report.checks[0].message == "stable -> 1", report.to_dict()
    client.close()


@pytest.mark.slow
def test_a_smoke_via_a_version_not_loaded_says_so_once_and_which_command_fixes_it(pooled,
                                                                                   bundle):
    """(found by review) ``mlops sync smoke --via version`` on a host that does not serve the
    version (a host added after the deploy, a deploy that stopped before it) failed the signature
    and the golden outputs each with TF Serving's 404 ("Servable not found for request:
    Specific(digits, 3)"), and named no fix. It is one failed ``version`` check now, saying what
    the host serves and which command puts the version there."""
    from types import SimpleNamespace

    from serving_sync.smoke import Golden, SmokeOptions
    from serving_sync.smoke_hosts import smoke_hosts

    saved, m, request, golden, signature = bundle
    srv, client = _serving_v1(pooled, saved, m)
    hosts = [SimpleNamespace(name="web-1", rest_url=srv.rest_url)]
    opts = SmokeOptions(requests=20, budget_ms=60_000)
    (report,) = smoke_hosts(hosts, pooled.model, 3, Golden(request, golden, signature), via="version", opts=opts)
    assert not report.passed and [(c.name, c.message) for c in report.checks] == [
        ("version", "v3 is not loaded on this host (unknown to TF Serving; it serves v1); `mlops sync deploy` puts "
                    "production there, `--version 3` this one")], report.to_dict()
    (report,) = smoke_hosts(hosts, pooled.other, 3, Golden(request, golden, signature), via="version", opts=opts)
    assert report.checks[0].message.startswith("v3 is not loaded on this host (unknown to TF Serving; it serves "
                                               f"no version of '{pooled.other}'); "), report.to_dict()
    (report,) = smoke_hosts(hosts, pooled.model, 1, Golden(request, golden, signature), via="version", opts=opts)
    assert report.passed and [c.name for c in report.checks] == ["version", "signature", "golden_outputs", "latency"]
    assert report.checks[0].message == "v1 AVAILABLE"
    client.close()
