"""Failed deploys put everything back: the host (exactly), the registry's production alias, the
tags and the ledger say why, and traffic never notices.

Broken versions are real SavedModels whose golden set does not match (weights altered after
export, golden response edited, signature changed) or that cannot load (variables truncated).
"""
from __future__ import annotations

import json

import pytest

from mlops_common.errors import ConfigError, DeployFailed
from serving_sync import models_config as mc
from tests.fixtures.faults import final_error_line


def setup_serving_v1(env, hosts=1, kind="file"):
    hs = env.add_hosts(hosts, kind) if hosts > 1 else [env.add_host(kind)]
    return hs, env.release("a")


def failed_deploy_under_traffic(env, host):
    """Deploy while a bounded traffic loop runs against ``host``; the deploy must fail.
    Returns (pytest's ExceptionInfo of the DeployFailed, the stopped traffic loop)."""
    traffic = env.traffic(host)
    try:
        with pytest.raises(DeployFailed) as e:
            env.deploy()
    finally:
        traffic.stop()
    return e, traffic


@pytest.mark.parametrize("broken,check", [("altered", "golden_outputs"), ("golden_edited", "golden_outputs"),
                                          ("signature_changed", "signature")])
def test_a_version_that_fails_the_smoke_test_is_rolled_back_while_v1_keeps_answering(deploy_env, broken, check):
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    config_before = env.config_text(host)
    bad = env.register(broken)
    env.promote(bad)
    e, traffic = failed_deploy_under_traffic(env, host)
    msg = e.value.message
    assert "\n" not in msg and f"failed on host {host.name} at step 'smoke_validation'" in msg
    assert check in msg and f"put back {host.name} to v1" in msg and "production moved back to v1" in msg
    assert e.value.exit_code == 3
    # the host: exactly as before, v1 everywhere, the broken version never answered
    assert env.config_text(host) == config_before
    env.serves(host, v1)
    assert traffic.failures == [] and traffic.count > 10
    assert set(traffic.answers["unversioned"]) == {v1} and set(traffic.answers["stable"]) == {v1}
    # the registry: production back, the version tagged, the ledger tells the story
    assert env.production() == v1
    tags = env.tags(bad)
    assert tags["deploy_status"] == "failed" and check in tags["deploy_reason"]
    rows = [(r.action, r.outcome, r.host) for r in env.ledger() if r.to_version == bad or r.from_version == bad]
    assert ("smoke_test", "failed", host.name) in rows
    # each smoke row says which side of the switch it checked (the version's page tells them apart)
    whens = [(r.to_version, r.outcome, (r.details or {}).get("when")) for r in env.ledger(("smoke_test",))
             if r.host == host.name]
    assert whens == [(v1, "passed", "before the switch"), (v1, "passed", "after the switch"),
                     (bad, "failed", "before the switch")], whens
    assert ("deploy", "failed", host.name) in rows and ("rollback", "ok", host.name) in rows
    assert ("host_rollback", "ok", host.name) in rows
    assert not (host.base / ".serving_sync" / "lock").exists()
    # and the next deploy (production is v1 again) has nothing to do
    assert env.deploy().status == "up_to_date"


def test_a_truncated_savedmodel_is_never_served_and_tf_servings_error_is_reported(deploy_env):
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    bad = env.register("truncated")
    env.promote(bad)
    e, traffic = failed_deploy_under_traffic(env, host)
    msg = e.value.message
    # TF Serving's own reason for the failed load is in the one line
    assert "Read less bytes than requested" in msg or "OUT_OF_RANGE" in msg, msg
    assert "load_validation" in msg or "wait_validation" in msg
    env.serves(host, v1)
    assert bad not in env.states(host)                         # never loaded in the main entry
    assert traffic.failures == [] and set(traffic.answers["unversioned"]) == {v1}
    assert env.production() == v1 and env.tags(bad)["deploy_status"] == "failed"


