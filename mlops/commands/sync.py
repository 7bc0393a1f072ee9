"""`mlops sync ...`: make the serving hosts serve `production`, prove it, put things back if not.

deploy | plan | status | smoke | rollback | watch | infra-validate. The work lives in
``serving_sync`` (plan, deploy, fleet, status, smoke, watch, webhook, infra); this module only
parses flags, wires the registry in, and prints (``--json``: exactly one JSON document on
stdout; progress on stderr). Heavy imports stay inside the command functions: ``rollback``,
``status`` and ``smoke`` never import TensorFlow, and MLflow only when they touch the registry.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time

from mlops.commands import flags, output
from mlops_common import settings
from mlops_common.errors import ConfigError
from serving_sync.bake import Limits
from serving_sync.options import DeployOptions
from serving_sync.smoke import SmokeOptions

# Flag defaults are the packages' own defaults (--help shows them), never a second copy.
_DEPLOY, _SMOKE, _LIMITS = DeployOptions(), SmokeOptions(), Limits()

_ENV = ("Hosts: --hosts FILE, else MLOPS_SYNC_TARGET + MLOPS_SYNC_REST_URL (one host), else "
        "MLOPS_HOSTS_FILE or $MLOPS_HOME/hosts.toml (see docs/architecture.md). Registry: "
        "MLFLOW_TRACKING_URI, MLOPS_MODEL_NAME, MLOPS_LEDGER_URL.")


def _common(p, *, hosts: bool = True) -> None:
    flags.add_model_name(p)
    if hosts:
        p.add_argument("--hosts", metavar="FILE", help="hosts file (TOML, [[hosts]] tables); see below")
    flags.add_json(p)


def _smoke_flags(p) -> None:
    p.add_argument("--atol", type=flags.number, default=_SMOKE.atol, metavar="A",
                   help="allowed absolute difference from the golden outputs (default %(default)g)")
    p.add_argument("--latency-requests", type=flags.positive_int, default=_SMOKE.requests, metavar="N",
                   help="requests for the latency check (default %(default)s)")
    p.add_argument("--latency-budget-ms", type=flags.number, default=_SMOKE.budget_ms, metavar="MS",
                   help="p95 latency budget in milliseconds (default %(default)g)")


def _deploy_flags(p) -> None:
    p.add_argument("--timeout", type=flags.seconds, default=_DEPLOY.timeout, metavar="S",
                   help="bound on every wait (loading, label switch, unloading; default %(default)g)")
    p.add_argument("--break-lock", metavar="TOKEN", default=None,
                   help="take over the host lock with this token (shown in the error) even though it "
                        "is not stale; a lock silent for MLOPS_LOCK_TTL (default 10 min) or whose "
                        "process died on this machine is taken over without it")
    p.add_argument("--lock-wait", type=flags.seconds, default=0.0, metavar="S",
                   help="wait up to S seconds for another deploy's lock (default 0: fail at once)")
    p.add_argument("--keep", type=flags.positive_int, default=_DEPLOY.keep, metavar="N",
                   help="published versions kept per model after a deploy (default %(default)s; the serving "
                        "and previous versions are always kept)")
    p.add_argument("--no-keep-previous", action="store_true",
                   help="unload the previous version after the switch (default: keep it loaded for an "
                        "instant rollback)")
    _rollout_flags(p)
    _smoke_flags(p)


# Rollout settings: flag, else environment, else default (docs/architecture.md, "Rollout").
_BAKE_ENV = {"bake": ("MLOPS_BAKE_SECONDS", flags.seconds, _DEPLOY.bake),
             "max_error_rate": ("MLOPS_BAKE_MAX_ERROR_RATE", flags.fraction, _LIMITS.max_error_rate),
             "max_latency_ratio": ("MLOPS_BAKE_MAX_LATENCY_RATIO", flags.number, _LIMITS.max_latency_ratio),
             "min_requests": ("MLOPS_BAKE_MIN_REQUESTS", flags.positive_int, _LIMITS.min_requests),
             "on_low_traffic": ("MLOPS_BAKE_ON_LOW_TRAFFIC", str, _LIMITS.on_low_traffic)}


def _rollout_flags(p, *, plan_only: bool = False) -> None:
    p.add_argument("--parallel", type=flags.positive_int, default=_DEPLOY.parallel, metavar="N",
                   help="prepare at most N hosts at once (default %(default)s)")
    p.add_argument("--canary", type=flags.non_negative_int, metavar="N",
                   help="hosts that switch first and are judged on live traffic (default 1 when two or more "
                        "hosts change; 0: none)")
    p.add_argument("--wave", type=flags.wave, metavar="N|P%",
                   help="after the canary, switch N hosts (or P%% of them) at a time (default: all at once)")
    p.add_argument("--bake", type=flags.seconds, metavar="S",
                   help="judge the canary on TF Serving's metrics for S seconds before the other hosts switch "
                        "(default MLOPS_BAKE_SECONDS or 0: no bake)")
    p.add_argument("--bake-each-wave", action="store_true", help="bake after every wave, not only the canary")
    p.add_argument("--on-low-traffic", choices=("pass", "fail"), metavar="pass|fail",
                   help="verdict when the canary served fewer than --min-requests (default "
                        "MLOPS_BAKE_ON_LOW_TRAFFIC or pass)")
    p.add_argument("--max-error-rate", type=flags.fraction, metavar="F",
                   help="breach when the canary's error rate is more than F above the old version's "
                        "(default MLOPS_BAKE_MAX_ERROR_RATE or 0.01)")
    p.add_argument("--max-latency-ratio", type=flags.number, metavar="R",
                   help="breach when the canary's p95 or p99 is more than R times the old version's "
                        "(default MLOPS_BAKE_MAX_LATENCY_RATIO or 1.5)")
    p.add_argument("--min-requests", type=flags.positive_int, metavar="N",
                   help="fewer requests on the canary: 'not enough traffic' (default MLOPS_BAKE_MIN_REQUESTS or 20)")
    p.add_argument("--fast", action="store_true",
                   help="skip unloading the validation copy before the main load (one reload cycle faster; "
                        "the host holds two copies of the new version for a moment)")


def _rollout_setting(args, name: str):
    """A rollout setting: the flag, else its environment variable, else the default."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    var, convert, default = _BAKE_ENV[name]
    raw = settings.env(var)
    if raw is None:
        return default
    try:
        value = convert(raw)
    except Exception as exc:  # noqa: BLE001 - argparse.ArgumentTypeError / ValueError: one line
        raise ConfigError(f"{var}={raw!r}: {exc}") from None
    if name == "on_low_traffic" and value not in ("pass", "fail"):
        raise ConfigError(f"{var}={raw!r}: must be pass or fail")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "sync", help="deploy production to the TF Serving hosts, smoke-test, roll back",
        description="Reconcile TensorFlow Serving hosts with the registry: publish the version that "
                    "holds `production` atomically, load it beside the serving one, smoke-test it "
                    "(signature, golden outputs, latency), switch the `stable` label and "
                    "unversioned traffic, and put everything back if any step fails.",
        epilog=_ENV)
    s = p.add_subparsers(dest="sync_command", metavar="COMMAND")
    s.required = True

    d = s.add_parser(
        "deploy", help="make every host serve production (or --version N)",
        description="After taking every host's lock, in two phases. Prepare, every host in parallel "
                    "(--parallel): publish <base>/<model>/<version>/ (atomic, verified), load it under "
                    "the validation entry <model>__validate while `stable` and unversioned traffic stay "
                    "on the serving version, smoke-test it on that host. Switch, once every host is "
                    "prepared: a canary first (--canary), judged for --bake seconds on TF Serving's own "
                    "metrics, then the other hosts in waves (--wave): unload the validation copy, load "
                    "the version in the main entry, switch `stable`, check again through the label. If "
                    "any host fails or the canary breaches a limit, every touched host is put back, "
                    "`production` moves back, the version is tagged deploy_status=failed and the command "
                    "exits 3 with one line saying why. Deploying what already serves changes nothing "
                    "(\"up to date\"). Retention keeps the last --keep versions.",
        epilog=_ENV)
    d.add_argument("--version", type=flags.version_number, metavar="N",
                   help="deploy this version instead of production (production is not moved on failure)")
    d.add_argument("--reason", help="why (recorded in the ledger)")
    _deploy_flags(d)
    _common(d)
    d.set_defaults(func=cmd_deploy)

    pl = s.add_parser("plan", help="show what deploy would do on each host, changing nothing",
                      description="Observe every host (models.config, TF Serving's version states and "
                                  "labels, published and verified versions) and print the steps a "
                                  "deploy would run. No lock is taken and nothing is written. Exits 1 "
                                  "when a host cannot be observed.", epilog=_ENV)
    pl.add_argument("--version", type=flags.version_number, metavar="N", help="plan this version instead of production")
    pl.add_argument("--keep", type=flags.positive_int, default=_DEPLOY.keep, metavar="N",
                    help="retention (default %(default)s)")
    pl.add_argument("--no-keep-previous", action="store_true", help="plan without keeping the previous version")
    _rollout_flags(pl)
    _common(pl)
    pl.set_defaults(func=cmd_plan)

    st = s.add_parser("status", help="registry vs. what each host serves (drift)",
                      description="Per host: the registry's production version, what TF Serving reports "
                                  "for each version and for the `stable` label, what models.config asks "
                                  "for, and whether they agree. Exits 1 on drift or an unreachable host.",
                      epilog=_ENV)
    _common(st)
    st.set_defaults(func=cmd_status)

    sm = s.add_parser("smoke", help="smoke-test each host's stable route (changes nothing)",
                      description="Send the production version's golden request to each host through "
                                  "its `stable` label (--via stable) or its version route (--via version) "
                                  "and check the label, the signature, the outputs and the p95 latency. "
                                  "Exits 2 when a check fails on any host. CircleCI's test-deployment job.",
                      epilog=_ENV)
    sm.add_argument("--via", choices=("stable", "version"), default="stable",
                    help="route to test (default stable: /v1/models/M/labels/stable)")
    sm.add_argument("--version", type=flags.version_number, metavar="N",
                    help="expect this version instead of production")
    sm.add_argument("--junit", metavar="FILE", help="also write the checks as JUnit XML")
    _smoke_flags(sm)
    _common(sm)
    sm.set_defaults(func=cmd_smoke)

    rb = s.add_parser("rollback", help="move production back and deploy it (one command on call)",
                      description="Registry rollback (production back to the previous version from the "
                                  "ledger, or --to N) followed by a deploy. When the previous version "
                                  "is still loaded (kept warm) and verified on a host, the switch is "
                                  "one config write and reload. Prints the time from the start of the "
                                  "command until the old outputs answer on the unversioned route.",
                      epilog=_ENV)
    rb.add_argument("--to", type=flags.version_number, metavar="N", help="roll back to this version")
    rb.add_argument("--reason", help="why (recorded; default 'rollback requested')")
    rb.add_argument("--actor", help="who is rolling back (outside CircleCI; default: the OS user)")
    _deploy_flags(rb)
    _common(rb)
    rb.set_defaults(func=cmd_rollback)

    w = s.add_parser("watch", help="reconcile loop + MLflow webhook receiver",
                     description="Every --interval seconds (and at once when a verified MLflow webhook "
                                 "model_version_alias.created for `production` arrives) observe the hosts "
                                 "and deploy when production moved or a host drifted. Bounded by "
                                 "--max-seconds or --once. The webhook receiver checks the "
                                 "X-MLflow-Signature HMAC with MLOPS_WEBHOOK_SECRET (environment only) "
                                 "and refuses timestamps more than 5 minutes off.", epilog=_ENV)
    w.add_argument("--interval", type=flags.seconds, default=30.0, metavar="S",
                   help="seconds between passes (default 30)")
    w.add_argument("--max-seconds", type=flags.seconds, metavar="S", help="stop after S seconds")
    w.add_argument("--once", action="store_true", help="one pass, then exit (exit 3 if its deploy failed)")
    w.add_argument("--webhook-port", type=int, metavar="PORT",
                   help="receive MLflow webhooks on this port (0: any free port; logged)")
    w.add_argument("--webhook-host", default="127.0.0.1", metavar="ADDR",
                   help="address to bind the receiver to (default 127.0.0.1)")
    _deploy_flags(w)
    _common(w)
    w.set_defaults(func=cmd_watch)

    iv = s.add_parser("infra-validate", help="load a candidate in a throw-away TF Serving and smoke-test it",
                      description="Before approval: publish version N into a temporary base, start a "
                                  "throw-away server (docker: the tensorflow/serving image pinned in "
                                  "serving_host/install_server.sh; local: the TF-Serving-compatible "
                                  "server; auto: docker when `docker info` works), wait until it loads, "
                                  "run the smoke test, stop the server and remove the base. Records tag "
                                  "infra_validation=passed|failed and a smoke_test ledger row; exits 2 "
                                  "on failure.", epilog=_ENV)
    iv.add_argument("--version", type=flags.version_number, required=True, metavar="N", help="version to validate")
    iv.add_argument("--server", choices=("auto", "docker", "local"), default="auto",
                    help="which TF Serving to use (default auto)")
    iv.add_argument("--junit", metavar="FILE", help="also write the checks as JUnit XML")
    iv.add_argument("--timeout", type=flags.seconds, default=_DEPLOY.timeout, metavar="S",
                    help="bound on loading (default %(default)g)")
    _smoke_flags(iv)
    _common(iv, hosts=False)
    iv.set_defaults(func=cmd_infra_validate)


