"""registry.gate.run_gate against a real MLflow server: what a verdict writes, where, and when.

The evaluation is the gate's injected dependency (the CLI passes mlproject's). Here it returns
evaluation documents with chosen numbers, so each outcome path of the registry side is
exercised on real registered versions; tests/test_registry_gate_e2e.py runs the real thing
on trained models.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlops_common.errors import ConfigError, NotFoundError
from registry import description, versions
from registry.client import tracking_client
from registry.gate import run_gate
from registry.ledger import Ledger
from tests.fixtures.registry_versions import TINY_SIGNATURE
from tests.helpers import run_mlops

FP = "f" * 64


def doc(acc: float, per_class: dict | None = None) -> dict:
    per_class = per_class or {str(k): acc for k in range(10)}
    return {"model_uri": "-", "dataset": "digits", "heldout_fingerprint": FP, "n": 450, "accuracy": acc,
            "loss": round(1 - acc, 4), "per_class_accuracy": per_class,
            "per_class_count": {k: 45 for k in per_class}}


class Evaluations:
    """An evaluate(version, dataset) with fixed results per version; records the calls."""

    def __init__(self, by_version: dict[int, dict]):
        self.by_version, self.calls = by_version, []

    def __call__(self, version: int, dataset):
        self.calls.append((version, dataset))
        return self.by_version[version]


def run_artifact(run_id: str, path: str) -> str:
    return tracking_client().download_artifacts(run_id, path, os.environ["MLOPS_HOME"])


def test_first_version_passes_on_absolute_rules_and_becomes_candidate(make_version, tmp_path):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    ev = Evaluations({v: doc(0.93)})
    out = run_gate(model, v, ev, report_dir=tmp_path / "reports")
    assert out.passed and out.production_version is None
    assert ev.calls == [(v, None)]                         # nothing else to evaluate
    info = versions.get_version(model, v)
    assert info.tags["validation_status"] == "passed" and info.aliases == ("candidate",)
    assert not any(k.startswith("validation.") for k in info.tags)     # the story is the description
    assert description.block(info.description).startswith(f"**v{v}** · \\@candidate · validation passed")
    assert "**Validation:** passed — held-out accuracy 0.9300 (gate " in info.description
    report = json.loads(open(run_artifact(info.run_id, "gate/report.json")).read())
    assert report["status"] == "passed" and report["metrics"]["production"] is None
    assert "only the absolute rules applied" in open(run_artifact(info.run_id, "gate/report.md")).read()
    assert json.loads((tmp_path / "reports" / "report.json").read_text()) == report
    assert (tmp_path / "reports" / "report.md").read_text() == out.markdown
    page = open(run_artifact(info.run_id, "gate/report.html")).read()
    assert page == (tmp_path / "reports" / "report.html").read_text() and 'class="verdict passed">PASSED' in page
    row = Ledger().entries(model)[-1]
    assert (row.action, row.to_version, row.from_version, row.outcome) == ("gate", v, None, "passed")


def test_worse_version_fails_with_reasons_and_does_not_become_candidate(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = make_version(validation_status="passed"), make_version(), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    ev = Evaluations({v1: doc(0.95), v2: doc(0.945), v3: doc(0.90, dict(doc(0.95)["per_class_accuracy"],
                                                                        **{"7": 0.70}))})
    assert run_gate(model, v2, ev).passed
    assert versions.get_version(model, v2).aliases == ("candidate",)
    out = run_gate(model, v3, ev)
    assert not out.passed
    assert ev.calls == [(v2, None), (v1, "digits"), (v3, None), (v1, "digits")]   # production re-evaluated
    assert "accuracy_vs_production" in out.summary and "class_accuracy_vs_production" in out.summary
    assert "class 7 0.700 vs 0.950 (-0.250)" in out.summary
    info = versions.get_version(model, v3)
    assert info.tags["validation_status"] == "failed"
    assert "failed rules: accuracy_vs_production, class_accuracy_vs_production" in info.description
    assert f"for production v{v1}" in info.description
    assert versions.get_version(model, v2).aliases == ("candidate",)   # candidate unchanged
    row = Ledger().entries(model)[-1]
    assert (row.action, row.from_version, row.to_version, row.outcome) == ("gate", v1, v3, "failed")
    assert row.reason == out.summary and row.details["production_accuracy"] == 0.95


def test_a_candidate_that_fails_a_later_gate_loses_the_candidate_alias(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    assert run_gate(model, v, Evaluations({v: doc(0.9)})).passed
    assert not run_gate(model, v, Evaluations({v: doc(0.5)})).passed
    assert versions.get_version(model, v).aliases == ()


def test_gating_the_production_version_says_so_and_leaves_the_candidate_alias_alone(make_version):
    """Found by a sweep (2026-12-04): gating v1 while it held production said "passed with no
    production version yet" (report, ledger, description) and moved 'candidate' off v2, which
    had passed and was waiting for its approval."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    ev = Evaluations({v1: doc(0.95), v2: doc(0.95)})
    assert run_gate(model, v2, ev).passed
    out = run_gate(model, v1, ev)
    assert out.passed and out.production_version is None
    assert out.summary.startswith(f"Version {v1} passed the quality gate as the production version itself "
                                  f"(no baseline: only the absolute rules applied)")
    assert "no production version yet" not in out.markdown.lower()
    assert "> This version holds production already" in out.markdown
    assert versions.get_version(model, v2).aliases == ("candidate",)
    assert versions.get_version(model, v1).aliases == ("production",)
    assert Ledger().entries(model)[-1].reason == out.summary
    assert Ledger().entries(model)[-1].details["gated_production"] is True
    assert "gated while it held production (no baseline" in versions.get_version(model, v1).description


