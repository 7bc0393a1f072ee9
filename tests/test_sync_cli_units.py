"""Fast tests of what the `mlops sync` handlers call, without hosts or a registry: the rollback
flow (``serving_sync.rollback``), fleet status and smoke results, the infra-validate verdict, and
the plan text (``mlops.commands.sync_text``). The real CLI runs in test_sync_cli.py."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from mlops.commands import sync_text
from mlops_common.errors import ConfigError, DeployFailed
from registry.provenance import Provenance
from serving_sync import fleet, fleet_plan, infra, smoke_hosts, status
from serving_sync import rollback as rb
from serving_sync.errors import SmokeFailed
from serving_sync.smoke import Check, SmokeReport


# --- rollback: registry move, deploy, tags ------------------------------------------------------
class _Promo:
    def __init__(self, calls, from_version=3, to_version=2):
        self.calls, self.from_version, self.to_version = calls, from_version, to_version
        self.ledger_id, self.reason, self.moved = 17, "slow", from_version != to_version
        self.details = {}

    def finish(self):
        self.calls.append("finish")

    def to_dict(self):
        return {"to_version": self.to_version}


@pytest.fixture
def registry_calls(monkeypatch):
    from registry import deploys, promotion, versions

    calls = []
    monkeypatch.setattr(versions, "production_version", lambda model: 3)     # what the rollback read
    monkeypatch.setattr(promotion, "rollback", lambda model, **kw: calls.append(("rollback", kw)) or _Promo(calls))
    monkeypatch.setattr(deploys, "tag", lambda *a: calls.append(("tag",) + a))
    monkeypatch.setattr(deploys, "newest_move", lambda model: None)       # the ledger names no move
    return calls


def _deployed(switch=0.012, answered=10.5):
    result = fleet.FleetResult("m", 2, "production", "deployed", message="deployed")
    result.hosts = [NS(host="h", switch_seconds=switch, answered_at=answered, to_dict=lambda: {"host": "h"})]
    return result


def test_rollback_moves_the_registry_then_deploys_then_writes_the_tags(registry_calls, monkeypatch):
    def deploy(model, hosts, **kw):
        registry_calls.append(("deploy", kw))
        return _deployed()

    monkeypatch.setattr(fleet, "deploy", deploy)
    moved = []
    by = Provenance("oncall")
    out = rb.rollback_and_deploy("m", ["h"], provenance=by, reason="slow", started=10.0, on_moved=moved.append)
    # the version rolled back from is tagged by the deploy that restored v2 (fleet._tag_rolled_back,
    # tests/test_sync_cli.py), as after `registry rollback` + `sync deploy`: not a second time here
    assert [c if isinstance(c, str) else c[0] for c in registry_calls] == ["rollback", "deploy", "finish"]
    assert callable(registry_calls[0][1].pop("check_target"))   # the version picked is installable first
    assert registry_calls[0][1] == {"to": None, "reason": "slow", "provenance": by, "force": False,
                                  "defer_tags": True, "unrolled_ok": False, "read_from": 3}
    assert registry_calls[1][1]["reason"] == "slow"          # the ledger's reason goes to the deploy rows
    assert registry_calls[1][1]["provenance"] is by          # and who rolled back, to every row it writes
    assert moved and moved[0].to_version == 2
    assert out.seconds_to_old_outputs == 0.5 and out.switch_seconds == 0.012
    doc = out.to_dict()
    assert doc["registry"] == {"to_version": 2} and doc["deploy"]["status"] == "deployed"
    assert set(doc) == {"registry", "deploy", "served_version", "superseded", "superseded_by",
                        "seconds_to_old_outputs", "switch_seconds", "seconds", "error"}
    assert doc["served_version"] == 2 and doc["superseded"] is False and doc["error"] is None
    assert doc["superseded_by"] is None


def test_a_rollback_overtaken_by_another_promotion_says_what_the_hosts_serve(registry_calls, monkeypatch, capsys):
    """Someone promoted v5 while the rollback to v2 deployed: the deploy serves what production
    names once it holds the locks (v5). The command must not claim v2's outputs answered."""
    def deploy(model, hosts, **kw):
        result = _deployed()
        result.version = 5
        result.hosts[0].__dict__.update(status="deployed", publish=None, retention=None, notes=[])
        return result

    monkeypatch.setattr(fleet, "deploy", deploy)
    out = rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), started=10.0)
    assert out.superseded and out.to_dict()["served_version"] == 5
    sync_text.rollback(out)
    printed = capsys.readouterr().out
    assert "production moved to v5 (another move) while this rollback to v2 deployed" in printed
    assert "v2's outputs answered" not in printed
    assert [c[:4] for c in registry_calls if c[0] == "tag"] == [("tag", "m", 3, "rolled_back")]  # rolled back from


