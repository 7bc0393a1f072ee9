"""The gate's decision and report: pure functions on plain evaluation dicts (fast)."""
from __future__ import annotations

import json
import math

import pytest

from mlops_common.errors import ConfigError, RefusedError
from registry import gate_report
from registry.gate_report import summary
from registry.gate_rules import Baseline, GateRules, choose_baseline, decide
from registry.gate_stats import (
    accuracy_tolerance,
    decode_correct,
    encode_correct,
    paired_standard_error,
    paired_tolerance,
)

FP = "a" * 64


def evaluation(acc: float, per_class: dict[str, float] | None = None, *, n: int = 450,
               loss: float = 0.2, fp: str = FP) -> dict:
    per_class = per_class or {str(k): acc for k in range(10)}
    return {"model_uri": "models:/m/1", "dataset": "digits", "heldout_fingerprint": fp, "n": n,
            "accuracy": acc, "loss": loss, "per_class_accuracy": per_class,
            "per_class_count": {k: n // len(per_class) for k in per_class}}


def failed_rules(verdict) -> list[str]:
    return [c.rule for c in verdict.failed]


def test_tolerance_is_two_standard_errors_with_a_floor():
    # digits: 450 held-out examples, production around 0.95 -> one SE ~ 0.0103
    assert accuracy_tolerance(0.95, 450) == pytest.approx(2 * math.sqrt(0.95 * 0.05 / 450))
    assert 0.020 < accuracy_tolerance(0.95, 450) < 0.021
    # a huge held-out set or a perfect model would give ~0: the floor keeps 0.01
    assert accuracy_tolerance(0.95, 1_000_000) == 0.01
    assert accuracy_tolerance(1.0, 450) == 0.01
    assert accuracy_tolerance(0.9, 0) == 0.01
    # smaller held-out sets are noisier: more tolerance
    assert accuracy_tolerance(0.95, 100) > accuracy_tolerance(0.95, 450)


@pytest.mark.parametrize("delta", [0.0, -0.003, -0.007, -0.015, +0.01])
def test_good_retrain_deltas_pass(delta):
    prod = evaluation(0.953)
    cand = evaluation(0.953 + delta)
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert v.passed, summary(v, 2)
    assert v.tolerance == pytest.approx(accuracy_tolerance(0.953, 450))


@pytest.mark.parametrize("delta", [-0.04, -0.06, -0.2])
def test_bad_retrain_deltas_fail_on_accuracy_vs_production(delta):
    v = decide(evaluation(0.953 + delta), evaluation(0.953), GateRules(), baseline_version=1)
    assert not v.passed
    assert "accuracy_vs_production" in failed_rules(v)
    check = next(c for c in v.checks if c.rule == "accuracy_vs_production")
    assert check.shortfall == pytest.approx(-delta - v.tolerance, abs=1e-6)


def test_below_absolute_minimum_fails_even_without_production():
    v = decide(evaluation(0.79), None, GateRules())
    assert not v.passed and failed_rules(v) == ["min_accuracy"]
    assert v.baseline_version is None and v.tolerance is None
    text = summary(v, 1)
    assert "no production version yet" in text and "min_accuracy" in text and "0.0100" in text


def test_first_version_passes_on_absolute_rules_only():
    v = decide(evaluation(0.85), None, GateRules())
    assert v.passed
    assert [c.rule for c in v.checks] == ["min_accuracy", "signature"]
    assert any("only the absolute rules" in n for n in v.notes)


def test_one_class_collapsing_fails_the_per_class_rule_even_if_overall_is_fine():
    per_class_prod = {str(k): 0.95 for k in range(10)}
    per_class_cand = dict(per_class_prod, **{"3": 0.80})          # -0.15 on class 3
    v = decide(evaluation(0.945, per_class_cand), evaluation(0.95, per_class_prod), GateRules(),
               baseline_version=4)
    assert failed_rules(v) == ["class_accuracy_vs_production"]
    msg = next(c for c in v.failed).message
    assert "class 3" in msg and "-0.150" in msg and "v4" in msg


def test_class_drop_exactly_at_limit_passes():
    prod = {str(k): 0.9 for k in range(10)}
    cand = dict(prod, **{"5": 0.8})
    assert decide(evaluation(0.9, cand), evaluation(0.9, prod), GateRules(), baseline_version=1).passed


def test_explicit_rules_override_the_derived_tolerance():
    rules = GateRules(max_accuracy_drop=0.05, max_class_drop=0.2, min_accuracy=0.5)
    v = decide(evaluation(0.91), evaluation(0.95), rules, baseline_version=1)
    assert v.passed and v.tolerance == 0.05 and "explicitly" in v.tolerance_derivation
    assert not decide(evaluation(0.89), evaluation(0.95), rules, baseline_version=1).passed


def test_different_heldout_sets_are_not_comparable():
    v = decide(evaluation(0.95), evaluation(0.95, fp="b" * 64), GateRules(), baseline_version=1)
    assert failed_rules(v) == ["same_heldout_set"]


def test_missing_class_in_candidate_fails():
    cand = evaluation(0.95, {str(k): 0.95 for k in range(9)})
    v = decide(cand, evaluation(0.95), GateRules(), baseline_version=1)
    assert failed_rules(v) == ["class_accuracy_vs_production"]


def test_signature_problems_fail_unless_allowed():
    problems = ["'serving_default' input 'inputs' dtype changed from DT_FLOAT to DT_INT64"]
    v = decide(evaluation(0.95), evaluation(0.95), GateRules(), baseline_version=1,
               signature_problems=problems)
    assert failed_rules(v) == ["signature"]
    assert "--allow-signature-change" in v.failed[0].message
    allowed = decide(evaluation(0.95), evaluation(0.95), GateRules(), baseline_version=1,
                     signature_problems=problems, allow_signature_change=True)
    assert allowed.passed
    # a malformed or missing candidate signature is never "allowed"
    broken = decide(evaluation(0.95), evaluation(0.95), GateRules(), baseline_version=1,
                    signature_problems=["new signature: golden/signature.json is missing"],
                    allow_signature_change=True)
    assert failed_rules(broken) == ["signature"]


def test_summary_names_every_failed_rule_and_by_how_much():
    prod = {str(k): 0.95 for k in range(10)}
    v = decide(evaluation(0.78, dict(prod, **{"8": 0.6})), evaluation(0.95, prod), GateRules(),
               baseline_version=2)
    text = summary(v, 5)
    assert text.startswith("Version 5 failed the quality gate against production v2")
    for rule in ("min_accuracy", "accuracy_vs_production", "class_accuracy_vs_production"):
        assert rule in text
    assert "short by 0.0200" in text          # 0.80 - 0.78
    assert "\n" not in text


def test_a_failure_by_less_than_the_fourth_decimal_does_not_read_short_by_zero():
    """Found by review (tenth stop): a FAIL whose shortfall rounds to 0.0000 said "(short by
    0.0000)", which reads as a pass to the approver."""
    prod = {str(k): 0.95 for k in range(10)}
    v = decide(evaluation(0.79997, prod), evaluation(0.95, prod), GateRules(), baseline_version=2)
    text = summary(v, 5)
    assert "min_accuracy" in text and "short by 3e-05" in text, text
    assert "short by 0.0000" not in text


def test_rules_from_env_and_flags(monkeypatch):
    monkeypatch.setenv("MLOPS_GATE_MIN_ACCURACY", "0.9")
    monkeypatch.setenv("MLOPS_GATE_MAX_CLASS_DROP", "0.2")
    r = GateRules.from_env(max_class_drop=0.05, max_accuracy_drop=None)
    assert (r.min_accuracy, r.max_class_drop, r.max_accuracy_drop) == (0.9, 0.05, None)
    monkeypatch.setenv("MLOPS_GATE_MAX_ACCURACY_DROP", "lots")
    with pytest.raises(ConfigError, match="MLOPS_GATE_MAX_ACCURACY_DROP must be a number"):
        GateRules.from_env()
    monkeypatch.setenv("MLOPS_GATE_MAX_ACCURACY_DROP", "2")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        GateRules.from_env()


@pytest.mark.parametrize("raw", ["0_1", "00_1", "\uff10.\uff11", "0.0_5"])
def test_a_gate_variable_is_an_ascii_decimal_as_the_flags_are(monkeypatch, raw):
    """`float()` reads "0_1" as 1.0: MLOPS_GATE_MAX_CLASS_DROP=0_1 (meant 0.1) allowed every class
    to drop to 0 and passed. The flags refuse it (`flags.number`, third stop of 2026-12-05), and
    so do the MLOPS_BAKE_* variables; the gate's variables took it."""
    monkeypatch.setenv("MLOPS_GATE_MAX_CLASS_DROP", raw)
    with pytest.raises(ConfigError, match="MLOPS_GATE_MAX_CLASS_DROP must be a number such as 0.05"):
        GateRules.from_env()
    monkeypatch.setenv("MLOPS_GATE_MAX_CLASS_DROP", " 0.1 ")
    assert GateRules.from_env().max_class_drop == 0.1


def test_report_has_both_versions_side_by_side_per_class():
    prod = {str(k): 0.95 for k in range(10)}
    cand = dict(prod, **{"3": 0.7})
    c_eval, p_eval = evaluation(0.93, cand, loss=0.25), evaluation(0.95, prod, loss=0.2)
    v = decide(c_eval, p_eval, GateRules(), baseline_version=1)
    rep = gate_report.build(model="m", version=2, verdict=v, rules=GateRules(), candidate=c_eval,
                            production=p_eval, signature_differences=[], allow_signature_change=False,
                            evaluated_at="2026-01-01T00:00:00+00:00")
    json.dumps(rep)  # serializable
    assert rep["status"] == "failed" and rep["production_version"] == 1
    assert rep["metrics"] == {"candidate": {"accuracy": 0.93, "loss": 0.25},
                              "production": {"accuracy": 0.95, "loss": 0.2}}
    row3 = next(r for r in rep["per_class"] if r["class"] == "3")
    assert row3 == {"class": "3", "count": 45, "candidate": 0.7, "production": 0.95, "delta": -0.25,
                    "lost": None, "won": None, "standard_error": None, "allowed_drop": 0.1}
    assert [r["class"] for r in rep["per_class"]] == [str(k) for k in range(10)]
    assert "sqrt(p(1-p)/n)" in rep["rules"]["max_accuracy_drop_derivation"]
    md = gate_report.markdown(rep)
    assert "**FAILED**" in md
    assert "| 3 | 45 | 0.700 | 0.950 | -0.2500 |" in md
    assert "| accuracy | 0.9300 | 0.9500 | -0.0200 |" in md
    assert "v2 (candidate)" in md and "v1 (production)" in md


def test_report_without_production_says_so():
    e = evaluation(0.9)
    v = decide(e, None, GateRules())
    rep = gate_report.build(model="m", version=1, verdict=v, rules=GateRules(), candidate=e,
                            production=None, signature_differences=[], allow_signature_change=False,
                            evaluated_at="t")
    assert rep["metrics"]["production"] is None and rep["production_version"] is None
    md = gate_report.markdown(rep)
    assert "PASSED" in md and "only the absolute rules applied" in md


# --- found by review: verdicts on documents that prove nothing -------------------------------
@pytest.mark.parametrize("cand_fp, prod_fp", [("", FP), (None, FP), (FP, ""), (None, None)])
def test_an_unrecorded_held_out_set_is_not_the_same_held_out_set(cand_fp, prod_fp):
    cand, prod = evaluation(0.95), evaluation(0.60)
    for doc, fp in ((cand, cand_fp), (prod, prod_fp)):
        if fp is None:
            del doc["heldout_fingerprint"]
        else:
            doc["heldout_fingerprint"] = fp
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert "same_heldout_set" in failed_rules(v)
    assert "not recorded" in next(c.message for c in v.checks if c.rule == "same_heldout_set")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1.5, -0.1])