# --- helpers ----------------------------------------------------------------------------------


def _smoke_options(args):
    from serving_sync.smoke import SmokeOptions

    return SmokeOptions(atol=args.atol, requests=args.latency_requests, budget_ms=args.latency_budget_ms)


def _deploy_options(args):
    from serving_sync.bake import Limits
    from serving_sync.options import DeployOptions

    limits = Limits(max_error_rate=_rollout_setting(args, "max_error_rate"),
                    max_latency_ratio=_rollout_setting(args, "max_latency_ratio"),
                    min_requests=_rollout_setting(args, "min_requests"),
                    on_low_traffic=_rollout_setting(args, "on_low_traffic"))
    from serving_sync.smoke import SmokeOptions

    return DeployOptions(timeout=getattr(args, "timeout", 120.0),
                         smoke=_smoke_options(args) if hasattr(args, "atol") else SmokeOptions(),
                         keep_previous=not args.no_keep_previous, keep=args.keep, json_mode=args.json,
                         fast=args.fast, parallel=args.parallel, canary=args.canary, wave=args.wave,
                         bake=_rollout_setting(args, "bake"), bake_each_wave=args.bake_each_wave, limits=limits)


def _hosts(args):
    from serving_sync.hosts import load_hosts

    return load_hosts(args.hosts)