@pytest.mark.parametrize("action, details, said", [
    ("promote", {}, "promote by alice, ledger #21"),
    ("rollback", {}, "rollback by alice, ledger #21"),
    ("rollback", {"automatic": True, "after_failed_deploy": 6},
     "automatic rollback after the deploy of v6 failed, by alice, ledger #21"),
])
def test_a_superseded_rollback_names_the_move_that_superseded_it(registry_calls, monkeypatch, capsys,
                                                                   action, details, said):
    """Found by review (2026-12-07, twenty-second stop): the note said "(another promotion)" whatever
    moved production, a person's rollback or a failed deploy's revert too; it names the ledger's move."""
    import datetime

    from registry import deploys
    from registry.ledger import Entry

    def deploy(model, hosts, **kw):
        result = _deployed()
        result.version = 5
        result.hosts[0].__dict__.update(status="deployed", publish=None, retention=None, notes=[])
        return result

    row = Entry(action=action, model="m", outcome="ok", from_version=6, to_version=5, actor="alice", id=21,
                at=datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc), details=details)
    monkeypatch.setattr(fleet, "deploy", deploy)
    monkeypatch.setattr(deploys, "newest_move", lambda model: row)
    out = rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), started=10.0)
    sync_text.rollback(out)
    assert (f"note: production moved to v5 ({said}) while this rollback to v2 deployed; the hosts serve v5, "
            f"what production names now") in capsys.readouterr().out
    doc = out.to_dict()["superseded_by"]
    assert (doc["action"], doc["actor"], doc["ledger_id"], doc["to_version"]) == (action, "alice", 21, 5)


def test_a_rollback_whose_tags_fail_after_the_switch_still_gives_its_document(registry_calls, monkeypatch):
    """Found by review (2026-12-07, twenty-second stop): the hosts switched to v2, then MLflow refused
    the version tags (``Promotion.finish``): the error line said to run `registry reconcile`, but
    `--json` printed nothing, though the hosts had changed (a failure once the registry moved gives
    the rollback's document, ``error`` its line). It now carries the deploy, as on success."""
    from mlops_common.errors import UserError

    def refuse():
        registry_calls.append("finish")
        raise UserError("production of 'm' is v2 (ledger #17), but the version tags ... could not be written")

    promo = _Promo(registry_calls)
    promo.finish = refuse
    from registry import promotion

    monkeypatch.setattr(promotion, "rollback", lambda model, **kw: promo)
    monkeypatch.setattr(fleet, "deploy", lambda model, hosts, **kw: _deployed())
    with pytest.raises(UserError) as e:
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), started=10.0)
    doc = e.value.rollback.to_dict()
    assert doc["deploy"]["status"] == "deployed" and doc["served_version"] == 2, doc
    assert doc["error"] == e.value.message and doc["seconds_to_old_outputs"] == 0.5


def test_a_rollback_overtaken_by_promoting_the_same_version_again_does_not_tag_it_rolled_back(
        registry_calls, monkeypatch):
    def deploy(model, hosts, **kw):
        result = _deployed()
        result.version = 3                       # v3 promoted again meanwhile: it serves
        return result

    monkeypatch.setattr(fleet, "deploy", deploy)
    out = rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), started=10.0)
    assert out.superseded and out.to_dict()["served_version"] == 3
    assert not any(isinstance(c, tuple) and c[0] == "tag" for c in registry_calls)


def test_a_failed_rollback_deploy_still_writes_the_version_tags_and_raises_its_own_error(registry_calls,
                                                                                          monkeypatch):
    def fail(model, hosts, **kw):
        raise DeployFailed("host h: smoke test failed")

    monkeypatch.setattr(fleet, "deploy", fail)
    with pytest.raises(DeployFailed, match="smoke test failed"):
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"))
    assert registry_calls[-1] == "finish" and not any(c[0] == "tag" for c in registry_calls if isinstance(c, tuple))


