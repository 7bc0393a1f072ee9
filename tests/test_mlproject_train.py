"""Train, retrain and evaluate against a real MLflow server with real TensorFlow."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from mlops_common.errors import ConfigError
from mlproject.batches import read_batches
from mlproject.constants import GOLDEN_SIZE
from mlproject.datasets import concat, fingerprint, load_partition
from tests.fixtures.trained import register_odd_model, train_version
from tests.helpers import REPO, error_lines, mlflow_process_state, run_mlops, sigterm_when_held

pytestmark = pytest.mark.slow

EPOCHS = 5
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def cli_trained(mlflow_server, tmp_path_factory):
    """One `mlops train --json` through the real CLI: (env, result, stderr)."""
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLOPS_HOME": str(tmp_path_factory.mktemp("home")),
           "MLOPS_MODEL_NAME": f"train-cli-{uuid.uuid4().hex[:8]}"}
    r = run_mlops("train", "--epochs", str(EPOCHS), "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return env, json.loads(r.stdout), r.stderr


def test_train_prints_one_json_document_and_progress_on_stderr(cli_trained):
    env, res, stderr = cli_trained
    assert res["version"] == 1 and res["model_name"] == env["MLOPS_MODEL_NAME"]
    assert res["dataset"] == "digits"
    assert res["fingerprint"] == fingerprint(load_partition("digits").base)
    assert res["heldout_fingerprint"] == fingerprint(load_partition("digits").heldout)
    assert set(res["metrics"]) == {*METRICS, "heldout_accuracy", "heldout_loss"}
    assert 0.8 < res["metrics"]["heldout_accuracy"] <= 1.0
    for e in range(1, EPOCHS + 1):
        assert f"epoch {e}/{EPOCHS}  loss " in stderr
    experiment = res["run_url"].split("/")[-3]
    assert res["run_url"] == f"{env['MLFLOW_TRACKING_URI']}/#/experiments/{experiment}/runs/{res['run_id']}"
    assert res["version_url"].endswith(f"/#/models/{env['MLOPS_MODEL_NAME']}/versions/1")


def test_logging_the_model_prints_no_tensorflow_error_line_and_no_keras_progress_bar(cli_trained):
    """Reported after 538ef1e: while "logging the model" a real `mlops train` printed TF's
    ``E... node_def_util.cc] NodeDef mentions attribute use_unbounded_threadpool ...`` (op
    determinism, left on after training, had tf.data rewrite Keras' parallel map of our first
    NumPy predict) and Keras' colour progress bar (MLflow's serving-input check predicts
    without verbose=0). Our own progress lines stay."""
    _, _, stderr = cli_trained
    for line in (f"epoch {EPOCHS}/{EPOCHS}  loss ", "logging the model, the TF-Serving SavedModel and the golden set",
                 "held-out accuracy "):
        assert line in stderr, stderr[-3000:]
    for noise in ("use_unbounded_threadpool", "node_def_util", "ms/step", "\u2501", "\x1b["):
        assert noise not in stderr, stderr[-3000:]


def test_run_has_params_per_epoch_metrics_tags_and_dataset_inputs(cli_trained):
    env, res, _ = cli_trained
    client = _client(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(res["run_id"])
    p = run.data.params
    assert (p["dataset"], p["epochs"], p["batch_size"], p["learning_rate"], p["seed"]) == \
        ("digits", str(EPOCHS), "32", "0.01", "1")
    assert p["n_base"] == p["n_train"] == "897"
    assert not {"incoming", "retrained_from", "n_incoming"} & set(p), "retrain-only params on a base training"
    assert run.info.run_name == "train digits" and run.data.tags["mlops.kind"] == "train"
    for m in METRICS:
        history = client.get_metric_history(res["run_id"], m)
        assert [h.step for h in history] == list(range(EPOCHS)), m
    final = run.data.metrics
    assert final["heldout_accuracy"] == pytest.approx(res["metrics"]["heldout_accuracy"])
    assert {f"heldout_accuracy_class_{k}" for k in range(10)} <= set(final)
    tags = run.data.tags
    assert tags["dataset.name"] == "digits" and tags["dataset.fingerprint"] == res["fingerprint"]
    assert len(tags["git_commit"]) == 40
    inputs = {i.tags[0].value if i.tags else "": i.dataset for i in run.inputs.dataset_inputs}
    assert inputs["training"].digest == res["fingerprint"][:32]
    assert json.loads(inputs["training"].profile)["features_shape"] == [897, 8, 8, 1]
    assert inputs["evaluation"].digest == res["heldout_fingerprint"][:32]


def test_the_logged_model_carries_the_final_epoch_s_metrics_and_the_held_out_ones(cli_trained):
    """MLflow 3 links a logged model to the run's metrics at the step it was logged at: logged at
    step 0 it showed epoch 1's loss and accuracy (the experiment's Models tab, the model page), not
    those of the weights it holds."""
    env, res, _ = cli_trained
    client = _client(env["MLFLOW_TRACKING_URI"])
    model_id = client.get_model_version(env["MLOPS_MODEL_NAME"], "1").source.removeprefix("models:/")
    model = client.get_logged_model(model_id)
    linked = {m.key: m for m in model.metrics}
    for name in METRICS:
        assert linked[name].step == EPOCHS - 1, name
        assert linked[name].value == pytest.approx(res["metrics"][name]), name
    assert linked["heldout_accuracy"].value == pytest.approx(res["metrics"]["heldout_accuracy"])
    assert {f"heldout_accuracy_class_{k}" for k in range(10)} <= set(linked)
    (output,) = client.get_run(res["run_id"]).outputs.model_outputs
    assert (output.model_id, output.step) == (model_id, EPOCHS - 1)


def test_run_artifacts_plots_evaluation_savedmodel_and_golden(cli_trained, tmp_path):
    import mlflow

    env, res, _ = cli_trained
    client = _client(env["MLFLOW_TRACKING_URI"])
    paths = {a.path for d in ("plots", "evaluation", "golden", "tfserving")
             for a in client.list_artifacts(res["run_id"], d)}
    assert {"plots/training_curves.png", "plots/confusion_matrix.png", "evaluation/heldout.json",
            "golden/request.json", "golden/response.json", "golden/signature.json",
            "tfserving/saved_model.pb", "tfserving/variables", "tfserving/assets.extra"} <= paths
    # TF Serving's warmup file rides in the SavedModel: one record per request shape, the golden
    # batch and one instance
    from tensorflow_serving.apis import prediction_log_pb2

    from mlproject.constants import GOLDEN_SIZE
    from mlproject.export import WARMUP_FILE
    from serving_host.warmup import _records

    warm = client.download_artifacts(res["run_id"], f"tfserving/{WARMUP_FILE}", str(tmp_path))
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in _records(warm)]
    assert len(logs) == 2 and all(lg.HasField("predict_log") for lg in logs)
    assert [lg.predict_log.request.inputs["image"].tensor_shape.dim[0].size for lg in logs] == [GOLDEN_SIZE, 1]
    local = mlflow.artifacts.download_artifacts(run_id=res["run_id"], artifact_path="plots",
                                                dst_path=str(tmp_path), tracking_uri=env["MLFLOW_TRACKING_URI"])
    for name in ("training_curves.png", "confusion_matrix.png"):
        with open(f"{local}/{name}", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(client.download_artifacts(res["run_id"], "evaluation/heldout.json", str(tmp_path))) as f:
        heldout = json.load(f)
    assert heldout["accuracy"] == pytest.approx(res["metrics"]["heldout_accuracy"])
    assert heldout["n"] == 450 and heldout["heldout_fingerprint"] == res["heldout_fingerprint"]
    # per-example results for the gate's paired rule: in the evaluation document, not in tags/params
    from registry.gate_stats import decode_correct

    assert decode_correct(heldout["correct_bits"], 450).bit_count() == round(heldout["accuracy"] * 450)
    run = client.get_run(res["run_id"])
    assert heldout["correct_bits"] not in json.dumps({**run.data.tags, **run.data.params})


def test_registration_records_the_hash_of_every_bundle_file_and_a_download_matches_it(cli_trained, tmp_path,
                                                                                       monkeypatch):
    """The hashes mlproject records are those of the bytes MLflow stores: a download checks
    every file against them (registry.bundle_hashes)."""
    from registry import bundle_hashes, versions

    env, res, _ = cli_trained
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    files = bundle_hashes.recorded(env["MLOPS_MODEL_NAME"], res["version"])
    assert files is not None and {"tfserving/saved_model.pb", "golden/request.json", "golden/response.json",
                                  "golden/signature.json"} <= set(files)
    assert any(p.startswith("tfserving/variables/") for p in files)
    assert any(p.startswith("tfserving/assets.extra/") for p in files)
    versions.download_bundle(env["MLOPS_MODEL_NAME"], res["version"], tmp_path / "bundle")
    assert bundle_hashes.tree_files(tmp_path / "bundle") == files


@pytest.mark.parametrize("epochs", [1, 3, 10, 37])
def test_the_training_curves_mark_whole_epochs_only(epochs):
    """Found by a review (2026-12-07, nineteenth stop): `plots/training_curves.png` of a 3-epoch
    run ticked its epoch axis 1.00, 1.25, 1.50, ... and a 1-epoch run's 0.945 ... 1.050: epochs
    that never were."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mlproject.plots import training_curves

    history = {k: [0.5 + 0.01 * e for e in range(epochs)] for k in METRICS}
    fig = training_curves(history)
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        if ax.get_xlabel() != "epoch":
            continue
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(float(t).is_integer() for t in shown), shown


