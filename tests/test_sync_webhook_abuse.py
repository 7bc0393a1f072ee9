"""The webhook receiver under abuse: half-open connections, malformed signatures, oversized bodies.

Everything talks to a real receiver on 127.0.0.1 over real sockets; every loop is bounded.
"""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid

import pytest

from serving_sync.webhook import Receiver, precheck, sign, verify

SECRET = "whsec-test-secret-0123456789abcdef"
EVENT = {"entity": "model_version_alias", "action": "created",
         "data": {"name": "digits", "alias": "production", "version": "3"}}


def signed(event=EVENT, *, ts: int | None = None) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event)
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()) if ts is None else ts)
    return ({"X-MLflow-Signature": sign(SECRET, delivery, stamp, body), "X-MLflow-Timestamp": stamp,
             "X-MLflow-Delivery-Id": delivery, "Content-Type": "application/json"}, body.encode())


def raw_post(port: int, headers: dict[str, str] | list[tuple[bytes, bytes]], body: bytes,
             timeout: float = 10.0) -> tuple[int, bytes]:
    """POST with exact header bytes; (status, body) of the answer, (0, b"") if none came."""
    items = headers.items() if isinstance(headers, dict) else headers
    head = b"POST /mlflow-hook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for k, v in items:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        head += k + b": " + v + b"\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        return 0, b""
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.fixture
def receiver():
    got: list[dict] = []
    rec = Receiver(SECRET, "digits", got.append, timeout=2.0, max_connections=256).start()
    yield rec, got
    rec.stop()


def test_non_ascii_or_malformed_signature_headers_get_401_not_an_exception(receiver):
    rec, got = receiver
    headers, body = signed()
    good = headers["X-MLflow-Signature"].encode()
    bad_values = [
        good[:-2] + "é".encode("latin-1") + b"=",          # non-ASCII byte, right length
        good[:-2] + "é".encode() + b"=",                   # UTF-8 multi-byte
        "v1,ﬀ".encode(),                          # non-ASCII, wrong length
        b"v1," + base64.b64encode(b"x" * 31),               # wrong length
        b"v1,not base64!!",
        b"v2," + good[3:],                                  # unknown scheme
        b"\xff\xfe\x00",
    ]
    for value in bad_values:
        hdrs = [(k.encode(), v.encode()) for k, v in headers.items() if k != "X-MLflow-Signature"]
        status, answer = raw_post(rec.port, [*hdrs, (b"X-MLflow-Signature", value)], body)
        assert status == 401, (value, status, answer)
        assert json.loads(answer)["status"] == 401
    assert got == [] and rec.counts["rejected_401"] == len(bad_values)
    status, _ = raw_post(rec.port, headers, body)      # the real one still goes through
    assert status == 202 and len(got) == 1
    url = rec.url
    rec.stop()
    assert rec.url == url                               # still known after stop (watch reports it)


def test_verify_compares_bytes_so_odd_strings_are_just_unequal():
    headers, body = signed()
    for sig in ("v1,é" + "A" * 41, "v1,\udcff", "\u2028", "v1," + "A" * 500):
        assert verify(SECRET, {**headers, "X-MLflow-Signature": sig}, body, now=time.time()).status == 401
    assert verify(SECRET, {**headers, "X-MLflow-Delivery-Id": "\udcff"}, body, now=time.time()).status == 401
    assert precheck({**headers, "X-MLflow-Signature": "v1,é"}, now=time.time()).status == 401
    assert precheck(headers, now=time.time()) is None


def test_200_half_open_connections_hold_no_threads_and_signed_requests_are_still_answered(receiver):
    rec, got = receiver
    threads_before = threading.active_count()
    socks = []
    try:
        for _ in range(200):           # bounded: 200 sockets, each a partial request head
            s = socket.create_connection(("127.0.0.1", rec.port), timeout=5)
            s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10")
            socks.append(s)
        deadline = time.monotonic() + 5
        while rec.open_connections < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.open_connections == 200
        assert threading.active_count() - threads_before <= 3      # not a thread per connection
        headers, body = signed()
        status, _ = raw_post(rec.port, headers, body, timeout=5)
        assert status == 202 and len(got) == 1
        # answered while they hang: none has reached its deadline yet (the receiver's own count; a
        # request queued behind them could only be answered after the first of them timed out).
        # Not a stopwatch (< 1.5 s after they were all open), which a loaded machine need not meet
        assert rec.counts["timed_out"] == 0, rec.counts
        # after the per-request deadline (2 s) the server gives up on them: 408, then closed
        s = socks[0]
        s.settimeout(5)
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 408 ")
        deadline = time.monotonic() + 5
        while rec.open_connections > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.open_connections == 0 and rec.counts["timed_out"] == 200
    finally:
        for s in socks:
            s.close()


