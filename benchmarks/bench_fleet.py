"""(e) Fleet rollout: deploy wall time for 8 hosts vs 1, and a canary breach under traffic.

    python -m benchmarks.bench_fleet [--quick] [--rounds 2] [--hosts 8] [--big-mb 100]

Local TF-Serving-compatible servers (``file://`` targets, and ``ssh://`` through a loopback
OpenSSH sshd unless ``--no-ssh``) and a real ``mlflow server``, as the other benchmarks. The
``ssh://`` hosts log in two ways: as the user running the benchmark (root here, whose
``~/.bashrc`` runs ``pyenv init`` for every command), and as a deploy user created the way
``serving_host/install_server.sh`` creates one (bash and ``/etc/skel/.bashrc``; root only, else
skipped loudly, and removed at the end) — the condition a production deploy runs in. For each
model (the deploy tests' tiny SavedModel, ~40 KB like the digits model; and one with a
``--big-mb`` MB variable), each target and each fleet size (1 and ``--hosts``), each round
promotes a new version and times ``mlops sync deploy --json --bake 0`` from Popen to exit, with
the CPU seconds spent meanwhile by the whole machine, the serving hosts' processes, the deploying
CLI and (``ssh://``) sshd with its sessions, and from those what each added host cost:

- ``rollout``: the default (prepare all hosts in parallel, canary, then one wave);
- ``sequential``: ``--parallel 1 --canary 0``, one host after the other as before the rollout
  (the same code path, so the difference is the parallelism alone).

Within a round the one-host and the ``--hosts`` fleet deploy one after the other (which one first
alternates by round: use an even ``--rounds``), so the machine's noise falls on the baseline and the
fleet alike; figures are medians over rounds.

Then a canary breach: 3 hosts (``--breach-hosts N``) started with ``--monitoring_config_file``,
1 client per host sending the golden request and, every 4th request, an input the new version refuses; deploy
with ``--bake B``. Measured: seconds from the first refused answer on the canary (it switched)
to the command's exit (every host back), against the target bake + 5 s; and the non-200 answers
on the hosts that are not the canary (target: 0).

Targets (issue 12): 8 hosts <= 1.5x one host (tiny model) and <= 3x (big model) with
``--bake 0``; breach rolled back within bake + 5 s; zero non-200 on the non-canary hosts.
Writes ``benchmarks/results/fleet.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _setup, subreaper

TARGETS = {"tiny_ratio": 1.5, "big_ratio": 3.0, "breach_extra_s": 5.0}
DEPLOY_USER = "mlopsdeploybench"
SSH_DEPLOY_USER = "ssh-deploy-user"     # ssh://, logging in as a deploy user made like install_server.sh's
KINDS = ("b", "c")
SESSIONS_TIMEOUT_S = 10.0   # at most this long for sshd's sessions to be reaped (after the timing)
CPU_PARTS = ("busy", "server", "cli", "sshd")      # row keys <part>_cpu_s ("busy": cpu_busy_s)


def _cli(*args: str, timeout: float = 900) -> tuple[dict, float, float, subprocess.CompletedProcess]:
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mlops", *args], capture_output=True, text=True, timeout=timeout,
                       env=_setup.mlops_env(), cwd=_setup.REPO)
    end = time.monotonic()
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return doc, start, end, r


def machine_busy_s() -> float:
    """CPU seconds every core of this machine spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]                # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


process_cpu_s = _setup.process_cpu_s