@pytest.mark.parametrize("in_rollout", [False, True])
def test_a_stopped_rollback_is_told_apart_by_where_the_deploy_stopped_not_by_its_wording(registry_calls,
                                                                                      monkeypatch, in_rollout):
    """``_stopped_before_the_hosts`` told a stop inside the rollout (its message already says what
    was put back and where production stands) from one before it by ``startswith("deploy of")``:
    a reworded message would have been said twice, or the hint lost. It reads the field now."""
    from serving_sync.cancel import DeployInterrupted

    said = "deploy of v2 stopped: interrupted (SIGTERM)" if not in_rollout else "interrupted (SIGTERM); put back h"

    def stopped(model, hosts, **kw):
        exc = DeployInterrupted(said)
        exc.in_rollout = in_rollout
        raise exc

    monkeypatch.setattr(fleet, "deploy", stopped)
    with pytest.raises(DeployInterrupted) as raised:
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"))
    if in_rollout:
        assert raised.value.message == said                 # said once, as the rollout's failure path wrote it
    else:
        assert raised.value.message == (f"{said} before the deploy changed any host; production is v2 in the "
                                        f"registry now (rolled back from v3): `mlops sync deploy` installs v2 on "
                                        f"the hosts")
    assert registry_calls[-1] == "finish"


# --- status and smoke results -------------------------------------------------------------------
def test_fleet_status_reads_production_once_and_is_in_sync_only_when_every_host_is(monkeypatch):
    from registry import versions

    monkeypatch.setattr(versions, "production_version", lambda model: 4)
    seen = []

    def host_status(host, model, production, **kw):
        seen.append((host, production))
        return status.HostStatus(host, "u", "t", True, drift=[] if host == "a" else ["stable -> v3"])

    monkeypatch.setattr(status, "host_status", host_status)
    fs = status.fleet_status("m", ["a", "b"])
    assert seen == [("a", 4), ("b", 4)] and not fs.in_sync
    assert fs.to_dict()["production"] == 4 and [h["in_sync"] for h in fs.to_dict()["hosts"]] == [True, False]
    assert status.fleet_status("m", ["a"]).in_sync


def test_every_sync_commands_json_names_a_host_host():
    """`sync plan`, `deploy`, `smoke` and `rollback` name each host ``host`` in ``--json``; `sync
    status` named it ``name`` only, so one script reading all of them failed on status (found by
    review, 2026-12-07, nineteenth stop). ``name`` stays for the scripts that read it."""
    from serving_sync.host_run import HostOutcome
    from serving_sync.plan import HostPlan, MainTarget

    st = status.HostStatus("h1", "u", "t", True).to_dict()
    assert st["host"] == st["name"] == "h1"
    assert HostPlan("h1", "m", 2, 1, MainTarget((2,)), None, ()).to_dict()["host"] == "h1"
    assert HostOutcome("h1", "deployed", 1, 2).to_dict()["host"] == "h1"
    assert SmokeReport("h1", "m", "m/labels/stable", 2, []).to_dict()["host"] == "h1"


def test_smoke_without_production_or_version_is_one_line(monkeypatch):
    from registry import versions

    monkeypatch.setattr(versions, "production_version", lambda model: None)
    with pytest.raises(ConfigError, match="no version of 'm' holds production; pass --version N"):
        smoke_hosts.smoke_fleet("m", [])


def test_smoke_result_names_every_failed_host():
    bad = SmokeReport("h1", "m", "m/labels/stable", 2, [Check("outputs", False, "max diff 0.3")])
    good = SmokeReport("h2", "m", "m/labels/stable", 2, [Check("label", True, "ok")])
    sm = smoke_hosts.FleetSmoke("m", 2, "stable", [bad, good])
    assert sm.to_dict()["passed"] is False and len(sm.to_dict()["hosts"]) == 2
    with pytest.raises(SmokeFailed) as e:
        sm.raise_if_failed()
    assert e.value.message == "smoke test failed on h1 (outputs: max diff 0.3)"
    smoke_hosts.FleetSmoke("m", 2, "stable", [good]).raise_if_failed()


