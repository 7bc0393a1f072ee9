"""(a) Publish throughput over SSH: the project's publish vs ``scp -r``, ``rsync -a`` and
file-by-file paramiko SFTP ``put``, same run, same files, on a loopback OpenSSH ``sshd``.

    python -m benchmarks.bench_publish [--quick] [--sizes-mb 50,300] [--many-files 2000] [--repeats 3]

Models: real SavedModels made here in a TensorFlow subprocess — one with a ~50 MB and one with
a ~300 MB variable (random, so incompressible), and one with ~2,000 small asset files
(``tf.saved_model.Asset``). Targets (issue 7): large models at >= 0.8x the throughput of scp;
the many-files model >= 3x faster than SFTP put and no slower than rsync; publishing a version
that is already present transfers 0 bytes.

Every method is timed end to end as a user would see it: connect, authenticate, transfer (and,
for ours, extract + hash on the host; ``publish`` adds the existence check, the manifest and the
rename). ``ours_upload`` is the bare upload (tar stream + host-side hashes) without publish's
bookkeeping. Methods run interleaved, ``--repeats`` rounds, median reported. The destination is
a tmpfs (``/dev/shm``) so disk noise does not swamp the comparison (``--dest-root`` to change).

Run as root, the benchmark logs in as a dedicated user ``mlopsbench`` with ``/bin/sh`` and no
home (created, then removed), like a production deploy user: root's own ``~/.bashrc`` (sourced
by bash for every SSH command) would otherwise add its start-up time to every method that runs a
remote command (scp, rsync, ours) but not to SFTP put. ``--user root`` to keep root.

Writes ``benchmarks/results/publish.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _setup

METHODS = ("scp", "rsync", "sftp_put", "ours_upload", "ours_publish", "ours_already_present")
TARGETS = {"large_vs_scp_throughput": 0.8, "many_speedup_vs_sftp_put": 3.0, "many_time_vs_rsync": 1.0}

_MAKE_SAVEDMODELS = r'''
import sys
from pathlib import Path
import tensorflow as tf

out, sizes, many = Path(sys.argv[1]), [int(x) for x in sys.argv[2].split(",") if x], int(sys.argv[3])

class Big(tf.Module):
    def __init__(self, n):
        self.w = tf.Variable(tf.random.stateless_uniform([n], seed=[n % 1000, 7]))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="inputs")])
    def serve(self, inputs):
        return {"output_0": inputs * self.w[:4]}

class Assets(tf.Module):
    def __init__(self, files):
        self.w = tf.Variable(tf.random.stateless_uniform([1000], seed=[1, 2]))
        self.assets = [tf.saved_model.Asset(str(f)) for f in files]

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="inputs")])
    def serve(self, inputs):
        return {"output_0": inputs * self.w[:4]}

for mb in sizes:
    m = Big(mb * 1_000_000 // 4)
    tf.saved_model.save(m, str(out / f"large_{mb}mb"), signatures={"serving_default": m.serve})
if many:
    src = out / "_asset_src"
    src.mkdir()
    files = []
    for i in range(many):
        f = src / f"vocab-{i:05d}.txt"
        f.write_text("\n".join(f"token_{i}_{k}" for k in range(40 + i % 80)))
        files.append(f)
    m = Assets(files)
    tf.saved_model.save(m, str(out / f"many_{many}_files"), signatures={"serving_default": m.serve})
'''


def make_savedmodels(root: Path, sizes_mb: list[int], many_files: int) -> dict[str, Path]:
    """Real SavedModels (TensorFlow subprocess): ``large_<N>mb`` and ``many_<N>_files``."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _MAKE_SAVEDMODELS, str(root), ",".join(map(str, sizes_mb)),
                           str(many_files)], capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"making the benchmark SavedModels failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(root / "_asset_src", ignore_errors=True)
    names = [f"large_{mb}mb" for mb in sizes_mb] + ([f"many_{many_files}_files"] if many_files else [])
    return {n: root / n for n in names}


