"""Register a logged model as a new version of a registered model, with lineage tags."""
from __future__ import annotations

from mlops_common import lineage

from .client import mlflow_errors, tracking_client


def register_version(model_name: str, model_uri: str, *, run_id: str,
                     tags: dict[str, str] | None = None, description: str | None = None) -> int:
    """Create version N of ``model_name`` from ``model_uri`` (a logged model); returns N.

    Tags: the caller's (dataset, retrained_from, ...) plus lineage (git commit, CircleCI ids)
    and ``validation_status=pending``.
    """
    import mlflow

    client = tracking_client()
    all_tags = {**lineage.lineage_tags(), "validation_status": "pending", **(tags or {})}
    with mlflow_errors(f"registering a version of '{model_name}'"):
        mv = mlflow.register_model(model_uri, model_name, tags=all_tags, await_registration_for=300)
        if description:
            client.update_model_version(model_name, mv.version, description=description)
    return int(mv.version)
