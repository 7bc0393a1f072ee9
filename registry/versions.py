"""Reading and tagging registered model versions, and fetching what a version serves.

Everything here returns plain data (``VersionInfo``, ``Bundle``, dicts) so that callers
(gate, promotion, serving_sync) decide on values, not on MLflow objects. Unknown models and
versions end as one ``NotFoundError`` line that says which one and what exists.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mlops_common import settings
from mlops_common.errors import ConfigError, NotFoundError, RefusedError

from .client import mlflow_errors, tracking_client

PRODUCTION = "production"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version as plain data."""

    model: str
    version: int
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    created_at: datetime
    description: str | None = None

    @property
    def validation_status(self) -> str:
        return self.tags.get("validation_status", "pending")

    @property
    def deploy_status(self) -> str | None:
        return self.tags.get("deploy_status")

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "run_id": self.run_id,
                "source": self.source, "tags": dict(self.tags), "aliases": list(self.aliases),
                "created_at": self.created_at.isoformat(), "description": self.description}


@dataclass(frozen=True)
class Bundle:
    """What a version serves, downloaded: the SavedModel folder and the golden smoke set."""

    saved_model_dir: Path
    golden_request: dict
    golden_response: dict
    signature: dict


def parse_version(version) -> int:
    """A version number from user input, or one clear line."""
    try:
        v = int(str(version).strip())
    except ValueError:
        raise ConfigError(f"'{version}' is not a version number; use a positive integer such as 3") from None
    if v < 1:
        raise ConfigError(f"version numbers start at 1, got {v}")
    return v


def _info(mv, aliases_by_version: dict[int, list[str]] | None = None) -> VersionInfo:
    v = int(mv.version)
    aliases = tuple(sorted(aliases_by_version.get(v, ()) if aliases_by_version is not None
                           else (mv.aliases or ())))
    return VersionInfo(model=mv.name, version=v, run_id=mv.run_id or None, source=mv.source or "",
                       tags=dict(mv.tags or {}), aliases=aliases,
                       created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc),
                       description=mv.description or None)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def registered_model_aliases(model: str) -> dict[str, int]:
    """``{alias: version}`` of ``model`` (NotFoundError if the model does not exist)."""
    client = tracking_client()
    with mlflow_errors(f"reading registered model '{model}'"):
        try:
            rm = client.get_registered_model(model)
        except Exception as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise NotFoundError(f"registered model '{model}' does not exist in the MLflow registry at "
                                    f"{settings.tracking_uri()}; check --model-name / MLOPS_MODEL_NAME "
                                    f"or register a version first (mlops train)") from None
            raise
    return {alias: int(v) for alias, v in (rm.aliases or {}).items()}


def _by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, v in aliases.items():
        out.setdefault(v, []).append(alias)
    return out


def get_version(model: str, version, *, aliases: dict[str, int] | None = None) -> VersionInfo:
    """Version ``version`` of ``model`` (NotFoundError naming the model or the version).

    ``aliases``: the model's ``{alias: version}`` if the caller just read them (saves a request).
    """
    v = parse_version(version)
    if aliases is None:
        aliases = registered_model_aliases(model)  # also: clear error for an unknown model
    client = tracking_client()
    with mlflow_errors(f"reading version {v} of '{model}'"):
        try:
            mv = client.get_model_version(model, str(v))
        except Exception as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                latest = latest_version_number(model)
                hint = f"the latest is {latest}" if latest else "it has no versions yet"
                raise NotFoundError(f"version {v} of registered model '{model}' does not exist "
                                    f"({hint}); see `mlops registry status`") from None
            raise
    return _info(mv, _by_version(aliases))


def _search(filter_string: str) -> list:
    client = tracking_client()
    out, token = [], None
    for _ in range(1000):  # bounded pagination
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out


def list_versions(model: str) -> list[VersionInfo]:
    """Every version of ``model``, newest first, with its aliases."""
    aliases = registered_model_aliases(model)
    with mlflow_errors(f"listing versions of '{model}'"):
        found = _search(f"name = '{_escape(model)}'")
    return sorted((_info(mv, _by_version(aliases)) for mv in found), key=lambda i: -i.version)


def latest_version_number(model: str) -> int | None:
    with mlflow_errors(f"listing versions of '{model}'"):
        found = _search(f"name = '{_escape(model)}'")
    return max((int(mv.version) for mv in found), default=None)


def find_by_tag(key: str, value: str) -> list[VersionInfo]:
    """Versions of any registered model whose tag ``key`` equals ``value``."""
    with mlflow_errors(f"searching versions tagged {key}={value}"):
        found = _search(f"tags.`{key}` = '{_escape(value)}'")
    return sorted((_info(mv, {}) for mv in found), key=lambda i: (i.model, i.version))


def production_version(model: str) -> int | None:
    """The version ``production`` points at, or None when nothing has been promoted yet."""
    return registered_model_aliases(model).get(PRODUCTION)


