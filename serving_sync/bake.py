"""Judge a canary on the traffic it really serves: the verdict (``judge``) and its one line.

The canary's window after its switch (``metrics_windows``: TF Serving's own Prometheus metrics,
read by ``metrics_scrape``) is compared with (a) the same host over a window before its switch
and (b) the hosts still on the old version over the same window as the canary's.

The latency checks allow for what the page can say. A p95 / p99 breaches only when the lowest
value its bucket allows is above ``max_latency_ratio`` times the highest its baseline's bucket
allows (bucket limits are 1.8x apart, wider than a 1.5x limit) — so a version 3% slower whose p95
crosses a bucket limit is not rolled back, and a version several times slower is. The mean
(``_sum / _count``) is not exact: TF Serving prints ``_sum`` with ``absl::StrCat(double)``, 6
significant digits, and the sum is per model name, cumulative since TF Serving started, so after
weeks of uptime its rounding step (±½ unit of the 6th digit, ``metrics_windows.sum_uncertainty``) outgrows a
bake's whole sum. A window's mean is therefore an interval; the mean breaches only when the
canary's lowest possible mean is above ``max_latency_ratio`` times the highest possible mean of
the slowest baseline. A baseline's highest is a true bound however coarse its sum (a host up for
weeks, a sum whose printed digits did not move in the window), so a coarse baseline is used as it
is — it can only make a breach less likely — and does not stop the comparison with a precise one.
The mean is not compared (the verdict says so) when the canary's own sum is known to be worse than
``metrics_windows.MEAN_MAX_UNCERTAINTY`` of itself. The counts and buckets are integers: exact.

A latency breach must also be more than chance (``LATENCY_ALPHA``): with few requests a p99 is the
slowest request and a mean moves with one request of a heavy tail, so identical versions breached
1 bake in 11 at 20 requests. A quantile is judged only from ``bake_stats.requests_for(q)`` requests on each
side (20 for p95, 100 for p99) and breaches only when the canary holds more of the requests above
the limit than a version as fast as its baselines would (``bake_stats.chance_of_as_many_above``); the mean
only when its excess is more than ``LATENCY_Z`` standard errors (``_difference_se``, from the
histograms' spread; the baselines' spread at least the canary's scaled to their median, as a small
window of a heavy tail rarely holds the tail). What was not judged is in the verdict's
measurements (``latency_not_judged``).

A canary that restarted during its bake breaches (its window is not the whole bake, and a crash
is the likeliest cause); a baseline that restarted is not used.

``judge`` is a pure function on windows (the statistics are ``bake_stats``'s).
The rule (docs/architecture.md, "Rollout"): the canary breaches when its traffic fell — TF
Serving counts a request when it finishes, so a canary that hangs or crawls completes few — that is
when it answered fewer than ``min_traffic_ratio`` times the requests of every baseline in the same
time (its own before its switch, scaled to the bake's length; the old hosts' per host), at least
one of which has ``min_requests``; else fewer than ``min_requests`` requests on the canary
-> "not enough traffic", which passes or fails as ``on_low_traffic`` says, unless its errors alone
breach (the error rule below: too few requests to judge latency, not to tell that they fail); else the canary
breaches when its error rate is more than ``max_error_rate`` above the worst baseline's by more
than chance explains (``ERROR_RATE_ALPHA``: that many errors at the limit's rate would come in
fewer than 1 bake of 100, each baseline's rate counted with its own noise), or its
latency (above) is more than ``max_latency_ratio`` times the worst baseline's (a baseline counts
only with at least ``min_requests`` requests of its own).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

from .bake_stats import (
    chance_of_as_many_above,
    chance_of_as_many_more_errors,
    chance_of_at_least,
    count_above,
    quantile,
    quantile_bounds,
    requests_for,
)
from .metrics_windows import Window, merge


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


# --- how sure: latency on few requests -------------------------------------------------------------
# A latency breach must be more than chance: that many of the canary's requests above a limit, or
# a mean that much above, would come from a version as fast as its baseline in fewer than 1 bake of
# this many (see ``_judge_mean`` and ``_judge_quantile``).
LATENCY_ALPHA = 0.01
LATENCY_Z = NormalDist().inv_cdf(1 - LATENCY_ALPHA)

# --- the verdict ---------------------------------------------------------------------------
RATE_EPSILON = 1e-9      # error rates closer than this to their limit are at it, not above
# An error rate above its limit breaches only when that many errors would come by chance less
# than once in a hundred bakes of a version whose true rate is at the limit: with a 0.5% rate on
# the old hosts, one error in 20 requests (5% > 1%) rolled back 1 in 10 identical versions.
ERROR_RATE_ALPHA = 0.01


def _beyond_chance(errors: int, requests: int, bound: float) -> bool:
    return chance_of_at_least(errors, requests, bound) < ERROR_RATE_ALPHA


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


def _ms(v: float, more: int = 0) -> str:
    return f"{v:.{1 + more}f} ms" if v >= 0.1 or v == 0 else f"{v:.{2 + more}f} ms"


def _ms_breach(low: float, highs: list[float], ratio: float) -> tuple[str, list[str]]:
    """``low`` and each of ``highs`` (ms) with as many decimals as it takes for the figures shown
    to breach too (``low`` above ``ratio`` times each): at one decimal a mean of 1.04 ms against
    0.69 ms read "1.0 ms vs 0.7 ms; limit 1.5x: rolled back", under 1.5x as shown."""
    for more in range(6):
        shown = [_ms(v, more) for v in (low, *highs)]
        values = [float(x.split()[0]) for x in shown]
        if all(values[0] > ratio * h for h in values[1:]):
            break
    return shown[0], shown[1:]


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
    low, shown = _ms_breach(mine[0], list(highs.values()), ratio)
    return (f"mean latency {lo}{low} vs " + " and ".join(f"{at_most}{v} {n}" for n, v in zip(highs, shown))
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
        return None, f"{name} not judged: {_requests(n_canary)} on the canary (it takes {need})"
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
        return None, (f"{name} above {ratio:g}x but within chance: {k} of {_requests(n_c)} above "
                      f"{_ms(limit / 1000.0)} vs {j} of {n_b}")
    low, shown = _ms_breach(mine[0] / 1000.0, [b[1] / 1000.0 for _, _, b in base], ratio)
    return (f"{name} latency at least {low} vs "
            + " and ".join(f"at most {v} {n}" for (n, _, _), v in zip(base, shown)) + f"; limit {ratio:g}x"), None


def _requests(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _count(n: float, below: float | None = None) -> str:
    """A request count, scaled: whole from 10 up (316.5 reads 316), else to a tenth; ``below``: a
    fall's ratio, with as many decimals as it takes for ``n`` shown to stay a fall (an old host's
    80.5 requests against a canary's 20 read "80": 25%, at the limit, not below it)."""
    shown = f"{n:.0f}" if n >= 10 else f"{round(n, 1):g}"
    if below is not None:
        for d in (1, 2, 3):
            if below < float(shown):
                break
            shown = f"{n:.{d}f}"
    return shown


