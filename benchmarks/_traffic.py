"""Requests against a TF Serving REST endpoint for the benchmarks, bounded in count and time.

- ``Prober``: one client sending unversioned predict requests back to back, recording which
  version's outputs answered and when (``time.monotonic()``, the same clock in every process
  on Linux), so "when did the unversioned route start answering v1" is read from outside.
- ``LoadGen``: N concurrent clients (unversioned and ``stable`` alternately), recording status
  codes and latencies, for the availability benchmark.
- ``switch_time`` / ``phase_stats``: pure functions on what they recorded.

Which version's outputs answered is told by the lab's ``identify`` (tests/lab/traffic.py), the
one the deploy tests use.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests

from benchmarks._setup import percentile
from tests.lab.traffic import identify

__all__ = ["LoadGen", "Prober", "Sample", "identify", "phase_stats", "switch_time"]


@dataclass
class Sample:
    sent: float                  # time.monotonic() when sent
    received: float
    status: int                  # HTTP status; 0 = no answer (connection error / timeout)
    route: str                   # "unversioned" | "stable"
    answer: str | None = None    # which known outputs (Prober only)
    error: str | None = None


class Prober:
    """Unversioned requests back to back (``pause`` seconds apart) until ``stop()``, at most
    ``max_requests`` and ``max_seconds``."""

    def __init__(self, rest_url: str, model: str, request: dict, known: dict[str, list], *,
                 pause: float = 0.002, max_requests: int = 200_000, max_seconds: float = 600.0):
        self.url = f"{rest_url}/v1/models/{model}:predict"
        self.request, self.known, self.pause = request, known, pause
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="prober")

    def start(self) -> "Prober":
        self._thread.start()
        return self

    def stop(self) -> "Prober":
        self._stop.set()
        self._thread.join(timeout=30)
        return self

    def _loop(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            sent = time.monotonic()
            try:
                r = session.post(self.url, json=self.request, timeout=10)
                answer = identify(r.json().get("predictions", []), self.known) if r.status_code == 200 else None
                self.samples.append(Sample(sent, time.monotonic(), r.status_code, "unversioned", answer))
            except (requests.RequestException, ValueError) as exc:
                self.samples.append(Sample(sent, time.monotonic(), 0, "unversioned", error=type(exc).__name__))
            time.sleep(self.pause)
        session.close()

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in list(self.samples) if start <= s.sent <= end]


def switch_time(samples: list[Sample], since: float, answer: str) -> float | None:
    """Seconds from ``since`` until the unversioned route answered ``answer`` for good: the
    receive time of the first answer after which every later one is ``answer`` (None if the
    last answer is not ``answer``)."""
    after = [s for s in samples if s.sent >= since]
    if not after or after[-1].answer != answer:
        return None
    first = len(after) - 1
    while first > 0 and after[first - 1].answer == answer:
        first -= 1
    return round(after[first].received - since, 4)


REQUEST_TIMEOUT_S = 30.0


class LoadGen:
    """``clients`` concurrent clients alternating the unversioned route and the ``stable`` label,
    each bounded by ``max_requests`` (per client) and ``max_seconds``; ``think`` seconds between
    a client's requests."""

    def __init__(self, rest_url: str, model: str, request: dict, *, clients: int = 8, think: float = 0.0,
                 max_requests: int = 100_000, max_seconds: float = 600.0):
        self.routes = {"unversioned": f"{rest_url}/v1/models/{model}:predict",
                       "stable": f"{rest_url}/v1/models/{model}/labels/stable:predict"}
        self.request, self.clients, self.think = request, clients, think
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.samples: list[Sample] = []
        self._inflight: dict[int, float] = {}    # client -> when its unanswered request was sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True, name=f"load-{i}")
                         for i in range(clients)]

    def start(self) -> "LoadGen":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> "LoadGen":
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self

    def _client(self, i: int) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        names = list(self.routes)
        for n in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            route = names[(n + i) % 2]
            with self._lock:
                sent = self._inflight[i] = time.monotonic()
            try:
                r = session.post(self.routes[route], json=self.request, timeout=REQUEST_TIMEOUT_S)
                s = Sample(sent, time.monotonic(), r.status_code, route,
                           error=None if r.status_code == 200 else r.text[:200])
            except requests.RequestException as exc:
                s = Sample(sent, time.monotonic(), 0, route, error=f"{type(exc).__name__}: {exc}"[:200])
            with self._lock:
                self.samples.append(s)
                del self._inflight[i]
            if self.think:
                time.sleep(self.think)
        session.close()

    def window(self, start: float, end: float, *, settle: float = REQUEST_TIMEOUT_S + 5) -> list[Sample]:
        """Requests sent in ``[start, end)``, once each of them has its answer: one still in
        flight at ``end`` that fails afterwards counts in its phase (waits at most ``settle`` s)."""
        deadline = time.monotonic() + settle
        while True:
            with self._lock:
                if time.monotonic() >= deadline or not any(t < end for t in self._inflight.values()):
                    return [s for s in self.samples if start <= s.sent < end]
            time.sleep(0.01)


def phase_stats(samples: list[Sample]) -> dict:
    """Requests, failures (non-200 or no answer), p50/p99 latency in ms, per route and in total."""
    def stats(ss: list[Sample]) -> dict:
        lat = [(s.received - s.sent) * 1000 for s in ss]
        bad = [s for s in ss if s.status != 200]
        return {"requests": len(ss), "non_200": len(bad),
                "p50_ms": round(percentile(lat, 50), 2) if lat else None,
                "p99_ms": round(percentile(lat, 99), 2) if lat else None,
                "errors": sorted({f"{s.status}: {s.error}" for s in bad})[:5]}
    out = stats(samples)
    out["routes"] = {r: stats([s for s in samples if s.route == r]) for r in ("unversioned", "stable")}
    return out
