"""What a deploy needs from the registry for one version: its SavedModel and its golden set.

The golden set alone (three small JSON artifacts) is enough to verify a version that is
already on the hosts, so the fast paths (switch to a warm version, status, smoke) never
download the SavedModel. MLflow is only touched inside these functions (lazily).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlops_common.errors import NotFoundError

from .smoke import Golden

GOLDEN_FILES = ("request", "response", "signature")


@dataclass(frozen=True)
class Bundle:
    saved_model_dir: Path
    golden: Golden


def fetch_golden(model: str, version: int) -> Golden:
    """The golden set of ``version`` (NotFoundError naming what is missing)."""
    from registry import versions

    info = versions.get_version(model, version)
    if not info.run_id:
        raise NotFoundError(f"version {info.version} of '{model}' has no source run, so it has no golden "
                            f"set; register versions with mlops train")
    docs = {}
    for name in GOLDEN_FILES:
        doc = versions.run_artifact_json(info.run_id, f"golden/{name}.json")
        if doc is None:
            raise NotFoundError(f"version {info.version} of '{model}': golden/{name}.json is missing from "
                                f"its run's artifacts; re-train and register it")
        docs[name] = doc
    return Golden(docs["request"], docs["response"], docs["signature"])


def download_bundle(model: str, version: int, dest: Path) -> Bundle:
    """The SavedModel and golden set of ``version`` downloaded into ``dest`` (atomic)."""
    from registry import versions

    b = versions.download_bundle(model, version, dest)
    return Bundle(Path(b.saved_model_dir), Golden(b.golden_request, b.golden_response, b.signature))