# --- infra-validate -------------------------------------------------------------------------------
def test_infra_result_raises_only_when_it_failed():
    infra.InfraResult("m", 3, "local", passed=True).raise_if_failed()
    with pytest.raises(SmokeFailed) as e:
        infra.InfraResult("m", 3, "docker", passed=False, error="load: timed out").raise_if_failed()
    assert e.value.message == "infra validation of v3 of 'm' failed in docker TF Serving: load: timed out"


# --- plan text ----------------------------------------------------------------------------------
def test_plan_text_shows_the_hosts_not_observed_then_the_rollout_then_each_host(capsys):
    """Found by review (seventeenth stop): the hosts a plan could not observe were printed last,
    below a rollout that leaves them out, and the plan read as the whole fleet's."""
    step = lambda phase, text: NS(kind=NS(phase=phase), text=text)  # noqa: E731
    fp = NS(source="production", version=3, restore=None,
            errors={"h9": "unreachable", "h10": "h10: the host key changed"},
            rollout={"canary": ["h1"], "waves": [["h1"], ["h2"]]},
            bake={"parallel": 8, "seconds": 0, "each_wave": False, "fast": False, "limits": {}},
            peak={"h1": {"bytes": 2_500_000, "copies": [2, 3]}},
            plans=[NS(host="h1", current=2, up_to_date=False, retention=[1], notes=["up to date", "warm"],
                      steps=[step("prepare", "publish v3"), step("switch", "label stable -> v3")]),
                   NS(host="h2", current=3, up_to_date=True, steps=[], retention=[], notes=["up to date"])])
    sync_text.plan("m", fp)
    assert capsys.readouterr().out.splitlines() == [
        "plan for v3 of 'm' (production):",
        "  2 hosts cannot be observed, left out of the rollout below; `mlops sync deploy` refuses until every "
        "host can be:",
        "  h9: cannot observe: unreachable",
        "  h10: cannot observe: the host key changed",      # the host named once
        "  phase 1, prepare: 2 hosts, 2 at a time (publish, validation entry, smoke test; nothing that serves "
        "changes)",
        "  phase 2, switch: canary h1; no bake (--bake 0)",
        "  phase 2, switch: wave 1: h2",
        "  memory: the validation copy is unloaded before the main entry loads the version",
        "  h1 (serves v2): 2 steps; peak model memory 2.5 MB (1.2 x SavedModel size of v2 + v3)",
        "    prepare:",
        "    1. publish v3",
        "    switch:",
        "    2. label stable -> v3",
        "    then retention removes v1",
        "    note: warm",
        "  h2 (serves v3): up to date, nothing to do",
    ]


def test_plan_text_says_a_restore_switches_every_host_at_once():
    fp = NS(restore={"rolled_back_from": 4, "reason": "v4 slow"}, rollout={"canary": [], "waves": [["h1", "h2"]]},
            bake={"parallel": 8, "seconds": 0, "each_wave": False, "fast": False, "limits": {}})
    assert sync_text.rollout_lines(fp)[1:3] == [
        "restore: production was rolled back from v4 to this version, which held it before: every host "
        "switches at once, no bake (--canary, --wave or --bake stage it)",
        "phase 2, switch: wave 1: h1, h2"]


def _bake(**kw):
    limits = {"max_error_rate": 0.01, "max_latency_ratio": 1.5, "min_requests": 50, "on_low_traffic": "pass",
              "min_traffic_ratio": 0.25}
    return {"parallel": 8, "seconds": 30, "requested": 30, "each_wave": False, "fast": False, "limits": limits,
            **kw}


