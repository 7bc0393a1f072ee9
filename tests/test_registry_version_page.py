"""What a person sees on a version's page: a few short tags in one list, and a Markdown
description that tells the story (verdict, approver, production history, deploy per host,
links), rebuilt from the ledger at each gate, promotion, deploy and rollback. Read back over a
real MLflow server; ``render`` is also checked on plain data.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from registry import deploys, description, promotion, tags, versions
from registry.gate import run_gate
from registry.ledger import Entry
from registry.provenance import Provenance
from registry.rest import rest
from tests.test_registry_gate import Evaluations, doc

# what the versions list may show; lineage (git_commit, ci.*) comes from mlops_common.lineage
SHOWN = {tags.VALIDATION_STATUS, tags.DEPLOY_STATUS, tags.APPROVED_BY, tags.DATASET, tags.GIT_COMMIT,
         tags.PIPELINE_ID, tags.DATASET_FINGERPRINT, tags.RETRAINED_FROM, tags.DEPLOY_REASON,
         tags.DEPLOY_CANARY, tags.INFRA_VALIDATION, tags.REGISTER_CALL}


def page(model: str, v: int) -> versions.VersionInfo:
    return versions.get_version(model, v)


def test_version_page_after_gate_promote_deploy_and_rollback(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    ev = Evaluations({v1: doc(0.93), v2: doc(0.95)})
    run_gate(model, v1, ev)
    p = page(model, v1)
    assert description.block(p.description).startswith(
        f"**v{v1}** · \\@candidate · validation passed · deploy not deployed")
    assert "**Approved by:** nobody yet (never promoted)" in p.description
    assert "**Links:** [run](http" in p.description and "/artifacts/gate/report.html)" in p.description

    promotion.promote(model, v1, actor="alice", reason="first release")
    run_gate(model, v2, ev)
    promotion.promote(model, v2, provenance=Provenance.from_environment("bob", approved_by="carol-approver"))
    led = deploys.DeployLedger(model)
    for host in ("web-1", "web-2"):
        led("deploy", "ok", host=host, from_version=v1, to_version=v2)
    deploys.tag(model, v2, deploys.DEPLOYED)
    p = page(model, v2)
    assert p.tags[tags.APPROVED_BY] == "carol-approver" and p.tags[tags.DEPLOY_STATUS] == "deployed"
    assert description.block(p.description).startswith(
        f"**v{v2}** · \\@production · validation passed · deploy deployed")
    assert f"**Approved by:** carol-approver (promote v{v1} → v{v2} by bob" in p.description
    assert f"**Validation:** passed — held-out accuracy 0.9500 vs 0.9300 for production v{v1}" in p.description
    assert "**Deploy status:** deployed — web-1 ok, web-2 ok" in p.description
    assert "**Data set:** digits" in p.description

    promotion.rollback(model, actor="dave", reason="latency")
    deploys.tag(model, v2, deploys.ROLLED_BACK, "rolled back by dave")
    old, new = page(model, v1), page(model, v2)
    assert description.block(old.description).startswith(f"**v{v1}** · \\@production")
    assert f"| rollback | v{v2} → v{v1} | dave | latency |" in old.description
    assert f"| promote | none → v{v1} | alice | first release |" in old.description
    assert "deploy rolled_back" in description.block(new.description).splitlines()[0]
    assert "reason: rolled back by dave" in new.description
    # the list shows a few short tags, all in the known set; no value is cut in a narrow column
    for info in (old, new):
        assert set(info.tags) <= SHOWN, info.tags
        assert all("." not in k for k in info.tags), info.tags       # one naming style
        for key in (tags.VALIDATION_STATUS, tags.DEPLOY_STATUS, tags.APPROVED_BY, tags.DATASET):
            assert len(info.tags.get(key, "")) <= 24, (key, info.tags.get(key))
    # the registered model has its description
    registered = rest().get("registered-models/get", {"name": model}, what="test")["registered_model"]
    assert description.block(registered["description"]) == description.MODEL_DESCRIPTION + "\n"
    assert "Input contract" in registered["description"] and "ledger" in registered["description"]


def test_render_on_plain_data():
    at = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
    rows = [Entry("gate", "m", "failed", from_version=1, to_version=2, id=5, at=at,
                  details={"accuracy": 0.81, "production_accuracy": 0.9, "failed_rules": ["accuracy_vs_production"]}),
            Entry("deploy", "m", "failed", to_version=2, host="web-1", id=6, at=at, reason="smoke | failed")]
    text = description.render(version=2, tags={"validation_status": "failed", "deploy_status": "failed",
                                                          "deploy_reason": "smoke failed"},
                              aliases=(), entries=rows)
    lines = text.splitlines()
    assert lines[0] == "**v2** · no alias · validation failed · deploy failed"
    assert "**Validation:** failed — held-out accuracy 0.8100 vs 0.9000 for production v1; failed rules: " \
           "accuracy_vs_production (gate 2026-12-01 15:00 UTC, ledger #5)" in lines
    assert "**Deploy status:** failed — web-1 failed; reason: smoke failed" in lines
    assert "never held production" in lines
    assert "| #6 | 2026-12-01 15:00 | web-1 | deploy | failed | smoke \\| failed |" in lines
    assert "**Links:** none" in lines


def test_a_deploy_status_write_removes_the_deploy_tags_under_their_older_names(make_version):
    """A version registered before the tags took one style carries ``deploy.reason`` and
    ``deploy.canary``. A later deploy-status write put ``deploy_reason`` / ``deploy_canary``
    beside them and left the old ones: the versions list then showed the old failure's reason and
    canary verdict next to ``deploy_status=deployed``, ``deploy_reason=none``."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    versions.set_tags(model, v, {"deploy.reason": "web-1: smoke: golden outputs differ", "deploy.canary": "breached"})
    deploys.tag(model, v, deploys.DEPLOYED)
    info = page(model, v)
    assert "deploy.reason" not in info.tags and "deploy.canary" not in info.tags, info.tags
    assert info.tags[tags.DEPLOY_REASON] == "none" and info.tags[tags.DEPLOY_CANARY] == "none"
    assert "golden outputs differ" not in info.description
    deploys.tag(model, v, deploys.ROLLED_BACK, "latency")      # nothing left to remove: no error
    assert page(model, v).tags[tags.DEPLOY_REASON] == "latency"
