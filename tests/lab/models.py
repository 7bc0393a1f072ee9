"""Tiny real SavedModels for the lab, built in a TensorFlow subprocess (the test process never
imports TensorFlow).

Every model has the digits-shaped signature: float32 ``[-1, 8, 8, 1]`` ``inputs`` -> softmax
``[-1, 10]`` ``output_0``. ``build_models(root, specs)`` writes, for each :class:`ModelSpec`,
``root/<name>/tfserving/`` (the SavedModel) and ``root/<name>/golden/{request,response,signature}.json``
(4 inputs uniform in [0, 1) and the model's own outputs for them): the run-artifact layout.

A spec's ``seed`` picks the weights, so models built with different seeds answer differently
(``tests.lab.traffic.identify`` tells them apart) and models with the same seed answer the same.
``pad`` adds a float32 variable of that many elements (4 bytes each) that the outputs do not use;
``kind`` changes how it serves without changing its outputs on the golden request:
``"strict"`` refuses inputs above 1.5, ``"slow"`` burns ~1.6 GFLOP per request first, ``"stall"``
sleeps 1 s on inputs above 1.5 (tf.data's sleep: no CPU burnt).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.helpers import REPO

BUILD_SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing

out, specs = Path(sys.argv[1]), json.loads(sys.argv[2])
SIG = {"serving_default": {"method_name": "tensorflow/serving/predict",
       "inputs": {"inputs": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
       "outputs": {"output_0": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}

class Tiny(tf.Module):
    def __init__(self, seed, pad, kind):
        self.w = tf.Variable(tf.random.stateless_normal([64, 10], seed=[seed, 11]) * 0.5)
        self.b = tf.Variable(tf.random.stateless_normal([10], seed=[seed, 12]) * 0.1)
        self.pad = tf.Variable(tf.random.stateless_uniform([pad], seed=[seed, 13])) if pad else None
        self.kind = kind
        self.m = tf.Variable(tf.random.stateless_normal([512, 512], seed=[5, 1]) * 0.01) if kind else None

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
        if self.kind == "stall":
            us = tf.cast(tf.reduce_max(inputs) > 1.5, tf.int64) * 1_000_000
            slept = tf.data.Dataset.range(1).apply(tf_data_testing.sleep(us)).reduce(
                tf.constant(0, tf.int64), lambda a, b: a + b)
            logits = logits + 0.0 * tf.cast(slept, tf.float32)
        return {"output_0": tf.nn.softmax(logits)}

x = np.random.default_rng(0).uniform(0, 1, size=(4, 8, 8, 1)).astype(np.float32)
for spec in specs:
    d = out / spec["name"]
    m = Tiny(spec["seed"], spec["pad"], spec["kind"])
    tf.saved_model.save(m, str(d / "tfserving"), signatures={"serving_default": m.serve})
    fn = tf.saved_model.load(str(d / "tfserving")).signatures["serving_default"]
    preds = fn(inputs=tf.constant(x))["output_0"].numpy()
    g = d / "golden"
    g.mkdir()
    (g / "request.json").write_text(json.dumps({"signature_name": "serving_default", "instances": x.tolist()}))
    (g / "response.json").write_text(json.dumps({"predictions": preds.tolist()}))
    (g / "signature.json").write_text(json.dumps(SIG))
'''


@dataclass(frozen=True)
class ModelSpec:
    name: str
    seed: int
    pad: int = 0                 # elements of an unused float32 variable (size, not behaviour)
    kind: str | None = None      # None | "strict" | "slow" | "stall"


# The deploy tests' versions: three with different weights, and "big" (a 3 MB variable).
DEPLOY_MODELS = (ModelSpec("a", 1), ModelSpec("b", 2), ModelSpec("c", 3), ModelSpec("big", 4, pad=750_000))
# Two more with b's weights (their outputs identify as b's): "strict" refuses inputs above 1.5 (its
# golden request is uniform in [0, 1): the smoke test passes), "slow" answers the same, slowly,
# "stall" answers the golden request at once and takes 1 s on an input above 1.5.
CANARY_MODELS = (ModelSpec("strict", 2, kind="strict"), ModelSpec("slow", 2, kind="slow"),
                 ModelSpec("stall", 2, kind="stall"))


def build_models(root: Path, specs: tuple[ModelSpec, ...] | list[ModelSpec], *, timeout: float = 300) -> Path:
    """Build ``specs`` under ``root`` in one TensorFlow subprocess; RuntimeError with its stderr
    when that fails."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    doc = json.dumps([asdict(s) for s in specs])
    proc = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(root), doc], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"building the lab's SavedModels ({', '.join(s.name for s in specs)}) failed:\n"
                           f"{proc.stderr[-3000:]}")
    return root
