"""A fleet deploy's failure paths when fewer hosts run at once than there are hosts (``--parallel``
smaller than the fleet or than a wave), against real services (MLflow server, ledger, local
TF-Serving-compatible servers behind ``file://`` targets).

Once one host failed a phase, the deploy is going to put every host back: a host whose turn had not
come yet is not started. Before, the queued hosts went on with the phase — in PREPARE, every other
host still uploaded and smoke-tested a version already known to fail; in a SWITCH wave, hosts still
switched to it and served it until the put-back.

Fleets of 3 hosts; every wait is bounded.
"""
from __future__ import annotations

import shutil

import pytest

from mlops_common.errors import DeployFailed
from serving_sync import host_run
from serving_sync.plan import StepKind
from tests.lab.deploy_env import deploy_opts, v1_then_promote_v2


def test_a_prepare_failure_starts_no_host_still_waiting_for_its_turn(deploy_env):
    env = deploy_env
    hosts = env.add_hosts(3, "file")
    v1, v2 = v1_then_promote_v2(env)
    junk = hosts[0].base / env.model / str(v2)      # a damaged leftover: host 0's publish refuses it
    junk.mkdir(parents=True)
    (junk / "saved_model.pb").write_bytes(b"not a SavedModel")
    before = [env.config_text(h) for h in hosts]
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=0, parallel=1))
    assert f"failed on host {hosts[0].name} at step 'publish'" in str(failed.value)
    by = {o.host: o for o in failed.value.result.hosts}
    for h in hosts[1:]:                 # their turn never came: nothing uploaded, loaded or recorded
        assert by[h.name].status == "unchanged" and by[h.name].steps == [], by[h.name]
        assert not (h.base / env.model / str(v2)).exists()
    assert [env.config_text(h) for h in hosts] == before
    assert not [e for e in env.ledger(actions=("smoke_test",)) if e.to_version == v2]
    for h in hosts:
        env.serves(h, v1)


def test_a_switch_failure_switches_no_host_of_the_wave_still_waiting_for_its_turn(deploy_env, monkeypatch):
    env = deploy_env
    hosts = env.add_hosts(3, "file")
    v1, v2 = v1_then_promote_v2(env)
    load_main = host_run._RUNNERS[StepKind.LOAD_MAIN]
    started = []

    def files_gone_on_host_0(run, step):        # host 0's main-entry load fails: its v2 files are gone
        started.append(run.host.name)
        if run.host.name == hosts[0].name:
            shutil.rmtree(hosts[0].base / env.model / str(v2))
        load_main(run, step)

    monkeypatch.setitem(host_run._RUNNERS, StepKind.LOAD_MAIN, files_gone_on_host_0)
    with pytest.raises(DeployFailed) as failed:
        env.deploy(opts=deploy_opts(canary=0, parallel=1, timeout=8.0))     # one wave of 3, one host at a time
    assert f"failed on host {hosts[0].name}" in str(failed.value)
    assert started == [hosts[0].name]          # the other two never began to switch to v2
    by = {o.host: o for o in failed.value.result.hosts}
    assert all(by[h.name].status == "restored" for h in hosts)    # prepared, then put back
    assert env.production() == v1 and env.tags(v2)["deploy_status"] == "failed"
    for h in hosts:
        env.serves(h, v1)