def test_incompatible_signature_fails_unless_explicitly_allowed(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    versions.set_alias(model, versions.PRODUCTION, v1)
    changed = json.loads(json.dumps(TINY_SIGNATURE))
    changed["serving_default"]["inputs"]["inputs"]["shape"] = [-1, 28, 28, 1]
    v2 = make_version(signature=changed)
    ev = Evaluations({v1: doc(0.95), v2: doc(0.95)})
    out = run_gate(model, v2, ev)
    assert not out.passed and [c.rule for c in out.verdict.failed] == ["signature"]
    assert "shape [-1, 28, 28, 1] does not accept every input of shape [-1, 8, 8, 1]" in out.summary
    assert "--allow-signature-change" in out.summary
    out = run_gate(model, v2, ev, allow_signature_change=True)
    assert out.passed
    info = versions.get_version(model, v2)
    assert "serving signature change allowed" in info.description and info.aliases == ("candidate",)
    row = Ledger().entries(model)[-1]
    assert row.details["signature_change_allowed"] is True and row.details["signature_differences"]


def test_missing_signature_artifact_fails_the_gate(make_version):
    import mlflow

    from registry.register import register_version

    model = os.environ["MLOPS_MODEL_NAME"]
    with mlflow.start_run() as run:
        mlflow.log_text("x", "tfserving/saved_model.pb")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    v = register_version(model, logged.model_uri, run_id=run.info.run_id)
    out = run_gate(model, v, Evaluations({v: doc(0.95)}), allow_signature_change=True)
    assert not out.passed and "golden/signature.json is missing" in out.summary


def test_unknown_version_is_one_clear_line(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version()
    with pytest.raises(NotFoundError, match="version 5 of registered model"):
        run_gate(model, 5, Evaluations({}))


def test_an_evaluation_without_its_data_set_or_held_out_fingerprint_is_refused(make_version):
    """Production was re-evaluated with ``dataset=None`` — on its own data set — when the
    candidate's document did not name one, and a missing fingerprint counted as "the same"."""
    from mlops_common.errors import ConfigError

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    for key in ("dataset", "heldout_fingerprint"):
        partial = {k: x for k, x in doc(0.95).items() if k != key}
        ev = Evaluations({v1: doc(0.60), v2: partial})
        with pytest.raises(ConfigError, match=key):
            run_gate(model, v2, ev)
        assert ev.calls == [(v2, None)]                       # production never measured on other data
        assert versions.get_version(model, v2).aliases == ()


def test_a_production_that_cannot_be_loaded_says_to_move_production_not_to_register_again(make_version):
    """The line said "register a new version with mlops train": every new version fails the same
    way while production's logged model cannot be loaded. Nothing is recorded for the candidate."""
    from mlops_common.errors import DamagedModel

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)

    def evaluate(version, dataset):
        if version == v1:
            problem = f"version {v1} of '{model}' cannot be loaded as an MLflow TensorFlow model (gone)"
            raise DamagedModel(f"{problem}; register a new version with `mlops train`", problem=problem)
        return doc(0.95)

    with pytest.raises(DamagedModel) as e:
        run_gate(model, v2, evaluate)
    msg = e.value.message
    assert "and it holds production" in msg and "mlops registry rollback --to N" in msg, msg
    assert f"then gate v{v2} again" in msg and "register a new version" not in msg
    assert versions.get_version(model, v2).aliases == ()


def test_a_production_changed_in_the_store_says_to_restore_it_or_move_production_not_to_register_again(
        make_version):
    """Found by review (2026-12-06, fifteenth stop): production's golden/signature.json or logged
    model rewritten in the artifact store since registration refused every gate with "restore
    them or register a new version": a new version is refused the same way, since every gate
    reads production. As for a production that cannot be loaded, the line says it holds
    production and how to move it; nothing is recorded for the candidate."""
    from registry import bundle_hashes
    from registry.gate import NOTHING_GATED

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)

    def evaluate(version, dataset):       # production's logged model refused by its recorded hashes
        if version == v1:
            bundle_hashes.check_files(model, v1, {"golden/signature.json": b"{}"}, unchanged=NOTHING_GATED)
        return doc(0.95)

    with pytest.raises(ConfigError) as e:
        run_gate(model, v2, evaluate)
    msg = e.value.message
    assert f"version {v1} of '{model}' are not the ones registered" in msg and "restore them" in msg, msg
    assert "and it holds production" in msg and "mlops registry rollback --to N" in msg, msg
    assert f"then gate v{v2} again" in msg and "register a new version" not in msg, msg

    # production's signature rewritten in the store: read before any evaluation
    run_id = versions.get_version(model, v1).run_id
    tracking_client().log_dict(run_id, dict(TINY_SIGNATURE, rewritten=True), "golden/signature.json")
    ev = Evaluations({v1: doc(0.95), v2: doc(0.96)})
    with pytest.raises(ConfigError) as e:
        run_gate(model, v2, ev)
    msg = e.value.message
    assert f"version {v1} of '{model}' are not the ones registered (golden/signature.json changed)" in msg, msg
    assert "and it holds production" in msg and "register a new version" not in msg, msg
    assert ev.calls == []
    assert versions.get_version(model, v2).tags["validation_status"] == "pending"
    assert versions.get_version(model, v2).aliases == ()


