"""The statistics the bake's verdict rests on, pure functions on counts.

``quantile`` (Prometheus' ``histogram_quantile``), ``quantile_bounds`` and ``histogram_moments``
(what a histogram can say of its requests), ``count_above``, ``requests_for``, and exact tails:
``chance_of_at_least`` (binomial), ``chance_of_as_many_above`` (hypergeometric) and
``chance_of_as_many_more_errors`` (two binomials).
"""
from __future__ import annotations

import math


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


