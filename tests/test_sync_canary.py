"""The canary bake against real services: local TF-Serving-compatible servers started with
``--monitoring_config_file`` (TF Serving's Prometheus page), the real MLflow server and ledger.

- a version whose live requests fail for inputs its golden set does not contain: only the canary
  switched, it is put back, production is back, exit 3, a ``canary`` ledger row with the numbers;
- a version much slower under concurrent load whose smoke test passes: the same;
- no traffic: the verdict follows ``--on-low-traffic``;
- a canary whose metrics cannot be read is refused before anything changes.

Fleets of 2 hosts, bakes of 1-2 s; every traffic loop is bounded in count and time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from registry.ledger import Ledger
from serving_sync.options import DeployOptions

# Two more versions with the weights of the fixture's "b" (so their outputs identify as b's):
# "strict" refuses inputs above 1.5 (its golden request is uniform in [0, 1): the smoke test passes),
# "slow" burns ~1.6 GFLOP (a few hundred milliseconds here) per request before answering the same outputs.
CANARY_BUILD = r'''
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf

out = Path(sys.argv[1])
SIG = {"serving_default": {"method_name": "tensorflow/serving/predict",
       "inputs": {"inputs": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
       "outputs": {"output_0": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}

class Model(tf.Module):
    def __init__(self, kind):
        self.w = tf.Variable(tf.random.stateless_normal([64, 10], seed=[2, 11]) * 0.5)
        self.b = tf.Variable(tf.random.stateless_normal([10], seed=[2, 12]) * 0.1)
        self.kind = kind
        self.m = tf.Variable(tf.random.stateless_normal([512, 512], seed=[5, 1]) * 0.01)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="inputs")])
    def serve(self, inputs):
        logits = tf.matmul(tf.reshape(inputs, [-1, 64]), self.w) + self.b
        if self.kind == "strict":
            tf.debugging.assert_less_equal(tf.reduce_max(inputs), 1.5, message="input out of range")
        if self.kind == "slow":
            y = self.m
            for _ in range(6):
                y = tf.tanh(tf.matmul(y, self.m))
            logits = logits + 0.0 * tf.reduce_sum(y)
        return {"output_0": tf.nn.softmax(logits)}

x = np.random.default_rng(0).uniform(0, 1, size=(4, 8, 8, 1)).astype(np.float32)
for kind in ("strict", "slow"):
    d = out / kind
    m = Model(kind)
    tf.saved_model.save(m, str(d / "tfserving"), signatures={"serving_default": m.serve})
    fn = tf.saved_model.load(str(d / "tfserving")).signatures["serving_default"]
    preds = fn(inputs=tf.constant(x))["output_0"].numpy()
    g = d / "golden"
    g.mkdir()
    (g / "request.json").write_text(json.dumps({"signature_name": "serving_default", "instances": x.tolist()}))
    (g / "response.json").write_text(json.dumps({"predictions": preds.tolist()}))
    (g / "signature.json").write_text(json.dumps(SIG))
'''

MONITORING = 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n'


@pytest.fixture(scope="module")
def canary_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary-bundles")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", CANARY_BUILD, str(root)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"building the canary bundles failed:\n{proc.stderr[-3000:]}"
    return root


def _register(env, root, kind: str) -> int:
    """Log ``root/kind`` as a run and register it (validation passed); its outputs are b's."""
    import mlflow

    from registry import versions
    from registry.client import tracking_client
    from registry.register import register_version

    client = tracking_client()
    exp = client.get_experiment_by_name("canary-fixture-versions")
    exp_id = exp.experiment_id if exp else client.create_experiment("canary-fixture-versions")
    with mlflow.start_run(run_name=f"{env.model}-{kind}", experiment_id=exp_id) as run:
        mlflow.log_artifacts(str(root / kind / "tfserving"), "tfserving")
        mlflow.log_artifacts(str(root / kind / "golden"), "golden")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    v = register_version(env.model, logged.model_uri, run_id=run.info.run_id, tags={"fixture_kind": kind})
    versions.set_tags(env.model, v, {"validation_status": "passed"})
    env.versions[v] = "b"
    return v


def _monitored_hosts(env, tmp_path, n=2):
    cfg = tmp_path / "monitoring.config"
    cfg.write_text(MONITORING)
    return env.add_hosts(n, "file", server_args=(f"--monitoring_config_file={cfg}",))


