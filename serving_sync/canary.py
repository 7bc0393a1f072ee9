"""The bake: read the hosts' TF Serving metrics around a switch and judge each switched host.

Timeline (``Baker``): ``start`` scrapes the changing hosts before anything changes — every host to
be judged (the canary; with ``--bake-each-wave`` every wave but the last), whose metrics cannot be
read is refused here, before any host is touched, and at most ``BASELINE_HOSTS`` of the others
(``baseline_sample``), the comparison; each judged host is read again just before
its first prepare step and just after its last (``HostRun.own_marks``), and that stretch — the
deploy's own work there: the validation copy's load, warmup and smoke test, a smoke test through
the main entry (``smoke_main``) that TF Serving counts under the model's name — is left out of
its "before" window (``metrics_windows.window_outside``: its traffic, error and latency baselines
are live traffic only); ``before_switch`` waits until that window holds at least ``bake`` seconds
of live traffic (equal to the bake or longer; reading them every ``RESTART_CHECK_EVERY`` seconds
meanwhile: a restart then leaves that window out) and scrapes the hosts about to switch;
``judge`` scrapes the switched hosts and (at most ``BASELINE_HOSTS`` of) the hosts still on the
old version, waits ``bake`` seconds (reading both every ``RESTART_CHECK_EVERY`` seconds meanwhile:
a restart is seen while its counters are below their old values), scrapes again and returns one
``bake.Verdict`` per switched host. The numbers are ``bake.judge``'s.
"""
from __future__ import annotations

import dataclasses
import functools
import time

from mlops_common import log
from mlops_common.errors import UserError

from . import bake, cancel, metrics_scrape, metrics_windows, parallel

logger = log.get("sync.canary")


class CanaryFailed(UserError):
    """A switched host's live traffic breached a limit (or had too little traffic to judge, with
    ``--on-low-traffic fail``); the message is the verdict's one line."""

    def __init__(self, verdict: bake.Verdict):
        super().__init__(verdict.line)
        self.verdict = verdict


PROGRESS_EVERY = 30.0    # seconds between "still baking" lines: a CI step with no output for 10 min is killed
# How long one read of a host's metrics page may take: a quarter of the bake, within these bounds
# and never more than the deploy's --timeout (``metrics_timeout``)
METRICS_TIMEOUT_MIN, METRICS_TIMEOUT_MAX = 5.0, 60.0


def metrics_timeout(bake: float, deploy_timeout: float) -> float:
    """Seconds one read of a metrics page may take: a quarter of ``bake``, at least 5 s (a bake of
    a few seconds still reads a page that takes a moment) and at most 60 s (a long bake does not
    wait minutes for a page that does not come), never more than ``deploy_timeout`` (--timeout
    bounds every wait of a deploy). A fixed 5 s refused a busy host's page that takes longer,
    whatever the bake's length."""
    return min(deploy_timeout, max(METRICS_TIMEOUT_MIN, min(METRICS_TIMEOUT_MAX, bake / 4)))


# At most this many hosts still on the old version are read as the bake's comparison (``baseline_sample``):
# all of them in a fleet of up to 17, a spread sample beyond. Reading every old host every
# RESTART_CHECK_EVERY seconds cost a 1,000-host fleet ~14,000 page reads in a 60 s bake from the
# deploying machine, for a baseline 16 hosts already pin down (their summed traffic is what the rules
# compare); 16 is also what is read at once, so their windows line up.
BASELINE_HOSTS = 16


