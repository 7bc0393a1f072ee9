"""The MLflow Project (MLproject, conda.yaml): same code as the CLI, runnable with `mlflow run`."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from mlops.cli import build_parser
from tests.fixtures.trained import train_version
from tests.helpers import REPO, mlflow_client

ENTRY_POINTS = {"train": "cmd_train", "retrain": "cmd_retrain", "evaluate": "cmd_evaluate"}


def _project():
    return yaml.safe_load((REPO / "MLproject").read_text())


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_commands_are_mlops_commands_that_parse(entry):
    ep = _project()["entry_points"][entry]
    values = {k: (v.get("default") if "default" in v else {"incoming": "/data/new", "version": "3"}[k])
              for k, v in ep.get("parameters", {}).items()}
    command = ep["command"].format(**values)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "mlops"]
    args = build_parser().parse_args(argv[3:])
    assert args.func.__name__ == ENTRY_POINTS[entry]
    for name, value in values.items():   # every parameter reaches the command
        assert str(getattr(args, name)).lower() == str(value).lower()     # from_scratch "false": False


@pytest.mark.parametrize("argv, from_scratch, dataset", [
    ([], False, None), (["--from-scratch"], True, None), (["--from-scratch=true"], True, None),
    (["--from-scratch=False"], False, None), (["--from-scratch", "--dataset", "auto"], True, None),
    (["--dataset", "digits", "--from-scratch=false"], False, "digits")])
def test_retrain_takes_from_scratch_as_a_flag_or_a_value_and_auto_as_the_default_data_set(argv, from_scratch,
                                                                                         dataset):
    """`mlflow run -e retrain` substitutes every parameter into the command, so an on/off flag
    needs a value form (`--from-scratch=false`) and the default data set a name (`auto`)."""
    from mlops.commands.train import _params

    args = build_parser().parse_args(["retrain", "--incoming", "/d/new", *argv])
    assert args.from_scratch is from_scratch and _params(args).dataset == dataset


@pytest.mark.parametrize("argv, line", [
    (["--from-scratch=maybe"], "error: argument --from-scratch: 'maybe' is not true or false"),
    (["--from-scratch="], "error: argument --from-scratch: '' is not true or false"),
    (["--dataset", "mnist"], "error: argument --dataset: invalid choice: 'mnist' (choose from 'digits', "
                             "'fashion_mnist', 'auto')")])
def test_a_from_scratch_or_data_set_retrain_cannot_read_is_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["retrain", "--incoming", "/d/new", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line + " (usage: `mlops retrain --help`)")


def test_conda_env_pins_the_same_dependencies_as_pyproject():
    project = _project()
    assert project["conda_env"] == "conda.yaml"
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    deps = conda["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(pinned)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.\-]*", p) for p in pinned)


def _mlflow_run(entry: str, experiment: str, *params: str):
    import subprocess

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this venv
    return subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", entry, "--env-manager", "local",
                           "--experiment-name", experiment, *(a for p in params for a in ("-P", p))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mlflow_run_train_entry_point_logs_into_the_project_run(mlops_env):
    import subprocess


    experiment = f"project-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this venv
    r = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
                        "--experiment-name", experiment, "-P", "epochs=2", "-P", "seed=3"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    name = mlops_env["MLOPS_MODEL_NAME"]
    assert f"registered {name} version 1: held-out accuracy " in r.stdout
    assert f"/#/models/{name}/versions/1" in r.stdout

    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1                     # logged into the project's run, not a second one
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.info.run_name == "train digits"    # the project run is renamed like any training run
    assert run.data.params["epochs"] == "2" and run.data.params["seed"] == "3"
    assert "heldout_accuracy" in run.data.metrics and len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert client.get_model_version(name, "1").run_id == run.info.run_id

    # The evaluate entry point records its numbers in its own project run.
    r = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "evaluate", "--env-manager", "local",
                        "--experiment-name", experiment, "-P", "version=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (evaluation,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert evaluation["accuracy"] == pytest.approx(run.data.metrics["heldout_accuracy"], abs=1e-12)
    eval_run = next(x for x in client.search_runs([exp.experiment_id]) if x.info.run_id != run.info.run_id)
    assert eval_run.data.tags["evaluated_model_uri"] == f"models:/{name}/1"
    assert eval_run.data.metrics["heldout_accuracy"] == pytest.approx(evaluation["accuracy"])


def test_the_evaluate_entry_point_names_its_run_after_the_version_it_evaluated(mlops_env, monkeypatch):
    """Training renames its project run (`train digits`, `retrain v1 + ...`) so the compare view
    tells runs apart; the evaluate entry point's run, holding the same held-out metrics, kept
    MLflow's random name (`illustrious-vole-848`) beside them (review 2026-12-05, fifth stop)."""
    from mlproject.evaluate import Evaluation, log_to_active_project_run

    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment(f"project-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment, run_name="illustrious-vole-848")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    name = mlops_env["MLOPS_MODEL_NAME"]
    ev = Evaluation(model_uri=f"models:/{name}/3", dataset="digits", heldout_fingerprint="ab" * 32, n=450,
                    accuracy=0.9, loss=0.3, per_class_accuracy={"0": 0.9}, per_class_count={"0": 45})
    assert log_to_active_project_run(ev) == run.info.run_id
    logged = client.get_run(run.info.run_id)
    assert logged.info.run_name == "evaluate v3 on digits"
    assert logged.data.metrics["heldout_accuracy"] == 0.9


def _strict_json(text: str):
    """What JSON.parse, jq and the MLflow UI read: no NaN / Infinity tokens."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_evaluation_heldout_json_is_strict_json_with_a_nan_loss(mlops_env, monkeypatch, tmp_path):
    """Training and the evaluate entry point write `evaluation/heldout.json`. Found by a review
    (2026-12-06, sixteenth stop): `log_dict` wrote a NaN loss (a model answering NaN) as the bare
    token `NaN`, which the MLflow UI's artifact view and jq refuse. Now null, like `--json`; the
    run's metric keeps the NaN."""
    from mlproject.evaluate import Evaluation, log_to_active_project_run
    from registry import artifacts

    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment(f"project-{uuid.uuid4().hex[:8]}"))
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    ev = Evaluation(model_uri="models:/m/3", dataset="digits", heldout_fingerprint="ab" * 32, n=450,
                    accuracy=0.9, loss=float("nan"), per_class_accuracy={"0": 0.9}, per_class_count={"0": 45})
    assert log_to_active_project_run(ev) == run.info.run_id
    doc = _strict_json(Path(client.download_artifacts(run.info.run_id, artifacts.HELDOUT, str(tmp_path))).read_text())
    assert doc["loss"] is None and doc["accuracy"] == 0.9 and doc["heldout_fingerprint"] == "ab" * 32
    assert _strict_json(ev.heldout_json()) == doc      # what training logs (mlproject.train._log_artifacts)


