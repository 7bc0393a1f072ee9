"""A deploy on a host whose models.config is not only its own (found by a sweep, 2026-12-04).

Real local servers and MLflow: our entry written by hand with a trailing slash, another label and a
`logging_config` on it, another team's model, and another entry reading our folder. The deploy
changes its own entry only as far as it must, and keeps what others load.
"""
from __future__ import annotations

import shutil
import time

import pytest

from mlops_common.errors import DeployFailed
from serving_sync import models_config as mc
from serving_sync.tfs_reload import reload_config


def _apply(env, host, text: str) -> None:
    host.server.write_config(text)
    reload_config(host.entry["grpc"], text, timeout=60)


def _until(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:        # bounded
        if cond():
            return True
        time.sleep(0.2)
    return False


def _entry(name, base, body=""):
    return f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {body} }}\n'


def test_a_main_entry_with_a_trailing_slash_is_pinned_so_a_failed_version_never_serves(deploy_env):
    """`base_path: ".../m/"` with TF Serving's default policy: compared as strings it was not our
    folder, nothing pinned it, and the version that failed its smoke test served after the deploy."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    mbase = mc.parse(env.config_text(host)).entry(env.model).base_path
    text = f"model_config_list {{\n{_entry(env.model, mbase + '/')}}}\n"
    _apply(env, host, text)
    assert _until(lambda: env.states(host).get(v1) == "AVAILABLE")
    bad = env.register("altered")                 # fails its smoke test (other outputs)
    env.promote(bad)
    traffic = env.traffic(host)
    with pytest.raises(DeployFailed):
        env.deploy()
    traffic.stop()
    main = mc.parse(env.config_text(host)).entry(env.model)      # put back pinned to what served
    assert (main.policy, main.versions) == ("specific", (v1,))
    assert bad not in set(traffic.answers["unversioned"]) and env.states(host).get(bad) != "AVAILABLE"
    assert env.which(host) == v1                       # it had no labels: unversioned traffic, on v1


def test_another_label_another_model_and_logging_config_survive_a_deploy(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1, v2, v3 = env.release("a"), env.release("b"), env.release("c")
    m, base = env.model, mc.parse(env.config_text(host)).entry(env.model).base_path
    other = base.rsplit("/", 1)[0] + "/other"
    shutil.copytree(host.base / m / str(v1), host.base / "other" / "7")
    ours = (f"model_version_policy {{ specific {{ versions: {v1} versions: {v2} versions: {v3} }} }} "
            f'version_labels {{ key: "stable" value: {v3} }} '
            f"logging_config {{ sampling_config {{ sampling_rate: 0.05 }} }}")
    loaded = f"model_config_list {{\n{_entry('other', other, 'model_version_policy { specific { versions: 7 } }')}" \
             f"{_entry(m, base, ours)}}}\n"
    _apply(env, host, loaded)              # a label may only name a loaded version: labels second
    assert _until(lambda: env.states(host).get(v1) == "AVAILABLE" and env.states(host, "other").get(7) == "AVAILABLE")
    labelled = loaded.replace(f'version_labels {{ key: "stable" value: {v3} }}',
                              f'version_labels {{ key: "stable" value: {v3} }} '
                              f'version_labels {{ key: "experiment" value: {v1} }}')
    _apply(env, host, labelled)
    assert _until(lambda: env.label(host, "experiment") == v1)
    v4 = env.register("a")
    env.promote(v4)
    assert env.deploy().status == "deployed"
    after = mc.parse(env.config_text(host))
    assert after.entry(m).label_map == {"experiment": v1, "stable": v4}
    assert env.label(host, "experiment") == v1 and (host.base / m / str(v1)).exists()    # kept, not retired
    assert "sampling_rate: 0.05" in env.config_text(host)                                # request logging on
    assert after.entry("other") is not None and env.states(host, "other").get(7) == "AVAILABLE"
    env.serves(host, v4)


def test_retention_keeps_what_another_entry_loads_from_our_folder(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    env.release("b")
    env.release("c")
    cur = env.config_text(host)
    mbase = mc.parse(cur).entry(env.model).base_path
    shadow = _entry("shadow", mbase, f"model_version_policy {{ specific {{ versions: {v1} }} }}")
    _apply(env, host, cur.rstrip()[:-1] + shadow + "}\n")
    assert _until(lambda: env.states(host, "shadow").get(v1) == "AVAILABLE")
    env.release("a")                                   # v4; retention keeps 3 by default
    assert (host.base / env.model / str(v1)).exists(), "v1, which entry 'shadow' loads, was deleted"
    assert env.states(host, "shadow").get(v1) == "AVAILABLE"


def test_sync_plan_names_another_entry_that_will_serve_the_new_version_once_published(deploy_env):
    """An entry of another team reading our folder with TF Serving's default policy (latest 1)
    loads a new version the moment it is published, before the smoke test: `sync plan` says so."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    cur = env.config_text(host)
    mbase = mc.parse(cur).entry(env.model).base_path
    _apply(env, host, cur.rstrip()[:-1] + _entry("shadow", mbase) + "}\n")
    assert _until(lambda: env.states(host, "shadow").get(v1) == "AVAILABLE")
    v2 = env.register("b")
    env.promote(v2)
    r = env.cli("sync", "plan")
    assert r.returncode == 0, r.stderr
    assert "entry shadow reads this model's folder" in r.stdout and f"serve v{v2} as soon as" in r.stdout, r.stdout
