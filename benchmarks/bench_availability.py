"""(c) Availability under load: no failed request through a deploy, a failed deploy with its
automatic rollback, and a rollback, compared with the idle phase (the baseline).

    python -m benchmarks.bench_availability [--quick] [--phase-seconds 10] [--clients 8]

A bounded load generator — ``--clients`` concurrent clients (default 8), each sending predict
requests back to back, alternately to the unversioned route and through the ``stable`` label,
at most ``--max-requests`` per client per phase — runs against one serving host (``file://``,
the local TF-Serving-compatible server, loopback only) through four phases, each at least
``--phase-seconds`` long and as long as its action takes (bounded by ``--action-timeout``):

1. idle: v1 serves, nothing happens (the baseline for latency);
2. deploy: ``mlops sync deploy`` of v2 (v1 kept warm);
3. failed deploy: v3, whose golden outputs do not match what its SavedModel answers, is
   promoted and deployed: the smoke test fails, the host is put back to v2 and ``production``
   moves back (exit 3);
4. rollback: ``mlops sync rollback`` to v1.

Reports requests, non-200 responses (connection errors count as failures; target 0 in every
phase) and p50/p99 latency per phase. Writes ``benchmarks/results/availability.json``.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

from benchmarks import _setup
from benchmarks._traffic import LoadGen, phase_stats
from benchmarks.bench_rollback import run_cli

PHASES = ("idle", "deploy", "failed_deploy", "rollback")


def _action(name: str, env, versions: dict) -> tuple[list[str], int] | None:
    """The CLI command of a phase and its expected exit code (registry moves happen first)."""
    if name == "idle":
        return None
    if name == "deploy":
        env.promote(versions["v2"])
        return ["sync", "deploy"], 0
    if name == "failed_deploy":
        env.promote(versions["v3"])
        return ["sync", "deploy"], 3
    return ["sync", "rollback", "--reason", "availability benchmark"], 0


def run_phase(load: LoadGen, name: str, command: tuple[list[str], int] | None, *, seconds: float,
              lead: float, action_timeout: float, start: float | None = None) -> dict:
    """Traffic for at least ``seconds``; the command starts after ``lead`` seconds. ``start``: where
    the phase's window begins (default now; :func:`run_phases`: where the previous one ended)."""
    start = time.monotonic() if start is None else start
    done = threading.Event()
    outcome: dict = {}

    def act():
        try:
            r, t0, t1 = run_cli(*command[0], timeout=action_timeout)
            outcome.update(exit=r.returncode, expected_exit=command[1], seconds=round(t1 - t0, 3), ended=t1,
                           stderr_tail=r.stderr.strip().splitlines()[-1:] if r.returncode != command[1] else [])
        finally:
            done.set()

    if command is not None:
        time.sleep(lead)
        threading.Thread(target=act, daemon=True).start()
    else:
        done.set()
    deadline = start + max(seconds, 0.1)
    while time.monotonic() < deadline or not done.is_set():          # bounded: action_timeout below
        if time.monotonic() - start > seconds + action_timeout + 30:
            break
        time.sleep(0.05)
    end = time.monotonic()
    window = load.window(start, end)
    stats = phase_stats(window)
    ended = outcome.pop("ended", None)
    # the traffic went on through the command: requests sent after it exited (None: no command)
    after = None if command is None else sum(1 for s in window if ended is not None and s.sent >= ended)
    return {"phase": name, "seconds": round(end - start, 2), "command": " ".join(command[0]) if command else None,
            "action": outcome or None, "requests_after_command": after, "window": (start, end), **stats}


def run_phases(load: LoadGen, env, versions: dict, *, seconds: float, action_timeout: float, log) -> list[dict]:
    """Every phase in turn, each window starting where the previous one ended: a request sent
    between two phases (while the last one's in-flight requests are waited for, or the registry
    is moved for the next) counts in the next one instead of in none."""
    phases = []
    mark = time.monotonic()
    for name in PHASES:
        command = _action(name, env, versions)
        p = run_phase(load, name, command, seconds=seconds, lead=min(1.0, seconds / 4),
                      action_timeout=action_timeout, start=mark)
        mark = p.pop("window")[1]
        log(f"  {name}: {p['requests']} requests, {p['non_200']} non-200, p50 {p['p50_ms']} ms, "
            f"p99 {p['p99_ms']} ms" + (f", exit {p['action']['exit']}" if p.get("action") else ""))
        phases.append(p)
    return phases


