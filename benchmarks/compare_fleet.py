"""Compare two checkouts' fleet deploy on one lab, in interleaved rounds (an A/B, not a target).

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare_fleet --baseline /tmp/before [--rounds 5] [--hosts 8] [--target file|ssh]

On a shared machine the noise of one minute differs from the next, so two benchmark runs at
different times cannot tell a 15% change. Here the same lab (one real ``mlflow server``, the
local TF-Serving-compatible servers running this checkout's code, one loopback sshd for
``ssh://``) deploys the tiny model with the baseline's ``mlops`` and with this checkout's in
turn — each round: baseline and this checkout, each to the one host and to the ``--hosts`` fleet
(both orders alternating by round), a new version every time, ``--bake 0``. Prints the median
wall times (process start to exit) and writes ``benchmarks/results/compare_fleet.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import _setup
from benchmarks.bench_rollback import run_cli


def _deploy(repo: Path) -> float:
    r, start, end = run_cli("sync", "deploy", "--json", "--bake", "0", timeout=600, repo=repo)
    if r.returncode != 0:
        raise RuntimeError(f"deploy with {repo} failed (exit {r.returncode}): {r.stderr[-2000:]}")
    return end - start


def run(*, baseline: Path, rounds: int, n_hosts: int, target: str, wait: float = 600.0, results_dir=None,
        command: str = "", log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    codes = {"baseline": Path(baseline).resolve(), "this": _setup.REPO}
    walls: dict[str, dict[int, list[float]]] = {c: {1: [], n_hosts: []} for c in codes}
    with _setup.Lab() as lab:
        envs = {}
        for n in (1, n_hosts):
            env = envs[n] = lab.deploy_env()
            if target == "ssh":
                from benchmarks.bench_fleet import _sshd

                server = _sshd(lab)
                env.fleet.sshd_factory = lambda: server
            env.add_hosts(n, target)
            env.promote(env.register("a"))
            if env.deploy().status != "deployed":
                raise RuntimeError("the first deploy failed")
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        k = 0
        for i in range(rounds):
            for code in (("baseline", "this") if i % 2 == 0 else ("this", "baseline")):
                # the fleet sizes' order alternates too (the one host was always first)
                for n, env in (list(envs.items()) if i % 2 == 0 else list(reversed(envs.items()))):
                    lab.set_env(env.env)
                    env.promote(env.register("bc"[k % 2]))
                    k += 1
                    walls[code][n].append(round(_deploy(codes[code]), 3))
            log(f"  round {i + 1}: " + ", ".join(f"{c} {n} host{'s' if n > 1 else ''} {walls[c][n][-1]}s"
                                                for c in codes for n in (1, n_hosts)))
    summary = {}
    for c in codes:
        one, many = _setup.median(walls[c][1]), _setup.median(walls[c][n_hosts])
        summary[c] = {"repo": str(codes[c]), "commit": _setup.git_commit(codes[c]), "one_host_s": one,
                      f"hosts_{n_hosts}_s": many, "ratio": round(many / one, 3)}
    table = _setup.table(["checkout", "commit", "1 host s", f"{n_hosts} hosts s", "ratio"],
                         [[c, (summary[c]["commit"] or "?")[:10], summary[c]["one_host_s"],
                           summary[c][f"hosts_{n_hosts}_s"], summary[c]["ratio"]] for c in codes])
    doc = {"command": command or f"python -m benchmarks.compare_fleet --baseline {baseline} --rounds {rounds} "
                                 f"--hosts {n_hosts} --target {target}",
           "settings": {"rounds": rounds, "hosts": n_hosts, "target": target, "model": "tiny",
                        "servers": "this checkout's local TF-Serving-compatible servers"},
           "machine_at_start": started, "quiet_wait": quiet, "summary": summary, "walls": walls}
    return _setup.report("compare_fleet", doc, table, results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare_fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, type=Path, help="another checkout (e.g. a git worktree)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--target", choices=("file", "ssh"), default="file")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    if not (args.baseline / "mlops" / "__main__.py").is_file():
        print(f"--baseline {args.baseline}: not a checkout of this project (no mlops/__main__.py)", file=sys.stderr)
        return 2
    command = "python -m benchmarks.compare_fleet " + " ".join(argv if argv is not None else sys.argv[1:])
    run(baseline=args.baseline, rounds=args.rounds, n_hosts=args.hosts, target=args.target,
        wait=0 if args.no_wait else 600.0, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
