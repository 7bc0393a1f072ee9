"""What a deploy needs from the registry for one version: its SavedModel and its golden set.

The golden set alone (three small JSON artifacts) is enough to verify a version that is
already on the hosts, so the fast paths (switch to a warm version, status, smoke) never
download the SavedModel. MLflow is only touched inside these functions (lazily).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .smoke import Golden


@dataclass(frozen=True)
class Bundle:
    saved_model_dir: Path
    golden: Golden
    sha256: dict[str, str] | None = None    # each SavedModel file's, hashed by the registry's check


def fetch_golden(model: str, version: int) -> Golden:
    """The golden set of ``version``, as registered (NotFoundError naming what is missing,
    ConfigError when it was changed in the artifact store since)."""
    from registry import versions

    docs = versions.golden_set(model, version)
    return Golden(docs["request"], docs["response"], docs["signature"])


def download_bundle(model: str, version: int, dest: Path, *, check=None) -> Bundle:
    """The SavedModel and golden set of ``version`` downloaded into ``dest`` (atomic); ``check``
    (``cancel.check``) stops the download when it raises."""
    from registry import versions

    b = versions.download_bundle(model, version, dest, check=check)
    return Bundle(Path(b.saved_model_dir), Golden(b.golden_request, b.golden_response, b.signature), b.sha256)