def _print_deploy(result) -> None:
    print(result.message)
    for h in result.hosts:
        extra = []
        if h.publish:
            extra.append(f"{h.publish['status'].replace('_', ' ')}, {h.publish['bytes_transferred']} bytes")
        if h.switch_seconds is not None:
            extra.append(f"switch {h.switch_seconds * 1000:.0f} ms")
        if h.retention and (h.retention.get("remove_versions") or h.retention.get("remove_uploads")):
            extra.append(f"removed {h.retention.get('remove_versions')} {h.retention.get('remove_uploads')}")
        extra += [n for n in h.notes if n != "up to date"]
        print(f"  {h.host}: {h.status.replace('_', ' ')}" + (f" ({'; '.join(extra)})" if extra else ""))


@contextlib.contextmanager
def _interrupts(*first_actions):
    """SIGTERM / Ctrl-C never cut a deploy in half: the n-th signal runs ``first_actions[n]``; after
    them, a deploy in progress is asked to stop at its next safe point and put its hosts back
    (``serving_sync.cancel``); one more signal forces it (KeyboardInterrupt)."""
    from serving_sync import cancel

    cancel.reset()
    count = {"n": 0}

    def handler(signum, _frame):
        n, count["n"] = count["n"], count["n"] + 1
        name = signal.Signals(signum).name
        if n < len(first_actions):
            first_actions[n](name)
        elif n == len(first_actions):
            print(f"{name}: stopping the deploy at its next safe point and putting the hosts back "
                  f"(send it again to force)", file=sys.stderr, flush=True)
            cancel.request(name)
        else:
            raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:          # not the main thread (main() called from a thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _deploy_and_print(args, model, hosts, *, version=None, reason=None):
    from mlops_common.errors import DeployFailed
    from serving_sync import fleet

    try:
        result = fleet.deploy(model, hosts, version=version, opts=_deploy_options(args),
                              break_lock=args.break_lock, lock_wait=args.lock_wait, reason=reason)
    except DeployFailed as exc:
        if args.json and getattr(exc, "result", None) is not None:
            output.emit(exc.result.to_dict())
        raise
    return result


