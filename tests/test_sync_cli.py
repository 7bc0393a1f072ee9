"""`mlops sync plan | status | smoke | rollback | infra-validate` through the real CLI subprocess:
exit codes, one JSON document with --json, one error line, JUnit files, and the light import path.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.lab.deploy_env import deploy_opts

COMMANDS = ("deploy", "plan", "status", "smoke", "rollback", "watch", "infra-validate")


def test_every_sync_command_has_a_useful_help():
    from tests.helpers import run_mlops

    texts = {}
    for cmd in COMMANDS:
        r = run_mlops("sync", cmd, "--help")
        assert r.returncode == 0, r.stderr
        text = texts[cmd] = " ".join(r.stdout.split())
        assert "--json" in text and len(text) > 400, cmd
    text = texts["deploy"]                      # `sync deploy --help`, run once above
    for flag in ("--version", "--hosts", "--break-lock", "--lock-wait", "--keep", "--timeout", "--atol",
                 "--latency-budget-ms", "--no-keep-previous"):
        assert flag in text


def deployed_v1_v2(env, hosts=1, *, cli=False):
    hs = [env.add_host("file") for _ in range(hosts)]
    v1, v2 = env.register("a"), env.register("b")
    for v in (v1, v2):
        env.promote(v)
        if not cli:
            assert env.deploy().status == "deployed"
            continue
        r = env.cli("sync", "deploy", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "deployed"
    return hs, v1, v2


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_rollback_end_to_end_is_one_command_and_reports_its_speed(deploy_env):
    env = deploy_env
    (h1, h2), v1, v2 = deployed_v1_v2(env, hosts=2)
    secret = "whsec-do-not-leak-0123456789abcdef"
    r = env.cli("sync", "rollback", "--reason", "v2 answers slowly", "--actor", "oncall", "--json",
                extra_env={"MLOPS_WEBHOOK_SECRET": secret})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["registry"]["from_version"], doc["registry"]["to_version"]) == (v2, v1)
    assert doc["deploy"]["status"] == "deployed"
    # v1 was warm on both hosts: a switch, no upload, no validation
    for h in doc["deploy"]["hosts"]:
        assert [s["kind"] for s in h["steps"]] == ["switch", "verify"] and h["publish"] is None
    assert doc["seconds_to_old_outputs"] is not None and doc["switch_seconds"] is not None
    assert doc["seconds_to_old_outputs"] <= doc["seconds"]
    for h in (h1, h2):
        env.serves(h, v1)
    assert env.production() == v1
    assert env.tags(v2)["deploy_status"] == "rolled_back" and env.tags(v1)["deploy_status"] == "deployed"
    rows = env.ledger(("rollback", "deploy"))
    assert rows[-3].action == "rollback" and rows[-3].actor == "oncall" and rows[-3].reason == "v2 answers slowly"
    assert [(e.host, e.from_version, e.to_version) for e in rows[-2:]] == [(h1.name, v2, v1), (h2.name, v2, v1)]
    # the human form says how long it took
    env.promote(v2)
    assert env.deploy().status == "deployed"
    r = env.cli("sync", "rollback")
    assert r.returncode == 0, r.stderr
    assert "outputs answered on the unversioned route" in r.stdout and "host switch" in r.stdout
    # the secret in the environment went nowhere
    assert secret not in r.stdout + r.stderr
    for root in (Path(env.env["MLOPS_HOME"]), h1.base, h2.base):
        assert _files_containing(root, secret.encode()) == []


def test_a_rollback_whose_hosts_cannot_be_reached_says_production_moved_and_how_to_finish(deploy_env):
    """The registry moved first and the deploy then found the host unreachable: the one line said
    only "not reachable", and `sync status` then showed drift nobody had been told about."""
    from mlops.ports import free_port

    env = deploy_env
    (h1,), v1, v2 = deployed_v1_v2(env, hosts=1)
    bad = env.hosts_file.with_name("unreachable.toml")
    bad.write_text(env.hosts_file.read_text().replace(h1.rest_url, f"http://127.0.0.1:{free_port()}"))
    r = env.cli("sync", "rollback", "--reason", "v2 is slow", "--hosts", str(bad))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "is not reachable" in line, r.stderr
    assert f"production is v{v1} in the registry now (rolled back from v{v2})" in line
    assert f"`mlops sync deploy` installs v{v1} on the hosts" in line and "Traceback" not in r.stderr
    assert env.production() == v1
    env.serves(h1, v2)                                   # nothing changed on the host
    r = env.cli("sync", "deploy")                        # what the line says to do
    assert r.returncode == 0, r.stderr
    env.serves(h1, v1)


def test_a_rollback_restores_every_host_at_once_without_the_bake_unless_asked(deploy_env):
    """MLOPS_BAKE_SECONDS (the CircleCI deploy job sets 300) is for new versions: a rollback's deploy
    takes the fleet off the version rolled back from at once, by `sync rollback` and by `sync deploy`
    after `registry rollback` (CircleCI's rollback workflow) alike; --canary stages it."""
    env = deploy_env
    (h1, h2), v1, v2 = deployed_v1_v2(env, hosts=2)
    names = [h1.name, h2.name]
    baking = {"MLOPS_BAKE_SECONDS": "600"}   # were it read, the rollback would be refused (these servers
    #                                           have no metrics page) or wait out 2 x 600 s: past its timeout

    def canary_rows() -> int:
        return len(env.ledger(("canary",)))

    r = env.cli("sync", "rollback", "--json", extra_env=baking, timeout=240)
    assert r.returncode == 0, r.stderr
    deploy = json.loads(r.stdout)["deploy"]
    assert deploy["rollout"] == {"canary": [], "waves": [names], "unjudged": []} and deploy["bake"] == []
    assert deploy["restore"]["rolled_back_from"] == v2
    assert canary_rows() == 0
    for h in (h1, h2):
        env.serves(h, v1)

    # CircleCI's rollback workflow: `registry rollback`, then the deploy job's `sync deploy`
    env.promote(v2)
    assert env.deploy().status == "deployed"
    assert env.cli("registry", "rollback", "--reason", "v2 slow").returncode == 0
    r = env.cli("sync", "plan", extra_env=baking)
    assert r.returncode == 0, r.stderr
    assert f"restore: production was rolled back from v{v2}" in r.stdout and "switch: canary" not in r.stdout
    r = env.cli("sync", "deploy", "--json", extra_env=baking, timeout=240)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["rollout"] == {"canary": [], "waves": [names], "unjudged": []}
    assert doc["restore"]["rolled_back_from"] == v2
    assert canary_rows() == 0
    # the version rolled back from reads rolled_back, as after `sync rollback` (it stayed "deployed")
    assert env.tags(v2)["deploy_status"] == "rolled_back" and env.tags(v1)["deploy_status"] == "deployed"

    # asked for on the command line, the restore is staged like any deploy
    env.promote(v2)
    assert env.deploy().status == "deployed"
    r = env.cli("sync", "rollback", "--canary", "1", "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    deploy = json.loads(r.stdout)["deploy"]
    assert deploy["rollout"] == {"canary": names[:1], "waves": [names[:1], names[1:]], "unjudged": []}
    assert deploy["restore"] is None
    # and a promotion of v2 again is a deploy like any other: a canary first
    env.promote(v2)
    r = env.cli("sync", "deploy", "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["rollout"]["canary"] == names[:1] and doc["restore"] is None


def test_a_rollback_refuses_a_canary_the_fleet_cannot_take_before_the_registry_moves(deploy_env):
    """Found by a sweep (2026-12-04): `sync rollback --canary 5` on a fleet of 2 moved production,
    then refused the flag: the registry said v1, every host still served v2."""
    env = deploy_env
    (h1, h2), v1, v2 = deployed_v1_v2(env, hosts=2)
    rows = len(env.ledger())
    r = env.cli("sync", "rollback", "--reason", "v2 slow", "--canary", "2")
    assert r.returncode == 2, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("error: --canary 2 leaves no host to compare it with: 2 hosts change"), line
    assert "production is" not in line                   # nothing moved, so nothing to explain
    assert env.production() == v2 and len(env.ledger()) == rows
    for h in (h1, h2):
        env.serves(h, v2)


def test_a_rollback_refuses_a_bad_lock_ttl_before_the_registry_moves(deploy_env):
    """Found by the docs review (2026-12-07, eighteenth stop): `MLOPS_LOCK_TTL=0 mlops sync rollback`
    moved production, then refused the setting when the deploy made its first host lock: the
    registry said v1, every host still served v2 (a bad setting is refused before production
    moves, as MLOPS_STORE_URL_EXPIRY was). `sync deploy` refuses it before reading the registry."""
    env = deploy_env
    (h1, h2), v1, v2 = deployed_v1_v2(env, hosts=2)
    rows = len(env.ledger())
    for cmd in (("sync", "rollback", "--reason", "v2 slow"), ("sync", "deploy")):
        r = env.cli(*cmd, extra_env={"MLOPS_LOCK_TTL": "0"})
        assert r.returncode == 2, (cmd, r.stderr)
        (line,) = [x for x in r.stderr.splitlines() if x.strip()]
        assert line.startswith("error: MLOPS_LOCK_TTL must be"), line
        assert "production is" not in line                   # nothing moved, so nothing to explain
        assert "downloading" not in r.stdout + r.stderr
    assert env.production() == v2 and len(env.ledger()) == rows
    for h in (h1, h2):
        env.serves(h, v2)


def test_a_rollback_checks_its_canary_against_the_hosts_that_change_before_the_registry_moves(deploy_env):
    """`sync rollback --canary N` was checked against the whole fleet: on 3 hosts of which one
    still served the version rolled back to, `--canary 2` passed, production moved, then the
    deploy refused the flag for its 2 changing hosts (the registry said v1, two hosts served v2)."""
    from serving_sync import fleet
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions

    env = deploy_env
    h1, h2, h3 = env.add_hosts(3)
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    r = fleet.deploy(env.model, load_hosts()[:2], opts=DeployOptions(timeout=60.0, json_mode=True))
    assert r.status == "deployed", r.message            # h3 still serves v1
    rows = len(env.ledger())
    r = env.cli("sync", "rollback", "--reason", "v2 slow", "--canary", "2")
    assert r.returncode == 2, r.stderr
    assert env.production() == v2 and len(env.ledger()) == rows, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("error: --canary 2 leaves no host to compare it with: 2 hosts change"), line
    assert "production is" not in line                   # nothing moved, so nothing to explain
    for h in (h1, h2):
        env.serves(h, v2)
    env.serves(h3, v1)
    r = env.cli("sync", "rollback", "--reason", "v2 slow", "--canary", "1", "--json")   # one it can take
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deploy"]["rollout"]["canary"] == [h1.name]
    assert env.production() == v1


def test_plan_says_what_the_deploy_then_does_about_the_bake_and_retention(deploy_env):
    """Found by a sweep (2026-12-04): `sync plan` announced a bake for a single changing host (the
    deploy bakes only a canary with hosts after it), and its retention preview listed the version
    the registry would roll back to, which the deploy keeps on every host."""
    env = deploy_env
    (h1,), v1, v2 = deployed_v1_v2(env, hosts=1)
    v3 = env.register("a", validation_status="failed")

    r = env.cli("sync", "plan", "--canary", "1", "--bake", "5")      # v2 is up to date: nothing changes
    assert r.returncode == 0 and "rollout: nothing changes" in r.stdout, r.stdout + r.stderr
    # --version 3 with production at v2: the rollback target is v1, kept by the deploy's retention
    r = env.cli("sync", "plan", "--version", str(v3), "--keep", "1", "--canary", "1", "--bake", "5", "--json")
    assert r.returncode == 2, r.stderr        # the deploy would refuse v3 (below): the plan says so in its exit
    doc = json.loads(r.stdout)
    (host,) = doc["hosts"]
    assert doc["bake"]["seconds"] == 0 and doc["bake"]["requested"] == 5
    assert host["retention_would_remove"] == [], host
    text = env.cli("sync", "plan", "--version", str(v3), "--keep", "1", "--canary", "1", "--bake", "5").stdout
    assert "no canary (one host changes): --bake 5s not used" in text and "canary " + h1.name not in text, text
    assert "then retention removes" not in text, text

    # v3 has not passed its gate: the plan says what the deploy will answer first
    assert doc["deploy_refused"].startswith(f"version {v3} of '{env.model}' has validation_status="), doc
    assert f"note: `mlops sync deploy --version {v3}` refuses this without --force --reason: " in text
    r = env.cli("sync", "plan", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["deploy_refused"] is None, r.stdout + r.stderr

    r = env.cli("sync", "deploy", "--version", str(v3), "--keep", "1", "--canary", "1", "--bake", "5",
                "--force", "--reason", "plan check", "--json")
    assert r.returncode == 0, r.stderr
    deployed = json.loads(r.stdout)
    assert deployed["bake"] == [] and deployed["hosts"][0]["retention"]["remove_versions"] == []
    assert (h1.base / env.model / str(v1)).is_dir()


def test_a_lone_changing_host_is_the_same_wave_in_the_plan_and_the_deploy(deploy_env):
    """`--canary 1` with one host to change (the other already on the version): `sync plan` said
    "wave 1" (nothing follows it, nothing judges it), the deploy's `waves[].wave` said "canary",
    and both `rollout.canary` named it (found by review, 2026-12-07, twentieth stop)."""
    from serving_sync import fleet
    from serving_sync.hosts import load_hosts
    from serving_sync.options import DeployOptions

    env = deploy_env
    h1, h2 = env.add_hosts(2)
    env.release("a", opts=DeployOptions(timeout=60.0, json_mode=True, canary=0))
    v2 = env.register("b")
    env.promote(v2)
    r = fleet.deploy(env.model, load_hosts()[:1], opts=DeployOptions(timeout=60.0, json_mode=True))
    assert r.status == "deployed", r.message            # h2 still serves v1
    r = env.cli("sync", "plan", "--canary", "1", "--json")
    assert r.returncode == 0, r.stderr
    planned = json.loads(r.stdout)["rollout"]
    text = env.cli("sync", "plan", "--canary", "1").stdout
    assert f"phase 2, switch: wave 1: {h2.name}" in text and f"canary {h2.name}" not in text, text
    r = env.cli("sync", "deploy", "--canary", "1", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert [(w["wave"], w["hosts"]) for w in done["waves"]] == [("wave 1", [h2.name])], done["waves"]
    assert done["rollout"] == planned == {"canary": [], "waves": [[h2.name]], "unjudged": []}
    env.serves(h2, v2)


def test_rollback_with_nothing_to_roll_back_to_is_one_line(deploy_env):
    env = deploy_env
    env.add_host("file")
    v1 = env.register("a")
    env.promote(v1)
    r = env.cli("sync", "rollback")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: nothing to roll back to")


def test_plan_status_and_smoke_report_and_change_nothing(deploy_env, tmp_path):
    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    config = env.config_text(host)

    r = env.cli("sync", "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["production"] == v2 and doc["in_sync"] is True
    hs = doc["hosts"][0]
    assert hs["versions"] == {str(v1): "AVAILABLE", str(v2): "AVAILABLE"} and hs["labels"] == {"stable": v2}
    assert hs["unversioned"] == v2 and hs["drift"] == []

    r = env.cli("sync", "plan", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["up_to_date"] is True
    # one host from the environment instead of a hosts file
    r = env.cli("sync", "status", "--json", extra_env={
        "MLOPS_SYNC_TARGET": f"file://{host.base}", "MLOPS_SYNC_REST_URL": host.rest_url,
        "MLOPS_SYNC_NAME": "from-env"})
    assert r.returncode == 0, r.stderr
    assert [(h["name"], h["in_sync"]) for h in json.loads(r.stdout)["hosts"]] == [("from-env", True)]
    r = env.cli("sync", "plan", "--version", str(v1))
    assert r.returncode == 0 and "switch stable and unversioned traffic to v1" in r.stdout

    junit = tmp_path / "smoke.xml"
    r = env.cli("sync", "smoke", "--via", "stable", "--junit", str(junit), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and {c["name"] for c in doc["hosts"][0]["checks"]} == \
        {"label", "signature", "golden_outputs", "latency"}
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0"
    r = env.cli("sync", "smoke", "--via", "version")
    assert r.returncode == 0 and f"{env.model}/versions/{v2}" in r.stdout
    assert env.config_text(host) == config                          # nothing changed

    # drift: production moved in the registry but nobody deployed it
    env.promote(v1)
    r = env.cli("sync", "status", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["in_sync"] is False and any("stable -> v2, production is v1" in d for d in doc["hosts"][0]["drift"])
    r = env.cli("sync", "smoke", "--junit", str(junit))
    assert r.returncode == 2 and "error: smoke test failed on" in r.stderr and "stable -> 2" in r.stderr
    assert ET.parse(junit).getroot().get("failures") == "1"
    r = env.cli("sync", "plan")
    assert r.returncode == 0 and "2 steps" in r.stdout

    # an unreachable host: status still prints one JSON document, and exits 1
    host.server.stop()
    r = env.cli("sync", "status", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["hosts"][0]["reachable"] is False and "not reachable" in doc["hosts"][0]["error"]
    r = env.cli("sync", "plan", "--json")
    assert r.returncode == 1 and host.name in json.loads(r.stdout)["errors"]
    r = env.cli("sync", "smoke", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["passed"] is False


def test_status_says_why_a_version_models_config_asks_for_is_not_loaded(deploy_env):
    """`sync status` said "models.config asks for v3 END, v7 unknown": TF Serving's own reason for
    the failed load (its status' error_message) was dropped, so a version that failed to load read
    like one unloaded on purpose, and a version whose folder is not on the host read as "unknown".
    Now the drift (text and --json) carries TF Serving's reason and names the missing folder
    (found by review, 2026-12-05, ninth stop)."""
    import shutil
    import time

    env = deploy_env
    (host,), v1, v2 = deployed_v1_v2(env)
    config = env.config_text(host)
    broken = host.base / env.model / "3"
    shutil.copytree(host.base / env.model / str(v2), broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    tmp = host.base / "models.config.tmp-test"
    tmp.write_text(config.replace(f"        versions: {v2}\n",
                                  f"        versions: {v2}\n        versions: 3\n        versions: 7\n"))
    os.replace(tmp, host.base / "models.config")
    for _ in range(100):                     # the server polls models.config every second
        if env.states(host).get(3) == "END":
            break
        time.sleep(0.1)
    assert env.states(host).get(3) == "END" and 7 not in env.states(host)

    r = env.cli("sync", "status", "--json")
    assert r.returncode == 1, r.stderr
    (drift,) = json.loads(r.stdout)["hosts"][0]["drift"]
    assert "v3 END (TF Serving: " in drift and "saved_model" in drift.lower(), drift
    assert f"v7 (not on the host: {env.model}/7 is missing)" in drift, drift
    r = env.cli("sync", "status")
    assert r.returncode == 1 and "v3 END (TF Serving: " in r.stdout and f"{env.model}/7 is missing" in r.stdout


def test_status_smoke_and_rollback_never_import_tensorflow(deploy_env):
    env = deploy_env
    deployed_v1_v2(env, cli=False)
    code = ("import sys\nfrom mlops.cli import main\nrc = main(sys.argv[1:])\n"
            "print('HEAVY', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules), file=sys.stderr)\n"
            "sys.exit(rc)\n")
    for command in (("status",), ("smoke",), ("rollback",)):
        p = subprocess.run([sys.executable, "-c", code, "sync", *command], cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, **env.env}, timeout=300)
        assert p.returncode == 0, p.stderr
        assert "HEAVY []" in p.stderr, command


def test_infra_validate_with_the_local_server_passes_and_fails_for_real(deploy_env, tmp_path):
    env = deploy_env
    good, bad = env.register("a"), env.register("golden_edited")
    junit = tmp_path / "infra.xml"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    r = env.cli("sync", "infra-validate", "--version", str(good), "--server", "local", "--junit", str(junit),
                "--json", extra_env={"TMPDIR": str(tmpdir)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and doc["server"] == "local"
    assert [c["name"] for c in doc["checks"]] == ["load", "signature", "golden_outputs", "latency"]
    assert ET.parse(junit).getroot().get("failures") == "0"
    assert env.tags(good)["infra_validation"] == "passed"
    row = env.ledger(("smoke_test",))[-1]
    assert (row.outcome, row.to_version, row.host) == ("passed", good, "infra-validate:local")
    assert env.production() is None                         # no registry change beyond tag + row

    r = env.cli("sync", "infra-validate", "--version", str(bad), "--server", "local", "--junit", str(junit))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: infra validation of v{bad}") and "golden_outputs" in line
    assert env.tags(bad)["infra_validation"] == "failed"
    assert ET.parse(junit).getroot().get("failures") == "1"
    # asking for Docker where no Docker engine answers is one line, not a crash
    from mlops.throwaway_server import docker_available
    if not docker_available():
        r = env.cli("sync", "infra-validate", "--version", str(good), "--server", "docker")
        assert r.returncode == 2 and "no Docker engine answers here" in r.stderr and "Traceback" not in r.stderr
    # the throw-away server is stopped and its temporary base removed
    assert list(tmpdir.glob("mlops-infra-*")) == []
    import requests
    with pytest.raises(requests.ConnectionError):
        requests.get(doc["rest_url"] + "/v1/models/x", timeout=5)


def test_infra_validate_of_a_model_that_cannot_load_reports_tf_servings_error(deploy_env):
    env = deploy_env
    bad = env.register("truncated")
    r = env.cli("sync", "infra-validate", "--version", str(bad), "--server", "local", "--json")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["checks"][0]["name"] == "load" and doc["checks"][0]["passed"] is False
    assert "Read less bytes" in doc["checks"][0]["message"] or "OUT_OF_RANGE" in doc["checks"][0]["message"]


def _no_server(base):
    raise AssertionError(f"no server may start: {base}")


def test_infra_validate_with_a_tmpdir_out_of_inodes_is_one_line(deploy_env, tmpfs, monkeypatch):
    """TMPDIR full to its last inode: making infra-validate's temporary folder was a traceback;
    now the full-disk line naming TMPDIR, nothing recorded."""
    import tempfile

    from mlops_common.errors import ConfigError
    from serving_sync import infra

    env = deploy_env
    v = env.register("a")
    full = tmpfs("40k", no_inodes=True)
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    with pytest.raises(ConfigError) as e:
        infra.validate(env.model, v, server="local", start_server=_no_server)
    line = str(e.value)
    assert line == (f"infra-validating v{v} of '{env.model}': no space left on the disk of {full} (TMPDIR) on "
                    f"this machine; free space there and rerun; nothing was recorded"), line
    assert "infra_validation" not in env.tags(v)


def test_infra_validate_with_too_little_space_in_tmpdir_names_tmpdir_not_its_gone_folder(deploy_env, tmpfs,
                                                                                          monkeypatch):
    """Room in TMPDIR for the download but not for the copy the throw-away server loads: the line
    named the temporary folder (removed by then) as a host and said to lower retention."""
    import tempfile

    from mlops_common.errors import UserError
    from serving_sync import infra

    env = deploy_env
    v = env.register("a")
    files = [f for f in env.bundles.path("a").rglob("*") if f.is_file()]
    pages = sum(-(-f.stat().st_size // 4096) * 4096 for f in files)       # the download, as tmpfs holds it
    saved = sum(f.stat().st_size for f in (env.bundles.path("a") / "tfserving").rglob("*") if f.is_file())
    full = tmpfs(f"{(pages + saved // 2 + 4095) // 4096 * 4}k")
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    with pytest.raises(UserError) as e:
        infra.validate(env.model, v, server="local", start_server=_no_server)
    line = str(e.value)
    assert line.startswith(f"infra-validating v{v} of '{env.model}': ") and f"{full} (TMPDIR)" in line, line
    assert "MB needed" in line and "free space there and rerun; nothing was recorded" in line, line
    assert "mlops-infra-" not in line and "retention" not in line, line
    assert list(full.iterdir()) == [] and "infra_validation" not in env.tags(v)


def test_infra_validate_of_a_server_that_dies_while_loading_fails_at_once(deploy_env, tmp_path):
    """Found by review (2026-12-06, fifteenth stop): a throw-away server that died while loading
    the candidate (a model that crashes TF Serving, the OOM killer) was waited for as a host being
    restarted: the whole --timeout, then "not reachable (still, after waiting ...)", nothing saying
    the server had gone. Its process is ours: its exit now ends the wait at once, and says so."""
    import signal

    from mlops.throwaway_server import throwaway_starter
    from serving_sync import infra

    env = deploy_env
    v = env.register("a")
    local = throwaway_starter("local", timeout=60)

    @contextlib.contextmanager
    def dies_once_started(base):
        with local(base) as srv:
            record = json.loads((base.parent / "server-state" / "infra-validate-server.json").read_text())
            os.killpg(record["pid"], signal.SIGKILL)       # as TF Serving killed while it loads
            yield srv

    result = infra.validate(env.model, v, server="local", start_server=dies_once_started, timeout=40,
                            workdir=str(tmp_path))
    assert not result.passed and [c.name for c in result.checks] == ["load"], result.to_dict()
    assert "throw-away local TF Serving exited with code -9" in result.error, result.error
    assert result.checks[0].seconds < 20, result.to_dict()          # not the 40 s of --timeout
    assert list(tmp_path.glob("mlops-infra-*")) == []


def test_infra_validate_stopped_by_sigterm_leaves_no_server_and_no_folder(deploy_env, tmp_path):
    """A cancelled CircleCI job (SIGTERM) killed the command at once: its throw-away server kept
    its ports, and its temporary folder kept the downloaded SavedModel (Ctrl-C cleaned up)."""
    import time

    from tests.helpers import sigterm_when

    env = deploy_env
    v = env.register("a")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    full = {**os.environ, **env.env, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "infra-validate", "--version", str(v),
                             "--server", "local", "--latency-requests", "1000"], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def servers() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"local_server.*{tmpdir}"], capture_output=True, text=True).stdout.split()

    # signalled while it loads or sends its golden requests
    err = sigterm_when(proc, servers, before_signal=lambda: time.sleep(1.0), timeout=120, poll=0.1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and servers():
        time.sleep(0.2)
    left = servers()
    subprocess.run(["pkill", "-KILL", "-f", f"local_server.*{tmpdir}"], capture_output=True)
    assert proc.returncode == 130, err
    assert left == [] and not list(tmpdir.glob("mlops-infra-*")), (left, list(tmpdir.iterdir()))


def test_plan_refuses_a_version_without_a_savedmodel_as_the_deploy_does(deploy_env, tmp_path):
    """Found by a review (2026-12-05): `sync plan` of a version whose tfserving/ holds no
    saved_model.pb planned its steps (peak memory of the variables alone) where `sync deploy`
    refuses the version after downloading it."""
    import shutil

    env = deploy_env
    (h1,), v1, v2 = deployed_v1_v2(env, hosts=1)
    folder = tmp_path / "no-graph"
    shutil.copytree(env.bundles.path("a"), folder)
    (folder / "tfserving" / "saved_model.pb").unlink()
    v3 = env.register_bundle(folder, "no-graph")
    config = (h1.base / "models.config").read_bytes()
    for cmd in (("plan",), ("deploy", "--bake", "0")):
        r = env.cli("sync", *cmd, "--version", str(v3))
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(lines) == 1, (cmd, r.returncode, r.stdout, r.stderr)
        assert f"version {v3} of '{env.model}': tfserving/ has no saved_model.pb" in lines[0], r.stderr
    assert (h1.base / "models.config").read_bytes() == config and not (h1.base / env.model / str(v3)).exists()


def test_adding_a_host_then_removing_one_as_the_operations_section_says(deploy_env):
    """docs/production.md, "Operations": a host added to the hosts file is the only one the next
    `sync deploy` changes (the others "up to date", their models.config untouched); a host taken
    out of the file is neither reported by `sync status` nor touched by a deploy, and goes on
    serving what it served."""
    env = deploy_env
    h1, h2 = env.add_hosts(2, "file")
    v1 = env.release("a")
    h3 = env.add_host("file")
    before = {h.name: env.config_text(h) for h in (h1, h2)}
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    assert f"to {h3.name} (first deploy)" in r.stdout
    assert f"{h1.name}: up to date" in r.stdout and f"{h2.name}: up to date" in r.stdout, r.stdout
    assert {h.name: env.config_text(h) for h in (h1, h2)} == before
    for h in (h1, h2, h3):
        env.serves(h, v1)
    env.write_hosts_file([h1, h3])                 # h2 taken out of the fleet
    v2 = env.register("b")
    env.promote(v2)
    assert env.deploy().status == "deployed"
    r = env.cli("sync", "status")
    assert r.returncode == 0 and h2.name not in r.stdout, r.stdout
    env.serves(h2, v1)
    for h in (h1, h3):
        env.serves(h, v2)


def test_a_rollback_stopped_while_it_waits_for_the_promotion_lock_moves_nothing(deploy_env):
    """Found by a signals review (2026-12-06): the first SIGTERM (a cancelled CircleCI job) or
    Ctrl-C only asked the deploy to stop at its next safe point, so a `sync rollback` waiting for
    the promotion lock (another promotion under way) went on waiting up to 120 s, then moved
    production back, and only its deploy stopped: exit 130 with the registry rolled back and the
    hosts not. Stopped before the registry moved, it stops there: production and hosts untouched."""
    import signal
    import time

    from registry.ledger import Ledger

    env = deploy_env
    (h1,), v1, v2 = deployed_v1_v2(env, hosts=1)
    config = (h1.base / "models.config").read_bytes()
    ledger = Ledger()
    database = Path(ledger._engine.url.database)
    lock = database.with_name(database.name + ".lock")
    with ledger.serialized(env.model):            # another promotion holds the lock
        proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "rollback", "--reason", "v2 is slow"],
                                cwd=REPO, env={**os.environ, **env.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

        def waits_for_the_lock() -> bool:       # it has the lock file open: it waits in flock
            try:
                return any(os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == str(lock)
                           for fd in os.listdir(f"/proc/{proc.pid}/fd"))
            except OSError:
                return False

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not waits_for_the_lock():
            time.sleep(0.05)
        assert waits_for_the_lock(), proc.poll()
        proc.send_signal(signal.SIGTERM)
        try:            # the lock still held: it must stop without it
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass        # let go below: a rollback still waiting takes the lock and moves production
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert env.production() == v2, err[-3000:]
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-3000:]
    assert "Traceback" not in err
    assert (h1.base / "models.config").read_bytes() == config
    assert [e.action for e in env.ledger(("rollback",))] == []


def test_a_sync_rollback_another_rollback_got_to_first_deploys_nothing(deploy_env, paused_deploy):
    """Found by a rollback review (2026-12-07): two people on call ran `sync rollback` against v2.
    The one that reached the registry second found production already rolled back (a no-op there)
    and deployed anyway: while the first one's deploy held the host it was refused with "rerun
    with --break-lock T" (two deploys on one host), and once that deploy was done it ran one more
    (with --lock-wait it deployed whatever production named by then). It knows the version it
    rolls back from, and deploys nothing: refused in one line while the hosts do not serve the
    version yet, a no-op once they do."""
    from tests.fixtures.faults import final_error_line

    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    assert env.deploy(opts=deploy_opts(keep_previous=False)).status == "deployed"    # v1 gone: a rollback publishes it
    rollback = ("sync", "rollback")
    bob, dave = (paused_deploy(env.env, "rollback:after_read", "--reason", "v2 is slow", "--actor", who, "--json",
                               command=rollback).wait_paused() for who in ("bob", "dave"))     # both read v2
    carol = paused_deploy(env.env, "after:publish", "--reason", "v2 is slow", "--actor", "carol",
                          command=rollback).wait_paused()
    assert env.production() == v1 and env.label(host) == v2      # carol's rollback moved; its deploy holds the host
    (row,) = env.ledger(("rollback",))
    r = bob.finish()
    line = final_error_line(r.stderr)
    assert r.returncode == 2 and line == (
        f"error: production of '{env.model}' already moved v{v2} -> v{v1} (rollback by carol, ledger #{row.id}) "
        f"after this rollback read it, and not every host serves v{v1} yet ({host.name} serves v{v2}): its deploy "
        f"is under way or stopped; nothing was changed: `mlops sync status` shows the hosts, and once no deploy is "
        f"under way `mlops sync deploy` installs v{v1}"), r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["deploy"] is None and doc["error"] == line.removeprefix("error: ") and doc["served_version"] is None
    assert carol.finish().returncode == 0, carol.stderr[-3000:]
    env.serves(host, v1)
    r = dave.finish()                                            # read v2 too, resumed once carol's deploy was done
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["deploy"] is None and doc["served_version"] == v1 and not doc["superseded"], doc
    assert doc["registry"]["moved"] is False and doc["registry"]["details"]["already_moved"] == row.id
    env.serves(host, v1)
    assert [e.id for e in env.ledger(("rollback",))] == [row.id]
    assert {e.actor for e in env.ledger(("deploy", "host_rollback"))} >= {"carol"}
    assert not [e for e in env.ledger(("deploy", "host_rollback", "smoke_test")) if e.actor in ("bob", "dave")]


def test_a_rollback_stopped_after_the_registry_moved_says_how_to_finish(deploy_env, tmp_path):
    """Found by a signals review (2026-12-06): a `sync rollback` stopped by SIGTERM after the
    registry moved back, while its deploy waited for a host's lock, ended on `error: interrupted
    (SIGTERM)`: production named v1, the host served v2, and nothing said so or what to run."""
    import signal
    import time

    from serving_sync.lock import HostLock
    from serving_sync.transports.local import LocalTransport

    env = deploy_env
    (h1,), v1, v2 = deployed_v1_v2(env, hosts=1)
    other = HostLock(LocalTransport(h1.base), purpose="deploy")
    other.acquire()                                     # another deploy holds the host
    errors = tmp_path / "stderr"
    try:
        with errors.open("w") as err_file:
            proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "rollback", "--reason", "v2 is slow",
                                     "--lock-wait", "120"], cwd=REPO, env={**os.environ, **env.env},
                                    stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and "waiting up to" not in errors.read_text():
                time.sleep(0.05)
            assert "waiting up to" in errors.read_text(), errors.read_text()[-3000:]
            assert env.production() == v1                # the registry has moved; no host has
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    finally:
        other.release()
    err = errors.read_text()
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"error: interrupted (SIGTERM) before the deploy changed any host; production is v{v1} in the "
                    f"registry now (rolled back from v{v2}): `mlops sync deploy` installs v{v1} on the hosts"), last
    assert "Traceback" not in err
    env.serves(h1, v2)
    assert env.production() == v1


def test_the_plans_json_says_the_deploy_refuses_a_fleet_with_a_host_it_cannot_observe(deploy_env):
    """Found by review (2026-12-07, twenty-first stop): with a host whose TF Serving is down, `sync
    plan` said in its text that `mlops sync deploy` refuses until every host can be observed, but
    its `--json` had `deploy_refused: null` beside the reachable hosts' steps and a rollout that
    left the host out: a script reading the document found nothing the deploy would refuse. It
    now carries the deploy's refusal: that host's line, as the deploy says it."""
    from tests.fixtures.faults import final_error_line

    env = deploy_env
    (up, down), v1, v2 = deployed_v1_v2(env, hosts=2)
    v3 = env.register("c")
    env.promote(v3)
    down.server.stop()
    r = env.cli("sync", "plan", "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert down.name in doc["errors"], doc
    refused = doc["deploy_refused"]
    assert refused and refused.startswith(f"{down.name}: "), doc
    r = env.cli("sync", "deploy")
    assert r.returncode != 0, r.stderr
    assert final_error_line(r.stderr) == f"error: {refused}", (r.stderr, refused)
    env.serves(up, v2)



def test_a_rollback_from_a_first_version_whose_deploy_failed_meanwhile_says_there_is_nothing_older(
        deploy_env, paused_deploy):
    """Found by review (2026-12-07, twenty-second stop): v1, the first version ever promoted, was
    deploying when two people on call rolled it back (`sync rollback`, `registry rollback`); its
    deploy failed and, with no earlier production, removed production. Both rollbacks then ended
    on a traceback (exit 1: the other move, to no version, could not be named); said by hand,
    it read "v1 -> vNone" with a `--version N` hint `sync rollback` has no such flag for. Each
    now names that move and says there is nothing to roll back to: `registry rollback` changes
    nothing (exit 0), `sync rollback` is refused (exit 2: no version to install)."""
    from tests.fixtures.faults import final_error_line

    env = deploy_env
    host = env.add_host("file")
    bad = env.register("golden_edited")             # its smoke test fails: the version is blamed
    env.promote(bad)
    deploy = paused_deploy(env.env, "after:publish").wait_paused()
    sync_rb, registry_rb = (paused_deploy(env.env, "rollback:after_read", "--reason", "v1 is wrong", "--actor", who,
                                          *extra, command=(cmd, "rollback")).wait_paused()
                            for who, cmd, extra in (("bob", "sync", ("--json",)), ("dave", "registry", ())))
    d = deploy.finish()
    assert d.returncode == 3 and "production removed" in d.stderr, d.stderr[-3000:]
    assert env.production() is None
    (row,) = env.ledger(("rollback",))
    assert row.to_version is None and row.details.get("automatic")
    moved = f"automatic rollback after the deploy of v{bad} failed, by {row.actor}, ledger #{row.id}"
    r = sync_rb.finish()
    line = final_error_line(r.stderr)
    assert r.returncode == 2 and line == (
        f"error: production of '{env.model}' already moved off v{bad} ({moved}) after this rollback read it, "
        f"and no version holds it now (none did before v{bad}): there is nothing to roll back to; nothing was "
        f"changed: `mlops sync status` shows the hosts; promote a working version (`mlops registry promote "
        f"--version N`), then `mlops sync deploy` installs it"), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert doc["deploy"] is None and doc["error"] == line.removeprefix("error: ") and doc["served_version"] is None
    assert doc["registry"]["to_version"] is None and doc["registry"]["details"]["already_moved"] == row.id
    r = registry_rb.finish()
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == (
        f"'{env.model}': production already moved off v{bad} ({moved}) after this rollback read it, and no "
        f"version holds it now (none did before v{bad}); nothing changed: promote a working version with "
        f"`mlops registry promote --version N`"), r.stdout
    assert [e.id for e in env.ledger(("rollback",))] == [row.id] and env.production() is None
    assert env.states(host) == {}


def test_a_rollback_another_rollback_superseded_names_that_rollback(deploy_env, tmp_path):
    """Found by review (2026-12-07, twenty-second stop): `sync rollback` moved production v3 -> v2,
    then its deploy waited for a host's lock; meanwhile someone ran `registry rollback` (v2 -> v1).
    The deploy, which deploys what production names once it holds the locks, served v1, and the
    note said "production moved to v1 (another promotion)": it was a rollback. It names the move
    as the ledger has it, who made it and its row, in the text and in `--json` (`superseded_by`)."""
    import time

    from serving_sync.lock import HostLock
    from serving_sync.transports.local import LocalTransport

    env = deploy_env
    (h1,), v1, v2 = deployed_v1_v2(env, hosts=1)
    v3 = env.register("c")
    env.promote(v3)
    assert env.deploy().status == "deployed"
    other = HostLock(LocalTransport(h1.base), purpose="deploy")
    other.acquire()                                     # another deploy holds the host
    errors, out = tmp_path / "stderr", tmp_path / "stdout"
    try:
        with errors.open("w") as err_file, out.open("w") as out_file:
            proc = subprocess.Popen([sys.executable, "-m", "mlops", "sync", "rollback", "--reason", "v3 is slow",
                                     "--actor", "bob", "--lock-wait", "120"], cwd=REPO,
                                    env={**os.environ, **env.env}, stdout=out_file, stderr=err_file, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and "waiting up to" not in errors.read_text():
                time.sleep(0.05)
            assert "waiting up to" in errors.read_text(), errors.read_text()[-3000:]
            assert env.production() == v2                # bob's rollback moved the registry; no host has
            r = env.cli("registry", "rollback", "--reason", "v2 is wrong too", "--actor", "erin")
            assert r.returncode == 0, r.stderr
            assert env.production() == v1
            other.release()
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    finally:
        other.release()
    err, printed = errors.read_text(), out.read_text()
    assert proc.returncode == 0, err[-3000:]
    (row,) = [e for e in env.ledger(("rollback",)) if e.actor == "erin"]
    assert (f"note: production moved to v{v1} (rollback by erin, ledger #{row.id}) while this rollback to v{v2} "
            f"deployed; the hosts serve v{v1}, what production names now") in printed, printed
    env.serves(h1, v1)
