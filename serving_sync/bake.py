"""Judge a canary on the traffic it really serves: TF Serving's own Prometheus metrics.

TF Serving (``--monitoring_config_file`` with ``prometheus_config``) counts every request in
``:tensorflow:serving:request_count{model_name,status}`` and times it in the histogram
``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (microseconds). Counters only
grow, so a window is the difference of two scrapes. The canary's window after its switch is
compared with (a) the same host over a window before its switch and (b) the hosts still on the
old version over the same window as the canary's.

Everything here but ``scrape`` is a pure function on parsed samples: ``parse`` (the page, read
with ``prometheus_client.parser``), ``window`` (two snapshots -> counts in between),
``quantile`` (Prometheus' ``histogram_quantile``) and ``judge`` (the verdict and its one line).
The rule (docs/architecture.md, "Rollout"): fewer than ``min_requests`` requests on the canary
-> "not enough traffic", which passes or fails as ``on_low_traffic`` says; else the canary
breaches when its error rate is more than ``max_error_rate`` above the worst baseline's, or its
p95 or p99 latency is more than ``max_latency_ratio`` times the worst baseline's (a baseline
counts only with at least ``min_requests`` requests of its own).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlops_common.errors import UserError

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
OK = "OK"


@dataclass(frozen=True)
class Snapshot:
    """One model's counters on one host at one moment."""

    requests: dict[str, float] = field(default_factory=dict)      # status -> count
    buckets: dict[float, float] = field(default_factory=dict)     # le (µs) -> cumulative count


@dataclass(frozen=True)
class Window:
    """What happened between two snapshots."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, float], ...] = ()                 # (le µs, cumulative count), sorted

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_ms(self, q: float) -> float | None:
        v = quantile(self.buckets, q)
        return None if v is None else v / 1000.0

    def to_dict(self) -> dict:
        p95, p99 = self.latency_ms(0.95), self.latency_ms(0.99)
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p95_ms": None if p95 is None else round(p95, 3), "p99_ms": None if p99 is None else round(p99, 3)}


@dataclass(frozen=True)
class Limits:
    max_error_rate: float = 0.01          # above the baseline's
    max_latency_ratio: float = 1.5        # canary p95/p99 over the baseline's
    min_requests: int = 20                # fewer on the canary: "not enough traffic"
    on_low_traffic: str = "pass"          # pass | fail

    def __post_init__(self):
        from mlops_common.errors import ConfigError

        if not 0 <= self.max_error_rate <= 1:      # (a NaN fails every comparison: refused too)
            raise ConfigError(f"--max-error-rate must be between 0 and 1, got {self.max_error_rate}")
        if not 1 <= self.max_latency_ratio < float("inf"):
            raise ConfigError(f"--max-latency-ratio must be a number of at least 1, got {self.max_latency_ratio}")
        if self.min_requests < 1:
            raise ConfigError(f"--min-requests must be at least 1, got {self.min_requests}")
        if self.on_low_traffic not in ("pass", "fail"):
            raise ConfigError(f"--on-low-traffic must be pass or fail, got {self.on_low_traffic!r}")


@dataclass(frozen=True)
class Verdict:
    host: str
    outcome: str                  # passed | breached | low_traffic_passed | low_traffic_failed
    line: str                     # one line with the figures, for people and the ledger
    reasons: tuple[str, ...] = ()
    measurements: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome in ("passed", "low_traffic_passed")

    def to_dict(self) -> dict:
        return {"host": self.host, "outcome": self.outcome, "passed": self.passed, "line": self.line,
                "reasons": list(self.reasons), "measurements": self.measurements}


# --- parsing -------------------------------------------------------------------------------
def parse(text: str, model: str) -> Snapshot:
    """``model``'s request counts by status and latency buckets (summed over API / entrypoint)."""
    from prometheus_client.parser import text_string_to_metric_families

    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # noqa: BLE001 - the parser raises ValueError and friends
        raise UserError(f"the metrics page is not Prometheus text ({exc})") from None
    for fam in families:
        if fam.name not in (REQUEST_COUNT, REQUEST_LATENCY):
            continue
        for s in fam.samples:
            if s.labels.get("model_name") != model:
                continue
            if fam.name == REQUEST_COUNT and s.name in (REQUEST_COUNT, REQUEST_COUNT + "_total"):
                status = s.labels.get("status", OK)
                requests[status] = requests.get(status, 0.0) + s.value
            elif fam.name == REQUEST_LATENCY and s.name == REQUEST_LATENCY + "_bucket":
                le = float(s.labels.get("le", "+Inf"))
                buckets[le] = buckets.get(le, 0.0) + s.value
    return Snapshot(requests, buckets)


def _delta(after: float, before: float) -> float:
    """A counter's growth; a counter that went down was reset (TF Serving restarted)."""
    return after - before if after >= before else after