class Load:
    """``threads`` clients per host posting the golden request (and, with ``foreign``, every 4th
    request an input above anything in the golden set) until stopped; bounded in count and time.
    Non-200 answers are recorded per host."""

    def __init__(self, env, hosts, *, threads=1, foreign=False, max_seconds=240.0, max_requests=40_000):
        self.env, self.hosts, self.foreign = env, hosts, foreign
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.count = 0
        self.non_200: dict[str, list[str]] = {h.name: [] for h in hosts}
        self.stop_event = threading.Event()
        golden = env.bundles.golden("a")["request"]
        self.good = golden
        self.odd = {**golden, "instances": [[[[2.0] for _ in range(8)] for _ in range(8)]]}
        self.threads = [threading.Thread(target=self._loop, args=(h,), daemon=True)
                        for h in hosts for _ in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)

    def _loop(self, host) -> None:
        url = f"{host.rest_url}/v1/models/{self.env.model}:predict"
        deadline = time.monotonic() + self.max_seconds
        s = requests.Session()
        i = 0
        while not self.stop_event.is_set() and time.monotonic() < deadline and self.count < self.max_requests:
            i += 1
            self.count += 1
            body = self.odd if self.foreign and i % 4 == 0 else self.good
            try:
                r = s.post(url, json=body, timeout=20)
                if r.status_code != 200:
                    self.non_200[host.name].append(f"{r.status_code}: {r.text[:120]}")
            except requests.RequestException as exc:
                self.non_200[host.name].append(str(exc))
            time.sleep(0.002)


def _canary_rows(env, v):
    return [e for e in Ledger().entries(env.model, actions=("canary",)) if e.to_version == v]


def _first(env, hosts) -> int:
    v1 = env.register("a")
    env.promote(v1)
    r = env.deploy(opts=DeployOptions(timeout=60, json_mode=True, canary=0))
    assert r.status == "deployed", r.message
    return v1


def _check_rolled_back(env, hosts, v1, v2, res, what: str) -> dict:
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    canary, other = hosts
    assert [w["hosts"] for w in doc["waves"]] == [[canary.name]]          # only the canary switched
    verdict = doc["bake"][0]
    assert verdict["host"] == canary.name and verdict["outcome"] == "breached" and what in verdict["line"]
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert f"stopped after the canary: canary {canary.name}: " in last and what in last   # one line, with figures
    assert "rolled back" in last and "production moved back to v" in last
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1
    tags = env.tags(v2)
    assert tags["deploy_status"] == "failed" and tags["deploy_canary"] == "breached"
    rows = _canary_rows(env, v2)
    assert len(rows) == 1 and rows[0].outcome == "failed" and rows[0].host == canary.name
    assert rows[0].details["measurements"]["canary"]["requests"] >= 20
    return verdict


def test_canary_error_rate_breach_rolls_back_only_the_canary(deploy_env, canary_bundles, tmp_path):
    env = deploy_env
    hosts = _monitored_hosts(env, tmp_path)
    v1 = _first(env, hosts)
    v2 = _register(env, canary_bundles, "strict")
    env.promote(v2)
    with Load(env, hosts, foreign=True) as load:
        start = time.monotonic()
        res = env.cli("sync", "deploy", "--json", "--bake", "2", "--timeout", "60")
        took = time.monotonic() - start
    verdict = _check_rolled_back(env, hosts, v1, v2, res, "error rate")
    m = verdict["measurements"]
    assert m["canary"]["error_rate"] > 0.1 and m["before"]["error_rate"] == 0 and m["others"]["error_rate"] == 0
    assert load.non_200[hosts[1].name] == []          # the host that never switched never failed a request
    assert load.count > 100 and took < 120


def test_canary_latency_breach_rolls_back_only_the_canary(deploy_env, canary_bundles, tmp_path):
    env = deploy_env
    hosts = _monitored_hosts(env, tmp_path)
    v1 = _first(env, hosts)
    v2 = _register(env, canary_bundles, "slow")
    env.promote(v2)
    with Load(env, hosts, threads=3) as load:
        res = env.cli("sync", "deploy", "--json", "--bake", "3", "--timeout", "60", "--latency-budget-ms", "5000")
    verdict = _check_rolled_back(env, hosts, v1, v2, res, "latency")
    assert verdict["measurements"]["canary"]["error_rate"] == 0
    assert load.non_200[hosts[1].name] == []


def test_low_traffic_verdict_follows_on_low_traffic(deploy_env, tmp_path):
    env = deploy_env
    hosts = _monitored_hosts(env, tmp_path)
    v1 = _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    res = env.cli("sync", "deploy", "--json", "--bake", "1", "--on-low-traffic", "fail")
    assert res.returncode == 3, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["bake"][0]["outcome"] == "low_traffic_failed"
    assert "not enough traffic" in res.stderr and "--on-low-traffic fail" in res.stderr
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1
    v3 = env.register("c")
    env.promote(v3)
    res = env.cli("sync", "deploy", "--json", "--bake", "1")          # default: pass
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["bake"][0]["outcome"] == "low_traffic_passed" and doc["status"] == "deployed"
    for h in hosts:
        env.serves(h, v3)
    assert env.tags(v3)["deploy_canary"] == "low_traffic_passed"
    assert [r.outcome for r in _canary_rows(env, v3)] == ["passed"]


def test_canary_without_metrics_is_refused_before_anything_changes(deploy_env):
    env = deploy_env
    hosts = env.add_hosts(2, "file")                  # servers without --monitoring_config_file
    v1 = _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    before = [env.config_text(h) for h in hosts]
    res = env.cli("sync", "deploy", "--bake", "1")
    assert res.returncode != 0
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "cannot read TF Serving's metrics" in err[0] and "--bake 0" in err[0]
    assert [env.config_text(h) for h in hosts] == before
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v2                      # refused, not failed: nothing to move back
