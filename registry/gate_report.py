"""The gate report: one JSON document, and the same facts rendered as markdown (and as HTML
with charts, ``gate_html``).

Candidate and production side by side (overall and per class, and their confusion matrices
``[true][predicted]`` when the evaluation has them), every rule with its outcome, the tolerance
and how it was derived (paired on the examples that flipped, ``discordant``, when both evaluations
carry per-example results). Pure functions: the JSON is built from plain data and the markdown and
HTML are rendered from the JSON, so they never disagree. ``summary`` is the verdict in one
paragraph (the report's ``summary``, the gate ledger row's reason).
"""
from __future__ import annotations

import math

from .gate_rules import (
    EPS,
    GateRules,
    Verdict,
    breached,
    decimals_apart,
    limit_text,
    no_examples,
)
from .gate_stats import class_key, paired_standard_error

LEDGER_BREACHED_CLASSES = 20    # a gate's ledger row lists at most this many breached classes
LEDGER_NEAREST_CLASSES = 3      # and this many of the others, those nearest their allowed drop


def build(*, model: str, version: int, verdict: Verdict, rules: GateRules, candidate: dict,
          production: dict | None, signature_differences: list[str],
          allow_signature_change: bool, evaluated_at: str, notes: list[str] | tuple[str, ...] = ()) -> dict:
    classes = sorted(set(candidate.get("per_class_accuracy") or {})
                     | set((production or {}).get("per_class_accuracy") or {}), key=class_key)
    per_class = []
    pairs, allowed = verdict.class_paired or {}, verdict.class_allowed or {}
    for k in classes:
        # a class an evaluation counted no example of has no accuracy (mlproject says 0.0): None,
        # shown as "no examples" (review, tenth stop)
        c = None if no_examples(candidate, k) else (candidate.get("per_class_accuracy") or {}).get(k)
        p = (None if production is None or no_examples(production, k)
             else (production.get("per_class_accuracy") or {}).get(k))
        flips = pairs.get(k)
        # lost: production right, the candidate wrong; won: the reverse (None: not known)
        per_class.append({"class": k, "count": (candidate.get("per_class_count") or {}).get(k),
                          "candidate": c, "production": p,
                          "delta": None if c is None or p is None else round(c - p, 6),
                          "lost": flips.b if flips else None, "won": flips.c if flips else None,
                          "standard_error": round(paired_standard_error(flips.b, flips.c, flips.n), 6)
                          if flips else None,
                          "allowed_drop": round(allowed[k], 6) if k in allowed and p is not None else None})
    fixed = {round(x, 6) for x in allowed.values()}
    per_class_limit = (None if not allowed or not verdict.class_derivation.startswith(("set", "fixed"))
                       else fixed.pop() if len(fixed) == 1 else None)
    return {
        "model": model,
        "version": version,
        "status": "passed" if verdict.passed else "failed",
        "summary": summary(verdict, version),
        "evaluated_at": evaluated_at,
        "production_version": verdict.baseline_version,
        # the version gated holds production itself (no baseline), not a first version
        "gated_production": bool(verdict.gated_production),
        "dataset": candidate.get("dataset"),
        "heldout_fingerprint": candidate.get("heldout_fingerprint"),
        "heldout_size": candidate.get("n"),
        "rules": {"min_accuracy": rules.min_accuracy,
                  "max_accuracy_drop": verdict.tolerance,
                  "max_accuracy_drop_derivation": verdict.tolerance_derivation,
                  # one drop for every class (set, or the fallback), None: per class (per_class's allowed_drop)
                  "max_class_drop": per_class_limit if allowed else rules.max_class_drop,
                  "max_class_drop_derivation": verdict.class_derivation},
        "allow_signature_change": allow_signature_change,
        "signature_differences": list(signature_differences),
        "metrics": {
            "candidate": {"accuracy": candidate.get("accuracy"), "loss": candidate.get("loss")},
            "production": None if production is None else
            {"accuracy": production.get("accuracy"), "loss": production.get("loss")},
        },
        # examples that flipped each way between production and the candidate (None: an evaluation
        # without per-example results, or no production)
        "discordant": verdict.paired.to_dict() if verdict.paired else None,
        "per_class": per_class,
        "confusion": {"candidate": candidate.get("confusion") or None,
                      "production": None if production is None else production.get("confusion") or None},
        "checks": verdict.to_dict()["checks"],
        "notes": list(verdict.notes) + list(notes),    # the rules' notes, then the gate's own
    }


def column_heads(report: dict) -> tuple[str, str]:
    """The candidate's and production's column heads (markdown and HTML). On production's own
    gate the version is not a candidate and there is production, itself: the HTML read
    "v2 (candidate)" and "production (none)", as for a first version (review, tenth stop)."""
    v, prod = report["version"], report["production_version"]
    if report.get("gated_production"):
        return f"v{v} (holds production)", f"production (v{v} itself: no baseline)"
    return f"v{v} (candidate)", f"v{prod} (production)" if prod is not None else "production (none)"


