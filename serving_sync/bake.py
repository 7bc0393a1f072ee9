"""Judge a canary on the traffic it really serves: TF Serving's own Prometheus metrics.

TF Serving (``--monitoring_config_file`` with ``prometheus_config``) counts every request in
``:tensorflow:serving:request_count{model_name,status}`` and times each request answered OK in
the histogram ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (microseconds;
``http_server.cc``, ``prediction_service_impl.cc``). Counters only grow, so a window is the
difference of two scrapes. The canary's window after its switch is compared with (a) the same
host over a window before its switch and (b) the hosts still on the old version over the same
window as the canary's.

What is counted: status and metadata GETs (a load balancer's health check) carry ``API=""`` in
the histogram and are left out, so they neither pass for traffic nor dilute the latency. The
request count has no API label: a window's requests are its inference requests answered OK (the
histogram's ``_count`` for ``API`` other than ``""``) plus every request that failed (every
``status`` but ``OK``; a failed health check is rare and counts as an error).

The latency checks allow for what the page can say. A p95 / p99 breaches only when the lowest
value its bucket allows is above ``max_latency_ratio`` times the highest its baseline's bucket
allows (bucket limits are 1.8x apart, wider than a 1.5x limit) — so a version 3% slower whose p95
crosses a bucket limit is not rolled back, and a version several times slower is. The mean
(``_sum / _count``) is not exact: TF Serving prints ``_sum`` with ``absl::StrCat(double)``, 6
significant digits, and the sum is per model name, cumulative since TF Serving started, so after
weeks of uptime its rounding step (±½ unit of the 6th digit, ``sum_uncertainty``) outgrows a
bake's whole sum. A window's mean is therefore an interval; the mean breaches only when the
canary's lowest possible mean is above ``max_latency_ratio`` times the highest possible mean of
the slowest baseline. A baseline's highest is a true bound however coarse its sum (a host up for
weeks, a sum whose printed digits did not move in the window), so a coarse baseline is used as it
is — it can only make a breach less likely — and does not stop the comparison with a precise one.
The mean is not compared (the verdict says so) when the canary's own sum is known to be worse than
``MEAN_MAX_UNCERTAINTY`` of itself. The counts and buckets are integers: exact.

A latency breach must also be more than chance (``LATENCY_ALPHA``): with few requests a p99 is the
slowest request and a mean moves with one request of a heavy tail, so identical versions breached
1 bake in 11 at 20 requests. A quantile is judged only from ``requests_for(q)`` requests on each
side (20 for p95, 100 for p99) and breaches only when the canary holds more of the requests above
the limit than a version as fast as its baselines would (``chance_of_as_many_above``); the mean
only when its excess is more than ``LATENCY_Z`` standard errors (``_difference_se``, from the
histograms' spread; the baselines' spread at least the canary's scaled to their median, as a small
window of a heavy tail rarely holds the tail). What was not judged is in the verdict's
measurements (``latency_not_judged``).

A host whose counters went down between two scrapes restarted (TF Serving starts from zero): its
window is the counts since the restart, marked ``restarted``. Counts, not ``_sum``: TF Serving
times a request with the wall clock, so one timed across a clock step back adds a negative
latency and lowers the sum of a server that never stopped (such a window has no mean). A canary
that restarted during its bake breaches (its window is not the whole bake, and a crash is the
likeliest cause); a baseline that restarted is not used.

A request's model name is a label value, and TF Serving escapes only ``\\`` and ``"`` in it: a
``POST /v1/models/a%0Ab:predict`` (a 404 from any client) puts a raw newline in the page until
TF Serving restarts. ``parse`` then reads the page line by line, keeping the request_count /
request_latency lines that parse on their own; an injected line cannot pass for the model's, as
a raw ``"`` never comes from a client (``prometheus_exporter.cc``, ``SanitizeLabelValue``).

Everything here but ``scrape`` is a pure function on parsed samples: ``parse`` (the page, read
with ``prometheus_client.parser``), ``window`` (two snapshots -> counts in between),
``quantile`` (Prometheus' ``histogram_quantile``) and ``judge`` (the verdict and its one line).
The rule (docs/architecture.md, "Rollout"): the canary breaches when its traffic fell — TF
Serving counts a request when it finishes, so a canary that hangs or crawls completes few — that is
when it answered fewer than ``min_traffic_ratio`` times the requests of every baseline in the same
time (its own before its switch, scaled to the bake's length; the old hosts' per host), at least
one of which has ``min_requests``; else fewer than ``min_requests`` requests on the canary
-> "not enough traffic", which passes or fails as ``on_low_traffic`` says; else the canary
breaches when its error rate is more than ``max_error_rate`` above the worst baseline's by more
than chance explains (``ERROR_RATE_ALPHA``: that many errors at the limit's rate would come in
fewer than 1 bake of 100, each baseline's rate counted with its own noise), or its
latency (above) is more than ``max_latency_ratio`` times the worst baseline's (a baseline counts
only with at least ``min_requests`` requests of its own).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist

from mlops_common.errors import UserError

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
OK = "OK"
MAX_PAGE_BYTES = 16 * 1024 * 1024
MEAN_MAX_UNCERTAINTY = 0.10      # the canary's latency sum known to be worse than this: its mean is not compared


@dataclass(frozen=True)
class Snapshot:
    """One model's counters on one host at one moment."""

    requests: dict[str, float] = field(default_factory=dict)      # status -> count (every request)
    buckets: dict[float, float] = field(default_factory=dict)     # le (µs) -> cumulative, inference APIs
    latency_sum: float = 0.0                                      # µs, inference requests answered OK
    latency_count: float = 0.0                                    # inference requests answered OK
    latency_sum_error: float = 0.0                                # ± µs: the page prints _sum to 6 digits
    at: float | None = None                                       # time.monotonic() when read (``scrape``)


