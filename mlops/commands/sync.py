"""`mlops sync ...`: make the serving hosts serve `production`, prove it, put things back if not.

deploy | plan | status | smoke | rollback | watch | infra-validate. The work lives in
``serving_sync`` (plan, deploy, fleet, status, smoke_hosts, rollback, watch, webhook, infra); this
module only parses flags, makes one call per command and prints its result (``--json``: exactly
one JSON document on stdout; otherwise ``sync_text``; progress on stderr). Heavy imports stay
inside the command functions: ``rollback``, ``status`` and ``smoke`` never import TensorFlow, and
MLflow only when they touch the registry.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import sys
import threading
import time

from mlops.commands import flags, output, sync_text
from mlops_common import settings, stop
from mlops_common.errors import ConfigError, RefusedError, UserError
from serving_sync.bake import Limits
from serving_sync.options import DeployOptions
from serving_sync.smoke import SmokeOptions

# Flag defaults are the packages' own defaults (--help shows them), never a second copy.
_DEPLOY, _SMOKE, _LIMITS = DeployOptions(), SmokeOptions(), Limits()

_REGISTRY_ENV = "Registry: MLFLOW_TRACKING_URI, MLOPS_MODEL_NAME, MLOPS_LEDGER_URL."
_ENV = ("Hosts: --hosts FILE, else MLOPS_SYNC_TARGET + MLOPS_SYNC_REST_URL (one host), else "
        "MLOPS_HOSTS_FILE or $MLOPS_HOME/hosts.toml (see docs/architecture.md). " + _REGISTRY_ENV)


def _common(p, *, hosts: bool = True) -> None:
    flags.add_model_name(p)
    if hosts:
        p.add_argument("--hosts", type=flags.hosts_file, metavar="FILE",
                       help="hosts file (TOML, [[hosts]] tables); see below")
    flags.add_json(p)


def _smoke_flags(p) -> None:
    p.add_argument("--atol", type=flags.number, default=_SMOKE.atol, metavar="A",
                   help="allowed absolute difference from the golden outputs (default %(default)g)")
    p.add_argument("--latency-requests", type=flags.positive_int, default=_SMOKE.requests, metavar="N",
                   help="requests for the latency check, 20 to 1000 (default %(default)s; the p95 of fewer "
                        "is their slowest one)")
    p.add_argument("--latency-budget-ms", type=flags.number, default=_SMOKE.budget_ms, metavar="MS",
                   help="p95 latency budget in milliseconds (default %(default)g)")


def _deploy_flags(p, *, watch: bool = False) -> None:
    p.add_argument("--timeout", type=flags.timeout, default=_DEPLOY.timeout, metavar="S",
                   help="bound on every wait (loading, label switch, unloading; default %(default)g)")
    p.add_argument("--break-lock", metavar="TOKEN", default=None,
                   help="take over the host lock (or the shared store's) with this token (shown "
                        "in the error) even though it is not stale"
                        + (" (the first pass only, whatever it did)" if watch else "")
                        + "; a lock silent for MLOPS_LOCK_TTL (default 10 min) or whose "
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
             "max_latency_ratio": ("MLOPS_BAKE_MAX_LATENCY_RATIO", flags.ratio, _LIMITS.max_latency_ratio),
             "min_requests": ("MLOPS_BAKE_MIN_REQUESTS", flags.positive_int, _LIMITS.min_requests),
             "min_traffic_ratio": ("MLOPS_BAKE_MIN_TRAFFIC_RATIO", flags.fraction, _LIMITS.min_traffic_ratio),
             "on_low_traffic": ("MLOPS_BAKE_ON_LOW_TRAFFIC", str, _LIMITS.on_low_traffic)}


def _rollout_flags(p) -> None:
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
                   help="verdict when the canary served fewer than --min-requests, unless its errors are "
                        "beyond chance (then rolled back) (default MLOPS_BAKE_ON_LOW_TRAFFIC or pass)")
    p.add_argument("--max-error-rate", type=flags.fraction, metavar="F",
                   help="breach when the canary's error rate is more than F above the old version's, "
                        "beyond chance (default MLOPS_BAKE_MAX_ERROR_RATE or 0.01)")
    p.add_argument("--max-latency-ratio", type=flags.ratio, metavar="R",
                   help="breach when the canary's mean, p95 or p99 is more than R times the old version's "
                        "beyond chance (a p95 from 20 requests a side, a p99 from 100; default "
                        "MLOPS_BAKE_MAX_LATENCY_RATIO or 1.5)")
    p.add_argument("--min-requests", type=flags.positive_int, metavar="N",
                   help="fewer requests on the canary: 'not enough traffic' (default MLOPS_BAKE_MIN_REQUESTS or 20)")
    p.add_argument("--min-traffic-ratio", type=flags.fraction, metavar="F",
                   help="breach when the canary answers fewer than F times the requests it answered before its "
                        "switch and the old hosts answer per host, in the same time (a hung or crawling "
                        "version; default MLOPS_BAKE_MIN_TRAFFIC_RATIO or 0.25; 0: off)")
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
                    "(\"up to date\"). After a rollback to a version that held production before, "
                    "the deploy restores it: every host at once, no bake (unless --canary, --wave or "
                    "--bake are given). Retention keeps the last --keep versions.",
        epilog=_ENV)
    d.add_argument("--version", type=flags.version_number, metavar="N",
                   help="deploy this version instead of production (production is not moved on failure); "
                        "one that did not pass the gate needs --force --reason")
    d.add_argument("--reason", type=flags.reason, help="why (recorded in the ledger)")
    d.add_argument("--force", action="store_true",
                   help="with --version: serve a version that did not pass the gate (needs --reason)")
    d.add_argument("--expect-version", type=flags.version_number, metavar="N",
                   help="refuse unless production is vN, read before and under the hosts' locks (a CI job "
                        "deploys the version it promoted, not one production moved to since)")
    _deploy_flags(d)
    _common(d)
    d.set_defaults(func=cmd_deploy)

    pl = s.add_parser("plan", help="show what deploy would do on each host, changing nothing",
                      description="Observe every host (models.config, TF Serving's version states and "
                                  "labels, published and verified versions) and print the steps a "
                                  "deploy would run. No lock is taken and nothing is written. Exits 1 "
                                  "when a host cannot be observed, 2 when the deploy would be refused "
                                  "before any host changes (the reason leads the text; deploy_refused in "
                                  "--json), 0 otherwise.", epilog=_ENV)
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
                                  "and check the label (--via version: that the version is loaded), the signature, "
                                  "the outputs and the p95 latency. "
                                  "Exits 2 when a check fails on any host. CircleCI runs it after each deploy.",
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
                                  "one config write and reload. A version that served production before "
                                  "(the usual case; not a --to of one that never did) is restored on every "
                                  "host at once without a bake, whatever MLOPS_BAKE_SECONDS says; --canary, "
                                  "--wave or --bake stage it like a deploy. "
                                  "Prints the time from the start of the command until the old outputs "
                                  "answer on the unversioned route.",
                      epilog=_ENV)
    flags.add_rollback(rb)
    _deploy_flags(rb)
    _common(rb)
    rb.set_defaults(func=cmd_rollback)

    w = s.add_parser("watch", help="reconcile loop + MLflow webhook receiver",
                     description="Every --interval seconds (and at once when a verified MLflow webhook "
                                 "model_version_alias.created for `production` arrives) observe the hosts "
                                 "and deploy when production moved or a host drifted. Bounded by "
                                 "--max-seconds or --once. The webhook receiver checks the "
                                 "X-MLflow-Signature HMAC with the secret in MLOPS_WEBHOOK_SECRET (or --secret-env; "
                                 "environment only) "
                                 "and refuses timestamps more than 5 minutes off. The hosts file is read "
                                 "again at each pass when it changed (an unusable one keeps the hosts read "
                                 "before). Ctrl-C, SIGTERM or SIGHUP (systemctl stop, a dropped SSH session): the "
                                 "pass under way finishes its deploy but begins none, stops waiting for a "
                                 "lock, and stops at once while it only reads (MLflow, the hosts), then the "
                                 "watch ends, exit status 0; a second signal (or the first "
                                 "under --once, or --stop-within S seconds after the first) stops the deploy "
                                 "and puts the hosts back, exit 130.",
                     epilog=_ENV)
    w.add_argument("--interval", type=flags.interval, default=30.0, metavar="S",
                   help="seconds between passes (default 30; after failed passes in a row the wait "
                        "doubles, up to 300 or S)")
    w.add_argument("--max-seconds", type=flags.seconds, metavar="S", help="stop after S seconds")
    w.add_argument("--once", action="store_true", help="one pass, then exit (exit 3 if its deploy failed)")
    w.add_argument("--stop-within", type=flags.timeout, metavar="S",
                   help="a deploy still under way S seconds after the first signal is stopped at its next "
                        "safe point and its hosts put back (exit 130), as a second signal does: under "
                        "systemd, below TimeoutStopSec by the time a put-back takes, or SIGKILL may cut "
                        "the deploy mid-rollout (default: the deploy finishes, however long it takes)")
    w.add_argument("--webhook-port", type=flags.port, metavar="PORT",
                   help="receive MLflow webhooks on this port (0: any free port; logged)")
    w.add_argument("--webhook-host", type=flags.bind_address, metavar="ADDR",
                   help="address to bind the receiver to (default 127.0.0.1)")
    w.add_argument("--secret-env", type=flags.secret_env, metavar="VAR",
                   help="the environment variable holding the webhook's HMAC secret, as given to "
                        "`registry webhook create --secret-env` (default MLOPS_WEBHOOK_SECRET)")
    _deploy_flags(w, watch=True)
    _common(w)
    w.set_defaults(func=cmd_watch)

    iv = s.add_parser("infra-validate", help="load a candidate in a throw-away TF Serving and smoke-test it",
                      description="Before approval: publish version N into a temporary base, start a "
                                  "throw-away server (docker: the tensorflow/serving image pinned in "
                                  "serving_host/install_server.sh; local: the TF-Serving-compatible "
                                  "server; auto: docker when `docker info` works), wait until it loads, "
                                  "run the smoke test, stop the server and remove the base. Records tag "
                                  "infra_validation=passed|failed and a smoke_test ledger row; exits 2 "
                                  "on failure.", epilog=_REGISTRY_ENV)   # no hosts: its own server
    iv.add_argument("--version", type=flags.version_number, required=True, metavar="N", help="version to validate")
    iv.add_argument("--server", choices=("auto", "docker", "local"), default="auto",
                    help="which TF Serving to use (default auto)")
    iv.add_argument("--junit", metavar="FILE", help="also write the checks as JUnit XML")
    iv.add_argument("--timeout", type=flags.timeout, default=_DEPLOY.timeout, metavar="S",
                    help="bound on loading (default %(default)g)")
    _smoke_flags(iv)
    _common(iv, hosts=False)
    iv.set_defaults(func=cmd_infra_validate)


# --- helpers ----------------------------------------------------------------------------------


def _smoke_options(args):
    return SmokeOptions(atol=args.atol, requests=args.latency_requests, budget_ms=args.latency_budget_ms)


def _deploy_options(args):
    limits = Limits(max_error_rate=_rollout_setting(args, "max_error_rate"),
                    max_latency_ratio=_rollout_setting(args, "max_latency_ratio"),
                    min_requests=_rollout_setting(args, "min_requests"),
                    min_traffic_ratio=_rollout_setting(args, "min_traffic_ratio"),
                    on_low_traffic=_rollout_setting(args, "on_low_traffic"))
    return DeployOptions(timeout=getattr(args, "timeout", _DEPLOY.timeout),
                         smoke=_smoke_options(args) if hasattr(args, "atol") else SmokeOptions(),
                         keep_previous=not args.no_keep_previous, keep=args.keep, json_mode=args.json,
                         fast=args.fast, parallel=args.parallel, canary=args.canary, wave=args.wave,
                         bake=_rollout_setting(args, "bake"), bake_each_wave=args.bake_each_wave, limits=limits,
                         staged_restore=any(getattr(args, k, None) is not None for k in ("canary", "wave", "bake")),
                         fleet=_other_fleet(args))


def _other_fleet(args) -> str | None:
    """The ``--hosts`` file when it is another than the configured fleet's (``MLOPS_HOSTS_FILE``,
    ``MLOPS_SYNC_TARGET`` or ``$MLOPS_HOME/hosts.toml``, what CircleCI's jobs and ``sync watch``
    read), as an absolute path; None otherwise, and when no fleet is configured (no such variable,
    no such file): then the ``--hosts`` file is the fleet."""
    import os
    from pathlib import Path

    from serving_sync.hosts import hosts_file_path

    given = getattr(args, "hosts", None)
    if not given:
        return None
    configured = hosts_file_path(None)
    if configured is not None and not os.environ.get("MLOPS_HOSTS_FILE") and not configured.exists():
        return None
    mine = Path(given).expanduser().resolve()
    return None if configured is not None and Path(configured).expanduser().resolve() == mine else str(mine)


def _hosts(args):
    from serving_sync.hosts import load_hosts

    return load_hosts(args.hosts)


def _interrupts(*first_actions, at_once=lambda: False, announce=None):
    """SIGTERM / Ctrl-C never cut a deploy in half (``mlops_common.stop.at_safe_points``, asked by
    every command's handler): the n-th signal runs ``first_actions[n]``; after them, a deploy in
    progress is asked to stop at its next safe point and put its hosts back (``serving_sync.cancel``);
    one more signal forces it (KeyboardInterrupt). While ``at_once()`` (nothing a safe point would
    put back has begun: ``sync rollback`` before the registry moved) a signal stops the command
    where it is (KeyboardInterrupt; the deploy asked to stop as well, should a finalizer swallow it).
    ``announce``: the line of that step, when it is not "stopping the deploy ..." (``sync watch``:
    no deploy may be under way)."""
    def put_back(name: str) -> None:
        stop.tell(f"{name}: stopping the deploy at its next safe point and putting the hosts back "
                  f"(send it again to force)")

    return stop.at_safe_points(*first_actions, announce=announce or put_back, at_once=at_once)


@contextlib.contextmanager
def _json_on_failure(args):
    """With ``--json``, a failed or interrupted deploy still prints its result (then the error
    goes its way): an interrupt (exit 130) printed nothing, though the hosts were put back. A
    forced interrupt (a second signal, KeyboardInterrupt) prints it too, and so does a rollout
    overtaken after its last wave (``ProductionMoved.deployed``: exit 2, the hosts stay on it). A
    ``sync rollback`` that failed once the registry moved prints its own document (``.rollback``:
    the move, the deploy, ``error``), the shape of its success's."""
    try:
        yield
    except (UserError, KeyboardInterrupt) as exc:
        result = getattr(exc, "rollback", None) or getattr(exc, "result", None) or getattr(exc, "deployed", None)
        if args.json and result is not None:
            output.emit(result.to_dict())
        raise


def _write_junit(path: str | None, suite: str, checks) -> None:
    """``--junit FILE``: ``checks`` ((case name, smoke Check) pairs) as JUnit XML; nothing without it."""
    if path:
        from mlops_common import junit

        junit.write(path, suite, [junit.Case(name, c.passed, c.message, c.seconds) for name, c in checks])


# --- commands ---------------------------------------------------------------------------------
def cmd_deploy(args) -> int:
    with _interrupts():
        return _deploy_command(args)


def _deploy_command(args) -> int:
    from serving_sync import fleet

    model = settings.model_name(args.model_name)
    hosts = _hosts(args)
    if args.version is not None:
        _check_gate_passed(model, args.version, force=args.force, reason=args.reason)
    elif args.force:
        raise ConfigError("--force applies to --version N (a version that did not pass the gate); production "
                          "was approved when it was promoted")
    with _json_on_failure(args):
        result = fleet.deploy(model, hosts, version=args.version, opts=_deploy_options(args),
                              break_lock=args.break_lock, lock_wait=args.lock_wait, reason=args.reason,
                              expect=args.expect_version)
    if args.json:
        output.emit(result.to_dict())
    else:
        sync_text.deploy(result)
    return 0


def _check_gate_passed(model: str, version: int, *, force: bool, reason: str | None) -> None:
    """``--version N`` puts N on the hosts' stable label without the gate or an approval: the same
    rules as a promotion (passed, against today's production, or --force with a reason);
    production itself was checked when it was promoted."""
    from registry.promotion import check_deployable

    check_deployable(model, version, force=force, reason=reason)


def cmd_plan(args) -> int:
    from serving_sync.fleet_plan import plan_fleet

    model = settings.model_name(args.model_name)
    fp = plan_fleet(model, _hosts(args), version=args.version, opts=_deploy_options(args))
    refused = None
    if args.version is not None:      # what `sync deploy --version N` would say first (found by a sweep)
        try:
            _check_gate_passed(model, args.version, force=False, reason=None)
        except RefusedError as exc:
            refused = exc.message
    if args.json:
        output.emit({**fp.to_dict(), "deploy_refused": refused or fp.deploy_refused})
    else:
        sync_text.plan(model, fp, gate=refused)     # what the deploy refuses first leads, alone
    # the exit says whether the deploy would go through, so `mlops sync plan && mlops sync deploy`
    # and a CI step stop where the deploy would refuse (it exits 2 before any host changes)
    return 1 if fp.errors else 2 if refused or fp.deploy_refused else 0


def cmd_status(args) -> int:
    from serving_sync.status import fleet_status

    fs = fleet_status(settings.model_name(args.model_name), _hosts(args))
    if args.json:
        output.emit(fs.to_dict())
    else:
        sync_text.status(fs)
    return 0 if fs.in_sync else 1


def cmd_smoke(args) -> int:
    from mlops_common import junit
    from serving_sync.smoke_hosts import smoke_fleet

    model = settings.model_name(args.model_name)
    junit.check_path(args.junit)
    sm = smoke_fleet(model, _hosts(args), version=args.version, via=args.via, opts=_smoke_options(args))
    _write_junit(args.junit, f"smoke.{model}.v{sm.version}",
                 [(f"{r.host}.{c.name}", c) for r in sm.reports for c in r.checks])
    if args.json:
        output.emit(sm.to_dict())
    else:
        sync_text.smoke(sm.reports)
    sm.raise_if_failed()
    return 0


def cmd_rollback(args) -> int:
    start = time.monotonic()
    # until the registry moved, a signal stops the rollback at once: the first one only asked the
    # deploy to stop, so a rollback waiting for the promotion lock moved production afterwards
    moved = threading.Event()
    with _interrupts(at_once=lambda: not moved.is_set()):
        return _rollback_command(args, start, moved)


def _rollback_command(args, start: float, moved: threading.Event) -> int:
    from registry import approver, versions
    from serving_sync.rollback import check_rollout, rollback_and_deploy

    model = settings.model_name(args.model_name)
    hosts = _hosts(args)               # a typo in the hosts file fails before the registry moves
    opts = _deploy_options(args)       # so does a bad MLOPS_BAKE_* setting
    seen = versions.production_version(model)   # what this command rolls back from (a compare-and-set)
    check_rollout(model, hosts, to=args.to, opts=opts)   # and a --canary the hosts that change cannot take
    by = approver.provenance(args.actor)
    with _json_on_failure(args):
        rb = rollback_and_deploy(model, hosts, provenance=by, to=args.to, reason=args.reason, force=args.force,
                                 opts=opts, read_from=seen,
                                 break_lock=args.break_lock, lock_wait=args.lock_wait, started=start,
                                 on_moved=functools.partial(_moved, moved, model, by.actor))
    if args.json:
        output.emit(rb.to_dict())
    else:
        sync_text.rollback(rb)
    return 0


def _moved(moved: threading.Event, model: str, actor: str, promo) -> None:
    """The registry moved back: from now on a signal stops the deploy at a safe point."""
    moved.set()
    sync_text.rollback_moved(model, actor, promo)


def _start_receiver(args, model: str, reconcile, watcher):
    """The webhook endpoint of ``sync watch``: a verified event wakes the loop at once."""
    from serving_sync.webhook import Receiver

    name = args.secret_env or "MLOPS_WEBHOOK_SECRET"
    host = args.webhook_host or "127.0.0.1"
    secret = settings.named_secret(name)
    if not secret:
        raise ConfigError(f"--webhook-port needs {name} (the HMAC secret of the MLflow webhook, the "
                          f"variable `registry webhook create --secret-env` named; environment only)")

    def on_event(event: dict) -> None:
        reconcile.production_moved(event)
        watcher.trigger("webhook")

    try:
        receiver = Receiver(secret, model, on_event, host=host, port=args.webhook_port,
                            secret_env=name).start()
    except OSError as exc:           # a port in use, or a host name that does not resolve to this machine
        busy = exc.errno in (errno.EADDRINUSE, errno.EACCES)
        raise ConfigError(f"cannot listen on {host}:{args.webhook_port} "
                          f"({exc.strerror or exc}); choose another "
                          f"{'--webhook-port' if busy else '--webhook-host (an address of this machine)'}") from None
    print(f"listening for MLflow webhooks on {receiver.url}", file=sys.stderr, flush=True)
    return receiver


def cmd_watch(args) -> int:
    from serving_sync.hosts import hosts_file_path
    from serving_sync.watch import FleetReconciler, WatchedHosts, Watcher

    model = settings.model_name(args.model_name)
    if args.webhook_port is None and (given := [f for f, v in (("--webhook-host", args.webhook_host),
                                                               ("--secret-env", args.secret_env)) if v]):
        raise ConfigError(f"{' and '.join(given)} only apply to the webhook receiver: add --webhook-port PORT "
                          f"(without it the watch only polls)")
    if args.once and args.stop_within is not None:
        raise ConfigError("--stop-within applies to a watch's first signal; under --once the first signal "
                          "already stops the deploy and puts the hosts back")
    if args.once and args.max_seconds is not None:
        raise ConfigError("--once and --max-seconds are alternatives: --once runs one pass, --max-seconds "
                          "runs passes until then")
    hosts, opts = _hosts(args), _deploy_options(args)

    def check(hosts) -> None:
        from serving_sync.store import check_settings

        check_settings(hosts)      # a bad MLOPS_LOCK_TTL or MLOPS_STORE_URL_EXPIRY: refused now, not at a later pass
        if opts.canary and len(hosts) >= 2 and opts.canary >= len(hosts):
            raise ConfigError(f"--canary {opts.canary} leaves no host to compare it with: the hosts file names "
                              f"{len(hosts)} hosts; use at most {len(hosts) - 1}")

    # checked now, not at the first pass that deploys (maybe days later, with the watch long trusted)
    check(hosts)
    # the hosts file is read again at each pass when it changed (a host added, removed)
    read_hosts = WatchedHosts(hosts, hosts_file_path(args.hosts), functools.partial(_hosts, args), check)
    reconcile = FleetReconciler(model, hosts, opts, lock_wait=args.lock_wait, break_lock=args.break_lock,
                                read_hosts=read_hosts)
    watcher = Watcher(reconcile, interval=args.interval, max_seconds=args.max_seconds, once=args.once)
    reconcile.stopping = watcher.stop_event.is_set   # asked to stop: a pass starts no deploy, waits for no lock
    receiver = _start_receiver(args, model, reconcile, watcher) if args.webhook_port is not None else None

    signalled, ended = stop.Wake(), stop.Wake()
    if args.stop_within is not None:    # started now: a signal handler must not start a thread (its locks)
        threading.Thread(target=_stop_within, args=(args.stop_within, signalled, ended,
                                                    lambda: reconcile.phase == "deploying"),
                         daemon=True, name="stop-within").start()

    def graceful(name: str) -> None:   # first signal: finish the current pass's deploy (if any), then stop
        watcher.stop_event.set()        # first: a print that fails (stderr on a full disk) cannot lose the stop
        watcher.wake.set()
        signalled.set()                 # --stop-within counts from here
        stop.tell(f"{name}: {_watch_stopping(reconcile.phase, args.stop_within)}")
        reconcile.stop_reading()        # a pass that only reads (an MLflow that does not answer) stops now

    def again(name: str) -> None:       # a second signal (or --stop-within's time): said as it is
        if reconcile.phase == "deploying":
            stop.tell(f"{name}: stopping the deploy at its next safe point and putting the hosts back "
                      f"(send it again to force)")
        else:
            stop.tell(f"{name}: no deploy is under way, nothing to put back; the watch stops after the "
                      f"{'ledger write' if reconcile.phase == 'recording' else 'pass'} under way (send it "
                      f"again to force)")

    forced = False
    # --once has no next pass to stop after: its first signal stops the deploy, or the pass where it
    # is while it only reads (an MLflow that does not answer held it for the request's timeout)
    try:
        with (_interrupts(at_once=lambda: reconcile.phase == "reading") if args.once
              else _interrupts(graceful, announce=again)):
            result = watcher.run()
    except KeyboardInterrupt:
        result, forced = watcher.result, True
    finally:
        ended.set()                     # --stop-within: the watch ended, nothing left to stop
        signalled.set()
        if receiver is not None:
            receiver.stop()
            watcher.result.webhook = {"url": receiver.url, **dict(receiver.counts)}
    return _report_watch(args, result, forced=forced)


def _stop_within(seconds: float, signalled, ended, deploying=lambda: True) -> None:
    """``sync watch --stop-within S``: S seconds after the first signal, unless the watch ended
    meanwhile, what a second signal does (``stop.signalled``): the deploy under way stops at its next
    safe point and puts its hosts back. systemd's SIGKILL after ``TimeoutStopSec`` cut a longer one
    mid-rollout (a canary switched, a bake unjudged), and systemd sends no second SIGTERM. Nothing
    when no deploy is under way then (``deploying``): none can begin after the first signal."""
    signalled.wait()            # the first signal, or the watch's end (which sets both)
    if not ended.is_set() and not ended.wait(seconds) and deploying():
        stop.signalled(f"--stop-within {seconds:g}")


def _watch_stopping(phase: str | None, within: float | None) -> str:
    """What ``sync watch``'s first signal does, by what its pass does (``FleetReconciler.phase``):
    the line promised a put-back at ``--stop-within`` whether or not a deploy was under way."""
    if phase is None:
        return "stopping: no pass is under way"
    if phase == "reading":
        return "stopping now: the pass under way had not begun a deploy (nothing is changed)"
    if phase == "recording":
        return "stopping after the pass under way writes its ledger row; no deploy is begun"
    put_back = (f"; one still under way in {within:g}s is stopped and its hosts put back" if within is not None
                else "")
    return (f"stopping after the deploy under way (one waiting for another deploy's lock stops waiting, "
            f"nothing changed){put_back} (send it again to stop the deploy now and put its hosts back)")


def _report_watch(args, result, *, forced: bool = False) -> int:
    """Print the passes; a deploy cut by a signal is the command's error (exit 130), and with
    ``--once`` a failed or impossible pass is (exit 3, or the error's own code)."""
    from mlops_common.errors import DeployFailed, UserError
    from serving_sync.watch import INTERRUPTED

    if args.json:
        output.emit(result.to_dict())
    else:
        sync_text.watch(result)
    last = result.passes[-1] if result.passes else None
    if last is not None and last.status == "interrupted":
        raise UserError(last.message, exit_code=INTERRUPTED)
    if forced:
        return INTERRUPTED
    if args.once and last is not None and last.status == "stopped":     # its signal cut the one pass
        raise UserError(last.message, exit_code=INTERRUPTED)
    if args.once and last is not None and last.status == "failed":
        raise DeployFailed(last.message)
    if args.once and last is not None and last.status == "error":
        raise UserError(last.message, exit_code=last.exit_code or ConfigError.exit_code)
    return 0


def cmd_infra_validate(args) -> int:
    from mlops import throwaway_server
    from mlops_common import junit
    from serving_sync import infra

    model = settings.model_name(args.model_name)
    junit.check_path(args.junit)          # before the result is recorded in the ledger and on the version
    opts = _smoke_options(args)           # a bad smoke flag: its line alone, before any server starts
    kind = infra.choose_server(args.server, throwaway_server.docker_available)
    sync_text.infra_validate_started(model, args.version, kind)
    result = infra.validate_and_record(model, args.version, server=kind, opts=opts,
                                       start_server=throwaway_server.throwaway_starter(kind, timeout=args.timeout),
                                       timeout=args.timeout)
    _write_junit(args.junit, f"infra-validate.{model}.v{args.version}", [(c.name, c) for c in result.checks])
    if args.json:
        output.emit(result.to_dict())
    else:
        sync_text.infra_validate(result)
    result.raise_if_failed()
    return 0
