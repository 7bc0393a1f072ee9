"""The local server's REST edge under hostile input, against a real running server.

Each case is sent over real sockets to ``python -m serving_host.local_server`` (TF Serving's
half_plus_two test model) started with a small worker pool (3 threads) and a short socket
timeout (2 s), and each ends by showing the server still answers a normal predict:

- a 57 MiB POST to an unknown model: 404 with TF Serving's JSON error, the body never read
  (the server's RSS, from /proc, grows by less than 24 MiB);
- a body over ``--rest_api_max_body_bytes``: libevent's 413 page at once, nothing read;
- a chunked trailer that never ends: libevent's 413 page once it is over the head's bound;
- JSON nested too deep and integers/floats too large: 400 ``{ "error": ... }``, never 500;
- echoed input in error messages is cut;
- many silent and slow-header connections (more than the workers) do not stop normal
  requests, and all are closed after the socket timeout.
"""
from __future__ import annotations

import json
import os
import select
import selectors
import socket
import time

import pytest
import requests

from tests.helpers import TF_SERVING_TESTDATA

HALF_PLUS_TWO = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu"
SOCKET_TIMEOUT = 2
THREADS = 3
MAX_BODY = 64 * 1024 * 1024
CONFIG = f"""model_config_list {{
  config {{ name: "default" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" }}
}}
"""


@pytest.fixture(scope="module")
def server(tfserving_session_factory, tmp_path_factory):
    srv = tfserving_session_factory(
        tmp_path_factory.mktemp("edges-serving"), CONFIG, grpc=False,
        extra_args=(f"--rest_api_socket_timeout_seconds={SOCKET_TIMEOUT}",
                    f"--rest_api_num_threads={THREADS}", f"--rest_api_max_body_bytes={MAX_BODY}",
                    *PRODUCTION_ONLY_FLAGS))
    srv.wait_for_state("default", 123, "AVAILABLE")
    yield srv
    srv.stop()


# TF Serving flags a production command line carries that the local server does not implement: it
# exited on "unrecognized arguments"; it takes them and says, once each, that they do nothing here
PRODUCTION_ONLY_FLAGS = ("--enable_batching", "--num_unload_threads=2",
                         "--tensorflow_intra_op_parallelism=2", "--grpc_max_threads=4")


def test_tf_serving_flags_it_does_not_implement_are_taken_and_logged(server):
    log = server.log()
    for flag in PRODUCTION_ONLY_FLAGS:
        name, _, value = flag.removeprefix("--").partition("=")
        assert f"--{name}={value or 'true'} has no effect in the local server (TF Serving uses it)" in log, log[-2000:]
    assert _predict(server, {"instances": [1.0]}).json() == {"predictions": [2.5]}


def _predict(srv, body=None, *, raw: bytes | None = None, model: str = "default",
             timeout: float = 30) -> requests.Response:
    data = raw if raw is not None else json.dumps(body if body is not None else {"instances": [1.0]})
    return requests.post(f"{srv.rest_url}/v1/models/{model}:predict", data=data, timeout=timeout)


def _still_serves(srv) -> None:
    r = _predict(srv, {"instances": [1.0, 2.0]}, timeout=10)
    assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}, r.text


