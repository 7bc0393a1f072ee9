"""MLflow run plumbing for training: experiment choice, resuming an ``mlflow run``, UI links,
which version a retrain starts from.
"""
from __future__ import annotations

from urllib.parse import quote

from mlops_common import settings

def use_experiment(model_name: str) -> None:
    """Choose the experiment explicitly: MLFLOW_EXPERIMENT_ID / _NAME if set, else one named after
    the model.

    ``mlflow run`` sets MLFLOW_RUN_ID: then the run is already chosen and ``mlflow.start_run()``
    resumes it. Setting the experiment every time also overrides a stale active experiment left
    by an earlier call in the same process.
    """
    import mlflow

    if settings.env("MLFLOW_RUN_ID"):
        return
    if settings.env("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment_id=settings.env("MLFLOW_EXPERIMENT_ID"))
    else:
        mlflow.set_experiment(settings.env("MLFLOW_EXPERIMENT_NAME") or model_name)


def log_new_params(client, run_id: str, params: dict[str, object]) -> None:
    """Log ``params`` except those the run already has (``mlflow run`` logs entry-point params,
    and MLflow refuses to change a param's value)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)) for k, v in params.items() if k not in have]
    if fresh:
        client.log_batch(run_id, params=fresh)


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{settings.tracking_uri().rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(model_name: str, version: int) -> str:
    return f"{settings.tracking_uri().rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{version}"


def production_version(model_name: str) -> int | None:
    """Version holding the ``production`` alias; None when nothing is promoted or the registered
    model does not exist yet (a first retrain then starts from scratch)."""
    from mlops_common.errors import NotFoundError
    from registry import versions

    try:
        return versions.production_version(model_name)
    except NotFoundError:
        return None