def baseline_sample(names, at_most: int = BASELINE_HOSTS) -> tuple[str, ...]:
    """At most ``at_most`` of ``names`` (hosts-file order), spread evenly over it: hosts files are
    often grouped by rack or zone, and the first 16 would all be one of them."""
    names = list(names)
    if len(names) <= at_most:
        return tuple(names)
    return tuple(names[i * len(names) // at_most] for i in range(at_most))


# Seconds between reads of the judged hosts' pages during their bake: a TF Serving restart there
# shows as counters that went down only until they climb past their old values (a server started
# shortly before the deploy), so the bake reads the pages this often, not just at its two ends
RESTART_CHECK_EVERY = 5.0


def _sleep(seconds: float, doing: str = "", tick=None) -> None:
    """Sleep in short steps so an interrupt request is honoured within 0.1 s; say ``doing`` and
    the seconds left every ``PROGRESS_EVERY`` seconds (CircleCI ends a step silent for 10 minutes);
    call ``tick`` every ``RESTART_CHECK_EVERY`` seconds while more than that is left."""
    end = time.monotonic() + max(0.0, seconds)
    said = ticked = time.monotonic()
    while True:
        cancel.check()
        now = time.monotonic()
        left = end - now
        if left <= 0:
            return
        if doing and now - said >= PROGRESS_EVERY:
            logger.info("bake: %s, %.0fs left", doing, left)
            said = now
        if tick is not None and now - ticked >= RESTART_CHECK_EVERY and left > RESTART_CHECK_EVERY:
            tick()
            ticked = time.monotonic()
            continue
        time.sleep(min(0.1, left))


def unreadable_canary(message: str, each_wave: bool) -> str:
    """The deploy's refusal of a judged host whose metrics cannot be read (``message``: why), which
    ``sync plan`` previews (``fleet_plan``)."""
    return f"canary {message}" + (" (--bake-each-wave judges every wave but the last)" if each_wave else "")


class Baker:
    """``canary``: the hosts to judge (``rollout.Shape.judged``); their metrics must be readable."""

    def __init__(self, model: str, runs, canary: tuple[str, ...], opts, *, timeout: float | None = None):
        self.model = model
        self.runs = {r.host.name: r for r in runs}
        # per judged host, its metrics read around the deploy's prepare phase on it
        # (``HostRun.own_marks``): left out of its window before the switch
        self.own: dict[str, list] = {}
        self.canary = set(canary)
        # the hosts never judged that are read as the comparison (``baseline_sample``)
        self.baseline = set(baseline_sample([n for n in self.runs if n not in self.canary]))
        self.opts = opts
        self.timeout = metrics_timeout(opts.bake, opts.timeout) if timeout is None else timeout
        self.s0: dict[str, metrics_windows.Snapshot] = {}
        self.s1: dict[str, metrics_windows.Snapshot] = {}
        self.unreadable: dict[str, str] = {}
        # (when, judged host) a read during a bake or the wait before its switch failed on (said once)
        self.unread_in_bake: set[tuple[str, str]] = set()
        # per judged host, its reads during the wait for its window before the switch (``before_switch``)
        self.waited: dict[str, list] = {}
        # while set (``time.monotonic()``): the end of the bake under way, past which no read may
        # last (a read during it is a restart check, not worth holding the bake's end for)
        self.until: float | None = None

    def _scrape(self, name: str) -> metrics_windows.Snapshot:
        host = self.runs[name].host
        timeout = self.timeout
        if self.until is not None:
            left = self.until - time.monotonic()
            if left <= 0:
                raise UserError(f"{name}: its metrics page was not read: the bake ended first")
            timeout = min(timeout, max(0.1, round(left, 1)))
        return metrics_scrape.scrape(name, host.metrics, self.model, timeout=timeout)

    def _scrape_some(self, names, required=()) -> dict[str, metrics_windows.Snapshot]:
        """Every host of ``names`` read at once, 16 at a time (their windows line up; past 16 hosts
        less exactly); a host in ``required`` must be readable (UserError), any other one is left
        out of the comparison. A host never judged is not read again after a failure (each would
        wait ``timeout``); a host judged later (``--bake-each-wave``) is, since it must be
        readable when its own wave comes."""
        names = [n for n in names if n in required or n not in self.unreadable or n in self.canary]
        out = {}
        for n, (snap, exc) in zip(names, parallel.settle(self._scrape, names, workers=16, name="metrics")):
            if exc is None:
                out[n] = snap
                continue
            if n in required or not isinstance(exc, UserError):
                raise exc
            self.unreadable[n] = exc.message
            logger.warning("%s (left out of the comparison)", exc.message)
        return out

    def start(self) -> None:
        for n in sorted(self.canary):
            try:
                self.s0[n] = self._scrape(n)
            except UserError as exc:
                raise UserError(unreadable_canary(exc.message, self.opts.bake_each_wave)) from None
        self.s0.update(self._scrape_some([n for n in self.runs if n in self.baseline]))
        for n in self.canary:      # two more reads of a judged host, around its prepare phase
            self.runs[n].read_metrics = functools.partial(self._read_around_own, n)

    def _read_around_own(self, name: str) -> metrics_windows.Snapshot | None:
        """``name``'s metrics just before or after the deploy's prepare phase on it; None (a
        warning) when they cannot be read: the stretch of the window before the switch on that
        side of the prepare is then left out with it."""
        try:
            return self._scrape(name)
        except UserError as exc:
            logger.warning("%s (around the deploy's prepare on it: the window before the switch leaves out "
                           "the stretch on that side of it)", exc.message)
            return None

    def _live_seconds(self, name: str, now: float) -> float | None:
        """Seconds of ``name``'s window before the switch that will be live traffic if it is read
        ``now`` (the stretches outside its prepare, ``own_marks``); None when waiting adds none
        (the read after its prepare failed: what follows is left out with it)."""
        t, live = self.s0[name].at, 0.0
        for a, b in self.runs[name].own_marks:
            if t is not None and a is not None and a.at is not None:
                live += a.at - t
            t = b.at if b is not None else None
        return None if t is None else live + (now - t)

    def before_switch(self, wave) -> None:
        names = [r.host.name for r in wave]
        judged = [n for n in names if n in self.canary and n in self.s0]
        now = time.monotonic()
        live = [x for x in (self._live_seconds(n, now) for n in judged) if x is not None]
        waited: dict[str, list] = {n: [] for n in judged}
        if live:       # the window before the switch: at least --bake seconds of live traffic
            wait = self.opts.bake - min(live)
            self.until = time.monotonic() + wait      # read meanwhile, as in the bake: a restart is seen
            doing = f"measuring the baseline before {', '.join(names)} switch{'es' if len(names) == 1 else ''}"
            try:
                _sleep(wait, doing, tick=functools.partial(self._read_during_bake, judged, waited,
                                                           "while its window before the switch fills"))
            finally:
                self.until = None
        # the judged hosts only: no other's window before its switch is used (reading a last wave of
        # many hosts held its switch, and an unreadable one was "left out of the comparison" of none)
        self.s1.update(self._scrape_some(judged, required=judged))
        for n in judged:    # the deploy's prepare on each: in the window, not live traffic
            self.own[n] = list(self.runs[n].own_marks)
            self.waited[n] = waited[n]

    def _before(self, n: str) -> metrics_windows.Window | None:
        """``n``'s window before its switch (``window_outside``: its prepare left out), ``restarted``
        also when its counts went down between any two of its reads up to its switch (the wait for
        that window is read every ``RESTART_CHECK_EVERY``: a restart whose counts climbed past their
        old values by the switch made a window of counts since minus before); said in a warning."""
        before = metrics_windows.window_outside(self.s0[n], self.s1[n], self.own.get(n, []))
        if before is None:
            logger.warning("%s: its metrics could not be read around the deploy's prepare on it: its window "
                           "before the switch is not used", n)
            return None
        reads = [self.s0[n], *(x for gap in self.own.get(n, []) for x in gap), *self.waited.get(n, []), self.s1[n]]
        if not before.restarted and metrics_windows.went_down_along(reads):
            before = dataclasses.replace(before, restarted=True)
        if before.restarted:
            logger.warning("%s: TF Serving restarted before its switch (its window before the switch is not "
                           "used)", n)
        return before

    def judge(self, wave, old) -> list[bake.Verdict]:
        judged = [r.host.name for r in wave]      # every one read before its switch (``canary``)
        # the comparison: a spread sample of the hosts still on the old version (later judged waves'
        # hosts, with --bake-each-wave, and the sample of the never-judged ones that start read)
        old_names = list(baseline_sample([r.host.name for r in old
                                          if r.host.name in self.canary or r.host.name in self.baseline]))
        s2 = self._scrape_some(judged + old_names, required=judged)
        logger.info("bake: judging %s on live traffic for %gs", ", ".join(judged), self.opts.bake)
        # the old hosts too: one that restarts and climbs past its old counts by the bake's end is
        # seen at a read in between and left out, not compared on its counts since minus before
        seen = {n: [s2[n]] for n in judged + old_names if n in s2}
        self.until = time.monotonic() + self.opts.bake     # a read during the bake ends with it
        try:
            _sleep(self.opts.bake, f"judging {', '.join(judged)} on live traffic",
                   tick=functools.partial(self._read_during_bake, judged, seen))
        finally:
            self.until = None
        # an old host whose page failed during the bake is left out (``_read_during_bake``)
        s3 = self._scrape_some(judged + [o for o in old_names if o in seen], required=judged)
        others = []
        for o in old_names:
            if o in seen and o in s3:
                w = metrics_windows.window_through([*seen[o], s3[o]])
                if w.restarted:
                    logger.warning("%s: TF Serving restarted during the bake (left out of the comparison)", o)
                else:
                    others.append(w)
        merged = metrics_windows.merge(others) if others else None
        verdicts = []
        for n in judged:
            before = self._before(n) if n in self.s0 else None
            # a restart from the read before its switch on is the canary's too (a crash at its switch)
            mine = metrics_windows.window_through([*seen[n], s3[n]], before=self.s1.get(n))
            verdicts.append(bake.judge(n, mine, before, merged, self.opts.limits, old_hosts=len(old)))
        return verdicts

    def _read_during_bake(self, judged: list[str], seen: dict[str, list], during: str = "during the bake") -> None:
        """Read the pages of ``seen`` — the judged hosts and the old ones read at the bake's start —
        once more during their bake (``RESTART_CHECK_EVERY``), each added to ``seen``: a restart
        whose counters climb past their old values before the bake's last read is seen at a read in
        between (``metrics_windows.window_through``): a judged host's breaches, an old host's is
        left out of the comparison. A judged host's page that cannot be read now is skipped, said
        once a host (its last read must succeed); an old host's is left out of the comparison and
        not read again in this bake (a restart of it could go unseen, and each read would wait); no
        such read lasts past the bake's end (``until``): a page late then held the bake up to a
        whole read's time limit past it. An old host's read cut by that end is no failure (a late
        page, a large fleet's reads reaching it): it is read again at the bake's end."""
        names = sorted(seen)
        read = parallel.settle(self._scrape, names, workers=16, name="metrics")
        # reads cut by the end of the bake (or the wait) did not fail: their pages are read next at its end
        ended = self.until is not None and time.monotonic() >= self.until - 0.05
        for n, (snap, exc) in zip(names, read):
            if exc is None:
                seen[n].append(snap)
            elif not isinstance(exc, UserError):
                raise exc
            elif n not in judged and ended:
                continue
            elif n not in judged:        # a restart of it could go unseen now, and each read would wait
                del seen[n]
                logger.warning("%s (%s: left out of the comparison)", exc.message, during)
            elif (during, n) not in self.unread_in_bake:
                self.unread_in_bake.add((during, n))
                logger.warning("%s (%s: a restart while it does not answer may go unseen)", exc.message, during)