def children_cpu_s() -> float:
    """CPU seconds of this process's children that exited and were waited for (the CLI)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _sshd(lab):
    """One real OpenSSH sshd on loopback for the ssh:// hosts (tests/lab/sshd.py), logging in as
    the user running the benchmark (root here: bash, and root's own ``~/.bashrc``)."""
    from tests.lab.sshd import keygen, start_sshd

    if not hasattr(lab, "_bench_sshd"):
        d = lab.root / "sshd"
        d.mkdir(exist_ok=True)
        key = d / "id_ed25519"
        lab._bench_sshd = start_sshd(d / "server", user_key=(key, keygen(key)), wrap=subreaper.PREFIX)
        lab._stack.callback(lab._bench_sshd.stop)
    return lab._bench_sshd


def _deploy_user_sshd(lab):
    """An sshd whose login user is created the way ``serving_host/install_server.sh`` creates the
    deploy user (``tests.lab.sshd.ensure_user(login_shell=True)``); removed again at the end. None
    (said loudly) when not root."""
    import shutil
    import tempfile

    from tests.lab.sshd import ensure_user, keygen, start_sshd

    if hasattr(lab, "_bench_deploy_sshd"):
        return lab._bench_deploy_sshd
    lab._bench_deploy_sshd = None
    if os.geteuid() != 0:
        print(f"SKIPPED LOUDLY: the ssh ({DEPLOY_USER}) rows need root to create the deploy user",
              file=sys.stderr, flush=True)
        return None
    if ensure_user(DEPLOY_USER, login_shell=True):
        lab._stack.callback(subprocess.run, ["userdel", "--remove", DEPLOY_USER], capture_output=True,
                            timeout=30)
    d = Path(tempfile.mkdtemp(prefix="mlops-bench-sshd-"))
    os.chmod(d, 0o755)                      # sshd reads authorized_keys below it as that user
    lab._stack.callback(shutil.rmtree, d, True)
    key = d / "id_ed25519"
    lab._bench_deploy_sshd = start_sshd(d / "server", user_key=(key, keygen(key)), user=DEPLOY_USER,
                                        wrap=subreaper.PREFIX)
    lab._stack.callback(lab._bench_deploy_sshd.stop)
    return lab._bench_deploy_sshd


def _hand_bases_to(hosts, user: str) -> None:
    """Each host's base (and the directories above it, for traversal) usable by ``user``."""
    import pwd

    pw = pwd.getpwnam(user)
    for h in hosts:
        for parent in Path(h.base).parents:
            if str(parent) in ("/", "/tmp"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
        for root, dirs, files in os.walk(h.base):
            for name in [root, *(os.path.join(root, x) for x in dirs + files)]:
                os.chown(name, pw.pw_uid, pw.pw_gid)


def fleet_rounds(lab, sizes: tuple[int, ...], rounds: int, model: str, big_root, log,
                 target: str = "file") -> list[dict]:
    """``rounds`` rounds; each deploys a new version to every fleet size in turn (the order of the
    sizes alternating by round), rollout then sequential, so the machine's noise falls on the
    one-host baseline and the fleet alike."""
    envs = {}
    for n in sizes:
        env = envs[n] = lab.deploy_env()
        if target == "ssh":
            server = _sshd(lab)
            env.fleet.sshd_factory = lambda: server
        elif target == SSH_DEPLOY_USER:
            server = _deploy_user_sshd(lab)
            if server is None:
                return []
            env.fleet.sshd_factory = lambda: server
        hosts = env.add_hosts(n, "ssh" if target == SSH_DEPLOY_USER else target)
        if target == SSH_DEPLOY_USER:
            _hand_bases_to(hosts, DEPLOY_USER)

    def new_version(env, kind: str) -> int:
        if model == "big":
            return env.register_bundle(big_root / "big100", "big100", like="b", experiment="bench-fleet")
        return env.register(kind)

    out = []
    try:
        for env in envs.values():
            lab.set_env(env.env)
            env.promote(new_version(env, "a"))
            if env.deploy().status != "deployed":
                raise RuntimeError("the first deploy failed")
        for i in range(rounds):
            # the order of the sizes alternates by round: the one host always first had it always
            # deploy right after the previous mode's fleet (its servers still busy), the fleet never
            order = list(envs.items()) if i % 2 == 0 else list(reversed(envs.items()))
            for mode, flags in (("rollout", []), ("sequential", ["--parallel", "1", "--canary", "0"])):
                for n, env in order:
                    lab.set_env(env.env)
                    # each env alternates its own bundles (keyed on all deploys, the 1-host env
                    # always got "b" and the fleet always "c")
                    v = new_version(env, KINDS[sum(r["hosts"] == n for r in out) % 2])
                    env.promote(v)
                    out.append(_timed_deploy(env, model, target, n, mode, flags, i, v, log))
    finally:
        # the servers go back to the pool, reset (models unloaded), for the next cell: without it
        # every cell kept 9 more servers and their models in memory (a full run ran out of it)
        for env in envs.values():
            env.close()
    return out


def _timed_deploy(env, model: str, target: str, n_hosts: int, mode: str, flags: list[str], i: int, v: int,
                  log) -> dict:
    servers = [h.server.proc.pid for h in env.fleet.hosts]
    sshd = subreaper.sshd_pids(env.fleet.sshd()) if target != "file" else []
    busy0, srv0, cli0 = machine_busy_s(), process_cpu_s(servers), children_cpu_s()
    sshd0 = process_cpu_s(sshd, reaped_children=True)
    doc, t0, t1, r = _cli("sync", "deploy", "--json", "--bake", "0", *flags)
    busy, srv, cli = machine_busy_s() - busy0, process_cpu_s(servers) - srv0, children_cpu_s() - cli0
    # the sessions end as the CLI disconnects; their CPU counts once they are reaped (after the
    # timing, outside it; a fixed 0.3 s sleep missed a session still ending, or gave it to the next deploy)
    sessions_ended = subreaper.wait_sessions(env.fleet.sshd(), SESSIONS_TIMEOUT_S) if sshd else None
    sshd_cpu = process_cpu_s(sshd, reaped_children=True) - sshd0
    if r.returncode != 0:
        raise RuntimeError(f"deploy failed (exit {r.returncode}): {r.stderr[-2000:]}")
    # CPU: the whole machine (the CLI, the servers, sshd, MLflow) and the serving hosts' own
    # processes. busy / cores is the least wall time this machine could do it in: when the
    # wall time is near it, the hosts (here sharing 2 cores) are the bound, not the rollout.
    row = {"model": model, "target": target, "hosts": n_hosts, "mode": mode, "round": i, "version": v,
           "wall_s": round(t1 - t0, 3), "fleet_seconds": doc.get("seconds"),
           "cpu_busy_s": round(busy, 3), "server_cpu_s": round(srv, 3), "cli_cpu_s": round(cli, 3),
           "sshd_cpu_s": round(sshd_cpu, 3) if sshd else None, "sshd_sessions_ended": sessions_ended,
           "cpu_bound_s": round(busy / (os.cpu_count() or 1), 3),
           "timings": doc.get("timings"), "waves": doc.get("waves")}
    log(f"  {model} {target} x{n_hosts} {mode} round {i + 1}: {row['wall_s']}s (machine busy "
        f"{row['cpu_busy_s']} CPU-s, of which the {n_hosts} servers {row['server_cpu_s']}, the CLI {row['cli_cpu_s']}"
        + (f", sshd {row['sshd_cpu_s']})" if sshd else ")"))
    return row


def canary_breach(lab, bake: float, log, n_hosts: int = 3) -> dict:
    from tests.lab.models import CANARY_MODELS, build_models
    from tests.lab.traffic import HostLoad

    root = build_models(lab.root / "canary-bundles", CANARY_MODELS, timeout=900)
    env = lab.deploy_env()
    hosts = env.add_monitored_hosts(n_hosts)
    v1 = env.register("a")
    env.promote(v1)
    from serving_sync.options import DeployOptions
    if env.deploy(opts=DeployOptions(canary=0, json_mode=True)).status != "deployed":
        raise RuntimeError("the first deploy failed")
    v2 = env.register_bundle(root / "strict", "strict", like="b", experiment="bench-fleet")
    env.promote(v2)
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], foreign=True, max_seconds=300.0,
                  max_requests=60_000) as load:
        time.sleep(1.0)
        doc, t0, t1, r = _cli("sync", "deploy", "--json", "--bake", str(bake))
        time.sleep(1.0)
    canary = hosts[0].name
    refused = [t for t, h, c in load.samples if h == canary and c == 400 and t0 <= t <= t1]
    others = [(h, c) for t, h, c in load.samples if h != canary and c != 200]
    traffic = other_hosts_traffic(load.samples, [h.name for h in hosts], canary, t0, t1)
    first_refused = min(refused) if refused else None
    back = min((t for t, h, c in load.samples if h == canary and c == 200 and t > max(refused)), default=None) \
        if refused else None
    out = {"hosts": n_hosts, "exit_code": r.returncode, "bake_s": bake, "command_s": round(t1 - t0, 3),
           "breach_to_canary_back_s": round(back - first_refused, 3) if back else None,
           "breach_to_command_exit_s": round(t1 - first_refused, 3) if first_refused else None,
           "verdict": (doc.get("bake") or [{}])[0].get("line"),
           "non_200_on_other_hosts": len(others), "requests": len(load.samples),
           "other_hosts_traffic": traffic,
           "production_after": env.production(), "v1": v1}
    log(f"  canary breach: {out['verdict']}; canary back on the old version {out['breach_to_canary_back_s']}s "
        f"after its first refused answer (command exit after {out['breach_to_command_exit_s']}s); non-200 on "
        f"the other hosts: {out['non_200_on_other_hosts']}")
    return out


