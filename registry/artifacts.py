"""The run artifacts a model version is made of: the one list of their names, for the code that
logs them (``mlproject``) and the code that reads them back (``registry``, ``serving_sync``).
Renaming one here renames it on both sides; nothing else spells these paths."""
from __future__ import annotations

TFSERVING = "tfserving"                    # the SavedModel TF Serving loads
GOLDEN = "golden"                          # the golden smoke set, as JSON files:
GOLDEN_NAMES = ("request", "response", "signature")
PARTS = (TFSERVING, GOLDEN)                # what a version's bundle is (hashed at registration)
HELDOUT = "evaluation/heldout.json"        # the held-out evaluation
GATE_REPORT = "gate/report"                # the gate's report: .md, .json, .html


def golden_file(name: str) -> str:
    """``request`` -> ``request.json``: a golden file's name inside ``golden/``."""
    return f"{name}.json"


def golden_path(name: str) -> str:
    """``request`` -> ``golden/request.json``: a golden file's artifact path."""
    return f"{GOLDEN}/{golden_file(name)}"
