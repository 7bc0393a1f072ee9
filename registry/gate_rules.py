"""The quality gate's decision: pure functions on plain evaluation dicts.

Inputs are ``mlproject.evaluate.Evaluation.to_dict()`` documents (accuracy, loss,
per_class_accuracy, per_class_count, n, heldout_fingerprint, dataset and, since the sixth stop of
2026-12-05, correct_bits) for the candidate and for production, both computed now on the same
frozen held-out set.

Rules (defaults; flags and ``MLOPS_GATE_*`` variables override them):

1. ``min_accuracy``: held-out accuracy >= 0.80 (the tutorial's bar).
2. ``accuracy_vs_production``: accuracy not lower than production's by more than a tolerance,
   two standard errors of the difference with a floor of 0.01. Both versions answered the same
   ``n`` held-out examples, so the difference is paired: with ``b`` the examples production got
   right and the candidate wrong, ``c`` the reverse and ``d = (c - b) / n``, the tolerance is
   ``max(0.01, 2 * sqrt(((b + c) / n - d * d) / n))`` (the standard error of the difference of
   two correlated proportions: only the examples that flipped carry the noise; ``gate_stats``:
   ``paired_counts``, ``paired_tolerance``). ``b`` and ``c`` come from each evaluation's ``correct_bits`` (one bit
   per held-out example, in held-out order, ``gate_stats.encode_correct``); they are used only when both
   documents carry them for the same held-out set (same fingerprint, same ``n``) and each
   document's bits agree with its own ``n`` and accuracy. Otherwise (an evaluation from an older
   version, or bits that do not fit) the rule falls back to production's standard error alone,
   ``max(0.01, 2 * sqrt(p * (1 - p) / n))`` with ``p`` the production accuracy, and the
   derivation in the report says so and why. A fallback rather than a refusal: differing
   fingerprints already fail ``same_heldout_set``, and the fallback is the rule every gate used
   before; a refusal would record no verdict and no report. On digits (n = 450, p ~ 0.95) the
   unpaired tolerance is ~0.021; paired, the calibration's retrains on good batches (16-20
   examples flipped) get 0.018-0.020 and measured +0.004 to +0.031, retrains on bad batches
   (54-73 flipped, mostly lost) get 0.032-0.036 and measured -0.07 to -0.13
   (tests/test_registry_gate_calibration.py, seeds 1-5).
   The paired rule is stricter when the flips go one way (7 lost, none won: -0.016 passed the
   unpaired 0.020, fails the paired 0.012) and looser when many go both ways (20 lost, 10 won:
   -0.022 failed the unpaired rule, passes the paired 0.024): production's standard error alone
   ignored both the correlation and the candidate's own noise.
3. ``class_accuracy_vs_production``: no class's accuracy (recall: the share of that class's
   held-out examples answered right) lower than production's by more than that class's allowed
   drop. Paired per class, as rule 2 overall: with ``b_k`` and ``c_k`` the examples of class ``k``
   that flipped each way and ``n_k`` its size, ``max(0.02, z_k * sqrt(((b_k + c_k)/n_k - d_k^2)/n_k))``,
   ``d_k = (c_k - b_k)/n_k`` (``gate_stats.class_paired_counts``, ``class_limits``), where ``z_k`` shares
   rule 2's one-sided tail (0.0228 for 2 standard errors) among the classes compared (Bonferroni,
   ``gate_stats.class_z``: 2.84 for 10), so that a retrain no worse than production fails some class by chance
   about as rarely as rule 2 fails it, rather than one class in ten failing one gate in five. The
   classes come from each evaluation's ``heldout_labels`` (one digit per held-out example, in
   held-out order, ``gate_stats.encode_labels``), used only when both documents carry the same ones, rule 2's
   bits are usable, and the bits agree per class with each document's ``per_class_count`` and
   ``per_class_accuracy``. Otherwise (evaluations from before the seventh stop of 2026-12-05) one
   fixed drop for every class, 0.10 (``class_drop_fallback``), the rule of every earlier gate,
   and the report's ``max_class_drop_derivation`` says which and why. ``max_class_drop`` set
   (flag or variable) is one fixed drop for every class. The fixed 0.10 allowed 60 of 1,000
   examples of a class lost and none won (paired: 0.021) and failed 6 lost and 1 won of 45
   (paired: 0.160). On digits (n_k = 36-54) the calibration's good retrains use at most about half
   their classes' allowed drops, every bad retrain fails the rule, and a good retrain that loses a
   third of its smallest class fails it while passing rule 2 (tests/test_registry_gate_calibration.py).
4. ``signature``: the serving signature stays compatible (unless explicitly allowed).
5. ``same_heldout_set``: both evaluations used the same held-out set (fingerprints; a missing
   fingerprint fails: it proves nothing).
   ``heldout_unchanged_since_training`` (when a version's training run recorded one): the
   held-out set evaluated now is the one each version was trained beside. The frozen partition
   rests on NumPy's permutation for a fixed seed, which NumPy does not promise across releases;
   a set that moved may hold examples a version trained on, and its score would be inflated.
6. ``metrics_valid`` (only when it fails): every accuracy, overall and per class, is a number in
   [0, 1] — a NaN passes no comparison and an inf passes every one.
7. ``class_probabilities`` (only when it fails): the candidate answered every held-out image with
   class probabilities (the serving contract), counted by the evaluation as
   ``non_probability_outputs``. Accuracy is an argmax, which NaN (class 0) or logits (the highest
   score) still give, so a version answering NaN to some images passed on accuracy. Production
   answering so is a note only: it must not stop the version that replaces it.

With no production version, only rule 1 (and the candidate's own signature format) applies.

Which version is the baseline is ``choose_baseline``: production (the ``production`` alias),
none when the version gated holds production itself or there is no production yet, and a refusal
when the alias is missing but the ledger says a version holds production (removed outside mlops,
or that version was deleted): the gate would compare with nothing.

Why not ``mlflow.models.MetricThreshold`` / ``mlflow.validate_evaluation_results``: in the
installed MLflow 3.17.2, ``MetricThreshold(min_absolute_change=...)`` must be *positive*
(``min_absolute_change <= 0`` raises), i.e. it can only demand that the candidate *beats* the
baseline, while rule 2 allows a bounded drop. ``validate_evaluation_results`` also needs
``EvaluationResult`` objects, reports failures as one exception string rather than per-rule
data for the report, and would pull MLflow into a decision that should be a fast pure function.
Only rule 1 would fit, and splitting the rules over two mechanisms would not make them clearer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

from mlops_common import settings
from mlops_common.errors import ConfigError, RefusedError
from mlops_common.text import is_decimal

from .gate_stats import (
    Paired,
    accuracy_tolerance,
    class_key,
    class_paired_counts,
    class_z,
    paired_counts,
    paired_standard_error,
    paired_tolerance,
)

EPS = 1e-9  # float slack so that a value exactly at a limit passes


@dataclass(frozen=True)
class GateRules:
    min_accuracy: float = 0.80
    max_accuracy_drop: float | None = None   # None: derived (paired on the flips, else from n and p)
    max_class_drop: float | None = None      # None: derived per class (paired on its flips, else the fallback)
    tolerance_floor: float = 0.01
    tolerance_z: float = 2.0
    class_drop_floor: float = 0.02
    class_drop_fallback: float = 0.10        # without per-example classes: the rule of every earlier gate

    @classmethod
    def from_env(cls, **overrides) -> "GateRules":
        """Defaults, then ``MLOPS_GATE_MIN_ACCURACY`` / ``_MAX_ACCURACY_DROP`` / ``_MAX_CLASS_DROP``,
        then explicit (non-None) ``overrides`` (CLI flags)."""
        values, origin = {}, {}
        for name, var in (("min_accuracy", "MLOPS_GATE_MIN_ACCURACY"),
                          ("max_accuracy_drop", "MLOPS_GATE_MAX_ACCURACY_DROP"),
                          ("max_class_drop", "MLOPS_GATE_MAX_CLASS_DROP")):
            raw = settings.env(var)
            if raw is not None:
                # ASCII decimals only, as the flags (``flags.number``): float() reads "0_1" as 1.0
                if not is_decimal(raw):
                    raise ConfigError(f"{var} must be a number such as 0.05, got '{raw}'")
                values[name], origin[name] = float(raw), var
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        origin = {k: v for k, v in origin.items() if k not in given}   # a flag's value: its own range check
        rules = cls(**values)
        for name in ("min_accuracy", "max_accuracy_drop", "max_class_drop"):
            v = getattr(rules, name)
            if v is not None and not 0 <= v <= 1:
                if name in origin:      # say which variable to fix, as its other check does
                    raise ConfigError(f"{origin[name]} must be between 0 and 1 (gate rule {name}), "
                                      f"got '{settings.env(origin[name])}'")
                raise ConfigError(f"gate rule {name} must be between 0 and 1, got {v}")
        return rules

    def changed(self) -> dict[str, float]:
        """The rules set away from the defaults (flags or ``MLOPS_GATE_*``): name -> value; a pass
        under them is marked in the version's description, as a signature change allowed is."""
        default = GateRules()
        return {name: getattr(self, name) for name in ("min_accuracy", "max_accuracy_drop", "max_class_drop")
                if getattr(self, name) != getattr(default, name)}


