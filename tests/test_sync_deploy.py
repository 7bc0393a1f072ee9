"""`mlops sync deploy` against real services: the MLflow server, the ledger, the local
TF-Serving-compatible server reading the host base, real tiny SavedModels with distinct outputs.

Every step is checked through TF Serving's REST API: which version answers the unversioned
route, the `stable` label and each version route.
"""
from __future__ import annotations

import pytest

from serving_sync import models_config as mc


def config_state(env, host):
    return mc.state_of(mc.parse(env.config_text(host)), env.model)


def test_first_deploy_upgrade_noop_and_rollback_to_the_warm_previous_version(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1, v2 = env.register("a"), env.register("b")

    # first deploy: nothing served before
    env.promote(v1)
    r = env.deploy()
    assert r.status == "deployed", r.message
    env.serves(host, v1)
    st = config_state(env, host)
    assert st.versions == (v1,) and st.labels == {"stable": v1} and st.validate is None
    assert env.tags(v1)["deploy_status"] == "deployed"

    # upgrade: v2 validated beside v1, then switched; v1 stays loaded for an instant rollback
    env.promote(v2)
    traffic = env.traffic(host)
    r = env.deploy()
    traffic.stop()
    assert r.status == "deployed", r.message
    env.serves(host, v2)
    assert env.which(host, version=v1) == v1            # the previous version is warm
    st = config_state(env, host)
    assert st.versions == (v1, v2) and st.labels == {"stable": v2} and st.validate is None
    assert traffic.failures == [] and traffic.count > 10
    kinds = [s["kind"] for s in r.hosts[0].steps]
    assert kinds == ["publish", "load_validation", "wait_validation", "smoke_validation", "drop_validation",
                     "load_main",
                     "wait_main", "switch", "verify"]
    # stable traffic never reached v2 before the switch; unversioned only after it was validated
    assert set(traffic.answers["stable"]) <= {v1, v2} and set(traffic.answers["unversioned"]) <= {v1, v2}

    # the same deploy again changes nothing
    before = (host.base / "models.config").stat().st_mtime_ns
    rows = len(env.ledger())
    r = env.deploy()
    assert r.status == "up_to_date" and "up to date" in r.message
    assert (host.base / "models.config").stat().st_mtime_ns == before
    assert len(env.ledger()) == rows
    assert not (host.base / ".serving_sync" / "lock").exists()

    # rollback to the warm v1: one config write, v2 unloaded (it is newer), v1 answers everywhere
    env.promote(v1)
    r = env.deploy()
    assert r.status == "deployed", r.message
    assert [s["kind"] for s in r.hosts[0].steps] == ["switch", "verify"]
    env.serves(host, v1)
    assert env.states(host)[v2] == "END"
    assert any("not kept warm because it is newer" in n for n in r.hosts[0].notes)
    deploys = [e for e in env.ledger(("deploy",)) if e.outcome == "ok"]
    assert [(e.from_version, e.to_version, e.host) for e in deploys] == [
        (None, v1, host.name), (v1, v2, host.name), (v2, v1, host.name)]


@pytest.mark.slow
def test_real_trained_digits_models_deploy_and_upgrade(deploy_env, pretrained_digits):
    """The Keras-exported SavedModel of a real training run: its signature as TF Serving shows it
    matches golden/signature.json, and its served outputs match the recorded golden outputs."""
    import requests

    from registry import versions
    from serving_sync.golden import fetch_golden
    from serving_sync.smoke import compare_outputs

    env = deploy_env
    host = env.add_host("file")
    prod = pretrained_digits.register("production", model_name=env.model)
    good = pretrained_digits.register("good", model_name=env.model, retrained_from=str(prod))
    for v in (prod, good):
        versions.set_tags(env.model, v, {"validation_status": "passed"})
    for v in (prod, good):
        env.promote(v)
        r = env.deploy()
        assert r.status == "deployed", r.message
        golden = fetch_golden(env.model, v)
        for route in ("", "/labels/stable", f"/versions/{v}"):
            served = requests.post(f"{host.rest_url}/v1/models/{env.model}{route}:predict", json=golden.request,
                                   timeout=30).json()
            assert compare_outputs(golden.response, served, 1e-4)[0] == [], route
    assert env.states(host) == {prod: "AVAILABLE", good: "AVAILABLE"}
    assert env.label(host) == good