def _expected(w: Window, canary: Window) -> float:
    """``w``'s requests per host (live ones: the deploy's prepare on the canary, its smoke test
    through the main entry included, is left out of its "before" window, ``window_outside``),
    scaled to the canary's window when the two lengths differ (the canary's "before" window lasts
    from the first read to its switch: the bake or longer)."""
    n = w.requests / max(1, w.hosts)
    if canary.seconds and w.seconds and canary.seconds > 0 and w.seconds > 0:
        n *= canary.seconds / w.seconds
    return n


def _judge_traffic(canary: Window, before: Window | None, others: Window | None,
                   limits: Limits, old_hosts: int | None = None) -> tuple[str | None, dict]:
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
    parts, least = [], canary.requests / ratio          # every baseline shown above it: a fall as shown
    if "before" in compared:
        live, notes = before.requests, []
        if round(live) != round(compared["before"]) and before.seconds:
            notes.append(f"{live} in {_seconds(before.seconds)}")
        if before.own:
            notes.append(f"not counting {before.own} during the deploy's prepare on it")
        raw = f" ({', '.join(notes)})" if notes else ""
        parts.append(f"{_count(compared['before'], least)} before its switch{raw}")
    if "others" in compared:
        parts.append(f"{_count(compared['others'], least)} {_on_others(others, old_hosts, per_host=True)}")
    took = f"in {_seconds(canary.seconds)}" if canary.seconds else "in the bake"
    return (f"answered {_requests(canary.requests)} {took} vs "
            f"{' and '.join(parts)}; traffic fell below {100 * ratio:g}%"), info


def _on_others(others: Window, old_hosts: int | None, *, per_host: bool = False) -> str:
    """Where the old version's figures come from: "on the other host" (a fleet of two), "on the
    other hosts", or, when only some of the hosts still on the old version were compared (a sample
    of a larger fleet, a host left out), "on 16 of the 999 other hosts"; ``per_host``: a per-host
    count's, "per host on the 3 other hosts"."""
    if old_hosts is not None and old_hosts > others.hosts:
        where = f"on {others.hosts} of the {old_hosts} other hosts"
    elif others.hosts > 1:
        where = f"on the {others.hosts} other hosts" if per_host else "on the other hosts"
    else:
        return "on the other host"
    return f"per host {where}" if per_host else where