def test_a_production_trained_on_another_data_set_is_one_line_saying_how_to_move_production(make_version):
    """Found by review (2026-12-05, third stop): production trained on another data set failed
    the gate with a shape error from loading it and the advice `mlops evaluate --dataset`; the way
    forward is a deliberate promotion. Nothing is recorded; production is never measured."""
    from mlops_common.errors import RefusedError

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed", tags={"dataset": "fashion_mnist"})
    v2 = make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    ev = Evaluations({v1: doc(0.95), v2: doc(0.96)})
    with pytest.raises(RefusedError) as e:
        run_gate(model, v2, ev)
    assert e.value.message == (
        f"production v{v1} of '{model}' was trained on data set 'fashion_mnist' and v{v2} on 'digits': the gate "
        f"compares versions of one data set only; to move production to 'digits', promote it deliberately: "
        f"`mlops registry promote --version {v2} --force --reason \"...\"`")
    assert ev.calls == [(v2, None)]
    assert versions.get_version(model, v2).tags["validation_status"] == "pending"      # nothing recorded


def test_a_signature_rewritten_in_the_artifact_store_since_registration_is_refused(make_version):
    """Found by review (2026-12-05, third stop): the gate compared the signature file the store
    holds now, unchecked, while a deploy checks the golden set against the hashes recorded at
    registration: a rewritten signature passed the gate and failed only on the hosts."""
    from mlops_common.errors import ConfigError

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    run_id = versions.get_version(model, v2).run_id
    sig = tracking_client().download_artifacts(run_id, "golden/signature.json", os.environ["MLOPS_HOME"])
    doc_ = json.loads(Path(sig).read_text())
    doc_["rewritten"] = True
    tracking_client().log_dict(run_id, doc_, "golden/signature.json")
    ev = Evaluations({v1: doc(0.95), v2: doc(0.96)})
    with pytest.raises(ConfigError) as e:
        run_gate(model, v2, ev)
    assert f"the artifacts of version {v2} of '{model}' are not the ones registered (golden/signature.json " \
           f"changed)" in e.value.message and e.value.message.endswith("Nothing was gated or recorded"), e.value.message
    assert ev.calls == []
    assert versions.get_version(model, v2).tags["validation_status"] == "pending"