def test_saved_model_equals_keras_model_and_golden_equals_saved_model(cli_trained, tmp_path):
    import mlflow
    import mlflow.tensorflow

    from mlproject.export import run_saved_model
    from mlproject.model import predict

    env, res, _ = cli_trained
    uri = env["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    saved = mlflow.artifacts.download_artifacts(run_id=res["run_id"], artifact_path="tfserving",
                                                dst_path=str(tmp_path / "sm"), tracking_uri=uri)
    golden = mlflow.artifacts.download_artifacts(run_id=res["run_id"], artifact_path="golden",
                                                 dst_path=str(tmp_path / "g"), tracking_uri=uri)
    keras_model = mlflow.tensorflow.load_model(f"models:/{res['model_name']}/1")
    images = load_partition("digits").heldout.images
    (served,) = run_saved_model(saved, images).values()
    np.testing.assert_allclose(served, predict(keras_model, images), rtol=1e-5, atol=1e-6)
    assert (served.argmax(1) == load_partition("digits").heldout.labels).mean() == \
        pytest.approx(res["metrics"]["heldout_accuracy"])

    request = json.load(open(f"{golden}/request.json"))
    response = json.load(open(f"{golden}/response.json"))
    signature = json.load(open(f"{golden}/signature.json"))
    assert request["signature_name"] == "serving_default"
    sent = np.asarray(request["instances"], dtype=np.float32)
    np.testing.assert_array_equal(sent, images[:GOLDEN_SIZE])
    (again,) = run_saved_model(saved, sent).values()
    np.testing.assert_allclose(np.asarray(response["predictions"]), again, rtol=1e-6, atol=1e-7)
    sig = signature["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert [v["shape"] for v in sig["inputs"].values()] == [[-1, 8, 8, 1]]
    assert [v["shape"] for v in sig["outputs"].values()] == [[-1, 10]]

    pyfunc = mlflow.pyfunc.load_model(f"models:/{res['model_name']}/1")
    assert np.asarray(pyfunc.predict(images[:3])).shape == (3, 10)


def test_version_tags_and_evaluate_cli_and_api_agree(cli_trained, monkeypatch):
    from mlproject.evaluate import Evaluation, evaluate_version

    env, res, _ = cli_trained
    client = _client(env["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version(res["model_name"], "1")
    assert mv.run_id == res["run_id"]
    assert mv.tags["dataset"] == "digits" and mv.tags["dataset_fingerprint"] == res["fingerprint"]
    assert mv.tags["validation_status"] == "pending" and "retrained_from" not in mv.tags

    r = run_mlops("evaluate", "--version", "1", "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads(r.stdout)
    assert set(ev) == {"model_uri", "dataset", "heldout_fingerprint", "n", "accuracy", "loss",
                       "per_class_accuracy", "per_class_count", "confusion", "non_probability_outputs",
                       "correct_bits", "heldout_labels"}
    right = np.unpackbits(np.frombuffer(base64.b64decode(ev["correct_bits"]), np.uint8))[:450]
    assert int(right.sum()) == int(np.trace(np.asarray(ev["confusion"])))    # one bit per held-out example
    assert ev["non_probability_outputs"] == 0      # a softmax answers probabilities on every image
    cm = np.asarray(ev["confusion"])    # [true][predicted]: rows are the class counts, the diagonal the hits
    assert cm.shape == (10, 10) and cm.sum(axis=1).tolist() == [ev["per_class_count"][str(k)] for k in range(10)]
    assert np.trace(cm) / 450 == pytest.approx(ev["accuracy"], abs=1e-12)
    assert ev["model_uri"] == f"models:/{res['model_name']}/1" and ev["n"] == 450
    assert ev["accuracy"] == pytest.approx(res["metrics"]["heldout_accuracy"], abs=1e-12)
    assert ev["loss"] == pytest.approx(res["metrics"]["heldout_loss"], rel=1e-4)
    assert sum(ev["per_class_count"].values()) == 450
    assert sorted(ev["per_class_accuracy"]) == [str(k) for k in range(10)]

    for k, v in env.items():   # the API reads the environment, like the CLI
        monkeypatch.setenv(k, v)
    api = evaluate_version(res["model_name"], 1)
    assert isinstance(api, Evaluation)
    got = api.to_dict()
    assert got["loss"] == pytest.approx(ev.pop("loss"), rel=1e-6)
    got.pop("loss")
    assert got == ev
    assert api.heldout_fingerprint == res["heldout_fingerprint"]


def test_a_trained_version_s_description_is_the_ledger_s_block_from_registration_on(cli_trained):
    """docs/architecture.md: the description is rebuilt from the ledger after every register. Found by
    a review (2026-12-05, fourth stop): `mlops train` wrote its own sentence instead, so until the gate
    ran the version's page had no block (status, data set, commit, link to the run)."""
    from registry import description

    env, res, _ = cli_trained
    text = _client(env["MLFLOW_TRACKING_URI"]).get_model_version(res["model_name"], "1").description
    block = description.block(text)
    assert description.BEGIN in text, text
    assert block.startswith("**v1** · no alias · validation pending · deploy not deployed"), text
    assert f"/runs/{res['run_id']})" in block and "**Data set:** digits" in block
    # what the training said of itself stays, outside the block
    assert f"trained from scratch on digits (897 examples); held-out accuracy " \
           f"{res['metrics']['heldout_accuracy']:.4f}" in text.split(description.END)[1]


def test_a_leftover_mlflow_run_id_of_a_finished_run_is_refused_and_changes_nothing(cli_trained):
    """Found by a sweep (2026-12-04): MLFLOW_RUN_ID left from another job reopened v1's finished
    run: `train` mixed a second training into it and overwrote v1's SavedModel and golden set,
    then registered a new version from it; `evaluate` overwrote its held-out metrics."""
    env, res, _ = cli_trained
    client = _client(env["MLFLOW_TRACKING_URI"])
    before = client.get_run(res["run_id"])
    versions = len(client.search_model_versions(f"name='{env['MLOPS_MODEL_NAME']}'"))
    for args in (("train", "--epochs", "1"), ("evaluate", "--version", "1")):
        r = run_mlops(*args, env={**env, "MLFLOW_RUN_ID": res["run_id"]})
        assert r.returncode == 2, r.stderr[-2000:]
        (line,) = error_lines(r.stderr)
        assert line == (f"error: MLFLOW_RUN_ID names run {res['run_id']}, which is FINISHED: only `mlflow run` "
                        f"sets it, for the run it has just started; unset MLFLOW_RUN_ID (nothing was logged)")
        assert "epoch 1/1" not in r.stderr
    after = client.get_run(res["run_id"])
    assert (after.data.params, after.data.metrics, after.data.tags, after.info.status, after.info.end_time) == \
        (before.data.params, before.data.metrics, before.data.tags, before.info.status, before.info.end_time)
    assert len(client.search_model_versions(f"name='{env['MLOPS_MODEL_NAME']}'")) == versions


def test_evaluate_on_a_data_set_of_another_image_shape_is_one_line(cli_trained):
    """Found by a sweep (2026-12-04): Keras's "expected shape=(None, 28, 28, 1)" traceback."""
    env, _, _ = cli_trained
    r = run_mlops("evaluate", "--version", "1", "--dataset", "fashion_mnist", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert line == (f"error: version 1 of '{env['MLOPS_MODEL_NAME']}' takes images of shape (8, 8, 1), but data "
                    f"set 'fashion_mnist' has (28, 28, 1); evaluate it on the data set it was trained on (`mlops "
                    f"evaluate --dataset`); the gate compares versions of one data set only")


def test_evaluate_unknown_version_is_one_line(cli_trained):
    env, res, _ = cli_trained
    r = run_mlops("evaluate", "--version", "99", env=env)
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert line.startswith(f"error: version 99 of registered model '{res['model_name']}' does not exist")
    r = run_mlops("evaluate", "--version", "1", env={**env, "MLOPS_MODEL_NAME": "no-such-model-here"})
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert line.startswith("error: registered model 'no-such-model-here' does not exist")


def test_retrain_from_scratch_drops_production_s_weights_not_its_data_set(make_version):
    """`mlops retrain --dataset` defaults to "the production version's data set, else digits";
    --from-scratch starts "from fresh weights instead of the production version". Found by a review
    (2026-12-05, fourth stop): with --from-scratch production was not read at all, so a retrain of a
    fashion_mnist model from scratch trained on digits (or refused its 28x28 batches as the wrong
    shape). An explicit other --dataset stays allowed from scratch, as the mismatch line advises."""
    from mlproject.train import TrainParams, retrain_plan
    from registry import versions

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(tags={"dataset": "fashion_mnist"})
    versions.set_alias(model, "production", v)
    assert retrain_plan(model, TrainParams(), from_scratch=False) == (TrainParams(dataset="fashion_mnist"), v)
    assert retrain_plan(model, TrainParams(), from_scratch=True) == (TrainParams(dataset="fashion_mnist"), None)
    assert retrain_plan(model, TrainParams(dataset="digits"), from_scratch=True) == \
        (TrainParams(dataset="digits"), None)
    with pytest.raises(ConfigError, match="drop --dataset or retrain with --from-scratch"):
        retrain_plan(model, TrainParams(dataset="digits"), from_scratch=False)


def test_a_retrain_while_the_production_alias_is_removed_outside_mlops_is_refused(make_version):
    """`mlops retrain` continues "the version that holds the `production` alias (from scratch when
    none does)". Found by a review (2026-12-06, sixteenth stop): with the alias removed in the
    MLflow UI while the ledger says v1 holds production, a retrain started from scratch silently
    (tagged retrained_from=scratch); the gate refuses that state. Now refused before anything
    trains; --from-scratch, which asks for fresh weights, stays allowed."""
    from mlops_common.errors import RefusedError
    from mlproject.train import TrainParams, retrain_plan
    from registry import promotion, versions
    from registry.gate import run_gate
    from tests.test_registry_gate import Evaluations, doc

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    assert run_gate(model, v1, Evaluations({v1: doc(0.95)})).passed
    promotion.promote(model, v1, actor="alice")
    assert retrain_plan(model, TrainParams(), from_scratch=False)[1] == v1
    versions.delete_alias(model, versions.PRODUCTION)              # someone in the MLflow UI
    with pytest.raises(RefusedError, match=f"the ledger says v{v1} holds production.*"
                                           f"`mlops registry promote --version {v1}`"):
        retrain_plan(model, TrainParams(), from_scratch=False)
    assert retrain_plan(model, TrainParams(), from_scratch=True) == (TrainParams(dataset="digits"), None)


def test_a_retrain_from_scratch_with_the_production_alias_removed_keeps_the_ledger_holder_s_data_set(make_version):
    """--dataset auto is "the production version's data set, else digits", --from-scratch included.
    Found by a review (2026-12-06, sixteenth stop): with the alias removed in the MLflow UI while
    the ledger says a fashion_mnist version holds production, --from-scratch trained on digits (the
    alias case read the alias holder's tag; nothing read the ledger holder's). An explicit
    --dataset still wins; a holder since deleted has no tag to read (digits)."""
    from mlproject.train import TrainParams, retrain_plan
    from registry import promotion, versions
    from registry.gate import run_gate
    from tests.test_registry_gate import Evaluations, doc

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(tags={"dataset": "fashion_mnist"})
    assert run_gate(model, v1, Evaluations({v1: {**doc(0.95), "dataset": "fashion_mnist"}})).passed
    promotion.promote(model, v1, actor="alice")
    versions.delete_alias(model, versions.PRODUCTION)              # someone in the MLflow UI
    assert retrain_plan(model, TrainParams(), from_scratch=True) == (TrainParams(dataset="fashion_mnist"), None)
    assert retrain_plan(model, TrainParams(dataset="digits"), from_scratch=True) == \
        (TrainParams(dataset="digits"), None)
    versions.set_tags(model, v1, {"dataset": "no-such-set"})
    with pytest.raises(ConfigError, match="has the dataset tag 'no-such-set'"):
        retrain_plan(model, TrainParams(), from_scratch=True)


def test_retrain_from_production_on_base_plus_incoming(mlops_env, digits_batches, cli_trained):
    from mlproject.train import TrainParams, retrain

    name = mlops_env["MLOPS_MODEL_NAME"]
    client = _client(mlops_env["MLFLOW_TRACKING_URI"])
    ci = {"CIRCLE_PIPELINE_ID": "pipe-123", "CIRCLE_WORKFLOW_ID": "wf-456", "CIRCLE_JOB": "train"}
    first = train_version(ci, epochs=3)
    assert first["version"] == 1
    run_tags = client.get_run(first["run_id"]).data.tags
    ids = (run_tags["ci.pipeline_id"], run_tags["ci.workflow_id"], run_tags["ci.job"])
    assert ids == ("pipe-123", "wf-456", "train")
    version_tags = client.get_model_version(name, "1").tags     # the narrow column: the pipeline only
    assert version_tags["pipeline_id"] == "pipe-123" and not any(k.startswith("ci.") for k in version_tags)
    # Same seed and data as the CLI training in another model -> same fingerprint.
    assert first["fingerprint"] == cli_trained[1]["fingerprint"]

    scratch = train_version(incoming=digits_batches.good, epochs=1)   # no production alias yet
    assert scratch["version"] == 2 and scratch["retrained_from"] == "scratch"
    assert client.get_model_version(name, "2").tags["retrained_from"] == "scratch"

    client.set_registered_model_alias(name, "production", "1")
    r = run_mlops("retrain", "--incoming", str(digits_batches.good), "--epochs", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res["version"] == 3 and res["retrained_from"] == "1"
    assert client.get_model_version(name, "3").tags["retrained_from"] == "1"
    assert "retraining from production: version 1" in r.stderr

    # The run used base + incoming, and says so.
    (batch,) = read_batches(str(digits_batches.good), "digits")
    expected = fingerprint(concat(load_partition("digits").base, batch.data))
    assert res["fingerprint"] == scratch["fingerprint"] == expected != first["fingerprint"]
    run = client.get_run(res["run_id"])
    p = run.data.params
    assert (p["n_base"], p["n_incoming"], p["n_train"]) == ("897", "450", "1347")
    assert p["incoming"] == str(digits_batches.good) and p["retrained_from"] == "1"
    assert run.data.tags["mlops.kind"] == "retrain"
    assert run.info.run_name == f"retrain v1 + {digits_batches.good.stem} ({digits_batches.good.parent.name})"
    assert client.get_run(scratch["run_id"]).info.run_name.startswith("retrain from scratch + ")
    assert run.data.tags["mlops.retrained_from"] == "1" and run.data.tags["mlops.incoming"] == p["incoming"]
    v1_run = client.get_model_version(name, "1").run_id
    assert run.data.tags["mlops.parent_run_id"] == v1_run and v1_run in run.data.tags["mlflow.note.content"]
    training = [i.dataset for i in run.inputs.dataset_inputs if i.tags and i.tags[0].value == "training"]
    assert json.loads(training[0].profile)["features_shape"] == [1347, 8, 8, 1]
    assert json.loads(training[0].source) == {"uri": str(digits_batches.good)}

    # The same examples from another place: the run's input names that place (found by a sweep,
    # 2026-12-04: MLflow kept one dataset per name and digest, and the source of the first retrain)
    moved = digits_batches.good.parent.parent / "moved" / digits_batches.good.name
    moved.parent.mkdir(exist_ok=True)
    moved.write_bytes(digits_batches.good.read_bytes())
    again = train_version(incoming=moved, epochs=1)
    run = client.get_run(again["run_id"])
    (training,) = [i.dataset for i in run.inputs.dataset_inputs if i.tags and i.tags[0].value == "training"]
    assert again["fingerprint"] == res["fingerprint"] and json.loads(training.source) == {"uri": str(moved)}

    # It continued from production's weights: its first epoch starts far better than scratch's.
    first_epoch = {rid: client.get_metric_history(rid, "accuracy")[0].value
                   for rid in (res["run_id"], scratch["run_id"])}
    assert first_epoch[res["run_id"]] > first_epoch[scratch["run_id"]] + 0.1

    with pytest.raises(ConfigError, match="production \\(version 1\\) was trained on 'digits'"):
        retrain(name, TrainParams(dataset="fashion_mnist"), str(digits_batches.good))


def test_a_retrain_on_a_local_path_that_is_not_utf8_records_it_as_text(mlops_env, digits_batches, tmp_path):
    """Found by a review (2026-12-07, nineteenth stop): `--incoming` takes a local path of any
    bytes (`data make-batch` writes there, `data validate` reads it), but a retrain from a folder
    named in Latin-1 (`caf\xe9/`, unzipped from an old archive) read and validated the batch, then
    was MLflow's `UnicodeEncodeError: ... surrogates not allowed` traceback as the run was created
    (its name, params and tags are UTF-8 text). The path is now recorded with `\\xNN` for such bytes."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    batch = folder / "good.npz"
    batch.write_bytes(digits_batches.good.read_bytes())
    r = run_mlops("retrain", "--incoming", str(batch), "--epochs", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    recorded = f"{tmp_path}/caf\\xe9/good.npz"
    res = json.loads(r.stdout)
    assert res["version"] == 1 and res["incoming"] == recorded
    run = _client(mlops_env["MLFLOW_TRACKING_URI"]).get_run(res["run_id"])
    assert run.data.params["incoming"] == run.data.tags["mlops.incoming"] == recorded
    assert run.info.run_name == "retrain from scratch + good (caf\\xe9)"


@pytest.mark.parametrize("variable", ["MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"])
def test_an_experiment_variable_that_is_not_utf8_is_one_line_naming_it(mlops_env, variable):
    """Found by a review (2026-12-07, nineteenth stop): `MLFLOW_EXPERIMENT_NAME` of Latin-1 bytes
    (`caf\xe9`, set from a Latin-1 shell) was MLflow's `UnicodeEncodeError` traceback, exit 1."""
    r = run_mlops("train", "--epochs", "1", env={variable: os.fsdecode(b"caf\xe9")})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert error_lines(r.stderr) == [f"error: {variable} is not UTF-8 text (bytes of another encoding: set the "
                                     f"shell or the script to UTF-8 and set it again)"]
    assert _client(mlops_env["MLFLOW_TRACKING_URI"]).search_model_versions(
        f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []


@pytest.mark.parametrize("case, problem", [
    ("wrong_shape", "images have shape (20, 28, 28, 1), expected (N, 8, 8, 1) or (N, 8, 8)"),
    ("label_11", "labels contain 11 (expected integers 0..9)"),
    ("nan", "images contain 1 NaN/infinite values"),
    ("empty", "empty batch (0 examples)"),
])
def test_malformed_batch_stops_retrain_and_registers_nothing(mlops_env, tmp_path, case, problem):
    import mlflow

    rng = np.random.default_rng(0)
    images, labels = rng.random((20, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 20)
    if case == "wrong_shape":
        images = rng.random((20, 28, 28, 1), dtype=np.float32)
    elif case == "label_11":
        labels[5] = 11
    elif case == "nan":
        images[3, 4, 4, 0] = np.nan
    elif case == "empty":
        images, labels = images[:0], labels[:0]
    folder = tmp_path / "incoming"
    folder.mkdir()
    np.savez(folder / "ok.npz", images=rng.random((4, 8, 8, 1), dtype=np.float32), labels=np.arange(4))
    np.savez(folder / "z-new.npz", images=images, labels=labels)

    r = run_mlops("retrain", "--incoming", str(folder))
    assert r.returncode == 2, r.stderr[-2000:]
    assert error_lines(r.stderr) == [f"error: invalid data in {folder / 'z-new.npz'}: {problem}; fix or remove "
                                      f"that file (nothing was trained or registered)"]
    client = _client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []
    mlflow.set_tracking_uri(mlops_env["MLFLOW_TRACKING_URI"])
    assert mlflow.get_experiment_by_name(mlops_env["MLOPS_MODEL_NAME"]) is None   # no run either


def test_fashion_mnist_offline_names_the_digits_option(mlops_env, tmp_path):
    keras_home = tmp_path / "keras-home"   # empty: no cached copy of the data set
    keras_home.mkdir()
    blocked = "http://127.0.0.1:9"         # nothing listens there: downloads cannot leave the machine
    r = run_mlops("train", "--dataset", "fashion_mnist", timeout=180,
                  env={"KERAS_HOME": str(keras_home), "https_proxy": blocked, "HTTPS_PROXY": blocked})
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert line.startswith("error: cannot download Fashion-MNIST (")
    assert line.endswith("use the offline data set instead: --dataset digits")
    client = _client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []


def test_a_damaged_cached_fashion_mnist_names_the_folder_to_delete(mlops_env, tmp_path):
    """A copy Keras keeps that is cut off (a download killed outright leaves one) was reported as
    "cannot download Fashion-MNIST" although nothing was downloaded, and every rerun said the same:
    now one line names the folder to delete, and nothing is trained or registered."""
    import gzip

    cache = tmp_path / "keras-home" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    for name in ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz"):     # Keras's names: it downloads none of them when all are there
        (cache / name).write_bytes(gzip.compress(np.random.default_rng(0).bytes(4096))[:100])   # cut off
    blocked = "http://127.0.0.1:9"         # nothing listens there: downloads cannot leave the machine
    r = run_mlops("train", "--dataset", "fashion_mnist", timeout=180,
                  env={"KERAS_HOME": str(tmp_path / "keras-home"), "https_proxy": blocked, "HTTPS_PROXY": blocked})
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert line.startswith(f"error: the copy of Fashion-MNIST that Keras keeps in {cache} cannot be read ("), line
    assert line.endswith("delete that folder to have it downloaded again, or use the offline data set "
                         "instead: --dataset digits"), line
    assert "Traceback" not in r.stderr
    client = _client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []


def test_a_training_stopped_by_sigterm_closes_its_mlflow_run_failed(mlflow_server, tmp_path):
    """CircleCI cancelling a job (and `timeout`) sends SIGTERM: the process died at once and its
    MLflow run stayed RUNNING in the UI for good (Ctrl-C closed it FAILED). A real `mlops train`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    model = f"sigterm-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLOPS_HOME": str(tmp_path / "home"),
           "MLOPS_MODEL_NAME": model, "MLFLOW_EXPERIMENT_NAME": "", "MLFLOW_EXPERIMENT_ID": ""}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "train", "--epochs", "5000"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = _client(mlflow_server)
    run = None
    try:
        deadline = time.monotonic() + 300            # until an epoch has been logged: training runs
        while time.monotonic() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name(model)
            runs = client.search_runs([exp.experiment_id]) if exp is not None else []
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None and run.info.status == "RUNNING", proc.poll()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.search_model_versions(f"name='{model}'") == []          # nothing registered


@pytest.mark.parametrize("call", ["create_run", "set_terminated"])
def test_a_signal_while_mlflow_creates_or_ends_the_training_run_does_not_leave_it_running(mlops_env, monkeypatch,
                                                                                          caplog, call):
    """Found by a review (2026-12-07, nineteenth stop): a real Ctrl-C sent as `mlops train` printed
    "held-out accuracy" left its run RUNNING for good. The signal landed in MLflow's request that
    ended the run (taken off MLflow's stack before its end was sent); one in the request that
    created it did the same. The signal lands here just after the run was created on the server /
    just before its end is sent."""
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from mlops.commands.signals import sigterm_as_ctrl_c
    from mlproject.train import TrainParams, train

    real = getattr(MlflowClient, call)
    runs = []

    def signalled(self, *args, **kwargs):
        if call == "set_terminated":
            runs.append(args[0])
            os.kill(os.getpid(), signal.SIGTERM)        # the handler runs at the next bytecode
            return real(self, *args, **kwargs)
        run = real(self, *args, **kwargs)
        runs.append(run.info.run_id)
        os.kill(os.getpid(), signal.SIGTERM)
        return run

    monkeypatch.setattr(MlflowClient, call, signalled)
    with sigterm_as_ctrl_c(), pytest.raises(KeyboardInterrupt):
        train(mlops_env["MLOPS_MODEL_NAME"], TrainParams(epochs=1))
    client = _client(mlops_env["MLFLOW_TRACKING_URI"])
    run_id = runs[0]
    if call == "create_run":        # stopped before any training: the run says it failed
        assert client.get_run(run_id).info.status == "FAILED"
        assert not client.get_metric_history(run_id, "loss")
    else:                           # a finished training: kept, and the line says how to register it
        assert client.get_run(run_id).info.status == "FINISHED"
        assert f"register it with `mlops registry register --run-id {run_id}`" in caplog.text
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []


def test_a_diverged_training_stops_fails_its_run_and_registers_nothing(mlops_env):
    """A learning rate far too high made the loss NaN: the NaN model, with a golden set of NaN,
    was registered as a version (exit 0), for the gate to find. Now training stops at the first
    non-finite epoch, the run is FAILED and one line says what to change."""
    r = run_mlops("train", "--epochs", "4", "--learning-rate", "1e30")
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert line.startswith("error: training diverged: loss became nan at epoch 1/4 with --learning-rate 1e+30;")
    assert line.endswith("train again with a lower --learning-rate (default 0.01)")
    assert "epoch 2/4" not in r.stderr                # stopped at the first non-finite epoch
    client = _client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []
    exp = client.get_experiment_by_name(mlops_env["MLOPS_MODEL_NAME"])
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert np.isnan(run.data.metrics["loss"])        # the epoch that diverged is on record


def test_a_bad_ledger_url_fails_before_training_not_after(mlops_env):
    """Found by a sweep (2026-12-04): the ledger was first opened at registration, so a typo in
    MLOPS_LEDGER_URL cost a whole training and left a FINISHED run with no version."""
    import mlflow

    r = run_mlops("train", "--epochs", "1", env={"MLOPS_LEDGER_URL": "sqlite:///relative-typo.db"})
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert line.startswith("error: MLOPS_LEDGER_URL names a relative SQLite path"), line
    assert "epoch 1/1" not in r.stderr
    mlflow.set_tracking_uri(mlops_env["MLFLOW_TRACKING_URI"])
    assert mlflow.get_experiment_by_name(mlops_env["MLOPS_MODEL_NAME"]) is None     # no run either


def test_a_training_stopped_between_registration_and_its_ledger_row_leaves_no_version(mlflow_server, tmp_path):
    """SIGTERM (CircleCI cancelling the job) after MLflow created the version and before its ledger
    row: the version stayed, unknown to the ledger, its files unchecked by every deploy. Now it is
    removed again; the run itself had finished. A real `mlops train`, held at that phase."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    model = f"sigterm-reg-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "marker"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLOPS_HOME": str(tmp_path / "home"),
           "MLOPS_MODEL_NAME": model, "MLFLOW_EXPERIMENT_NAME": "", "MLFLOW_EXPERIMENT_ID": "",
           "MLOPS_TEST_PAUSE_AT": "register:after_version", "MLOPS_TEST_PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "train", "--epochs", "1"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = _client(mlflow_server)

    def held_there() -> None:
        assert [v.version for v in client.search_model_versions(f"name='{model}'")] == ["1"]

    err = sigterm_when_held(proc, marker, before_signal=held_there)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert client.search_model_versions(f"name='{model}'") == []
    # the finished run is kept, as after a failed registration, and the line says how to register it
    # (it said only "interrupted": the run id was a screen of epochs above)
    [run] = client.search_runs([client.get_experiment_by_name(model).experiment_id])
    assert run.info.status == "FINISHED"
    assert err.strip().splitlines()[-2] == (f"the training run {run.info.run_id} is kept: register it with "
                                            f"`mlops registry register --run-id {run.info.run_id}`"), err[-2000:]


def test_a_model_of_another_class_count_is_one_line_and_loading_leaves_nothing_in_tmp(cli_trained, digits_batches,
                                                                                     tmp_path):
    """Found by a sweep (2026-12-04): only the input shape was checked, so retraining a 12-class
    production registered a 12-class version (a 5-class one failed mid-run with a traceback), and
    evaluate failed with an IndexError; and every model load left a copy of the model in /tmp."""
    env, _, _ = cli_trained
    odd = {**env, "MLOPS_MODEL_NAME": f"odd-{uuid.uuid4().hex[:6]}"}
    with mlflow_process_state(odd):
        assert register_odd_model(odd["MLOPS_MODEL_NAME"], classes=12) == 1
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = run_mlops("evaluate", "--version", "1", env={**odd, "TMPDIR": str(tmp)})
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert "answers with shape (12,) per image, not one probability for each of data set 'digits''s 10" in line
    assert list(tmp.iterdir()) == []                              # the download went with its folder
    r = run_mlops("retrain", "--incoming", str(digits_batches.good), "--epochs", "1", env=odd)
    assert r.returncode == 2 and "(12,)" in error_lines(r.stderr)[0], r.stderr[-2000:]
    assert len(_client(env["MLFLOW_TRACKING_URI"]).search_model_versions(
        f"name='{odd['MLOPS_MODEL_NAME']}'")) == 1                # nothing registered
    r = run_mlops("evaluate", "--version", "1", env={**env, "TMPDIR": str(tmp)})    # a good one loads
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("mlmodel", ["garbage", "", "flavors: ["])
def test_an_unreadable_mlmodel_file_is_a_damaged_model_not_a_traceback(monkeypatch, mlmodel):
    """Found by a sweep (2026-12-04): an MLmodel file holding `garbage`, nothing, or cut-off YAML
    made MLflow's loader raise AttributeError / YAMLError, which came out as tracebacks."""
    from mlops_common.errors import DamagedModel
    from mlproject.evaluate import load_checked

    def download(uri, dest):
        (Path(dest) / "MLmodel").write_text(mlmodel)
        return Path(dest)

    import registry.client
    import registry.versions

    monkeypatch.setattr(registry.client, "tracking_client", lambda: None)    # no server: the files are written here
    monkeypatch.setattr(registry.versions, "download_logged_model", download)
    with pytest.raises(DamagedModel) as e:
        load_checked("models:/m/1", "version 1 of 'm'", "digits", damaged="register a new version", other_shape="-")
    assert "its MLmodel file is not readable" in e.value.message and e.value.message.endswith("register a new version")


def test_a_model_with_no_mlmodel_file_or_no_tensorflow_flavor_is_refused_before_tensorflow_is_imported(tmp_path):
    """TensorFlow takes ~5 s to import: the gate, evaluate and retrain refuse a logged model with no
    MLmodel file, or one of another flavor, on what MLflow's loader would say, without it."""
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        import registry.client, registry.versions
        from mlops_common.errors import DamagedModel
        from mlproject.evaluate import load_checked

        def download(uri, dest):
            if sys.argv[1]:
                (Path(dest) / "MLmodel").write_text(sys.argv[1])
            return Path(dest)

        registry.client.tracking_client = lambda: None
        registry.versions.download_logged_model = download
        try:
            load_checked("models:/m/1", "version 1 of 'm'", "digits", damaged="register a new version",
                         other_shape="-")
        except DamagedModel as e:
            print(e.message)
        print("tensorflow imported" if "tensorflow" in sys.modules else "tensorflow not imported")
    """))
    for mlmodel, problem in [("", 'Could not find an "MLmodel" configuration file'),
                             ("flavors:\n  sklearn: {}\n", "its MLmodel has no 'tensorflow' flavor")]:
        r = subprocess.run([sys.executable, str(script), mlmodel], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 0, r.stderr[-3000:]
        first, state = r.stdout.splitlines()
        assert "cannot be loaded as an MLflow TensorFlow model" in first and problem in first, first
        assert first.endswith("missing or damaged; register a new version"), first
        assert state == "tensorflow not imported", (mlmodel, r.stdout)


def test_a_type_error_from_reading_the_model_itself_keeps_its_own_words(monkeypatch, tmp_path):
    """Found by review: with a readable MLmodel, a TypeError from Keras (a layer argument a newer
    Keras wrote) is that error, not an unreadable MLmodel file."""
    import mlflow.tensorflow

    import registry.client
    import registry.versions
    from mlops_common.errors import DamagedModel
    from mlproject.evaluate import load_checked

    def download(uri, dest):       # the model is downloaded first, then loaded from its folder
        (Path(dest) / "MLmodel").write_text("flavors:\n  tensorflow: {}\nartifact_path: model\n")
        return Path(dest)

    def load_model(uri, dst_path=None):
        raise TypeError("Dense.__init__() got an unexpected keyword argument 'quantization_config'")

    monkeypatch.setattr(registry.client, "tracking_client", lambda: None)
    monkeypatch.setattr(registry.versions, "download_logged_model", download)
    monkeypatch.setattr(mlflow.tensorflow, "load_model", load_model)
    with pytest.raises(DamagedModel) as e:
        load_checked("models:/m/1", "version 1 of 'm'", "digits", damaged="register a new version", other_shape="-")
    assert "unexpected keyword argument 'quantization_config'" in e.value.message
    assert "MLmodel file is not readable" not in e.value.message


def test_a_full_disk_while_logging_the_model_is_one_line_and_registers_nothing(cli_trained, tmpfs):
    """Found by a sweep (2026-12-04): ENOSPC from logging the model came out as a traceback (the
    run was FAILED and nothing registered, but the line did not say so)."""
    env, _, _ = cli_trained
    full = {**env, "MLOPS_MODEL_NAME": f"full-{uuid.uuid4().hex[:6]}", "TMPDIR": str(tmpfs("60k"))}
    r = run_mlops("train", "--epochs", "1", env=full)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = error_lines(r.stderr)
    assert "no space left on the disk" in line and "nothing was registered" in line, line
    client = _client(env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{full['MLOPS_MODEL_NAME']}'") == []
    exp = client.get_experiment_by_name(full["MLOPS_MODEL_NAME"])
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert runs and {run.info.status for run in runs} == {"FAILED"}


def test_a_full_disk_while_tensorflow_writes_the_savedmodel_is_one_line(tmpfs):
    """The SavedModel export (and the warmup file) are written by TensorFlow, whose full disk is a
    ResourceExhaustedError, not an OSError: a disk that filled up after the model was logged ended
    `mlops train` in a traceback. Now it is the same line as any full disk; a ResourceExhaustedError
    that is not about the disk (memory) stays what it is."""
    import tensorflow as tf

    from mlproject import export
    from mlproject.model import build_model
    from mlproject.train import _full_disk_is_one_line

    model = build_model((8, 8, 1), 10, 0.01)
    with pytest.raises(ConfigError, match="^no space left on the disk \\(.*No space left on device\\) while "
                                          "training or logging the model; free space in .* nothing was registered$"):
        with _full_disk_is_one_line():
            export.export_saved_model(model, tmpfs("40k") / "tfserving")
    with pytest.raises(tf.errors.ResourceExhaustedError), _full_disk_is_one_line():
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1024,1024]")


def test_a_full_disk_while_the_logged_model_is_read_back_is_the_training_s_full_disk_line(cli_trained, tmpfs,
                                                                                           monkeypatch):
    """Right after logging, training downloads the model back to hash its files: a disk full at that
    moment was "logging the training run: The following failures occurred while downloading ...",
    which did not say the disk is full. Now the line the rest of training gives (run FAILED, nothing
    registered). Driven at the function's edge, inside run_training's handlers."""
    import tempfile

    from mlproject.train import _full_disk_is_one_line, _logged_model_files
    from registry.client import mlflow_errors

    env, res, _ = cli_trained
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpfs("12k")))
    with pytest.raises(ConfigError, match="^no space left on the disk \\(downloading the logged model back into "
                                          ".*\\) while training or logging the model; free space in .* nothing "
                                          "was registered$"):
        with _full_disk_is_one_line(), mlflow_errors("logging the training run"):
            _logged_model_files(f"models:/{res['model_name']}/1")


def test_a_full_disk_while_evaluating_is_not_called_a_damaged_model(cli_trained, tmpfs):
    """A full TMPDIR while the logged model downloads was reported as "its logged model is missing or
    damaged; register a new version" (for production in a gate: "move production to a version that
    loads"), so a full CI runner sent people to replace or roll back a good version. Now it is the
    full-disk line, and the version is not called damaged."""
    env, res, _ = cli_trained
    r = run_mlops("evaluate", "--version", str(res["version"]), env={**env, "TMPDIR": str(tmpfs("12k"))})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = error_lines(r.stderr)
    assert "damaged" not in line and "register a new version" not in line, line
    assert "no space left on the disk" in line and "TMPDIR" in line, line


def test_a_tmpdir_where_the_model_folder_cannot_be_made_is_not_a_traceback(tmpfs, monkeypatch):
    """TMPDIR full to its last inode after Python chose it: making the folder the model downloads
    into was an OSError outside load_checked's checks (a traceback from evaluate, the gate and
    retrain). Now the full-disk line, the version not called damaged."""
    import tempfile

    from mlproject.evaluate import load_checked

    full = tmpfs("40k", no_inodes=True)
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    with pytest.raises(ConfigError) as e:
        load_checked("models:/m/1", "version 1 of 'm'", "digits", damaged="register a new version",
                     other_shape="-")
    assert "no space left on the disk" in str(e.value) and f"{full} (TMPDIR)" in str(e.value), e.value
    assert "damaged" not in str(e.value) and "register a new version" not in str(e.value)


def test_the_same_seed_and_data_train_the_same_weights_from_scratch_and_from_a_start_model():
    """Reproducibility the run's params promise: seed, data (fingerprint), epochs, batch size and
    learning rate fix the weights and every per-epoch metric, also when continuing from a start
    model (a retrain); another seed gives another split and other weights."""
    from mlproject.train import TrainParams, fit_model, prepare_data

    data = prepare_data("digits")
    params = TrainParams(dataset="digits", epochs=2, seed=7)
    (a, ha), (b, hb) = fit_model(params, data), fit_model(params, data)
    assert ha == hb and all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    (_, hc), (_, hd) = fit_model(params, data, start_model=a), fit_model(params, data, start_model=b)
    assert hc == hd and hc["loss"][0] < ha["loss"][0]      # it continued from the start model's weights
    _, other = fit_model(TrainParams(dataset="digits", epochs=2, seed=8), data)
    assert other["loss"] != ha["loss"]
