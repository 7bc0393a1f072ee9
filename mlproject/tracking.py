"""MLflow run plumbing for training: experiment choice, resuming an ``mlflow run``, UI links,
which version a retrain starts from.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote, urlparse

from mlops_common import settings

MAX_RUN_NAME = 250      # MLflow's runs.name column: VARCHAR(250) on PostgreSQL and MySQL (SQLite takes any)


def incoming_label(location: str) -> str:
    """A short name for an incoming-data location, for run names (pure).

    ``.../good/batch-001.npz`` -> ``batch-001 (good)`` (the file and the folder it sits in);
    a folder or ``s3://bucket/prefix/`` -> ``prefix/``.
    """
    parsed = urlparse(location)
    path = parsed.path if parsed.scheme == "s3" else location
    parts = PurePosixPath(path.rstrip("/")).parts
    if parsed.scheme == "s3" and not [p for p in parts if p != "/"]:
        return f"{parsed.netloc}/"
    if not parts:
        return location
    name = parts[-1]
    if name.lower().endswith(".npz"):
        parent = parts[-2] if len(parts) > 1 and parts[-2] != "/" else ""
        return f"{name[:-4]} ({parent})" if parent else name[:-4]
    return f"{name}/"


def run_name(dataset: str, *, retrained_from: str | None = None, incoming: str | None = None) -> str:
    """What a training run is called in the MLflow UI (pure): ``train digits``,
    ``retrain v2 + batch-001 (good)``, ``retrain from scratch + incoming/``. At most
    ``MAX_RUN_NAME`` characters: a longer one (long file and folder names) is cut in the middle,
    keeping its start and the folder at its end; the full location is in the run's params and tags."""
    if retrained_from is None:
        return f"train {dataset}"
    start = ("from scratch" if retrained_from == "scratch"
             else f"v{retrained_from}" if retrained_from.isdigit() else retrained_from)
    name = f"retrain {start} + {incoming_label(incoming) if incoming else 'no new data'}"
    if len(name) <= MAX_RUN_NAME:
        return name
    head = (MAX_RUN_NAME - 1) // 2
    return name[:head] + "…" + name[len(name) - (MAX_RUN_NAME - 1 - head):]


def evaluate_run_name(model_uri: str, dataset: str) -> str:
    """What the evaluate entry point's run is called (pure): ``evaluate v3 on digits`` for
    ``models:/<name>/3``, like the training runs beside it in the compare view."""
    ref = model_uri.rstrip("/").rsplit("/", 1)[-1]
    return f"evaluate {'v' + ref if ref.isdigit() else ref} on {dataset}"


def run_note(dataset: str, n_base: int, n_incoming: int, *, retrained_from: str | None = None,
             incoming: str | None = None, parent_run_id: str | None = None) -> str:
    """The run's description (Markdown, MLflow's ``mlflow.note.content``): where it came from (pure)."""
    if retrained_from is None:
        return f"Trained from scratch on the **{dataset}** base set ({n_base} examples)."
    start = ("from scratch" if retrained_from == "scratch"
             else f"from version {retrained_from}" + (f" (run `{parent_run_id}`)" if parent_run_id else ""))
    return (f"Retrained {start} on the **{dataset}** base set ({n_base} examples) plus {n_incoming} "
            f"new examples from `{incoming}`.")


def project_run_id() -> str | None:
    """``MLFLOW_RUN_ID`` when it names a run that is RUNNING (the one ``mlflow run`` started for
    this entry point), else one line: a variable left over from another job reopened a finished
    run, mixed two trainings in it and overwrote a registered version's SavedModel and golden set."""
    from mlops_common.errors import ConfigError
    from registry.client import mlflow_errors, tracking_client

    run_id = settings.env("MLFLOW_RUN_ID")
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"reading run {run_id} (MLFLOW_RUN_ID)"):
        try:
            status = tracking_client().get_run(run_id).info.status
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            status = None
    if status != "RUNNING":
        what = "does not exist on this MLflow server" if status is None else f"is {status}"
        raise ConfigError(f"MLFLOW_RUN_ID names run {run_id}, which {what}: only `mlflow run` sets it, for the "
                          f"run it has just started; unset MLFLOW_RUN_ID (nothing was logged)")
    return run_id


def use_experiment(model_name: str) -> None:
    """Choose the experiment explicitly: MLFLOW_EXPERIMENT_ID / _NAME if set, else one named after
    the model.

    ``mlflow run`` sets MLFLOW_RUN_ID: then the run is already chosen and ``mlflow.start_run()``
    resumes it. Setting the experiment every time also overrides a stale active experiment left
    by an earlier call in the same process.
    """
    import mlflow

    if project_run_id():
        return
    # bytes that are not UTF-8 (set from a Latin-1 shell) were MLflow's UnicodeEncodeError traceback
    experiment_id, experiment_name = settings.env("MLFLOW_EXPERIMENT_ID"), settings.env("MLFLOW_EXPERIMENT_NAME")
    for variable, value in (("MLFLOW_EXPERIMENT_ID", experiment_id), ("MLFLOW_EXPERIMENT_NAME", experiment_name)):
        if value:
            settings.check_utf8(variable, value)
    if experiment_id:
        mlflow.set_experiment(experiment_id=experiment_id)
    else:
        mlflow.set_experiment(experiment_name or model_name)


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
