"""Receive MLflow webhooks (``model_version_alias.created``) and trigger a reconcile.

MLflow signs each delivery (mlflow/webhooks/delivery.py)::

    X-MLflow-Signature:   v1,<base64 HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")>
    X-MLflow-Timestamp:   unix seconds
    X-MLflow-Delivery-Id: uuid

``verify`` is the pure check: a missing or wrong signature is 401 (compared as bytes, so a
malformed header is a 401, never an exception), a missing, malformed or stale timestamp (more
than 5 minutes off: a replay) is 400, a delivery id seen before is acknowledged without a
second reconcile. ``precheck`` refuses what it can from the headers alone, before the body is
read. The receiver binds to 127.0.0.1 by default, holds every connection in one asyncio thread
(bounded count, a deadline per request), reads at most 64 KiB (MLflow's alias payloads are
under 1 KiB; the body is read before its signature can be checked), answers at once (202) and leaves
the deploy to the watch loop. The secret comes only from ``MLOPS_WEBHOOK_SECRET`` and is never
logged.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mlops_common import log
from mlops_common.errors import UserError, exc_text

logger = log.get("sync.webhook")

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_AGE_SECONDS = 300
MAX_BODY = 64 * 1024     # read before the signature is checked: 256 connections hold 16 MiB at most
MAX_HEAD = 16 * 1024
MAX_SEEN = 100_000      # delivery ids remembered at most (only signed deliveries are remembered)
EVENT = ("model_version_alias", "created")


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """The signature header MLflow sends for this delivery."""
    mac = hmac.new(secret.encode(), _raw(f"{delivery_id}.{timestamp}.{body}"), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _timestamp(text: str) -> int | None:
    """Unix seconds, or None: 400 digits overflowed the float ``abs(now - sent)`` and anyone who
    could reach the port got a traceback into the watcher's log (no secret needed)."""
    try:
        sent = int(text)
    except ValueError:
        return None
    return sent if abs(sent) < 10 ** 12 else None


def _raw(text: str) -> bytes:
    """UTF-8 bytes of any str, even one holding lone surrogates (never raises)."""
    return text.encode("utf-8", "surrogatepass")


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
    expected = sign(secret, delivery, ts, text).encode()
    # MLflow sends one "v1,<sig>"; accept a space-separated list like other HMAC schemes do.
    # Compared as bytes: a header with non-ASCII characters or the wrong length is just unequal.
    if not any(hmac.compare_digest(expected, _raw(part.strip())) for part in sig.split(" ") if part.strip()):
        return Verdict(401, "bad signature")
    refused = _timestamp_verdict(ts, now=now, max_age=max_age)
    if refused is not None:
        return refused
    try:
        event = json.loads(text)
    except ValueError:
        return Verdict(400, "body is not JSON")
    if not isinstance(event, dict):
        return Verdict(400, "body is not a JSON object")
    return Verdict(202, "accepted", event)


def _stale(now: float, sent: float, max_age: float) -> Verdict:
    """A timestamp too far from this host's clock: a replay, or (every delivery refused) a clock off."""
    return Verdict(400, f"timestamp is {abs(now - sent):.0f}s off (more than {max_age:.0f}s): replay refused; "
                        f"if every delivery is refused, this host's or the MLflow server's clock is off: "
                        f"sync both (NTP)")


def wants_reconcile(event: dict, model: str, alias: str = "production") -> bool:
    """True for ``model_version_alias.created`` of ``alias`` on ``model``."""
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict):      # a signed event of another shape: not ours (it was a 500)
        return False
    return ((event.get("entity"), event.get("action")) == EVENT and data.get("name") == model
            and data.get("alias") == alias)


def precheck(headers: dict[str, str], *, now: float, max_age: float = MAX_AGE_SECONDS) -> Verdict | None:
    """What can be refused before the body is read: no or malformed signature (401), bad or
    stale timestamp (400). None: read the body and ``verify`` it."""
    h = {k.lower(): v for k, v in headers.items()}
    sig, delivery = h.get(SIGNATURE_HEADER.lower(), ""), h.get(DELIVERY_HEADER.lower(), "")
    if not sig or not delivery:
        return Verdict(401, "missing signature or delivery id")
    if not any(_well_formed(part) for part in sig.split(" ")):
        return Verdict(401, "bad signature")
    return _timestamp_verdict(h.get(TIMESTAMP_HEADER.lower(), ""), now=now, max_age=max_age)