def test_first_deploy_ever_failing_removes_production_and_says_so(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    bad = env.register("golden_edited")
    env.promote(bad)
    with pytest.raises(DeployFailed) as e:
        env.deploy()
    assert "production removed: there was no previous production version" in e.value.message
    assert env.production() is None
    assert env.states(host) == {}                              # nothing serves under the main name
    assert "__validate" not in env.config_text(host)


def test_a_version_deploy_that_fails_leaves_production_alone(deploy_env):
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    bad = env.register("altered")
    with pytest.raises(DeployFailed) as e:
        env.deploy(version=bad)
    assert "production was not involved" in e.value.message
    assert env.production() == v1 and env.tags(bad)["deploy_status"] == "failed"
    env.serves(host, v1)


def test_two_hosts_second_fails_both_end_on_the_previous_version(deploy_env):
    env = deploy_env
    (h1, h2), v1 = setup_serving_v1(env, hosts=2)
    before = [env.config_text(h) for h in (h1, h2)]
    # host 2 is misconfigured: TF Serving looks for the models elsewhere than we publish them
    h2.entry["model_base_path"] = str(h2.base.parent / "not-where-the-files-are")
    env.write_hosts_file()
    v2 = env.register("b")
    env.promote(v2)
    e, traffic = failed_deploy_under_traffic(env, h1)
    msg = e.value.message
    assert f"failed on host {h2.name}" in msg and f"put back {h2.name}, {h1.name} to v1" in msg
    for h, text in zip((h1, h2), before):
        env.serves(h, v1)
        assert env.config_text(h) == text
    assert traffic.failures == []
    assert env.production() == v1
    assert {(r.host, r.outcome) for r in env.ledger(("host_rollback",))} == {(h1.name, "ok"), (h2.name, "ok")}
    # host 2 failed while preparing: no host had switched (host 1 was only prepared, then put back)
    assert not any(r.to_version == v2 and r.outcome == "ok" for r in env.ledger(("deploy",)))


@pytest.mark.slow
def test_three_hosts_third_fails_all_three_back_even_when_the_switch_unloaded_the_previous(deploy_env):
    env = deploy_env
    hs, v1 = setup_serving_v1(env, hosts=3)
    v2 = env.register("b")
    env.promote(v2)
    assert env.deploy().status == "deployed"
    for h in hs:
        env.serves(h, v2)
    before = [env.config_text(h) for h in hs]
    # roll back to v1 (lower): hosts 1 and 2 switch at once and UNLOAD v2; host 3 then fails
    hs[2].entry["model_base_path"] = str(hs[2].base.parent / "elsewhere")
    env.write_hosts_file()
    env.promote(v1)
    e, traffic = failed_deploy_under_traffic(env, hs[0])
    assert f"failed on host {hs[2].name}" in e.value.message
    for h, text in zip(hs, before):
        env.serves(h, v2)                  # v2 was loaded again before its label was restored
        assert env.config_text(h) == text
    assert traffic.failures == []
    assert env.production() == v2          # the "rollback" deploy failed: back to what served


def test_unknown_version_no_production_and_unreachable_tf_serving_are_one_line_and_change_nothing(deploy_env):
    env = deploy_env
    host = env.add_host("file")
    r = env.cli("sync", "deploy")
    assert r.returncode == 2 and "registered model" in r.stderr and "does not exist" in r.stderr
    v1 = env.register("a")
    r = env.cli("sync", "deploy")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: no version of")
    assert "promote one first" in r.stderr
    r = env.cli("sync", "deploy", "--version", "42")
    assert r.returncode == 2 and "version 42" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    env.promote(v1)
    host.server.stop()
    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 2 and "is not reachable" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not (host.base / env.model).exists() and not (host.base / ".serving_sync" / "lock").exists()
    bad_hosts = env.hosts_file.with_name("bad.toml")
    bad_hosts.write_text('[[hosts]]\nname = "x"\ntarget = "ftp://nope"\nrest_url = "http://127.0.0.1:1"\n')
    r = env.cli("sync", "deploy", "--hosts", str(bad_hosts))
    assert r.returncode == 2 and "unsupported scheme 'ftp'" in r.stderr


def test_a_wrong_grpc_address_is_one_line_before_any_host_changes_and_blames_no_version(deploy_env):
    """A `grpc` address nobody answers on (a typo in the hosts file) was found at the first config
    reload: the deploy failed mid-way with exit 3 and tagged a good version deploy_status=failed,
    while `sync status` and `sync plan` called the host in sync. Now every command that observes
    the host says so first, in one line, and nothing changes."""
    from mlops.ports import free_port
    from registry import versions

    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    v2 = env.register("b")
    env.promote(v2)
    before = env.config_text(host)
    wrong = f"127.0.0.1:{free_port()}"
    bad_hosts = env.hosts_file.with_name("wrong-grpc.toml")
    bad_hosts.write_text(env.hosts_file.read_text().replace(host.entry["grpc"], wrong))
    assert wrong in bad_hosts.read_text()
    for args, code in ((("sync", "deploy"), 2), (("sync", "plan"), 1), (("sync", "status"), 1)):
        r = env.cli(*args, "--hosts", str(bad_hosts))
        assert r.returncode == code, (args, r.stdout, r.stderr)
        said = r.stderr + r.stdout
        assert f"TF Serving gRPC at {wrong} unreachable" in said and "check the host's `grpc` address" in said, said
        assert "Traceback" not in said
    assert versions.get_version(env.model, v2).deploy_status is None       # not blamed
    assert env.production() == v2 and env.config_text(host) == before
    assert not (host.base / env.model / str(v2)).exists()
    env.serves(host, v1)
    r = env.cli("sync", "deploy")                                          # the right address: it goes
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)