@pytest.mark.slow
def test_mlflow_run_retrain_takes_the_data_set_and_from_scratch(mlops_env, digits_batches):
    """The retrain entry point had neither: `mlflow run -e retrain` always continued from
    production on production's data set (review 2026-12-05, eighth stop)."""
    name = mlops_env["MLOPS_MODEL_NAME"]
    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    client.set_registered_model_alias(name, "production", str(train_version(epochs=1)["version"]))
    experiment = f"project-{uuid.uuid4().hex[:8]}"
    incoming = f"incoming={digits_batches.good}"

    r = _mlflow_run("retrain", experiment, incoming, "epochs=1")        # the defaults: as before
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"registered {name} version 2 (retrained from version 1)" in r.stdout
    r = _mlflow_run("retrain", experiment, incoming, "epochs=1", "from_scratch=true", "dataset=digits")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"registered {name} version 3 (from scratch)" in r.stdout

    runs = {client.get_model_version(name, v).run_id: v for v in ("2", "3")}
    for v in ("2", "3"):
        assert client.get_model_version(name, v).tags["dataset"] == "digits"
    by_version = {runs[r.info.run_id]: r for r in client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id])}
    assert client.get_model_version(name, "2").tags["retrained_from"] == "1"
    assert client.get_model_version(name, "3").tags["retrained_from"] == "scratch"
    p2, p3 = by_version["2"].data.params, by_version["3"].data.params
    assert (p2["from_scratch"], p2["dataset"], p2["retrained_from"]) == ("false", "auto", "1")
    assert (p3["from_scratch"], p3["dataset"], p3["retrained_from"]) == ("true", "digits", "scratch")
    assert by_version["2"].data.tags["dataset.name"] == by_version["3"].data.tags["dataset.name"] == "digits"


def test_mlflow_run_retrain_refuses_a_from_scratch_it_cannot_read(mlops_env, digits_batches):
    """`-P from_scratch=maybe`: one line naming the value, a failed run, nothing registered."""
    experiment = f"project-{uuid.uuid4().hex[:8]}"
    r = _mlflow_run("retrain", experiment, f"incoming={digits_batches.good}", "from_scratch=maybe")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: argument --from-scratch: 'maybe' is not true or false "
                      "(usage: `mlops retrain --help`)"], r.stderr[-3000:]
    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