def _registry_client(client):
    """MLflow's registry client, to set tags and aliases without ``MlflowClient``'s extra
    "is this a prompt?" lookup before every single write (our models are never prompts, and
    callers have read the version already). Falls back to the public client."""
    getter = getattr(client, "_get_registry_client", None)
    return getter() if getter else client


def set_tags(model: str, version, tags: dict[str, str]) -> None:
    """Set version tags (values must not contain a secret: refused if they do)."""
    v = parse_version(version)
    secrets = settings.secret_values()
    for key, value in tags.items():
        if any(s in str(value) or s in key for s in secrets):
            raise RefusedError(f"refusing to write tag '{key}' on version {v} of '{model}': its value "
                               f"contains the value of a secret environment variable")
    registry = _registry_client(tracking_client())
    with mlflow_errors(f"tagging version {v} of '{model}'"):
        for key, value in tags.items():
            registry.set_model_version_tag(model, str(v), key, str(value))


def set_alias(model: str, alias: str, version: int) -> None:
    registry = _registry_client(tracking_client())
    with mlflow_errors(f"pointing alias '{alias}' of '{model}' at version {version}"):
        registry.set_registered_model_alias(model, alias, str(version))


def delete_alias(model: str, alias: str) -> None:
    registry = _registry_client(tracking_client())
    with mlflow_errors(f"removing alias '{alias}' of '{model}'"):
        registry.delete_registered_model_alias(model, alias)


def run_metrics(run_id: str) -> dict[str, float]:
    """Final metric values of a run (e.g. ``heldout_accuracy``)."""
    client = tracking_client()
    with mlflow_errors(f"reading metrics of run {run_id}"):
        return dict(client.get_run(run_id).data.metrics)


def run_artifact_json(run_id: str, path: str) -> dict | None:
    """A JSON artifact of a run, parsed; None if the run has no such artifact."""
    client = tracking_client()
    parent = os.path.dirname(path)
    with mlflow_errors(f"reading artifact {path} of run {run_id}"):
        listed = {f.path for f in client.list_artifacts(run_id, parent or None)}
        if path not in listed:
            return None
        with tempfile.TemporaryDirectory(prefix="mlops-artifact-") as tmp:
            local = client.download_artifacts(run_id, path, tmp)
            text = Path(local).read_text()
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigError(f"artifact {path} of run {run_id} is not valid JSON; re-log it") from None


def log_run_text(run_id: str, text: str, artifact_file: str) -> None:
    """Attach a text artifact (e.g. the gate report) to a run, even a finished one."""
    client = tracking_client()
    with mlflow_errors(f"logging {artifact_file} to run {run_id}"):
        client.log_text(run_id, text, artifact_file)


def download_bundle(model: str, version, dest) -> Bundle:
    """Download the ``tfserving/`` and ``golden/`` artifacts of a version's run into ``dest``.

    ``dest`` ends up holding ``tfserving/`` and ``golden/``; the download goes to a temporary
    folder next to it first, so a failure never leaves a half-written bundle behind.
    """
    info = get_version(model, version)
    if not info.run_id:
        raise NotFoundError(f"version {info.version} of '{model}' has no source run, so it has no "
                            f"tfserving/ and golden/ artifacts; register versions with mlops train")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    client = tracking_client()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.incoming-", dir=dest.parent))
    try:
        with mlflow_errors(f"downloading the artifacts of version {info.version} of '{model}'"):
            top = {f.path for f in client.list_artifacts(info.run_id)}
            missing = [p for p in ("tfserving", "golden") if p not in top]
            if missing:
                raise NotFoundError(f"run {info.run_id} of version {info.version} of '{model}' has no "
                                    f"{' or '.join(p + '/' for p in missing)} artifact; it was not logged "
                                    f"by mlproject's training, re-train and register it")
            for sub in ("tfserving", "golden"):
                client.download_artifacts(info.run_id, sub, str(tmp))
        bundle = _read_bundle(tmp, model, info.version)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(saved_model_dir=dest / "tfserving", golden_request=bundle.golden_request,
                  golden_response=bundle.golden_response, signature=bundle.signature)


def _read_bundle(root: Path, model: str, version: int) -> Bundle:
    where = f"version {version} of '{model}'"
    if not (root / "tfserving" / "saved_model.pb").is_file():
        raise NotFoundError(f"{where}: tfserving/ has no saved_model.pb; it is not a SavedModel")
    docs = {}
    for name in ("request", "response", "signature"):
        path = root / "golden" / f"{name}.json"
        if not path.is_file():
            raise NotFoundError(f"{where}: golden/{name}.json is missing from its run's artifacts")
        try:
            docs[name] = json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{where}: golden/{name}.json is not valid JSON") from None
    return Bundle(root / "tfserving", docs["request"], docs["response"], docs["signature"])