def test_an_accuracy_that_is_not_a_number_in_0_1_fails(value):
    v = decide(evaluation(value), evaluation(0.95), GateRules(), baseline_version=1)
    assert not v.passed and "metrics_valid" in failed_rules(v), [c.message for c in v.checks]
    v = decide(evaluation(0.95), evaluation(value), GateRules(), baseline_version=1)   # production's too
    assert not v.passed and "metrics_valid" in failed_rules(v)


def test_a_nan_class_accuracy_fails_and_is_named():
    per_class = {str(k): 0.95 for k in range(10)}
    v = decide(evaluation(0.95, dict(per_class, **{"3": math.nan})), evaluation(0.95, per_class), GateRules(),
               baseline_version=1)
    assert not v.passed
    msg = next(c.message for c in v.checks if c.rule == "metrics_valid")
    assert "class 3 is not a number" in msg


@pytest.mark.parametrize("field, value", [("n", "abc"), ("n", math.nan), ("n", -1), ("n", 2.5),
                                          ("per_class_count", {"3": "x"}), ("per_class_count", {"3": math.inf}),
                                          ("per_class_count", [1, 2])])
def test_a_count_that_is_not_a_whole_number_fails_in_one_line_not_a_traceback(field, value):
    """A corrupt evaluation (an artifact edited or cut) crashed the rules' int() with a traceback."""
    for corrupt_production in (False, True):
        cand, prod = evaluation(0.95), evaluation(0.95)
        (prod if corrupt_production else cand)[field] = value
        v = decide(cand, prod, GateRules(), baseline_version=1)
        assert not v.passed and failed_rules(v) == ["metrics_valid"], [c.message for c in v.checks]
        msg = next(c.message for c in v.checks if c.rule == "metrics_valid")
        assert field in msg and ("production v1" if corrupt_production else "candidate") in msg, msg


def test_valid_documents_have_no_metrics_rule():
    v = decide(evaluation(0.95), evaluation(0.95), GateRules(), baseline_version=1)
    assert v.passed and "metrics_valid" not in [c.rule for c in v.checks]


# --- the baseline: which version the gate compares with (read by run_gate, chosen here) --------
def test_the_baseline_is_the_production_version():
    assert choose_baseline("m", 5, 3, None, None) == Baseline(3, gated_production=False)


