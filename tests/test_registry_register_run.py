"""A training whose registration failed is not lost: the error names the finished run, and
`mlops registry register --run-id RUN` registers it as `mlops train` would have (real MLflow
server, a real one-epoch training, the real command line)."""
from __future__ import annotations

import json
import os

import pytest

from mlops_common.errors import ConfigError
from tests.fixtures.trained import train_version
from tests.helpers import run_mlops


def test_a_failed_registration_names_the_run_and_register_run_id_registers_it(mlops_env, monkeypatch):
    import registry.register
    from registry import bundle_hashes, versions
    from registry.client import tracking_client
    from registry.ledger import Ledger

    model = os.environ["MLOPS_MODEL_NAME"]

    def refuse(*args, **kwargs):
        raise ConfigError("the ledger database refused the row; nothing is registered")

    with monkeypatch.context() as m:
        m.setattr(registry.register, "register_version", refuse)
        with pytest.raises(ConfigError) as e:
            train_version(epochs=1)
    runs = tracking_client().search_runs([tracking_client().get_experiment_by_name(model).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    run_id = run.info.run_id
    assert e.value.message == (f"the ledger database refused the row; nothing is registered. The training run "
                               f"{run_id} is kept: register it with `mlops registry register --run-id {run_id}`")
    assert versions.versions_of_run(model, run_id) == set()

    r = run_mlops("registry", "register", "--run-id", run_id, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["version"], doc["run_id"], doc["model_name"], doc["dataset"]) == (1, run_id, model, "digits")
    info = versions.get_version(model, 1)
    assert info.run_id == run_id and info.validation_status == "pending"
    assert (info.tags["dataset"], info.tags["dataset_fingerprint"], info.tags["git_commit"]) == \
        ("digits", run.data.tags["dataset.fingerprint"], run.data.tags["git_commit"])
    assert f"trained from scratch on digits ({run.data.params['n_train']} examples); held-out accuracy " \
           f"{run.data.metrics['heldout_accuracy']:.4f}" in info.description
    [row] = Ledger().entries(model, actions=("register",))
    assert (row.details["run_id"], row.details["model_uri"]) == \
        (run_id, f"models:/{run.outputs.model_outputs[0].model_id}")
    files = bundle_hashes.recorded(model, 1)
    assert files and "tfserving/saved_model.pb" in files and "golden/request.json" in files
    assert bundle_hashes.recorded(model, 1, key=bundle_hashes.MODEL_FILES)
    versions.download_bundle(model, 1, mlops_env["MLOPS_HOME"] + "/bundle")     # checked against the record

    again = run_mlops("registry", "register", "--run-id", run_id)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert f"run {run_id} is already version 1 of '{model}': nothing registered" in again.stderr
    assert versions.versions_of_run(model, run_id) == {1}


def test_register_run_id_refuses_a_run_that_is_not_a_training(mlops_env):
    from registry.client import tracking_client

    client = tracking_client()
    exp = client.create_experiment("not-a-training")
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id)
    r = run_mlops("registry", "register", "--run-id", run.info.run_id)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"run {run.info.run_id} is not from `mlops train` or `mlops retrain` (its mlops.kind tag is missing): " \
           f"nothing registered" in r.stderr
    bad = run_mlops("registry", "register", "--run-id", "../x")
    assert bad.returncode == 2 and "'../x' is not an MLflow run id (32 hex digits)" in bad.stderr


def test_register_run_id_keeps_the_pipeline_the_run_was_trained_in(mlops_env, monkeypatch):
    """Found by a review (2026-12-07, nineteenth stop): `registry register --run-id` took the
    version's commit from the run but its pipeline from the shell it ran in, so a CircleCI
    training whose registration failed, registered again at a terminal, got no `pipeline_id` tag
    (and a ledger row with no pipeline): `registry promote --pipeline-id P` of the pipeline that
    trained it found no version. The version and its register row name the training's pipeline
    now, as `mlops train` would have; the actor is still who registered."""
    import registry.register
    from registry import versions
    from registry.client import tracking_client
    from registry.ledger import Ledger

    model = os.environ["MLOPS_MODEL_NAME"]

    def refuse(*args, **kwargs):
        raise ConfigError("the ledger database refused the row; nothing is registered")

    ci = {"CIRCLE_PIPELINE_ID": "pipe-trained", "CIRCLE_WORKFLOW_ID": "wf-trained", "CIRCLE_JOB": "train"}
    with monkeypatch.context() as m:
        m.setattr(registry.register, "register_version", refuse)
        for k, v in ci.items():
            m.setenv(k, v)
        with pytest.raises(ConfigError):
            train_version(epochs=1)
    for k in ci:
        assert k not in os.environ
    [run] = tracking_client().search_runs([tracking_client().get_experiment_by_name(model).experiment_id])
    assert run.data.tags["ci.pipeline_id"] == "pipe-trained"
    r = run_mlops("registry", "register", "--run-id", run.info.run_id, env={"USER": "dora", "LOGNAME": "dora"})
    assert r.returncode == 0, r.stderr
    assert versions.get_version(model, 1).tags.get("pipeline_id") == "pipe-trained"
    [row] = Ledger().entries(model, actions=("register",))
    assert (row.actor, row.pipeline_id, row.workflow_id, row.details["ci"]["ci.job"]) == \
        ("dora", "pipe-trained", "wf-trained", "train")
    promoted = run_mlops("registry", "promote", "--pipeline-id", "pipe-trained", "--actor", "alice")
    assert "is tagged pipeline_id=pipe-trained" not in promoted.stderr, promoted.stderr