@dataclass(frozen=True)
class Window:
    """What happened between two snapshots."""

    requests: int = 0                                             # inference requests (OK) + errors
    errors: int = 0
    buckets: tuple[tuple[float, float], ...] = ()                 # (le µs, cumulative count), sorted
    latency_sum: float = 0.0                                      # µs over the OK inference requests
    latency_count: int = 0
    restarted: bool = False                                       # its counters went down: TF Serving restarted
    latency_sum_error: float = 0.0                                # ± µs on latency_sum (the pages' rounding)
    seconds: float | None = None                                  # its length, when both snapshots say when
    hosts: int = 1                                                # hosts merged into it (``merge``)
    own: int = 0                                                  # left out: the deploy's smoke test (window_outside)
    moments: tuple[float, float, float] | None = None             # (n, Σx, Σx²) µs, set by ``merge``; else from buckets

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_ms(self, q: float) -> float | None:
        v = quantile(self.buckets, q)
        return None if v is None else v / 1000.0

    def latency_bounds_ms(self, q: float) -> tuple[float, float] | None:
        b = quantile_bounds(self.buckets, q)
        return None if b is None else (b[0] / 1000.0, b[1] / 1000.0)

    @property
    def timed(self) -> bool:
        """Whether the window has a mean: OK requests, and a latency sum that did not go down
        (TF Serving times requests with the wall clock: one timed across a clock step back adds
        a negative latency; such a window says nothing of its mean)."""
        return self.latency_count > 0 and self.latency_sum + self.latency_sum_error >= 0

    @property
    def mean_ms(self) -> float | None:
        """The mean as printed sums say it; ``mean_bounds_ms`` is what it can really be."""
        return self.latency_sum / self.latency_count / 1000.0 if self.timed else None

    @property
    def mean_bounds_ms(self) -> tuple[float, float] | None:
        """(lowest, highest) mean the rounded ``_sum`` values allow."""
        if not self.timed:
            return None
        n = self.latency_count * 1000.0
        return (max(0.0, self.latency_sum - self.latency_sum_error) / n,
                (self.latency_sum + self.latency_sum_error) / n)

    @property
    def latency_moments(self) -> tuple[float, float, float]:
        """(requests, Σx, Σx²) estimated from the histogram (``histogram_moments``): a merged
        window's are its hosts' summed, each from its own bucket limits."""
        return self.moments if self.moments is not None else histogram_moments(self.buckets)

    @property
    def latency_variance(self) -> float | None:
        """The requests' latency variance (µs², sample), from the histogram's spread; None under 2
        requests. Of a few requests of a heavy tail it is mostly too low (they rarely hold the tail
        that makes it): ``_difference_se`` does not take a small baseline's at its word."""
        n, s1, s2 = self.latency_moments
        if n <= 1:
            return None
        return max(0.0, s2 / n - (s1 / n) ** 2) * n / (n - 1)

    @property
    def mean_se_ms(self) -> float | None:
        """The standard error of the window's mean (its sampling noise), from the histogram's spread
        alone (the window's own figure, in its measurements; the mean rule uses ``_difference_se``)."""
        var = self.latency_variance
        return None if var is None else math.sqrt(var / self.latency_moments[0]) / 1000.0

    @property
    def mean_known(self) -> bool:
        """Whether the sum's rounding leaves the mean worth comparing (within MEAN_MAX_UNCERTAINTY):
        asked of the canary; a baseline is used at its highest mean whatever its rounding."""
        return self.latency_sum_error <= MEAN_MAX_UNCERTAINTY * self.latency_sum

    def to_dict(self) -> dict:
        p95, p99, mean = self.latency_ms(0.95), self.latency_ms(0.99), self.mean_ms
        err = self.latency_sum_error / self.latency_count / 1000.0 if self.latency_count > 0 else None
        se = self.mean_se_ms
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p95_ms": None if p95 is None else round(p95, 3), "p99_ms": None if p99 is None else round(p99, 3),
                "mean_ms": None if mean is None else round(mean, 3),
                "mean_ms_uncertainty": None if err is None else round(err, 3),
                "mean_ms_se": None if se is None else round(se, 3), "restarted": self.restarted,
                "seconds": None if self.seconds is None else round(self.seconds, 3), "hosts": self.hosts,
                "own_requests": self.own}


@dataclass(frozen=True)
class Limits:
    max_error_rate: float = 0.01          # above the baseline's
    max_latency_ratio: float = 1.5        # canary mean / p95 / p99 over the baseline's
    min_requests: int = 20                # fewer on the canary: "not enough traffic"
    on_low_traffic: str = "pass"          # pass | fail
    min_traffic_ratio: float = 0.25       # fewer than this times its baselines' requests: "traffic fell"

    def __post_init__(self):
        from mlops_common.errors import ConfigError

        if not 0 <= self.max_error_rate <= 1:      # (a NaN fails every comparison: refused too)
            raise ConfigError(f"--max-error-rate must be between 0 and 1, got {self.max_error_rate}")
        if not 1 <= self.max_latency_ratio < float("inf"):
            raise ConfigError(f"--max-latency-ratio must be a number of at least 1, got {self.max_latency_ratio}")
        if self.min_requests < 1:
            raise ConfigError(f"--min-requests must be at least 1, got {self.min_requests}")
        if not 0 <= self.min_traffic_ratio <= 1:
            raise ConfigError(f"--min-traffic-ratio must be between 0 and 1, got {self.min_traffic_ratio}")
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
def _value(s, *, signed: bool = False) -> float:
    """A count (finite, not negative); ``signed``: a latency ``_sum``, which TF Serving can print
    below zero (a request timed across a wall-clock step back adds a negative latency)."""
    if not (math.isfinite(s.value) and (signed or s.value >= 0)):
        raise UserError(f"{s.name} has the value {s.value}, which no counter can have")
    return float(s.value)


def sum_uncertainty(v: float) -> float:
    """± on a ``_sum`` as TF Serving prints it (``absl::StrCat(double)``: 6 significant digits):
    half a unit of its 6th digit (0 for 0). The exponent comes from formatting, not a log10."""
    if v == 0:
        return 0.0
    return 0.5 * 10.0 ** (int(f"{v:e}".split("e")[1]) - 5)


