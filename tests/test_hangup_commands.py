"""SIGHUP (a dropped SSH session, a closed terminal) in the long commands other than the deploys
(those: tests/test_sync_hangup.py): `mlops train` mid-training and `mlops registry promote` while
MLflow applies the move, with stdout AND stderr on the terminal as for a user at a shell, so every
line printed after the hangup (Keras' progress, the result) fails with EIO. The contract is
SIGTERM's (docs/architecture.md): cleanup runs, exit 130, nothing half written.

Real: a pseudo-terminal whose master the test closes (``tests.helpers.PtyCommand``), the MLflow
fixture. Every wait is bounded.
"""
from __future__ import annotations

import os
import uuid

import pytest

from tests.helpers import PtyCommand, mlflow_client


@pytest.mark.slow   # a real training
def test_a_hangup_during_training_closes_its_run_failed_and_registers_nothing(mlflow_server, tmp_path):
    model = f"hangup-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLOPS_HOME": str(tmp_path / "home"),
           "MLOPS_MODEL_NAME": model, "MLFLOW_EXPERIMENT_NAME": "", "MLFLOW_EXPERIMENT_ID": ""}
    client = mlflow_client(mlflow_server)
    runs: list = []

    def training() -> bool:                         # an epoch logged: the training runs
        exp = client.get_experiment_by_name(model)
        runs[:] = client.search_runs([exp.experiment_id]) if exp is not None else []
        return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, "loss"))

    cmd = PtyCommand(("train", "--epochs", "5000"), env, stdout_on_terminal=True)
    try:
        cmd.wait_for(training, seconds=300)
        cmd.hang_up()
        cmd.communicate(timeout=120)
    finally:
        cmd.close()
    assert cmd.proc.returncode == 130, (cmd.proc.returncode, cmd.text())
    assert client.get_run(runs[0].info.run_id).info.status == "FAILED"
    assert client.search_model_versions(f"name='{model}'") == []          # nothing registered


def test_a_hangup_just_after_mlflow_moved_the_alias_puts_it_back(make_version, tmp_path):
    """Found by review (fifteenth stop): held after MLflow moved the alias, before the ``ok`` row, a
    hangup (SIGTERM or Ctrl-C the same) left production moved with the move's intent still open
    (the put-back of a move that was not recorded looked only at moves whose call had returned).
    Now the alias is put back as after a failed last commit: exit 130, production where the
    ledger says, and the next promotion goes ahead."""
    from registry import promotion, versions
    from registry.ledger import Ledger
    from tests.helpers import run_mlops

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    promotion.promote(model, v1, actor="alice")
    cmd = PtyCommand(("registry", "promote", "--version", str(v2), "--actor", "carol"), {},
                     tmp_path / "paused", "promotion:after_alias", stdout_on_terminal=True)
    try:
        cmd.wait_paused(seconds=120)
        assert versions.production_version(model) == v2          # MLflow moved it
        cmd.hang_up()
        cmd.communicate(timeout=120)
    finally:
        cmd.close()
    assert cmd.proc.returncode == 130, (cmd.proc.returncode, cmd.text())
    assert versions.production_version(model) == v1
    moves = [e for e in Ledger().entries(model) if e.action in ("promote", "rollback")]
    assert (moves[-1].to_version, moves[-1].outcome) == (v1, "ok"), moves[-1]    # the ledger agrees
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "dave")
    assert r.returncode == 0, r.stderr
    assert versions.production_version(model) == v2