def _error(r: requests.Response) -> str:
    assert r.headers["Content-Type"] == "application/json", r.headers
    doc = r.json()
    assert list(doc) == ["error"], doc
    return doc["error"]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _raw_request(srv, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection; return everything until the server closes it."""
    with socket.create_connection(("127.0.0.1", srv.rest_port), timeout=timeout) as s:
        s.sendall(head + body)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


# -- a large body -------------------------------------------------------------------------------
def test_57_mib_post_to_unknown_model_is_404_without_keeping_the_body(server):
    body = b'{"instances": [' + b"1.0," * (57 * 1024 * 1024 // 4) + b"1.0]}"
    assert len(body) > 57 * 1024 * 1024
    _still_serves(server)  # warm: first requests allocate caches
    before = _rss_mib(server.proc.pid)
    r = _predict(server, raw=body, model="no_such_model", timeout=60)
    after = _rss_mib(server.proc.pid)
    assert r.status_code == 404
    assert _error(r) == "Servable not found for request: Latest(no_such_model)"
    assert after - before < 24, f"RSS grew from {before:.0f} to {after:.0f} MiB"
    _still_serves(server)


def test_a_post_to_an_unknown_model_keeps_the_connection_as_tf_serving_does(server):
    """libevent reads every body before TF Serving's handler runs, so a 404 for an unknown model
    (a JSON error, not libevent's page) keeps a keep-alive connection: the next request on it is
    answered. The local server answered without reading the body and closed the connection (a
    known limit until the twenty-fourth stop), so a client's pooled connection broke after it."""
    post = (b"POST /v1/models/no_such_model:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
            b'{"instances": [1.0]}')
    chunked = (b"POST /v1/models/no_such_model:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"14\r\n" + b'{"instances": [1.0]}' + b"\r\n0\r\n\r\n")
    follow = b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    put = (b"PUT /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
           b'{"instances": [1.0]}')        # a method the handler refuses: its JSON error, not a page
    for first, status, error in ((post, b"404 Not Found", b"Servable not found for request: Latest(no_such_model)"),
                                 (chunked, b"404 Not Found", b"Servable not found for request: Latest(no_such_model)"),
                                 (put, b"400 Bad Request", b"Malformed request: PUT /v1/models/default:predict")):
        reply = _raw_request(server, first + follow)
        assert reply.startswith(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"), reply[:300]
        assert error in reply, reply[:500]
        assert reply.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200 OK\r\n" in reply, reply[:800]
        assert reply.split(b"HTTP/1.1 200 OK", 1)[0].count(b"Connection: close") == 0, reply[:800]


def test_body_over_the_limit_is_413_at_once(server):
    head = (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    t0 = time.monotonic()
    reply = _raw_request(server, head, b'{"instances": [1.0')  # the rest is never sent
    assert reply.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), reply[:200]
    assert b"Connection: close" in reply and b"<TITLE>413 Request Entity Too Large</TITLE>" in reply
    assert time.monotonic() - t0 < SOCKET_TIMEOUT + 3  # answered, then closed after a bounded linger
    _still_serves(server)


def test_chunked_body_over_the_limit_is_413(server):
    head = (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    reply = _raw_request(server, head, b"%x\r\n" % (MAX_BODY + 1) + b"{")
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    _still_serves(server)


def test_a_chunked_trailer_that_never_ends_is_413_and_frees_the_worker(server):
    """A client sending trailer lines after the last chunk for ever (found by review: they were
    read without a bound, holding a worker): cut as libevent cuts a trailer over max_headers_size,
    with its 413, once the trailer is over the head's bound (MAX_HEAD_BYTES, under 1 MiB)."""
    head = (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'14\r\n{"instances": [1.0]}\r\n0\r\n')
    line = b"X-Trailer: " + b"a" * 1000 + b"\r\n"
    budget, sent, answered = 8 * 1024 * 1024, 0, False   # bounded in bytes and in time
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(head)
        s.setblocking(False)
        deadline = time.monotonic() + 10
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while sent < budget and time.monotonic() < deadline:
                events = sel.select(timeout=max(0.0, deadline - time.monotonic()))
                if any(mask & selectors.EVENT_READ for _, mask in events):
                    answered = True      # the server answered or closed
                    break
                if events:
                    try:
                        sent += s.send(line * 16)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:      # reset: the server closed
                        answered = True
                        break
        assert answered, f"the server still read the trailer after {sent} bytes"
        s.settimeout(SOCKET_TIMEOUT + 3)
        try:
            reply = s.recv(65536)
        except ConnectionResetError:
            reply = b""
    assert reply.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), reply[:200]
    _still_serves(server)


def _chunked_with_trailer(extra_head: bytes, trailer: bytes) -> bytes:
    return (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_head
            + b"Transfer-Encoding: chunked\r\n\r\n" + b'14\r\n{"instances": [1.0]}\r\n0\r\n' + trailer + b"\r\n")


def test_head_and_trailer_share_one_size_budget_as_libevent_s_headers_size(server):
    """libevent's evhttp_parse_headers_ adds each trailer line to the request's ``headers_size``,
    which already holds the request line and headers, against one ``max_headers_size``: a 500 KB
    head with a 400 KB trailer is over the bound (MAX_HEAD_BYTES, 864 KiB) and answered 413, though
    each alone is under it. The trailer had a budget of its own, so it was answered 200."""
    from serving_host.http_body import MAX_HEAD_BYTES

    pad = b"a" * 50_000
    head = b"".join(b"X-Pad-%d: %s\r\n" % (i, pad) for i in range(10))
    trailer = b"".join(b"X-Trailer-%d: %s\r\n" % (i, pad) for i in range(8))
    assert len(head) < MAX_HEAD_BYTES and len(trailer) < MAX_HEAD_BYTES < len(head) + len(trailer)
    reply = _raw_request(server, _chunked_with_trailer(b"", trailer))
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]       # the trailer alone fits
    reply = _raw_request(server, _chunked_with_trailer(head, trailer))
    assert reply.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), reply[:200]
    _still_serves(server)


@pytest.mark.parametrize("line", [b"no colon here\r\n", b"X-Ok: 1\r\n\r\r\n"])
def test_a_trailer_line_that_is_not_a_header_is_413_as_libevent_answers_it(server, line):
    """A trailer line without ``:`` (not a continuation) is DATA_CORRUPTED in evhttp_parse_headers_,
    which evhttp_read_trailer fails as EVREQ_HTTP_DATA_TOO_LONG: 413. It was skipped and the
    request answered 200."""
    reply = _raw_request(server, _chunked_with_trailer(b"", line))
    assert reply.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), reply[:200]
    reply = _raw_request(server, _chunked_with_trailer(b"", b"X-Ok: 1\r\n  continued\r\n"))
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]     # a continuation line is a header