_KEPT = (REQUEST_COUNT, REQUEST_LATENCY + "_bucket", REQUEST_LATENCY + "_sum", REQUEST_LATENCY + "_count")
_KEPT_LINES = tuple(n + "{" for n in _KEPT)      # a sample line of a kept metric starts so


def _samples(text: str) -> list:
    """The page's request_count / request_latency samples as (name, sample): the name is the
    sample's without the ``_total`` the parser adds to a counter's. The whole page is parsed; if that
    fails on a page that is TF Serving's (it has request_count's TYPE line), each line of those
    metrics is parsed on its own and the rest skipped: a model name from a request can hold a
    newline, which TF Serving does not escape, and one such 404 must not make the page unreadable.
    UserError for a page that is neither."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # noqa: BLE001 - the parser raises ValueError and friends
        lines = text.split("\n")                 # not splitlines(): label values may hold \r, \x85, \u2028
        if f"# TYPE {REQUEST_COUNT} counter" not in lines:
            raise UserError(f"the metrics page is not Prometheus text ({exc})") from None
        return [(s.name, s) for line in lines if line.startswith(_KEPT_LINES)
                for s in _line_samples(line)]
    if not any(f.name == REQUEST_COUNT for f in families):
        raise UserError(f"the page has no {REQUEST_COUNT}: it is not TF Serving's metrics page (check "
                        f"metrics_url in the hosts file)")
    return [(REQUEST_COUNT if f.name == REQUEST_COUNT else s.name, s)
            for f in families if f.name in (REQUEST_COUNT, REQUEST_LATENCY) for s in f.samples]


def _line_samples(line: str) -> list:
    """One sample line's samples, or none if it does not parse alone (a piece of a split line)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return [s for f in text_string_to_metric_families(line + "\n") for s in f.samples]
    except Exception:  # noqa: BLE001 - the parser raises ValueError and friends
        return []


def parse(text: str, model: str) -> Snapshot:
    """``model``'s request counts by status and its inference latency (summed over API /
    entrypoint); UserError for a page that is not TF Serving's metrics."""
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    total = count = error = 0.0
    for name, s in _samples(text):
        if s.labels.get("model_name") != model:
            continue
        if name == REQUEST_COUNT:
            status = s.labels.get("status", OK)
            requests[status] = requests.get(status, 0.0) + _value(s)
        elif not s.labels.get("API"):                     # status / metadata GETs: not inference traffic
            continue
        elif name == REQUEST_LATENCY + "_bucket":
            try:
                le = float(s.labels.get("le", "+Inf"))
            except ValueError:
                raise UserError(f"{s.name} has the bucket limit le={s.labels.get('le')!r}, "
                                f"which is not a number") from None
            buckets[le] = buckets.get(le, 0.0) + _value(s)
        elif name == REQUEST_LATENCY + "_sum":
            total += _value(s, signed=True)
            error += sum_uncertainty(s.value)
        elif name == REQUEST_LATENCY + "_count":
            count += _value(s)
    if buckets and not count:             # a page without _count: the +Inf bucket holds it
        count = buckets.get(math.inf, 0.0)
    return Snapshot(requests, buckets, total, count, error)


def _went_down(before: Snapshot, after: Snapshot) -> bool:
    """Whether a count went down. Counts only: ``_sum`` goes down without a restart when a
    request is timed across a wall-clock step back (``Env::NowMicros`` is CLOCK_REALTIME in
    ``http_server.cc`` / ``prediction_service_impl.cc``: a negative latency)."""
    pairs = [(after.requests.get(k, 0.0), v) for k, v in before.requests.items()]
    pairs += [(after.buckets.get(k, 0.0), v) for k, v in before.buckets.items()]
    pairs += [(after.latency_count, before.latency_count)]
    return any(a < b for a, b in pairs)


def window(before: Snapshot, after: Snapshot) -> Window:
    """The counts between two snapshots; if any went down TF Serving restarted in between, and
    the window is what ``after`` counted since (``restarted``)."""
    restarted = _went_down(before, after)
    seconds = after.at - before.at if after.at is not None and before.at is not None else None
    if restarted:
        before = Snapshot()
    statuses = set(before.requests) | set(after.requests)
    counts = {st: after.requests.get(st, 0.0) - before.requests.get(st, 0.0) for st in statuses}
    errors = int(round(sum(c for st, c in counts.items() if st != OK)))
    ok = int(round(after.latency_count - before.latency_count))
    les = sorted(set(before.buckets) | set(after.buckets))
    buckets = tuple((le, after.buckets.get(le, 0.0) - before.buckets.get(le, 0.0)) for le in les)
    return Window(ok + errors, errors, buckets, after.latency_sum - before.latency_sum, ok, restarted,
                  after.latency_sum_error + before.latency_sum_error, seconds, 1)


def window_outside(before: Snapshot, after: Snapshot,
                   gaps: list[tuple[Snapshot | None, Snapshot | None]]) -> Window | None:
    """The counts between ``before`` and ``after`` without those of each gap ``(start, end)``: the
    deploy's own smoke test through the main entry (``smoke_main``), with the host's page read just
    before its first request and just after its last answer. TF Serving counts a request before it
    answers it (``http_server.cc``: ``RecordRequestLatency``, ``RecordModelRequestCount``, then
    ``ReplyWithStatus``), so every one of the deploy's requests lies inside its gap, and the window
    is the stretches outside the gaps added up — counts and buckets are integers: exact. Live
    requests answered inside a gap are left out with it (as its seconds are): a baseline of fewer
    live requests, never one holding the deploy's own. A gap whose start (end) could not be read
    (None) takes the stretch before (after) it with it; None when nothing is left. ``own``: the
    requests left out; ``restarted`` also when the counters went down inside a gap."""
    if not gaps:
        return window(before, after)
    segments, start, restarted = [], before, False
    for a, b in gaps:
        if start is not None and a is not None:
            segments.append(window(start, a))
        restarted |= a is not None and b is not None and _went_down(a, b)
        start = b
    if start is not None:
        segments.append(window(start, after))
    if not segments:
        return None
    whole, kept = window(before, after), merge(segments)
    lengths = [w.seconds for w in segments]
    return dataclasses.replace(kept, hosts=1, moments=None, restarted=restarted or whole.restarted or kept.restarted,
                               seconds=None if None in lengths else sum(lengths),
                               own=max(0, whole.requests - kept.requests))