def test_no_production_and_no_ledger_holder_means_no_baseline():
    assert choose_baseline("m", 1, None, None, None) == Baseline(None, gated_production=False)


def test_gating_the_production_version_has_no_baseline_and_says_so():
    assert choose_baseline("m", 4, 4, None, None) == Baseline(None, gated_production=True)


def test_the_production_version_gated_is_not_said_to_have_no_production():
    """Gating the version that holds production: its signature check said "no production to
    compare with", beside the summary's "as the production version itself" (a sweep of
    2026-12-04 removed "no production version yet" from that report, not this)."""
    v = decide(evaluation(0.95), None, GateRules(), gated_production=True)
    text = summary(v, 4)
    assert v.passed and "no production" not in text.lower(), text
    assert "this version holds production" in next(c.message for c in v.checks if c.rule == "signature")
    first = decide(evaluation(0.95), None, GateRules())
    assert "no production to compare with" in next(c.message for c in first.checks if c.rule == "signature")


def test_a_missing_alias_with_a_deleted_ledger_holder_says_to_reconcile():
    with pytest.raises(RefusedError) as exc:
        choose_baseline("digits", 5, None, 3, False)
    assert str(exc.value) == (
        "'digits' has no production alias: v3, which the ledger says holds production, was deleted from the "
        "registry; the gate would compare with nothing; record its removal with `mlops registry reconcile` "
        "(then promote a version), then gate again")


def test_a_missing_alias_whose_ledger_holder_exists_says_to_promote_it_again():
    with pytest.raises(RefusedError) as exc:
        choose_baseline("digits", 5, None, 3, True)
    assert str(exc.value) == (
        "'digits' has no production alias but the ledger says v3 holds production (the alias was removed "
        "outside mlops): the gate would compare with nothing; put it back with `mlops registry promote "
        "--version 3` or record its removal with `mlops registry reconcile`, then gate again")


def test_a_held_out_set_that_moved_since_a_version_was_trained_fails_the_gate():
    """The frozen partition rests on NumPy's permutation for a fixed seed, which NumPy does not
    promise across releases. Both evaluations are made now with the same code, so their
    fingerprints agree even when the set moved; only what each training run recorded shows it."""
    cand, prod = evaluation(0.95), evaluation(0.95)
    same = decide(cand, prod, GateRules(), baseline_version=1, trained_beside={"candidate": FP, "production": FP})
    assert same.passed
    kept = next(c for c in same.checks if c.rule == "heldout_unchanged_since_training")
    assert kept.passed
    assert kept.message == "the held-out set is the one the candidate and production v1 were trained beside"
    alone_kept = decide(cand, None, GateRules(), trained_beside={"candidate": FP})
    assert next(c for c in alone_kept.checks if c.rule == "heldout_unchanged_since_training").message == (
        "the held-out set is the one the candidate was trained beside")

    moved = decide(cand, prod, GateRules(), baseline_version=1,
                   trained_beside={"candidate": FP, "production": "b" * 64})
    assert not moved.passed and failed_rules(moved) == ["heldout_unchanged_since_training"]
    check = next(c for c in moved.checks if c.rule == "heldout_unchanged_since_training")
    assert "production v1 was trained (recorded bbbbbbbbbbbb)" in check.message
    assert "now aaaaaaaaaaaa" in check.message and "--force --reason" in check.message

    # no production: the candidate's own record still counts (its accuracy may be inflated)
    alone = decide(cand, None, GateRules(), trained_beside={"candidate": "c" * 64})
    assert not alone.passed and failed_rules(alone) == ["heldout_unchanged_since_training"]

    # nothing recorded (runs made elsewhere): no check, as before
    for beside in (None, {}, {"candidate": None, "production": None}):
        v = decide(cand, prod, GateRules(), baseline_version=1, trained_beside=beside)
        assert v.passed and "heldout_unchanged_since_training" not in [c.rule for c in v.checks]


def test_a_limit_with_three_decimals_is_shown_as_it_was_set():
    """``--min-accuracy 0.905`` / ``--max-class-drop 0.075``: the messages, the JUnit cases, the
    report's limits line and the summary showed them to 2 decimals (0.91, 0.07), so a version that
    passed read "held-out accuracy 0.9060 (minimum 0.91)" and "largest per-class drop 0.074
    (allowed 0.07)" — a pass whose numbers say fail."""
    from registry import gate_html

    rules = GateRules(min_accuracy=0.905, max_class_drop=0.075)
    prod = evaluation(0.95, {str(k): 0.95 for k in range(10)})
    cand = evaluation(0.945, {**{str(k): 0.95 for k in range(10)}, "3": 0.876})     # drop 0.074 on class 3
    v = decide(cand, prod, rules, baseline_version=1)
    assert v.passed, summary(v, 2)
    checks = {c.rule: c.message for c in v.checks}
    assert checks["min_accuracy"] == "held-out accuracy 0.9450 (minimum 0.905)", checks
    assert checks["class_accuracy_vs_production"] == "largest per-class drop 0.074 (class 3; allowed 0.075)", checks
    report = gate_report.build(model="m", version=2, verdict=v, rules=rules, candidate=cand, production=prod,
                               signature_differences=[], allow_signature_change=False,
                               evaluated_at="2026-12-01T12:00:00+00:00")
    limits = "Limits: accuracy ≥ 0.905; accuracy drop vs production ≤ "
    assert limits in gate_report.markdown(report) and "per-class drop ≤ 0.075." in gate_report.markdown(report)
    assert limits in gate_html.html(report) and "per-class drop ≤ 0.075." in gate_html.html(report)
    # a failure says the limit it missed as set, too
    v = decide(evaluation(0.9049), None, rules)
    assert [c.message for c in v.failed] == ["held-out accuracy 0.9049 (minimum 0.905)"]
    # limits of two decimals read as before
    v = decide(cand, prod, GateRules(min_accuracy=0.9, max_class_drop=0.1), baseline_version=1)
    assert {c.rule: c.message for c in v.checks}["min_accuracy"] == "held-out accuracy 0.9450 (minimum 0.90)"


@pytest.mark.parametrize("kind", ["nan_on_some_images", "logits", "inf_on_some_images"])
def test_a_candidate_whose_outputs_are_not_class_probabilities_fails(kind):
    """The contract's output is class probabilities. An argmax over NaN picks class 0 and over
    logits the right class, so such a candidate measured a fine accuracy and passed the gate,
    then answered NaN (or scores that are not probabilities) to clients."""
    import numpy as np

    from mlproject.datasets import load_partition
    from mlproject.evaluate import evaluation_of

    heldout = load_partition("digits").heldout
    good = np.full((len(heldout), 10), 0.01, np.float32)
    good[np.arange(len(heldout)), heldout.labels] = 0.91      # right on every image, sums to 1
    cand = good.copy()
    if kind == "logits":
        cand = cand * 40 - 3                                   # same argmax, not probabilities
    else:
        cand[:4] = np.nan if kind == "nan_on_some_images" else np.inf
    production = evaluation_of(good, heldout, model_uri="models:/m/1", dataset="digits").to_dict()
    candidate = evaluation_of(cand, heldout, model_uri="models:/m/2", dataset="digits").to_dict()
    assert candidate["accuracy"] > 0.98          # argmax alone saw nothing wrong
    v = decide(candidate, production, GateRules(), baseline_version=1)
    assert not v.passed, summary(v, 2)
    assert "class_probabilities" in failed_rules(v)
    msg = next(c.message for c in v.failed if c.rule == "class_probabilities")
    expected = len(heldout) if kind == "logits" else 4
    assert f"{expected} of {len(heldout)} held-out images" in msg
    # the same outputs from production do not stop a candidate that answers probabilities
    v = decide(production, candidate, GateRules(), baseline_version=1)
    assert "class_probabilities" not in failed_rules(v)
    assert any("not class probabilities" in n for n in v.notes)