def test_plan_text_tells_bake_limits_waves_and_memory_as_the_deploy_decides():
    """Found by hand mutation (2026-12-05, fifth stop): only the no-bake canary was checked."""
    lines = sync_text.rollout_lines(NS(restore=None, bake=_bake(each_wave=True, fast=True),
                                       rollout={"canary": ["h1"], "waves": [["h1"], ["h2"], ["h3"]]}))
    assert lines[1:] == [
        "phase 2, switch: canary h1; bake 30s on TF Serving's metrics (error rate +1% max, p95/p99 x1.5 max, "
        "traffic 25% of the baselines' min, fewer than 50 requests: pass unless its "
        "errors are beyond chance)",
        "phase 2, switch: wave 1: h2; bake 30s",
        "phase 2, switch: wave 2: h3",                   # the last wave: no host left to protect
        "memory: --fast: the validation copy stays loaded until the switch (two copies of the new version "
        "for a moment)"]
    # a canary with no host after it is not baked (rollout.Shape.bakeable)
    alone = sync_text.rollout_lines(NS(restore=None, bake=_bake(), rollout={"canary": ["h1"], "waves": [["h1"]]}))
    assert alone[1:3] == ["no canary (one host changes): --bake 30s not used", "phase 2, switch: wave 1: h1"]
    flat = sync_text.rollout_lines(NS(restore=None, bake=_bake(), rollout={"canary": [], "waves": [["h1", "h2"]]}))
    assert flat[1] == "no canary (--canary 0): --bake 30s not used"
    unasked = sync_text.rollout_lines(NS(restore=None, bake=_bake(requested=0, seconds=0),
                                         rollout={"canary": [], "waves": [["h1", "h2"]]}))
    assert not any("not used" in line for line in unasked)
    # a rollout that resumes one nothing judged: its last host is the canary, baked (ninth stop)
    resumed = sync_text.rollout_lines(NS(restore=None, bake=_bake(), version=4,
                                         rollout={"canary": ["h2"], "waves": [["h2"]], "unjudged": ["h1"]}))
    assert resumed[1:3] == [
        "resume: v4 already serves on h1 from a rollout nothing judged (a deploy stopped before its canary's "
        "verdict): the canary below is its verdict",
        "phase 2, switch: canary h2; bake 30s on TF Serving's metrics (error rate +1% max, p95/p99 x1.5 max, "
        "traffic 25% of the baselines' min, fewer than 50 requests: pass unless its "
        "errors are beyond chance)"]


def test_deploy_text_says_what_retention_removed_dead_uploads_too(capsys):
    """An ``s3://`` host's retention removing only folders without ``saved_model.pb``
    (``remove_partials``) printed nothing, though `sync plan` says the deploy removes them (found by
    review, 2026-12-07, nineteenth stop)."""
    gone = {"remove_versions": [], "remove_uploads": [], "remove_partials": [6]}
    host = NS(host="h1", status="deployed", publish=None, switch_seconds=None, retention=gone, notes=[])
    sync_text.deploy(NS(message="deployed v4", hosts=[host]))
    assert capsys.readouterr().out.splitlines() == ["deployed v4", "  h1: deployed (removed dead uploads [6])"]


def test_deploy_and_status_text_show_drift_and_leave_out_up_to_date_notes(capsys):
    host = NS(host="h1", status="up_to_date", publish=None, switch_seconds=None, retention={},
              notes=["up to date", "warm"])
    sync_text.deploy(NS(message="v3 of 'm' is on every host", hosts=[host]))
    up_to_date = NS(host="h2", current=3, up_to_date=True, steps=[], retention=[1], notes=[])
    sync_text._host_plan(up_to_date, {})              # an up-to-date host runs no retention
    hosts = [NS(name="h1", reachable=True, versions={3: "AVAILABLE"}, labels={"stable": 3}, unversioned=3,
                in_sync=False, drift=["serves v3, production is v4"], lock="another deploy holds the lock (...)"),
             NS(name="h2", reachable=False, error="connection refused"),
             NS(name="h3", reachable=False, error="h3: the host key changed")]
    sync_text.status(NS(model="m", production=4, hosts=hosts))
    assert capsys.readouterr().out.splitlines() == [
        "v3 of 'm' is on every host", "  h1: up to date (warm)",
        "  h2 (serves v3): up to date, nothing to do",
        "'m': production is v4",
        "  h1: stable -> v3, unversioned -> v3 (v3 AVAILABLE): DRIFT: serves v3, production is v4",
        "    lock: another deploy holds the lock (...)",      # the drift is a deploy's work under way
        "  h2: CANNOT OBSERVE: connection refused",      # any failure, not only the network's
        "  h3: CANNOT OBSERVE: the host key changed"]