def _timestamp_verdict(ts: str, *, now: float, max_age: float) -> Verdict | None:
    """A bad or stale timestamp header's refusal (400), or None: the delivery is recent."""
    sent = _timestamp(ts)
    if sent is None:
        return Verdict(400, "missing or malformed timestamp")
    if abs(now - sent) > max_age:
        return _stale(now, sent, max_age)
    return None


def _well_formed(part: str) -> bool:
    """``v1,<base64 of 32 bytes>`` (ASCII only)."""
    if not part.startswith("v1,") or not part.isascii():
        return False
    try:
        return len(base64.b64decode(part[3:], validate=True)) == 32
    except ValueError:
        return False


_PHRASES = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """(method, headers) of an HTTP/1.x request head; header bytes kept as latin-1 (never fails)."""
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0] if lines and lines[0] else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return method, headers


async def _discard(reader, limit: int = 1024 * 1024 + MAX_HEAD) -> None:
    """Read and drop what the client still sends, up to ``limit`` bytes or its end (nothing is
    kept: a refused body larger than ``MAX_BODY`` still ends before the close)."""
    total = 0
    while total <= limit:
        chunk = await reader.read(64 * 1024)
        if not chunk:
            return
        total += len(chunk)


REJECT_LOG_INTERVAL = 60.0      # seconds between two "webhook rejected" lines