def test_deploy_failure_with_json_prints_one_document_and_exits_3(deploy_env):
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    bad = env.register("golden_edited")
    env.promote(bad)
    r = env.cli("sync", "deploy", "--json")
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "failed" and doc["version"] == bad
    assert doc["hosts"][0]["failed_step"] == "smoke_validation" and doc["hosts"][0]["status"] == "restored"
    assert doc["registry"]["to_version"] == v1
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: deploy of v{bad} of")
    env.serves(host, v1)


def test_deploying_a_version_that_failed_the_gate_needs_force_and_a_reason(deploy_env):
    """`sync deploy --version N` put a version the gate had stopped on the hosts' stable label, exit 0,
    with neither the gate's verdict nor an approval (`sync rollback --to N` refused the same)."""
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    stopped = env.register("b", validation_status="failed")
    for extra, words in (((), f"version {stopped} of '{env.model}' has validation_status=failed, not passed"),
                         (("--force",), "--force needs --reason")):
        r = env.cli("sync", "deploy", "--version", str(stopped), *extra)
        assert r.returncode == 2, r.stderr
        assert words in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
        env.serves(host, v1)
    r = env.cli("sync", "deploy", "--force")
    assert r.returncode == 2 and "--force applies to --version N" in r.stderr
    r = env.cli("sync", "deploy", "--version", str(stopped), "--force", "--reason", "reproduce bug 42 on staging")
    assert r.returncode == 0, r.stderr
    env.serves(host, stopped)
    row = env.ledger(("deploy",))[-1]
    assert (row.to_version, row.outcome, row.reason) == (stopped, "ok", "reproduce bug 42 on staging")
    assert env.production() == v1


