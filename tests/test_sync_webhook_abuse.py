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
    big = b"x" * (60 * 1024)                        # under the 64 KiB cap, but never authenticated
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


def test_a_signed_body_over_64_kib_is_413_unread():
    """The receiver read up to 1 MiB before the signature could be checked (256 connections: 256 MiB
    for unsigned junk); MLflow's alias payloads are under 1 KiB."""
    import serving_sync.webhook as webhook

    got: list[dict] = []
    rec = Receiver(SECRET, "digits", got.append, timeout=5.0).start()
    try:
        assert webhook.MAX_BODY == 64 * 1024
        status, answer = raw_post(rec.port, *signed({**EVENT, "pad": "x" * (64 * 1024)}))
        assert status == 413 and "larger than 65536 bytes" in json.loads(answer)["message"], answer
        status, _ = raw_post(rec.port, *signed({**EVENT, "pad": "x" * (60 * 1024)}))    # under it: handled
        assert status == 202 and len(got) == 1
    finally:
        rec.stop()


def test_a_405_says_which_method_is_allowed(receiver):
    """RFC 9110 requires an Allow header with a 405; it had none."""
    rec, _ = receiver
    with socket.create_connection(("127.0.0.1", rec.port), timeout=5) as s:
        s.sendall(b"GET /mlflow-hook HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, deadline = b"", time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[0].startswith(b"HTTP/1.1 405") and b"Allow: POST" in head[1:], data


def test_a_delivery_whose_trigger_failed_is_triggered_again_by_mlflows_retry():
    """It was recorded as handled before its trigger ran: after a 500, MLflow's retry of the same
    delivery was answered "duplicate" and the production move was never reconciled."""
    calls: list[dict] = []

    def trigger(event):
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("the reconcile queue is down")

    rec = Receiver(SECRET, "digits", trigger, timeout=5.0).start()
    try:
        headers, body = signed()
        assert raw_post(rec.port, headers, body)[0] == 500
        status, answer = raw_post(rec.port, headers, body)          # MLflow's retry: same id, same bytes
        assert status == 202, answer
        assert len(calls) == 2
        status, answer = raw_post(rec.port, headers, body)          # handled now: a duplicate
        assert status == 200 and "duplicate" in json.loads(answer)["message"] and len(calls) == 2
    finally:
        rec.stop()


def test_the_same_delivery_twice_at_once_triggers_once():
    entered, release, calls = threading.Event(), threading.Event(), []

    def trigger(event):
        calls.append(event)
        entered.set()
        release.wait(10)

    rec = Receiver(SECRET, "digits", trigger)
    try:
        headers, body = signed()
        first: list = []
        t = threading.Thread(target=lambda: first.append(rec.handle(headers, body)), daemon=True)
        t.start()
        assert entered.wait(10)
        assert rec.handle(headers, body) == (200, "duplicate delivery (already handled)")
        release.set()
        t.join(10)
        assert first == [(202, "accepted: reconcile triggered")] and len(calls) == 1
        assert rec.handle(headers, body)[0] == 200 and len(calls) == 1
    finally:
        release.set()
        rec.stop()


def test_a_webhook_name_with_a_trailing_newline_is_refused(monkeypatch):
    """``^...$`` matched before a final newline: the name passed, and MLflow refused it later."""
    from mlops_common.errors import ConfigError
    from registry.webhooks import ensure_webhook

    monkeypatch.delenv("MLOPS_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"webhook name 'hook\\n' is invalid"):
        ensure_webhook("http://127.0.0.1:9/hook", name="hook\n")


def test_a_receiver_that_fails_to_start_says_so_in_one_line(monkeypatch):
    """Its thread's exception was printed as a traceback and ``start`` returned after 10 s as if
    it served: ``sync watch`` announced a URL nothing answered."""
    import asyncio

    from mlops_common.errors import UserError

    async def cannot_serve(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(asyncio, "start_server", cannot_serve)
    rec = Receiver(SECRET, "digits", lambda e: None)
    with pytest.raises(UserError) as e:
        rec.start()
    assert "\n" not in e.value.message and "did not start" in e.value.message
    assert "Too many open files" in e.value.message and not rec.thread.is_alive()
