"""How the results of ``mlops sync`` read for people (``--json`` prints their ``to_dict()`` instead).

One printer per command; each takes the plain result a ``serving_sync`` call returned and prints
it, deciding nothing. Progress lines go to stderr, results to stdout.
"""
from __future__ import annotations

import sys

from mlops_common.errors import printable


def _say(line: str, *, file=None) -> None:
    """Print one line with any control character in it shown as ``\\xNN``: check messages and
    drift carry text from hosts and TF Serving (found by review, 2026-12-05, fourth stop)."""
    print(printable(line), file=file or sys.stdout)


def deploy(result) -> None:
    """A ``fleet.deploy`` result: its message, then one line per host."""
    _say(result.message)
    for h in result.hosts:
        extra = []
        if h.publish:
            extra.append(f"{h.publish['status'].replace('_', ' ')}, {h.publish['bytes_transferred']} bytes")
        if h.switch_seconds is not None:
            extra.append(f"switch {h.switch_seconds * 1000:.0f} ms")
        if h.retention and (h.retention.get("remove_versions") or h.retention.get("remove_uploads")):
            extra.append(f"removed {h.retention.get('remove_versions')} {h.retention.get('remove_uploads')}")
        if h.retention and h.retention.get("remove_partials"):     # S3: folders without saved_model.pb
            extra.append(f"removed dead uploads {h.retention['remove_partials']}")
        extra += [n for n in h.notes if n != "up to date"]
        _say(f"  {h.host}: {h.status.replace('_', ' ')}" + (f" ({'; '.join(extra)})" if extra else ""))


def plan(model: str, fp, gate: str | None = None) -> None:
    """A ``fleet_plan.plan_fleet`` result: what the deploy refuses first, the hosts it could not
    observe, the rollout, then each host's steps by phase. The deploy's refusal leads, the one it
    meets first (``gate``: ``--version N`` refused without ``--force``; then a host it cannot
    observe; then the bake's, ``FleetPlan.refused``), and no later one follows: the bake's note
    printed below a host the deploy stops at first read as the deploy's answer. The hosts not
    observed come before the rollout: printed last, below a rollout that leaves them out, the plan
    read as the whole fleet's."""
    src = "production" if fp.source == "production" else "--version"
    _say(f"plan for v{fp.version} of '{model}' ({src}):")
    if gate is not None:
        _say(f"note: `mlops sync deploy --version {fp.version}` refuses this without --force --reason: {gate}")
    if fp.errors:       # first: below them, the rollout and the hosts' steps leave these hosts out
        n = len(fp.errors)
        _say(f"  {n} host{'s' if n != 1 else ''} cannot be observed, left out of the rollout below; "
             f"`mlops sync deploy` refuses until every host can be:")
        for name, err in fp.errors.items():
            _say(f"  {name}: cannot observe: {_unnamed(name, err)}")
    elif gate is None and getattr(fp, "refused", None):     # the bake's first read, before any host changes
        refused(fp.refused)
    for line in rollout_lines(fp):
        _say(f"  {line}")
    for p in fp.plans:
        _host_plan(p, fp.peak.get(p.host) or {})


def refused(message: str) -> None:
    """What ``sync deploy`` refuses first of the plan (``FleetPlan.refused``)."""
    _say(f"note: `mlops sync deploy` refuses this before any host changes: {message}")


def _unnamed(name: str, err: str) -> str:
    """``err`` without a leading ``name:`` (errors of a fleet name their host; the line does too)."""
    return err[len(name) + 2:] if err.startswith(f"{name}: ") else err


