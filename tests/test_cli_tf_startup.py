"""TensorFlow's start-up lines (absl's preface, the oneDNN notice, "Could not find cuda drivers",
the cuInit ERROR) are not on a command's stderr; anything else TF or we write still is."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

STARTUP = ("before absl::InitializeLog()", "oneDNN custom operations are on", "Could not find cuda drivers",
           "failed call to cuInit", "when one has already been registered")

# `mlops [-v] train`, its command replaced by what cmd_train's code does first: mlproject's model
# helpers import TensorFlow (keras, mlflow.tensorflow the same way), then a first op, then a real
# TF error, which the CLI prints as a traceback
_CLI = r"""
import sys
import mlops.commands.train as t

def cmd(args):
    from mlproject.model import tf_quiet
    import keras
    tf = tf_quiet()
    tf.constant(1.0) + 1.0
    print("after the first op", file=sys.stderr)
    tf.reshape(tf.constant([1.0, 2.0, 3.0]), (2, 2))

t.cmd_train = cmd
from mlops.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run([sys.executable, "-c", _CLI, *argv], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_the_first_tensorflow_import_leaves_only_our_lines_and_real_errors_on_stderr():
    r = _cli("train", "--dataset", "digits")
    assert r.returncode == 1, r.stderr
    assert [s for s in STARTUP if s in r.stderr] == [], r.stderr
    assert "after the first op" in r.stderr
    assert "InvalidArgumentError" in r.stderr and "Traceback" in r.stderr      # a real TF error: all of it
    assert r.stderr.index("after the first op") < r.stderr.index("Traceback")


def test_verbose_shows_tensorflows_start_up_lines():
    r = _cli("-v", "train", "--dataset", "digits")
    assert r.returncode == 1, r.stderr
    assert "oneDNN custom operations are on" in r.stderr and "InvalidArgumentError" in r.stderr


_FILTER = r"""
import os, signal, sys
from mlops.tf_startup import startup_lines_filtered
stamp = "I1206 20:45:17.123456   31459 "
with startup_lines_filtered():
    print("python before", file=sys.stderr)
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, (stamp + "port.cc:153] oneDNN custom operations are on. You may see ...\n").encode())
    os.write(2, ("E" + stamp[1:] + "cuda_platform.cc:52] failed call to cuInit: with a driver\n").encode())
    os.write(2, (stamp + "cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n")
             .encode())
    os.write(2, ("E" + stamp[1:] + "cuda_platform.cc:52] failed call to cuInit: no driver\n").encode())
    os.write(2, ("E" + stamp[1:] + "some_kernel.cc:1] a real error\n").encode())
    if sys.argv[1] == "abort":
        os.write(2, b"F1206 fatal: the last words\n")
        os.abort()
    if sys.argv[1] == "ctrl-c":     # at the terminal: to the whole foreground process group
        try:
            os.killpg(0, signal.SIGINT)      # (delivered to us before it returns: raised here)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    os.write(2, b"no newline at the end")
print("\nafter", file=sys.stderr)
"""


@pytest.mark.parametrize("how", ["ends", "abort", "ctrl-c"])
def test_the_filter_drops_only_the_known_lines_and_loses_nothing_else(how):
    r = subprocess.run([sys.executable, "-c", _FILTER, how], capture_output=True, text=True, cwd=REPO, timeout=60,
                       start_new_session=True)     # ctrl-c: its process group is its own
    lines = r.stderr.splitlines()
    assert [x for x in lines if "InitializeLog" in x or "oneDNN" in x or "cuda drivers" in x] == [], r.stderr
    assert lines[0] == "python before"
    assert lines[1].endswith("failed call to cuInit: with a driver")       # news where a driver was found
    assert lines[2].endswith("] a real error")
    if how == "abort":
        assert r.returncode != 0 and lines[3:] == ["F1206 fatal: the last words"], r.stderr
    elif how == "ctrl-c":   # the filter went on to the end: no traceback of its own
        assert r.returncode == 130 and lines[3:] == ["interrupted"], r.stderr
    else:
        assert r.returncode == 0 and lines[3:] == ["no newline at the end", "after"], r.stderr


_MANY_MODELS = r"""
import numpy as np
from mlproject.model import predict, tf_quiet
tf_quiet()
import keras
for i in range(7):
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    assert predict(m, np.zeros((2, 4), "float32")).shape == (2, 3)
print("predicted with 7 models", flush=True)
"""


def test_predicting_with_many_models_in_one_process_warns_of_no_retracing():
    """Found by review (2026-12-07, nineteenth stop): a process that evaluates several models
    (the demo's three gates, a calibration) printed TensorFlow's "5 out of the last 5 calls to
    <function TensorFlowTrainer.make_predict_function...> triggered tf.function retracing ...
    Tracing is expensive" on stderr from the fifth model on: each model's predict function is
    traced once, which is no retracing. Other TensorFlow warnings still show."""
    code = _MANY_MODELS + "import tensorflow as tf\ntf.get_logger().warning('another warning')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "predicted with 7 models" in r.stdout
    assert "retracing" not in r.stderr, r.stderr
    assert "another warning" in r.stderr