def merge(windows: list[Window]) -> Window:
    """Several hosts' windows as one (the hosts still on the old version). Histogram buckets are
    merged on the limits every host has (a count is cumulative, known only at a host's own
    limits): a host missing a limit counted as 0 there, and TF Serving builds with other bucket
    sets made the old hosts' p95 look unbounded, so no canary breached on latency. The mean is
    the windows' that have one: a host whose sum went down (a request timed across a wall-clock
    step back) says nothing of its mean, and adding its negative sum made the others look faster
    than any of them was (an identical canary rolled back). Its length is the hosts' mean (their
    pages are read at once), unknown if one's is; ``hosts`` says how many it holds."""
    observed = [w for w in windows if w.buckets and w.latency_count > 0]   # an idle host's limits say nothing
    les = sorted(set.intersection(*(set(le for le, _ in w.buckets) for w in observed))) if observed else []
    buckets = tuple((le, sum(dict(w.buckets)[le] for w in observed)) for le in les)
    timed = [w for w in windows if w.timed]
    lengths = [w.seconds for w in windows]
    seconds = sum(lengths) / len(lengths) if lengths and None not in lengths else None
    moments = tuple(sum(m) for m in zip((0.0, 0.0, 0.0), *(w.latency_moments for w in observed)))
    return Window(sum(w.requests for w in windows), sum(w.errors for w in windows), buckets,
                  sum(w.latency_sum for w in timed), sum(w.latency_count for w in timed),
                  any(w.restarted for w in windows), sum(w.latency_sum_error for w in timed), seconds,
                  sum(w.hosts for w in windows), sum(w.own for w in windows), moments)


def _cumulative(buckets) -> list[tuple[float, float]]:
    """Counts made non-decreasing, as Prometheus does before ``histogram_quantile``."""
    out, top = [], 0.0
    for le, c in buckets:
        top = max(top, c)
        out.append((le, top))
    return out