def test_junit_reports_parse_whatever_a_check_message_holds(tmp_path):
    """A message carrying control characters (TF Serving's error text echoing a request's bytes)
    was written as it was: the XML did not parse and CircleCI's Tests tab showed nothing."""
    import xml.etree.ElementTree as ET

    from mlops_common import junit

    odd = "signature \x07\x1b[31m not found \udcff \x00 end"
    path = junit.write(tmp_path / "r.xml", "infra-validate.m\x01.v1",
                       [junit.Case("signature\x0b", False, odd), junit.Case("latency", True, "ok \x1f")])
    root = ET.parse(path).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1" and root.get("name") == "infra-validate.m?.v1"
    failure = root.find("testcase/failure")
    assert failure.get("message") == "signature ??[31m not found ? ? end" == failure.text


def test_check_messages_from_hosts_are_printed_with_control_characters_shown(capsys):
    """A smoke check's message carries TF Serving's own error text; the printers wrote it to
    stdout as sent, ESC sequences included (found by review, 2026-12-05, fourth stop)."""
    from serving_sync.smoke import Check, SmokeReport

    hostile = "Servable not found\x1b[2J\x1b]0;owned\x07\nnext"
    sync_text.smoke([SmokeReport("web-1", "m", "m/versions/3", 3, [Check("golden", False, hostile)])])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 1, out
    assert "web-1: FAILED via m/versions/3: golden: Servable not found\\x1b[2J\\x1b]0;owned\\x07\\x0anext" in out


def test_status_drift_names_a_main_entry_that_serves_from_another_folder():
    """A main entry whose base_path is not the folder deploys publish into (edited by hand to serve a
    copy elsewhere) was "in sync" for `sync status` (exit 0) while `sync plan` and `sync watch`
    called the host out of date and replaced the entry: what TF Serving serves there is not what was
    published and smoke-tested on the host (found by review, 2026-12-05, ninth stop)."""
    from serving_sync.plan import HostObservation

    ours = dict(host="h1", model="m", base_path="/srv/m", main_policy="specific", main_versions=(2,),
                main_labels=(("stable", 2),), main_states={2: "AVAILABLE"}, stable=2, published=(2,),
                verified=(2,))
    assert status.drift(HostObservation(**ours, main_base_path="/srv//m/"), 2) == []
    (reason,) = status.drift(HostObservation(**ours, main_base_path="/tmp/hotfix/m"), 2)
    assert reason == "models.config loads m from /tmp/hotfix/m, not /srv/m where versions are published", reason


def test_status_drift_names_a_models_config_without_the_model_that_tf_serving_serves():
    """models.config with no entry for the model while TF Serving serves it (TF Serving reads another
    config file, or has not applied this one) was "in sync": every check of the file was skipped
    when the entry was absent, though a deploy's config writes could never reach that server
    (found by review, 2026-12-05, ninth stop)."""
    from serving_sync.plan import HostObservation

    served = dict(host="h1", model="m", base_path="/srv/m", main_states={2: "AVAILABLE"}, stable=2,
                  published=(2,), verified=(2,))
    (reason,) = status.drift(HostObservation(**served), 2)
    assert reason == ("models.config has no entry for m, yet TF Serving serves it (TF Serving reads another "
                      "config file, or has not applied this one)"), reason


def _meet(n: int):
    """A call that returns only once ``n`` calls are inside it at once (30 s at most): hosts
    observed one after another never meet, and the barrier breaks."""
    import threading

    barrier = threading.Barrier(n, timeout=30)
    return lambda: barrier.wait()


def test_sync_status_observes_the_hosts_at_once(monkeypatch):
    """``sync status`` observed host after host: in a partition every silent host cost its own
    timeouts, one after the other (found by review, 2026-12-05, ninth stop)."""
    import registry.versions

    meet = _meet(3)
    monkeypatch.setattr(registry.versions, "production_version", lambda model: 2)
    monkeypatch.setattr(status, "host_status", lambda h, model, production, label: (meet(), h.name)[1])
    fs = status.fleet_status("m", [NS(name=f"h{i}") for i in range(3)])
    assert fs.hosts == ["h0", "h1", "h2"]       # in the hosts' order, whichever finished first


