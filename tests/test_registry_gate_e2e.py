"""`mlops registry gate` end to end on trained TensorFlow models (mlproject's training).

Uses the session's pretrained digits runs (production, retrain on a good batch, retrain on
the tutorial's bad batch) registered into the test's model, and the real CLI, which
re-evaluates candidate and production with mlproject on the frozen held-out set.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from registry import versions
from registry.client import tracking_client
from registry.ledger import Ledger
from tests.helpers import run_mlops

pytestmark = pytest.mark.slow


def error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[-1]


def test_first_version_good_retrain_and_bad_batch(mlops_env, pretrained_digits, tmp_path):
    model = os.environ["MLOPS_MODEL_NAME"]

    # 1. the first version: no production yet, only the absolute rule applies
    v1 = pretrained_digits.register("production")
    r = run_mlops("registry", "gate", "--version", str(v1))
    assert r.returncode == 0, r.stderr
    assert "No production version yet: only the absolute rules applied." in r.stdout
    assert versions.get_version(model, v1).aliases == ("candidate",)
    assert run_mlops("registry", "promote", "--version", str(v1), "--actor", "alice").returncode == 0

    # 2. a retrain on a good batch passes against production, re-evaluated now
    v2 = pretrained_digits.register("good", retrained_from=str(v1))
    junit = tmp_path / "junit" / "gate.xml"
    r = run_mlops("registry", "gate", "--version", str(v2), "--json", "--report-dir", str(tmp_path / "rep"),
                  "--junit", str(junit))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "passed" and report["production_version"] == v1
    prod_acc = pretrained_digits.summary["production"]["metrics"]["heldout_accuracy"]
    assert report["metrics"]["production"]["accuracy"] == pytest.approx(prod_acc, abs=1e-6)
    assert report["heldout_size"] == 450 and len(report["per_class"]) == 10
    assert all(row["production"] is not None for row in report["per_class"])
    assert json.loads((tmp_path / "rep" / "report.json").read_text()) == report
    cases = ET.parse(junit).getroot()
    assert cases.get("failures") == "0" and int(cases.get("tests")) == len(report["checks"])
    info = versions.get_version(model, v2)
    assert info.tags["validation_status"] == "passed" and "candidate" in info.aliases
    arts = {f.path for f in tracking_client().list_artifacts(info.run_id, "gate")}
    assert arts == {"gate/report.md", "gate/report.json", "gate/report.html"}
    # The evaluation carries both confusion matrices (mlproject -> CLI -> registry) into the page.
    cms = report["confusion"]
    assert [sum(map(sum, cms[side])) for side in ("candidate", "production")] == [450, 450]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert 'class="verdict passed">PASSED' in page and page.count('<svg class="confusion"') == 2

    # 3. a retrain on the tutorial's bad batch fails: exit 4, one paragraph saying why
    v3 = pretrained_digits.register("bad", retrained_from=str(v1))
    r = run_mlops("registry", "gate", "--version", str(v3))
    assert r.returncode == 4, r.stderr
    line = error_line(r)
    assert line.startswith(f"error: Version {v3} failed the quality gate against production v{v1}:")
    assert "accuracy_vs_production" in line and "short by" in line
    assert "**FAILED**" in r.stdout                      # the report is printed too
    info = versions.get_version(model, v3)
    assert info.tags["validation_status"] == "failed" and "candidate" not in info.aliases
    assert versions.get_version(model, v2).aliases == ("candidate",)
    gates = [(e.to_version, e.outcome) for e in Ledger().entries(model) if e.action == "gate"]
    assert gates == [(v1, "passed"), (v2, "passed"), (v3, "failed")]
    # and it cannot be promoted
    r = run_mlops("registry", "promote", "--version", str(v3))
    assert r.returncode == 2 and "validation_status=failed" in error_line(r)


def _register_with_signature(model: str, pretrained, kind: str, signature: dict) -> int:
    """The same trained model as ``kind``, registered from a run whose golden/signature.json differs."""
    import mlflow

    result = pretrained._results[kind]
    client = tracking_client()
    with mlflow.start_run(run_name="signature-variant") as run:
        mlflow.log_dict(signature, "golden/signature.json")
    model_id = result.model_uri.split("/")[-1]
    mv = client.create_model_version(model, result.model_uri, run_id=run.info.run_id, model_id=model_id,
                                     tags={"dataset": "digits", "validation_status": "pending"})
    return int(mv.version)


def test_signature_incompatible_version_is_refused_unless_allowed(mlops_env, pretrained_digits):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = pretrained_digits.register("production")
    versions.set_tags(model, v1, {"validation_status": "passed"})
    versions.set_alias(model, versions.PRODUCTION, v1)
    sig = versions.run_artifact_json(versions.get_version(model, v1).run_id, "golden/signature.json")
    changed = json.loads(json.dumps(sig))
    (name, spec), = changed["serving_default"]["inputs"].items()
    changed["serving_default"]["inputs"] = {f"{name}_v2": spec}     # renamed input: clients break
    v2 = _register_with_signature(model, pretrained_digits, "good", changed)

    r = run_mlops("registry", "gate", "--version", str(v2))
    assert r.returncode == 4
    line = error_line(r)
    assert f"input '{name}' was removed" in line and "--allow-signature-change" in line
    assert versions.get_version(model, v2).tags["validation_status"] == "failed"

    r = run_mlops("registry", "gate", "--version", str(v2), "--allow-signature-change", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["allow_signature_change"] is True
    info = versions.get_version(model, v2)
    assert "serving signature change allowed" in info.description and "candidate" in info.aliases
    row = Ledger().entries(model)[-1]
    assert row.details["signature_change_allowed"] is True


def test_gate_help_and_bad_input(mlops_env):
    r = run_mlops("registry", "gate", "--help")
    assert r.returncode == 0
    for word in ("--allow-signature-change", "--report-dir", "--junit", "sqrt(p(1-p)/n)", "code 4",
                 "sqrt(((b+c)/n - d^2)/n)", "b and c the examples that flipped each way",
                 "MLOPS_GATE_MIN_ACCURACY"):
        assert word in " ".join(r.stdout.split()), word
    r = run_mlops("registry", "gate", "--version", "3")
    assert r.returncode == 2 and "does not exist" in error_line(r)
    r = run_mlops("registry", "gate", "--version", "1", "--min-accuracy", "1.5")
    assert r.returncode == 2 and "not between 0 and 1" in r.stderr
