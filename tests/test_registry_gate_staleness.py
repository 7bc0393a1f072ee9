"""A gate verdict is about one production version: against a real MLflow server and the ledger.

Two pipelines that overlap at the approval both pass their gates against the same production;
once one is promoted, the other's verdict no longer says how it compares with production. The
promotion refuses it (re-gate, or --force with a reason); promoting a version that held
production before (how a person rolls back) is still allowed. A gate run while the production
alias was removed outside mlops refuses to compare with nothing. A gate that fails does not take
'candidate' from another version that a concurrent gate gave it.
"""
from __future__ import annotations

import os

import pytest

from mlops_common.errors import RefusedError
from registry import promotion, reconciliation, versions
from registry.gate import run_gate
from registry.ledger import Ledger
from tests.helpers import run_mlops
from tests.test_registry_gate import Evaluations, doc


def test_a_version_gated_against_an_earlier_production_is_refused_until_gated_again(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = make_version(), make_version(), make_version()
    ev = Evaluations({v1: doc(0.95), v2: doc(0.60), v3: doc(0.96)})
    assert run_gate(model, v1, ev).passed
    promotion.promote(model, v1, actor="alice")
    # two pipelines at their approval hold, both passed against v1
    ev.by_version[v2] = doc(0.95)
    assert run_gate(model, v2, ev).passed and run_gate(model, v3, ev).passed
    promotion.promote(model, v3, actor="bob")                       # the first approval
    ev.by_version[v2] = doc(0.60)                                   # how v2 really compares with v3
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "carol")
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    assert line == (f"error: version {v2} of '{model}' passed its gate against v{v1}, but production is now "
                    f"v{v3}: run `mlops registry gate --version {v2}` again (it compares with v{v3}), or use "
                    f"--force --reason \"...\""), r.stderr
    assert versions.production_version(model) == v3
    refused = Ledger().entries(model)[-1]
    assert (refused.action, refused.to_version, refused.outcome) == ("promote", v2, "refused")
    # gated again against v3 it fails, so it stays refused; --force with a reason is the way round
    assert not run_gate(model, v2, ev).passed
    with pytest.raises(RefusedError, match="validation_status=failed"):
        promotion.promote(model, v2, actor="carol")
    # a version that passes against today's production is promotable
    ev.by_version[v2] = doc(0.97)
    assert run_gate(model, v2, ev).passed
    assert promotion.promote(model, v2, actor="carol").to_version == v2


