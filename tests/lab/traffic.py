"""Which version answered, and requests during a deploy.

- ``identify(predictions, known)``: which known golden output set (by key) predictions are; the
  tests key them by version, the benchmarks by name.
- ``Traffic``: requests to the unversioned route and the ``stable`` label in a background loop
  (bounded in count and time), recording failures and which version answered.
"""
from __future__ import annotations

import threading
import time

import requests


def identify(predictions, known: dict, atol: float = 1e-4):
    """Which key of ``known`` (version, or a name: key -> golden predictions) these predictions
    are, within ``atol`` per value; None if none matches."""
    for key, golden in known.items():
        if len(golden) == len(predictions) and all(
                abs(x - y) <= atol for ra, rb in zip(golden, predictions) for x, y in zip(ra, rb)):
            return key
    return None


class Traffic:
    """Requests to the unversioned route and the ``stable`` label in a loop (bounded in count and
    time), recording failures and which golden outputs answered."""

    def __init__(self, rest_url: str, model: str, request: dict, known: dict[int, list], *,
                 max_requests: int = 20000, max_seconds: float = 180.0):
        self.rest_url, self.model, self.request, self.known = rest_url, model, request, known
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.failures: list[str] = []
        self.answers: dict[str, list] = {"unversioned": [], "stable": []}
        self.count = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self._session = requests.Session()

    def start(self) -> "Traffic":
        self.thread.start()
        return self

    def _loop(self) -> None:
        routes = {"unversioned": f"{self.rest_url}/v1/models/{self.model}:predict",
                  "stable": f"{self.rest_url}/v1/models/{self.model}/labels/stable:predict"}
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and self.count < self.max_requests and time.monotonic() < deadline:
            for name, url in routes.items():
                self.count += 1
                try:
                    r = self._session.post(url, json=self.request, timeout=10)
                    if r.status_code != 200:
                        self.failures.append(f"{name}: HTTP {r.status_code} {r.text[:200]}")
                        continue
                    self.answers[name].append(identify(r.json()["predictions"], self.known))
                except requests.RequestException as exc:
                    self.failures.append(f"{name}: {exc}")
            time.sleep(0.005)

    def stop(self) -> "Traffic":
        self._stop.set()
        self.thread.join(timeout=30)
        return self


class HostLoad:
    """``threads`` clients per host posting ``request`` to the unversioned route (with ``foreign``,
    every 4th request an input above anything in a golden set, 2.0 everywhere), ``pause`` seconds
    after each answer, until the ``with`` block ends; bounded in count and time. Records
    ``(time.monotonic(), host name, status)`` of every answer in ``samples`` (status 0: no answer)
    and the non-200 answers per host in ``non_200``."""

    FOREIGN = [[[[2.0] for _ in range(8)] for _ in range(8)]]

    def __init__(self, hosts, model: str, request: dict, *, threads: int = 1, foreign: bool = False,
                 max_seconds: float = 240.0, max_requests: int = 40_000, pause: float = 0.002):
        self.model, self.foreign, self.pause = model, foreign, pause
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.samples: list[tuple[float, str, int]] = []
        self.non_200: dict[str, list[str]] = {h.name: [] for h in hosts}
        self.bodies = (request, {**request, "instances": self.FOREIGN})
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(h,), daemon=True)
                         for h in hosts for _ in range(threads)]

    @property
    def count(self) -> int:
        return len(self.samples)

    def __enter__(self) -> "HostLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _loop(self, host) -> None:
        url = f"{host.rest_url}/v1/models/{self.model}:predict"
        deadline = time.monotonic() + self.max_seconds
        s = requests.Session()
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.samples) < self.max_requests:
            i += 1
            try:
                r = s.post(url, json=self.bodies[self.foreign and i % 4 == 0], timeout=20)
                status = r.status_code
                if status != 200:
                    self.non_200[host.name].append(f"{status}: {r.text[:120]}")
            except requests.RequestException as exc:
                status = 0
                self.non_200[host.name].append(str(exc))
            self.samples.append((time.monotonic(), host.name, status))
            time.sleep(self.pause)
