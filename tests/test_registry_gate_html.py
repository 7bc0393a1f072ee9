"""gate/report.html: one self-contained page rendered from the report JSON (pure; no services).

The real page, logged by a real gate and opened in Chromium, is checked in tests/test_ui_browser.py.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from registry import gate_html, gate_report
from registry.gate_rules import GateRules, decide

FP = "f" * 64


def evaluation(per_class: list[float], confusion: list[list[int]] | None) -> dict:
    n = 45
    acc = sum(per_class) / len(per_class)
    doc = {"model_uri": "-", "dataset": "digits", "heldout_fingerprint": FP, "n": n * len(per_class),
           "accuracy": acc, "loss": 1 - acc, "per_class_accuracy": {str(k): a for k, a in enumerate(per_class)},
           "per_class_count": {str(k): n for k in range(len(per_class))}}
    if confusion is not None:
        doc["confusion"] = confusion
    return doc


def diagonal(per_class: list[float], n: int = 45) -> list[list[int]]:
    """A confusion matrix with ``round(a*n)`` hits per class and the misses in the next class."""
    k = len(per_class)
    cm = [[0] * k for _ in range(k)]
    for i, a in enumerate(per_class):
        hits = round(a * n)
        cm[i][i], cm[i][(i + 1) % k] = hits, n - hits
    return cm


def report_for(candidate: dict, production: dict | None) -> dict:
    rules = GateRules(min_accuracy=0.8, max_class_drop=0.10)
    verdict = decide(candidate, production, rules, baseline_version=1 if production else None,
                     signature_problems=[], allow_signature_change=False)
    return gate_report.build(model="m<&>", version=2, verdict=verdict, rules=rules, candidate=candidate,
                             production=production, signature_differences=[], allow_signature_change=False,
                             evaluated_at="2026-12-01T12:00:00+00:00")


class _Tags(HTMLParser):
    """Collects start tags and checks that every non-void element is closed in order."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input"})

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    return p


GOOD = [0.98, 0.95, 1.0, 0.93, 0.96, 0.97, 1.0, 0.98, 0.9, 0.92]
PROD = [0.96, 0.95, 0.98, 0.93, 0.96, 0.95, 1.0, 0.96, 0.88, 0.92]
BAD = [0.7, 0.5, 0.9, 0.6, 0.8, 0.7, 0.9, 0.8, 0.4, 0.6]


def test_page_is_self_contained_and_well_formed():
    page = gate_html.html(report_for(evaluation(GOOD, diagonal(GOOD)), evaluation(PROD, diagonal(PROD))))
    tags = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no scripts, no external URLs, no linked files.
    assert not re.search(r"https?://|//[a-z]|<script|<link|<img|<iframe|url\(", page, re.IGNORECASE)
    assert not any(k in ("src", "href") for _, attrs in tags.tags for k in attrs)
    # Each SVG is well-formed XML on its own (browsers are forgiving; an artifact viewer may not be).
    for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL):
        ET.fromstring(svg)
    assert "m&lt;&amp;&gt;" in page and "m<&>" not in page       # text is escaped


def test_verdict_rules_tables_chart_and_both_confusion_matrices():
    report = report_for(evaluation(GOOD, diagonal(GOOD)), evaluation(PROD, diagonal(PROD)))
    page = gate_html.html(report)
    tags = parse(page)
    assert re.search(r'<span id="verdict" class="verdict passed">PASSED</span>', page)
    assert report["summary"] and f'<p id="summary">{report["summary"]}</p>' in page
    for check in report["checks"]:
        assert f"<td>{check['rule']}</td>" in page
    assert "v2 (candidate)" in page and "v1 (production)" in page
    # The chart: one bar per class and side, each with the value the report holds.
    bars = [(a["class"].split()[1], a["data-class"], float(a["data-value"]))
            for t, a in tags.tags if t == "rect" and "bar" in a.get("class", "").split()]
    assert len(bars) == 20
    assert [(c, v) for side, c, v in bars if side == "candidate"] == [(str(k), round(a, 4)) for k, a in enumerate(GOOD)]
    expected = [(str(k), round(a, 4)) for k, a in enumerate(PROD)]
    assert [(c, v) for side, c, v in bars if side == "production"] == expected
    # Taller bar = higher accuracy (class 0: candidate 0.98 above production 0.96).
    heights = {(a["class"], a["data-class"]): float(a["height"]) for t, a in tags.tags
               if t == "rect" and "bar" in a.get("class", "").split()}
    assert heights[("bar candidate", "0")] > heights[("bar production", "0")] > 0
    # Two confusion matrices, 100 cells each, showing the counts.
    svgs = [a["data-name"] for t, a in tags.tags if t == "svg" and a.get("class") == "confusion"]
    assert svgs == ["candidate", "production"]
    cand_svg = re.search(r'<svg class="confusion" data-name="candidate".*?</svg>', page, re.DOTALL).group(0)
    assert cand_svg.count("<rect") == 100
    assert "true 8, predicted 9: 5</title>" in cand_svg and "true 8, predicted 8: 40</title>" in cand_svg


def test_failed_gate_shows_failed_rules_and_negative_deltas():
    page = gate_html.html(report_for(evaluation(BAD, diagonal(BAD)), evaluation(PROD, diagonal(PROD))))
    assert 'class="verdict failed">FAILED</span>' in page
    assert re.search(r'<tr class="fail"><td>accuracy_vs_production</td><td><b>FAIL</b></td>', page)
    assert '<span class="neg">-0.' in page
    assert '<td>loss</td><td class="num">0.3100</td><td class="num">0.0510</td>' \
        '<td class="num"><span class="neg">+0.2590</span>' in page          # a higher loss is worse


def test_first_version_and_evaluations_without_confusion_matrices():
    page = gate_html.html(report_for(evaluation(GOOD, None), None))
    tags = parse(page)
    assert "production (none)" in page and "No production version yet" in page
    assert "The evaluation carried no confusion matrices." in page
    sides = [a["class"] for t, a in tags.tags if t == "rect" and "bar" in a.get("class", "").split()]
    assert sides == ["bar candidate"] * 10
    # With only the candidate's matrix: one matrix, no empty production frame.
    page = gate_html.html(report_for(evaluation(GOOD, diagonal(GOOD)), None))
    assert page.count('<svg class="confusion"') == 1


def test_report_json_carries_the_confusion_matrices():
    cand, prod = diagonal(GOOD), diagonal(PROD)
    report = report_for(evaluation(GOOD, cand), evaluation(PROD, prod))
    assert report["confusion"] == {"candidate": cand, "production": prod}
    assert report_for(evaluation(GOOD, None), None)["confusion"] == {"candidate": None, "production": None}


def test_a_non_finite_per_class_accuracy_fails_the_gate_and_the_page_still_renders():
    """int(NaN) in the chart's axis crashed the gate before its failed metrics_valid verdict was
    written: no report, no validation_status, no ledger row. Such a class has no bar."""
    cand = evaluation(GOOD, diagonal(GOOD))
    cand["per_class_accuracy"]["0"] = float("nan")
    cand["per_class_accuracy"]["1"] = float("inf")
    report = report_for(cand, evaluation(PROD, diagonal(PROD)))
    page = gate_html.html(report)
    tags = parse(page)
    bars = [a for t, a in tags.tags if t == "rect" and "bar" in a.get("class", "").split()]
    assert len(bars) == 18 and not any(a.get("data-class") in ("0", "1") and "candidate" in a["class"] for a in bars)
    assert 'class="verdict failed">FAILED</span>' in page
