"""``--json`` output is strict JSON: one line, NaN and infinities as null (a diverged training's
loss is NaN; JSON.parse, Go and most parsers refuse the bare token Python writes by default)."""
from __future__ import annotations

import json

from mlops.commands import output


def _refuse(token):
    raise ValueError(f"not strict JSON: {token}")


def test_non_finite_numbers_are_null_and_the_rest_is_unchanged(capsys):
    doc = {"loss": float("nan"), "nested": [{"lr": float("inf")}, (1, -float("inf"))], "ok": 0.5,
           "n": 3, "name": "digits", "none": None}
    output.emit(doc)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    back = json.loads(out, parse_constant=_refuse)
    assert back == {"loss": None, "nested": [{"lr": None}, [1, None]], "ok": 0.5, "n": 3, "name": "digits",
                    "none": None}