@dataclass(frozen=True)
class Baseline:
    version: int | None             # the version the candidate is compared with (None: no comparison)
    gated_production: bool = False  # the version gated holds production itself


def choose_baseline(model: str, candidate: int, production_alias: int | None, ledger_holder: int | None,
                    holder_exists: bool | None) -> Baseline:
    """The gate's baseline from the facts read: the ``production`` alias, the version the ledger
    says holds production (read only when the alias is missing) and whether that version still
    exists (read only when the ledger names one). ``RefusedError`` when the alias is missing but
    the ledger names a holder: the gate would compare with nothing."""
    if production_alias is None and ledger_holder:
        if not holder_exists:       # deleted: MLflow dropped the alias with it
            raise RefusedError(
                f"'{model}' has no production alias: v{ledger_holder}, which the ledger says holds production, "
                f"was deleted from the registry; the gate would compare with nothing; record its removal with "
                f"`mlops registry reconcile` (then promote a version), then gate again")
        raise RefusedError(
            f"'{model}' has no production alias but the ledger says v{ledger_holder} holds production (the "
            f"alias was removed outside mlops): the gate would compare with nothing; put it back with `mlops "
            f"registry promote --version {ledger_holder}` or record its removal with `mlops registry "
            f"reconcile`, then gate again")
    if production_alias == candidate:
        return Baseline(None, gated_production=True)
    return Baseline(production_alias)