def test_connections_beyond_the_bound_are_closed_at_once():
    rec = Receiver(SECRET, "digits", lambda e: None, timeout=5.0, max_connections=5).start()
    socks = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", rec.port), timeout=5)
            s.sendall(b"POST / HTTP/1.1\r\n")
            socks.append(s)
        deadline = time.monotonic() + 5
        while rec.open_connections < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        extra = socket.create_connection(("127.0.0.1", rec.port), timeout=5)
        extra.sendall(b"POST / HTTP/1.1\r\n")
        try:
            answer = extra.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""                              # closed without being served
        extra.close()
        assert rec.counts["refused_busy"] == 1
    finally:
        for s in socks:
            s.close()
        rec.stop()


def test_unauthenticated_large_body_is_refused_before_it_is_read(receiver):
    rec, got = receiver
    headers, body = signed()
    hdrs = {k: v for k, v in headers.items() if k != "X-MLflow-Signature"}
    big = b"x" * (900 * 1024)                       # under the 1 MiB cap, but never authenticated
    t0 = time.monotonic()
    status, answer = raw_post(rec.port, hdrs, big)
    assert status == 401 and "missing signature" in json.loads(answer)["message"]
    assert time.monotonic() - t0 < 3
    stale_headers, stale_body = signed(ts=int(time.time()) - 3600)
    status, answer = raw_post(rec.port, stale_headers, stale_body)
    assert status == 400 and "replay" in json.loads(answer)["message"]
    assert got == []


def test_a_huge_timestamp_is_400_not_a_traceback_and_an_event_of_another_shape_is_ignored(receiver, caplog):
    """400 digits in X-MLflow-Timestamp overflowed `abs(now - sent)`: anyone who reached the port
    (no secret needed) got a 500 and a traceback into the watcher's log. A signed event whose
    "data" is not an object was a 500 too, and MLflow's retry was then a "duplicate"."""
    from serving_sync.webhook import wants_reconcile

    rec, got = receiver
    headers, body = signed()
    for ts in ("9" * 400, "-" + "9" * 400):
        signed_huge, signed_body = signed(ts=int(ts))          # signed: the check reaches the timestamp
        for check in (precheck({**headers, "X-MLflow-Timestamp": ts}, now=time.time()),
                      verify(SECRET, signed_huge, signed_body, now=time.time())):
            assert check.status == 400 and "timestamp" in check.reason, check
        status, answer = raw_post(rec.port, {**headers, "X-MLflow-Timestamp": ts}, body)
        assert status == 400, answer
    assert "Traceback" not in caplog.text and "OverflowError" not in caplog.text
    assert wants_reconcile({"entity": "model_version_alias", "action": "created", "data": [1]}, "m") is False


def test_a_flood_of_unsigned_requests_is_counted_not_logged_line_by_line(monkeypatch):
    """Anyone who can reach the port can send unsigned requests: each was one warning line."""
    import logging

    import serving_sync.webhook as webhook

    class Lines(logging.Handler):       # its own handler: caplog saw records twice under xdist
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger, lines = logging.getLogger("mlops.sync.webhook"), Lines()
    logger.addHandler(lines)
    rec = Receiver(SECRET, "digits", lambda e: None)
    try:
        for _ in range(200):
            assert rec.handle({"Content-Type": "application/json"}, b"{}")[0] == 401
        monkeypatch.setattr(webhook, "REJECT_LOG_INTERVAL", 0.0)      # the next window
        rec.handle({}, b"{}")
        got = [x for x in lines.lines if "webhook rejected" in x]
        assert len(got) == 2 and "(199 more rejected since the last such line)" in got[1], got
        assert rec.counts["rejected_401"] == 201
    finally:
        logger.removeHandler(lines)
        rec.stop()


def test_a_replay_inside_the_timestamp_window_is_a_duplicate_however_many_deliveries_came_between():
    """The delivery ids were kept for the last 1000 deliveries, not for the timestamp window: after
    1000 signed alias events of other models (one shared MLflow server) a captured production move,
    sent again within its 5 minutes, triggered a second reconcile (and un-failed its version)."""
    now = [1_700_000_000.0]
    got = []
    rec = Receiver(SECRET, "digits", got.append, clock=lambda: now[0])
    try:
        first = signed(ts=int(now[0]))
        assert rec.handle(*first)[0] == 202
        other = {**EVENT, "data": {**EVENT["data"], "name": "another-model"}}
        for _ in range(1001):
            assert rec.handle(*signed(other, ts=int(now[0])))[0] == 200
        now[0] += 240                           # still inside the window: a replay
        assert rec.handle(*first) == (200, "duplicate delivery (already handled)") and len(got) == 1
        now[0] += 120                           # past it: refused by its timestamp, and forgotten
        assert rec.handle(*first)[0] == 400 and len(got) == 1
        rec.handle(*signed(other, ts=int(now[0])))
        assert len(rec.seen) == 1
    finally:
        rec.stop()