def other_hosts_traffic(samples, names: list[str], canary: str, t0: float, t1: float) -> dict:
    """Per host but the canary: answers received while the deploy ran (``[t0, t1]``) and after it
    exited; "zero non-200" is only a finding if both are > 0 for every such host (the load is
    bounded in count and time, and a client that stopped early answers no non-200 either)."""
    return {h: {"during_deploy": sum(1 for t, hh, _ in samples if hh == h and t0 <= t <= t1),
                "after_exit": sum(1 for t, hh, _ in samples if hh == h and t > t1)}
            for h in names if h != canary}


def summarize(rows: list[dict], n_hosts: int) -> dict:
    out = {}
    for model, target in CELLS:
        cell = {}
        for mode in ("rollout", "sequential"):
            for n in (1, n_hosts):
                mine = [r for r in rows if r["model"] == model and r["mode"] == mode and r["hosts"] == n
                        and r.get("target", "file") == target]
                if mine:
                    cell[f"{mode}_{n}_s"] = _setup.median([r["wall_s"] for r in mine])
                    if mode == "rollout":
                        for part in CPU_PARTS:
                            key = "cpu_busy_s" if part == "busy" else f"{part}_cpu_s"
                            got = [r[key] for r in mine if r.get(key) is not None]
                            if got:
                                cell[f"rollout_{n}_{part}_cpu_s"] = _setup.median(got)
        if cell.get("rollout_1_s") and cell.get(f"rollout_{n_hosts}_s"):
            cell["rollout_ratio"] = round(cell[f"rollout_{n_hosts}_s"] / cell["rollout_1_s"], 3)
        if n_hosts > 1:      # what each host added to the rollout costs, by where the CPU went
            per = {part: round((cell[f"rollout_{n_hosts}_{part}_cpu_s"] - cell[f"rollout_1_{part}_cpu_s"])
                               / (n_hosts - 1), 3)
                   for part in CPU_PARTS
                   if f"rollout_{n_hosts}_{part}_cpu_s" in cell and f"rollout_1_{part}_cpu_s" in cell}
            if per:
                cell["cpu_s_per_added_host"] = per
        if cell.get("sequential_1_s") and cell.get(f"sequential_{n_hosts}_s"):
            cell["sequential_ratio"] = round(cell[f"sequential_{n_hosts}_s"] / cell["sequential_1_s"], 3)
        if cell:
            out[_cell_name(model, target)] = cell
    return out