def test_deploying_a_version_gated_against_an_earlier_production_is_refused_like_its_promotion(deploy_env):
    """`sync deploy --version N` checked the tag alone: a version that passed its gate against v1
    went onto the hosts' stable label once production was v3, which `registry promote` refuses
    (its verdict says nothing about v3). The same rule now: gate again, or --force --reason."""
    from registry.ledger import Entry, Ledger

    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    v2, v3 = env.register("b"), env.register("b")
    for v in (v2, v3):      # two pipelines held at their approval, both passed against v1
        Ledger().append(Entry(action="gate", model=env.model, outcome="passed", from_version=v1, to_version=v))
    env.promote(v3)
    refused = (f"version {v2} of '{env.model}' passed its gate against v{v1}, but production is now v{v3}")
    r = env.cli("sync", "deploy", "--version", str(v2))
    assert r.returncode == 2, r.stderr
    assert refused in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr, r.stderr
    env.serves(host, v1)
    r = env.cli("sync", "plan", "--version", str(v2), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["deploy_refused"].startswith(refused), r.stdout + r.stderr
    # a version that held production before is a rollback, not refused; --force with a reason goes
    r = env.cli("sync", "deploy", "--version", str(v1))
    assert r.returncode == 0, r.stderr
    r = env.cli("sync", "deploy", "--version", str(v2), "--force", "--reason", "compare with v3 on staging")
    assert r.returncode == 0, r.stderr
    env.serves(host, v2)
    assert env.production() == v3


def test_in_a_fleet_the_line_names_the_host_that_cannot_be_reached(deploy_env):
    """Said only "TF Serving REST at http://…:27799 is not reachable": which of the hosts?"""
    from mlops.ports import free_port

    env = deploy_env
    (h1, h2), v1 = setup_serving_v1(env, hosts=2)
    v2 = env.register("b")
    env.promote(v2)
    bad = env.hosts_file.with_name("one-down.toml")
    bad.write_text(env.hosts_file.read_text().replace(h2.rest_url, f"http://127.0.0.1:{free_port()}"))
    r = env.cli("sync", "deploy", "--hosts", str(bad))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {h2.name}: TF Serving REST at ") and "is not reachable" in line, r.stderr
    env.serves(h1, v1)
    assert env.production() == v2


def test_grpc_unreachable_is_found_before_the_deploy_changes_anything(deploy_env):
    """Found at the first config reload, it failed the deploy at load_validation after the
    validation entry was written (TF Serving's poll then loaded it, and put-back unloaded it); now
    the observation before any change finds it (the CLI's view: the test above)."""
    from mlops.ports import free_port
    from serving_sync.errors import HostUnreachable

    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    before = env.config_text(host)
    host.entry["grpc"] = f"127.0.0.1:{free_port()}"      # nothing listens there
    env.write_hosts_file()
    v2 = env.register("b")
    env.promote(v2)
    with pytest.raises(HostUnreachable, match="gRPC at .* unreachable .*check the host's `grpc` address"):
        env.deploy(timeout=30)
    assert env.config_text(host) == before and env.production() == v2
    env.serves(host, v1)
    assert v2 not in env.states(host, f"{env.model}__validate")          # never loaded for validation
    assert not (host.base / env.model / str(v2)).exists()                # nor published


def test_a_ci_rerun_after_a_failed_deploy_does_not_pass_on_the_old_version(deploy_env):
    """CircleCI's deploy step reran after its version's deploy failed and moved production back:
    every host was up to date on the old version, the job passed and the approved version served
    nowhere. ``--expect-version N`` deploys N or refuses with one line (exit 2), changing nothing."""
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    bad = env.register("altered")
    env.promote(bad)
    r = env.cli("sync", "deploy", "--expect-version", str(bad))
    assert r.returncode == 3 and env.production() == v1
    config = env.config_text(host)
    r = env.cli("sync", "deploy", "--expect-version", str(bad))
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2, r.stderr
    assert f"is v{v1}, not v{bad} (--expect-version)" in line and "nothing was deployed" in line, line
    assert env.config_text(host) == config and env.production() == v1
    env.serves(host, v1)
    # the version production names deploys as before; --version N has no production to expect
    good = env.register("b")
    env.promote(good)
    assert env.cli("sync", "deploy", "--expect-version", str(good)).returncode == 0
    env.serves(host, good)
    r = env.cli("sync", "deploy", "--version", str(good), "--expect-version", str(good))
    assert r.returncode == 2 and "pass one of them" in r.stderr


def test_an_interrupted_deploy_with_json_still_prints_its_document(deploy_env, paused_deploy):
    """SIGTERM (a cancelled CI job) ended a `--json` deploy with exit 130 and nothing on stdout,
    though the hosts were put back and the result said so: the JSON contract is one document."""
    import signal

    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    env.promote(env.register("b"))
    held = paused_deploy(env.env, "after:publish", "--json").wait_paused()
    held.proc.send_signal(signal.SIGTERM)
    out, err = held.proc.communicate(timeout=120)
    assert held.proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["status"] == "failed" and doc["version"] == v1 + 1 and "interrupted" in doc["message"], doc
    env.serves(host, v1)


def test_a_model_name_too_long_for_a_hosts_file_names_is_one_line_and_changes_nothing(deploy_env, tmp_path):
    """MLflow takes a registered model name of any length, but the name is a folder on every host
    and part of the file ``.serving_sync/verified/.<name>.json.tmp-<8 hex>`` (+19 characters), and a
    file name holds at most 255 bytes. ``mlops train`` registered a 300-character name, and every
    deploy of it was an ``OSError: File name too long`` traceback. Now: refused in one line before
    training, and before a deploy touches a host; the longest name allowed (236) deploys."""
    from tests.fixtures.faults import one_error_line, tree_bytes
    from tests.lab.deploy_env import DeployEnv

    env = deploy_env
    host = env.add_host("file")
    too_long = DeployEnv({**env.env, "MLOPS_MODEL_NAME": "m" * 237}, env.bundles, tmp_path, None)
    too_long.promote(too_long.register("a"))
    before = tree_bytes(host.base)
    r = env.cli("sync", "deploy", "--model-name", too_long.model)
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "is 237 characters long; at most 236" in line, line
    assert tree_bytes(host.base) == before
    r = env.cli("train", "--model-name", "n" * 237, "--epochs", "1")
    assert r.returncode == 2 and "is 237 characters long" in one_error_line(r.stderr)
    longest = DeployEnv({**env.env, "MLOPS_MODEL_NAME": "k" * 236}, env.bundles, tmp_path, None)
    longest.promote(longest.register("a"))
    r = env.cli("sync", "deploy", "--model-name", longest.model)
    assert r.returncode == 0, r.stderr
    assert (host.base / longest.model / "1").is_dir()


def test_a_port_that_accepts_and_closes_is_one_line_without_paramikos_traceback(deploy_env):
    """Found by review (2026-12-05, third stop): a target whose port accepts the TCP connection and
    closes it (a wrong port, a proxy, sshd's MaxStartups) made paramiko's transport thread log
    "Exception (client): Error reading SSH protocol banner" and two tracebacks; with no handler on
    its logger, Python's last-resort handler wrote them to stderr around the one error line."""
    import socket
    import threading

    from tests.fixtures.faults import one_error_line

    env = deploy_env
    host = env.add_host("file")
    env.promote(env.register("a"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_and_close():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    bad = env.hosts_file.with_name("closing.toml")
    bad.write_text(f'[[hosts]]\nname = "closing"\ntarget = "ssh://deploy@127.0.0.1:{port}/srv/models"\n'
                   f'rest_url = "{host.rest_url}"\n')
    try:
        for _ in range(3):      # the thread's log raced the exit: it showed in most runs, not all
            r = env.cli("sync", "deploy", "--hosts", str(bad))
            line = one_error_line(r.stderr)
            assert r.returncode == 2 and "SSH handshake failed" in line, line
    finally:
        listener.close()


def test_a_rest_url_that_is_not_tf_serving_is_one_line_before_any_host_changes_and_blames_no_version(
        deploy_env, tmp_path):
    """Found by review (2026-12-05, third stop): a `rest_url` on a port where another web server
    answers (a typo: MLflow's port, a proxy's page) answers HTTP 404 for /v1/models/<name>, which
    was read as "TF Serving serves nothing of it". The deploy went ahead, waited for a version that
    server never loads, tagged a good version deploy_status=failed, moved production back, and its
    put-back wrote models.config from what it had (not) observed: the stable label was gone on the
    real server. Now every command that observes the host says so first, and nothing changes."""
    import http.server
    import threading

    from registry import versions

    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    v2 = env.register("b")
    env.promote(v2)
    before = env.config_text(host)
    (tmp_path / "www").mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **k)  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    wrong = f"http://127.0.0.1:{web.server_address[1]}"
    bad_hosts = env.hosts_file.with_name("not-tf-serving.toml")
    bad_hosts.write_text(env.hosts_file.read_text().replace(host.rest_url, wrong))
    assert wrong in bad_hosts.read_text()
    try:
        for args, code in ((("sync", "deploy"), 2), (("sync", "plan"), 1), (("sync", "status"), 1)):
            r = env.cli(*args, "--hosts", str(bad_hosts))
            assert r.returncode == code, (args, r.stdout, r.stderr)
            said = r.stderr + r.stdout
            assert f"{wrong} answered GET /v1/models/{env.model} with HTTP 404 (not JSON), not as TF Serving does" \
                in said and "check the host's rest_url" in said, said
            assert "Traceback" not in said
    finally:
        web.shutdown()
    assert versions.get_version(env.model, v2).deploy_status is None       # not blamed
    assert env.production() == v2 and env.config_text(host) == before
    env.serves(host, v1)


def test_a_full_tmpdir_on_the_machine_running_the_deploy_is_one_line_and_changes_nothing(deploy_env, tmpfs):
    """The deploy downloads the version's SavedModel and golden set into TMPDIR before any host
    changes. A full TMPDIR (a CI runner's disk) was a traceback (OSError: [Errno 28] from the
    download); now it is one line saying where to free space, not blaming the version, nothing
    is left in TMPDIR, the host keeps v1, and the rerun with room deploys."""
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    v2 = env.register("b")
    env.promote(v2)
    full = tmpfs("12k")
    r = env.cli("sync", "deploy", extra_env={"TMPDIR": str(full)})
    line = final_error_line(r.stderr)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "no space left on the disk" in line and f"{full} (TMPDIR)" in line and "not at fault" in line, line
    assert list(full.iterdir()) == []      # no half-downloaded bundle left behind
    env.serves(host, v1)
    assert env.production() == v2 and env.tags(v2).get("deploy_status") != "failed"
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr[-3000:]
    env.serves(host, v2)


def test_a_tmpdir_where_the_deploy_cannot_make_its_folder_is_one_line(deploy_env, tmpfs, monkeypatch):
    """TMPDIR full to its last inode once the deploy starts: creating the deploy's work folder
    (before anything is downloaded) was a traceback; now the same one line, no host changed."""
    import tempfile

    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    v2 = env.register("b")
    env.promote(v2)
    full = tmpfs("40k", no_inodes=True)
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    with pytest.raises(ConfigError) as e:
        env.deploy()
    assert "no space left on the disk" in str(e.value) and "nothing was changed on the hosts" in str(e.value)
    env.serves(host, v1)


def _publish_with_half_its_variables(env, host, version: int, bundle: str = "b"):
    """``bundle`` published on ``host`` as ``version`` by hand, its variables file cut in half
    (a load of it fails, as after a transient fault): the file and its whole bytes, to put back."""
    import shutil

    dst = host.base / env.model / str(version)
    shutil.copytree(env.bundles.path(bundle) / "tfserving", dst)
    for d in sorted((d for d in dst.rglob("*") if d.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()                                    # a published version has no empty folder
    data = next((dst / "variables").glob("variables.data-*"))
    good = data.read_bytes()
    data.write_bytes(good[: len(good) // 2])
    return data, good


def _failed_validation_load(env, host, version: int):
    """``version`` listed under the validation entry on ``host`` and its load failed (the reload
    waits for the new entry and says so); the config before it and the entry's name."""
    from serving_sync import models_config as mc
    from serving_sync.errors import ServingError
    from serving_sync.tfs_reload import reload_config

    before = env.config_text(host)
    vname = mc.validation_name(env.model)
    attempt = mc.render(mc.ServingConfig(mc.parse(before).entries + (
        mc.ModelEntry(vname, str(host.base / env.model), "specific", (version,)),)))
    host.server.write_config(attempt)
    with pytest.raises(ServingError):
        reload_config(host.entry["grpc"], attempt)
    return before, vname


def test_a_rerun_loads_again_a_version_whose_load_failed_while_the_main_entry_still_lists_it(deploy_env):
    """A deploy killed while v2 failed to load in the main entry (or a hand edit listing it) leaves
    v2 listed at END with its error: TF Serving does not load it again while it stays listed, so the
    rerun failed at wait_main with the old error, every time, until someone edited the file."""
    from serving_sync import models_config as mc
    env = deploy_env
    (host,), v1 = setup_serving_v1(env)
    v2 = env.register("b")
    data, good = _publish_with_half_its_variables(env, host, v2)
    cfg = mc.parse(env.config_text(host))
    state = mc.state_of(cfg, env.model)
    host.server.write_config(mc.render(mc.apply_state(cfg, mc.ModelState(
        env.model, state.base_path, (v1, v2), {"stable": v1}))))
    host.server.wait_for_state(env.model, v2, "END")
    data.write_bytes(good)                               # the files are whole again
    env.promote(v2)
    r = env.deploy()
    assert r.status == "deployed", r.message
    env.serves(host, v2)
    assert env.deploy().status == "up_to_date"


def test_a_rerun_without_grpc_does_not_take_an_earlier_attempts_load_failure_for_its_own(deploy_env):
    """TF Serving keeps reporting a version's last state, a failed load's error included, until a new
    config starts another load; without gRPC that is at its next config poll. The validation wait's
    first poll read the earlier attempt's error and the rerun of a version whose load once failed
    (a transient fault, since cleared) failed at once, blaming the version."""
    from serving_sync.tfs_reload import reload_config
    env = deploy_env
    host = env.add_host("file")
    env.release("a")
    v2 = env.register("b")
    data, good = _publish_with_half_its_variables(env, host, v2)     # the first attempt's load fails
    before, vname = _failed_validation_load(env, host, v2)
    host.server.write_config(before)                     # put back, as the failed deploy does
    reload_config(host.entry["grpc"], before)
    earlier = {int(x["version"]): x for x in host.server.status(vname)["model_version_status"]}
    assert earlier[v2]["state"] == "END" and earlier[v2]["status"]["error_code"] != "OK"
    data.write_bytes(good)                               # the fault is gone
    del host.entry["grpc"]                               # this deploy relies on the config poll
    env.write_hosts_file()
    env.promote(v2)
    r = env.deploy()
    assert r.status == "deployed", r.message
    env.serves(host, v2)
    assert env.production() == v2


def test_a_rerun_loads_again_a_validation_entry_left_with_a_failed_load(deploy_env):
    """A deploy killed while its validation copy had failed to load (before its put-back) leaves the
    entry listed at END with its error: the rerun wrote the same entry (no change, no reload) and
    failed with the old error, blaming the version."""
    env = deploy_env
    host = env.add_host("file")
    env.release("a")
    v2 = env.register("b")
    data, good = _publish_with_half_its_variables(env, host, v2)
    _, vname = _failed_validation_load(env, host, v2)   # and the deploy killed before its put-back
    data.write_bytes(good)                               # the files are whole again
    env.promote(v2)
    r = env.deploy()
    assert r.status == "deployed", r.message
    env.serves(host, v2)
    assert vname not in env.config_text(host)


def _killed_before_the_reload(env, host, main_labels, validate=None):
    """TF Serving as a deploy killed between writing models.config and reloading it left it: it
    applied ``main_labels`` (and a validation copy of ``validate``) over gRPC, the file holds what it
    held. The host's server polls no config file, so only a reload changes what it serves."""
    from serving_sync.tfs_reload import reload_config

    cfg = mc.parse(env.config_text(host))
    main = cfg.entry(env.model)
    entries = [mc.ModelEntry(env.model, main.base_path, "specific", main.versions, main_labels)]
    if validate is not None:
        entries.append(mc.ModelEntry(mc.validation_name(env.model), main.base_path, "specific", (validate,)))
    reload_config(host.entry["grpc"], mc.render(mc.ServingConfig(tuple(entries))))


def test_a_rerun_reloads_a_switch_config_a_killed_deploy_wrote_but_never_reloaded(deploy_env):
    """The switch skipped its reload because the file already held its text: on a host without a
    config poll, `stable` never moved, the rerun timed out and blamed v2."""
    env = deploy_env
    host = env.add_host("file", server_args=("--model_config_file_poll_wait_seconds=0",))
    v1 = env.release("a")
    v2 = env.release("b")
    switched = env.config_text(host)                   # v1 and v2 loaded, stable -> v2
    _killed_before_the_reload(env, host, (("stable", v1),))     # the load_main step's config
    assert env.label(host) == v1 and env.config_text(host) == switched
    r = env.deploy(timeout=10)
    assert r.status == "deployed", r.message
    assert [s["kind"] for s in r.hosts[0].steps] == ["switch", "verify"]
    env.serves(host, v2)
    assert env.config_text(host) == switched and env.production() == v2


def test_a_deploy_unloads_a_validation_copy_the_file_no_longer_lists(deploy_env):
    """A deploy killed after writing the config that drops `<model>__validate`, before its reload,
    left that copy loaded (a whole model's memory); the next deploy found the host up to date."""
    env = deploy_env
    host = env.add_host("file", server_args=("--model_config_file_poll_wait_seconds=0",))
    env.release("a")
    v2 = env.release("b")
    switched = env.config_text(host)
    _killed_before_the_reload(env, host, (("stable", v2),), validate=v2)
    vname = mc.validation_name(env.model)
    assert env.states(host, vname).get(v2) == "AVAILABLE"
    r = env.deploy(timeout=10)
    assert r.status == "deployed", r.message
    assert env.states(host, vname).get(v2) != "AVAILABLE"
    env.serves(host, v2)
    assert env.config_text(host) == switched