def make_dataset(root: Path, kind: str, size_mb: int = 50, files: int = 2000) -> Path:
    """A SavedModel-shaped folder of random bytes without TensorFlow (the harness check):
    ``large`` (one big variables file) or ``many`` (``files`` small assets)."""
    rnd = os.urandom
    (root / "variables").mkdir(parents=True, exist_ok=True)
    (root / "assets").mkdir(exist_ok=True)
    (root / "saved_model.pb").write_bytes(rnd(200_000))
    (root / "variables" / "variables.index").write_bytes(rnd(4_000))
    if kind == "large":
        with open(root / "variables" / "variables.data-00000-of-00001", "wb") as f:
            for _ in range(size_mb):
                f.write(rnd(1_000_000))
    else:
        (root / "variables" / "variables.data-00000-of-00001").write_bytes(rnd(1_000_000))
        for i in range(files):
            (root / "assets" / f"token-{i:05d}.txt").write_bytes(rnd(2_000 + i))
    return root


# --- the methods ----------------------------------------------------------------------------
def _ssh_opts(sshd) -> list[str]:
    return ["-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-i", str(sshd.identity_file)]


def run_scp(sshd, src: Path, dest: Path) -> None:
    subprocess.run(["scp", "-q", "-r", *_ssh_opts(sshd), "-P", str(sshd.port), str(src),
                    f"{sshd.user}@127.0.0.1:{dest}"], check=True, timeout=600)


def run_rsync(sshd, src: Path, dest: Path) -> None:
    ssh = " ".join(["ssh", *_ssh_opts(sshd), "-p", str(sshd.port)])
    subprocess.run(["rsync", "-a", "-e", ssh, f"{src}/", f"{sshd.user}@127.0.0.1:{dest}/"], check=True,
                   timeout=600)


def _target(sshd, base: Path):
    from serving_sync.hosts import Target

    return Target("ssh", str(base), host="127.0.0.1", port=sshd.port, user=sshd.user)


def _connect(sshd, base: Path):
    from serving_sync.transports.ssh import SshTransport

    return SshTransport.connect(_target(sshd, base), known_hosts=sshd.known_hosts,
                                identity_file=sshd.identity_file)


def run_sftp_put(sshd, src: Path, dest: Path) -> None:
    """Plain paramiko: SFTPClient.put file by file (what a straightforward implementation does)."""
    t = _connect(sshd, dest.parent)
    try:
        sftp = t.sftp
        sftp.mkdir(str(dest))
        for d in sorted(p for p in src.rglob("*") if p.is_dir()):
            sftp.mkdir(str(dest / d.relative_to(src)))
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            sftp.put(str(f), str(dest / f.relative_to(src)))
    finally:
        t.close()


def run_ours_upload(sshd, src: Path, dest: Path, manifest) -> None:
    """Our tar stream (extract + host-side hashes included)."""
    t = _connect(sshd, dest.parent)
    try:
        t.upload_tree(src, dest.name, manifest)
    finally:
        t.close()


