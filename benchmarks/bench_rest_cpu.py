"""The local server's CPU per REST request: predict and model status, one keep-alive connection.

    python -m benchmarks.bench_rest_cpu [--requests 500] [--rounds 3] [--baseline /path/to/checkout]

One local TF-Serving-compatible server (``python -m serving_host.local_server``, loopback, REST
only used) serves the project's digits model (``bench_grpc.build_model_dir``: ``build_model``, 2
epochs, Keras export; one instance is 8x8x1 = 64 floats). Per round, over ONE keep-alive
connection (``http.client``), ``--requests`` ``POST /v1/models/digits:predict`` with one instance
(body prepared once), then as many ``GET /v1/models/digits``; the figure is the server process's
user+system CPU (``/proc/<pid>/stat``) over the phase divided by the number of requests. The
median of ``--rounds`` rounds is reported. With ``--baseline <checkout>`` a second server is
started from that tree (cwd and PYTHONPATH of it) on the same model, and the rounds of the two
are interleaved (baseline, this, baseline, this...), so both see the same machine. Writes
``benchmarks/results/rest_cpu.json``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _setup
from benchmarks.bench_grpc import MODEL, build_model_dir

START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m serving_host.local_server`` started from ``tree`` (its cwd and PYTHONPATH)."""

    def __init__(self, tree: Path, config: Path, log_path: Path):
        self.tree, self.port = tree, _free_port()
        env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving_host.local_server", f"--rest_api_port={self.port}",
                 f"--port={_free_port()}", f"--model_config_file={config}"],
                cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server from {tree} exited: {log_path.read_text()[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", f"/v1/models/{MODEL}")
                r = c.getresponse()
                text = r.read().decode()
                c.close()
                if r.status == 200 and '"AVAILABLE"' in text:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server from {tree} not AVAILABLE in {START_TIMEOUT:.0f}s")

    def cpu_s(self) -> float:
        return _setup.process_cpu_s([self.proc.pid])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def phase(srv: Server, method: str, path: str, body: bytes | None, n: int) -> dict:
    """``n`` requests over one keep-alive connection: server CPU ms per request, wall ms per request."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)     # warm the connection (not counted)
    first = conn.getresponse()
    first_body = first.read()
    if first.status != 200:
        raise RuntimeError(f"{method} {path} answered {first.status}: {first_body[:200]!r}")
    time.sleep(0.05)
    cpu0, t0 = srv.cpu_s(), time.perf_counter()
    for _ in range(n):
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or data != first_body:
            raise RuntimeError(f"{method} {path} answered {r.status} {data[:200]!r}")
    wall = time.perf_counter() - t0
    time.sleep(0.05)        # let the last request's accounting land
    cpu = srv.cpu_s() - cpu0
    conn.close()
    return {"server_cpu_ms": 1000 * cpu / n, "wall_ms": 1000 * wall / n, "body": first_body}


def run(*, n: int, rounds: int, baseline: Path | None, wait: float = 0.0, results_dir=None, command: str = "",
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mlops-bench-restcpu-"))
    servers: dict[str, Server] = {}
    try:
        base, images = build_model_dir(root)
        config = root / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" '
                          'model_platform: "tensorflow" } }\n')
        trees = {"this": _setup.REPO}
        if baseline is not None:
            trees = {"baseline": baseline.resolve(), "this": _setup.REPO}
        for name, tree in trees.items():
            servers[name] = Server(tree, config, root / f"{name}.log")
        body = json.dumps({"instances": images[:1].tolist()}).encode()
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        samples: dict[str, dict[str, list]] = {k: {"predict": [], "status": []} for k in servers}
        answers: dict[str, set] = {}      # each kind's bodies: the two servers must answer byte for byte alike
        for i in range(rounds):
            for name, srv in servers.items():
                p = phase(srv, "POST", f"/v1/models/{MODEL}:predict", body, n)
                s = phase(srv, "GET", f"/v1/models/{MODEL}", None, n)
                answers.setdefault("predict", set()).add(p.pop("body"))
                answers.setdefault("status", set()).add(s.pop("body"))
                samples[name]["predict"].append(p)
                samples[name]["status"].append(s)
                log(f"round {i + 1} {name}: predict {p['server_cpu_ms']:.3f} ms CPU ({p['wall_ms']:.3f} ms wall), "
                    f"status {s['server_cpu_ms']:.3f} ms CPU ({s['wall_ms']:.3f} ms wall)")
        for kind, bodies in answers.items():
            if len(bodies) != 1:
                raise RuntimeError(f"the servers answered {kind} differently: {sorted(bodies)!r:.600}")
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for name in servers:
        row = {"server": name, "tree": str(trees[name]), "commit": _setup.git_commit(trees[name])}
        for kind in ("predict", "status"):
            row[f"{kind}_cpu_ms"] = _setup.median([x["server_cpu_ms"] for x in samples[name][kind]])
            row[f"{kind}_wall_ms"] = _setup.median([x["wall_ms"] for x in samples[name][kind]])
        rows.append(row)
    conditions = (f"{n} requests per phase over one keep-alive http.client connection, median of {rounds} rounds"
                  f"{' interleaved with the baseline' if baseline else ''}; digits model, 1 instance of 64 "
                  f"floats; server CPU = utime+stime of the server process; load avg at start "
                  f"{started.get('load_average')}")
    doc = {"command": command or (f"python -m benchmarks.bench_rest_cpu --requests {n} --rounds {rounds}"
                                  + (f" --baseline {baseline}" if baseline else "")),
           "conditions": conditions, "machine_at_start": started, "quiet_wait": quiet, "rows": rows,
           "samples": samples}
    table = _setup.table(["server", "commit", "predict CPU ms", "predict wall ms", "status CPU ms", "status wall ms"],
                         [[r["server"], (r["commit"] or "")[:12], f"{r['predict_cpu_ms']:.3f}",
                           f"{r['predict_wall_ms']:.3f}", f"{r['status_cpu_ms']:.3f}", f"{r['status_wall_ms']:.3f}"]
                          for r in rows])
    if baseline is not None:
        b, t = rows

        def ratio(kind: str) -> str:      # a short run can see no CPU tick at all
            return f"{t[kind] / b[kind]:.2f}x" if b[kind] else "n/a"
        table += f"\nthis / baseline: predict CPU {ratio('predict_cpu_ms')}, status CPU {ratio('status_cpu_ms')}"
    table += f"\nconditions: {conditions}"
    return _setup.report("rest_cpu", doc, table, results_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_rest_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=500, help="requests per phase (default 500)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    p.add_argument("--baseline", type=Path, help="another checkout to measure in the same run, interleaved")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for a quiet machine")
    a = p.parse_args(argv)
    if a.requests < 1 or a.rounds < 1:
        p.error("--requests and --rounds must be at least 1")
    if a.baseline is not None and not (a.baseline / "serving_host" / "rest.py").is_file():
        p.error(f"--baseline {a.baseline}: not a checkout of this project (no serving_host/rest.py)")
    run(n=a.requests, rounds=a.rounds, baseline=a.baseline, wait=a.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
