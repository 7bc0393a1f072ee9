"""(h) The first live request after a switch, with and without the SavedModel's warmup file.

    python -m benchmarks.bench_warmup [--quick] [--rounds 5]

One serving host (``file://``, the local TF-Serving-compatible server with gRPC reload, like the
quick start's) and a real ``mlflow server``. v1 serves; one outside client sends unversioned
predict requests back to back (bounded in count and time) and records which version's outputs
answered and how long each request took. Each round deploys two new versions with ``mlops sync
deploy --bake 0``, in alternating order: one SavedModel as the deploy tests build it (no warmup
file) and the same SavedModel with ``assets.extra/tf_serving_warmup_requests`` written by
``mlproject.export.write_warmup_requests`` from its golden request, as ``mlops train`` exports it.

Measured for each deploy, on the client's requests:

- first: the latency of the first request the new version answered (the first live request
  after the switch);
- slowest of the first 5 answers of the new version;
- baseline (same run): the median latency of the old version's answers in the second before
  the command started.

Why it differs: a TF session builds an executor on the first run of each (inputs, outputs) pair.
TF Serving replays the warmup file at every load before the version is AVAILABLE, so the copy
that takes traffic after the switch already has it; without the file the first live requests wait
for the build (the deploy's own post-switch check races them for it).
Writes ``benchmarks/results/warmup.json`` and prints a table. No pass/fail target: issue 12 asks
for the figures.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from benchmarks import _setup, bench_rollback
from benchmarks.bench_rollback import _json, run_cli

KINDS = bench_rollback.NEW_KINDS   # outputs differ from v1 ("a") and from each other
FIRST_N = 5               # "slowest of the first N answers"
BASELINE_S = 1.0          # the old version's steady latency: this long before the command


# --- pure: what the client saw -------------------------------------------------------------
def first_answers(samples, answer: str, since: float, n: int = FIRST_N) -> dict | None:
    """The first ``n`` requests sent at or after ``since`` that ``answer`` answered: the first
    one's latency and the slowest of them, in ms (None: it never answered)."""
    got = [s for s in samples if s.sent >= since and s.status == 200 and s.answer == answer][:n]
    if not got:
        return None
    ms = [(s.received - s.sent) * 1000 for s in got]
    return {"first_ms": round(ms[0], 2), "slowest_of_first_ms": round(max(ms), 2), "n": len(ms)}


def steady_ms(samples, answer: str, start: float, end: float) -> float | None:
    """Median latency (ms) of ``answer``'s answers to requests sent in [start, end]."""
    ms = [(s.received - s.sent) * 1000 for s in samples
          if start <= s.sent <= end and s.status == 200 and s.answer == answer]
    return round(_setup.median(ms), 2) if ms else None


def summarize(deploys: list[dict]) -> dict:
    out = {}
    for warm in (False, True):
        rows = [d for d in deploys if d["warmup_file"] == warm and d["first_ms"] is not None]
        if rows:
            out["with warmup file" if warm else "without warmup file"] = {
                "deploys": len(rows),
                "first_ms": _setup.median([d["first_ms"] for d in rows]),
                "first_ms_max": max(d["first_ms"] for d in rows),
                "slowest_of_first_ms": _setup.median([d["slowest_of_first_ms"] for d in rows]),
                "baseline_ms": _setup.median([d["baseline_ms"] for d in rows if d["baseline_ms"] is not None]),
            }
    return out


def render(summary: dict) -> str:
    head = ["new version", "deploys", "first request ms (median)", "first ms (max)",
            f"slowest of first {FIRST_N} ms", "old version before, ms"]
    rows = [[k, s["deploys"], s["first_ms"], s["first_ms_max"], s["slowest_of_first_ms"], s["baseline_ms"]]
            for k, s in summary.items()]
    return _setup.table(head, rows)


# --- the I/O edge ----------------------------------------------------------------------------
class Rig(bench_rollback.Rig):
    """The rollback benchmark's rig (one host, v1 serving, a prober on its unversioned route),
    probing back to back, and each new kind as a folder with and without the warmup file."""

    def __init__(self, env, root: Path):
        from mlproject.export import write_warmup_requests

        super().__init__(env, pause=0.0, max_requests=400_000, max_seconds=1800.0)
        b = env.bundles
        self.folders = {}
        for kind in KINDS:
            self.folders[(kind, False)] = b.path(kind)
            warm = root / f"{kind}-warmup"
            shutil.copytree(b.path(kind), warm)
            write_warmup_requests(warm / "tfserving", b.golden(kind)["request"])
            self.folders[(kind, True)] = warm

    def deploy(self, kind: str, warmup: bool) -> dict:
        v = self.env.register_bundle(self.folders[(kind, warmup)], f"{kind}-warmup" if warmup else kind,
                                     like=kind, experiment="bench-warmup")
        self.env.promote(v)
        time.sleep(BASELINE_S)                         # the old version's steady latency meanwhile
        r, t0, t1 = run_cli("sync", "deploy", "--json", "--bake", "0")
        _json(r, f"mlops sync deploy of v{v}")
        time.sleep(0.5)                                # a few more answers after the command exited
        samples = self.prober.window(t0 - BASELINE_S, t1 + 0.5)
        old = next((s.answer for s in reversed(samples) if s.sent < t0 and s.answer), None)
        first = first_answers(samples, kind, t0)
        if first is None:
            raise RuntimeError(f"the unversioned route never answered with v{v}'s outputs")
        return {"version": v, "kind": kind, "warmup_file": warmup, **first,
                "baseline_ms": steady_ms(samples, old, t0 - BASELINE_S, t0) if old else None,
                "command_s": round(t1 - t0, 3), "requests": len(samples)}


def run(*, rounds: int, wait: float = 600.0, results_dir=None, command: str = "",
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    deploys = []
    with _setup.Lab() as lab:
        rig = Rig(lab.deploy_env(), lab.root)
        try:
            quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
            started = _setup.machine()
            for n in range(rounds):
                # b then c each round (the outputs always change); which one carries the file alternates
                for kind, warmup in zip(KINDS, (n % 2 == 1, n % 2 == 0)):
                    d = rig.deploy(kind, warmup)
                    log(f"  round {n + 1}/{rounds} {'with' if warmup else 'without'} warmup file: first request "
                        f"{d['first_ms']} ms, slowest of first {d['n']} {d['slowest_of_first_ms']} ms "
                        f"(old version before: {d['baseline_ms']} ms)")
                    deploys.append(d)
        finally:
            rig.close()
    summary = summarize(deploys)
    doc = {"command": command or f"python -m benchmarks.bench_warmup --rounds {rounds}",
           "settings": {"rounds": rounds, "first_n": FIRST_N, "baseline_s": BASELINE_S,
                        "host": "file:// + local TF-Serving-compatible server, gRPC reload; one client, "
                                "unversioned REST predict of the golden request back to back"},
           "machine_at_start": started, "quiet_wait": quiet, "summary": summary, "targets": [],
           "deploys": deploys}
    return _setup.report("warmup", doc, render(summary), results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_warmup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of two deploys each (default 5)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    run(rounds=rounds, wait=0 if args.no_wait else 600.0,
        command="python -m benchmarks.bench_warmup" + (" --quick" if args.quick else f" --rounds {rounds}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