def test_promoting_a_version_that_held_production_before_is_a_rollback_not_refused(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    ev = Evaluations({v1: doc(0.95), v2: doc(0.96)})
    assert run_gate(model, v1, ev).passed
    promotion.promote(model, v1, actor="alice")
    assert run_gate(model, v2, ev).passed
    promotion.promote(model, v2, actor="alice")
    # v1 passed its gate against nothing; production is v2 now, but v1 served before
    assert promotion.promote(model, v1, actor="oncall", reason="v2 is slow").to_version == v1
    assert versions.production_version(model) == v1


def test_a_gate_refuses_when_the_production_alias_was_removed_outside_mlops(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    ev = Evaluations({v1: doc(0.95), v2: doc(0.85)})
    assert run_gate(model, v1, ev).passed
    promotion.promote(model, v1, actor="alice")
    versions.delete_alias(model, versions.PRODUCTION)              # someone in the MLflow UI
    before = len(Ledger().entries(model))
    with pytest.raises(RefusedError, match=f"the ledger says v{v1} holds production"):
        run_gate(model, v2, ev)
    assert len(Ledger().entries(model)) == before                  # nothing recorded
    assert versions.get_version(model, v2).tags.get("validation_status") != "passed"
    r = run_mlops("registry", "gate", "--version", str(v2))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "mlops registry reconcile" in r.stderr.strip().splitlines()[-1]


def test_a_failing_gate_leaves_candidate_with_the_version_another_gate_gave_it(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    first = Evaluations({v1: doc(0.9)})
    assert run_gate(model, v1, first).passed                        # v1 is the candidate

    class MovesCandidateMeanwhile(Evaluations):
        def __call__(self, version, dataset):
            versions.set_alias(model, versions.CANDIDATE, v2)       # another gate, during this one
            return super().__call__(version, dataset)

    assert not run_gate(model, v1, MovesCandidateMeanwhile({v1: doc(0.5)})).passed
    assert versions.get_version(model, v2).aliases == ("candidate",)


def test_a_deleted_production_version_is_named_as_deleted_not_as_one_to_promote_again(make_version):
    """Found by a sweep (2026-12-04): with production's version deleted in MLflow (which drops the
    alias with it), the gate advised `mlops registry promote --version 2` — a version that no
    longer exists — and reconcile recorded the alias as "moved outside mlops"."""
    from registry.client import tracking_client

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    promotion.promote(model, v1, actor="alice")
    promotion.promote(model, v2, actor="alice")
    tracking_client().delete_model_version(model, str(v2))
    ev = Evaluations({v1: doc(0.95), v3: doc(0.95)})
    with pytest.raises(RefusedError) as e:
        run_gate(model, v3, ev)
    assert f"v{v2}, which the ledger says holds production, was deleted" in e.value.message
    assert "promote --version" not in e.value.message and "mlops registry reconcile" in e.value.message
    rows = reconciliation.reconcile(model, actor="bob").rows
    assert [(r.action, r.from_version, r.to_version) for r in rows] == [("rollback", v2, None)]
    assert f"v{v2} was deleted from the registry" in rows[0].reason


class _GateRowLost(Ledger):
    """The ledger at a blip: reads answer, the gate's row cannot be written."""

    def append(self, entry):
        if entry.action == "gate":
            from mlops_common.errors import ConnectionFailure
            raise ConnectionFailure("cannot write to the ledger database (blip)")
        return super().append(entry)


def test_a_passing_gate_whose_ledger_row_is_lost_leaves_no_passed_tag_to_promote_later(make_version):
    """The gate tagged `validation_status=passed` before writing its ledger row: when the row could
    not be written the tag stayed, with no row saying which production it was compared with, so
    once production had moved the version was promoted on that stale verdict (a version with no
    gate row is not checked against today's production)."""
    from mlops_common.errors import ConnectionFailure

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = make_version(), make_version(), make_version()
    ev = Evaluations({v1: doc(0.95), v2: doc(0.95), v3: doc(0.96)})
    assert run_gate(model, v1, ev).passed
    promotion.promote(model, v1, actor="alice")
    with pytest.raises(ConnectionFailure):
        run_gate(model, v2, ev, ledger=_GateRowLost())            # passed against v1, row lost
    assert versions.get_version(model, v2).tags.get("validation_status") != "passed"
    assert run_gate(model, v3, ev).passed
    promotion.promote(model, v3, actor="bob")
    with pytest.raises(RefusedError):
        promotion.promote(model, v2, actor="carol")              # never compared with v3
    assert versions.production_version(model) == v3
    # a failing verdict is tagged first: a lost row never leaves an earlier `passed` standing
    ev.by_version[v3] = doc(0.50)
    with pytest.raises(ConnectionFailure):
        run_gate(model, v3, ev, ledger=_GateRowLost())
    assert versions.get_version(model, v3).tags.get("validation_status") == "failed"


def test_a_gate_fails_when_the_held_out_set_moved_since_production_was_trained(make_version):
    """Production's training run recorded the held-out set it was trained beside
    (``evaluation/heldout.json``); a gate that now evaluates on another one (the partition moved
    with a NumPy release) would score production on examples it may have trained on."""
    from registry import artifacts
    from registry.client import tracking_client
    from tests.test_registry_gate import FP

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    ev = Evaluations({v1: doc(0.95), v2: doc(0.96)})
    assert run_gate(model, v1, ev).passed
    promotion.promote(model, v1, actor="alice")
    client = tracking_client()
    client.log_dict(versions.get_version(model, v2).run_id, doc(0.96), artifacts.HELDOUT)
    client.log_dict(versions.get_version(model, v1).run_id, {**doc(0.95), "heldout_fingerprint": "e" * 64},
                    artifacts.HELDOUT)
    out = run_gate(model, v2, ev)
    assert not out.passed
    assert [c.rule for c in out.verdict.failed] == ["heldout_unchanged_since_training"]
    assert f"production v{v1} was trained (recorded eeeeeeeeeeee); now {FP[:12]}" in out.summary \
        or f"production v{v1} was trained (recorded eeeeeeeeeeee); now {FP[:12]}" in out.markdown
    assert versions.get_version(model, v2).tags["validation_status"] == "failed"


def test_two_gates_of_one_version_at_once_that_disagree_leave_it_unpromotable_until_gated_again(make_version):
    """Found by review (2026-12-06, fifteenth stop): two gates of one version at once, one passing
    and one failing, could end with the `passed` tag (the pass tags after its row) over a latest
    ledger row `failed` (the failure's row after the pass's): the promotion read the tag and let
    the version in. Tag and latest row disagree: refused, saying to gate it again."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    assert run_gate(model, v1, Evaluations({v1: doc(0.95)})).passed
    promotion.promote(model, v1, actor="alice")

    class OtherGateMeanwhile(Ledger):
        """Between the passing gate's row and its tag, a failing gate of the same version runs whole."""

        def append(self, entry):
            out = super().append(entry)
            if entry.action == "gate" and entry.outcome == "passed":
                assert not run_gate(model, v2, Evaluations({v1: doc(0.95), v2: doc(0.60)})).passed
            return out

    assert run_gate(model, v2, Evaluations({v1: doc(0.95), v2: doc(0.96)}), ledger=OtherGateMeanwhile()).passed
    assert versions.get_version(model, v2).tags["validation_status"] == "passed"
    last = [e for e in Ledger().entries(model) if e.action == "gate" and e.to_version == v2][-1]
    assert last.outcome == "failed"
    with pytest.raises(RefusedError) as e:
        promotion.promote(model, v2, actor="carol")
    assert e.value.message == (
        f"version {v2} of '{model}' is tagged validation_status=passed but its latest gate (ledger #{last.id}) "
        f"failed: two gates of it disagree; run `mlops registry gate --version {v2}` again, or use --force "
        f"--reason \"...\""), e.value.message
    assert versions.production_version(model) == v1
    with pytest.raises(RefusedError, match="two gates of it disagree"):
        promotion.check_deployable(model, v2)
    # gated again, it is promotable
    assert run_gate(model, v2, Evaluations({v1: doc(0.95), v2: doc(0.96)})).passed
    assert promotion.promote(model, v2, actor="carol").to_version == v2


def test_a_failing_re_run_whose_tag_write_fails_leaves_no_failed_report_beside_the_earlier_pass(make_version,
                                                                                                monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): the gate logged its reports before its tag
    and row. A re-run that failed, and whose tag write then failed, left a FAILED report in the
    version's run beside the earlier `passed` tag and ledger row, and a promotion accepted the
    version. A failure is now tagged before anything else is written: that write failing records
    nothing (the line says the verdict was not recorded and to gate again), and a write failing
    after it leaves the version tagged `failed`, not promotable."""
    import json

    from mlops_common.errors import ConnectionFailure
    from registry.client import tracking_client

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    ev = Evaluations({v1: doc(0.95), v2: doc(0.95)})
    assert run_gate(model, v1, ev).passed
    promotion.promote(model, v1, actor="alice")
    assert run_gate(model, v2, ev).passed
    run_id = versions.get_version(model, v2).run_id

    def report_status() -> str:
        path = tracking_client().download_artifacts(run_id, "gate/report.json", os.environ["MLOPS_HOME"])
        return json.loads(open(path).read())["status"]

    set_tags = versions.set_tags

    def refused_failed_tag(m, version, values):
        if values.get("validation_status") == "failed":
            raise ConnectionFailure(f"tagging version {version} of '{m}': the MLflow server did not answer")
        return set_tags(m, version, values)

    monkeypatch.setattr(versions, "set_tags", refused_failed_tag)
    ev.by_version[v2] = doc(0.50)
    with pytest.raises(ConnectionFailure) as e:
        run_gate(model, v2, ev)
    # the run's report, the tag and the latest gate row still say the one earlier verdict
    assert report_status() == "passed"
    assert versions.get_version(model, v2).tags["validation_status"] == "passed"
    assert [r.outcome for r in Ledger().entries(model) if r.action == "gate" and r.to_version == v2] == ["passed"]
    assert e.value.message == (
        f"the gate's verdict on v{v2} (failed) was not recorded, and v{v2} keeps its earlier one (passed): "
        f"tagging version {v2} of '{model}': the MLflow server did not answer; gate it again before promoting it")

    # the tag written, the report's upload failing: tagged `failed`, refused by a promotion
    monkeypatch.setattr(versions, "set_tags", set_tags)

    def upload_fails(*args, **kwargs):
        raise ConnectionFailure("logging the gate report: the MLflow server did not answer")

    monkeypatch.setattr(versions, "log_run_text", upload_fails)
    with pytest.raises(ConnectionFailure):
        run_gate(model, v2, ev)
    assert versions.get_version(model, v2).tags["validation_status"] == "failed"
    with pytest.raises(RefusedError, match="not passed"):
        promotion.promote(model, v2, actor="carol")
