"""The one ``--json`` printer of every command."""
from __future__ import annotations

import json
import math


def _strict(value):
    """``value`` with every NaN / infinity as null: strict JSON (a diverged training's loss is NaN,
    which Python's and jq's parsers accept but JSON.parse, Go and most others refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def emit(doc) -> None:
    """Exactly one JSON document on stdout, on one line (``jq``- and line-reader-friendly);
    human progress goes to stderr."""
    print(json.dumps(_strict(doc), default=str, allow_nan=False))
