"""Two promotions racing in two real processes: no ledger row lost, alias ends where the ledger says."""
from __future__ import annotations

import os
import subprocess
import sys

from registry import versions
from registry.ledger import Ledger
from tests.helpers import REPO

ROUNDS = 15

_WORKER = r"""
import sys
from registry import promotion
model, version, actor, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for i in range(rounds):
    promotion.promote(model, version, actor=actor, reason=f"round {i}")
"""


def test_racing_promotions_are_serialized(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    v2 = make_version(validation_status="passed")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, model, str(v), actor, str(ROUNDS)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v, actor in ((v1, "racer-1"), (v2, "racer-2"))]
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]

    rows = [e for e in Ledger().entries(model) if e.action == "promote"]
    # nothing lost: every call of both processes left exactly one row
    assert len(rows) == 2 * ROUNDS
    assert sorted(e.reason for e in rows if e.actor == "racer-1") == sorted(f"round {i}" for i in range(ROUNDS))
    assert sorted(e.reason for e in rows if e.actor == "racer-2") == sorted(f"round {i}" for i in range(ROUNDS))
    assert all(e.outcome == "ok" for e in rows)
    # serialized: each row's "from" is the previous row's "to" (no two read the same "current")
    assert rows[0].from_version is None
    for prev, row in zip(rows, rows[1:]):
        assert row.from_version == prev.to_version, (prev, row)
    # they really interleaved, or the test proved nothing
    switches = sum(1 for prev, row in zip(rows, rows[1:]) if prev.to_version != row.to_version)
    assert switches >= 1
    # and the alias ends where the last ledger row says
    assert versions.production_version(model) == rows[-1].to_version