def run_ours_publish(sshd, src: Path, dest: Path, manifest) -> dict:
    """Full publish: exists check, upload to .incoming, host hashes, manifest, rename."""
    from serving_sync.publish import publish

    t = _connect(sshd, dest)
    try:
        return publish(t, "bench", 1, src, manifest).to_dict()
    finally:
        t.close()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bench(sshd, datasets: dict[str, Path], dest_root: Path, repeats: int, check: bool = False,
          log=lambda s: None) -> dict:
    """Every method on every data set, ``repeats`` interleaved rounds; raw seconds per method."""
    from serving_sync import manifest as mf

    results: dict = {}
    for name, src in datasets.items():
        manifest = mf.build(src)
        times: dict[str, list[float]] = {k: [] for k in METHODS}
        present_bytes: list[int] = []
        for rnd in range(repeats):
            for method in METHODS:
                dest_parent = Path(tempfile.mkdtemp(dir=dest_root))
                st = os.stat(dest_root)
                os.chown(dest_parent, st.st_uid, st.st_gid)   # writable by the login user
                dest = dest_parent / "copy"
                if method == "ours_already_present":
                    run_ours_publish(sshd, src, dest, manifest)
                start = time.perf_counter()
                if method == "scp":
                    run_scp(sshd, src, dest)
                elif method == "rsync":
                    run_rsync(sshd, src, dest)
                elif method == "sftp_put":
                    run_sftp_put(sshd, src, dest)
                elif method == "ours_upload":
                    run_ours_upload(sshd, src, dest, manifest)
                else:
                    r = run_ours_publish(sshd, src, dest, manifest)
                    if method == "ours_already_present":
                        present_bytes.append(r["bytes_transferred"])
                        if r["status"] != "already_present":
                            raise AssertionError(f"publishing {name} again did not find it present: {r}")
                elapsed = time.perf_counter() - start
                times[method].append(elapsed)
                log(f"  {name} round {rnd + 1}/{repeats}: {method} {elapsed:.3f}s")
                if check:
                    copy = dest / "bench" / "1" if method.startswith("ours_publish") or \
                        method == "ours_already_present" else dest
                    if _tree(copy) != _tree(src):
                        raise AssertionError(f"{method} produced an incomplete copy of {name}")
                shutil.rmtree(dest_parent, ignore_errors=True)
        results[name] = {"mb": round(manifest.total_size / 1e6, 1), "files": len(manifest.files),
                         "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
                         "already_present_bytes": present_bytes}
    return results


# --- pure: summary, verdicts, table ----------------------------------------------------------
def summarize(raw: dict) -> dict:
    """Medians, throughputs and the ratios the targets talk about, per data set."""
    out = {}
    for name, r in raw.items():
        med = {k: statistics.median(v) for k, v in r["seconds"].items()}
        mb = r["mb"]
        out[name] = {
            "mb": mb, "files": r["files"],
            "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "mb_per_s": {k: round(mb / v, 1) for k, v in med.items() if k != "ours_already_present" and v > 0},
            "ours_publish_vs_scp_throughput": round(med["scp"] / med["ours_publish"], 2),
            "ours_upload_vs_scp_throughput": round(med["scp"] / med["ours_upload"], 2),
            "sftp_put_vs_scp_throughput": round(med["scp"] / med["sftp_put"], 2),
            "ours_publish_speedup_vs_sftp_put": round(med["sftp_put"] / med["ours_publish"], 2),
            "ours_publish_vs_rsync_time": round(med["ours_publish"] / med["rsync"], 2),
            "already_present_bytes": max(r["already_present_bytes"], default=None),
        }
    return out


def verdicts(summary: dict) -> list[dict]:
    """Each target of issue 7 with the measured value and whether it was met."""
    out = []
    for name, s in summary.items():
        if name.startswith("large"):
            out.append({"model": name, "target": f"publish >= {TARGETS['large_vs_scp_throughput']}x scp throughput",
                        "value": s["ours_publish_vs_scp_throughput"],
                        "met": s["ours_publish_vs_scp_throughput"] >= TARGETS["large_vs_scp_throughput"]})
        else:
            out.append({"model": name, "target": f"publish >= {TARGETS['many_speedup_vs_sftp_put']}x faster than "
                                                  f"SFTP put", "value": s["ours_publish_speedup_vs_sftp_put"],
                        "met": s["ours_publish_speedup_vs_sftp_put"] >= TARGETS["many_speedup_vs_sftp_put"]})
            out.append({"model": name, "target": "publish time <= rsync time",
                        "value": s["ours_publish_vs_rsync_time"],
                        "met": s["ours_publish_vs_rsync_time"] <= TARGETS["many_time_vs_rsync"]})
        out.append({"model": name, "target": "already present: 0 bytes", "value": s["already_present_bytes"],
                    "met": s["already_present_bytes"] == 0})
    return out


