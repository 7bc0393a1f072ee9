"""(i) Distant hosts: deploy wall time to ``ssh://`` hosts as their round trip grows.

    python -m benchmarks.bench_latency [--rounds 3] [--rtt 0,20,50] [--hosts 1] [--baseline /tmp/before]

On a fleet the hosts are other machines, often in another zone or region, and every SFTP request,
REST call and gRPC reload of a deploy waits for its answer. Here one local TF-Serving-compatible
server behind one loopback OpenSSH sshd (logging in as a deploy user made like
``serving_host/install_server.sh``'s when run as root, else as the current user), a real
``mlflow server``, the tiny model; the host's SSH port, REST port and gRPC port are each reached
through a ``tests.lab.netfaults.DelayProxy`` that holds every chunk ``rtt / 2`` each way. Each
round promotes a new version and times ``mlops sync deploy --json --bake 0 --hosts FILE`` from
Popen to exit, for every ``--rtt`` (0: the same proxies without delay — the baseline of the same
run; the order of the RTTs, and of the codes, reversed every other round). The slope
``(T(rtt) - T(0)) / rtt`` is the number of round trips the deploy waits for in sequence (its
critical path), which is what a far host costs. ``--hosts N``: N such hosts (one sshd, each
host its own proxies), deployed in parallel as a fleet is, so the slope shows what still grows
with N (results: ``latency_<N>_hosts.json``).

``--baseline DIR`` (a ``git worktree`` of an earlier commit) deploys with that checkout's
``mlops`` too, interleaved in the same rounds, so a change in round trips shows as a change of
slope measured side by side. Writes ``benchmarks/results/latency.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks import _setup
from benchmarks.bench_rollback import run_cli

DEFAULT_RTTS = (0.0, 0.02, 0.05)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _proxied_hosts_file(lab, hosts, sshd, rtt: float, proxies: list) -> Path:
    """A hosts file for ``hosts`` whose SSH, REST and gRPC each go through a delay proxy of ``rtt``."""
    from tests.lab.hosts import hosts_toml
    from tests.lab.netfaults import DelayProxy

    d = lab.root / f"latency-{int(rtt * 1000)}ms"
    d.mkdir(exist_ok=True)
    known, entries = [], []
    key = sshd.host_key_pub.split()
    for host in hosts:
        ssh = DelayProxy(sshd.port, rtt)
        rest = DelayProxy(urlsplit(host.server.rest_url).port, rtt)
        grpc = DelayProxy(_port(host.entry["grpc"]), rtt)
        proxies += [ssh, rest, grpc]
        known.append(f"[127.0.0.1]:{ssh.port} {key[0]} {key[1]}\n")
        entries.append({**host.entry, "target": f"ssh://{sshd.user}@127.0.0.1:{ssh.port}{host.base}",
                        "known_hosts": str(d / "known_hosts"), "rest_url": f"http://127.0.0.1:{rest.port}",
                        "grpc": f"127.0.0.1:{grpc.port}"})
    (d / "known_hosts").write_text("".join(known))
    path = d / "hosts.toml"
    path.write_text(hosts_toml(entries))
    return path


def round_order(codes: dict[str, Path], rtts: tuple[float, ...], i: int) -> list[tuple[str, Path, float]]:
    """The deploys of round ``i``: every code at every RTT, both orders reversed in odd rounds (the
    RTT 0 baseline always first had it always deploy after the previous round's slowest one)."""
    names = list(codes) if i % 2 == 0 else list(reversed(codes))
    order = list(rtts) if i % 2 == 0 else list(reversed(rtts))
    return [(name, codes[name], rtt) for name in names for rtt in order]


def measure(*, rounds: int, rtts: tuple[float, ...], codes: dict[str, Path], n_hosts: int,
            log, wait: float = 0.0) -> tuple[list[dict], dict]:
    """Deploy rounds through the proxies; waits for a quiet machine once the lab is up (its
    servers' start-up and the first deploy are what would otherwise load the first round)."""
    from benchmarks.bench_fleet import DEPLOY_USER, _deploy_user_sshd, _hand_bases_to, _sshd

    rows: list[dict] = []
    proxies: list = []
    with _setup.Lab() as lab:
        env = lab.deploy_env()
        sshd = _deploy_user_sshd(lab)
        user = DEPLOY_USER
        if sshd is None:
            sshd, user = _sshd(lab), "the current user"
        env.fleet.sshd_factory = lambda: sshd
        hosts = env.add_hosts(n_hosts, "ssh")
        if user == DEPLOY_USER:
            _hand_bases_to(hosts, DEPLOY_USER)
        try:
            files = {rtt: _proxied_hosts_file(lab, hosts, sshd, rtt, proxies) for rtt in rtts}
            env.promote(env.register("a"))
            if env.deploy().status != "deployed":
                raise RuntimeError("the first deploy failed")
            quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
            conditions = {"login": user, "started": _setup.machine(), "quiet_wait": quiet}
            for i in range(rounds):
                for name, repo, rtt in round_order(codes, rtts, i):
                    v = env.register("bc"[len(rows) % 2])
                    env.promote(v)
                    r, start, end = run_cli("sync", "deploy", "--json", "--bake", "0", "--hosts",
                                            str(files[rtt]), timeout=600, repo=repo)
                    if r.returncode != 0:
                        raise RuntimeError(f"deploy ({name}, rtt {rtt * 1000:g} ms) failed "
                                           f"(exit {r.returncode}): {r.stderr[-2000:]}")
                    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
                    rows.append({"code": name, "rtt_ms": round(rtt * 1000, 1), "round": i, "version": v,
                                 "wall_s": round(end - start, 3), "timings": doc.get("timings")})
                    log(f"  {name} rtt {rtt * 1000:g} ms round {i + 1}: {rows[-1]['wall_s']}s")
        finally:
            for p in proxies:
                p.stop()
    return rows, conditions


def summarize(rows: list[dict]) -> dict:
    """Median wall time per code and RTT, and each code's slope against RTT 0 (round trips)."""
    out: dict[str, dict] = {}
    for code in dict.fromkeys(r["code"] for r in rows):
        mine = [r for r in rows if r["code"] == code]
        walls = {rtt: _setup.median([r["wall_s"] for r in mine if r["rtt_ms"] == rtt])
                 for rtt in sorted({r["rtt_ms"] for r in mine})}
        base = walls.get(0.0)
        slopes = {rtt: round((w - base) / (rtt / 1000), 1) for rtt, w in walls.items() if rtt and base is not None}
        out[code] = {"wall_s": {f"{rtt:g}": w for rtt, w in walls.items()},
                     "sequential_round_trips": {f"{rtt:g}": s for rtt, s in slopes.items()}}
    return out


def render(summary: dict) -> str:
    rtts = sorted({float(k) for s in summary.values() for k in s["wall_s"]})
    head = ["code", *(f"{r:g} ms s" for r in rtts), *(f"round trips @{r:g} ms" for r in rtts if r)]
    rows = [[code, *(s["wall_s"].get(f"{r:g}") for r in rtts),
             *(s["sequential_round_trips"].get(f"{r:g}") for r in rtts if r)] for code, s in summary.items()]
    return _setup.table(head, rows)


def run(*, rounds: int, rtts: tuple[float, ...], baseline: Path | None, n_hosts: int = 1, wait: float = 600.0,
        results_dir=None, command: str = "", log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    codes = {"this": _setup.REPO}
    if baseline is not None:
        codes = {"baseline": Path(baseline).resolve(), **codes}
    rows, conditions = measure(rounds=rounds, rtts=rtts, codes=codes, n_hosts=n_hosts, log=log, wait=wait)
    summary = summarize(rows)
    doc = {"command": command or "python -m benchmarks.bench_latency",
           "settings": {"rounds": rounds, "rtt_ms": [round(r * 1000, 1) for r in rtts], "hosts": n_hosts,
                        "codes": {k: {"path": str(v), "commit": _setup.git_commit(v)} for k, v in codes.items()},
                        "host": f"{n_hosts} ssh:// host(s) (one loopback sshd, login {conditions['login']}); "
                                "each host's SSH, REST and gRPC through its own DelayProxy; tiny model; --bake 0; "
                                "Popen to exit"},
           "machine_at_start": conditions["started"], "quiet_wait": conditions["quiet_wait"], "summary": summary,
           "rounds": rows}
    return _setup.report("latency" if n_hosts == 1 else f"latency_{n_hosts}_hosts", doc, render(summary),
                         results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rtt", default=",".join(f"{r * 1000:g}" for r in DEFAULT_RTTS),
                    help="round trips to add, in ms, comma-separated (0 is the baseline; added if missing)")
    ap.add_argument("--baseline", type=Path, help="an earlier checkout (git worktree) to deploy with too")
    ap.add_argument("--hosts", type=int, default=1, help="hosts in the fleet, each behind its own proxies")
    ap.add_argument("--max-wait", type=float, default=600.0, help="wait at most S seconds for a quiet machine")
    args = ap.parse_args(argv)
    rtts = tuple(sorted({0.0, *(float(x) / 1000 for x in args.rtt.split(",") if x.strip())}))
    if args.baseline is not None and not (args.baseline / "mlops").is_dir():
        ap.error(f"--baseline {args.baseline} is not a checkout of this project (no mlops/ in it)")
    run(rounds=args.rounds, rtts=rtts, baseline=args.baseline, n_hosts=args.hosts, wait=args.max_wait,
        command="python -m benchmarks.bench_latency " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