CELLS = (("tiny", "file"), ("tiny", "ssh"), ("tiny", SSH_DEPLOY_USER), ("big", "file"), ("big", "ssh"),
         ("big", SSH_DEPLOY_USER))


def _cell_name(model: str, target: str) -> str:
    return {"file": model, "ssh": f"{model} ssh", SSH_DEPLOY_USER: f"{model} ssh (deploy user)"}[target]


def verdicts(summary: dict, breach: dict | None, n_hosts: int) -> list[dict]:
    checks = []
    for model, key in ((_cell_name(m, t), f"{m}_ratio") for m, t in CELLS):
        if model not in summary:          # not measured in this run (--no-ssh, --big-mb 0, --rounds 0)
            continue
        v = (summary.get(model) or {}).get("rollout_ratio")
        checks.append({"target": f"{model} model: {n_hosts} hosts <= {TARGETS[key]:g}x one host (--bake 0)",
                       "value": v, "met": v is not None and v <= TARGETS[key]})
    if breach is not None:
        lim = breach["bake_s"] + TARGETS["breach_extra_s"]
        v = breach["breach_to_canary_back_s"]
        checks.append({"target": f"canary breach rolled back within bake + 5 s ({lim:g} s)", "value": v,
                       "met": v is not None and v <= lim and breach["exit_code"] == 3})
        traffic = breach.get("other_hosts_traffic") or {}
        sent = bool(traffic) and all(c["during_deploy"] > 0 and c["after_exit"] > 0 for c in traffic.values())
        checks.append({"target": "zero non-200 answers on the non-canary hosts", "value":
                       breach["non_200_on_other_hosts"], "met": breach["non_200_on_other_hosts"] == 0 and sent})
        if not sent:
            checks.append({"target": "requests answered on every non-canary host while the deploy ran and after "
                                     "it exited", "value": traffic, "met": False})
    return checks


