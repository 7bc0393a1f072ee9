"""The gate report as one self-contained HTML page, for the approver (CircleCI artifact, MLflow UI).

Rendered from the report JSON (``gate_report.build``) like the markdown, so the three never
disagree. Charts are inline SVG drawn here (no matplotlib, no scripts, no external URL: the page
opens the same from a CircleCI artifact, MLflow's artifact viewer or a laptop offline):
per-class accuracy candidate vs production, and the two confusion matrices side by side.
"""
from __future__ import annotations

import math
from html import escape

from .gate_report import (
    accuracy_places,
    class_drop_places,
    class_value_text,
    column_heads,
    count_text,
    flipped_text,
    limits_text,
    number_text,
)

CANDIDATE_COLOR, PRODUCTION_COLOR = "#1f77b4", "#ff7f0e"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:1.4em;margin-bottom:4px} h2{font-size:1.1em;margin-top:28px;border-bottom:1px solid #ddd}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:bold}
.passed{background:#2e7d32} .failed{background:#c62828}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px}
td.num{text-align:right;font-variant-numeric:tabular-nums} tr.fail td{background:#fdecea}
.neg{color:#c62828} .pos{color:#2e7d32} .muted{color:#666} .note{background:#fff8e1;padding:6px 10px}
.side{display:flex;flex-wrap:wrap;gap:24px} figure{margin:0} figcaption{font-weight:bold;margin:4px 0}
svg text{font-family:inherit}
"""


def _signed(x, *, higher_is_better: bool = True, digits: int = 4) -> str:
    if x is None:
        return "—"
    good = x > 0 if higher_is_better else x < 0
    cls = "" if x == 0 else "pos" if good else "neg"
    return f'<span class="{cls}">{x:+.{digits}f}</span>'


def _axis_floor(values: list[float]) -> float:
    """Lower end of the accuracy axis: a tenth below the lowest bar, so small drops are visible."""
    low = min(values, default=1.0)
    return max(0.0, min(0.9, int((low - 0.05) * 10) / 10))


def _drawable(v) -> bool:
    return v is not None and math.isfinite(v)


def class_chart(report: dict) -> str:
    """Grouped bars: per-class accuracy of the candidate and of production (inline SVG)."""
    rows = report["per_class"]
    if not rows:
        return '<p class="muted">No per-class accuracies in the evaluation.</p>'
    cand_head, prod_head = column_heads(report)
    # a non-finite accuracy (the metrics_valid rule fails the gate on it) has no bar: int(NaN) in
    # the axis crashed the gate before its failed verdict was recorded
    values = [v for r in rows for v in (r["candidate"], r["production"]) if _drawable(v)]
    lo = _axis_floor(values)
    left, top, plot_h, group_w, bar_w = 48, 28, 220, 56, 20
    width, height = left + group_w * len(rows) + 20, top + plot_h + 48

    def y(v: float) -> float:
        return top + plot_h * (1 - (max(v, lo) - lo) / (1 - lo))

    parts = [(f'<svg id="per-class-chart" role="img" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" aria-label="per-class accuracy, candidate vs production">')]
    for i in range(6):
        v = lo + (1 - lo) * i / 5
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>')
    for i, r in enumerate(rows):
        x0 = left + group_w * i + (group_w - 2 * bar_w) / 2
        for j, (key, color, head) in enumerate((("candidate", CANDIDATE_COLOR, cand_head),
                                                 ("production", PRODUCTION_COLOR, prod_head))):
            v = r[key]
            if not _drawable(v):
                continue
            parts.append(f'<rect class="bar {key}" data-class="{escape(str(r["class"]))}" data-value="{v:.4f}" '
                         f'x="{x0 + j * bar_w:.1f}" y="{y(v):.1f}" width="{bar_w - 2}" '
                         f'height="{top + plot_h - y(v):.1f}" fill="{color}">'
                         f'<title>class {escape(str(r["class"]))}, {escape(head)}: {v:.3f}</title></rect>')
        parts.append(f'<text x="{left + group_w * i + group_w / 2:.1f}" y="{top + plot_h + 16}" font-size="12" '
                     f'text-anchor="middle">{escape(str(r["class"]))}</text>')
    parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#999"/>'
                 f'<text x="{left + (width - left) / 2:.1f}" y="{height - 8}" font-size="12" '
                 f'text-anchor="middle">class (accuracy axis starts at {lo:.2f})</text>')
    legend = [(cand_head, CANDIDATE_COLOR)] + ([(prod_head, PRODUCTION_COLOR)]
                                               if any(r["production"] is not None for r in rows) else [])
    for i, (head, color) in enumerate(legend):
        parts.append(f'<rect x="{left + i * 200}" y="6" width="12" height="12" fill="{color}"/>'
                     f'<text x="{left + i * 200 + 18}" y="16" font-size="12">{escape(head)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def confusion_svg(cm: list[list[int]], labels: list[str], *, name: str) -> str:
    """One confusion matrix ``[true][predicted]`` as a heat map (inline SVG): blue = right,
    red = confused, shade = share of that true class; every cell shows its count."""
    k, cell, left, top = len(cm), 30, 44, 40
    size_w, size_h = left + cell * k + 8, top + cell * k + 8
    parts = [(f'<svg class="confusion" data-name="{escape(name)}" role="img" width="{size_w}" '
              f'height="{size_h}" viewBox="0 0 {size_w} {size_h}" aria-label="confusion matrix {escape(name)}">'),
             f'<text x="{left + cell * k / 2}" y="12" font-size="11" text-anchor="middle">predicted</text>',
             (f'<text x="10" y="{top + cell * k / 2}" font-size="11" text-anchor="middle" '
              f'transform="rotate(-90 10 {top + cell * k / 2})">true</text>')]
    for j in range(k):
        parts.append(f'<text x="{left + cell * j + cell / 2}" y="{top - 6}" font-size="11" '
                     f'text-anchor="middle">{escape(labels[j])}</text>')
    for i, row in enumerate(cm):
        total = sum(row) or 1
        parts.append(f'<text x="{left - 6}" y="{top + cell * i + cell / 2 + 4}" font-size="11" '
                     f'text-anchor="end">{escape(labels[i])}</text>')
        for j, n in enumerate(row):
            share = n / total
            rgb = (int(255 - 200 * share), int(255 - 130 * share), 255) if i == j else \
                (255, int(255 - 400 * min(share, 0.5)), int(255 - 400 * min(share, 0.5)))
            ink = "#fff" if i == j and share > 0.6 else "#222"
            parts.append(f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" '
                         f'fill="rgb{rgb}" stroke="#fff"><title>true {escape(labels[i])}, predicted '
                         f'{escape(labels[j])}: {n}</title></rect>'
                         f'<text x="{left + cell * j + cell / 2}" y="{top + cell * i + cell / 2 + 4}" '
                         f'font-size="10" text-anchor="middle" fill="{ink}">{n if n else ""}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _confusions(report: dict) -> str:
    cms = report.get("confusion") or {}
    labels = [str(r["class"]) for r in report["per_class"]]
    cand_head, prod_head = column_heads(report)
    figures = [f'<figure><figcaption>{escape(head)}</figcaption>'
               f'{confusion_svg(cm, labels or [str(i) for i in range(len(cm))], name=key)}</figure>'
               for key, head in (("candidate", cand_head), ("production", prod_head))
               if (cm := cms.get(key))]
    if not figures:
        return '<p class="muted">The evaluation carried no confusion matrices.</p>'
    return f'<div class="side">{"".join(figures)}</div>'


def _tables(report: dict) -> str:
    cand_head, prod_head = column_heads(report)
    m, pm = report["metrics"], report["metrics"]["production"] or {}
    ca = m["candidate"]
    out = [(f"<h2>Overall</h2><table><tr><th>metric</th><th>{escape(cand_head)}</th>"
            f"<th>{escape(prod_head)}</th><th>delta</th></tr>")]
    for key in ("accuracy", "loss"):
        delta = None if not pm or ca.get(key) is None or pm.get(key) is None else ca[key] - pm[key]
        shown = _signed(delta, higher_is_better=key != "loss",
                        digits=accuracy_places(report) if key == "accuracy" else 4)
        out.append(f'<tr><td>{key}</td><td class="num">{number_text(ca.get(key))}</td>'
                   f'<td class="num">{number_text(pm.get(key))}</td>'
                   f'<td class="num">{shown}</td></tr>')
    out.append("</table>")
    if report.get("discordant"):
        out.append(f'<p id="flipped">{escape(flipped_text(report["discordant"]))}</p>')
    out.append(f"<h2>Per class (accuracy)</h2><table id=\"per-class\"><tr><th>class</th><th>n</th>"
               f"<th>{escape(cand_head)}</th><th>{escape(prod_head)}</th><th>delta</th>"
               f"<th>lost</th><th>won</th><th>allowed drop</th></tr>")
    for r in report["per_class"]:
        delta_places, allowed_places = class_drop_places(r)
        out.append(f'<tr><td>{escape(str(r["class"]))}</td><td class="num">'
                   f'{count_text(r["count"])}</td>'
                   f'<td class="num">{class_value_text(r, "candidate")}</td>'
                   f'<td class="num">{class_value_text(r, "production") if pm else number_text(None)}</td>'
                   f'<td class="num">{_signed(r["delta"], digits=delta_places)}</td>'
                   f'<td class="num">{count_text(r.get("lost"))}</td><td class="num">{count_text(r.get("won"))}</td>'
                   f'<td class="num">{number_text(r.get("allowed_drop"), allowed_places)}</td></tr>')
    out.append("</table>")
    return "".join(out)


def _rules(report: dict) -> str:
    r = report["rules"]
    rows = "".join(f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{escape(c["rule"])}</td>'
                   f'<td>{"pass" if c["passed"] else "<b>FAIL</b>"}</td><td>{escape(c["message"])}</td></tr>'
                   for c in report["checks"])
    limits = limits_text(report)
    derivation = (f"<br>Accuracy tolerance: {escape(r['max_accuracy_drop_derivation'])}."
                  if r.get("max_accuracy_drop_derivation") else "")
    if r.get("max_class_drop_derivation"):
        derivation += f"<br>Per-class tolerance: {escape(r['max_class_drop_derivation'])}."
    return (f"<h2>Rules</h2><table><tr><th>rule</th><th>result</th><th>detail</th></tr>{rows}</table>"
            f'<p class="muted">{escape(limits)}{derivation}</p>')


def html(report: dict) -> str:
    """The whole page (pure): verdict, rules, overall and per-class tables, chart, confusion matrices."""
    status = report["status"]
    title = f"Quality gate: {report['model']} v{report['version']} — {status.upper()}"
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in report["notes"])
    sig = ""
    if report["signature_differences"]:
        items = "".join(f"<li>{escape(d)}</li>" for d in report["signature_differences"])
        allowed = ("<li>allowed with --allow-signature-change (recorded)</li>"
                   if report["allow_signature_change"] else "")
        sig = f"<h2>Signature differences</h2><ul>{items}{allowed}</ul>"
    fp = str(report.get("heldout_fingerprint"))[:16]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
        f'<h1>Quality gate: {escape(report["model"])} v{report["version"]} '
        f'<span id="verdict" class="verdict {status}">{escape(status.upper())}</span></h1>'
        f'<p id="summary">{escape(report["summary"])}</p>'
        f'<p class="muted">Held-out set: {escape(str(report.get("dataset")))} (n = {report.get("heldout_size")}, '
        f"fingerprint <code>{escape(fp)}</code>), evaluated {escape(report['evaluated_at'])}.</p>"
        f"{notes}{_rules(report)}"
        f"<h2>Per-class accuracy: candidate vs production</h2>{class_chart(report)}"
        f"{_tables(report)}"
        f"<h2>Confusion matrices (held-out set; rows = true class, columns = predicted)</h2>"
        f"{_confusions(report)}{sig}</body></html>\n")