# --- commands ---------------------------------------------------------------------------------
def cmd_deploy(args) -> int:
    with _interrupts():
        return _deploy_command(args)


def _deploy_command(args) -> int:
    model = settings.model_name(args.model_name)
    result = _deploy_and_print(args, model, _hosts(args), version=args.version, reason=args.reason)
    if args.json:
        output.emit(result.to_dict())
    else:
        _print_deploy(result)
    return 0


def cmd_plan(args) -> int:
    from serving_sync.fleet import plan_fleet

    model = settings.model_name(args.model_name)
    fp = plan_fleet(model, _hosts(args), version=args.version, opts=_deploy_options(args))
    if args.json:
        output.emit(fp.to_dict())
    else:
        src = "production" if fp.source == "production" else "--version"
        print(f"plan for v{fp.version} of '{model}' ({src}):")
        for line in _rollout_lines(fp):
            print(f"  {line}")
        for p in fp.plans:
            now = f"serves v{p.current}" if p.current is not None else "serves nothing"
            peak = fp.peak.get(p.host) or {}
            mem = (f"; peak model memory {_mb(peak['bytes'])} (1.2 x SavedModel size of "
                   f"{' + '.join(f'v{c}' for c in peak['copies'])})" if peak.get("bytes") is not None else
                   "; peak model memory unknown (a SavedModel size is not known)" if peak else "")
            print(f"  {p.host} ({now}): " + ("up to date, nothing to do" if p.up_to_date else
                                             f"{len(p.steps)} steps{mem}"))
            phase = None
            for i, step in enumerate(p.steps, 1):
                if step.kind.phase != phase:
                    phase = step.kind.phase
                    print(f"    {phase}:")
                print(f"    {i}. {step.text}")
            if not p.up_to_date and p.retention:
                print(f"    then retention removes {', '.join(f'v{v}' for v in p.retention)}")
            for n in p.notes:
                if n != "up to date":
                    print(f"    note: {n}")
        for name, err in fp.errors.items():
            print(f"  {name}: cannot observe: {err}")
    return 1 if fp.errors else 0


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def _rollout_lines(fp) -> list[str]:
    """The rollout's phases, canary, waves and bake, for people."""
    ro, bk = fp.rollout, fp.bake
    n = sum(len(w) for w in ro.get("waves", ()))
    if not n:
        return ["rollout: nothing changes"]
    lines = [f"phase 1, prepare: {n} host{'s' if n != 1 else ''}, {min(bk['parallel'], n)} at a time (publish, "
             f"validation entry, smoke test; nothing that serves changes)"]
    for i, wave in enumerate(ro["waves"]):
        if i == 0 and ro["canary"]:
            lim = bk["limits"]
            bake = (f"bake {bk['seconds']:g}s on TF Serving's metrics (error rate +{100 * lim['max_error_rate']:g}% "
                    f"max, p95/p99 x{lim['max_latency_ratio']:g} max, fewer than {lim['min_requests']} requests: "
                    f"{lim['on_low_traffic']})" if bk["seconds"] else "no bake (--bake 0)")
            lines.append(f"phase 2, switch: canary {', '.join(wave)}; {bake}")
        else:
            lines.append(f"phase 2, switch: wave {i if ro['canary'] else i + 1}: {', '.join(wave)}"
                         + (f"; bake {bk['seconds']:g}s" if bk["each_wave"] and bk["seconds"]
                            and i < len(ro["waves"]) - 1 else ""))
    lines.append("memory: " + ("--fast: the validation copy stays loaded until the switch (two copies of the "
                               "new version for a moment)" if bk["fast"] else
                               "the validation copy is unloaded before the main entry loads the version"))
    return lines


