"""Runs people can tell apart in the MLflow UI: names, lineage tags, params that apply (pure parts).

The real runs (names as MLflow stores them) are checked in tests/test_mlproject_train.py and in
the browser test (tests/test_ui_browser.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from mlproject import tracking
from mlproject.batches import Batch
from mlproject.datasets import Arrays
from mlproject.train import TrainingData, TrainParams, run_identity


@pytest.mark.parametrize("location, label", [
    ("/home/me/.mlops/demo/incoming/good/batch-001.npz", "batch-001 (good)"),
    ("incoming/bad/batch-001.npz", "batch-001 (bad)"),
    ("batch-7.npz", "batch-7"),
    ("/data/new/", "new/"),
    ("/data/new", "new/"),
    ("s3://bucket/new-data/", "new-data/"),
    ("s3://bucket/new-data/2026-12/b1.npz", "b1 (2026-12)"),
    ("s3://bucket", "bucket/"),
    # found by hand mutation (2026-12-05, fifth stop): the root is no folder to name
    ("/batch-7.npz", "batch-7"),
    ("s3://bucket/b1.npz", "b1"),
    # eighteenth stop: an upper-case suffix is a batch too (it is read), not a folder "BATCH.NPZ/"
    ("incoming/good/BATCH.NPZ", "BATCH (good)"),
])
def test_incoming_label_names_the_batch_and_its_folder(location, label):
    assert tracking.incoming_label(location) == label


def test_run_names_tell_base_good_and_bad_retrain_apart():
    names = [tracking.run_name("digits"),
             tracking.run_name("digits", retrained_from="1", incoming="/d/incoming/good/batch-001.npz"),
             tracking.run_name("digits", retrained_from="2", incoming="/d/incoming/bad/batch-001.npz"),
             tracking.run_name("digits", retrained_from="scratch", incoming="s3://b/new/"),
             tracking.run_name("digits", retrained_from="production", incoming="/t/good.npz")]
    assert names == ["train digits", "retrain v1 + batch-001 (good)", "retrain v2 + batch-001 (bad)",
                     "retrain from scratch + new/", "retrain production + good (t)"]


def _data(incoming: str | None) -> TrainingData:
    rng = np.random.default_rng(0)
    def arrays(n):
        return Arrays(rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n))
    batches = (Batch(incoming, arrays(5)),) if incoming else ()
    return TrainingData("digits", arrays(20), arrays(10), batches, incoming)


def test_base_training_has_no_retrain_params_or_lineage_tags():
    params, tags = run_identity(TrainParams(), _data(None), 4)
    assert not {"incoming", "retrained_from", "n_incoming"} & set(params)
    assert params["n_base"] == params["n_train"] == 20 and params["dataset"] == "digits"
    assert "unknown" not in {str(v) for v in params.values()} | set(tags.values())
    assert tags["mlops.kind"] == "train" and not any(k.startswith("mlops.") and k != "mlops.kind" for k in tags)
    assert tags["mlflow.note.content"] == "Trained from scratch on the **digits** base set (20 examples)."


def test_retrain_params_and_lineage_tags():
    params, tags = run_identity(TrainParams(), _data("/d/good/batch-001.npz"), 5, retrained_from="2",
                                parent_run_id="abc123")
    assert (params["incoming"], params["retrained_from"], params["n_incoming"], params["n_train"]) == \
        ("/d/good/batch-001.npz", "2", 5, 25)
    assert (tags["mlops.kind"], tags["mlops.retrained_from"], tags["mlops.parent_run_id"], tags["mlops.incoming"]) \
        == ("retrain", "2", "abc123", "/d/good/batch-001.npz")
    assert "from version 2 (run `abc123`)" in tags["mlflow.note.content"]
    scratch_params, scratch_tags = run_identity(TrainParams(), _data("/d/x.npz"), 5, retrained_from="scratch")
    assert scratch_params["retrained_from"] == "scratch" and "mlops.parent_run_id" not in scratch_tags
    assert scratch_tags["mlflow.note.content"].startswith("Retrained from scratch on the **digits** base set")


def test_evaluate_run_names_say_which_version():
    assert tracking.evaluate_run_name("models:/image-classifier/3", "digits") == "evaluate v3 on digits"
    assert tracking.evaluate_run_name("models:/image-classifier@production", "digits") == \
        "evaluate image-classifier@production on digits"


def test_dataset_digest_depends_on_where_the_data_was_read_unless_it_is_the_bundled_set():
    """MLflow keeps one dataset per (experiment, name, digest): the same examples read from another
    place got the first place as their source (found again by hand mutation, 2026-12-05)."""
    from mlproject.train import DATA_SOURCES, dataset_digest

    fp = "ab" * 32
    assert dataset_digest(fp, DATA_SOURCES["digits"]) == fp[:32]
    here, there = dataset_digest(fp, "/data/a/"), dataset_digest(fp, "s3://b/a/")
    assert here != there and here.startswith(fp[:24]) and len(here) == len(there) == 32


def test_the_json_summary_has_retrain_keys_for_a_retrain_only_and_run_metrics_name_each_class(monkeypatch):
    """Found by hand mutation (2026-12-05, fifth stop): the pure parts of the run's result."""
    from mlproject.evaluate import Evaluation
    from mlproject.train import RunResult, summary

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    ev = Evaluation("models:/m/1", "digits", "f", 10, 0.9, 0.3, {"0": 1.0, "1": 0.8}, {"0": 5, "1": 5})
    assert ev.run_metrics() == {"heldout_accuracy": 0.9, "heldout_loss": 0.3,
                                "heldout_accuracy_class_0": 1.0, "heldout_accuracy_class_1": 0.8}
    base = RunResult("r1", "e1", "models:/m-1", ev, {"loss": [0.5, 0.4], "val_loss": []}, _data(None), TrainParams())
    assert base.metrics() == {"loss": 0.4, "heldout_accuracy": 0.9, "heldout_loss": 0.3}
    doc = summary("m", base, 1)
    assert "retrained_from" not in doc and "incoming" not in doc and doc["n_incoming"] == 0
    again = RunResult("r2", "e1", "models:/m-2", ev, {"loss": [0.2]}, _data("/d/b.npz"), TrainParams(),
                      retrained_from="1")
    doc = summary("m", again, 2)
    assert (doc["retrained_from"], doc["incoming"], doc["n_incoming"], doc["n_train"]) == ("1", "/d/b.npz", 5, 25)


def test_a_run_name_fits_mlflows_run_name_column_and_keeps_both_ends_of_a_long_label():
    """MLflow stores a run's name in VARCHAR(250) (PostgreSQL and MySQL refuse longer; SQLite does
    not check): a retrain of a batch whose file and folder names are long failed to start its run
    (review 2026-12-05, ninth stop). The name is cut in the middle; the full location stays in the
    `incoming` param and the `mlops.incoming` tag."""
    location = f"/data/{'f' * 200}/{'b' * 200}.npz"
    name = tracking.run_name("digits", retrained_from="12", incoming=location)
    assert len(name) == tracking.MAX_RUN_NAME == 250
    assert name.startswith("retrain v12 + bbbb") and name.endswith("ffff)") and "…" in name
    short = tracking.run_name("digits", retrained_from="12", incoming="/d/good/b.npz")
    assert short == "retrain v12 + b (good)"                          # a short one is left as it is
    at_limit = tracking.run_name("digits", retrained_from="scratch", incoming="/d/" + "x" * 226 + "/")
    assert len(at_limit) == 250 and "…" not in at_limit
