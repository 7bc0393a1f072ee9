"""Run the benchmarks (``make bench``: issue 7's four and issue 13's grpc), each against its
same-run baseline.

    python -m benchmarks.run_all [--quick] [--only publish,rollback,availability,e2e,grpc] [--no-wait]

a) publish   — publish over SSH vs scp -r, rsync -a and paramiko SFTP put (benchmarks/bench_publish.py)
b) rollback  — `mlops sync rollback` until the old outputs answer, vs a fresh deploy (bench_rollback.py)
c) availability — 8 clients through deploy, failed deploy + automatic rollback, rollback (bench_availability.py)
d) e2e       — each stage of the quick-start flow: train, gate, promote, deploy steps (bench_e2e.py)
e) grpc      — gRPC predict vs REST predict throughput on the digits model (bench_grpc.py)
f) fleet     — deploy to 8 hosts vs 1 (--bake 0), parallel vs sequential; a canary breach (bench_fleet.py)
g) store     — bytes sent and time to publish to 8 SSH hosts: own SSH streams vs a shared S3 store (bench_store.py)
h) warmup    — the first live request after a switch, with and without the warmup file (bench_warmup.py)
i) latency   — deploy wall time to one ssh:// host as its round trip grows, 0 / 20 / 50 ms (bench_latency.py)

Before each benchmark's measured part it waits (bounded, 10 minutes) for the 1-minute load
average to drop below 1.5 and records it. ``--quick`` runs each in its shortest form (for a
check that they work, not for figures). Results: ``benchmarks/results/<name>.json``; a summary
of every target in ``benchmarks/results/summary.json``. Not part of CI.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from benchmarks import _setup

ORDER = ("publish", "rollback", "availability", "e2e", "grpc", "fleet", "store", "warmup", "latency", "rest_cpu")


def plan(quick: bool) -> dict[str, dict]:
    """The keyword arguments of each benchmark's ``run`` (pure)."""
    from benchmarks.bench_publish import MAIN_SETUP, SECOND_SETUP

    return {
        "publish": {"sizes_mb": [50] if quick else [200, 1000], "many_files": 1500, "repeats": 1 if quick else 3,
                    "setups": [MAIN_SETUP] if quick else [MAIN_SETUP, SECOND_SETUP]},
        "rollback": {"rounds": 2 if quick else 7, "cold_rounds": 1 if quick else 3},
        "availability": {"phase_seconds": 4.0 if quick else 10.0, "clients": 8, "max_requests": 20_000},
        "e2e": {"epochs": 3 if quick else 10, "quick": quick},
        "grpc": {"seconds": 1.0 if quick else 8.0, "clients": [1] if quick else [1, 4],
                 "batches": [1] if quick else [1, 32]},
        "fleet": {"rounds": 1 if quick else 2, "n_hosts": 8, "big_mb": 0 if quick else 100, "bake": 2.0,
                  "ssh": not quick},
        "store": {"hosts": 8, "mb": 5 if quick else 100, "rounds": 1 if quick else 3},
        "warmup": {"rounds": 1 if quick else 5},
        "latency": {"rounds": 1 if quick else 3, "rtts": (0.0, 0.02) if quick else (0.0, 0.02, 0.05),
                    "baseline": None},
        "rest_cpu": {"n": 200 if quick else 2000, "rounds": 1 if quick else 5, "baseline": None},
    }


def _module(name: str):
    import importlib

    return importlib.import_module(f"benchmarks.bench_{name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shortest form of each benchmark (not for figures)")
    ap.add_argument("--only", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    ap.add_argument("--max-wait", type=float, default=600.0, metavar="S",
                    help="before each benchmark, wait up to S seconds for load average < 1.5 (default 600)")
    args = ap.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in ORDER]
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}", file=sys.stderr)
        return 2
    kwargs = plan(args.quick)
    summary: dict = {"quick": args.quick, "benchmarks": {}}
    failed = []
    for name in [n for n in ORDER if n in chosen]:
        print(f"\n=== {name} ===", flush=True)
        start = time.monotonic()
        cmd = f"python -m benchmarks.run_all{' --quick' if args.quick else ''} --only {name}"
        try:
            doc = _module(name).run(**kwargs[name], wait=0 if args.no_wait else args.max_wait, command=cmd)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
            traceback.print_exc()
            failed.append(name)
            summary["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        summary["benchmarks"][name] = {"seconds": round(time.monotonic() - start, 1), "commit": doc.get("commit"),
                                       "targets": doc.get("targets"),
                                       "load_average_at_start": (doc.get("machine_at_start") or {}).get("load_average")}
    if not args.quick and set(chosen) != set(ORDER):      # --only: the others' entries stay as they were
        previous = _setup.RESULTS / "summary.json"
        if previous.exists():
            kept = json.loads(previous.read_text()).get("benchmarks") or {}
            summary["benchmarks"] = {**{k: v for k, v in kept.items() if k not in summary["benchmarks"]},
                                     **summary["benchmarks"]}
    summary["command"] = f"python -m benchmarks.run_all{' --quick' if args.quick else ''}" + \
        (f" --only {','.join(chosen)}" if set(chosen) != set(ORDER) else "")
    path = _setup.save("summary", summary)
    print(f"\nsummary: {path}")
    for name, b in summary["benchmarks"].items():
        for t in b.get("targets") or ():
            print(f"  {name}: {'met ' if t['met'] else 'MISSED'} {t['target']} ({t['value']})")
        if "error" in b:
            print(f"  {name}: FAILED to run: {b['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
