"""(b) Rollback latency: ``mlops sync rollback`` until the old model answers, vs a fresh deploy.

    python -m benchmarks.bench_rollback [--quick] [--rounds 5] [--hosts N]

One serving host (``file://``, the local TF-Serving-compatible server with gRPC reload, like
the quick start's; ``--hosts N``: N of them, the outside client on the last to switch) and a real
``mlflow server``. v1 serves. Each round registers a new version,
promotes it and deploys it with ``mlops sync deploy`` (the baseline: a fresh deploy), then runs
``mlops sync rollback`` back to v1. "warm" rounds keep v1 loaded (the default); "cold" rounds
deploy with ``--no-keep-previous``, so the rollback must load v1 again (it is still published).
The versions are the deploy tests' tiny SavedModels, told apart by their outputs.

What "start" and "answered" mean (printed with the results):

- in-process: from the first line of the rollback command's function (``cmd_rollback``: after
  interpreter start and the CLI's module imports) until the command itself received v1's golden
  outputs on the unversioned route (the end of its verify step) — ``seconds_to_old_outputs`` of
  ``mlops sync rollback --json``.
- end-to-end: from ``subprocess.Popen`` of ``mlops sync rollback`` until an outside client,
  sending unversioned predict requests back to back, received v1's outputs for good (every
  later answer is v1's). The fresh deploy is measured the same way (until the new outputs).

Targets (issue 7): warm, median in-process < 1 s and end-to-end < 4 s.
Writes ``benchmarks/results/rollback.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks import _setup
from benchmarks._traffic import Prober, switch_time

TARGETS = {"warm_in_process_s": 1.0, "warm_end_to_end_s": 4.0}
DEFINITIONS = {
    "in_process": "from the first line of cmd_rollback (after interpreter start and the CLI's imports) until "
                  "the command itself received v1's golden outputs on the unversioned route",
    "end_to_end": "from subprocess.Popen of `mlops sync rollback` until an outside client's unversioned "
                  "requests answered with v1's outputs for good (the fresh deploy: with the new outputs)",
}
NEW_KINDS = ("b", "c")       # outputs differ from v1 ("a") and from each other


def run_cli(*args: str, timeout: float = 300, repo=None,
            extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """``mlops <args>`` in a subprocess (from checkout ``repo``, default this one, with ``extra_env``);
    (result, time.monotonic() at Popen, at exit)."""
    repo = repo or _setup.REPO
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mlops", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_setup.mlops_env(extra_env, repo=repo), cwd=repo)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    end = time.monotonic()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), start, end


def _json(r: subprocess.CompletedProcess, what: str) -> dict:
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


class Rig:
    """A ``DeployEnv`` (tests/lab/deploy_env.py) with ``hosts`` hosts (default one), v1 serving, and
    a prober on the unversioned route of the last host in the hosts file (a rollback switches
    every host at once; a staged one, or an older checkout's, switches a canary first and this
    host in the last wave)."""

    def __init__(self, env, cli_repo=None, hosts: int = 1, rollback_env: dict | None = None, **prober):
        """``prober``: options of the ``Prober`` (``pause``, ``max_requests``, ``max_seconds``);
        ``rollback_env``: set for the rollback command only (e.g. the deploy job's MLOPS_BAKE_SECONDS)."""
        self.env = env
        self.rollback_env = rollback_env
        self.cli_repo = cli_repo        # the `mlops` under test: this checkout, or another one
        bakes = bool(rollback_env) and float(rollback_env.get("MLOPS_BAKE_SECONDS", 0)) > 0
        # a fleet that bakes serves TF Serving's metrics page
        self.host = (env.add_monitored_hosts(hosts) if bakes else env.add_hosts(hosts, "file"))[-1]
        self.v1 = self.env.register("a")
        self.env.promote(self.v1)
        if self.env.deploy().status != "deployed":
            raise RuntimeError("the first deploy of v1 failed")
        b = env.bundles
        self.known = {k: b.golden(k)["response"]["predictions"] for k in ("a", *NEW_KINDS)}
        self.prober = Prober(self.host.rest_url, self.env.model, b.golden("a")["request"], self.known,
                             **prober).start()

    def settle(self, answer: str, seconds: float = 0.25) -> None:
        time.sleep(seconds)      # a few more probes after the command exited
        last = self.prober.samples[-1].answer if self.prober.samples else None
        if last != answer:
            raise RuntimeError(f"the unversioned route answers {last}, expected {answer}")

    def one_round(self, n: int, cold: bool) -> dict:
        kind = NEW_KINDS[n % 2]
        v = self.env.register(kind)
        self.env.promote(v)
        flags = ["--no-keep-previous"] if cold else []
        r, t0, t1 = run_cli("sync", "deploy", "--json", *flags, repo=self.cli_repo)
        deployed = _json(r, f"mlops sync deploy of v{v}")
        self.settle(kind)
        fresh = {"version": v, "end_to_end_s": switch_time(self.prober.window(t0, t1 + 1), t0, kind),
                 "command_exit_s": round(t1 - t0, 4), "fleet_seconds": deployed["seconds"],
                 "steps": {s["kind"]: s["seconds"] for s in deployed["hosts"][0]["steps"]}}
        r, t0, t1 = run_cli("sync", "rollback", "--json", "--reason", f"benchmark round {n}", repo=self.cli_repo,
                            extra_env=self.rollback_env)
        doc = _json(r, "mlops sync rollback")
        self.settle("a")
        if doc["registry"]["to_version"] != self.v1:
            raise RuntimeError(f"rolled back to v{doc['registry']['to_version']}, expected v{self.v1}")
        host = doc["deploy"]["hosts"][0]
        rollback = {"from_version": v, "to_version": self.v1, "in_process_s": doc["seconds_to_old_outputs"],
                    "end_to_end_s": switch_time(self.prober.window(t0, t1 + 1), t0, "a"),
                    "command_exit_s": round(t1 - t0, 4), "command_seconds": doc["seconds"],
                    "switch_s": doc["switch_seconds"], "steps": {s["kind"]: s["seconds"] for s in host["steps"]}}
        return {"round": n, "kind": "cold" if cold else "warm", "fresh_deploy": fresh, "rollback": rollback}

    def close(self) -> None:
        self.prober.stop()


# --- pure: summary, verdicts, table ----------------------------------------------------------
def summarize(rounds: list[dict]) -> dict:
    out = {}
    for kind in ("warm", "cold"):
        rs = [r for r in rounds if r["kind"] == kind]
        if not rs:
            continue
        med = _setup.median

        def col(part, key):
            return [r[part][key] for r in rs if r[part][key] is not None]
        s = {"rounds": len(rs),
             "rollback_in_process_s": med(col("rollback", "in_process_s")),
             "rollback_end_to_end_s": med(col("rollback", "end_to_end_s")),
             "rollback_command_exit_s": med(col("rollback", "command_exit_s")),
             "rollback_switch_s": med(col("rollback", "switch_s")),
             "fresh_deploy_end_to_end_s": med(col("fresh_deploy", "end_to_end_s")),
             "fresh_deploy_command_exit_s": med(col("fresh_deploy", "command_exit_s"))}
        if s["rollback_end_to_end_s"] and s["fresh_deploy_end_to_end_s"]:
            s["rollback_vs_fresh_deploy"] = round(s["rollback_end_to_end_s"] / s["fresh_deploy_end_to_end_s"], 3)
        out[kind] = s
    return out


def verdicts(summary: dict, hosts: int = 1) -> list[dict]:
    """Issue 7's targets; they are for one host, so a fleet's run is checked against none."""
    if hosts != 1:
        return []
    warm = summary.get("warm") or {}
    checks = []
    for key, target, label in (("rollback_in_process_s", TARGETS["warm_in_process_s"], "in-process"),
                               ("rollback_end_to_end_s", TARGETS["warm_end_to_end_s"], "end-to-end")):
        value = warm.get(key)
        checks.append({"target": f"warm rollback, median {label} < {target:g} s", "value": value,
                       "met": value is not None and value < target})
    return checks


def render(summary: dict, checks: list[dict]) -> str:
    rows = []
    for kind, s in summary.items():
        rows.append([f"rollback ({'v1 kept loaded' if kind == 'warm' else 'v1 not loaded'})", s["rounds"],
                     s["rollback_in_process_s"], s["rollback_end_to_end_s"], s["rollback_command_exit_s"],
                     s.get("rollback_vs_fresh_deploy")])
        rows.append([f"fresh deploy (baseline, {kind} rounds)", s["rounds"], None, s["fresh_deploy_end_to_end_s"],
                     s["fresh_deploy_command_exit_s"], 1.0])
    head = ["median of", "rounds", "in-process s", "end-to-end s", "command exit s", "vs fresh deploy"]
    lines = [_setup.table(head, rows), ""]
    lines += [f"{k}: {v}" for k, v in DEFINITIONS.items()]
    lines += [f"{'met ' if c['met'] else 'MISSED'} {c['target']} (measured {c['value']})" for c in checks]
    return "\n".join(lines)


def run(*, rounds: int, cold_rounds: int, wait: float = 600.0, results_dir=None, command: str = "", cli_repo=None,
        name: str = "rollback", hosts: int = 1, bake_env: float | None = None,
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    rollback_env = {"MLOPS_BAKE_SECONDS": f"{bake_env:g}"} if bake_env is not None else None
    with _setup.Lab() as lab:
        rig = Rig(lab.deploy_env(), cli_repo=cli_repo, hosts=hosts, rollback_env=rollback_env)
        try:
            quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
            started = _setup.machine()
            order = [cold for i in range(max(rounds, cold_rounds))          # warm and cold interleaved
                     for cold, count in ((False, rounds), (True, cold_rounds)) if i < count]
            results = []
            for n, cold in enumerate(order):
                r = rig.one_round(n, cold)
                log(f"  round {n + 1}/{len(order)} {r['kind']}: rollback in-process "
                    f"{r['rollback']['in_process_s']}s, end-to-end {r['rollback']['end_to_end_s']}s; "
                    f"fresh deploy end-to-end {r['fresh_deploy']['end_to_end_s']}s")
                results.append(r)
        finally:
            rig.close()
    summary = summarize(results)
    checks = verdicts(summary, hosts)
    doc = {"command": command or f"python -m benchmarks.bench_rollback --rounds {rounds}",
           "definitions": DEFINITIONS, "settings": {"rounds_warm": rounds, "rounds_cold": cold_rounds,
                                                    "hosts": hosts, "rollback_env": rollback_env,
                                                    "host": "file:// + local TF-Serving-compatible server, "
                                                            "gRPC reload"},
           "machine_at_start": started, "quiet_wait": quiet, "summary": summary, "targets": checks,
           "rounds": results}
    if cli_repo:
        doc["cli_repo"] = {"path": str(cli_repo), "commit": _setup.git_commit(cli_repo)}
    return _setup.report(name, doc, render(summary, checks), results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_rollback", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 warm + 1 cold round")
    ap.add_argument("--rounds", type=int, default=7, help="warm rounds (default 7)")
    ap.add_argument("--cold-rounds", type=int, default=3, help="rounds with v1 not loaded (default 3)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    ap.add_argument("--hosts", type=int, default=1,
                    help="file:// hosts (default 1); the prober watches the last to switch; results go to "
                         "rollback_<N>_hosts.json")
    ap.add_argument("--bake-env", type=float, metavar="S",
                    help="run the rollback with MLOPS_BAKE_SECONDS=S in its environment, as CircleCI's deploy job "
                         "does (the fresh deploys do not bake); results get the suffix _bake<S>")
    ap.add_argument("--cli-repo", metavar="DIR",
                    help="run `mlops` from this checkout instead (e.g. a `git worktree` of an older commit, to "
                         "measure a change); results go to rollback-<dir name>.json")
    args = ap.parse_args(argv)
    warm, cold = (2, 1) if args.quick else (args.rounds, args.cold_rounds)
    from pathlib import Path

    repo = Path(args.cli_repo).resolve() if args.cli_repo else None
    name = f"rollback-{repo.name}" if repo else "rollback"
    run(rounds=warm, cold_rounds=cold, wait=0 if args.no_wait else 600.0, cli_repo=repo, hosts=args.hosts,
        name=(name if args.hosts == 1 else f"{name}_{args.hosts}_hosts")
        + (f"_bake{args.bake_env:g}" if args.bake_env is not None else ""), bake_env=args.bake_env,
        command="python -m benchmarks.bench_rollback" + (" --quick" if args.quick else
                                                          f" --rounds {warm} --cold-rounds {cold}")
        + (f" --hosts {args.hosts}" if args.hosts != 1 else "")
        + (f" --bake-env {args.bake_env:g}" if args.bake_env is not None else "")
        + (f" --cli-repo {args.cli_repo}" if args.cli_repo else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