@dataclass(frozen=True)
class Check:
    rule: str
    passed: bool
    message: str
    observed: float | None = None
    limit: float | None = None
    shortfall: float | None = None   # by how much it missed the limit (failed checks)


@dataclass
class Verdict:
    passed: bool
    checks: list[Check]
    baseline_version: int | None
    tolerance: float | None
    tolerance_derivation: str | None
    notes: list[str] = field(default_factory=list)
    gated_production: bool = False      # the version gated holds production: no baseline to compare with
    paired: Paired | None = None        # examples that flipped each way (None: not known)
    class_paired: dict[str, Paired] | None = None   # the same per class (None: not known)
    class_allowed: dict[str, float] | None = None   # allowed drop per class (None: no comparison)
    class_derivation: str | None = None             # how the per-class allowed drops were set

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "baseline_version": self.baseline_version,
                "tolerance": self.tolerance, "tolerance_derivation": self.tolerance_derivation,
                "discordant": self.paired.to_dict() if self.paired else None,
                "class_drop_derivation": self.class_derivation,
                "notes": list(self.notes), "checks": [asdict(c) for c in self.checks]}


def decide(candidate: dict, production: dict | None, rules: GateRules, *,
           baseline_version: int | None = None,
           signature_problems: list[str] | None = None,
           allow_signature_change: bool = False, gated_production: bool = False,
           trained_beside: dict[str, str | None] | None = None) -> Verdict:
    """Apply the rules. ``production`` None means there is no production version yet, or (with
    ``gated_production``) that the version gated is production itself. ``trained_beside``: for
    ``"candidate"`` and ``"production"``, the held-out fingerprint its training run recorded
    (None: not recorded)."""
    checks: list[Check] = []
    notes: list[str] = []
    invalid = _invalid_metrics(candidate, "candidate") + (
        _invalid_metrics(production, f"production v{baseline_version}") if production is not None else [])
    if invalid:       # a NaN passes no comparison and an inf passes every one: neither is a measurement
        return Verdict(passed=False, checks=[Check("metrics_valid", False, "; ".join(invalid))],
                       baseline_version=baseline_version if production is not None else None,
                       tolerance=None, tolerance_derivation=None,
                       notes=["The evaluation is not a measurement: no other rule was applied."],
                       gated_production=gated_production)
    acc = float(candidate["accuracy"])
    checks.append(_at_least("min_accuracy", acc, rules.min_accuracy,
                            f"held-out accuracy {acc:.{accuracy_places(acc, rules.min_accuracy)}f} "
                            f"(minimum {limit_text(rules.min_accuracy)})"))

    tolerance = derivation = paired = class_paired = class_allowed = class_derivation = None
    if production is None:
        notes.append("This version holds production already: no baseline to compare it with, only the "
                     "absolute rules applied." if gated_production else
                     "No production version yet: only the absolute rules applied.")
    else:
        cand_fp, prod_fp = candidate.get("heldout_fingerprint"), production.get("heldout_fingerprint")
        same = bool(cand_fp) and cand_fp == prod_fp     # an unrecorded held-out set proves nothing
        checks.append(Check("same_heldout_set", same,
                            "both evaluated on the same frozen held-out set" if same else
                            f"the held-out set of {'the candidate' if not cand_fp else 'production'} is not "
                            f"recorded (no heldout_fingerprint): metrics are not comparable"
                            if not (cand_fp and prod_fp) else
                            f"the held-out sets differ (candidate {candidate.get('dataset')} "
                            f"{str(cand_fp)[:12]}, production {production.get('dataset')} "
                            f"{str(prod_fp)[:12]}): metrics are not comparable"))
        p_acc, n = float(production["accuracy"]), int(candidate.get("n") or production.get("n") or 0)
        paired, unpaired_why = paired_counts(candidate, production)
        flipped = (f"b = {paired.b} (production right, candidate wrong), c = {paired.c} (candidate right, "
                   f"production wrong), n = {paired.n}" if paired else None)
        if rules.max_accuracy_drop is not None:
            tolerance = rules.max_accuracy_drop
            derivation = f"set explicitly: {tolerance:.4f}" + (f" (paired counts: {flipped})" if paired else "")
        elif paired:
            tolerance = paired_tolerance(paired.b, paired.c, paired.n, floor=rules.tolerance_floor,
                                         z=rules.tolerance_z)
            derivation = (f"paired, both versions on the same {paired.n} held-out examples: "
                          f"max({rules.tolerance_floor:g}, {rules.tolerance_z:g} x sqrt(((b + c)/n - d^2)/n)), "
                          f"d = (c - b)/n, with {flipped}: d = {(paired.c - paired.b) / paired.n:+.4f}, "
                          f"standard error of the difference = "
                          f"{paired_standard_error(paired.b, paired.c, paired.n):.4f}, tolerance = {tolerance:.4f}")
        else:
            tolerance = accuracy_tolerance(p_acc, n, floor=rules.tolerance_floor, z=rules.tolerance_z)
            se = math.sqrt(p_acc * (1 - p_acc) / n) if n > 0 else float("nan")
            derivation = (f"unpaired (fallback: {unpaired_why}; b and c unknown), production's standard error "
                          f"alone: max({rules.tolerance_floor:g}, {rules.tolerance_z:g} x sqrt(p(1-p)/n)) with "
                          f"p = {p_acc:.4f} (production accuracy), n = {n}: one standard error = "
                          f"{se:.4f}, tolerance = {tolerance:.4f}")
        delta = acc - p_acc
        # on a FAIL, as many decimals as make the drop and the allowed drop differ: 55 lost and 36
        # won of 450 read "(-0.0422; allowed drop 0.0422)" (review, tenth stop)
        places = decimals_apart(-delta, tolerance) if acc + EPS < p_acc - tolerance else 4
        checks.append(_at_least("accuracy_vs_production", acc, p_acc - tolerance,
                                f"accuracy {acc:.4f} vs production v{baseline_version} {p_acc:.4f} "
                                f"({delta:+.{places}f}; allowed drop {tolerance:.{places}f})"))
        class_paired, class_allowed, class_derivation = class_limits(candidate, production, rules)
        checks.append(_class_check(candidate, production, class_allowed, baseline_version,
                                   fixed=class_derivation is not None and not class_derivation.startswith("per class")))

    moved = heldout_moved(candidate, production, trained_beside or {}, baseline_version)
    if moved is not None:
        checks.append(moved)
    bad_rows = _non_probability_outputs(candidate)
    if bad_rows:
        checks.append(Check("class_probabilities", False,
                            f"the candidate answered {bad_rows} of {candidate.get('n')} held-out images with "
                            f"outputs that are not class probabilities (NaN, infinite, outside [0, 1] or not "
                            f"summing to 1); its accuracy counts only their largest value",
                            observed=bad_rows, limit=0))
    if production is not None and _non_probability_outputs(production):
        notes.append(f"Production v{baseline_version} answered {_non_probability_outputs(production)} of "
                     f"{production.get('n')} held-out images with outputs that are not class probabilities.")

    if signature_problems:
        allowed = allow_signature_change and production is not None and not any(
            p.startswith("new signature:") for p in signature_problems)
        text = "; ".join(signature_problems)
        checks.append(Check("signature", allowed,
                            f"signature change allowed by --allow-signature-change: {text}" if allowed
                            else f"serving signature incompatible with production: {text}"
                            + ("" if allow_signature_change else
                               " (pass --allow-signature-change if clients are updated)")))
    else:
        checks.append(Check("signature", True,
                            "serving signature compatible with production" if production is not None
                            else "serving signature well-formed (this version holds production: no other "
                                 "to compare with)" if gated_production
                            else "serving signature well-formed (no production to compare with)"))

    return Verdict(passed=all(c.passed for c in checks), checks=checks,
                   baseline_version=baseline_version if production is not None else None,
                   tolerance=tolerance, tolerance_derivation=derivation, notes=notes,
                   gated_production=gated_production and production is None, paired=paired,
                   class_paired=class_paired, class_allowed=class_allowed, class_derivation=class_derivation)