# --- the paired accuracy rule (Reviews of 2026-12-05, sixth stop) ---------------------------------

def with_answers(doc: dict, right: list[bool]) -> dict:
    """``doc`` with per-example results ``right`` (held-out order) and the accuracy they give."""
    return dict(doc, accuracy=sum(right) / len(right), correct_bits=encode_correct(right), n=len(right))


def flips(n: int = 450, prod_right: int = 428, lost: int = 7, won: int = 0) -> tuple[dict, dict]:
    """Production right on the first ``prod_right`` of ``n`` examples; the candidate gets ``lost``
    of those wrong and ``won`` of production's wrong ones right."""
    assert won <= n - prod_right
    prod = [i < prod_right for i in range(n)]
    cand = [(i < prod_right and i >= lost) or (i >= prod_right and i < prod_right + won) for i in range(n)]
    return with_answers(evaluation(0.0, n=n), cand), with_answers(evaluation(0.0, n=n), prod)


def test_paired_tolerance_numbers_by_hand():
    # b = 7, c = 0, n = 450: d = -7/450 = -0.0155556; (b + c)/n - d^2 = 0.0155556 - 0.000241975
    # = 0.0153136; / 450 = 3.40302e-5; sqrt = 0.0058335; x 2 = 0.0116670
    assert paired_standard_error(7, 0, 450) == pytest.approx(0.0058335, abs=1e-7)
    assert paired_tolerance(7, 0, 450) == pytest.approx(0.0116670, abs=1e-6)
    # b = 40, c = 30: d = -0.0222222; 0.1555556 - 0.000493827 = 0.1550617; / 450 = 3.445816e-4;
    # sqrt = 0.0185629; x 2 = 0.0371258 (wider than the unpaired 0.0203: many flips, both ways)
    assert paired_tolerance(40, 30, 450) == pytest.approx(0.0371258, abs=1e-6)
    # nothing flipped, or too few examples to say anything: the floor
    assert paired_tolerance(0, 0, 450) == 0.01 and paired_tolerance(1, 0, 450) == 0.01
    assert paired_tolerance(3, 1, 0) == 0.01
    assert paired_tolerance(7, 0, 450, floor=0.0, z=3.0) == pytest.approx(3 * 0.0058335, abs=1e-6)


def test_correct_bits_are_numpys_packbits_in_base64_and_decode_back():
    import base64

    import numpy as np

    right = np.random.default_rng(3).random(450) > 0.07
    text = encode_correct(right)
    assert text == base64.b64encode(np.packbits(right).tobytes()).decode("ascii") and len(text) == 76
    value = decode_correct(text, 450)
    assert value.bit_count() == int(right.sum()) and value >> 449 == int(right[0])
    with pytest.raises(ValueError, match="bits for 449 examples"):
        decode_correct(encode_correct(right[:440]), 449)
    with pytest.raises(ValueError, match="past the last example"):
        decode_correct(base64.b64encode(bytes([0xFF] * 57)).decode(), 450)
    with pytest.raises(ValueError, match="not base64"):
        decode_correct("%%%", 450)


def test_a_candidate_that_only_lost_examples_fails_the_paired_rule_the_unpaired_one_passed():
    """The same accuracies, 0.9356 vs 0.9511 (-0.0156): production's standard error alone allowed
    0.0203, but on the same examples the candidate got 7 wrong that production got right and won
    none back, a regression no noise explains (allowed 0.0117)."""
    cand, prod = flips(lost=7, won=0)
    old = decide({k: v for k, v in cand.items() if k != "correct_bits"}, prod, GateRules(), baseline_version=1)
    assert old.passed and old.tolerance == pytest.approx(accuracy_tolerance(prod["accuracy"], 450))
    assert old.tolerance_derivation.startswith("unpaired (fallback: the candidate's evaluation carries no "
                                               "per-example results")
    assert "b and c unknown" in old.tolerance_derivation and old.paired is None
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert failed_rules(v) == ["accuracy_vs_production"], summary(v, 2)
    assert v.tolerance == pytest.approx(0.011667, abs=1e-6)
    assert v.tolerance_derivation.startswith("paired, both versions on the same 450 held-out examples")
    assert ("b = 7 (production right, candidate wrong), c = 0 (candidate right, production wrong), n = 450"
            in v.tolerance_derivation)
    assert v.to_dict()["discordant"] == {"production_right_candidate_wrong": 7,
                                         "candidate_right_production_wrong": 0, "n": 450}


def test_a_candidate_that_flipped_many_both_ways_passes_the_paired_rule():
    """The reverse: -0.0222 failed production's standard error alone (0.0203), but 20 lost and 10
    won is within the noise of two models' answers: (30/450 - 0.0222^2)/450 = 1.470507e-4, sqrt =
    0.0121264, allowed 0.0242528."""
    cand, prod = flips(prod_right=428, lost=20, won=10)
    assert not decide({k: v for k, v in cand.items() if k != "correct_bits"}, prod, GateRules(),
                      baseline_version=1).passed
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert v.passed, summary(v, 2)
    assert (v.paired.b, v.paired.c, v.paired.n) == (20, 10, 450)
    assert v.tolerance == pytest.approx(0.0242528, abs=1e-6)


@pytest.mark.parametrize("change, why", [
    (lambda c, p: p.pop("correct_bits"), "production's evaluation carries no per-example results"),
    (lambda c, p: (c.pop("correct_bits"), p.pop("correct_bits")),
     "neither evaluation carries per-example results"),
    (lambda c, p: c.update(n=449), "held-out sizes differ"),
    (lambda c, p: c.update(correct_bits=p["correct_bits"]), "the candidate's per-example results count 428 "
                                                            "right of 450, its accuracy 0.9356 says 421"),
    (lambda c, p: c.update(correct_bits="not-base64!"), "the candidate's per-example results are not 450 "
                                                        "examples' bits (not base64)"),
    (lambda c, p: c.update(heldout_fingerprint="b" * 64), "not of one recorded held-out set"),
])
def test_without_usable_per_example_results_the_unpaired_rule_applies_and_says_why(change, why):
    """Fallback, not refusal: an evaluation from an older version has no bits, and the rule it
    falls back to is the one every earlier gate used. Held-out sets that differ already fail
    ``same_heldout_set``; bits that do not fit their own document are not trusted."""
    cand, prod = flips(lost=7)
    change(cand, prod)
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert v.paired is None and v.to_dict()["discordant"] is None
    assert v.tolerance_derivation.startswith("unpaired (fallback: ") and why in v.tolerance_derivation
    assert v.tolerance == pytest.approx(accuracy_tolerance(prod["accuracy"], cand["n"]))
    assert ("same_heldout_set" in failed_rules(v)) == ("held-out set" in why)