def number_text(x, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or "—" when missing (the markdown and HTML reports)."""
    return "—" if x is None else f"{x:.{digits}f}"


def _signed(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def accuracy_places(report: dict) -> int:
    """Decimals for the overall accuracy delta and the allowed drop (markdown and HTML): 4, or as
    many as make a drop over the allowed drop differ from it (``accuracy_vs_production``'s message)."""
    m, tolerance = report["metrics"], report["rules"]["max_accuracy_drop"]
    cand, prod = m["candidate"].get("accuracy"), (m["production"] or {}).get("accuracy")
    if cand is None or prod is None or tolerance is None or not cand + EPS < prod - tolerance:
        return 4
    return decimals_apart(prod - cand, tolerance)


def class_drop_places(row: dict) -> tuple[int, int]:
    """Decimals of a per-class row's delta and allowed drop (markdown and HTML tables): 4 and 3,
    or as many as make them read as the rule decided. At 4 and 3 a class of 1,000 that failed at
    -0.021 against 0.02098 read "-0.0210" beside "0.021" (at its limit, a pass), and one that passed
    at -0.25926 against 0.25938 read "-0.2593" beside "0.259" (review, fifteenth stop)."""
    delta, allowed = row["delta"], row.get("allowed_drop")
    if delta is None or allowed is None:
        return 4, 3
    if breached(-delta, allowed):
        places = decimals_apart(-delta, allowed, 3)
        return max(4, places), places
    return 4, 4 if float(f"{-delta:.4f}") > float(f"{allowed:.3f}") else 3


def count_text(x) -> str:
    """A count, or "—" when missing (the markdown and HTML reports)."""
    return "—" if x is None else str(x)


def class_value_text(row: dict, key: str) -> str:
    """A per-class accuracy (``key``: candidate or production) to 3 decimals, "no examples" for a
    class the held-out set has none of, or "—" (markdown and HTML)."""
    if row[key] is None and row["count"] == 0:
        return "no examples"
    return number_text(row[key], 3)


def class_limit_text(rules: dict) -> str:
    """The per-class limit of a report's rules: one drop for every class, or each class's own."""
    drop = rules.get("max_class_drop")
    return limit_text(drop) if drop is not None else "each class's allowed drop (per-class table)"


def limits_text(report: dict) -> str:
    """The report's limits line (markdown and HTML). Without production only the absolute rules
    applied: the line read "accuracy drop vs production ≤ —; per-class drop ≤ each class's allowed
    drop (per-class table)" beside a table of dashes (review, tenth stop)."""
    r = report["rules"]
    # metrics_valid failed: no rule was applied, and the per-class table is dashes; the line read
    # "accuracy drop vs production ≤ —; per-class drop ≤ each class's allowed drop" (review, fifteenth stop),
    # and without production "accuracy ≥ 0.80" as if it had been checked (review, eighteenth stop)
    if any(c["rule"] == "metrics_valid" and not c["passed"] for c in report["checks"]):
        if report["metrics"]["production"] is None:
            return (f"Limits: none applied — the evaluation is not a measurement (metrics_valid failed: an accuracy "
                    f"is not a number in [0, 1] or a count not a whole number), so the minimum accuracy "
                    f"({limit_text(r['min_accuracy'])}) was not checked (no production to compare with).")
        return (f"Limits: none applied — an evaluation is not a measurement (metrics_valid failed: an accuracy "
                f"is not a number in [0, 1] or a count not a whole number), so neither the minimum accuracy "
                f"({limit_text(r['min_accuracy'])}) was checked nor the comparison with production "
                f"v{report['production_version']}, overall or per class, made.")
    if report["metrics"]["production"] is None:
        return (f"Limits: accuracy ≥ {limit_text(r['min_accuracy'])} (no production to compare with: the rules "
                f"against production did not apply).")
    return (f"Limits: accuracy ≥ {limit_text(r['min_accuracy'])}; accuracy drop vs production ≤ "
            f"{number_text(r['max_accuracy_drop'], accuracy_places(report))}; per-class drop ≤ "
            f"{class_limit_text(r)}.")


def flipped_text(discordant: dict) -> str:
    """The report's ``discordant`` counts as one sentence (markdown and HTML)."""
    b, c = discordant["production_right_candidate_wrong"], discordant["candidate_right_production_wrong"]
    return (f"Examples that flipped, of the {discordant['n']} held-out examples both answered: {b} production got "
            f"right and the candidate wrong (b), {c} the candidate got right and production wrong (c).")


def markdown(report: dict) -> str:
    m = report["metrics"]
    lines = [
        f"# Quality gate: {report['model']} v{report['version']} — **{report['status'].upper()}**",
        "",
        report["summary"],
        "",
        f"Held-out set: {report.get('dataset')} (n = {report.get('heldout_size')}, fingerprint "
        f"`{str(report.get('heldout_fingerprint'))[:16]}`), evaluated {report['evaluated_at']}.",
        "",
    ]
    lines += [f"> {n}" for n in report["notes"]] + ([""] if report["notes"] else [])
    cand_head, prod_head = column_heads(report)
    pm = m["production"] or {}
    delta = (None if not m["production"] or m["candidate"]["accuracy"] is None
             else m["candidate"]["accuracy"] - pm.get("accuracy"))
    lines += [
        "## Overall",
        "",
        f"| metric | {cand_head} | {prod_head} | delta |",
        "| --- | ---: | ---: | ---: |",
        f"| accuracy | {number_text(m['candidate']['accuracy'])} | {number_text(pm.get('accuracy'))} | "
        f"{_signed(delta, accuracy_places(report))} |",
        f"| loss | {number_text(m['candidate']['loss'])} | {number_text(pm.get('loss'))} | "
        f"{_signed(None if not m['production'] else m['candidate']['loss'] - pm.get('loss'))} |",
        "",
    ]
    if report.get("discordant"):
        lines += [flipped_text(report["discordant"]), ""]
    lines += [
        "## Per class (accuracy)",
        "",
        f"| class | n | {cand_head} | {prod_head} | delta | lost | won | allowed drop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    def prod_text(row):
        return class_value_text(row, "production") if m["production"] else number_text(row["production"], 3)

    for row in report["per_class"]:
        delta_places, allowed_places = class_drop_places(row)
        lines.append(f"| {row['class']} | {count_text(row['count'])} | "
                     f"{class_value_text(row, 'candidate')} | {prod_text(row)} | "
                     f"{_signed(row['delta'], delta_places)} | {count_text(row.get('lost'))} | "
                     f"{count_text(row.get('won'))} | {number_text(row.get('allowed_drop'), allowed_places)} |")
    r = report["rules"]
    lines += [
        "",
        "## Rules",
        "",
        "| rule | result | detail |",
        "| --- | --- | --- |",
    ]
    for c in report["checks"]:
        lines.append(f"| {c['rule']} | {'pass' if c['passed'] else '**FAIL**'} | "
                     f"{c['message'].replace('|', '/')} |")
    lines += ["", limits_text(report)]
    if r["max_accuracy_drop_derivation"]:
        lines.append(f"Accuracy tolerance: {r['max_accuracy_drop_derivation']}.")
    if r.get("max_class_drop_derivation"):
        lines.append(f"Per-class tolerance: {r['max_class_drop_derivation']}.")
    if report["signature_differences"]:
        lines += ["", "## Signature differences", ""]
        lines += [f"- {d}" for d in report["signature_differences"]]
        if report["allow_signature_change"]:
            lines.append("- allowed with --allow-signature-change (recorded)")
    return "\n".join(lines) + "\n"


def ledger_classes(report: dict, allowed: dict[str, float] | None, *, most: int = LEDGER_BREACHED_CLASSES,
                   nearest: int = LEDGER_NEAREST_CLASSES) -> dict | None:
    """The per-class rule's figures for the gate's ledger row (``details.per_class``), bounded
    whatever the number of classes: the breached classes (at most ``most``, the largest excess over
    the allowed drop first), then the ``nearest`` others closest to their allowed drop. Per class:
    the candidate's and production's accuracy, the allowed drop (``allowed``: the verdict's, not
    rounded) and whether it breached, the rule's own test (``gate_rules.breached``); a class
    production has and the candidate's evaluation lacks is breached. None when no class was compared
    (no production, or metrics that are not numbers)."""
    if not allowed:
        return None
    ranked = []
    for row in report["per_class"]:
        k, cand, prod = row["class"], row["candidate"], row["production"]
        if k not in allowed or prod is None:
            continue
        drop = None if cand is None else float(prod) - float(cand)
        over = drop is None or breached(drop, allowed[k])
        ranked.append((math.inf if drop is None else drop - allowed[k],
                       {"class": k, "candidate": None if cand is None else round(float(cand), 4),
                        "production": round(float(prod), 4), "allowed_drop": round(allowed[k], 4),
                        "breached": over}))
    ranked.sort(key=lambda x: -x[0])        # stable: the report's class order among equals
    bad = [r for _, r in ranked if r["breached"]]
    others = [r for _, r in ranked if not r["breached"]]
    listed = bad[:most] + others[:nearest]
    head = ("none breached" if not bad else f"all {len(bad)} breached" if len(bad) <= most
            else f"{most} of the {len(bad)} breached (largest excess over the allowed drop first)")
    n_near = min(len(others), nearest)
    tail = f"; then the {n_near} others nearest their allowed drop" if n_near else ""
    return {"compared": len(ranked), "breached": len(bad),
            "listed": f"{head}{tail}; of {len(ranked)} classes compared", "classes": listed}


def _amount(x: float) -> str:
    """A shortfall to 4 decimals, or to 2 significant digits when those read 0.0000: a FAIL that
    said "short by 0.0000" looked like a pass to the approver (found by review, tenth stop)."""
    four = f"{x:.4f}"
    return four if float(four) != 0 or x == 0 else f"{x:.2g}"


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
        by = f" (short by {_amount(c.shortfall)})" if c.shortfall is not None and c.rule != \
            "class_accuracy_vs_production" else ""
        parts.append(f"{c.rule}: {c.message}{by}")
    return f"Version {version} failed the quality gate {base}: " + "; ".join(parts) + "."