def class_limits(candidate: dict, production: dict, rules: GateRules
                 ) -> tuple[dict[str, Paired] | None, dict[str, float], str]:
    """Per class of production's evaluation, the allowed accuracy (recall) drop, with the
    per-class flips when known and how the limits were set. Paired (``class_paired_counts``):
    ``max(class_drop_floor, z_k * se_k)`` with ``se_k`` the paired standard error of that class's
    examples and ``z_k = class_z(tolerance_z, classes)``. Otherwise one fixed drop for every class:
    ``max_class_drop`` when set, else ``class_drop_fallback`` (older evaluations)."""
    pairs, why = class_paired_counts(candidate, production)
    classes = list((production.get("per_class_accuracy") or {}))
    if rules.max_class_drop is not None:
        text = f"set explicitly: {limit_text(rules.max_class_drop)} for every class"
        return pairs, {k: rules.max_class_drop for k in classes}, text
    if pairs is None:
        drop = rules.class_drop_fallback
        return None, {k: drop for k in classes}, (f"fixed {limit_text(drop)} for every class, whatever its size "
                                                   f"(fallback: {why})")
    z = class_z(rules.tolerance_z, len(pairs))
    allowed = {k: (paired_tolerance(pairs[k].b, pairs[k].c, pairs[k].n, floor=rules.class_drop_floor, z=z)
                   if k in pairs else rules.class_drop_floor) for k in classes}
    tail = 1 - NormalDist().cdf(rules.tolerance_z)
    text = (f"per class, paired on that class's held-out examples: max({rules.class_drop_floor:g}, z x "
            f"sqrt(((b + c)/n - d^2)/n)), d = (c - b)/n, with b, c the class's examples that flipped each way "
            f"and n its size (the per-class table); z = {z:.3f}, the one-sided {tail:.4f} of "
            f"{rules.tolerance_z:g} standard errors shared among the {len(pairs)} classes (Bonferroni, "
            f"{tail / max(len(pairs), 1):.5f} each), so that a retrain no worse than production fails a class "
            f"by chance about as rarely as the accuracy rule")
    return pairs, allowed, text


