"""Register a logged model as a new version of a registered model, with lineage tags.

Every registration is also a ``register`` row in the ledger. The ledger is opened (and
migrated) before anything is registered, so a broken ``MLOPS_LEDGER_URL`` stops the command
before it creates a version the ledger would not know about.
"""
from __future__ import annotations

from mlops_common import lineage

from .client import mlflow_errors, tracking_client
from .ledger import Entry, Ledger


def register_version(model_name: str, model_uri: str, *, run_id: str,
                     tags: dict[str, str] | None = None, description: str | None = None) -> int:
    """Create version N of ``model_name`` from ``model_uri`` (a logged model); returns N.

    Tags: the caller's (dataset, retrained_from, ...) plus lineage (git commit, CircleCI ids)
    and ``validation_status=pending``.
    """
    import mlflow

    ledger = Ledger()
    client = tracking_client()
    all_tags = {**lineage.lineage_tags(), "validation_status": "pending", **(tags or {})}
    with mlflow_errors(f"registering a version of '{model_name}'"):
        mv = mlflow.register_model(model_uri, model_name, tags=all_tags, await_registration_for=300)
        if description:
            client.update_model_version(model_name, mv.version, description=description)
    version = int(mv.version)
    ledger.append(Entry(
        action="register", model=model_name, outcome="ok", to_version=version,
        actor=lineage.os_user(), pipeline_id=lineage.pipeline_id(), workflow_id=lineage.workflow_id(),
        details={"run_id": mv.run_id or run_id, "model_uri": model_uri,
                 **{k: v for k, v in all_tags.items()
                    if k in ("dataset.name", "dataset.fingerprint", "retrained_from", "git_commit")}}))
    return version
