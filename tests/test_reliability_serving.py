"""Faults on the serving host itself: TF Serving restarted or gone mid-deploy, a full disk, a
corrupt SavedModel. Each runs the real ``mlops sync deploy`` against a real local
TF-Serving-compatible server, with a traffic loop, and then runs it again.

These hosts run their own server started like production (``serving_host/install_server.sh``
and ``mlops up``: ``--allow_version_labels_for_unavailable_models``, so a restarted server
accepts the ``stable`` label of its models.config while the versions load again;
``--max_num_load_retries=0``), reading a base the test controls (a small tmpfs for the
full-disk cases). The deploy is held at a phase by the test hook ``mlops_common.faultpoint``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.fixtures.faults import final_error_line, incoming, numeric, tree_bytes
from tests.lab.hosts import ServingHost

PRODUCTION_SERVER_ARGS = ("--max_num_load_retries=0", "--allow_version_labels_for_unavailable_models=true")


def own_host(env, base, name: str = "own") -> ServingHost:
    """A file host whose TF server this test owns (it may stop and start it)."""
    server = env.factory(base, grpc=True, extra_args=PRODUCTION_SERVER_ARGS)
    entry = {"name": name, "target": f"file://{base}", "rest_url": server.rest_url, "grpc": server.grpc_address}
    host = ServingHost(name, "file", base, server, entry)
    env.hosts.append(host)
    env.write_hosts_file()
    return host


def serving_v1(env, host) -> int:
    v1 = env.release("a")
    env.serves(host, v1)
    return v1


# --- TF Serving restarted / gone ---------------------------------------------------------------
@pytest.mark.slow
def test_tf_serving_restarted_mid_deploy_the_deploy_rides_it_out(deploy_env, paused_deploy, tmp_path):
    env = deploy_env
    host = own_host(env, tmp_path / "serving")
    v1 = serving_v1(env, host)
    v2 = env.register("b")
    env.promote(v2)
    before = env.traffic(host)
    deploy = paused_deploy(env.env, "after:load_validation").wait_paused()
    before.stop()
    host.server.stop()                      # restarted by its supervisor while the deploy waits for v2
    deploy.resume()
    time.sleep(2.0)                         # the deploy polls a server that is not there
    host.server.start()
    host.server.wait_for_state(env.model, v1, "AVAILABLE")
    after = env.traffic(host)
    r = deploy.finish()
    after.stop()
    assert r.returncode == 0, r.stderr
    # every request before the restart and after the server came back answered (v1 or v2)
    assert before.failures == [] and after.failures == [], (before.failures[:3], after.failures[:3])
    assert set(after.answers["unversioned"]) | set(after.answers["stable"]) <= {v1, v2}
    env.serves(host, v2)
    assert env.which(host, version=v1) == v1 and "__validate" not in env.config_text(host)
    assert env.production() == v2 and env.tags(v2)["deploy_status"] == "deployed"
    assert env.deploy().status == "up_to_date"


@pytest.mark.slow
def test_tf_serving_gone_for_the_rest_of_the_deploy_gets_its_file_back(deploy_env, paused_deploy, tmp_path):
    env = deploy_env
    host = own_host(env, tmp_path / "serving")
    v1 = serving_v1(env, host)
    config_v1 = env.config_text(host)
    v2 = env.register("b")
    env.promote(v2)
    deploy = paused_deploy(env.env, "after:load_validation", "--timeout", "4").wait_paused()
    host.server.stop()
    r = deploy.finish()
    line = final_error_line(r.stderr)
    assert r.returncode == 3 and "not reachable" in line and "load" in line, line
    # the host's models.config is v1's again, byte for byte: what TF Serving reads when it is back
    assert env.config_text(host) == config_v1
    assert env.production() == v1 and env.tags(v2)["deploy_status"] == "failed"
    host.server.start()
    host.server.wait_for_state(env.model, v1, "AVAILABLE")
    traffic = env.traffic(host)
    env.serves(host, v1)
    r = env.cli("sync", "deploy")                 # converges: production (v1) serves, nothing to do
    traffic.stop()
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    assert traffic.failures == [] and set(traffic.answers["stable"]) == {v1}


# --- a full disk ---------------------------------------------------------------------------------
def test_not_enough_space_on_the_host_refuses_the_upload_and_v1_keeps_serving(deploy_env, tmpfs):
    env = deploy_env
    base = tmpfs("2m")
    host = own_host(env, base)
    v1 = serving_v1(env, host)
    files_v1 = tree_bytes(base)
    v2 = env.register("big")                      # 3 MB: does not fit
    env.promote(v2)
    traffic = env.traffic(host)
    r = env.cli("sync", "deploy")
    traffic.stop()
    line = final_error_line(r.stderr)
    assert r.returncode == 3 and "not enough free space" in line and "nothing was uploaded" in line, line
    assert "production left at v2" in line
    after = tree_bytes(base)
    after.pop(".serving_sync/lock", None)
    assert after == files_v1                      # nothing partial, nothing changed
    assert traffic.failures == [] and set(traffic.answers["unversioned"]) == {v1}
    env.serves(host, v1)
    # more space (the operator grows the disk): the next run converges
    subprocess.run(["mount", "-o", "remount,size=12m", str(base)], check=True, timeout=30)
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)


@pytest.mark.slow
def test_disk_filling_up_during_the_upload_fails_cleanly_and_the_next_run_converges(
        deploy_env, tmpfs, paused_deploy):
    env = deploy_env
    base = tmpfs("8m")
    host = own_host(env, base)
    v1 = serving_v1(env, host)
    config_v1 = env.config_text(host)
    v2 = env.register("big")
    env.promote(v2)
    traffic = env.traffic(host)
    deploy = paused_deploy(env.env, "during:publish").wait_paused()
    filler = base / "filler"
    free = shutil.disk_usage(base).free
    filler.write_bytes(b"\0" * (free - 512 * 1024))          # something else eats the disk
    r = deploy.finish()
    traffic.stop()
    line = final_error_line(r.stderr)
    assert r.returncode == 3 and "at step 'publish'" in line and "space" in line.lower(), line
    model_dir = base / env.model
    assert numeric(model_dir) == [v1] and incoming(model_dir) == []   # the partial upload was removed
    assert env.config_text(host) == config_v1
    assert traffic.failures == [] and set(traffic.answers["stable"]) == {v1}
    env.serves(host, v1)
    filler.unlink()
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)


def test_a_disk_full_after_the_upload_is_the_hosts_fault_not_the_versions(deploy_env, tmpfs, paused_deploy):
    """The upload fits; then the disk fills before models.config is written (step load_validation).
    The host failed, not v2: production stays at v2, v2 is not tagged failed (the watcher would
    never retry it), and once space is freed the next run deploys it."""
    env = deploy_env
    base = tmpfs("8m")
    host = own_host(env, base)
    v1 = serving_v1(env, host)
    config_v1 = env.config_text(host)
    v2 = env.register("b")
    env.promote(v2)
    deploy = paused_deploy(env.env, "after:publish").wait_paused()
    filler = base / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, timeout=60)
    r = deploy.finish()
    line = final_error_line(r.stderr)
    assert r.returncode == 3 and "at step 'load_validation'" in line, line
    assert "could not be written to (its disk is full), not the version" in line and "production left at v2" in line
    assert env.production() == v2 and env.tags(v2).get("deploy_status") != "failed"
    assert env.config_text(host) == config_v1
    env.serves(host, v1)
    filler.unlink()
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)


# --- a corrupt SavedModel --------------------------------------------------------------------------
def register_dir(env, bundle) -> int:
    """Register a bundle folder (``tfserving/`` + ``golden/``) as the next version."""
    import mlflow

    from registry import bundle_hashes, versions
    from registry.client import tracking_client
    from registry.register import register_version
    from tests.lab.registry import EXPERIMENT

    client = tracking_client()
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_artifacts(str(bundle / "tfserving"), "tfserving")
        mlflow.log_artifacts(str(bundle / "golden"), "golden")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    v = register_version(env.model, logged.model_uri, run_id=run.info.run_id, tags={"dataset": "digits"},
                         bundle_files=bundle_hashes.tree_files(bundle))
    versions.set_tags(env.model, v, {"validation_status": "passed"})
    return v


@pytest.mark.parametrize("damage", ["garbage_saved_model_pb", "variables_missing"])
def test_a_corrupt_savedmodel_never_serves_and_production_goes_back(deploy_env, tmp_path, damage):
    """A SavedModel damaged before it was registered (its hashes match): a garbage saved_model.pb
    fails the load. Without ``variables/`` TensorFlow's loader restores nothing and the load
    succeeds (TF Serving makes the version AVAILABLE): the smoke test's golden predict fails on the
    uninitialized variable, FAILED_PRECONDITION, and the deploy rolls back there."""
    env = deploy_env
    host = env.add_host("file")
    v1 = serving_v1(env, host)
    config_v1 = env.config_text(host)
    bundle = tmp_path / "corrupt"
    shutil.copytree(env.bundles.path("a"), bundle)
    if damage == "garbage_saved_model_pb":
        pb = bundle / "tfserving" / "saved_model.pb"
        pb.write_bytes(os.urandom(pb.stat().st_size))
    else:
        shutil.rmtree(bundle / "tfserving" / "variables")
    bad = register_dir(env, bundle)
    env.promote(bad)
    traffic = env.traffic(host)
    r = env.cli("sync", "deploy")
    traffic.stop()
    line = final_error_line(r.stderr)
    assert r.returncode == 3 and f"deploy of v{bad}" in line and "production moved back to v1" in line, line
    if damage == "garbage_saved_model_pb":
        assert "load_validation" in line or "wait_validation" in line, line
    else:
        assert "at step 'smoke_validation'" in line and "golden_outputs" in line, line
        assert "HTTP 400: Could not find variable " in line, line
    assert traffic.failures == [] and set(traffic.answers["unversioned"]) == {v1}
    assert env.config_text(host) == config_v1
    assert bad not in env.states(host)
    env.serves(host, v1)
    assert env.production() == v1 and env.tags(bad)["deploy_status"] == "failed"
    r = env.cli("sync", "deploy")
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr


@pytest.mark.slow
def test_a_rerun_after_an_upload_killed_midway_frees_the_dead_uploads_space_before_it_needs_it(
        deploy_env, tmpfs, paused_deploy):
    """Found by the kill sweep of 2026-12-06 (tenth stop): a deploy SIGKILLed during its upload
    (a CI job's timeout) left its partial copy under `.incoming-*`, which retention removes only
    once it is an hour old. On a disk with room for one new copy, every rerun within that hour
    took over the dead lock and then failed its free-space check ("not enough free space ...
    free space there and rerun"): the dead upload held the space. A lock taken over from a dead
    deploy now means its uploads are dead too: they are removed before this deploy uploads."""
    from serving_sync.publish import SPACE_MARGIN

    env = deploy_env
    base = tmpfs("5600k")
    host = own_host(env, base)
    v1 = serving_v1(env, host)
    v2 = env.register("big")
    env.promote(v2)
    paused_deploy(env.env, "during:publish").wait_paused().kill()
    model_dir = base / env.model
    (dead,) = [p for p in model_dir.iterdir() if p.name.startswith(".incoming-")]
    size = sum(p.stat().st_size for p in (env.bundles.path("big") / "tfserving").rglob("*") if p.is_file())
    need = int(size * SPACE_MARGIN) + 64 * 1024
    # the rest of what the kill cut short: the dead upload holds most of a copy of v2, and the
    # disk has room for one copy of v2 only once it is gone
    rest = shutil.disk_usage(base).free - need + 256 * 1024
    assert 0 < rest < size
    (dead / "variables.part").write_bytes(b"\0" * rest)

    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "took over the deploy lock" in r.stderr
    env.serves(host, v2)
    assert numeric(model_dir) == [v1, v2] and not dead.exists()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".incoming-")]
    assert env.deploy().status == "up_to_date"