def heldout_moved(candidate: dict, production: dict | None, trained_beside: dict[str, str | None],
                  baseline_version: int | None) -> Check | None:
    """``heldout_unchanged_since_training``: each version's training run recorded the held-out
    set it was trained beside; the set evaluated now must be that one. None when no run recorded
    it (nothing to compare)."""
    now = candidate.get("heldout_fingerprint")
    roles = [("candidate", "the candidate")] + (
        [("production", f"production v{baseline_version}")] if production is not None else [])
    recorded = [(who, trained_beside.get(role)) for role, who in roles if trained_beside.get(role)]
    if not recorded:
        return None
    moved = [(who, fp) for who, fp in recorded if fp != now]
    if not moved:
        return Check("heldout_unchanged_since_training", True,
                     "the held-out set is the one " + " and ".join(who for who, _ in recorded)
                     + (" were" if len(recorded) > 1 else " was") + " trained beside")
    # only production's set moved: the candidate was trained beside today's, so retraining it
    # changes nothing (every retrain failed the same way); moving production is what ends it
    advice = ("retrain the candidate on today's partition, or promote with --force --reason after checking"
              if moved[0][0] == "the candidate" else
              f"production v{baseline_version}'s accuracy on it may be inflated; the candidate was trained beside "
              f"today's set, so retraining changes nothing: promote this version with --force --reason after checking")
    return Check("heldout_unchanged_since_training", False,
                 "the held-out set changed since " + " and ".join(
                     f"{who} was trained (recorded {str(fp)[:12]})" for who, fp in moved)
                 + f"; now {str(now)[:12]}: the frozen partition moved (a NumPy or data change), so the "
                 f"held-out set may hold examples it trained on; {advice}")