def verdicts(phases: list[dict]) -> list[dict]:
    """0 non-200 in each phase counts only if requests were sent (and, in a phase with a command,
    still sent after it exited: a load generator that stopped early answers no non-200 either)."""
    checks = []
    for p in phases:
        sent = p["requests"] > 0 and (p.get("command") is None or (p.get("requests_after_command") or 0) > 0)
        checks.append({"target": f"{p['phase']}: 0 non-200 responses", "value": p["non_200"],
                       "met": p["non_200"] == 0 and sent})
        if not sent:
            checks.append({"target": f"{p['phase']}: requests sent through the phase (after the command exited: "
                                     f"{p.get('requests_after_command')})", "value": p["requests"], "met": False})
    for p in phases:
        a = p.get("action")
        if a:
            checks.append({"target": f"{p['phase']}: `mlops {p['command']}` exits {a['expected_exit']}",
                           "value": a["exit"], "met": a["exit"] == a["expected_exit"]})
    return checks


def render(phases: list[dict], checks: list[dict]) -> str:
    idle = next((p for p in phases if p["phase"] == "idle"), None)
    rows = []
    for p in phases:
        ratio = round(p["p99_ms"] / idle["p99_ms"], 2) if idle and idle["p99_ms"] and p["p99_ms"] else None
        rows.append([p["phase"], p["seconds"], p["requests"], p["non_200"], p["p50_ms"], p["p99_ms"], ratio,
                     (p.get("action") or {}).get("seconds")])
    head = ["phase", "s", "requests", "non-200", "p50 ms", "p99 ms", "p99 vs idle", "command s"]
    lines = [_setup.table(head, rows), ""]
    lines += [f"{'met ' if c['met'] else 'MISSED'} {c['target']} (measured {c['value']})" for c in checks]
    return "\n".join(lines)


def run(*, phase_seconds: float, clients: int, max_requests: int, action_timeout: float = 300.0,
        wait: float = 600.0, results_dir=None, command: str = "",
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    with _setup.Lab() as lab:
        env = lab.deploy_env()
        host = env.add_host("file")
        versions = {"v1": env.register("a"), "v2": env.register("b"), "v3": env.register("golden_edited")}
        env.promote(versions["v1"])
        if env.deploy().status != "deployed":
            raise RuntimeError("the first deploy of v1 failed")
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        load = LoadGen(host.rest_url, env.model, lab.bundles.golden("a")["request"], clients=clients,
                       max_requests=max_requests * len(PHASES),
                       max_seconds=len(PHASES) * (phase_seconds + action_timeout + 60)).start()
        try:
            time.sleep(1.0)                     # connections open, server warm
            phases = run_phases(load, env, versions, seconds=phase_seconds, action_timeout=action_timeout, log=log)
        finally:
            load.stop()
        final = {"production": env.production(), "serves": env.which(host)}
    checks = verdicts(phases)
    doc = {"command": command or f"python -m benchmarks.bench_availability --phase-seconds {phase_seconds:g}",
           "settings": {"clients": clients, "phase_seconds": phase_seconds,
                        "max_requests_per_client_phase": max_requests,
                        "routes": ["unversioned", "labels/stable"],
                        "host": "file:// + local TF-Serving-compatible server"},
           "versions": versions, "after": final, "machine_at_start": started, "quiet_wait": quiet,
           "phases": phases, "targets": checks}
    return _setup.report("availability", doc, render(phases, checks), results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_availability",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4-second phases")
    ap.add_argument("--phase-seconds", type=float, default=10.0, help="minimum length of each phase (default 10)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--max-requests", type=int, default=20_000, help="bound per client and phase (default 20000)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    seconds = 4.0 if args.quick else args.phase_seconds
    run(phase_seconds=seconds, clients=args.clients, max_requests=args.max_requests, wait=0 if args.no_wait else 600.0,
        command="python -m benchmarks.bench_availability" + (" --quick" if args.quick else
                                                              f" --phase-seconds {seconds:g} --clients {args.clients}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