def test_the_gate_compares_accuracy_on_the_examples_that_flipped(make_version, tmp_path):
    """Both versions answer the same frozen held-out examples, yet the accuracy rule used
    production's standard error alone: a candidate that got 7 examples wrong that production got
    right, and none the other way (0.9356 vs 0.9511, -0.0156), passed within 0.0203. Paired on the
    examples that flipped (b = 7, c = 0) the allowed drop is 0.0117: it fails, and the report
    says how many examples flipped each way."""
    import base64

    import numpy as np

    def encode_correct(right):      # the documented format: numpy.packbits in base64
        return base64.b64encode(np.packbits(np.array(right, bool)).tobytes()).decode("ascii")

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    prod_right = [i < 428 for i in range(450)]
    cand_right = [7 <= i < 428 for i in range(450)]
    prod, cand = doc(428 / 450), doc(421 / 450)
    prod["correct_bits"], cand["correct_bits"] = encode_correct(prod_right), encode_correct(cand_right)
    out = run_gate(model, v2, Evaluations({v1: prod, v2: cand}), report_dir=tmp_path / "reports")
    assert not out.passed and [c.rule for c in out.verdict.failed] == ["accuracy_vs_production"], out.summary
    assert "allowed drop 0.0117" in out.summary
    info = versions.get_version(model, v2)
    assert info.tags["validation_status"] == "failed" and info.aliases == ()
    report = json.loads(open(run_artifact(info.run_id, "gate/report.json")).read())
    assert report["discordant"] == {"production_right_candidate_wrong": 7,
                                    "candidate_right_production_wrong": 0, "n": 450}
    derivation = report["rules"]["max_accuracy_drop_derivation"]
    assert derivation.startswith("paired") and "b = 7" in derivation and "c = 0" in derivation
    flipped = "7 production got right and the candidate wrong (b), 0 the candidate got right and production wrong (c)"
    assert flipped in open(run_artifact(info.run_id, "gate/report.md")).read()
    assert flipped in (tmp_path / "reports" / "report.html").read_text()
    assert "correct_bits" not in json.dumps(report)
    assert not any("correct" in k for k in info.tags)
    row = Ledger().entries(model)[-1]
    assert row.details["tolerance"] == pytest.approx(0.011667, abs=1e-6)
    assert row.details["discordant"] == report["discordant"]      # the ledger keeps b and c too
    # the same accuracies from evaluations of an older version (no per-example results): the
    # unpaired rule, as before, and the report says so
    for d in (prod, cand):
        d.pop("correct_bits")
    out = run_gate(model, v2, Evaluations({v1: prod, v2: cand}))
    assert out.passed, out.summary
    assert out.report["discordant"] is None
    assert out.report["rules"]["max_accuracy_drop_derivation"].startswith(
        "unpaired (fallback: neither evaluation carries per-example results")


def test_the_gate_ledger_row_says_which_classes_breached_and_by_how_much(make_version):
    """Review of 2026-12-05 (eighth stop): the gate's ledger row held the overall figures only; the
    per-class rule's (each class's accuracies, its allowed drop, which breached) were in the
    report alone, so a promotion audited from the ledger could not say why a per-class verdict was
    what it was (`registry history` cut the reason at 60 characters, before the classes). Here the
    candidate loses 12 of class 7's 45 examples that production got right (1.000 -> 0.733, allowed
    0.187 paired) and wins 10 elsewhere: overall inside the accuracy rule, class 7 breached."""
    from tests.test_registry_gate_rules import by_class

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version()
    versions.set_alias(model, versions.PRODUCTION, v1)
    cand, prod = by_class([45] * 10, [43] * 5 + [45] * 5, lost={7: 12}, won={k: 2 for k in range(5)})
    out = run_gate(model, v2, Evaluations({v1: prod, v2: cand}))
    assert [c.rule for c in out.verdict.failed] == ["class_accuracy_vs_production"], out.summary
    row = Ledger().entries(model, actions=("gate",))[-1]
    figures = row.details["per_class"]
    assert (figures["compared"], figures["breached"]) == (10, 1)
    assert figures["listed"] == "all 1 breached; then the 3 others nearest their allowed drop; of 10 classes compared"
    assert figures["classes"][0] == {"class": "7", "candidate": 0.7333, "production": 1.0,
                                     "allowed_drop": pytest.approx(0.1870, abs=5e-4), "breached": True}
    assert [(c["class"], c["breached"]) for c in figures["classes"][1:]] == [("5", False), ("6", False), ("8", False)]
    assert figures["classes"][0]["allowed_drop"] == round(out.verdict.class_allowed["7"], 4)
    r = run_mlops("registry", "history", "--model", model)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith(f"#{row.id} gate"))
    assert line == (f"#{row.id} gate v{v2} vs production v{v1}: 1 of 10 classes over their allowed drop: "
                    f"class 7 0.733 vs 1.000 (-0.267; allowed {out.verdict.class_allowed['7']:.3f})")
    # a gate that passes keeps the nearest classes (no line under the history table)
    assert run_gate(model, v2, Evaluations({v1: prod, v2: prod})).passed
    passed = Ledger().entries(model, actions=("gate",))[-1]
    assert passed.details["per_class"]["breached"] == 0 and len(passed.details["per_class"]["classes"]) == 3
    assert f"#{passed.id} gate" not in run_mlops("registry", "history", "--model", model).stdout


