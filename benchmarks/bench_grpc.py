"""(e) gRPC predict vs REST predict throughput on the digits model, on the local server.

    python -m benchmarks.bench_grpc [--quick] [--seconds 8] [--clients 1,4] [--batches 1,32]

The project's digits model (``mlproject.model.build_model``, trained 2 epochs on the digits base
set, exported with ``mlproject.export.export_saved_model``, in a TensorFlow subprocess) is served by
one local TF-Serving-compatible server (``python -m serving_host.local_server``, loopback only,
REST and gRPC on the same process). For each batch size (images per request) and number of
concurrent clients (threads of this process, each with its own keep-alive HTTP session; one
shared gRPC channel), the same images are sent back to back for ``--seconds`` (at most
``--max-requests`` per client) as

- REST: ``POST /v1/models/digits:predict`` with ``{"instances": ...}`` (JSON prepared once),
- gRPC: ``PredictionService.Predict`` with a ``PredictRequest`` (tensor prepared once),

and requests/s, images/s and p50/p99 latency are recorded; REST (the baseline) and gRPC of one
setting run one after the other. Before measuring, both APIs must return the same probabilities
for the same images. Writes ``benchmarks/results/grpc.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import _setup

MODEL = "digits"

_BUILD = r'''
import sys
from pathlib import Path
import numpy as np
from mlproject.datasets import load_partition
from mlproject.export import export_saved_model
from mlproject.model import build_model, fit, seed_everything
from mlproject.datasets import train_validation_split

out = Path(sys.argv[1])
seed_everything(0)
part = load_partition("digits")
train, val = train_validation_split(part.base, 0)
model = build_model(part.base.images.shape[1:], 10, 0.01)
fit(model, train, val, epochs=2, batch_size=64, seed=0, stream=sys.stderr)
export_saved_model(model, out / "1")
np.save(out.parent / "heldout.npy", np.asarray(part.heldout.images[:64], np.float32))
'''


def build_model_dir(root: Path) -> tuple[Path, object]:
    """The digits SavedModel at ``root/digits/1`` and 64 held-out images to send."""
    import numpy as np

    base = root / MODEL
    proc = subprocess.run([sys.executable, "-c", _BUILD, str(base)], capture_output=True, text=True, timeout=600,
                          cwd=_setup.REPO, env=_setup.mlops_env({"TF_CPP_MIN_LOG_LEVEL": "2",
                                                                  "CUDA_VISIBLE_DEVICES": ""}))
    if proc.returncode != 0:
        raise RuntimeError(f"building the digits SavedModel failed:\n{proc.stderr[-3000:]}")
    return base, np.load(root / "heldout.npy")


def input_alias(srv) -> str:
    import requests

    meta = requests.get(f"{srv.rest_url}/v1/models/{MODEL}/metadata", timeout=30).json()
    (alias,) = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    return alias


class Senders:
    """Prepared requests and one call per API (each returns the probabilities, row by row)."""

    def __init__(self, srv, alias: str):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.srv, self.alias = srv, alias
        self.channel = grpc.insecure_channel(srv.grpc_address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._local = threading.local()

    def close(self) -> None:
        self.channel.close()

    def rest_body(self, images) -> bytes:
        return json.dumps({"instances": images.tolist()}).encode()

    def grpc_request(self, images):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = MODEL
        req.inputs[self.alias].CopyFrom(tf.make_tensor_proto(images))
        return req

    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def rest(self, body: bytes) -> list:
        r = self._session().post(f"{self.srv.rest_url}/v1/models/{MODEL}:predict", data=body, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"REST predict answered {r.status_code}: {r.text[:200]}")
        return r.json()["predictions"]

    def grpc(self, request) -> list:
        import tensorflow as tf

        response = self.stub.Predict(request, 30)
        (out,) = response.outputs.values()
        return tf.make_ndarray(out).tolist()


def measure(call, payload, *, clients: int, seconds: float, max_requests: int) -> dict:
    """``clients`` threads calling ``call(payload)`` back to back; bounded in count and time."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start_gate = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        start_gate.wait()
        end = time.monotonic() + seconds
        mine = latencies[i]
        while len(mine) < max_requests and time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                call(payload)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(timeout=seconds + 60)
    wall = time.monotonic() - t0
    flat = [x for per in latencies for x in per]
    return {"requests": len(flat), "seconds": round(wall, 3), "errors": len(errors), "first_error": errors[:1],
            "requests_per_s": round(len(flat) / wall, 1) if wall > 0 else None,
            "p50_ms": round(_setup.percentile(flat, 50) * 1000, 3) if flat else None,
            "p99_ms": round(_setup.percentile(flat, 99) * 1000, 3) if flat else None}


def same_outputs(senders: Senders, images, atol: float = 1e-6) -> bool:
    rest = senders.rest(senders.rest_body(images))
    grpc_out = senders.grpc(senders.grpc_request(images))
    return len(rest) == len(grpc_out) and all(
        abs(a - b) <= atol for ra, rb in zip(rest, grpc_out) for a, b in zip(ra, rb))