def _host_plan(p, peak: dict) -> None:
    now = f"serves v{p.current}" if p.current is not None else "serves nothing"
    mem = (f"; peak model memory {_mb(peak['bytes'])} (1.2 x SavedModel size of "
           f"{' + '.join(f'v{c}' for c in peak['copies'])})" if peak.get("bytes") is not None else
           "; peak model memory unknown (a SavedModel size is not known)" if peak else "")
    _say(f"  {p.host} ({now}): " + ("up to date, nothing to do" if p.up_to_date else
                                     f"{len(p.steps)} steps{mem}"))
    phase = None
    for i, step in enumerate(p.steps, 1):
        if step.kind.phase != phase:
            phase = step.kind.phase
            _say(f"    {phase}:")
        _say(f"    {i}. {step.text}")
    if not p.up_to_date and p.retention:
        _say(f"    then retention removes {', '.join(f'v{v}' for v in p.retention)}")
    for n in p.notes:
        if n != "up to date":
            _say(f"    note: {n}")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def rollout_lines(fp) -> list[str]:
    """The rollout's phases, canary, waves and bake, for people."""
    ro, bk = fp.rollout, fp.bake
    n = sum(len(w) for w in ro.get("waves", ()))
    if not n:
        return ["rollout: nothing changes"]
    lines = [f"phase 1, prepare: {n} host{'s' if n != 1 else ''}, {min(bk['parallel'], n)} at a time (publish, "
             f"validation entry, smoke test; nothing that serves changes)"]
    if (restore := fp.restore) is not None:
        lines.append(f"restore: production was rolled back from v{restore['rolled_back_from']} to this version, "
                     f"which held it before: every host switches at once, no bake (--canary, --wave or "
                     f"--bake stage it)")
    # rollout.Shape.bakeable: as the deploy decides
    canary = bool(ro["canary"]) and (len(ro["waves"]) > 1 or bool(ro.get("unjudged")))
    if canary and ro.get("unjudged") and bk["seconds"]:
        lines.append(f"resume: v{fp.version} already serves on {', '.join(ro['unjudged'])} from a rollout nothing "
                     f"judged (a deploy stopped before its canary's verdict): the canary below is its verdict")
    if not canary and bk.get("requested"):
        lines.append(f"no canary ({'one host changes' if n == 1 else '--canary 0'}): --bake "
                     f"{bk['requested']:g}s not used")
    for i, wave in enumerate(ro["waves"]):
        if i == 0 and canary:
            bake = "no bake (--bake 0)"
            if bk["seconds"]:
                lim = bk["limits"]
                quiet = lim["on_low_traffic"] + (" unless its errors are beyond chance"
                                                 if lim["on_low_traffic"] == "pass" else "")
                bake = (f"bake {bk['seconds']:g}s on TF Serving's metrics (error rate "
                        f"+{100 * lim['max_error_rate']:g}% max, p95/p99 x{lim['max_latency_ratio']:g} max, traffic "
                        f"{100 * lim['min_traffic_ratio']:g}% of the baselines' min, fewer than "
                        f"{lim['min_requests']} requests: {quiet})")
            lines.append(f"phase 2, switch: canary {', '.join(wave)}; {bake}")
        else:
            lines.append(f"phase 2, switch: wave {i if canary else i + 1}: {', '.join(wave)}"
                         + (f"; bake {bk['seconds']:g}s" if bk["each_wave"] and bk["seconds"]
                            and i < len(ro["waves"]) - 1 else ""))
    lines.append("memory: " + ("--fast: the validation copy stays loaded until the switch (two copies of the "
                               "new version for a moment)" if bk["fast"] else
                               "the validation copy is unloaded before the main entry loads the version"))
    return lines


def status(fs) -> None:
    """A ``status.fleet_status`` result: production, then each host's routes and drift."""
    production = fs.production
    _say(f"'{fs.model}': production is {f'v{production}' if production is not None else '(none)'}")
    for s in fs.hosts:
        if not s.reachable:
            # a changed host key or an unreadable models.config is no network fault: say what it was
            _say(f"  {s.name}: CANNOT OBSERVE: {_unnamed(s.name, s.error)}")
            continue
        states = ", ".join(f"v{v} {st}" for v, st in sorted(s.versions.items())) or "no versions"
        label = s.labels.get("stable")
        _say(f"  {s.name}: stable -> {f'v{label}' if label is not None else 'nothing'}, unversioned -> "
              f"{f'v{s.unversioned}' if s.unversioned is not None else 'nothing'} ({states}): "
              + ("in sync" if s.in_sync else "DRIFT: " + "; ".join(s.drift)))
        if s.lock is not None:
            _say(f"    lock: {s.lock}")