def cmd_status(args) -> int:
    from registry import versions
    from serving_sync.status import host_status

    model = settings.model_name(args.model_name)
    hosts = _hosts(args)
    production = versions.production_version(model)
    statuses = [host_status(h, model, production) for h in hosts]
    in_sync = all(s.in_sync for s in statuses)
    if args.json:
        output.emit({"model": model, "production": production, "in_sync": in_sync,
               "hosts": [s.to_dict() for s in statuses]})
    else:
        print(f"'{model}': production is {f'v{production}' if production is not None else '(none)'}")
        for s in statuses:
            if not s.reachable:
                print(f"  {s.name}: UNREACHABLE: {s.error}")
                continue
            states = ", ".join(f"v{v} {st}" for v, st in sorted(s.versions.items())) or "no versions"
            label = s.labels.get("stable")
            print(f"  {s.name}: stable -> {f'v{label}' if label is not None else 'nothing'}, unversioned -> "
                  f"{f'v{s.unversioned}' if s.unversioned is not None else 'nothing'} ({states}): "
                  + ("in sync" if s.in_sync else "DRIFT: " + "; ".join(s.drift)))
    return 0 if in_sync else 1


def cmd_smoke(args) -> int:
    from mlops_common import junit
    from registry import versions
    from serving_sync.errors import SmokeFailed
    from serving_sync.golden import fetch_golden
    from serving_sync.smoke_hosts import smoke_hosts

    model = settings.model_name(args.model_name)
    hosts = _hosts(args)
    version = args.version or versions.production_version(model)
    if version is None:
        raise ConfigError(f"no version of '{model}' holds production; pass --version N")
    reports = smoke_hosts(hosts, model, version, fetch_golden(model, version), via=args.via,
                          opts=_smoke_options(args))
    if args.junit:
        junit.write(args.junit, f"smoke.{model}.v{version}",
                    [junit.Case(f"{r.host}.{c.name}", c.passed, c.message, c.seconds)
                     for r in reports for c in r.checks])
    if args.json:
        output.emit({"model": model, "version": version, "via": args.via, "passed": all(r.passed for r in reports),
               "hosts": [r.to_dict() for r in reports]})
    else:
        for r in reports:
            print(f"{r.host}: {'passed' if r.passed else 'FAILED'} via {r.route}: "
                  + "; ".join(f"{c.name}: {c.message}" for c in r.checks))
    bad = [r for r in reports if not r.passed]
    if bad:
        raise SmokeFailed("smoke test failed on " + "; ".join(f"{r.host} ({r.summary()})" for r in bad))
    return 0