def test_an_explicit_tolerance_still_reports_the_flips():
    cand, prod = flips(lost=7, won=2)
    v = decide(cand, prod, GateRules(max_accuracy_drop=0.05), baseline_version=1)
    assert v.passed and v.tolerance == 0.05
    assert v.tolerance_derivation.startswith("set explicitly: 0.0500 (paired counts: b = 7 ")
    assert (v.paired.b, v.paired.c) == (7, 2)


def test_the_report_shows_how_many_examples_flipped_each_way():
    from registry import gate_html

    cand, prod = flips(lost=7, won=2)
    v = decide(cand, prod, GateRules(), baseline_version=1)
    report = gate_report.build(model="m", version=2, verdict=v, rules=GateRules(), candidate=cand,
                               production=prod, signature_differences=[], allow_signature_change=False,
                               evaluated_at="now")
    assert report["discordant"] == {"production_right_candidate_wrong": 7,
                                    "candidate_right_production_wrong": 2, "n": 450}
    assert "correct_bits" not in json.dumps(report)       # the bits stay in the evaluation documents
    sentence = ("Examples that flipped, of the 450 held-out examples both answered: 7 production got right and "
                "the candidate wrong (b), 2 the candidate got right and production wrong (c).")
    md = gate_report.markdown(report)
    assert sentence in md and "Accuracy tolerance: paired, both versions" in md
    assert sentence in gate_html.html(report)
    # no production, or evaluations without bits: no such line
    report["discordant"] = None
    assert "flipped" not in gate_report.markdown(report) and "flipped" not in gate_html.html(report)


def test_an_evaluation_carries_its_per_example_results():
    import numpy as np

    from mlproject.datasets import load_partition
    from mlproject.evaluate import evaluation_of

    heldout = load_partition("digits").heldout
    probs = np.full((len(heldout), 10), 0.01, np.float32)
    probs[np.arange(len(heldout)), heldout.labels] = 0.91
    probs[[0, 5], :] = np.roll(probs[[0, 5], :], 1, axis=1)       # examples 0 and 5 answered wrong
    doc = evaluation_of(probs, heldout, model_uri="models:/m/1", dataset="digits").to_dict()
    value = decode_correct(doc["correct_bits"], len(heldout))
    assert value.bit_count() == len(heldout) - 2 and round(doc["accuracy"] * doc["n"]) == len(heldout) - 2
    assert not value >> (len(heldout) - 1) & 1 and not value >> (len(heldout) - 6) & 1
    assert value >> (len(heldout) - 2) & 1


# --- the paired per-class rule (Reviews of 2026-12-05, seventh stop) -----------------------------

def by_class(sizes: list[int], prod_right: list[int], lost: dict[int, int] | None = None,
             won: dict[int, int] | None = None) -> tuple[dict, dict]:
    """Evaluations of production and the candidate with per-example results and classes: class k
    has ``sizes[k]`` examples (in a row), production gets the first ``prod_right[k]`` of them right;
    the candidate loses ``lost[k]`` of those and wins ``won[k]`` of production's wrong ones."""
    from registry.gate_stats import encode_labels

    lost, won = lost or {}, won or {}
    labels, prod, cand = [], [], []
    for k, (size, right) in enumerate(zip(sizes, prod_right)):
        labels += [k] * size
        prod += [i < right for i in range(size)]
        cand += [lost.get(k, 0) <= i < right or right <= i < right + won.get(k, 0) for i in range(size)]
    n = len(labels)

    def doc(answers):
        per = {str(k): sum(a for a, y in zip(answers, labels) if y == k) / size for k, size in enumerate(sizes)}
        return dict(evaluation(0.0, per, n=n), accuracy=sum(answers) / n, correct_bits=encode_correct(answers),
                    heldout_labels=encode_labels(labels),
                    per_class_count={str(k): size for k, size in enumerate(sizes)})
    return doc(cand), doc(prod)


def without_classes(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "heldout_labels"}


def test_class_z_shares_the_accuracy_rules_tail_among_the_classes():
    from registry.gate_stats import class_z

    # one-sided tail of 2 standard errors: 0.02275; / 10 classes = 0.002275 -> z = 2.8373
    assert class_z(2.0, 10) == pytest.approx(2.83728, abs=1e-5)
    assert class_z(2.0, 1) == 2.0 and class_z(2.0, 3) == pytest.approx(2.42837, abs=1e-5)


def test_a_large_class_that_lost_six_points_fails_the_paired_class_rule_the_fixed_drop_let_through():
    """fashion_mnist-sized classes (1,000 each): the candidate gets 60 examples of class 3 wrong that
    production got right and none the other way (0.890 vs 0.950). The fixed 0.10 let it through
    whatever the class's size; on 1,000 examples that is no noise: b = 60, c = 0, d = -0.06,
    (0.06 - 0.0036)/1000 = 5.64e-5, sqrt = 0.0075100, x 2.8373 = 0.0213. Overall it is 60 of
    10,000 (-0.006), inside the accuracy rule's floor."""
    cand, prod = by_class([1000] * 10, [950] * 10, lost={3: 60})
    old = decide(without_classes(cand), without_classes(prod), GateRules(), baseline_version=1)
    assert old.passed, summary(old, 2)
    assert old.class_derivation.startswith("fixed 0.10 for every class, whatever its size (fallback: neither "
                                           "evaluation carries per-example classes (heldout_labels")
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert failed_rules(v) == ["class_accuracy_vs_production"], summary(v, 2)
    msg = next(c.message for c in v.failed)
    assert "class 3 0.890 vs 0.950 (-0.060; allowed 0.021)" in msg and "v1" in msg
    check = v.failed[0]
    assert check.limit == pytest.approx(0.021308, abs=1e-6) and check.shortfall == pytest.approx(0.038692, abs=1e-6)
    assert v.class_derivation.startswith("per class, paired on that class's held-out examples")
    assert "z = 2.837" in v.class_derivation and "10 classes" in v.class_derivation
    assert (v.class_paired["3"].b, v.class_paired["3"].c, v.class_paired["3"].n) == (60, 0, 1000)
    assert v.class_allowed["0"] == 0.02         # nothing flipped: the floor


def test_a_small_class_whose_answers_flipped_both_ways_passes_where_the_fixed_drop_failed_it():
    """digits-sized classes (45 each): 6 lost and 1 won in class 5 is -0.111, over the fixed 0.10,
    but within the noise of 45 examples: (7/45 - 0.111^2)/45 = 0.0031824, sqrt = 0.056413,
    x 2.8373 = 0.1601. Overall -5/450 = -0.0111 is within the paired 0.0117."""
    cand, prod = by_class([45] * 10, [43] * 10, lost={5: 6}, won={5: 1})
    old = decide(without_classes(cand), without_classes(prod), GateRules(), baseline_version=1)
    assert failed_rules(old) == ["class_accuracy_vs_production"]
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert v.passed, summary(v, 2)
    assert v.class_allowed["5"] == pytest.approx(0.160060, abs=1e-6)
    check = next(c for c in v.checks if c.rule == "class_accuracy_vs_production")
    assert check.message == "largest per-class drop 0.111 (class 5; allowed 0.160 for that class)", check.message
    # a third of one class lost, none won: no noise explains it (allowed 0.199 for 15 of 45)
    cand, prod = by_class([45] * 10, [43] * 10, lost={5: 15})
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert "class_accuracy_vs_production" in failed_rules(v)
    assert "class 5 0.622 vs 0.956 (-0.333; allowed 0.199)" in next(
        c.message for c in v.failed if c.rule == "class_accuracy_vs_production")


