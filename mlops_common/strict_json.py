"""JSON that every parser reads: NaN and infinities become null.

Python's ``json`` writes the bare tokens ``NaN`` and ``Infinity`` (a diverged training's loss is
NaN); ``JSON.parse``, Go, PostgreSQL's ``json`` and most other readers refuse them. Everything
this project writes as JSON for other programs to read (``--json`` documents, the gate's
``report.json``, ``evaluation/heldout.json``, the ledger's ``details``) goes through here.
"""
from __future__ import annotations

import json
import math


def strict(value):
    """``value`` with every NaN / infinity (at any depth) as ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps`` of ``strict(value)``; refuses (ValueError) anything non-finite left over,
    e.g. a numpy float that ``default=`` turned into a number."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)