def cmd_rollback(args) -> int:
    start = time.monotonic()
    with _interrupts():
        return _rollback_command(args, start)


def _rollback_command(args, start: float) -> int:
    from registry import approver, deploys, promotion

    model = settings.model_name(args.model_name)
    hosts = _hosts(args)               # a typo in the hosts file fails before the registry moves
    actor = approver.resolve_actor(args.actor)
    # ledger row + alias move now (under the promotion lock); the version tags, a view of that row,
    # after the hosts switched: they are not on the path to the old outputs
    promo = promotion.rollback(model, to=args.to, reason=args.reason, actor=actor.name,
                               approved_by=actor.approved_by, defer_tags=True)
    print(f"production of '{model}': v{promo.from_version} -> v{promo.to_version} (rollback by {actor.name}, "
          f"ledger #{promo.ledger_id}); deploying", file=sys.stderr)
    try:
        result = _deploy_and_print(args, model, hosts, reason=promo.reason)
    except BaseException:
        with contextlib.suppress(Exception):   # the deploy's own error is the one to report
            promo.finish()
        raise
    promo.finish()
    if promo.from_version is not None and promo.from_version != promo.to_version:
        deploys.tag(model, promo.from_version, deploys.ROLLED_BACK, promo.reason or "rollback")
    answered = result.answered_after(start)
    switch = max((h.switch_seconds for h in result.hosts if h.switch_seconds is not None), default=None)
    if args.json:
        output.emit({"registry": promo.to_dict(), "deploy": result.to_dict(),
               "seconds_to_old_outputs": answered, "switch_seconds": switch,
               "seconds": round(time.monotonic() - start, 3)})
        return 0
    _print_deploy(result)
    if answered is not None:
        print(f"v{promo.to_version}'s outputs answered on the unversioned route {answered:.2f}s after the "
              f"command started" + (f" (host switch {switch * 1000:.0f} ms)" if switch is not None else ""))
    return 0