def _locate(buckets, q: float):
    """(previous limit, previous count, limit, count, rank) of the bucket holding quantile ``q``."""
    buckets = _cumulative(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            return prev_le, prev_count, le, count, rank
        prev_le, prev_count = le, count
    return prev_le, prev_count, math.inf, prev_count, rank


def quantile(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket; None without observations."""
    found = _locate(buckets, q)
    if found is None:
        return None
    prev_le, prev_count, le, count, rank = found
    if math.isinf(le):               # in the open top bucket: the highest finite bound
        # none (a histogram of the open bucket alone): NaN in Prometheus, not 0
        return prev_le if any(math.isfinite(b) for b, _ in buckets) else None
    if count == prev_count:
        return le
    return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)


def quantile_bounds(buckets: tuple[tuple[float, float], ...], q: float) -> tuple[float, float] | None:
    """The limits of the bucket holding quantile ``q``: all the histogram can say of it."""
    found = _locate(buckets, q)
    return None if found is None else (found[0], found[2])


def histogram_moments(buckets: tuple[tuple[float, float], ...]) -> tuple[float, float, float]:
    """(n, Σx, Σx²) in µs as the histogram tells them: each request at its bucket's middle, with
    the spread of a request anywhere in its bucket ((width)²/12 each: a window whose requests all
    fell in one bucket is not taken for one without noise); the open top bucket (above 24 minutes in
    TF Serving's default limits) at its lower limit. For the mean's standard error only: the mean
    itself is ``_sum / _count``."""
    n = s1 = s2 = 0.0
    prev_le, prev_count = 0.0, 0.0
    for le, count in _cumulative(buckets):
        k = count - prev_count
        if k > 0:
            mid, spread = (prev_le, 0.0) if math.isinf(le) else ((prev_le + le) / 2, (le - prev_le) ** 2 / 12)
            n, s1, s2 = n + k, s1 + k * mid, s2 + k * (mid * mid + spread)
        prev_le, prev_count = le, count
    return n, s1, s2


# --- how sure: latency on few requests -------------------------------------------------------------
# A latency breach must be more than chance: that many of the canary's requests above a limit, or
# a mean that much above, would come from a version as fast as its baseline in fewer than 1 bake of
# this many (see ``_judge_mean`` and ``_judge_quantile``).
LATENCY_ALPHA = 0.01
LATENCY_Z = NormalDist().inv_cdf(1 - LATENCY_ALPHA)


def requests_for(q: float) -> int:
    """The fewest requests whose ``q`` quantile is not simply the slowest one: 1 / (1 - q) (20 for
    p95, 100 for p99). Below that a quantile is the window's slowest request, which a heavy tail
    makes anything."""
    return math.ceil(1 / (1 - q) - 1e-9)


def _log_comb(n: int, r: int) -> float:
    """log C(n, r), for the exact tails below."""
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


def _binomial_term(k: int, n: int, log_p: float, log_q: float) -> float:
    """P(X = k) for X ~ Binomial(n, p), given log p and log(1 - p)."""
    return math.exp(_log_comb(n, k) + k * log_p + (n - k) * log_q)


def chance_of_as_many_above(k: int, mine: int, above: int, total: int) -> float:
    """P(X >= k) for X ~ Hypergeometric: of ``total`` requests, ``above`` above a limit, the
    chance that ``mine`` of them drawn at random hold ``k`` or more of those above — how often a
    version as fast as its baseline puts that many of its requests there. Exact above the mean,
    1.0 at or below it."""
    if k <= 0:
        return 1.0
    if k > min(mine, above):
        return 0.0
    if k <= above * mine / total:
        return 1.0
    base = _log_comb(total, mine)
    p = 0.0
    for i in range(k, min(mine, above) + 1):
        term = math.exp(_log_comb(above, i) + _log_comb(total - above, mine - i) - base)
        p += term
        if term <= p * 1e-12:      # past the mode, terms fall at least geometrically
            break
    return min(p, 1.0)


def count_above(buckets: tuple[tuple[float, float], ...], limit: float) -> tuple[int, int]:
    """(requests above ``limit``, requests) of a histogram, where ``limit`` is one of its bucket
    limits or below its first: exact, the counts are integers."""
    cum = _cumulative(buckets)
    if not cum:
        return 0, 0
    total = cum[-1][1]
    at_or_below = max((c for le, c in cum if le <= limit), default=0.0)
    return int(round(total - at_or_below)), int(round(total))


# --- the verdict ---------------------------------------------------------------------------
RATE_EPSILON = 1e-9      # error rates closer than this to their limit are at it, not above
# An error rate above its limit breaches only when that many errors would come by chance less
# than once in a hundred bakes of a version whose true rate is at the limit: with a 0.5% rate on
# the old hosts, one error in 20 requests (5% > 1%) rolled back 1 in 10 identical versions.
ERROR_RATE_ALPHA = 0.01


def chance_of_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), for the verdict: exact above the mean (terms summed in log
    space from k until they stop counting), 1.0 at or below it (the tail is then at least about a
    half, never rare)."""
    if k <= 0 or p >= 1:
        return 1.0
    if p <= 0 or k > n:
        return 0.0
    if k <= n * p:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        term = _binomial_term(i, n, log_p, log_q)
        total += term
        if term <= total * 1e-12:      # past the mean, terms fall at least geometrically
            break
    return min(total, 1.0)


def _beyond_chance(errors: int, requests: int, bound: float) -> bool:
    return chance_of_at_least(errors, requests, bound) < ERROR_RATE_ALPHA


def _binomial_pmf(n: int, p: float) -> tuple[int, list[float]]:
    """(first k, P(X = k) from it on) for X ~ Binomial(n, p), over the values that count (12
    standard deviations and more either side of the mean carry nothing a 1% test can see)."""
    if p <= 0:
        return 0, [1.0]
    if p >= 1:
        return n, [1.0]
    reach = 12 * math.sqrt(n * p * (1 - p)) + 12
    lo, hi = max(0, math.floor(n * p - reach)), min(n, math.ceil(n * p + reach))
    log_p, log_q = math.log(p), math.log1p(-p)
    return lo, [_binomial_term(k, n, log_p, log_q) for k in range(lo, hi + 1)]


def _restricted_rate(errors: int, requests: int, base_errors: int, base_requests: int, margin: float) -> float:
    """The baseline's error rate p most likely to give both windows' counts when the canary's rate
    is exactly p + ``margin`` (the edge of "no worse than the limit"): the log-likelihood is concave
    in p, so its slope is found zero by bisection."""
    def slope(p: float) -> float:
        g = 0.0
        for k, n, r in ((base_errors, base_requests, p), (errors, requests, p + margin)):
            g += (k / r if k else 0.0) - ((n - k) / (1 - r) if n > k else 0.0)
        return g
    lo, hi = 0.0, 1.0 - margin
    if hi <= 0:
        return 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def chance_of_as_many_more_errors(errors: int, requests: int, base_errors: int, base_requests: int,
                                  margin: float) -> float:
    """How often a canary whose true error rate is exactly ``margin`` above its baseline's would
    show an error rate at least this much above the baseline's observed one, both windows counted
    with their noise: P(Xc/nc - Xb/nb >= kc/nc - kb/nb) with Xc ~ Binomial(nc, p + margin) and Xb
    ~ Binomial(nb, p), p the baseline rate most likely under that edge (``_restricted_rate``; an
    exact tail at an estimated rate, Lloyd's "E" test). A baseline of 20 requests without an error
    says its rate is below about 14%, not 0."""
    p = _restricted_rate(errors, requests, base_errors, base_requests, margin)
    lo_c, pmf_c = _binomial_pmf(requests, min(1.0, p + margin))
    tail_c, acc = [0.0] * (len(pmf_c) + 1), 0.0          # tail_c[i] = P(Xc >= lo_c + i)
    for i in range(len(pmf_c) - 1, -1, -1):
        acc += pmf_c[i]
        tail_c[i] = acc
    lo_b, pmf_b = _binomial_pmf(base_requests, p)
    total = 0.0
    for i, w in enumerate(pmf_b):
        xb = lo_b + i
        # Xc / nc - xb / nb >= kc / nc - kb / nb, in integers: Xc * nb >= kc * nb + nc * (xb - kb)
        need = -(-(errors * base_requests + requests * (xb - base_errors)) // base_requests)
        at = need - lo_c
        total += w * (1.0 if at <= 0 else tail_c[at] if at < len(tail_c) else 0.0)
    return min(total, 1.0)


def _errors_beyond_chance(canary: Window, baselines: dict[str, Window], bound: float, margin: float) -> bool:
    """Whether the canary's errors are more than ``margin`` above every baseline's rate beyond
    chance: each baseline with its own noise (``chance_of_as_many_more_errors``; all must say so,
    as "worse than the worst baseline" means worse than each); no baseline: against ``bound``."""
    k, n = int(canary.errors), int(canary.requests)
    if not baselines:
        return _beyond_chance(k, n, bound)
    return all(chance_of_as_many_more_errors(k, n, int(w.errors), int(w.requests), margin) < ERROR_RATE_ALPHA
               for w in baselines.values())


def _pct(rate: float, decimals: int = 1) -> str:
    return f"{100 * rate:.{decimals}f}%"


def _decimals(rate: float, limit: float, *parts: float) -> int:
    """Enough decimals for the line to tell ``rate`` from ``limit`` and to show a non-zero part
    as non-zero (at 1 decimal, 104/10000 errors read "1.0% ... limit 1.0%: rolled back")."""
    for d in (1, 2, 3, 4):
        if (abs(rate - limit) <= RATE_EPSILON or round(100 * rate, d) != round(100 * limit, d)) and \
                all(p == 0 or round(100 * p, d) != 0 for p in parts):
            return d
    return 4


def _ms(v: float) -> str:
    return f"{v:.1f} ms" if v >= 0.1 or v == 0 else f"{v:.2f} ms"


def _ms_bounds(b: tuple[float, float]) -> str:
    lo, hi = b
    return _ms(lo) if _ms(lo) == _ms(hi) else f"{_ms(lo)} to {_ms(hi)}"


def _difference_se(canary: Window, pooled: Window) -> float:
    """The standard error (ms) of the canary's mean minus the baselines' pooled mean. Each side's
    variance is its histogram's, except that the baselines' is at least the canary's scaled to
    their median: (variance of the canary) x (median of the baselines / median of the canary)²
    (1 when a median is unknown). A few requests of a heavy tail rarely hold the tail that makes
    their mean noisy, so their mean and their spread are both mostly too low, and with the
    baselines' own spread alone an identical canary of 1000 requests against a "before" window of
    20 (lognormal latency, sigma 1.5) breached 1 bake in 6. An identical version has the canary's
    spread; one k times slower (every request) has k² times it, and the medians say k. Simulated
    (``test_sync_bake_metrics.py::test_the_mean_rule_holds_with_a_small_baseline_window``): at most
    about 1 identical bake in 100 whatever the windows' sizes, and a version 2x / 3x slower is
    caught about as often as before with windows of equal size (less often against 20 requests of
    a heavy tail, whose mean says little: docs/reliability.md)."""
    nc, nb = canary.latency_moments[0], pooled.latency_moments[0]
    vc, vb = canary.latency_variance, pooled.latency_variance
    if vc is None or vb is None:          # a window of one request: as before, its own noise unknown
        return math.hypot(canary.mean_se_ms or 0.0, pooled.mean_se_ms or 0.0)
    mc, mb = quantile(canary.buckets, 0.5), quantile(pooled.buckets, 0.5)
    scale = (mb / mc) ** 2 if mc and mb else 1.0
    return math.sqrt(vc / nc + max(vb, vc * scale) / nb) / 1000.0


def _judge_mean(canary: Window, baselines: dict[str, Window],
                ratio: float) -> tuple[str | None, str | None, bool, bool]:
    """(breach reason, note that the mean was not compared, whether it was compared, whether it
    was above the limit but within chance). The printed ``_sum`` is rounded, so each mean is an
    interval, and a mean of few requests is noisy (one request of a heavy tail moves it): breach
    only if the canary's lowest exceeds ``ratio`` times the highest of every baseline, and exceeds
    the highest mean of the baselines' requests pooled by more than ``LATENCY_Z`` standard errors
    of that difference (``_difference_se``: each window's from its histogram's spread, the
    baselines' at least the canary's scaled to their median): an identical version does so in
    about 1 bake of 100 or fewer, however heavy its tail and however few requests the baselines
    hold. A baseline's highest is a
    true upper bound however coarse its sum (a host up for weeks, a sum whose printed digits did
    not move): it can only make a breach less likely, so every baseline with a finite, non-zero
    highest is used (a highest of 0 is no measurement: a page without ``_sum``). Not compared: a
    canary whose own sum is too coarse (said in the note), or without a mean or a usable baseline
    (nothing to say)."""
    mine = canary.mean_bounds_ms
    highs = {n: w.mean_bounds_ms[1] for n, w in baselines.items()
             if w.mean_bounds_ms is not None and 0 < w.mean_bounds_ms[1] < math.inf}
    if mine is None or not highs:
        return None, None, False, False
    if not canary.mean_known:
        return None, (f"mean not compared: TF Serving's cumulative latency sums, printed to 6 digits, "
                      f"are too coarse for this window: canary {_ms_bounds(mine)}"), False, False
    if mine[0] <= ratio * max(highs.values()):
        return None, None, True, False
    pooled = merge([baselines[n] for n in highs])          # the old version's requests, all of them
    if mine[0] - pooled.mean_bounds_ms[1] <= LATENCY_Z * _difference_se(canary, pooled):
        return None, None, True, True
    exact = canary.latency_sum_error == 0 and all(baselines[n].latency_sum_error == 0 for n in highs)
    lo, at_most = ("", "") if exact else ("at least ", "at most ")
    return (f"mean latency {lo}{_ms(mine[0])} vs " + " and ".join(f"{at_most}{_ms(v)} {n}" for n, v in highs.items())
            + f"; limit {ratio:g}x"), None, True, False


def _judge_quantile(q: float, canary: Window, baselines: dict[str, Window],
                    ratio: float) -> tuple[str | None, str | None]:
    """(breach reason, why it was not judged). TF Serving's bucket limits are 1.8x apart, so the
    canary breaches only when the lowest value its ``q`` quantile's bucket allows is above
    ``ratio`` times the highest every baseline's allows — and that is more than chance: of the
    requests above the first bucket limit past that product, in the canary's window and the
    baselines' pooled, the canary holds more than a version as fast as the baselines would in 1
    bake of 100 (``LATENCY_ALPHA``, hypergeometric; one slow request of a heavy tail is the p99 of
    100 requests, and as likely on either side). A window with fewer than ``requests_for(q)``
    requests (its quantile would be its slowest request) is not judged: a baseline is left out of
    that quantile, as one whose quantile lies in the open top bucket (it says nothing about it)."""
    name, need = f"p{round(q * 100)}", requests_for(q)
    n_canary = int(round(canary.latency_moments[0]))
    mine = quantile_bounds(canary.buckets, q) if n_canary >= need else None
    base, small = [], []
    for n, w in baselines.items():
        count = int(round(w.latency_moments[0]))
        b = quantile_bounds(w.buckets, q) if count >= need else None
        if b is not None and 0 < b[1] < math.inf:
            base.append((n, w, b))
        elif count < need:
            small.append(f"{count} {n}")
    if not baselines:
        return None, None
    if mine is None:
        return None, f"{name} not judged: {n_canary} requests on the canary (it takes {need})"
    if not base:
        why = f"{' and '.join(small)} (it takes {need})" if small else "the baselines' histograms cannot bound it"
        return None, f"{name} not judged: {why}"
    top = ratio * max(b[1] for _, _, b in base)
    if mine[0] <= top:
        return None, None
    limit = min(le for le, _ in canary.buckets if le >= top)       # <= mine[0], a limit of the canary's
    k, n_c = count_above(canary.buckets, limit)
    j, n_b = (sum(x) for x in zip(*(count_above(w.buckets, limit) for _, w, _ in base)))
    if chance_of_as_many_above(k, n_c, k + j, n_c + n_b) >= LATENCY_ALPHA:
        return None, (f"{name} above {ratio:g}x but within chance: {k} of {n_c} requests above "
                      f"{_ms(limit / 1000.0)} vs {j} of {n_b}")
    return (f"{name} latency at least {_ms(mine[0] / 1000.0)} vs "
            + " and ".join(f"at most {_ms(b[1] / 1000.0)} {n}" for n, _, b in base) + f"; limit {ratio:g}x"), None


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _count(n: float) -> str:
    """A request count, scaled: whole from 10 up (316.5 reads 316), else to a tenth."""
    return f"{n:.0f}" if n >= 10 else f"{round(n, 1):g}"


def _expected(w: Window, canary: Window) -> float:
    """``w``'s requests per host (live ones: the deploy's own smoke test through the main entry is
    left out of the canary's "before" window, ``window_outside``), scaled to the canary's window
    when the two lengths differ (the canary's "before" window lasts from the first read to its
    switch: the bake or longer)."""
    n = w.requests / max(1, w.hosts)
    if canary.seconds and w.seconds and canary.seconds > 0 and w.seconds > 0:
        n *= canary.seconds / w.seconds
    return n


def _judge_traffic(canary: Window, before: Window | None, others: Window | None,
                   limits: Limits) -> tuple[str | None, dict]:
    """(breach reason, measurements) of the "traffic fell" rule. TF Serving counts a request when
    it finishes, so a canary that hangs or crawls on live traffic completes few: it breaches when
    its requests are below ``min_traffic_ratio`` times every baseline's in the same time — its own
    before its switch (scaled to the canary window's length) and the old hosts' per host — and at
    least one of them has ``min_requests`` (scaled). A restarted baseline is not compared; a quiet
    one cannot call a fall alone but can deny it (a canary that was as quiet before its switch, or
    old hosts as quiet as it now: the traffic went elsewhere, not to a hung version). No busy
    baseline: no verdict here (a quiet fleet is "not enough traffic", as before)."""
    compared = {name: _expected(w, canary) for name, w in (("before", before), ("others", others))
                if w is not None and not w.restarted}
    ratio = limits.min_traffic_ratio
    fell = any(n >= limits.min_requests for n in compared.values()) and \
        all(canary.requests < ratio * n for n in compared.values())
    info = {"canary": canary.requests, "before": None if "before" not in compared else round(compared["before"], 1),
            "others_per_host": None if "others" not in compared else round(compared["others"], 1),
            "compared": sorted(compared), "fell": fell}
    if not fell:
        return None, info
    parts = []
    if "before" in compared:
        live, notes = before.requests, []
        if round(live) != round(compared["before"]) and before.seconds:
            notes.append(f"{live} in {_seconds(before.seconds)}")
        if before.own:
            notes.append(f"not counting {before.own} during the deploy's own smoke test")
        raw = f" ({', '.join(notes)})" if notes else ""
        parts.append(f"{_count(compared['before'])} before its switch{raw}")
    if "others" in compared:
        parts.append(f"{_count(compared['others'])} per host on the {others.hosts} other hosts" if others.hosts > 1
                     else f"{_count(compared['others'])} on the other host")
    took = f"in {_seconds(canary.seconds)}" if canary.seconds else "in the bake"
    return (f"answered {canary.requests} request{'' if canary.requests == 1 else 's'} {took} vs "
            f"{' and '.join(parts)}; traffic fell below {100 * ratio:g}%"), info


def judge(host: str, canary: Window, before: Window | None, others: Window | None, limits: Limits) -> Verdict:
    """Did the canary's live traffic get worse than before its switch / than the old hosts?"""
    named = [(name, w) for name, w in (("before", before), ("on the other hosts", others)) if w is not None]
    baselines = {name: w for name, w in named if w.requests >= limits.min_requests and not w.restarted}
    measurements = {"canary": canary.to_dict(),
                    "before": before.to_dict() if before is not None else None,
                    "others": others.to_dict() if others is not None else None,
                    "limits": {"max_error_rate": limits.max_error_rate,
                               "max_latency_ratio": limits.max_latency_ratio,
                               "min_requests": limits.min_requests, "on_low_traffic": limits.on_low_traffic,
                               "min_traffic_ratio": limits.min_traffic_ratio}}
    if canary.restarted:
        why = "TF Serving restarted during the bake (its counters went down)"
        return Verdict(host, "breached", f"canary {host}: {why}: rolled back", (why,), measurements)
    fell, measurements["traffic"] = _judge_traffic(canary, before, others, limits)
    if fell and canary.requests < limits.min_requests:      # a hung canary, not a quiet fleet
        return Verdict(host, "breached", f"canary {host}: {fell}: rolled back", (fell,), measurements)
    if canary.requests < limits.min_requests:
        ok = limits.on_low_traffic == "pass"
        line = (f"canary {host}: not enough traffic ({canary.requests} requests < {limits.min_requests}) to "
                f"judge it: {'passed' if ok else 'rolled back'} (--on-low-traffic {limits.on_low_traffic})")
        return Verdict(host, "low_traffic_passed" if ok else "low_traffic_failed", line,
                       ("not enough traffic",), measurements)
    reasons = []
    base_rate = max((w.error_rate for w in baselines.values()), default=0.0)

    def unused(w: Window) -> str:
        if w.restarted:
            return " (restarted, not used)"
        return "" if w.requests >= limits.min_requests else f" ({w.requests} requests, too few to use)"

    bound = base_rate + limits.max_error_rate
    d = _decimals(canary.error_rate, bound, base_rate, limits.max_error_rate, *(w.error_rate for _, w in named))
    compare = " and ".join(f"{_pct(w.error_rate, d)} {name}{unused(w)}" for name, w in named) or "no baseline"
    limit = _pct(limits.max_error_rate, d) if base_rate == 0 else \
        f"{_pct(bound, d)} ({_pct(base_rate, d)} + {_pct(limits.max_error_rate, d)})"
    err = f"error rate {_pct(canary.error_rate, d)} ({canary.errors}/{canary.requests}) vs {compare}; limit {limit}"
    # "more than the limit": 7/100 against 6/100 + 1% is at it, though 0.06 + 0.01 > 0.07 in floats
    if canary.error_rate > bound + RATE_EPSILON:
        if _errors_beyond_chance(canary, baselines, bound, limits.max_error_rate):
            reasons.append(err)
        else:
            err += (f", within chance at {canary.requests} requests (at the limit, {canary.errors} or more "
                    f"errors come in more than 1 bake of {round(1 / ERROR_RATE_ALPHA)})")
    ratio = limits.max_latency_ratio
    mean_reason, mean_note, measurements["mean_compared"], mean_chance = _judge_mean(canary, baselines, ratio)
    measurements["mean_within_chance"] = mean_chance
    if mean_reason:
        reasons.append(mean_reason)
    not_judged = []
    for q in (0.95, 0.99):
        q_reason, q_note = _judge_quantile(q, canary, baselines, ratio)
        if q_reason:
            reasons.append(q_reason)
        if q_note:
            not_judged.append(q_note)
    measurements["latency_not_judged"] = not_judged
    if fell:
        reasons.append(fell)
    note = f" ({mean_note})" if mean_note else ""
    if reasons:
        return Verdict(host, "breached", f"canary {host}: {'; '.join(reasons)}{note}: rolled back",
                       tuple(reasons), measurements)
    lat = f", mean {_ms_bounds(canary.mean_bounds_ms)}" if canary.mean_ms is not None and not mean_note else ""
    lat += f" (above {ratio:g}x, within chance at {canary.latency_count} requests)" if mean_chance else ""
    lat += f", {mean_note}" if mean_note else ""
    p95 = canary.latency_bounds_ms(0.95)
    lat += f", p95 at most {_ms(p95[1])}" if p95 is not None and math.isfinite(p95[1]) else ""
    return Verdict(host, "passed", f"canary {host}: {err}{lat}: passed", (), measurements)


# --- reading a host ------------------------------------------------------------------------
class PageTooLarge(ValueError):
    """The page passed ``MAX_PAGE_BYTES``: most likely many model names that clients asked for."""


def _read_page(url: str, timeout: float) -> bytes:
    """The whole page or OSError / ValueError: at most ``MAX_PAGE_BYTES``, within about
    ``timeout`` seconds in all (each read waits at most ``timeout``), never a page cut short."""
    import http.client
    import urllib.request

    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:   # noqa: S310 - the hosts file's URL
            expected = resp.headers.get("Content-Length")
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the page did not arrive within {timeout:g}s")
                chunk = resp.read1(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_PAGE_BYTES:
                    raise PageTooLarge(f"the page is larger than {MAX_PAGE_BYTES // (1024 * 1024)} MB")
                chunks.append(chunk)
    except http.client.HTTPException as exc:       # IncompleteRead of a chunked page, a bad status line
        raise ValueError(f"the answer was cut off or malformed ({type(exc).__name__})") from None
    body = b"".join(chunks)
    if expected is not None and expected.strip().isdigit() and len(body) != int(expected):
        raise ValueError(f"the page was cut off ({len(body)} of {int(expected)} bytes)")
    if body and not body.endswith(b"\n"):
        raise ValueError("the page was cut off (it does not end with a new line)")
    return body


def scrape(host_name: str, url: str, model: str, *, timeout: float = 5.0) -> Snapshot:
    """Read ``url`` (bounded by ``timeout``) and parse ``model``'s counters, stamped with when
    (the middle of the read: a window's length is the difference); one-line UserError."""
    import urllib.error

    started = time.monotonic()
    try:
        text = _read_page(url, timeout).decode("utf-8", "replace")
    except PageTooLarge as exc:
        # TF Serving keeps a request_count line for every model name a request named, a 404 too
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}; TF Serving keeps a "
                        f"request_count line for every model name any client has asked for, unknown ones too, "
                        f"until it restarts): restart TF Serving on {host_name} to clear them (or deploy "
                        f"with --bake 0), and let only known model names reach its REST port") from None
    except urllib.error.HTTPError as exc:
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} (HTTP {exc.code}); start TF "
                        f"Serving with --monitoring_config_file enabling prometheus_config, set metrics_url "
                        f"in the hosts file, or deploy with --bake 0") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{host_name}: cannot read TF Serving's metrics at {url} ({exc}); start TF Serving "
                        f"with --monitoring_config_file enabling prometheus_config, set metrics_url in the "
                        f"hosts file, or deploy with --bake 0") from None
    at = (started + time.monotonic()) / 2
    try:
        return dataclasses.replace(parse(text, model), at=at)
    except UserError as exc:
        raise UserError(f"{host_name}: {url}: {exc.message}") from None