@pytest.mark.parametrize("change, why", [
    (lambda c, p: p.pop("heldout_labels"), "production's evaluation carries no per-example classes"),
    (lambda c, p: c.pop("correct_bits"), "the candidate's evaluation carries no per-example results"),
    (lambda c, p: c.update(heldout_labels="1" + c["heldout_labels"][1:]),
     "the two evaluations' per-example classes (heldout_labels) differ"),
    (lambda c, p: (c.update(heldout_labels=c["heldout_labels"][:-1]), p.update(heldout_labels=c["heldout_labels"])),
     "heldout_labels is not one decimal digit for each of the 450 examples"),
    (lambda c, p: c["per_class_accuracy"].update({"5": 0.8}),
     "the candidate's per-example results count 38 right of 45 in class 5, its per-class accuracy 0.8 says 36"),
    (lambda c, p: p["per_class_count"].update({"2": 44}),
     "production's per_class_count says 44 examples of class 2, heldout_labels 45"),
])
def test_without_usable_per_example_classes_the_fixed_class_drop_applies_and_says_why(change, why):
    cand, prod = by_class([45] * 10, [43] * 10, lost={5: 6}, won={5: 1})
    change(cand, prod)
    v = decide(cand, prod, GateRules(), baseline_version=1)
    assert v.class_paired is None and set(v.class_allowed.values()) == {0.10}
    assert v.class_derivation.startswith("fixed 0.10 for every class") and why in v.class_derivation, \
        v.class_derivation
    assert "class_accuracy_vs_production" in failed_rules(v)        # -0.111 > 0.10


def test_an_explicit_class_drop_applies_to_every_class_and_still_reports_the_flips():
    cand, prod = by_class([1000] * 10, [950] * 10, lost={3: 60})
    v = decide(cand, prod, GateRules(max_class_drop=0.07), baseline_version=1)
    assert v.passed and set(v.class_allowed.values()) == {0.07}
    assert v.class_derivation == "set explicitly: 0.07 for every class"
    assert (v.class_paired["3"].b, v.class_paired["3"].c) == (60, 0)


def test_the_report_shows_each_classs_flips_and_allowed_drop():
    from registry import gate_html

    cand, prod = by_class([45] * 10, [43] * 10, lost={5: 6}, won={5: 1})
    v = decide(cand, prod, GateRules(), baseline_version=1)
    report = gate_report.build(model="m", version=2, verdict=v, rules=GateRules(), candidate=cand,
                               production=prod, signature_differences=[], allow_signature_change=False,
                               evaluated_at="now")
    row5 = next(r for r in report["per_class"] if r["class"] == "5")
    assert row5 == {"class": "5", "count": 45, "candidate": pytest.approx(38 / 45),
                    "production": pytest.approx(43 / 45), "delta": pytest.approx(-5 / 45, abs=1e-6),
                    "lost": 6, "won": 1, "standard_error": pytest.approx(0.056413, abs=1e-6),
                    "allowed_drop": pytest.approx(0.16006, abs=1e-5)}
    assert report["rules"]["max_class_drop"] is None
    assert report["rules"]["max_class_drop_derivation"].startswith("per class, paired")
    assert "heldout_labels" not in json.dumps(report)       # the classes stay in the evaluation documents
    md = gate_report.markdown(report)
    assert "| 5 | 45 | 0.844 | 0.956 | -0.1111 | 6 | 1 | 0.160 |" in md, md
    assert "per-class drop ≤ each class's allowed drop (per-class table)." in md
    assert "Per-class tolerance: per class, paired on that class's held-out examples" in md
    page = gate_html.html(report)
    assert ('<td class="num">6</td><td class="num">1</td><td class="num">0.160</td>' in page
            and "Per-class tolerance: per class, paired" in page)
    # older evaluations: the fixed drop, shown as one limit, and no flips per class
    v = decide(without_classes(cand), without_classes(prod), GateRules(), baseline_version=1)
    report = gate_report.build(model="m", version=2, verdict=v, rules=GateRules(), candidate=without_classes(cand),
                               production=without_classes(prod), signature_differences=[],
                               allow_signature_change=False, evaluated_at="now")
    assert report["rules"]["max_class_drop"] == 0.1 and "per-class drop ≤ 0.10." in gate_report.markdown(report)
    assert "| 5 | 45 | 0.844 | 0.956 | -0.1111 | — | — | 0.100 |" in gate_report.markdown(report)


def test_an_evaluation_carries_the_class_of_each_held_out_example():
    import numpy as np

    from mlproject.datasets import load_partition
    from mlproject.evaluate import evaluation_of

    heldout = load_partition("digits").heldout
    probs = np.full((len(heldout), 10), 0.01, np.float32)
    probs[np.arange(len(heldout)), heldout.labels] = 0.91
    doc = evaluation_of(probs, heldout, model_uri="models:/m/1", dataset="digits").to_dict()
    assert doc["heldout_labels"] == "".join(str(int(y)) for y in heldout.labels) and len(doc["heldout_labels"]) == 450
    assert {k: doc["heldout_labels"].count(k) for k in doc["per_class_count"]} == doc["per_class_count"]


# --- edges on real evaluations (Reviews of 2026-12-06, tenth stop) --------------------------------

def test_perfect_tied_and_missing_class_answers_on_mlprojects_own_evaluations():
    """mlproject's evaluation of chosen answers on the digits held-out set, into the rules: two
    perfect versions (no example flipped: the floors, not a zero tolerance), two versions with the
    same answers, a candidate that never answers one class, and a held-out set without a class."""
    import numpy as np

    from mlproject.datasets import Arrays, load_partition
    from mlproject.evaluate import evaluation_of

    heldout = load_partition("digits").heldout

    def answering(predicted, data=heldout):
        probs = np.zeros((len(data), 10), np.float32)
        probs[np.arange(len(data)), predicted] = 1.0
        return evaluation_of(probs, data, model_uri="models:/m/1", dataset="digits").to_dict()

    perfect = answering(heldout.labels)
    v = decide(perfect, perfect, GateRules(), baseline_version=1)
    assert v.passed and v.paired.b == v.paired.c == 0 and v.tolerance == 0.01
    assert set(v.class_allowed.values()) == {0.02}

    wrong = heldout.labels.copy()
    wrong[::9] = (wrong[::9] + 1) % 10                  # 50 of 450 answered wrong, by both versions
    same = answering(wrong)
    v = decide(same, same, GateRules(), baseline_version=1)
    assert v.passed and (v.paired.b, v.paired.c) == (0, 0), summary(v, 2)

    never3 = np.where(heldout.labels == 3, 4, heldout.labels)    # class 3 never answered
    v = decide(answering(never3), perfect, GateRules(), baseline_version=1)
    assert failed_rules(v) == ["accuracy_vs_production", "class_accuracy_vs_production"]
    assert "class 3 0.000 vs 1.000" in summary(v, 2)

    keep = heldout.labels != 9                           # a held-out set without class 9
    no9 = Arrays(heldout.images[keep], heldout.labels[keep])
    doc = answering(no9.labels, no9)
    assert doc["per_class_count"]["9"] == 0
    v = decide(doc, doc, GateRules(), baseline_version=1)
    assert v.passed and v.class_derivation.startswith("per class") and "9" not in v.class_paired
    assert "among the 9 classes" in v.class_derivation