def _start_receiver(args, model: str, reconcile, watcher):
    """The webhook endpoint of ``sync watch``: a verified event wakes the loop at once."""
    from serving_sync.webhook import Receiver

    secret = settings.env("MLOPS_WEBHOOK_SECRET")
    if not secret:
        raise ConfigError("--webhook-port needs MLOPS_WEBHOOK_SECRET (the HMAC secret of the MLflow "
                          "webhook; environment only)")

    def on_event(event: dict) -> None:
        reconcile.production_moved(event)
        watcher.trigger("webhook")

    try:
        receiver = Receiver(secret, model, on_event, host=args.webhook_host, port=args.webhook_port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.webhook_host}:{args.webhook_port} ({exc.strerror}); "
                          f"choose another --webhook-port") from None
    print(f"listening for MLflow webhooks on {receiver.url}", file=sys.stderr, flush=True)
    return receiver


def cmd_watch(args) -> int:
    from serving_sync.watch import FleetReconciler, Watcher

    model = settings.model_name(args.model_name)
    reconcile = FleetReconciler(model, _hosts(args), _deploy_options(args), lock_wait=args.lock_wait,
                                break_lock=args.break_lock)
    watcher = Watcher(reconcile, interval=args.interval, max_seconds=args.max_seconds, once=args.once)
    receiver = _start_receiver(args, model, reconcile, watcher) if args.webhook_port is not None else None

    def graceful(name: str) -> None:   # first signal: finish the current pass, then stop
        print(f"{name}: stopping after the current pass (send it again to interrupt a deploy in progress)",
              file=sys.stderr, flush=True)
        watcher.stop_event.set()
        watcher.wake.set()

    try:
        with _interrupts(graceful):
            result = watcher.run()
    except KeyboardInterrupt:
        result = watcher.result
    finally:
        if receiver is not None:
            receiver.stop()
            watcher.result.webhook = {"url": receiver.url, **dict(receiver.counts)}
    return _report_watch(args, result)


def _report_watch(args, result) -> int:
    """Print the passes; with ``--once`` a failed or impossible pass is the command's error."""
    from mlops_common.errors import DeployFailed

    if args.json:
        output.emit(result.to_dict())
    else:
        for p in result.passes:
            print(f"{p.at:7.1f}s {p.trigger:8s} {p.status}: {p.message}")
    last = result.passes[-1] if result.passes else None
    if args.once and last is not None and last.status == "failed":
        raise DeployFailed(last.message)
    if args.once and last is not None and last.status == "error":
        raise ConfigError(last.message)
    return 0


def cmd_infra_validate(args) -> int:
    from mlops import local_services
    from mlops_common import junit
    from serving_sync import infra
    from serving_sync.errors import SmokeFailed

    model = settings.model_name(args.model_name)
    kind = infra.choose_server(args.server, local_services.docker_available)
    if kind == "docker" and args.server == "docker" and not local_services.docker_available():
        raise ConfigError("--server docker: no Docker engine answers here (`docker info` failed); use "
                          "--server local or auto")

    @contextlib.contextmanager
    def start_server(base):
        srv = local_services.start_throwaway_server(kind, base, timeout=args.timeout)
        try:
            yield infra.ThrowawayServer(srv.kind, srv.rest_url, srv.serving_base)
        finally:
            srv.stop()

    print(f"infra-validate v{args.version} of '{model}' in a throw-away {kind} TF Serving", file=sys.stderr)
    result = infra.validate(model, args.version, server=kind, start_server=start_server,
                            opts=_smoke_options(args), timeout=args.timeout)
    infra.record(result)
    if args.junit:
        junit.write(args.junit, f"infra-validate.{model}.v{args.version}",
                    [junit.Case(c.name, c.passed, c.message, c.seconds) for c in result.checks])
    if args.json:
        output.emit(result.to_dict())
    else:
        for c in result.checks:
            print(f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.message}")
        print(f"infra validation of v{args.version} {'passed' if result.passed else 'FAILED'} "
              f"({kind}, {result.seconds:.1f}s)")
    if not result.passed:
        raise SmokeFailed(f"infra validation of v{args.version} of '{model}' failed in {kind} TF Serving: "
                          f"{result.error}")
    return 0