def test_the_ledgers_per_class_figures_stay_bounded_for_many_classes():
    """1,000 classes, 57 breached: the row lists 20 of them (largest excess first) and the 3
    others nearest their allowed drop, and says so."""
    from registry.gate_report import ledger_classes
    from registry.history import class_breach_lines
    from registry.ledger import Entry

    per_class = [{"class": str(k), "candidate": 0.9 - (0.2 + k / 10000 if k < 57 else 0.0), "production": 0.9}
                 for k in range(1000)]
    allowed = {str(k): 0.1 for k in range(1000)}
    figures = ledger_classes({"per_class": per_class}, allowed)
    assert (figures["compared"], figures["breached"], len(figures["classes"])) == (1000, 57, 23)
    assert [c["class"] for c in figures["classes"][:3]] == ["56", "55", "54"]
    assert [c["breached"] for c in figures["classes"]] == [True] * 20 + [False] * 3
    assert figures["listed"] == ("20 of the 57 breached (largest excess over the allowed drop first); then the 3 "
                                 "others nearest their allowed drop; of 1000 classes compared")
    assert len(json.dumps(figures)) < 3000
    [line] = class_breach_lines([Entry("gate", "m", "failed", 1, 2, id=9, details={"per_class": figures})])
    assert line.startswith("#9 gate v2 vs production v1: 57 of 1000 classes over their allowed drop: class 56 ")
    assert line.endswith("; and 37 more")
    assert ledger_classes({"per_class": per_class}, None) is None           # no production: nothing compared


def test_a_report_dir_filling_up_keeps_the_earlier_report_whole(tmpfs):
    """--report-dir on a disk that fills while the three files are written: each was replaced as
    soon as written, so this run's report.md and report.json sat beside an earlier run's
    report.html, with a cut-off .report.html.tmp. Now none is replaced unless all three were
    written, no temporary file stays, and the line says the disk is full."""
    from registry import gate

    out = tmpfs("40k")
    gate.write_report_files(out, "# earlier", {"verdict": "earlier"}, "<p>earlier</p>")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError) as e:
        gate.write_report_files(out, "# now", {"verdict": "now"}, "<p>" + "x" * 100_000 + "</p>")
    assert "No space left on device" in str(e.value), e.value
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_tags_the_gate_module_says_it_writes_are_the_ones_a_gate_writes(make_version):
    """Found by review (2026-12-06, fifteenth stop): gate.py's docstring said a gate tags
    ``validation_status`` (+ ``validation.*``), tags no gate has written since the ledger row and
    the description hold those figures. Every ``validation...`` tag its docstring names is written."""
    import re

    from registry import gate

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    before = set(versions.get_version(model, v).tags)
    assert run_gate(model, v, Evaluations({v: doc(0.93)})).passed
    written = set(versions.get_version(model, v).tags) - before | {"validation_status"}
    named = set(re.findall(r"``(validation[^`]*)``", gate.__doc__))
    assert named and named <= written, (named, written)