class Receiver:
    """A small HTTP server: verified deliveries for our model's production alias call ``trigger``.

    One asyncio loop in one thread holds every connection (a slow or half-open client costs a
    socket, not a thread); at most ``max_connections`` are open at once (more are closed at
    once), each gets ``timeout`` seconds in total to send its request, and the verified
    deliveries are handled by a pool of ``workers`` threads.
    """

    def __init__(self, secret: str, model: str, trigger: Callable[[dict], None], *, host: str = "127.0.0.1",
                 port: int = 0, clock=None, max_age: float = MAX_AGE_SECONDS, timeout: float = 10.0,
                 max_connections: int = 256, workers: int = 2, secret_env: str = "MLOPS_WEBHOOK_SECRET"):
        import socket
        import time

        from registry.webhooks import check_secret_strength

        check_secret_strength(secret, secret_env)

        self.secret, self.model, self.trigger = secret, model, trigger
        self.clock = clock or time.time
        self.max_age = max_age
        self.timeout = timeout
        self.max_connections = max_connections
        self.seen: collections.OrderedDict[str, int] = collections.OrderedDict()   # delivery id -> its timestamp
        self._handling: set[str] = set()        # delivery ids whose trigger is running
        self.counts = collections.Counter()
        self.open_connections = 0
        self._lock = threading.Lock()
        self._rejects_logged_at, self._rejects_unlogged = float("-inf"), 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET      # ::1, an IPv6 address
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self._address = self._sock.getsockname()[:2]     # still known after stop()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self._loop = None
        self._stopped = None
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def url(self) -> str:
        host = self._address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> Receiver:
        """Serve from a thread; ``UserError`` (one line, the receiver stopped) when it did not start:
        the thread's exception was printed as a traceback and ``start`` returned as if it had."""
        ready, failed = threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(ready, failed), daemon=True,
                                       name="webhook-receiver")
        self.thread.start()
        if not ready.wait(10) or failed:
            self.stop()
            why = exc_text(failed[0], 200) if failed else "not serving after 10s"
            raise UserError(f"the webhook receiver on {self.url} did not start ({why})")
        return self

    def _run(self, ready: threading.Event, failed: list[BaseException]) -> None:
        try:
            self._serve(ready)
        except BaseException as exc:  # noqa: BLE001 - before it serves: raised by ``start``
            if ready.is_set():
                raise
            failed.append(exc)
            ready.set()

    def _serve(self, ready: threading.Event) -> None:
        import asyncio

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            server = await asyncio.start_server(self._client, sock=self._sock, limit=MAX_HEAD)
            ready.set()
            async with server:
                await self._stopped.wait()

        asyncio.run(main())

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):      # the loop ended meanwhile
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self.thread is not None:
            self.thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    async def _client(self, reader, writer) -> None:
        import asyncio

        if self.open_connections >= self.max_connections:
            self._count("refused_busy")
            writer.close()
            return
        self.open_connections += 1
        try:
            try:
                status, text = await asyncio.wait_for(self._exchange(reader), self.timeout)
            except TimeoutError:
                self._count("timed_out")
                status, text = 408, f"request not received within {self.timeout:.0f}s"
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception:
                logger.exception("webhook: error while handling a delivery")
                status, text = 500, "internal error"
            body = json.dumps({"status": status, "message": text}).encode()
            allow = "\r\nAllow: POST" if status == 405 else ""      # RFC 9110 15.5.6
            writer.write(f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\nContent-Type: application/json"
                         f"\r\nContent-Length: {len(body)}{allow}\r\nConnection: close\r\n\r\n".encode() + body)
            try:
                await asyncio.wait_for(writer.drain(), self.timeout)
                # Lingering close: a body we refused unread would otherwise turn our close into
                # a reset that can destroy the answer before the client reads it.
                writer.write_eof()
                await asyncio.wait_for(_discard(reader), 1.0)
            except (TimeoutError, OSError, RuntimeError):
                pass
        except asyncio.CancelledError:      # stop(): connections still open are just closed
            pass
        finally:
            self.open_connections -= 1
            writer.close()

    async def _exchange(self, reader) -> tuple[int, str]:
        """Read one request, refusing what can be refused before its body is read."""
        import asyncio

        try:
            method, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        except (asyncio.LimitOverrunError, ValueError):       # only the head: a bug later is a 500
            return 431, "request head too large"
        if method != "POST":
            return 405, "POST MLflow webhook deliveries here"
        try:
            length = int({k.lower(): v for k, v in headers.items()}.get("content-length", ""))
        except ValueError:
            return 411, "a Content-Length is required"
        if length < 0 or length > MAX_BODY:
            return 413, f"body larger than {MAX_BODY} bytes"
        early = precheck(headers, now=self.clock(), max_age=self.max_age)
        if early is not None:
            return self._rejected(early)
        body = await reader.readexactly(length)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.handle, headers, body)

    def _rejected(self, verdict: Verdict) -> tuple[int, str]:
        """Count the rejection; log at most one line a ``REJECT_LOG_INTERVAL`` (anyone who can
        reach the port can send unsigned requests: one line each would flood the watcher's log),
        saying how many were not logged since."""
        import time

        now = time.monotonic()
        with self._lock:
            self.counts[f"rejected_{verdict.status}"] += 1
            due = now - self._rejects_logged_at >= REJECT_LOG_INTERVAL
            if due:
                unlogged, self._rejects_unlogged, self._rejects_logged_at = self._rejects_unlogged, 0, now
            else:
                self._rejects_unlogged += 1
        if due:
            logger.warning("webhook rejected (%d): %s%s", verdict.status, verdict.reason,
                           f" ({unlogged} more rejected since the last such line)" if unlogged else "")
        return verdict.status, verdict.reason

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        verdict = verify(self.secret, headers, body, now=self.clock(), max_age=self.max_age)
        if not verdict.ok:
            return self._rejected(verdict)
        h = {k.lower(): v for k, v in headers.items()}
        delivery, sent = h[DELIVERY_HEADER.lower()], _timestamp(h[TIMESTAMP_HEADER.lower()])
        with self._lock:
            if delivery in self.seen or delivery in self._handling:     # the same one at once: one trigger
                self.counts["duplicate"] += 1
                return 200, "duplicate delivery (already handled)"
            self._handling.add(delivery)
        try:
            answer = self._handle(verdict.event)
            # Recorded once handled: a trigger that raised (500) left it recorded, and MLflow's
            # retry of that delivery was then answered "duplicate" and never triggered.
            with self._lock:
                # Kept while its timestamp is accepted (a count bound let a replay through after that
                # many other signed deliveries); the oldest first, the cap only bounds memory.
                now = self.clock()
                while self.seen and (len(self.seen) >= MAX_SEEN
                                     or next(iter(self.seen.values())) < now - self.max_age):
                    self.seen.popitem(last=False)
                self.seen[delivery] = sent
            return answer
        finally:
            with self._lock:
                self._handling.discard(delivery)

    def _handle(self, event: dict) -> tuple[int, str]:
        if not wants_reconcile(event, self.model):
            self._count("ignored")
            return 200, "ignored (not a production alias move of this model)"
        self._count("accepted")
        data = event.get("data") or {}
        logger.info("webhook: production of '%s' -> v%s; reconciling", self.model, data.get("version"))
        self.trigger(event)
        return 202, "accepted: reconcile triggered"
