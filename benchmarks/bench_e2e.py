"""(d) End to end: the wall time of each stage of the quick-start flow, as the pipeline runs it.

    python -m benchmarks.bench_e2e [--quick] [--epochs 10]

The quick start's flow (``mlops demo``), each stage the CLI command its CircleCI job runs, on
a real ``mlflow server`` and one serving host (``file://``, the local TF-Serving-compatible
server, gRPC reload): v1 — ``mlops train`` (digits), ``mlops registry gate``, ``mlops registry
promote``, ``mlops sync deploy``; then, unless ``--quick``, v2 — ``mlops data make-batch --kind
good`` + ``mlops retrain``, gate, promote, deploy (v1 kept warm).

Each stage is the wall time of its command (process start included). The deploy is broken down
from what ``mlops sync deploy --json`` itself measured: its phases outside the hosts (``timings``:
resolve the version, connect + lock, observe + plan, fetch from the registry, record +
retention) and each host step (``hosts[].steps``: publish, load = load_validation +
wait_validation + load_main + wait_main, smoke = smoke_validation, switch, verify).
Writes ``benchmarks/results/e2e.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys

from benchmarks import _setup
from benchmarks.bench_rollback import run_cli

LOAD_STEPS = ("load_validation", "wait_validation", "drop_validation", "load_main", "wait_main")


def _stage(stages: dict, name: str, *args: str, timeout: float = 1800) -> dict:
    r, t0, t1 = run_cli(*args, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"`mlops {' '.join(args)}` failed (exit {r.returncode}): {r.stderr[-2000:]}")
    stages[name] = round(t1 - t0, 3)
    return json.loads(r.stdout) if "--json" in args else {}


def deploy_breakdown(doc: dict, wall: float) -> dict:
    """The deploy command's wall time split into what it measured itself (pure)."""
    steps: dict[str, float] = {}
    for host in doc.get("hosts") or ():
        for s in host.get("steps") or ():
            steps[s["kind"]] = round(steps.get(s["kind"], 0.0) + s["seconds"], 3)
    out = {"publish": steps.get("publish"),
           "load": round(sum(steps.get(k, 0.0) for k in LOAD_STEPS), 3) if any(k in steps for k in LOAD_STEPS)
           else None,
           "smoke": steps.get("smoke_validation", steps.get("smoke_main")),
           "switch": steps.get("switch"), "verify": steps.get("verify")}
    timings = doc.get("timings") or {}
    for k, v in timings.items():     # the phases outside the hosts' steps (the two host phases
        if k not in ("hosts", "prepare_hosts", "switch_hosts"):   # are the steps above: not twice)
            out[k] = v
    out["process_start_and_rest"] = round(wall - (doc.get("seconds") or 0.0), 3)
    if not timings:      # a deploy that does not report its phases: what the steps do not cover
        out["outside_host_steps"] = round((doc.get("seconds") or 0.0) - sum(steps.values()), 3)
    return out


def release(stages: dict, version: int, tag: str) -> dict:
    _stage(stages, f"{tag}.gate", "registry", "gate", "--version", str(version), "--json")
    _stage(stages, f"{tag}.promote", "registry", "promote", "--version", str(version), "--json")
    r, t0, t1 = run_cli("sync", "deploy", "--json")
    if r.returncode != 0:
        raise RuntimeError(f"`mlops sync deploy` failed (exit {r.returncode}): {r.stderr[-2000:]}")
    stages[f"{tag}.deploy"] = round(t1 - t0, 3)
    doc = json.loads(r.stdout)
    return {"wall": stages[f"{tag}.deploy"], "fleet_seconds": doc.get("seconds"),
            "breakdown": deploy_breakdown(doc, t1 - t0), "status": doc.get("status")}


def render(stages: dict, deploys: dict) -> str:
    names = ["train", "gate", "promote", "deploy"]
    tags = [t for t in ("v1", "v2") if f"{t}.deploy" in stages]
    rows = [[n] + [stages.get(f"{t}.{'retrain' if (n == 'train' and t == 'v2') else n}") for t in tags] for n in names]
    if "v2.make_batch" in stages:
        rows.insert(0, ["make good batch"] + [None, stages["v2.make_batch"]][:len(tags)])
    parts = sorted({k for d in deploys.values() for k in d["breakdown"]},
                   key=lambda k: (["resolve_version", "connect_and_lock", "observe_and_plan", "fetch_from_registry",
                                   "publish", "load", "smoke", "switch", "verify", "record_and_retention",
                                   "outside_host_steps", "process_start_and_rest"] + [k]).index(k))
    rows += [[f"  deploy: {k}"] + [deploys[t]["breakdown"].get(k) for t in tags] for k in parts]
    total = [round(sum(v for k, v in stages.items() if k.startswith(t + ".")), 3) for t in tags]
    rows.append(["total"] + total)
    head = ["stage (seconds)"] + [f"{t} ({'first deploy' if t == 'v1' else 'upgrade, v1 kept warm'})" for t in tags]
    return _setup.table(head, rows)


def run(*, epochs: int, quick: bool, wait: float = 600.0, results_dir=None, command: str = "",
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    stages: dict[str, float] = {}
    deploys: dict[str, dict] = {}
    with _setup.Lab() as lab:
        env = lab.deploy_env()
        env.add_host("file")
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        log(f"  v1: train ({epochs} epochs), gate, promote, deploy")
        v1 = _stage(stages, "v1.train", "train", "--epochs", str(epochs), "--json")["version"]
        deploys["v1"] = release(stages, v1, "v1")
        if not quick:
            log("  v2: good batch, retrain, gate, promote, deploy")
            batch = lab.root / "good-batch.npz"
            _stage(stages, "v2.make_batch", "data", "make-batch", "--kind", "good", "--out", str(batch))
            v2 = _stage(stages, "v2.retrain", "retrain", "--incoming", str(batch), "--epochs", str(epochs),
                        "--json")["version"]
            deploys["v2"] = release(stages, v2, "v2")
    doc = {"command": command or f"python -m benchmarks.bench_e2e --epochs {epochs}",
           "settings": {"epochs": epochs, "dataset": "digits", "quick": quick,
                        "host": "file:// + local TF-Serving-compatible server, gRPC reload"},
           "machine_at_start": started, "quiet_wait": quiet, "stages": stages, "deploys": deploys}
    return _setup.report("e2e", doc, render(stages, deploys), results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="v1 only, 3 epochs")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (default 10, as `mlops demo`)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    epochs = 3 if args.quick else args.epochs
    run(epochs=epochs, quick=args.quick, wait=0 if args.no_wait else 600.0,
        command="python -m benchmarks.bench_e2e" + (" --quick" if args.quick else f" --epochs {epochs}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