def test_two_gates_writing_one_report_dir_at_once_leave_one_runs_three_files(tmp_path, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): two gates writing the same --report-dir at
    once shared the temporary names ``.report.*.tmp``: one renamed the other's files (or found its
    own gone: "cannot write the gate report"), and the three files could come from different runs.
    Each run now writes its own temporary files and renames the three under a lock on the folder."""
    import threading
    from pathlib import Path

    from registry import gate

    out = tmp_path / "reports"
    steps = {k: threading.Event() for k in ("a_written", "b_written", "b_done", "a_renaming", "go_on")}
    write_text, replace = Path.write_text, Path.replace

    def hooked_write(self, content, *args, **kwargs):
        n = write_text(self, content, *args, **kwargs)
        if self.name.startswith(".report.html.") and threading.current_thread().name in ("A", "B"):
            me = threading.current_thread().name
            steps[f"{me.lower()}_written"].set()
            if me == "A" and phase == 1:     # A's three files written, not renamed: B runs whole
                steps["b_done"].wait(10)
        return n

    def hooked_replace(self, target):
        moved = replace(self, target)
        if threading.current_thread().name == "A" and phase == 2 and Path(target).name == "report.md":
            steps["a_renaming"].set()       # A has renamed one of three: B comes now
            steps["go_on"].wait(10)
        return moved

    monkeypatch.setattr(Path, "write_text", hooked_write)
    monkeypatch.setattr(Path, "replace", hooked_replace)
    failures = []

    def writer(run: str):
        try:
            gate.write_report_files(out, f"# {run}", {"run": run}, f"<p>{run}</p>")
        except Exception as exc:  # noqa: BLE001 - the test reports it
            failures.append((run, exc))

    def files() -> tuple[str, str, str]:
        return ((out / "report.md").read_text()[2:], json.loads((out / "report.json").read_text())["run"],
                (out / "report.html").read_text()[3:-4])

    # 1: B writes and renames while A has written its files but not renamed them
    phase = 1
    a = threading.Thread(target=writer, args=("a1",), name="A")
    a.start()
    assert steps["a_written"].wait(10)
    b = threading.Thread(target=writer, args=("b1",), name="B")
    b.start()
    b.join(10)
    steps["b_done"].set()
    a.join(10)
    assert not a.is_alive() and not b.is_alive()
    assert failures == [] and files() == ("a1", "a1", "a1")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]

    # 2: B writes while A is halfway through renaming: B renames its three after A's three
    phase = 2
    for e in steps.values():
        e.clear()
    a = threading.Thread(target=writer, args=("a2",), name="A")
    a.start()
    assert steps["a_renaming"].wait(10)
    b = threading.Thread(target=writer, args=("b2",), name="B")
    b.start()
    assert steps["b_written"].wait(10)
    steps["go_on"].set()
    a.join(10)
    b.join(10)
    assert not a.is_alive() and not b.is_alive()
    assert failures == [] and files() == ("b2", "b2", "b2")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]


def test_a_pass_under_rules_set_away_from_the_defaults_is_marked_in_the_description(make_version, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): a pass allowed by --allow-signature-change is
    marked on the version's page, but a pass under a lowered --min-accuracy, a set
    --max-accuracy-drop or MLOPS_GATE_* variables read as one under the defaults. The gate row
    records the rules set away from the defaults and the Validation line names them."""
    from registry.gate_rules import GateRules

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = make_version(), make_version(), make_version()
    assert run_gate(model, v1, Evaluations({v1: doc(0.60)}), rules=GateRules(min_accuracy=0.5)).passed
    info = versions.get_version(model, v1)
    assert "; gate rules set away from the defaults: min_accuracy 0.5 (default 0.8) (gate " in info.description
    assert Ledger().entries(model)[-1].details["rules_changed"] == {"min_accuracy": 0.5}
    versions.set_alias(model, versions.PRODUCTION, v1)
    monkeypatch.setenv("MLOPS_GATE_MAX_ACCURACY_DROP", "0.3")       # read by the gate's own GateRules.from_env()
    monkeypatch.setenv("MLOPS_GATE_MIN_ACCURACY", "0.5")
    assert run_gate(model, v2, Evaluations({v1: doc(0.80), v2: doc(0.75)})).passed
    assert ("; gate rules set away from the defaults: max_accuracy_drop 0.3 (default derived), min_accuracy 0.5 "
            "(default 0.8) (gate ") in versions.get_version(model, v2).description
    monkeypatch.delenv("MLOPS_GATE_MAX_ACCURACY_DROP")
    monkeypatch.delenv("MLOPS_GATE_MIN_ACCURACY")
    assert run_gate(model, v3, Evaluations({v1: doc(0.80), v3: doc(0.81)})).passed
    assert "set away from the defaults" not in versions.get_version(model, v3).description
    assert Ledger().entries(model)[-1].details["rules_changed"] == {}
