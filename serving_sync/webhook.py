"""Receive MLflow webhooks (``model_version_alias.created``) and trigger a reconcile.

MLflow signs each delivery (mlflow/webhooks/delivery.py)::

    X-MLflow-Signature:   v1,<base64 HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")>
    X-MLflow-Timestamp:   unix seconds
    X-MLflow-Delivery-Id: uuid

``verify`` is the pure check: a missing or wrong signature is 401, a missing, malformed or
stale timestamp (more than 5 minutes off: a replay) is 400, a delivery id seen before is
acknowledged without a second reconcile. The receiver binds to 127.0.0.1 by default, reads at
most 1 MiB, answers at once (202) and leaves the deploy to the watch loop. The secret comes
only from ``MLOPS_WEBHOOK_SECRET`` and is never logged.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from mlops_common import log

logger = log.get("sync.webhook")

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_AGE_SECONDS = 300
MAX_BODY = 1024 * 1024
EVENT = ("model_version_alias", "created")


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """The signature header MLflow sends for this delivery."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Verdict:
    status: int                 # HTTP status to answer
    reason: str
    event: dict | None = None   # the parsed body when accepted

    @property
    def ok(self) -> bool:
        return self.status < 300


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float,
           max_age: float = MAX_AGE_SECONDS) -> Verdict:
    """Check a delivery's signature and timestamp (headers: case-insensitive names)."""
    h = {k.lower(): v for k, v in headers.items()}
    sig = h.get(SIGNATURE_HEADER.lower(), "")
    ts = h.get(TIMESTAMP_HEADER.lower(), "")
    delivery = h.get(DELIVERY_HEADER.lower(), "")
    if not sig or not delivery:
        return Verdict(401, "missing signature or delivery id")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Verdict(400, "body is not UTF-8")
    expected = sign(secret, delivery, ts, text)
    # MLflow sends one "v1,<sig>"; accept a space-separated list like other HMAC schemes do.
    if not any(hmac.compare_digest(expected, part.strip()) for part in sig.split(" ") if part.strip()):
        return Verdict(401, "bad signature")
    try:
        sent = int(ts)
    except ValueError:
        return Verdict(400, "missing or malformed timestamp")
    if abs(now - sent) > max_age:
        return Verdict(400, f"timestamp is {abs(now - sent):.0f}s off (more than {max_age:.0f}s): replay refused")
    try:
        event = json.loads(text)
    except ValueError:
        return Verdict(400, "body is not JSON")
    if not isinstance(event, dict):
        return Verdict(400, "body is not a JSON object")
    return Verdict(202, "accepted", event)


def wants_reconcile(event: dict, model: str, alias: str = "production") -> bool:
    """True for ``model_version_alias.created`` of ``alias`` on ``model``."""
    data = event.get("data") or {}
    return ((event.get("entity"), event.get("action")) == EVENT and data.get("name") == model
            and data.get("alias") == alias)


class Receiver:
    """A small HTTP server: verified deliveries for our model's production alias call ``trigger``."""

    def __init__(self, secret: str, model: str, trigger: Callable[[dict], None], *, host: str = "127.0.0.1",
                 port: int = 0, clock=None, max_age: float = MAX_AGE_SECONDS):
        import time

        self.secret, self.model, self.trigger = secret, model, trigger
        self.clock = clock or time.time
        self.max_age = max_age
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.counts = collections.Counter()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}/"

    def start(self) -> "Receiver":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       daemon=True, name="webhook-receiver")
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        verdict = verify(self.secret, headers, body, now=self.clock(), max_age=self.max_age)
        if not verdict.ok:
            with self._lock:
                self.counts[f"rejected_{verdict.status}"] += 1
            logger.warning("webhook rejected (%d): %s", verdict.status, verdict.reason)
            return verdict.status, verdict.reason
        delivery = {k.lower(): v for k, v in headers.items()}[DELIVERY_HEADER.lower()]
        with self._lock:
            if delivery in self.seen:
                self.counts["duplicate"] += 1
                return 200, "duplicate delivery (already handled)"
            self.seen[delivery] = None
            while len(self.seen) > 1000:
                self.seen.popitem(last=False)
        if not wants_reconcile(verdict.event, self.model):
            with self._lock:
                self.counts["ignored"] += 1
            return 200, "ignored (not a production alias move of this model)"
        with self._lock:
            self.counts["accepted"] += 1
        data = verdict.event.get("data") or {}
        logger.info("webhook: production of '%s' -> v%s; reconciling", self.model, data.get("version"))
        self.trigger(verdict.event)
        return 202, "accepted: reconcile triggered"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):   # no request logging (headers carry signatures)
                pass

            def _answer(self, status: int, text: str) -> None:
                body = json.dumps({"status": status, "message": text}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    return self._answer(400, "bad Content-Length")
                if length < 0 or length > MAX_BODY:
                    return self._answer(413, f"body larger than {MAX_BODY} bytes")
                body = self.rfile.read(length)
                status, text = receiver.handle(dict(self.headers.items()), body)
                self._answer(status, text)

            def do_GET(self):  # noqa: N802
                self._answer(405, "POST MLflow webhook deliveries here")

        return Handler
