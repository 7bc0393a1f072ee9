"""The registry side of the lab: register a bundle folder as a model version, promote, read back.

Runs in-process against the MLflow server of ``MLFLOW_TRACKING_URI`` (``registry.*``), as the
CLI would; MLflow is imported only when a version is registered.
"""
from __future__ import annotations

from pathlib import Path

EXPERIMENT = "deploy-fixture-versions"


class ModelRegistry:
    """Versions of one registered model."""

    def __init__(self, model: str):
        self.model = model

    def register_bundle(self, folder: Path, run_name: str, *, tags: dict, validation_status: str = "passed",
                        experiment: str = EXPERIMENT) -> int:
        """Log ``folder`` (``tfserving/`` + ``golden/``) as a run of ``experiment`` and register it
        with ``tags`` and ``validation_status``; return the new version."""
        import mlflow

        from registry import bundle_hashes, versions
        from registry.client import tracking_client
        from registry.register import register_version

        client = tracking_client()
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        with mlflow.start_run(run_name=run_name, experiment_id=exp_id) as run:
            mlflow.log_artifacts(str(folder / "tfserving"), "tfserving")
            mlflow.log_artifacts(str(folder / "golden"), "golden")
            logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
        v = register_version(self.model, logged.model_uri, run_id=run.info.run_id, tags=tags,
                             bundle_files=bundle_hashes.tree_files(folder))
        versions.set_tags(self.model, v, {"validation_status": validation_status})
        return v

    def promote(self, v: int) -> None:
        from registry import promotion

        promotion.promote(self.model, v, actor="test")

    def production(self) -> int | None:
        from registry import versions

        return versions.production_version(self.model)

    def tags(self, v: int) -> dict:
        from registry import versions

        return versions.get_version(self.model, v).tags

    def ledger(self, actions=None) -> list:
        from registry.ledger import Ledger

        return Ledger().entries(self.model, actions=actions)