def _non_probability_outputs(doc: dict) -> int:
    """``non_probability_outputs`` of an evaluation (0 for documents older than it)."""
    try:
        return max(int(doc.get("non_probability_outputs") or 0), 0)
    except (TypeError, ValueError):
        return 0


def _invalid_metrics(doc: dict, who: str) -> list[str]:
    """Accuracies that are not numbers in [0, 1] (NaN, inf, negative, above 1, not a number), and
    counts (``n``, ``per_class_count``) that are not whole numbers of examples: a corrupt
    evaluation is said in one line, not a traceback from the rules' ``int()``."""
    def bad(value) -> bool:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return True
        return not (math.isfinite(x) and 0.0 <= x <= 1.0)

    def not_count(value) -> bool:       # the rules take int() of these: "abc", NaN, 2.5 or -1 is no count
        try:
            return value is not None and (isinstance(value, (bool, str)) or int(value) != value or value < 0)
        except (TypeError, ValueError, OverflowError):
            return True

    out = [f"{who}'s accuracy is {doc.get('accuracy')!r}, not a number in [0, 1]"] if bad(doc.get("accuracy")) else []
    classes = sorted((k for k, x in (doc.get("per_class_accuracy") or {}).items() if bad(x)), key=class_key)
    if classes:
        out.append(f"{who}'s accuracy of class{'es' if len(classes) > 1 else ''} {', '.join(classes)} is not a "
                   f"number in [0, 1]")
    if not_count(doc.get("n")):
        out.append(f"{who}'s n (examples evaluated) is {doc.get('n')!r}, not a whole number of examples")
    counts = doc.get("per_class_count") or {}
    if not isinstance(counts, dict):
        out.append(f"{who}'s per_class_count is not a mapping")
    elif classes := sorted((k for k, x in counts.items() if not_count(x)), key=class_key):
        out.append(f"{who}'s per_class_count of class{'es' if len(classes) > 1 else ''} {', '.join(classes)} is "
                   f"not a whole number of examples")
    return out


def _at_least(rule: str, observed: float, limit: float, message: str) -> Check:
    ok = observed + EPS >= limit
    return Check(rule, ok, message, observed=round(observed, 6), limit=round(limit, 6),
                 shortfall=None if ok else round(limit - observed, 6))