@pytest.mark.parametrize("size", [b"-1", b"1_0", b"ff;ext=1", b"zz"])
def test_a_malformed_chunk_size_is_refused_before_the_body_is_read(server, size):
    """``int(size, 16)`` took ``-1``, and ``read(-1)`` then read until the client closed: past the
    body limit, holding a worker. libevent's strtoll refuses it as corrupt data, which it answers
    413 (``EVREQ_HTTP_DATA_TOO_LONG``)."""
    head = (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    t0 = time.monotonic()
    reply = _raw_request(server, head, size + b"\r\n" + b"x" * (1 << 20), timeout=SOCKET_TIMEOUT + 5)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert time.monotonic() - t0 < SOCKET_TIMEOUT + 3
    _still_serves(server)


@pytest.mark.parametrize("framing, status", [
    (b"Content-Length: 2_0\r\n", b"400 Bad Request"),           # int() read it as 20
    (b"Content-Length: \xa020\r\n", b"400 Bad Request"),        # int() skipped the Latin-1 space
    (b"Content-Length:\r\n", b"400 Bad Request"),               # read as no body
    (b"Content-Length: +20  \r\n", b"200 OK"),
    (b"Transfer-Encoding: gzip, chunked\r\nContent-Length: 20\r\n", b"200 OK"),   # was read as chunked
    (b"Transfer-Encoding: xchunked\r\nContent-Length: 20\r\n", b"200 OK"),
    (b"Transfer-Encoding: Chunked \r\nContent-Length: 999\r\n", b"200 OK"),       # chunked: no length
])
def test_body_framing_headers_are_read_as_libevent_reads_them(server, framing, status):
    """evhttp_get_body: chunked only when the whole Transfer-Encoding value is "chunked" (any case),
    and then Content-Length is not looked at; else Content-Length is strtoll's, every character of
    it, not negative, and an empty or illegal one is EVREQ_HTTP_INVALID_HEADER: libevent's 400 page."""
    body = b'{"instances": [1.0]}'
    if b"Chunked" in framing:
        body = b"14\r\n" + body + b"\r\n0\r\n\r\n"
    head = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + framing + b"\r\n"
    reply = _raw_request(server, head, body)
    assert reply.startswith(b"HTTP/1.1 " + status + b"\r\n"), reply[:300]
    if status == b"400 Bad Request":
        assert reply.endswith(b"<TITLE>400 Bad Request</TITLE>\n</HEAD><BODY>\n<H1>Bad Request</H1>\n</BODY></HTML>\n")
    else:
        assert reply.endswith(b'{\n    "predictions": [2.5\n    ]\n}'), reply[-200:]


def _expecting(server, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """Send a head, read the first answer (bounded), then send the body; what came before and after."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=SOCKET_TIMEOUT + 3) as s:
        s.sendall(head)
        first = s.recv(65536)
        try:
            s.sendall(body)
        except OSError:
            pass
        rest, deadline = b"", time.monotonic() + SOCKET_TIMEOUT + 3
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except OSError:
                break
            if not data:
                break
            rest += data
    return first, rest


def test_expect_is_answered_as_libevent_s_evhttp_get_body_answers_it(server):
    """http.server sent "100 Continue" to any HTTP/1.1 request asking, before looking at it, and
    ignored other expectations. libevent (evhttp_get_body): only a request with a body gets it, one
    over the body limit is 413 without it, and an expectation other than 100-continue is 417."""
    post = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    body = b'{"instances": [1.0]}'
    first, rest = _expecting(server, post + b"Expect: 100-Continue\r\nContent-Length: 20\r\n\r\n", body)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n", first
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:200]
    first, _ = _expecting(server, post + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), b"")
    assert first.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), first[:200]
    first, _ = _expecting(server, post + b"Expect: 200-ok\r\nContent-Length: 20\r\n\r\n", body)
    assert first.startswith(b"HTTP/1.1 417 Expectation Failed\r\n"), first[:200]
    assert b"<TITLE>417 Expectation Failed</TITLE>" in first and b"\r\nConnection: close\r\n" in first
    get = b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n\r\n"
    reply = _raw_request(server, get)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]          # no body: no 100 Continue
    _still_serves(server)


def test_a_chunk_size_as_strtoll_reads_it_is_taken():
    """Blanks, a sign, 0x and text after a space: libevent takes them (only the digits count)."""
    from serving_host.http_body import chunk_size

    assert chunk_size(b"  +0x14 anything\r\n") == 20 and chunk_size(b"ff ff\r\n") == 255
    assert chunk_size(b"0\r\n") == 0 and chunk_size(b"-0\r\n") == 0
    for bad in (b"-1\r\n", b"1_0\r\n", b"ff;x\r\n", b"0x\r\n"):
        with pytest.raises(ValueError):
            chunk_size(bad)


def test_text_after_the_json_document_is_ignored_and_a_repeated_key_keeps_its_first_value(server):
    """rapidjson stops at the end of the root value (kParseStopWhenDoneFlag) and FindMember finds
    the first of repeated keys; this server refused the first and answered with the last value."""
    for raw in (b'{"instances": [1.0]} trailing', b'{"instances": [1.0]}{"x": 1}', b'{"instances": [1.0]}\n{}',
                b'{"instances": [1.0], "instances": [5.0]}'):
        r = _predict(server, raw=raw)
        assert r.status_code == 200 and json.loads(r.text) == {"predictions": [2.5]}, (raw, r.text)


def test_a_query_string_is_part_of_the_path_as_tf_serving_reads_it(server):
    """TF Serving matches uri_path() with its query: no route takes one. This server stripped it
    and answered 200, counting the request under the bare model name."""
    base = f"http://127.0.0.1:{server.rest_port}/v1/models/default"
    r = requests.post(f"{base}:predict?x=1", data=b'{"instances": [1.0]}', timeout=30)
    assert r.status_code == 400 and _error(r) == "Malformed request: POST /v1/models/default:predict?x=1", r.text
    r = requests.get(f"{base}?x=1", timeout=30)
    assert r.status_code == 404 and _error(r) == "Could not find any versions of model default?x=1", r.text
    # the absolute form of the request target (a proxy's) keeps it too
    reply = _raw_request(server, f"GET {base}?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 404 ") and b"model default?x=1" in reply, reply[:300]


def test_the_request_target_is_read_as_libevent_s_strict_uri_parser_reads_it(server):
    """TF Serving's ParsedEvRequest::decode parses the target with evhttp_uri_parse (libevent
    2.1.12, RFC 3986): a character a path or query may not hold (``| [ ] " { }``, a byte over
    0x7f), a ``%`` without two hex digits or a bad port is 400 Bad Request, libevent's page, the
    connection closed; a leading ``//`` starts an authority, so ``//v1/models/m`` is the path
    ``/models/m`` (404 page). This server answered the first as model names (404 JSON) and the
    second 200 (http.server folds leading slashes): a client's bad URL passed here and failed
    against TF Serving."""
    def get(target: bytes) -> bytes:
        return _raw_request(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    for target in (b"/v1/models/a|b", b"/v1/models/a[0]", b'/v1/models/a"b', b"/v1/models/de%zzfault",
                   b"/v1/models/default%4", b"/v1/models/caf\xc3\xa9", b"/v1/models/default?x=[1]",
                   b"/v1/models/default#{}", b"http://h:99999/v1/models/default"):
        reply = get(target)
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (target, reply[:300])
        assert b"<TITLE>400 Bad Request</TITLE>" in reply and b"Connection: close" in reply, reply[:300]
    reply = get(b"//v1/models/default")
    assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"<TITLE>404 Not Found</TITLE>" in reply, reply[:300]
    # what it takes: sub-delims, '@', '~', %XX (decoded for the name), an authority (empty too)
    reply = get(b"/v1/models/a%7Cb!$&'()*+,;=@~")
    assert reply.startswith(b"HTTP/1.1 404 ") and b"model a|b!$&'()*+,;=@~" in reply, reply[:300]
    for target in (b"///v1/models/default", b"http://h:8501/v1/models/default", b"http://u@[::1]/v1/models/default"):
        reply = get(target)
        assert reply.startswith(b"HTTP/1.1 200 ") and b'"AVAILABLE"' in reply, (target, reply[:300])
    _still_serves(server)


def test_uri_path_as_evhttp_uri_parse_and_parsed_ev_request_read_it():
    from serving_host.http_uri import uri_path

    taken = {"/v1/models/m:predict": "/v1/models/m:predict", "/v1/models/m?x=1#f?/": "/v1/models/m?x=1#f?/",
             "/a?": "/a?", "//h:80/v1/x": "/v1/x", "//u:p%41@h/p": "/p", "http://[::1]:8501/p?q": "/p?q",
             "http://[v1.x:y]/p": "/p", "HTTP://h": "", "/p%41%7c": "/p%41%7c", "/p\0|": "/p",
             "a:b": "b", "v1/x:y": "v1/x:y"}
    for target, path in taken.items():
        assert uri_path(target) == path, target
    for target in ("/a|b", "/a b", "/a%4", "/a%g0", "/\x7f", "/caf\xc3\xa9", "/a?[", "/a#%", "//h:65536/p",
                   "//[::1/p", "//[]/p", "//[zz]/p", "//h^/p", "//u|@h/p", "1a:b", "_x:/"):
        assert uri_path(target) is None, target


# -- hostile JSON -------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [65, 100, 500, 990, 5000, 200_000])
def test_json_nested_too_deep_is_400(server, depth):
    raw = '{"instances": ' + "[" * depth + "1.0" + "]" * depth + "}"
    r = _predict(server, raw=raw.encode())
    assert r.status_code == 400, r.text[:300]
    assert _error(r)
    _still_serves(server)


def test_deep_json_inside_an_object_is_400(server):
    raw = '{"inputs": {"x": ' + "[" * 3000 + "]" * 3000 + "}}"
    r = _predict(server, raw=raw.encode())
    assert r.status_code == 400, r.text[:300]
    _still_serves(server)


@pytest.mark.parametrize("number", ["1" * 4301, "-" + "9" * 10_000, "1" * 310, "1e400", "-2.5e999"])
def test_numbers_too_large_are_400_like_rapidjson(server, number):
    raw = '{"instances": [' + number + "]}"
    r = _predict(server, raw=raw.encode())
    assert r.status_code == 400, r.text[:300]
    assert _error(r) == "JSON Parse error: Number too big to be stored in double. at offset: 15"
    _still_serves(server)


def test_large_integer_that_fits_a_double_is_converted_not_refused(server):
    # TF Serving >= 2.5 (json_tensor.cc:293-296): GetFloat() of 1.1e299 is inf, no precision check.
    r = _predict(server, raw=b'{"instances": [' + b"1" * 300 + b"]}")
    assert r.status_code == 200 and r.text == '{\n    "predictions": [Infinity\n    ]\n}', r.text


def test_echoed_input_is_cut(server):
    # JsonValueToDebugString (json_tensor.cc:177-236) stops writing once 256 bytes are out, but
    # a token begun under the limit is written whole: one long string is echoed entirely.
    r = _predict(server, raw=json.dumps("x" * 200_000).encode())
    message = _error(r)
    assert r.status_code == 400 and message == 'JSON Value: "' + "x" * 200_000 + '" Is not object'
    r = _predict(server, raw=json.dumps(list(range(100_000))).encode())
    message = _error(r)
    assert message.startswith("JSON Value: [0, 1, 2, ") and message.endswith(", 66 Is not object"), message
    long_path = "/v1/" + "p" * 20_000
    r = requests.post(server.rest_url + long_path, data=b"{}", timeout=10)
    message = _error(r)
    assert r.status_code == 400 and message.startswith("Malformed request: POST /v1/ppp")
    assert len(message) < 1200
    _still_serves(server)


# -- stalled connections ------------------------------------------------------------------------
def test_stalled_connections_hold_no_worker_and_are_closed_after_the_timeout(server):
    """20 silent sockets and 2 x THREADS sockets stuck inside their request head: more than the
    workers, yet normal requests are answered at once; every stalled one is closed on time.

    "At once" is measured against the socket timeout, not a fixed second: a request queued behind
    stalled connections gets a worker only when one of them times out, SOCKET_TIMEOUT after it was
    opened, so each round stalls a fresh set and its normal request must be answered within
    SOCKET_TIMEOUT of that set's first connect. (Each request had to take < 1 s, which a loaded
    machine does not promise; nor could one set serve five rounds, the later ones being late.)"""
    addr = ("127.0.0.1", server.rest_port)
    stalled = []                                  # (socket, when its connect began)
    try:
        for _ in range(5):
            t = time.monotonic()
            for _ in range(20):
                stalled.append((socket.create_connection(addr, timeout=10), t))
            for _ in range(2 * THREADS):
                s = socket.create_connection(addr, timeout=10)
                s.sendall(b"POST /v1/models/default:predict HTTP/1.1\r\nContent-Le")
                stalled.append((s, t))
            _still_serves(server)
            waited = time.monotonic() - t
            assert waited < SOCKET_TIMEOUT, f"a normal request waited {waited:.2f} s behind stalled connections"
        # every close as it comes (a socket already closed when the watch starts counts as closed
        # then: the first rounds' may be, after slow later rounds)
        watch, lifetimes, late = time.monotonic(), [], []
        with selectors.DefaultSelector() as sel:
            for s, opened in stalled:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, opened)
            while sel.get_map() and time.monotonic() < watch + SOCKET_TIMEOUT + 5:
                for key, _ in sel.select(timeout=0.5):
                    try:
                        data = key.fileobj.recv(1024)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", data[:200]  # closed without an answer, as an idle connection is
                    now = time.monotonic()
                    sel.unregister(key.fileobj)
                    lifetimes.append(now - key.data)
                    if now > max(key.data + SOCKET_TIMEOUT + 3, watch + 0.5):
                        late.append(now - key.data)
            assert not sel.get_map(), f"{len(sel.get_map())} stalled connections never closed"
        assert late == [], late
        assert min(lifetimes) >= SOCKET_TIMEOUT - 0.5, lifetimes
    finally:
        for s, _ in stalled:
            s.close()
    _still_serves(server)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")     # utime + stime


def test_out_of_file_descriptors_the_server_neither_spins_nor_floods_its_log(server):
    """Found by the security review (2026-12-05, fourth stop): with its file descriptors used up by
    idle connections (``max_connections``, 1024, is also the usual soft RLIMIT_NOFILE), ``accept``
    failed with EMFILE and the selector, still seeing the listening socket readable, called it again
    at once: one warning per failure (some 25,000 lines a second into the log) and a core at 100%
    for as long as the connections stayed (a client re-opening them every socket timeout: for good),
    and a new client waited for an idle one to time out. Now the longest-parked idle connection makes
    room, as at ``max_connections``: no spin, at most a line a minute, new clients served at once."""
    import resource

    pid = server.proc.pid
    addr = ("127.0.0.1", server.rest_port)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    log_before = len(server.log())
    held = []
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 30, hard))
    try:
        for _ in range(60):                   # 30 more than it has descriptors for
            held.append(socket.create_connection(addr, timeout=10))
        time.sleep(0.3)
        cpu = _cpu_seconds(pid)
        time.sleep(1.2)                       # within the socket timeout: the idle ones still open
        spent = _cpu_seconds(pid) - cpu
        t = time.monotonic()
        _still_serves(server)
        waited = time.monotonic() - t
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for s in held:
            s.close()
    lines = server.log()[log_before:].splitlines()
    assert spent < 0.4, f"{spent:.2f} s of CPU in 1.2 s with every descriptor in use"
    assert len(lines) <= 2, (len(lines), lines[:3])
    assert waited < 1.0, f"a new client waited {waited:.2f} s"
    _still_serves(server)


def test_a_stalled_body_is_cut_after_the_timeout(server):
    head = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    t0 = time.monotonic()
    reply = _raw_request(server, head, b'{"instances": [1', timeout=SOCKET_TIMEOUT + 8)
    assert reply == b"" and time.monotonic() - t0 < SOCKET_TIMEOUT + 3
    _still_serves(server)


def test_a_keep_alive_client_sending_its_next_head_slowly_holds_no_worker(server):
    """THREADS + 1 keep-alive clients each send a request and the first byte of the next, then one
    more byte of that head every 0.25 s (slow loris). A worker read the rest of a pipelined head
    itself, each byte restarting the socket timeout: all workers were held for as long as the
    clients kept sending, and a normal request waited. Now a partial head goes back to the
    selector (as libevent holds no thread while it reads) and is closed SOCKET_TIMEOUT after."""
    import threading

    one = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n" \
          b'{"instances": [1.0]}'
    loris = []
    for _ in range(THREADS + 1):
        s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
        s.sendall(one + b"P")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        loris.append(s)
    answered: list[float] = []

    def normal() -> None:
        t0 = time.monotonic()
        _still_serves(server)
        answered.append(time.monotonic() - t0)

    helper = threading.Thread(target=normal, daemon=True)
    open_at_end = set(loris)
    rest = b"OST /v1/models/default:predict HTTP/1.1\r\nX-Slow: "
    try:
        t0 = time.monotonic()
        helper.start()
        for i in range(int((2 * SOCKET_TIMEOUT + 2) / 0.25)):      # 6 s of one byte each 0.25 s
            for s in list(open_at_end):
                try:
                    s.send(rest[i:i + 1] or b"a")
                except OSError:
                    open_at_end.discard(s)          # the server closed it
            ready, _, _ = select.select(list(open_at_end), [], [], 0.25)
            for s in ready:                           # readable: closed by the server (EOF or reset)
                try:
                    if s.recv(65536) == b"":
                        open_at_end.discard(s)
                except OSError:
                    open_at_end.discard(s)
        helper.join(timeout=10)
    finally:
        for s in loris:
            s.close()
    assert answered and answered[0] < SOCKET_TIMEOUT / 2, f"a normal request waited {answered} s behind slow heads"
    assert not open_at_end, f"{len(open_at_end)} slow-head connections still open after {time.monotonic() - t0:.1f} s"


@pytest.mark.parametrize("end", [b"", b"\r\n\r\n"])
def test_a_head_over_the_bound_is_400_at_once_as_libevent_s_max_headers_size(server, end):
    """A head over MAX_HEAD_BYTES is libevent's DATA_TOO_LONG (evhttp_parse_headers_), failed as
    EVREQ_HTTP_INVALID_HEADER: its 400 page. A worker went on reading such a head from the socket,
    under http.server's own limits (100 lines of 64 KiB): one that stops unfinished was held until
    the socket timeout and closed without an answer; a whole one was served."""
    from serving_host.http_body import MAX_HEAD_BYTES

    head = b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\n" \
        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 60_000) for i in range(MAX_HEAD_BYTES // 60_000 + 1))
    assert len(head) > MAX_HEAD_BYTES
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=SOCKET_TIMEOUT + 3) as s:
        s.sendall(head[:-2] + end)            # unfinished: the last line has no end; the socket stays open
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply[:200]
    assert b"\r\nConnection: close\r\n" in reply and b"<TITLE>400 Bad Request</TITLE>" in reply, reply
    _still_serves(server)


def test_the_head_is_read_as_libevent_reads_it_not_as_http_server(server):
    """Under the head's one bound (MAX_HEAD_BYTES) libevent takes a request line or header line of
    any length and any number of header lines; http.server answered over 64 KiB with its 414 or
    431 page and over 100 lines with 431. A line that is no header (no ":", or a continuation
    first) is libevent's 400 page; http.server took it for the end of the headers and served the
    request without the rest. ``Connection`` is trimmed, and before HTTP/1.1 a value starting
    "keep-alive" keeps the connection (evhttp_is_connection_keepalive)."""
    close = b"Connection: close\r\n"
    follow = b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n"
    reply = _raw_request(server, b"GET /v1/models/" + b"m" * 70_000 + b" HTTP/1.1\r\n" + close + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"), reply[:200]
    assert b"\"error\": \"Could not find any versions of model mmmm" in reply, reply[:300]
    for head in (b"".join(b"X-%d: a\r\n" % i for i in range(150)), b"X-Long: " + b"a" * 70_000 + b"\r\n"):
        reply = _raw_request(server, b"GET /v1/models/default HTTP/1.1\r\n" + head + close + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]
    for bad in (b"Host x\r\n", b" folded\r\nHost: x\r\n"):
        reply = _raw_request(server, b"GET /v1/models/default HTTP/1.1\r\n" + bad + close + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (bad, reply[:200])
        assert b"<TITLE>400 Bad Request</TITLE>" in reply and reply.count(b"HTTP/1.1 ") == 1, reply
    reply = _raw_request(server, b"GET /v1/models/default HTTP/1.0\r\nConnection: Keep-Alive, x\r\n\r\n" + follow)
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and b"\r\nConnection: keep-alive\r\n" in reply, reply[:300]
    assert reply.count(b" 200 OK\r\n") == 2, reply             # kept open: the next request is answered
    reply = _raw_request(server, b"GET /v1/models/default HTTP/1.1\r\nConnection: close \r\n\r\n" + follow)
    assert b"\r\nConnection: close\r\n" in reply and reply.count(b" 200 OK\r\n") == 1, reply
    _still_serves(server)


def test_keep_alive_and_pipelined_requests_still_work(server):
    one = (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
           b'{"instances": [1.0]}')
    last = one.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    reply = _raw_request(server, one + one + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 3, reply[:500]
    with requests.Session() as s:
        for _ in range(5):
            r = s.post(f"{server.rest_url}/v1/models/default:predict", json={"instances": [2.0]}, timeout=10)
            assert r.json() == {"predictions": [3.0]}


def test_libevent_error_pages_close_the_connection_as_tf_serving_does(server):
    """evhttp_send_error (libevent 2.1.12 http.c, TF Serving's REST transport) sends its page
    through evhttp_send_page_, which adds ``Connection: close``, and evhttp_send_done then frees
    the connection: a keep-alive request after a 404 page is never answered there. A method
    libevent does not allow (evhttp_server.cc allows GET POST HEAD PUT DELETE OPTIONS PATCH) is
    its 501 page (evhttp_handle_request), also closing. The local server kept the connection
    open after its 404 page and answered unknown methods with Python's 501 page."""
    follow = b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = _raw_request(server, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" + follow)
    assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n"), reply[:300]
    assert b"\r\nConnection: close\r\n" in reply and reply.count(b"HTTP/1.1 ") == 1, reply[:500]
    for method in (b"FOO", b"TRACE", b"CONNECT", b"get"):
        reply = _raw_request(server, method + b" /v1/models/default HTTP/1.1\r\nHost: x\r\n\r\n" + follow)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), (method, reply[:300])
        assert b"\r\nContent-Type: text/html" in head and b"\r\nConnection: close" in head, (method, head)
        assert body == (b"<HTML><HEAD>\n<TITLE>501 Not Implemented</TITLE>\n</HEAD><BODY>\n"
                        b"<H1>Not Implemented</H1>\n</BODY></HTML>\n"), (method, body)
    _still_serves(server)


def test_no_metrics_endpoint_without_monitoring_config(server):
    """Without --monitoring_config_file the path is unknown: libevent's 404 page, as TF Serving."""
    r = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == "text/html"
    assert r.text == ("<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                      "</BODY></HTML>\n")


def test_worker_threads_stay_bounded_under_many_connections(server):
    """60 open connections and 12 clients at once add no thread once the pool of THREADS is grown
    (a thread per connection would add 60)."""
    from concurrent.futures import ThreadPoolExecutor

    def tasks() -> int:
        return len(os.listdir(f"/proc/{server.proc.pid}/task"))

    def burst(n: int) -> list[int]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: _predict(server, timeout=20).status_code, range(n)))

    assert burst(2 * THREADS) == [200] * (2 * THREADS)  # the pool grows to THREADS here
    before = tasks()
    held = [socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) for _ in range(60)]
    try:
        for s in held[:30]:
            s.sendall(b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\n")  # an unfinished head
        assert burst(12) == [200] * 12
        during = tasks()
    finally:
        for s in held:
            s.close()
    assert during - before <= 1, f"threads {before} -> {during}"
    _still_serves(server)


# -- the pure parts (no server) -------------------------------------------------------------------
def test_route_names_the_model_and_api_as_http_server_cc_records_them():
    from serving_host.rest import route

    r = route("POST", "/v1/models/m%2Fx/versions/3:predict")
    assert (r.name, r.version, r.kind, r.api, r.error) == ("m/x", 3, "predict", "predict", None)
    r = route("GET", "/v1/models/m/labels/stable/metadata")
    assert (r.name, r.label, r.kind, r.api, r.error) == ("m", "stable", "metadata", "", None)
    assert route("POST", "/v1/models/m:PREDICT").error.message == "Malformed request: POST /v1/models/m:PREDICT"
    assert route("PUT", "/v1/models/m").error.code == "INVALID_ARGUMENT"
    r = route("POST", f"/v1/models/m/versions/{2**64}:predict")
    assert r.name == "m" and "Failed to convert version" in r.error.message
    assert len(route("POST", "/v1/" + "x" * 50_000).error.message) < 1200


def test_route_takes_the_path_case_insensitively_but_only_metadata_in_lower_case_is_metadata():
    """kModelStatusApiRegex is (?i), so ``/V1/MODELS/m/VERSIONS/3/METADATA`` matches, but the
    handler compares the subresource with ``== "metadata"``: anything else is a status request."""
    from serving_host.rest import route

    r = route("GET", "/V1/MODELS/m/VERSIONS/3/METADATA")
    assert (r.name, r.version, r.kind, r.error) == ("m", 3, "status", None)
    r = route("GET", "/v1/models/m/versions/3/metadata")
    assert (r.name, r.version, r.kind, r.error) == ("m", 3, "metadata", None)


def test_json_codec_numbers_and_echoes():
    from serving_host import json_parse, json_text
    from serving_host.status import ServingError

    assert json_parse.parse_json(b'{"a": 18446744073709551616, "b": 1e308}') == {"a": 2**64, "b": 1e308}
    for raw in (b'{"a": ' + b"9" * 309 + b"}", b'{"a": -1e309}'):
        with pytest.raises(ServingError, match="Number too big to be stored in double. at offset: 6"):
            json_parse.parse_json(raw)
    assert json_text.truncate("x" * 10) == "x" * 10
    assert json_text.truncate("x" * 2000) == "x" * 1024 + "... (976 more characters)"


@pytest.mark.parametrize("flag", ["--rest_api_num_threads=0", "--rest_api_socket_timeout_seconds=0",
                                  "--rest_api_max_body_bytes=-1"])
def test_bad_rest_edge_flags_are_one_line(flag, tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    p = subprocess.run([sys.executable, "-m", "serving_host.local_server", "--rest_api_port=1",
                        f"--model_base_path={tmp_path}", flag],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: --rest_api_")
