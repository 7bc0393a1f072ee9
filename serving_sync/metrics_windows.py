"""TF Serving's request counters: its Prometheus page parsed into a ``Snapshot``, two into a ``Window``.

TF Serving (``--monitoring_config_file`` with ``prometheus_config``) counts every request in
``:tensorflow:serving:request_count{model_name,status}`` and times each request answered OK in
the histogram ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (microseconds;
``http_server.cc``, ``prediction_service_impl.cc``). Counters only grow, so a window is the
difference of two scrapes.

What is counted: status and metadata GETs (a load balancer's health check) carry ``API=""`` in
the histogram and are left out, so they neither pass for traffic nor dilute the latency. The
request count has no API label: a window's requests are its inference requests answered OK (the
histogram's ``_count`` for ``API`` other than ``""``) plus every request that failed (every
``status`` but ``OK``; a failed health check is rare and counts as an error).

TF Serving prints ``_sum`` with ``absl::StrCat(double)``, 6 significant digits (``sum_uncertainty``):
a window's mean is an interval (``Window.mean_bounds_ms``). The counts and buckets are integers: exact.

A host whose counters went down between two scrapes restarted (TF Serving starts from zero): its
window is the counts since the restart, marked ``restarted``. Counts, not ``_sum``: TF Serving
times a request with the wall clock, so one timed across a clock step back adds a negative
latency and lowers the sum of a server that never stopped (such a window has no mean).

A request's model name is a label value, and TF Serving escapes only ``\\`` and ``"`` in it: a
``POST /v1/models/a%0Ab:predict`` (a 404 from any client) puts a raw newline in the page until
TF Serving restarts. ``parse`` then reads the page line by line, keeping the request_count /
request_latency lines that parse on their own; an injected line cannot pass for the model's, as
a raw ``"`` never comes from a client (``prometheus_exporter.cc``, ``SanitizeLabelValue``).

Pure functions on parsed samples: ``parse`` (the page, read with ``prometheus_client.parser``, or
its OpenMetrics parser for a page in that format),
``window`` (two snapshots -> counts in between), ``window_through``, ``window_outside``, ``merge`` and
``went_down_along``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mlops_common.errors import UserError

from .bake_stats import histogram_moments, quantile, quantile_bounds

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
OK = "OK"
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
    own: int = 0                                                  # left out: the deploy's prepare (window_outside)
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


_KEPT = (REQUEST_COUNT, REQUEST_COUNT + "_total", REQUEST_LATENCY + "_bucket", REQUEST_LATENCY + "_sum",
         REQUEST_LATENCY + "_count")
_KEPT_LINES = tuple(n + "{" for n in _KEPT)      # a sample line of a kept metric starts so


def _count_name(name: str) -> str:
    """An OpenMetrics counter's sample name (``request_count_total``) as TF Serving's own."""
    return REQUEST_COUNT if name == REQUEST_COUNT + "_total" else name


def _samples(text: str, model: str) -> list:
    """The page's request_count / request_latency samples of ``model`` as (name, sample): the name
    is the sample's without the ``_total`` the parser adds to a counter's. Only the ``# TYPE``
    lines and the lines holding ``model_name="<model>"`` (escaped as TF Serving escapes it) are
    parsed: every line of the model's holds it, and a page of many unknown model names near
    ``MAX_PAGE_BYTES`` took 8 s to parse whole. If that fails on a page that is TF Serving's (it
    has request_count's TYPE line), each line of those metrics is parsed on its own and the rest
    skipped: a model name from a request can hold a newline, which TF Serving does not escape, and
    one such 404 must not make the page unreadable. UserError for a page that is neither.

    A page in OpenMetrics format (it ends with ``# EOF``: a sidecar or proxy re-exporting TF
    Serving's) is read with the OpenMetrics parser: its counters' samples end in ``_total`` and
    each series has a ``_created`` sample (a time, not a count), which the Prometheus text parser
    files as other metrics — the page read as one with no request counts, every error unseen."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
    from prometheus_client.parser import text_string_to_metric_families

    lines = text.split("\n")                     # not splitlines(): label values may hold \r, \x85, \u2028
    openmetrics = "\n".join(lines[-2:]) == "# EOF\n"
    needle = 'model_name="' + model.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [line for line in lines if line.startswith("#") or needle in line]
    try:
        families = list((openmetrics_families if openmetrics else text_string_to_metric_families)(
            "\n".join(lines) + ("" if openmetrics else "\n")))
    except Exception as exc:  # noqa: BLE001 - the parser raises ValueError and friends
        if f"# TYPE {REQUEST_COUNT} counter" not in lines:
            raise UserError(f"the metrics page is not Prometheus text ({exc})") from None
        return [(_count_name(s.name), s) for line in lines if line.startswith(_KEPT_LINES)
                for s in _line_samples(line)]
    if not any(f.name == REQUEST_COUNT for f in families):
        try:                                     # not TF Serving's: say whether it is Prometheus text at all
            list(text_string_to_metric_families(text))
        except Exception as exc:  # noqa: BLE001 - the parser raises ValueError and friends
            raise UserError(f"the metrics page is not Prometheus text ({exc})") from None
        raise UserError(f"the page has no {REQUEST_COUNT}: it is not TF Serving's metrics page (check "
                        f"metrics_url in the hosts file)")
    return [(REQUEST_COUNT if f.name == REQUEST_COUNT else s.name, s)
            for f in families if f.name in (REQUEST_COUNT, REQUEST_LATENCY) for s in f.samples
            if not s.name.endswith("_created")]


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
    for name, s in _samples(text, model):
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


def went_down_along(reads: list[Snapshot | None]) -> bool:
    """Whether a count went down between two successive reads of one host (in the order read;
    None, a read that failed, is skipped): TF Serving restarted in between, though its counters
    may have climbed past their old values by the last."""
    got = [r for r in reads if r is not None]
    return any(_went_down(a, b) for a, b in zip(got, got[1:]))


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


def window_through(snapshots: list[Snapshot], *, before: Snapshot | None = None) -> Window:
    """The window from the first of ``snapshots`` to the last (reads of one host in between, in
    order), ``restarted`` when a count went down between any two of them: TF Serving restarted,
    though its counters may have climbed past their old values by the last; the window is then
    what the last counted since it started. ``before``: a read before the first (the host's just
    before its switch), not in the window: counts that went down from it to the first are a restart
    too (at the switch, which never restarts TF Serving itself)."""
    whole = window(snapshots[0], snapshots[-1])
    reads = ([before] if before is not None else []) + list(snapshots)
    if whole.restarted or not any(_went_down(a, b) for a, b in zip(reads, reads[1:])):
        return whole
    return dataclasses.replace(window(Snapshot(at=snapshots[0].at), snapshots[-1]), restarted=True)


def window_outside(before: Snapshot, after: Snapshot,
                   gaps: list[tuple[Snapshot | None, Snapshot | None]]) -> Window | None:
    """The counts between ``before`` and ``after`` without those of each gap ``(start, end)``: the
    deploy's prepare phase on the host (the validation copy's load, warmup and smoke test, and a
    smoke test through the main entry, ``smoke_main``, which TF Serving counts under the model's
    name), with the host's page read just before its first step and just after its last. TF
    Serving counts a request before it answers it (``http_server.cc``: ``RecordRequestLatency``,
    ``RecordModelRequestCount``, then ``ReplyWithStatus``), so every one of the deploy's requests
    lies inside its gap, and the window is the stretches outside the gaps added up — counts and
    buckets are integers: exact. Live requests answered inside a gap are left out with it (as its
    seconds are): a baseline of fewer live requests, never one holding the deploy's own. A gap
    whose start (end) could not be read (None) takes the stretch before (after) it with it; None
    when nothing is left. ``own``: the requests left out; ``restarted`` also when the counters
    went down inside a gap."""
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