# --- what the approver reads (Reviews of 2026-12-06, tenth stop) --------------------------------

def report_of(cand: dict, prod: dict | None, *, gated_production: bool = False, rules: GateRules = GateRules()):
    v = decide(cand, prod, rules, baseline_version=1 if prod is not None else None,
               gated_production=gated_production)
    return v, gate_report.build(model="m", version=2, verdict=v, rules=rules, candidate=cand, production=prod,
                                signature_differences=[], allow_signature_change=False, evaluated_at="now")


def test_the_production_versions_own_gate_says_so_in_the_report_columns():
    """Gating the version that holds production: the HTML columns read "v2 (candidate)" and
    "production (none)", as for a first version; the report JSON did not say it was production."""
    from registry import gate_html

    v, report = report_of(evaluation(0.95), None, gated_production=True)
    assert v.passed and report["gated_production"] is True
    md, page = gate_report.markdown(report), gate_html.html(report)
    for text in (md, page):
        assert "v2 (holds production)" in text and "production (v2 itself: no baseline)" in text
        assert "(candidate)" not in text and "production (none)" not in text
    _, first = report_of(evaluation(0.95), None)
    assert first["gated_production"] is False and "production (none)" in gate_html.html(first)
    assert "v2 (candidate)" in gate_report.markdown(first)


def test_a_passing_class_rule_names_the_class_nearest_its_allowed_drop():
    """Class 3 dropped most (0.356, allowed 0.358) but class 7 is nearest failing (0.289, allowed
    0.291: 0.0017 to spare); the message named class 3 alone."""
    cand, prod = by_class([45] * 10, [30] * 10, lost={3: 27, 7: 19}, won={3: 11, 7: 6})
    v = decide(cand, prod, GateRules(), baseline_version=1)
    check = next(c for c in v.checks if c.rule == "class_accuracy_vs_production")
    assert check.passed, check.message
    assert v.class_allowed["7"] - 19 / 45 + 6 / 45 < 0.002
    assert check.message == ("largest per-class drop 0.356 (class 3; allowed 0.358 for that class); nearest its "
                             "allowed drop: class 7, drop 0.289 of 0.291 allowed"), check.message


def test_a_failed_accuracy_rule_never_prints_the_drop_equal_to_the_allowed_drop():
    """55 lost and 36 won of 450: -0.042222 against an allowed 0.042210 read "(-0.0422; allowed
    drop 0.0422)" on a FAIL; so did a class of 51 losing 7 (-0.1373 against 0.1367, at 3 decimals)."""
    import re

    cand, prod = flips(n=450, prod_right=400, lost=55, won=36)
    v = decide(cand, prod, GateRules(), baseline_version=1)
    check = next(c for c in v.checks if c.rule == "accuracy_vs_production")
    assert not check.passed
    drop, allowed = re.search(r"\(-([0-9.]+); allowed drop ([0-9.]+)\)", check.message).groups()
    assert drop != allowed and float(drop) > float(allowed), check.message
    md = gate_report.markdown(report_of(cand, prod)[1])
    assert f"allowed drop {allowed})" in md

    cand, prod = by_class([51] + [45] * 9, [51] + [43] * 9, lost={0: 7})
    v = decide(cand, prod, GateRules(), baseline_version=1)
    check = next(c for c in v.checks if c.rule == "class_accuracy_vs_production")
    assert not check.passed
    drop, allowed = re.search(r"class 0 [0-9.]+ vs [0-9.]+ \(-([0-9.]+); allowed ([0-9.]+)\)", check.message).groups()
    assert drop != allowed and float(drop) > float(allowed), check.message
    # the report's limits line and overall delta say the same digits
    cand, prod = flips(n=450, prod_right=400, lost=55, won=36)
    from registry import gate_html

    report = report_of(cand, prod)[1]
    md, page = gate_report.markdown(report), gate_html.html(report)
    assert "accuracy drop vs production ≤ 0.04221;" in md and "| -0.04222 |" in md, md
    assert "accuracy drop vs production ≤ 0.04221;" in page and '<span class="neg">-0.04222</span>' in page
    # one fixed drop for every class: 401 of 4,000 lost is -0.10025, "more than 0.10" read "-0.100"
    cand, prod = by_class([4000, 45], [4000, 45], lost={0: 401})
    v = decide(cand, prod, GateRules(max_class_drop=0.10), baseline_version=1)
    check = next(c for c in v.checks if c.rule == "class_accuracy_vs_production")
    assert not check.passed and "(-0.1002)" in check.message, check.message


