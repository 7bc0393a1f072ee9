"""The quality gate's decision: pure functions on plain evaluation dicts.

Inputs are ``mlproject.evaluate.Evaluation.to_dict()`` documents (accuracy, loss,
per_class_accuracy, per_class_count, n, heldout_fingerprint, dataset) for the candidate and
for production, both computed now on the same frozen held-out set.

Rules (defaults; flags and ``MLOPS_GATE_*`` variables override them):

1. ``min_accuracy``: held-out accuracy >= 0.80 (the tutorial's bar).
2. ``accuracy_vs_production``: accuracy not lower than production's by more than a tolerance
   derived from the held-out size, ``max(0.01, 2 * sqrt(p * (1 - p) / n))`` with ``p`` the
   production accuracy (two standard errors of an accuracy measured on ``n`` examples). On
   digits (n = 450, p ~ 0.95) that is ~0.021: retrains on good batches land within -0.007,
   retrains on bad batches at -0.04 or worse.
3. ``class_accuracy_vs_production``: no class's accuracy lower than production's by more than
   0.10.
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

from mlops_common import settings
from mlops_common.errors import ConfigError, RefusedError

EPS = 1e-9  # float slack so that a value exactly at a limit passes


@dataclass(frozen=True)
class GateRules:
    min_accuracy: float = 0.80
    max_accuracy_drop: float | None = None   # None: derived from the held-out size
    max_class_drop: float = 0.10
    tolerance_floor: float = 0.01
    tolerance_z: float = 2.0

    @classmethod
    def from_env(cls, **overrides) -> "GateRules":
        """Defaults, then ``MLOPS_GATE_MIN_ACCURACY`` / ``_MAX_ACCURACY_DROP`` / ``_MAX_CLASS_DROP``,
        then explicit (non-None) ``overrides`` (CLI flags)."""
        values = {}
        for name, var in (("min_accuracy", "MLOPS_GATE_MIN_ACCURACY"),
                          ("max_accuracy_drop", "MLOPS_GATE_MAX_ACCURACY_DROP"),
                          ("max_class_drop", "MLOPS_GATE_MAX_CLASS_DROP")):
            raw = settings.env(var)
            if raw is not None:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise ConfigError(f"{var} must be a number such as 0.05, got '{raw}'") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        rules = cls(**values)
        for name in ("min_accuracy", "max_accuracy_drop", "max_class_drop"):
            v = getattr(rules, name)
            if v is not None and not 0 <= v <= 1:
                raise ConfigError(f"gate rule {name} must be between 0 and 1, got {v}")
        return rules


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


def accuracy_tolerance(p: float, n: int, *, floor: float = 0.01, z: float = 2.0) -> float:
    """Allowed accuracy drop: ``z`` standard errors of an accuracy ``p`` measured on ``n`` examples."""
    if n <= 0:
        return floor
    p = min(max(p, 0.0), 1.0)
    return max(floor, z * math.sqrt(p * (1 - p) / n))


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

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "baseline_version": self.baseline_version,
                "tolerance": self.tolerance, "tolerance_derivation": self.tolerance_derivation,
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
                            f"held-out accuracy {acc:.4f} (minimum {limit_text(rules.min_accuracy)})"))

    tolerance = derivation = None
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
        if rules.max_accuracy_drop is not None:
            tolerance = rules.max_accuracy_drop
            derivation = f"set explicitly: {tolerance:.4f}"
        else:
            tolerance = accuracy_tolerance(p_acc, n, floor=rules.tolerance_floor, z=rules.tolerance_z)
            se = math.sqrt(p_acc * (1 - p_acc) / n) if n > 0 else float("nan")
            derivation = (f"max({rules.tolerance_floor:g}, {rules.tolerance_z:g} x sqrt(p(1-p)/n)) with "
                          f"p = {p_acc:.4f} (production accuracy), n = {n}: one standard error = "
                          f"{se:.4f}, tolerance = {tolerance:.4f}")
        delta = acc - p_acc
        checks.append(_at_least("accuracy_vs_production", acc, p_acc - tolerance,
                                f"accuracy {acc:.4f} vs production v{baseline_version} {p_acc:.4f} "
                                f"({delta:+.4f}; allowed drop {tolerance:.4f})"))
        checks.append(_class_check(candidate, production, rules.max_class_drop, baseline_version))

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
                            else "serving signature well-formed (no production to compare with)"))

    return Verdict(passed=all(c.passed for c in checks), checks=checks,
                   baseline_version=baseline_version if production is not None else None,
                   tolerance=tolerance, tolerance_derivation=derivation, notes=notes,
                   gated_production=gated_production and production is None)


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
                     + " was trained beside")
    return Check("heldout_unchanged_since_training", False,
                 "the held-out set changed since " + " and ".join(
                     f"{who} was trained (recorded {str(fp)[:12]})" for who, fp in moved)
                 + f"; now {str(now)[:12]}: the frozen partition moved (a NumPy or data change), so the "
                 f"held-out set may hold examples it trained on; retrain on today's partition, or "
                 f"promote with --force --reason after checking")


def _non_probability_outputs(doc: dict) -> int:
    """``non_probability_outputs`` of an evaluation (0 for documents older than it)."""
    try:
        return max(int(doc.get("non_probability_outputs") or 0), 0)
    except (TypeError, ValueError):
        return 0


def _invalid_metrics(doc: dict, who: str) -> list[str]:
    """Accuracies that are not numbers in [0, 1] (NaN, inf, negative, above 1, not a number)."""
    def bad(value) -> bool:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return True
        return not (math.isfinite(x) and 0.0 <= x <= 1.0)

    out = [f"{who}'s accuracy is {doc.get('accuracy')!r}, not a number in [0, 1]"] if bad(doc.get("accuracy")) else []
    classes = sorted((k for k, x in (doc.get("per_class_accuracy") or {}).items() if bad(x)), key=_class_key)
    if classes:
        out.append(f"{who}'s accuracy of class{'es' if len(classes) > 1 else ''} {', '.join(classes)} is not a "
                   f"number in [0, 1]")
    return out


def _at_least(rule: str, observed: float, limit: float, message: str) -> Check:
    ok = observed + EPS >= limit
    return Check(rule, ok, message, observed=round(observed, 6), limit=round(limit, 6),
                 shortfall=None if ok else round(limit - observed, 6))


def _class_check(candidate: dict, production: dict, max_drop: float, baseline_version) -> Check:
    cand, prod = candidate.get("per_class_accuracy") or {}, production.get("per_class_accuracy") or {}
    drops = {k: float(prod[k]) - float(cand[k]) for k in sorted(set(cand) & set(prod), key=_class_key)}
    missing = sorted(set(prod) - set(cand), key=_class_key)
    if missing:
        return Check("class_accuracy_vs_production", False,
                     f"classes {', '.join(missing)} have no accuracy in the candidate's evaluation")
    if not drops:
        return Check("class_accuracy_vs_production", True, "no per-class accuracies to compare")
    worst = max(drops, key=lambda k: drops[k])
    bad = [k for k, d in drops.items() if d > max_drop + EPS]
    if bad:
        parts = [f"class {k} {float(cand[k]):.3f} vs {float(prod[k]):.3f} (-{drops[k]:.3f})" for k in bad]
        return Check("class_accuracy_vs_production", False,
                     f"per-class accuracy dropped by more than {limit_text(max_drop)} against production "
                     f"v{baseline_version}: " + "; ".join(parts),
                     observed=round(drops[worst], 6), limit=max_drop,
                     shortfall=round(drops[worst] - max_drop, 6))
    return Check("class_accuracy_vs_production", True,
                 f"largest per-class drop {max(drops[worst], 0):.3f} (class {worst}; allowed {limit_text(max_drop)})",
                 observed=round(drops[worst], 6), limit=max_drop)


def limit_text(limit: float) -> str:
    """A limit a person set (``--min-accuracy``, ``--max-class-drop``) as it was set: two decimals
    when that is the whole value (``0.80``), else every digit (``0.905``). At two decimals alone
    ``0.905`` read ``0.91``, and a version that passed read "0.9060 (minimum 0.91)"."""
    two = f"{limit:.2f}"
    return two if float(two) == limit else repr(float(limit))


def _class_key(k: str):
    return (0, int(k)) if str(k).isdigit() else (1, str(k))


def summary(verdict: Verdict, version: int) -> str:
    """One paragraph: which rules failed and by how much (or that it passed)."""
    base = (f"against production v{verdict.baseline_version}" if verdict.baseline_version is not None
            else "as the production version itself (no baseline: only the absolute rules applied)"
            if verdict.gated_production
            else "with no production version yet (only the absolute rules applied)")
    if verdict.passed:
        return f"Version {version} passed the quality gate {base}: " + \
            "; ".join(c.message for c in verdict.checks) + "."
    parts = []
    for c in verdict.failed:
        by = f" (short by {c.shortfall:.4f})" if c.shortfall is not None and c.rule != \
            "class_accuracy_vs_production" else ""
        parts.append(f"{c.rule}: {c.message}{by}")
    return f"Version {version} failed the quality gate {base}: " + "; ".join(parts) + "."