def _class_check(candidate: dict, production: dict, allowed: dict[str, float], baseline_version, *,
                 fixed: bool) -> Check:
    cand, prod = candidate.get("per_class_accuracy") or {}, production.get("per_class_accuracy") or {}
    drops = {k: float(prod[k]) - float(cand[k]) for k in sorted(set(cand) & set(prod), key=class_key)}
    missing = sorted(set(prod) - set(cand), key=class_key)
    if missing:
        return Check("class_accuracy_vs_production", False,
                     f"classes {', '.join(missing)} have no accuracy in the candidate's evaluation")
    if not drops:
        return Check("class_accuracy_vs_production", True, "no per-class accuracies to compare")
    # a class with no held-out example (mlproject reports its accuracy as 0.0, count 0) is never
    # named as the largest or nearest drop: it measured nothing (review, tenth stop)
    named = [k for k in drops if not (no_examples(candidate, k) and no_examples(production, k))] or list(drops)
    worst = max(named, key=lambda k: drops[k])
    bad = [k for k, d in drops.items() if breached(d, allowed[k])]
    if bad:
        over = max(bad, key=lambda k: drops[k] - allowed[k])
        # as many decimals as make a breached class's drop differ from its allowed drop
        places = {k: decimals_apart(drops[k], float(limit_text(allowed[k])) if fixed else allowed[k], 3)
                  for k in bad}
        if fixed:
            parts = [f"class {k} {float(cand[k]):.3f} vs {float(prod[k]):.3f} (-{drops[k]:.{places[k]}f})"
                     for k in bad]
            head = f"per-class accuracy dropped by more than {limit_text(allowed[over])}"
        else:
            parts = [f"class {k} {float(cand[k]):.3f} vs {float(prod[k]):.3f} (-{drops[k]:.{places[k]}f}; allowed "
                     f"{allowed[k]:.{places[k]}f})" for k in bad]
            head = "per-class accuracy dropped by more than that class's allowed drop"
        return Check("class_accuracy_vs_production", False,
                     f"{head} against production v{baseline_version}: " + "; ".join(parts),
                     observed=round(drops[over], 6), limit=round(allowed[over], 6),
                     shortfall=round(drops[over] - allowed[over], 6))
    limit = limit_text(allowed[worst]) if fixed else f"{allowed[worst]:.3f} for that class"
    # of the classes that dropped, the one closest to failing (least to spare): with a drop per
    # class it need not be the one that dropped most, and a class 0.002 from failing went unnamed
    # (review, tenth stop). A class that lost nothing is not near failing, whatever its floor.
    dropped = [k for k in named if drops[k] > 0] or [worst]
    nearest = min(dropped, key=lambda k: allowed[k] - drops[k])
    near = ("" if allowed[nearest] - drops[nearest] >= allowed[worst] - drops[worst] else
            f"; nearest its allowed drop: class {nearest}, drop {drops[nearest]:.3f} of {allowed[nearest]:.3f} "
            f"allowed")
    return Check("class_accuracy_vs_production", True,
                 f"largest per-class drop {max(drops[worst], 0):.3f} (class {worst}; allowed {limit}){near}",
                 observed=round(drops[worst], 6), limit=round(allowed[worst], 6))


def no_examples(doc: dict, k: str) -> bool:
    """Whether an evaluation counted no held-out example of class ``k`` (its accuracy, 0.0, is no
    measurement)."""
    try:
        return int((doc.get("per_class_count") or {}).get(k)) == 0
    except (TypeError, ValueError):
        return False


def breached(drop: float, allowed: float) -> bool:
    """Whether a class's accuracy drop (production's minus the candidate's) is over its allowed
    drop (``class_accuracy_vs_production``; the ledger row's per-class figures say the same)."""
    return drop > allowed + EPS


def limit_text(limit: float) -> str:
    """A limit a person set (``--min-accuracy``, ``--max-class-drop``) as it was set: two decimals
    when that is the whole value (``0.80``), else every digit (``0.905``). At two decimals alone
    ``0.905`` read ``0.91``, and a version that passed read "0.9060 (minimum 0.91)"."""
    two = f"{limit:.2f}"
    return two if float(two) == limit else repr(float(limit))


def accuracy_places(accuracy: float, minimum: float) -> int:
    """Decimals for an accuracy beside its minimum (``limit_text``): 4, at least as many as the
    minimum shows (then rounding cannot make a pass read below it), and on a FAIL as many as make
    them differ. At 4 alone ``--min-accuracy 0.79778`` failed 0.79775 reading "0.7978 (minimum
    0.79778)" (review, fifteenth stop)."""
    shown = limit_text(minimum)
    places = max(4, len(shown.partition(".")[2]) if "e" not in shown else 10)
    return decimals_apart(minimum, accuracy, places) if accuracy + EPS < minimum else places


def decimals_apart(drop: float, allowed: float, least: int = 4) -> int:
    """Decimals (at least ``least``) at which a drop over its allowed drop does not read equal to
    it: a FAIL that read "(-0.0422; allowed drop 0.0422)" looked like a drop at the limit, which
    passes (review, tenth stop)."""
    for places in range(least, 10):
        if f"{drop:.{places}f}" != f"{allowed:.{places}f}":
            return places
    return least