@pytest.mark.parametrize("size, lost, won, passed", [(1000, 37, 16, False), (54, 21, 7, True)])
def test_the_per_class_table_never_reads_a_failed_class_as_within_its_allowed_drop(size, lost, won, passed):
    """Found by review (2026-12-06, fifteenth stop): the per-class tables (report.md, report.html)
    showed the delta to 4 decimals and the allowed drop to 3. A fashion_mnist class of 1,000 that
    lost 37 and won 16 (-0.021 against an allowed 0.02057: FAIL) read "-0.0210 | ... | 0.021", a drop
    at its limit, which passes; a digits class of 54 that lost 21 and won 7 (-0.25926 against
    0.25938: pass) read "-0.2593 | ... | 0.259", over it. The two now read as the rule decided."""
    import re

    from registry import gate_html

    cand, prod = by_class([size] + [1000] * 9, [size - won] + [1000] * 9, lost={0: lost}, won={0: won})
    v, report = report_of(cand, prod)
    assert v.class_paired["0"].b == lost and v.class_paired["0"].c == won
    assert next(c for c in v.checks if c.rule == "class_accuracy_vs_production").passed is passed
    md, page = gate_report.markdown(report), gate_html.html(report)
    row_md = r"\n\| 0 \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| -([0-9.]+) \| [0-9]+ \| [0-9]+ \| ([0-9.]+) \|"
    delta, allowed = re.search(row_md, md).groups()
    assert (float(delta) <= float(allowed)) is passed and (passed or delta != allowed), (delta, allowed)
    row = re.search(r"<tr><td>0</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r'<td class="num">(?:<span class="[a-z]*">)?([-+0-9.—]+)', row)
    assert cells[3] == f"-{delta}" and cells[6] == allowed, cells


def test_a_class_absent_from_the_held_out_set_is_reported_as_having_no_examples():
    """mlproject reports a class with no held-out example as accuracy 0.0 (and a count of 0): the
    report showed "0 | 0.000 | 0.000", the chart's axis started at 0.00 for it, and when every
    other class improved the class rule's message named it as the largest drop."""
    import numpy as np

    from mlproject.datasets import Arrays, load_partition
    from mlproject.evaluate import evaluation_of
    from registry import gate_html

    heldout = load_partition("digits").heldout
    keep = heldout.labels != 9
    no9 = Arrays(heldout.images[keep], heldout.labels[keep])

    def answering(predicted):
        probs = np.zeros((len(no9), 10), np.float32)
        probs[np.arange(len(no9)), predicted] = 1.0
        return evaluation_of(probs, no9, model_uri="models:/m/1", dataset="digits").to_dict()

    wrong = no9.labels.copy()
    wrong[::20] = (wrong[::20] + 1) % 9             # production: some of every class wrong
    cand, prod = answering(no9.labels), answering(wrong)
    v, report = report_of(cand, prod)
    assert v.passed, summary(v, 2)                  # the decision is the same
    check = next(c for c in v.checks if c.rule == "class_accuracy_vs_production")
    assert "class 9" not in check.message, check.message
    row9 = next(r for r in report["per_class"] if r["class"] == "9")
    assert row9["count"] == 0 and row9["candidate"] is None and row9["production"] is None
    md, page = gate_report.markdown(report), gate_html.html(report)
    assert "| 9 | 0 | no examples | no examples | — |" in md, md
    assert '<td>9</td><td class="num">0</td><td class="num">no examples</td>' in page
    assert 'data-class="9"' not in page and "accuracy axis starts at 0.00" not in page
    figures = gate_report.ledger_classes(report, v.class_allowed)
    assert "9" not in [c["class"] for c in figures["classes"]] and figures["compared"] == 9


def test_without_production_the_limits_line_does_not_list_the_rules_against_production():
    """A first version's (and production's own) report read "Limits: accuracy ≥ 0.80; accuracy
    drop vs production ≤ —; per-class drop ≤ each class's allowed drop (per-class table)" beside a
    per-class table of dashes: rules that did not apply, as if they had."""
    from registry import gate_html

    for gated_production in (False, True):
        _, report = report_of(evaluation(0.95), None, gated_production=gated_production)
        for text in (gate_report.markdown(report), gate_html.html(report)):
            assert "Limits: accuracy ≥ 0.80 (no production to compare with: the rules against production " \
                   "did not apply)." in text
            assert "accuracy drop vs production ≤" not in text and "per-class drop ≤" not in text


def test_a_minimum_accuracy_of_many_decimals_is_not_met_in_print_by_a_failing_accuracy():
    """Found by review (2026-12-06, fifteenth stop): ``--min-accuracy 0.79778`` failed 0.79775 with
    "held-out accuracy 0.7978 (minimum 0.79778)", an accuracy that reads over its minimum; and a
    pass at 0.797745 over 0.79774 read "0.7977 (minimum 0.79774)", under it."""
    v = decide(evaluation(0.79775), None, GateRules(min_accuracy=0.79778))
    assert [c.message for c in v.failed] == ["held-out accuracy 0.79775 (minimum 0.79778)"]
    v = decide(evaluation(0.797775), None, GateRules(min_accuracy=0.79778))
    assert [c.message for c in v.failed] == ["held-out accuracy 0.797775 (minimum 0.79778)"]
    v = decide(evaluation(0.797745), None, GateRules(min_accuracy=0.79774))
    assert v.passed and v.checks[0].message == "held-out accuracy 0.79775 (minimum 0.79774)"
    v = decide(evaluation(0.95), None, GateRules(min_accuracy=0.9))       # as before
    assert v.checks[0].message == "held-out accuracy 0.9500 (minimum 0.90)"


def test_invalid_metrics_against_production_say_the_comparison_was_not_made():
    """Found by review (2026-12-06, fifteenth stop): with production and a failed metrics_valid the
    limits line read "accuracy drop vs production ≤ —; per-class drop ≤ each class's allowed drop
    (per-class table)" over a per-class table of dashes, as if the comparison had been made."""
    from registry import gate_html

    cand = evaluation(0.95)
    cand["per_class_accuracy"]["3"] = float("nan")
    v, report = report_of(cand, evaluation(0.95))
    assert failed_rules(v) == ["metrics_valid"]
    for text in (gate_report.markdown(report), gate_html.html(report)):
        assert ("Limits: none applied — an evaluation is not a measurement (metrics_valid failed: an accuracy is "
                "not a number in [0, 1] or a count not a whole number), so neither the minimum accuracy (0.80) was "
                "checked nor the comparison with production v1, overall or per class, made.") in text, text
        assert "≤ —" not in text and "per-class drop ≤" not in text


def test_a_held_out_set_moved_since_production_was_trained_does_not_advise_retraining_the_candidate():
    """Found by review (2026-12-07, eighteenth stop): when only production's training run recorded
    another held-out set, the check advised "retrain on today's partition": the candidate already
    was, and every retrain failed the same way. Only moving production (a deliberate promotion of
    the candidate after checking) ends it; the candidate's own moved set still says to retrain."""
    cand, prod = evaluation(0.96), evaluation(0.95)
    v = decide(cand, prod, GateRules(), baseline_version=1, trained_beside={"candidate": FP, "production": "b" * 64})
    check = next(c for c in v.checks if c.rule == "heldout_unchanged_since_training")
    assert not check.passed and "retrain on today's partition" not in check.message, check.message
    assert "retraining changes nothing" in check.message
    assert "production v1's accuracy on it may be inflated" in check.message
    assert "promote this version with --force --reason after checking" in check.message
    # the candidate's own set moved (alone, or with production's): retraining it is what helps
    for beside in ({"candidate": "c" * 64, "production": FP}, {"candidate": "c" * 64, "production": "b" * 64}):
        v = decide(cand, prod, GateRules(), baseline_version=1, trained_beside=beside)
        check = next(c for c in v.checks if c.rule == "heldout_unchanged_since_training")
        assert not check.passed and "retrain the candidate on today's partition" in check.message, check.message


def test_invalid_metrics_of_a_first_version_do_not_list_the_minimum_accuracy_as_applied():
    """Found by review (2026-12-07, eighteenth stop): a first version (no production) whose
    accuracy is NaN failed metrics_valid alone, "no other rule was applied", while the limits line
    read "Limits: accuracy ≥ 0.80 (no production to compare with ...)", as if the minimum had been
    checked."""
    from registry import gate_html

    cand = evaluation(0.95)
    cand["accuracy"] = float("nan")
    v, report = report_of(cand, None)
    assert failed_rules(v) == ["metrics_valid"]
    for text in (gate_report.markdown(report), gate_html.html(report)):
        assert ("Limits: none applied — the evaluation is not a measurement (metrics_valid failed: an accuracy is "
                "not a number in [0, 1] or a count not a whole number), so the minimum accuracy (0.80) was not "
                "checked (no production to compare with).") in text, text
        assert "Limits: accuracy ≥" not in text
