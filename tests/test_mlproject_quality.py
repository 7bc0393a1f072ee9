"""The calibrated batches do what the pipeline relies on: bad data clearly hurts, good data does not.

Uses the session's ``pretrained_digits`` runs (default settings: 10 epochs, seed 1), the same
ones other tests register as realistic candidates.
"""
from __future__ import annotations

import pytest

from tests.helpers import mlflow_client

pytestmark = pytest.mark.slow


def test_bad_batch_clearly_hurts_and_good_batch_does_not(pretrained_digits):
    acc = {k: s["metrics"]["heldout_accuracy"] for k, s in pretrained_digits.summary.items()}
    assert acc["production"] > 0.9
    assert acc["bad"] <= acc["production"] - 0.04, acc
    assert acc["good"] >= acc["production"] - 0.01, acc
    assert pretrained_digits.summary["bad"]["n_incoming"] == 3600
    assert pretrained_digits.summary["good"]["n_incoming"] == 450


def test_registered_pretrained_versions_evaluate_like_their_runs(mlops_env, pretrained_digits):
    from mlproject.evaluate import evaluate_version

    name = mlops_env["MLOPS_MODEL_NAME"]
    v1 = pretrained_digits.register("production")
    v2 = pretrained_digits.register("bad", retrained_from=str(v1))
    assert (v1, v2) == (1, 2)
    tags = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"]).get_model_version(name, "2").tags
    assert tags["retrained_from"] == "1" and tags["dataset"] == "digits"
    assert tags["dataset_fingerprint"] == pretrained_digits.summary["bad"]["fingerprint"]
    for version, kind in ((v1, "production"), (v2, "bad")):
        ev = evaluate_version(name, version)
        assert ev.accuracy == pytest.approx(pretrained_digits.summary[kind]["metrics"]["heldout_accuracy"], abs=1e-12)
        assert ev.model_uri == f"models:/{name}/{version}"