def render(summary: dict, checks: list[dict]) -> str:
    rows = []
    for name, s in summary.items():
        m = s["median_seconds"]
        rows.append([name, s["mb"], s["files"], m["scp"], m["rsync"], m["sftp_put"], m["ours_upload"],
                     m["ours_publish"], m["ours_already_present"], s["ours_publish_vs_scp_throughput"],
                     s["ours_publish_speedup_vs_sftp_put"], s["ours_publish_vs_rsync_time"],
                     s["already_present_bytes"]])
    head = ["model", "MB", "files", "scp s", "rsync s", "sftp put s", "ours upload s", "ours publish s",
            "present s", "vs scp (thrpt)", "vs sftp (speedup)", "vs rsync (time)", "present bytes"]
    lines = [_setup.table(head, rows), ""]
    lines += [f"{'met ' if c['met'] else 'MISSED'} {c['model']}: {c['target']} (measured {c['value']})"
              for c in checks]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------
def run(*, sizes_mb: list[int], many_files: int, repeats: int, dest_root: str | None, user: str | None,
        synthetic: bool = False, wait: float = 600.0, results_dir: Path | None = None, command: str = "",
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    from tests.fixtures.sshd import _ensure_user, keygen, start_sshd

    if shutil.which("rsync") is None or shutil.which("scp") is None:
        raise SystemExit("error: `rsync` and `scp` are needed; install the Debian packages rsync and "
                         "openssh-client (`make system-deps`)")
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    os.chmod(work, 0o755)
    dest_root_path = Path(tempfile.mkdtemp(prefix="bench-publish-dest-", dir=dest_root))
    server = None
    created_user = False
    try:
        if user and user != "root" and os.geteuid() == 0:
            import pwd

            created_user = _ensure_user(user)
            pw = pwd.getpwnam(user)
            os.chown(dest_root_path, pw.pw_uid, pw.pw_gid)
        key = work / "id_ed25519"
        server = start_sshd(work / "sshd", user_key=(key, keygen(key)), user=user)
        log("making the models" + (" (synthetic files)" if synthetic else " (real SavedModels, TensorFlow)"))
        if synthetic:
            datasets = {f"large_{mb}mb": make_dataset(work / f"large{mb}", "large", mb) for mb in sizes_mb}
            if many_files:
                datasets[f"many_{many_files}_files"] = make_dataset(work / "many", "many", files=many_files)
        else:
            datasets = make_savedmodels(work / "models", sizes_mb, many_files)
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        raw = bench(server, datasets, dest_root_path, repeats, log=log)
        summary = summarize(raw)
        checks = verdicts(summary)
        doc = {"command": command or "python -m benchmarks.bench_publish",
               "settings": {"sizes_mb": sizes_mb, "many_files": many_files, "repeats": repeats,
                            "dest_root": str(dest_root_path), "login_user": server.user,
                            "models": "synthetic" if synthetic else "savedmodel"},
               "machine_at_start": started, "quiet_wait": quiet, "summary": summary, "targets": checks,
               "raw": raw}
        return _setup.report("publish", doc, render(summary, checks), results_dir)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest_root_path, ignore_errors=True)
        if created_user:
            subprocess.run(["userdel", user], capture_output=True, timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_publish",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 MB + the many-files model, one round")
    ap.add_argument("--sizes-mb", default="50,300", help="large model sizes in MB (default 50,300)")
    ap.add_argument("--many-files", type=int, default=2000, help="asset files of the many-files model (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--dest-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the copies land (default /dev/shm)")
    ap.add_argument("--user", default="mlopsbench" if os.geteuid() == 0 else None,
                    help="login user on the benchmark sshd (default: a dedicated user when root)")
    ap.add_argument("--synthetic", action="store_true", help="random files shaped like a SavedModel (no TensorFlow)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    sizes = [50] if args.quick else [int(x) for x in args.sizes_mb.split(",") if x]
    repeats = 1 if args.quick else args.repeats
    run(sizes_mb=sizes, many_files=args.many_files, repeats=repeats, dest_root=args.dest_root, user=args.user,
        synthetic=args.synthetic, wait=0 if args.no_wait else 600.0,
        command=f"python -m benchmarks.bench_publish --sizes-mb {','.join(map(str, sizes))} "
                f"--many-files {args.many_files} --repeats {repeats}" + (" --synthetic" if args.synthetic else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