def smoke(reports) -> None:
    """``smoke_hosts`` reports: one line per host with every check."""
    for r in reports:
        _say(f"{r.host}: {'passed' if r.passed else 'FAILED'} via {r.route}: "
              + "; ".join(f"{c.name}: {c.message}" for c in r.checks))


def rollback_moved(model: str, actor: str, promo) -> None:
    """Progress (stderr): the registry moved back; the deploy starts."""
    if promo.details.get("finishes") is not None:
        _say(f"production of '{model}' is v{promo.to_version}: finishing the rollback v{promo.from_version} -> "
              f"v{promo.to_version} (ledger #{promo.ledger_id}), which stopped before its tags were written; "
              f"run `mlops sync rollback` again to roll back further", file=sys.stderr)
        return
    _say(f"production of '{model}': v{promo.from_version} -> v{promo.to_version} (rollback by {actor}, "
          f"ledger #{promo.ledger_id}); deploying", file=sys.stderr)


def rollback(rb) -> None:
    """A ``serving_sync.rollback`` result: the deploy, then how soon the old outputs answered."""
    if rb.deploy is None:         # another rollback got there first, and every host serves its version
        p = rb.registry
        _say(f"production of '{p.model}' already moved v{p.from_version} -> v{p.to_version} ({p.action} by "
             f"{p.provenance.actor}, ledger #{p.ledger_id}) after this rollback read it, and every host serves "
             f"v{p.to_version}: nothing changed")
        return
    deploy(rb.deploy)
    answered, switch = rb.seconds_to_old_outputs, rb.switch_seconds
    if rb.superseded:
        from registry.promotion_view import move_said

        by = move_said(rb.superseded_by) if rb.superseded_by is not None else "another move"
        _say(f"note: production moved to v{rb.deploy.version} ({by}) while this rollback to "
              f"v{rb.registry.to_version} deployed; the hosts serve v{rb.deploy.version}, what production names now")
    elif answered is not None:
        _say(f"v{rb.registry.to_version}'s outputs answered on the unversioned route {answered:.2f}s after the "
              f"command started" + (f" (host switch {switch * 1000:.0f} ms)" if switch is not None else ""))


def watch(result) -> None:
    """A ``Watcher`` result: the passes kept (the newest), one line per run of passes in a row that
    said the same (an idle watch's 200 "up_to_date: hosts serve v5" lines went to the journal at
    every stop, burying the passes that did something), and how many ran before them."""
    if result.dropped:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
        _say(f"{result.dropped} earlier passes not shown (all passes: {counts})")
    same: list = []
    for p in [*result.passes, None]:
        if same and (p is None or _said(p) != _said(same[0])):
            first, n = same[0], len(same)
            more = f" (and {n - 1} more such pass{'es' if n > 2 else ''} until {same[-1].at:.1f}s)" if n > 1 else ""
            _say(f"{first.at:7.1f}s {first.trigger:8s} {first.status}: {first.message}{more}")
            same = []
        if p is not None:
            same.append(p)


def _said(p) -> tuple:
    return p.trigger, p.status, p.version, p.message


def infra_validate_started(model: str, version: int, kind: str) -> None:
    """Progress (stderr): which throw-away server validates what."""
    _say(f"infra-validate v{version} of '{model}' in a throw-away {kind} TF Serving", file=sys.stderr)


def infra_validate(result) -> None:
    """An ``infra.validate`` result: each check, then the verdict."""
    for c in result.checks:
        _say(f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.message}")
    _say(f"infra validation of v{result.version} {'passed' if result.passed else 'FAILED'} "
          f"({result.server}, {result.seconds:.1f}s)")