def render(summary: dict, breach: dict | None, checks: list[dict], n_hosts: int) -> str:
    rows = []
    for model, c in summary.items():
        rows.append([model, c.get("rollout_1_s"), c.get(f"rollout_{n_hosts}_s"), c.get("rollout_ratio"),
                     c.get("sequential_1_s"), c.get(f"sequential_{n_hosts}_s"), c.get("sequential_ratio")])
    head = ["model", "1 host s", f"{n_hosts} hosts s", "ratio", "sequential 1 s", f"sequential {n_hosts} s",
            "seq. ratio"]
    lines = [_setup.table(head, rows), ""]
    cores = os.cpu_count() or 1
    for model, c in summary.items():
        if c.get(f"rollout_{n_hosts}_busy_cpu_s") is not None:
            lines.append(f"{model}: {n_hosts}-host rollout kept this machine busy {c[f'rollout_{n_hosts}_busy_cpu_s']} "
                         f"CPU-s (the servers {c[f'rollout_{n_hosts}_server_cpu_s']}; 1 host: "
                         f"{c.get('rollout_1_busy_cpu_s')} / {c.get('rollout_1_server_cpu_s')}): at least "
                         f"{c[f'rollout_{n_hosts}_busy_cpu_s'] / cores:.2f} s on {cores} cores")
            per = c.get("cpu_s_per_added_host") or {}
            if per:
                names = {"busy": "machine", "server": "its model server", "cli": "the deploying CLI",
                         "sshd": "sshd, its session and the commands it ran"}
                lines.append("  each added host: " + ", ".join(f"{names[k]} {v:+.3f}" for k, v in per.items())
                             + " CPU-s")
    if breach is not None:
        lines.append(f"canary breach: {breach['verdict']}; exit {breach['exit_code']}; the canary answered with "
                     f"the old version again {breach['breach_to_canary_back_s']}s after its first refused answer "
                     f"(command exit: {breach['breach_to_command_exit_s']}s; bake {breach['bake_s']:g}s); "
                     f"non-200 on the other hosts: {breach['non_200_on_other_hosts']}")
    lines += [f"{'met ' if c['met'] else 'MISSED'} {c['target']} (measured {c['value']})" for c in checks]
    return "\n".join(lines)


def cell_names() -> list[str]:
    return [_cell_name(m, t) for m, t in CELLS]


def run(*, rounds: int, n_hosts: int, big_mb: int, bake: float, ssh: bool = True, wait: float = 600.0,
        results_dir=None, cells: list[str] | None = None, breach_hosts: int = 3,
        command: str = "", log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    rows: list[dict] = []
    with _setup.Lab() as lab:
        big_root = lab.root / "big-bundle"
        big_root.mkdir()
        if big_mb:
            from tests.lab.models import ModelSpec, build_models

            build_models(big_root, [ModelSpec("big100", 7, pad=big_mb * 250_000)], timeout=900)
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        for model, target in CELLS:
            if model == "big" and not big_mb or target != "file" and not ssh or not rounds \
                    or cells and _cell_name(model, target) not in cells:
                continue
            rows += fleet_rounds(lab, (1, n_hosts), rounds, model, big_root, log, target)
        breach = canary_breach(lab, bake, log, breach_hosts) if bake else None
    summary = summarize(rows, n_hosts)
    checks = verdicts(summary, breach, n_hosts)
    doc = {"command": command or f"python -m benchmarks.bench_fleet --rounds {rounds} --hosts {n_hosts} "
                                 f"--big-mb {big_mb} --bake {bake:g}",
           "settings": {"rounds": rounds, "hosts": n_hosts, "big_mb": big_mb, "bake_s": bake,
                        "breach_hosts": breach_hosts, "cells": cells or cell_names(),
                        "targets": "file:// + local TF-Serving-compatible servers with gRPC reload"},
           "machine_at_start": started, "quiet_wait": quiet, "summary": summary, "canary_breach": breach,
           "targets": checks, "rounds": rows}
    name = "fleet" if rounds else "fleet_breach"        # --rounds 0: the canary breach alone
    return _setup.report(name, doc, render(summary, breach, checks, n_hosts), results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, tiny model only")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--big-mb", type=int, default=100, help="size of the big model's variable (0: skip)")
    ap.add_argument("--bake", type=float, default=2.0, help="bake of the canary-breach run (0: skip it)")
    ap.add_argument("--max-wait", type=float, default=600.0, help="wait at most S seconds for a quiet machine")
    ap.add_argument("--no-ssh", action="store_true", help="file:// hosts only")
    ap.add_argument("--breach-hosts", type=int, default=3, help="hosts of the canary-breach run (one is the canary)")
    ap.add_argument("--cell", action="append", choices=cell_names(), dest="cells",
                    help="measure only this cell (repeatable; default: every cell)")
    args = ap.parse_args(argv)
    rounds, big = (1, 0) if args.quick else (args.rounds, args.big_mb)
    run(rounds=rounds, n_hosts=args.hosts, big_mb=big, bake=args.bake, ssh=not args.no_ssh, wait=args.max_wait,
        cells=args.cells, breach_hosts=args.breach_hosts,
        command="python -m benchmarks.bench_fleet " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
