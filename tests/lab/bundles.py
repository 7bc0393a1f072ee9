"""The deploy tests' bundles: folders in the run-artifact layout (``tfserving/`` +
``golden/{request,response,signature}.json``).

``build_bundles(root)`` builds ``a``, ``b``, ``c`` — three real tiny SavedModels
(:data:`tests.lab.models.DEPLOY_MODELS`) with DIFFERENT weights, so the version that answers can
be told from its outputs; ``big`` — the same with a 3 MB variable (for connection cuts
mid-upload); and broken variants made from them (:func:`derive_broken`): ``altered`` (c's
SavedModel with a's golden set: weights changed after export), ``golden_edited`` (a with
golden/response.json shifted by 0.01), ``truncated`` (a with its variables file cut in half: TF
Serving cannot load it), ``signature_changed`` (a whose golden/signature.json names another
output). :class:`DeployBundles` has ``.path(kind)`` and ``.golden(kind)``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.lab.models import DEPLOY_MODELS, build_models

KINDS = ("a", "b", "c", "big", "altered", "golden_edited", "truncated", "signature_changed")
ANSWERING = ("a", "b", "c", "big")          # the kinds whose golden outputs are their real outputs


@dataclass(frozen=True)
class DeployBundles:
    root: Path

    def path(self, kind: str) -> Path:
        assert kind in KINDS, kind
        return self.root / kind

    def golden(self, kind: str) -> dict:
        g = self.path(kind) / "golden"
        return {n: json.loads((g / f"{n}.json").read_text()) for n in ("request", "response", "signature")}


def derive_broken(root: Path) -> None:
    """The broken variants (``altered``, ``golden_edited``, ``truncated``, ``signature_changed``)
    from the built ``a`` and ``c``."""
    a, c = root / "a", root / "c"
    shutil.copytree(c / "tfserving", root / "altered" / "tfserving")
    shutil.copytree(a / "golden", root / "altered" / "golden")
    shutil.copytree(a, root / "golden_edited")
    resp = root / "golden_edited" / "golden" / "response.json"
    doc = json.loads(resp.read_text())
    doc["predictions"] = [[p + 0.01 for p in row] for row in doc["predictions"]]
    resp.write_text(json.dumps(doc))
    shutil.copytree(a, root / "truncated")
    data = next((root / "truncated" / "tfserving" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    shutil.copytree(a, root / "signature_changed")
    sig = root / "signature_changed" / "golden" / "signature.json"
    doc = json.loads(sig.read_text())
    doc["serving_default"]["outputs"] = {"probabilities": doc["serving_default"]["outputs"]["output_0"]}
    sig.write_text(json.dumps(doc))


def build_bundles(root: Path) -> DeployBundles:
    """Every kind of :data:`KINDS` under ``root`` (one TensorFlow subprocess, then copies)."""
    build_models(root, DEPLOY_MODELS)
    derive_broken(Path(root))
    return DeployBundles(Path(root))