def judge(host: str, canary: Window, before: Window | None, others: Window | None, limits: Limits, *,
          old_hosts: int | None = None) -> Verdict:
    """Did the canary's live traffic get worse than before its switch / than the old hosts?
    ``old_hosts``: how many hosts are still on the old version, when ``others`` merges a sample of
    them (``canary.baseline_sample``); the measurements and the line say so."""
    where = _on_others(others, old_hosts) if others is not None else ""
    named = [(name, w) for name, w in (("before", before), (where, others)) if w is not None]
    baselines = {name: w for name, w in named if w.requests >= limits.min_requests and not w.restarted}
    measurements = {"canary": canary.to_dict(),
                    "before": before.to_dict() if before is not None else None,
                    "others": others.to_dict() if others is not None else None,
                    "old_hosts": old_hosts,
                    "limits": {"max_error_rate": limits.max_error_rate,
                               "max_latency_ratio": limits.max_latency_ratio,
                               "min_requests": limits.min_requests, "on_low_traffic": limits.on_low_traffic,
                               "min_traffic_ratio": limits.min_traffic_ratio}}
    if canary.restarted:
        why = "TF Serving restarted during the bake (its counters went down)"
        return Verdict(host, "breached", f"canary {host}: {why}: rolled back", (why,), measurements)
    fell, measurements["traffic"] = _judge_traffic(canary, before, others, limits, old_hosts)
    if fell and canary.requests < limits.min_requests:      # a hung canary, not a quiet fleet
        return Verdict(host, "breached", f"canary {host}: {fell}: rolled back", (fell,), measurements)
    reasons = []

    def error_rule(used: dict[str, Window]) -> tuple[str, bool, bool]:
        """(the error rate's text, above its limit, beyond chance) against the baselines ``used``."""
        base_rate = max((w.error_rate for w in used.values()), default=0.0)

        def unused(w: Window) -> str:
            if w.restarted:
                return " (restarted, not used)"
            return "" if any(w is u for u in used.values()) else f" ({_requests(w.requests)}, too few to use)"

        bound = base_rate + limits.max_error_rate
        d = _decimals(canary.error_rate, bound, base_rate, limits.max_error_rate, *(w.error_rate for _, w in named))
        compare = " and ".join(f"{_pct(w.error_rate, d)} {name}{unused(w)}" for name, w in named) or "no baseline"
        limit = _pct(limits.max_error_rate, d) if base_rate == 0 else \
            f"{_pct(bound, d)} ({_pct(base_rate, d)} + {_pct(limits.max_error_rate, d)})"
        text = (f"error rate {_pct(canary.error_rate, d)} ({canary.errors}/{canary.requests}) vs {compare}; "
                f"limit {limit}")
        # "more than the limit": 7/100 against 6/100 + 1% is at it, though 0.06 + 0.01 > 0.07 in floats
        over = canary.error_rate > bound + RATE_EPSILON
        return text, over, over and _errors_beyond_chance(canary, used, bound, limits.max_error_rate)

    if canary.requests < limits.min_requests:
        # too few requests to judge the rest, not too few to tell that they fail; against every
        # baseline with requests, a quiet one too (its own noise counted): errors the old version
        # has in a quiet hour (a client's bad inputs) are not the canary's fault
        err, _, beyond = error_rule({name: w for name, w in named if w.requests > 0 and not w.restarted})
        if beyond:
            why = (f"{err} (fewer than --min-requests {limits.min_requests}, but more errors than chance "
                   f"explains)")
            return Verdict(host, "breached", f"canary {host}: {why}: rolled back", (why,), measurements)
        ok = limits.on_low_traffic == "pass"
        line = (f"canary {host}: not enough traffic ({_requests(canary.requests)} < {limits.min_requests}) to "
                f"judge it: {'passed' if ok else 'rolled back'} (--on-low-traffic {limits.on_low_traffic})")
        return Verdict(host, "low_traffic_passed" if ok else "low_traffic_failed", line,
                       ("not enough traffic",), measurements)
    err, above, beyond = error_rule(baselines)
    if above:
        if beyond:
            reasons.append(err)
        else:
            err += (f", within chance at {_requests(canary.requests)} (at the limit, {canary.errors} or more "
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
    lat += f" (above {ratio:g}x, within chance at {_requests(canary.latency_count)})" if mean_chance else ""
    lat += f", {mean_note}" if mean_note else ""
    p95 = canary.latency_bounds_ms(0.95)
    lat += f", p95 at most {_ms(p95[1])}" if p95 is not None and math.isfinite(p95[1]) else ""
    return Verdict(host, "passed", f"canary {host}: {err}{lat}: passed", (), measurements)