def test_sync_plan_observes_the_hosts_at_once_and_keeps_their_order(monkeypatch):
    import contextlib

    from mlops_common.errors import UserError

    meet = _meet(3)

    def observe_and_plan(conns, model, v, opts, rollback_to=None):
        meet()
        (host,) = conns
        if host.name == "h1":
            raise UserError("h1: cannot connect")
        return [NS(obs=None)], [NS(host=host.name, up_to_date=False)]

    monkeypatch.setattr(fleet_plan, "resolve_version", lambda model, version: (3, "production"))
    monkeypatch.setattr(fleet_plan, "connected", contextlib.contextmanager(lambda hosts: (yield list(hosts))))
    monkeypatch.setattr(fleet_plan, "observe_and_plan", observe_and_plan)
    fp = fleet_plan.plan_fleet("m", (NS(name=f"h{i}") for i in range(3)), annotate=False)
    assert [p.host for p in fp.plans] == ["h0", "h2"] and fp.errors == {"h1": "h1: cannot connect"}


@pytest.mark.parametrize("var", ["MLOPS_LOCK_TTL", "MLOPS_STORE_URL_EXPIRY"])
def test_sync_plan_refuses_a_setting_the_deploy_refuses(monkeypatch, var):
    """`sync plan` showed every step for a fleet whose `sync deploy` then refused at once (a bad
    `MLOPS_LOCK_TTL`, or `MLOPS_STORE_URL_EXPIRY` with a store): one line, as the deploy says it,
    before the registry is read (found by review, 2026-12-07, nineteenth stop)."""
    read = []
    monkeypatch.setenv(var, "0")
    monkeypatch.setattr(fleet_plan, "resolve_version", lambda model, version: read.append(model) or (3, "production"))
    hosts = [NS(name="h0", store=NS(url="s3://b/p"), target=NS(scheme="ssh"))]
    with pytest.raises(ConfigError, match=var):
        fleet_plan.plan_fleet("m", hosts)
    assert read == []


# --- --json of a rollout overtaken after its last wave (ProductionMoved.deployed) ----------------
def _overtaken():
    from serving_sync.errors import ProductionMoved

    moved = ProductionMoved("m", 2, 3, tail="the hosts stay on v2, which passed every check here and is "
                                             "recorded deployed; run `mlops sync deploy` to install v3")
    moved.deployed = _deployed()
    moved.deployed.hosts = []
    return moved


def test_deploy_json_prints_the_result_of_a_rollout_overtaken_after_its_last_wave(capsys):
    """Found by review (fifteenth stop): the hosts stay on the version, recorded deployed, exit 2 —
    and `--json` printed nothing, the result being only on ``ProductionMoved.deployed``."""
    import json

    from mlops.commands.sync import _json_on_failure
    from serving_sync.errors import ProductionMoved

    with pytest.raises(ProductionMoved):
        with _json_on_failure(NS(json=True)):
            raise _overtaken()
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "deployed" and doc["version"] == 2


def test_a_rollback_overtaken_after_its_last_wave_keeps_the_deploys_result_for_json(registry_calls, monkeypatch):
    moved = _overtaken()

    def deploy(model, hosts, **kw):
        raise moved

    monkeypatch.setattr(fleet, "deploy", deploy)
    with pytest.raises(Exception) as raised:
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), started=10.0)
    assert "the hosts stay on v2" in str(raised.value)
    assert raised.value.deployed is moved.deployed


@pytest.mark.parametrize("overtaken", [True, False])
def test_a_rollback_overtaken_by_another_promotion_says_where_production_is_not_where_it_was(registry_calls,
                                                                                            monkeypatch, overtaken):
    """Found by review (sixteenth stop): production moved from v2 (rolled back to) to v3 while the
    rollback deployed, and its line went on "; production is v2 in the registry now ...: `mlops sync
    deploy` installs v2", after saying it moved to v3 and that `sync deploy` installs v3; and it was
    a plain UserError, not the ProductionMoved a caller catches. Its own line says what stands."""
    from serving_sync.errors import ProductionMoved

    moved = _overtaken() if overtaken else ProductionMoved("m", 2, 3, tail="nothing was changed or recorded")

    def deploy(model, hosts, **kw):
        raise moved

    monkeypatch.setattr(fleet, "deploy", deploy)
    with pytest.raises(ProductionMoved) as raised:
        rb.rollback_and_deploy("m", ["h"], provenance=Provenance("oncall"), started=10.0)
    assert raised.value.message == moved.message and "production is v2 in the registry now" not in moved.message
    assert raised.value.now == 3 and raised.value.deployed is moved.deployed
    assert registry_calls[-1] == "finish"