def bench(senders: Senders, images, *, batches: list[int], clients: list[int], seconds: float,
          max_requests: int, log=lambda s: None) -> list[dict]:
    rows = []
    for batch in batches:
        x = images[:batch]
        payloads = {"REST": (senders.rest, senders.rest_body(x)), "gRPC": (senders.grpc, senders.grpc_request(x))}
        for n in clients:
            for api, (call, payload) in payloads.items():
                call(payload)  # one untimed call: connections open
                m = measure(call, payload, clients=n, seconds=seconds, max_requests=max_requests)
                m.update(api=api, batch=batch, clients=n,
                         images_per_s=round(m["requests_per_s"] * batch, 1) if m["requests_per_s"] else None)
                log(f"  {api:4} batch {batch:3} clients {n}: {m['requests_per_s']} req/s, p50 {m['p50_ms']} ms, "
                    f"p99 {m['p99_ms']} ms, {m['errors']} errors")
                rows.append(m)
    return rows


def verdicts(rows: list[dict], same: bool) -> list[dict]:
    checks = [{"target": "gRPC and REST return the same probabilities", "value": same, "met": same}]
    errors = sum(r["errors"] for r in rows)
    checks.append({"target": "0 failed requests", "value": errors, "met": errors == 0})
    return checks


def render(rows: list[dict], checks: list[dict]) -> str:
    rest = {(r["batch"], r["clients"]): r for r in rows if r["api"] == "REST"}
    table_rows = []
    for r in rows:
        base = rest.get((r["batch"], r["clients"]))
        ratio = (round(r["requests_per_s"] / base["requests_per_s"], 2)
                 if r["api"] == "gRPC" and base and base["requests_per_s"] and r["requests_per_s"] else None)
        table_rows.append([r["api"], r["batch"], r["clients"], r["requests"], r["requests_per_s"], r["images_per_s"],
                           r["p50_ms"], r["p99_ms"], ratio])
    head = ["api", "batch", "clients", "requests", "req/s", "images/s", "p50 ms", "p99 ms", "vs REST"]
    lines = [_setup.table(head, table_rows), ""]
    lines += [f"{'met ' if c['met'] else 'MISSED'} {c['target']} (measured {c['value']})" for c in checks]
    return "\n".join(lines)


def run(*, seconds: float, clients: list[int], batches: list[int], max_requests: int = 100_000,
        wait: float = 600.0, results_dir=None, command: str = "",
        log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    from tests.lab.tfserving import make_factory

    root = Path(tempfile.mkdtemp(prefix="mlops-bench-grpc-"))
    factory, handles = make_factory(root / "servers")
    (root / "servers").mkdir(parents=True, exist_ok=True)
    senders = None
    try:
        base, images = build_model_dir(root)
        config = (f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" '
                  'model_platform: "tensorflow" } }\n')
        srv = factory(root / "serving", config)
        srv.wait_for_state(MODEL, 1, "AVAILABLE")
        senders = Senders(srv, input_alias(srv))
        same = same_outputs(senders, images[:8])
        quiet = _setup.wait_for_quiet(max_wait=wait, log=log) if wait else None
        started = _setup.machine()
        rows = bench(senders, images, batches=batches, clients=clients, seconds=seconds,
                     max_requests=max_requests, log=log)
    finally:
        if senders is not None:
            senders.close()
        for h in handles:
            h.stop()
        shutil.rmtree(root, ignore_errors=True)      # the model, the held-out set, the servers' folders
    checks = verdicts(rows, same)
    doc = {"command": command or f"python -m benchmarks.bench_grpc --seconds {seconds:g}",
           "settings": {"seconds_per_setting": seconds, "clients": clients, "batches": batches,
                        "max_requests_per_client": max_requests,
                        "model": "digits (mlproject build_model, 2 epochs, Keras export), input float32 [N,8,8,1]",
                        "server": "local TF-Serving-compatible server, REST + gRPC in one process, 127.0.0.1",
                        "client": "threads of one Python process: requests.Session per thread (REST), one "
                                  "grpc channel (gRPC); request bodies prepared once"},
           "machine_at_start": started, "quiet_wait": quiet, "rows": rows, "targets": checks}
    return _setup.report("grpc", doc, render(rows, checks), results_dir)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_grpc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1-second settings, 1 client, batch 1")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each setting (default 8)")
    ap.add_argument("--clients", type=_ints, default=[1, 4], help="comma-separated client counts (default 1,4)")
    ap.add_argument("--batches", type=_ints, default=[1, 32], help="comma-separated images per request (default 1,32)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="bound per client and setting (default 100000)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.clients, args.batches = 1.0, [1], [1]
    doc = run(seconds=args.seconds, clients=args.clients, batches=args.batches, max_requests=args.max_requests,
              wait=0 if args.no_wait else 600.0,
              command="python -m benchmarks.bench_grpc " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0 if all(t["met"] for t in doc["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