def window(before: Snapshot, after: Snapshot) -> Window:
    statuses = set(before.requests) | set(after.requests)
    counts = {st: _delta(after.requests.get(st, 0.0), before.requests.get(st, 0.0)) for st in statuses}
    total = int(round(sum(counts.values())))
    errors = int(round(sum(c for st, c in counts.items() if st != OK)))
    les = sorted(set(before.buckets) | set(after.buckets))
    buckets = tuple((le, _delta(after.buckets.get(le, 0.0), before.buckets.get(le, 0.0))) for le in les)
    return Window(total, errors, buckets)


def merge(windows: list[Window]) -> Window:
    """Several hosts' windows as one (the hosts still on the old version)."""
    les = sorted({le for w in windows for le, _ in w.buckets})
    buckets = tuple((le, sum(dict(w.buckets).get(le, 0.0) for w in windows)) for le in les)
    return Window(sum(w.requests for w in windows), sum(w.errors for w in windows), buckets)


def quantile(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket; None without observations."""
    if not buckets:
        return None
    total = buckets[-1][1] if math.isinf(buckets[-1][0]) else max(c for _, c in buckets)
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):           # in the open top bucket: the highest finite bound
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


# --- the verdict ---------------------------------------------------------------------------
def _pct(w: Window) -> str:
    return f"{100 * w.error_rate:.1f}%"


def judge(host: str, canary: Window, before: Window | None, others: Window | None, limits: Limits) -> Verdict:
    """Did the canary's live traffic get worse than before its switch / than the old hosts?"""
    baselines = {name: w for name, w in (("before", before), ("on the other hosts", others))
                 if w is not None and w.requests >= limits.min_requests}
    measurements = {"canary": canary.to_dict(),
                    "before": before.to_dict() if before is not None else None,
                    "others": others.to_dict() if others is not None else None,
                    "limits": {"max_error_rate": limits.max_error_rate,
                               "max_latency_ratio": limits.max_latency_ratio,
                               "min_requests": limits.min_requests, "on_low_traffic": limits.on_low_traffic}}
    if canary.requests < limits.min_requests:
        ok = limits.on_low_traffic == "pass"
        line = (f"canary {host}: not enough traffic ({canary.requests} requests < {limits.min_requests}) to "
                f"judge it: {'passed' if ok else 'rolled back'} (--on-low-traffic {limits.on_low_traffic})")
        return Verdict(host, "low_traffic_passed" if ok else "low_traffic_failed", line,
                       ("not enough traffic",), measurements)
    reasons = []
    base_rate = max((w.error_rate for w in baselines.values()), default=0.0)
    compare = " and ".join(f"{_pct(w)} {name}" for name, w in (("before", before), ("on the other hosts", others))
                           if w is not None) or "no baseline"
    err = (f"error rate {_pct(canary)} ({canary.errors}/{canary.requests}) vs {compare}; "
           f"limit {100 * limits.max_error_rate:.1f}%")
    if canary.error_rate > base_rate + limits.max_error_rate:
        reasons.append(err)
    for q in (0.95, 0.99):
        mine = canary.latency_ms(q)
        base = [(name, w.latency_ms(q)) for name, w in baselines.items()]
        base = [(n, v) for n, v in base if v is not None and v > 0]
        if mine is None or not base:
            continue
        worst = max(v for _, v in base)
        if mine > limits.max_latency_ratio * worst:
            reasons.append(f"p{round(q * 100)} latency {mine:.1f} ms vs "
                           + " and ".join(f"{v:.1f} ms {n}" for n, v in base)
                           + f"; limit {limits.max_latency_ratio:g}x")
    if reasons:
        return Verdict(host, "breached", f"canary {host}: {'; '.join(reasons)}: rolled back", tuple(reasons),
                       measurements)
    p95 = canary.latency_ms(0.95)
    lat = f", p95 {p95:.1f} ms" if p95 is not None else ""
    return Verdict(host, "passed", f"canary {host}: {err}{lat}: passed", (), measurements)


# --- reading a host ------------------------------------------------------------------------
def scrape(host_name: str, url: str, model: str, *, timeout: float = 5.0) -> Snapshot:
    """Read ``url`` (bounded by ``timeout``) and parse ``model``'s counters; one-line UserError."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:   # noqa: S310 - the hosts file's URL
            text = resp.read(16 * 1024 * 1024).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} (HTTP {exc.code}); start TF "
                        f"Serving with --monitoring_config_file enabling prometheus_config, set metrics_url "
                        f"in the hosts file, or deploy with --bake 0") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}); start TF Serving "
                        f"with --monitoring_config_file enabling prometheus_config, set metrics_url in the "
                        f"hosts file, or deploy with --bake 0") from None
    try:
        return parse(text, model)
    except UserError as exc:
        raise UserError(f"{host_name}: {url}: {exc.message}") from None
