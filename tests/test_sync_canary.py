"""The canary bake against real services: local TF-Serving-compatible servers started with
``--monitoring_config_file`` (TF Serving's Prometheus page), the real MLflow server and ledger.

- a version whose live requests fail for inputs its golden set does not contain: only the canary
  switched, it is put back, production is back, exit 3, a ``canary`` ledger row with the numbers;
- a version much slower under concurrent load whose smoke test passes: the same;
- a version that stalls on live traffic's inputs, so its canary completes few requests: the same
  (it passed as "not enough traffic");
- no traffic: the verdict follows ``--on-low-traffic``;
- a canary whose metrics cannot be read is refused before anything changes.

Fleets of 2 hosts, bakes of 1-2 s; every traffic loop is bounded in count and time.
"""
from __future__ import annotations

import json
import time

import pytest

from registry.ledger import Ledger
from serving_sync.options import DeployOptions
from serving_sync.smoke import SmokeOptions
from tests.lab.models import CANARY_MODELS, build_models
from tests.lab.traffic import HostLoad


@pytest.fixture(scope="module")
def canary_bundles(tmp_path_factory):
    """More versions with the weights of the fixture's "b" (their outputs identify as b's):
    "strict" refuses inputs above 1.5, "slow" answers slowly, "stall" takes 1 s on inputs above
    1.5 (tests/lab/models.py)."""
    return build_models(tmp_path_factory.mktemp("canary-bundles"), CANARY_MODELS)


def _register(env, root, kind: str) -> int:
    """Register ``root/kind`` (validation passed); its outputs are b's."""
    return env.register_bundle(root / kind, kind, like="b", experiment="canary-fixture-versions")


def _canary_rows(env, v):
    return [e for e in Ledger().entries(env.model, actions=("canary",)) if e.to_version == v]


def _first(env, hosts) -> int:
    return env.release("a", opts=DeployOptions(timeout=60, json_mode=True, canary=0))


def _two_hosts_on_a_then_promoted(env, root, kind: str) -> tuple[list, int, int]:
    """Two monitored hosts serving v1 (bundle a), and ``root/kind`` registered as v2 and promoted."""
    hosts = env.add_monitored_hosts(2)
    v1 = _first(env, hosts)
    v2 = _register(env, root, kind)
    env.promote(v2)
    return hosts, v1, v2


def _check_rolled_back(env, hosts, v1, v2, res, what: str, min_requests: int = 20) -> dict:
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    canary, other = hosts
    assert [w["hosts"] for w in doc["waves"]] == [[canary.name]]          # only the canary switched
    verdict = doc["bake"][0]
    assert verdict["host"] == canary.name and verdict["outcome"] == "breached" and what in verdict["line"]
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert f"stopped after the canary: canary {canary.name}: " in last and what in last   # one line, with figures
    assert "rolled back" in last and "production moved back to v" in last
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1
    tags = env.tags(v2)
    assert tags["deploy_status"] == "failed" and tags["deploy_canary"] == "breached"
    rows = _canary_rows(env, v2)
    assert len(rows) == 1 and rows[0].outcome == "failed" and rows[0].host == canary.name
    assert rows[0].details["measurements"]["canary"]["requests"] >= min_requests
    return verdict


def test_canary_error_rate_breach_rolls_back_only_the_canary(deploy_env, canary_bundles):
    env = deploy_env
    hosts, v1, v2 = _two_hosts_on_a_then_promoted(env, canary_bundles, "strict")
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], foreign=True) as load:
        start = time.monotonic()
        res = env.cli("sync", "deploy", "--json", "--bake", "2", "--timeout", "60")
        took = time.monotonic() - start
    verdict = _check_rolled_back(env, hosts, v1, v2, res, "error rate")
    m = verdict["measurements"]
    assert m["canary"]["error_rate"] > 0.1 and m["before"]["error_rate"] == 0 and m["others"]["error_rate"] == 0
    assert load.non_200[hosts[1].name] == []          # the host that never switched never failed a request
    assert load.count > 100 and took < 120


def test_canary_latency_breach_rolls_back_only_the_canary(deploy_env, canary_bundles):
    env = deploy_env
    hosts, v1, v2 = _two_hosts_on_a_then_promoted(env, canary_bundles, "slow")
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], threads=3) as load:
        res = env.cli("sync", "deploy", "--json", "--bake", "3", "--timeout", "60", "--latency-budget-ms", "5000")
    verdict = _check_rolled_back(env, hosts, v1, v2, res, "latency")
    assert verdict["measurements"]["canary"]["error_rate"] == 0
    assert load.non_200[hosts[1].name] == []


def test_a_canary_that_stalls_on_live_traffic_is_rolled_back_not_passed_for_low_traffic(deploy_env, canary_bundles):
    """Found by review (2026-12-05, fourth stop; fixed at the sixth): TF Serving counts a request
    when it finishes, so a version that takes 1 s on every 4th live request completed a handful in
    its bake: "not enough traffic", passed by default, and it rolled out. Its traffic fell against
    its own window before the switch and the old host's: a breach with the figures."""
    env = deploy_env
    hosts, v1, v2 = _two_hosts_on_a_then_promoted(env, canary_bundles, "stall")
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], foreign=True) as load:
        res = env.cli("sync", "deploy", "--json", "--bake", "2", "--timeout", "60")
    verdict = _check_rolled_back(env, hosts, v1, v2, res, "traffic fell below 25%", min_requests=0)
    m = verdict["measurements"]
    assert m["canary"]["requests"] < 20 and m["traffic"]["fell"], m        # the gap: fewer than --min-requests
    assert m["traffic"]["before"] >= 80 and m["traffic"]["others_per_host"] >= 80, m
    n = m["canary"]["requests"]
    assert f"canary {hosts[0].name}: answered {n} request{'' if n == 1 else 's'} in " in verdict["line"]
    assert "before its switch" in verdict["line"] and "on the other host;" in verdict["line"]
    assert load.non_200[hosts[1].name] == [] and load.count > 100


def test_low_traffic_verdict_follows_on_low_traffic(deploy_env):
    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    v1 = _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    res = env.cli("sync", "deploy", "--json", "--bake", "1", "--on-low-traffic", "fail")
    assert res.returncode == 3, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["bake"][0]["outcome"] == "low_traffic_failed"
    assert "not enough traffic" in res.stderr and "--on-low-traffic fail" in res.stderr
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1
    v3 = env.register("c")
    env.promote(v3)
    res = env.cli("sync", "deploy", "--json", "--bake", "1")          # default: pass
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["bake"][0]["outcome"] == "low_traffic_passed" and doc["status"] == "deployed"
    for h in hosts:
        env.serves(h, v3)
    assert env.tags(v3)["deploy_canary"] == "low_traffic_passed"
    assert [r.outcome for r in _canary_rows(env, v3)] == ["passed"]


def test_canary_without_metrics_is_refused_before_anything_changes(deploy_env):
    env = deploy_env
    hosts = env.add_hosts(2, "file")                  # servers without --monitoring_config_file
    v1 = _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    before = [env.config_text(h) for h in hosts]
    res = env.cli("sync", "deploy", "--bake", "1")
    assert res.returncode != 0
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "cannot read TF Serving's metrics" in err[0] and "--bake 0" in err[0]
    assert [env.config_text(h) for h in hosts] == before
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v2                      # refused, not failed: nothing to move back


def test_the_plan_says_the_deploy_refuses_a_canary_without_metrics(deploy_env):
    """`sync plan --bake 1` printed the canary's bake on TF Serving's metrics and exited 0 with
    `deploy_refused` null, while `sync deploy --bake 1` refused at once: the canary's metrics page
    cannot be read (found by review, 2026-12-07, twentieth stop)."""
    env = deploy_env
    hosts = env.add_hosts(2, "file")                  # servers without --monitoring_config_file
    _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    res = env.cli("sync", "plan", "--bake", "1", "--json")
    assert res.returncode == 2, res.stderr          # the deploy would refuse: so does the plan's exit
    planned = json.loads(res.stdout)["deploy_refused"]
    assert planned and planned.startswith(f"canary {hosts[0].name}: cannot read TF Serving's metrics"), planned
    text = env.cli("sync", "plan", "--bake", "1").stdout
    assert f"note: `mlops sync deploy` refuses this before any host changes: {planned}" in text, text
    res = env.cli("sync", "deploy", "--bake", "1")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1] == f"error: {planned}", res.stderr
    ok = env.cli("sync", "plan", "--bake", "0", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["deploy_refused"] is None, ok.stdout + ok.stderr


def test_the_plans_text_leads_with_the_host_the_deploy_stops_at_not_the_bakes_refusal(deploy_env):
    """Found by review (2026-12-07, twenty-second stop): with a host whose TF Serving is down and
    canaries without metrics, `sync plan --bake 1` ended with "`mlops sync deploy` refuses this
    before any host changes: canary ...: cannot read TF Serving's metrics", while the deploy stops
    at the host it cannot observe first (its `--json` said so). The text now leads with what the
    deploy meets first, and no other refusal follows it."""
    from tests.fixtures.faults import final_error_line

    env = deploy_env
    hosts = env.add_hosts(3, "file")                  # servers without --monitoring_config_file
    _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    hosts[2].server.stop()
    res = env.cli("sync", "plan", "--bake", "1", "--json")
    assert res.returncode == 1, res.stderr
    planned = json.loads(res.stdout)["deploy_refused"]
    assert planned and planned.startswith(f"{hosts[2].name}: "), planned
    text = env.cli("sync", "plan", "--bake", "1").stdout.splitlines()
    assert text[1].endswith("`mlops sync deploy` refuses until every host can be:"), text
    assert text[2].startswith(f"  {hosts[2].name}: cannot observe: "), text
    assert not [ln for ln in text if "refuses this" in ln or "metrics" in ln and "cannot" in ln], text
    res = env.cli("sync", "deploy", "--bake", "1")
    assert res.returncode != 0
    assert final_error_line(res.stderr) == f"error: {planned}", (res.stderr, planned)


def test_bake_each_wave_judges_a_later_wave_and_puts_every_switched_host_back(deploy_env, canary_bundles):
    """``--bake-each-wave``: the canary passes (its clients send only inputs the version accepts),
    wave 1's host breaches (its clients also send one it refuses); the canary and wave 1 go back,
    the last host never switched, production is back. Latency is not judged here (ratio 50x)."""
    env = deploy_env
    hosts = env.add_monitored_hosts(3)
    canary, wave1, last = hosts
    v1 = _first(env, hosts)
    v2 = _register(env, canary_bundles, "strict")
    env.promote(v2)
    request = env.bundles.golden("a")["request"]
    with HostLoad([canary, last], env.model, request) as plain, \
            HostLoad([wave1], env.model, request, foreign=True) as mixed:
        res = env.cli("sync", "deploy", "--json", "--bake", "2", "--wave", "1", "--bake-each-wave",
                      "--max-latency-ratio", "50", "--timeout", "60")
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert [w["hosts"] for w in doc["waves"]] == [[canary.name], [wave1.name]]     # the last never switched
    assert [(b["host"], b["outcome"]) for b in doc["bake"]] == [(canary.name, "passed"), (wave1.name, "breached")]
    assert doc["bake"][1]["measurements"]["canary"]["error_rate"] > 0.1
    last_line = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert f"canary {wave1.name}: error rate" in last_line and "rolled back" in last_line
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1 and env.tags(v2)["deploy_status"] == "failed"
    assert [r.outcome for r in _canary_rows(env, v2)] == ["passed", "failed"]
    assert plain.non_200[last.name] == [] and plain.count > 50 and mixed.count > 50


def test_bake_each_wave_refuses_a_judged_wave_host_without_metrics_before_anything_changes(deploy_env):
    """With ``--bake-each-wave`` every wave but the last is judged like the canary, so a host of
    such a wave whose metrics cannot be read is refused before any host is touched (it used to
    switch unjudged, while metrics lost during its bake put the fleet back)."""
    env = deploy_env
    canary = env.add_monitored_hosts(1)[0]
    unmonitored = env.add_hosts(1, "file")[0]          # wave 1: judged, no metrics page
    last = env.add_monitored_hosts(1)[0]
    hosts = [canary, unmonitored, last]
    v1 = _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    before = [env.config_text(h) for h in hosts]
    res = env.cli("sync", "deploy", "--bake", "1", "--wave", "1", "--bake-each-wave")
    assert res.returncode != 0
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1, res.stderr
    assert f"{unmonitored.name}: cannot read TF Serving's metrics" in err[0] and "--bake-each-wave" in err[0]
    assert [env.config_text(h) for h in hosts] == before
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v2


def test_the_deploys_own_smoke_test_through_the_main_entry_is_not_the_canarys_traffic_before(deploy_env):
    """Found by review (2026-12-05, sixth stop): a host whose version is loaded in the main entry but
    not recorded as verified is smoke-tested through the main entry (``smoke_main``) during the
    prepare phase: 1 + --latency-requests predicts that TF Serving counts under the model's name,
    inside the canary's window before its switch. A canary that the load balancer never sends
    traffic to (quiet before, quiet after: not the version's fault) then looked busy before its
    switch, and "traffic fell": rolled back. Those requests are the deploy's, not live traffic."""
    from serving_sync.layout import verified_path

    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    _first(env, hosts)
    v2 = env.release("b", opts=DeployOptions(timeout=60, json_mode=True, canary=0))
    for h in hosts:                       # the records are lost (a host rebuilt from a copy of its base)
        (h.base / verified_path(env.model)).unlink()
    with HostLoad([hosts[1]], env.model, env.bundles.golden("a")["request"]) as load:   # the other host only
        res = env.cli("sync", "deploy", "--json", "--bake", "2", "--timeout", "60", "--latency-requests", "60")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert [s["route"] for s in doc["hosts"][0]["smoke"]][0] == f"{env.model}/versions/{v2}"   # smoke_main ran
    verdict = doc["bake"][0]
    assert verdict["host"] == hosts[0].name and verdict["outcome"] == "low_traffic_passed", verdict["line"]
    m = verdict["measurements"]
    assert m["before"]["own_requests"] >= 61 and m["traffic"]["before"] < 20 and not m["traffic"]["fell"], m
    assert m["traffic"]["others_per_host"] >= 20 and load.count > 20, m
    for h in hosts:
        env.serves(h, v2)



def _loaded_under_the_next_one(env, canary_bundles, hosts, kind: str, then: str) -> tuple[int, int]:
    """v2 = ``kind`` deployed to every host, then v3 = ``then``: every host serves v3 and keeps v2
    loaded in its main entry; the canary's record that v2 passed its smoke test is lost (a host
    rebuilt from a copy of its base), and production is moved back to v2. The next deploy smoke-
    tests v2 on the canary through the main entry (``smoke_main``) while live traffic goes to v3."""
    from serving_sync.layout import verified_path

    opts = DeployOptions(timeout=60, json_mode=True, canary=0, smoke=SmokeOptions(budget_ms=5000))
    v2 = _register(env, canary_bundles, kind)
    env.promote(v2)
    assert env.deploy(opts=opts).status == "deployed"
    v3 = _register(env, canary_bundles, then) if then in ("strict", "slow", "stall") else env.register(then)
    env.promote(v3)
    assert env.deploy(opts=opts).status == "deployed"
    for h in hosts:
        assert env.states(h).get(v2) == "AVAILABLE", env.states(h)       # kept warm under v3
    (hosts[0].base / verified_path(env.model)).unlink()
    env.promote(v2)
    return v2, v3


def _smoke_main_ran(doc, env, v2) -> None:
    assert doc["hosts"][0]["smoke"][0]["route"] == f"{env.model}/versions/{v2}", doc["hosts"][0]["smoke"]


def test_the_deploys_own_smoke_test_does_not_make_the_canarys_error_baseline_stricter(deploy_env, canary_bundles):
    """Found by review (2026-12-05, seventh stop; a known limit until then): the smoke test of a
    version already loaded in the canary's main entry (``smoke_main``) sends 1 + --latency-requests
    predicts through the model's name, every one answered OK, and TF Serving counts them in the
    canary's window before its switch. With live traffic that fails 1 request in 4 on the old and
    the new version alike ("strict" twice: inputs above 1.5 refused), that baseline's error rate
    fell from 25% to a few percent and the identical version was rolled back. The bake now reads
    the canary's page just before and just after that smoke test and leaves that stretch out."""
    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    canary = hosts[0]
    _first(env, hosts)
    v2, v3 = _loaded_under_the_next_one(env, canary_bundles, hosts, "strict", "strict")
    with HostLoad([canary], env.model, env.bundles.golden("a")["request"], foreign=True, pause=0.05) as load:
        res = env.cli("sync", "deploy", "--json", "--bake", "3", "--timeout", "60", "--latency-requests", "200",
                      "--latency-budget-ms", "5000", "--min-requests", "10", "--max-latency-ratio", "50")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    _smoke_main_ran(doc, env, v2)
    verdict = doc["bake"][0]
    assert verdict["host"] == canary.name and verdict["outcome"] == "passed", verdict["line"]
    before = verdict["measurements"]["before"]
    assert before["own_requests"] >= 201 and 10 <= before["requests"] < 150, before
    assert before["error_rate"] > 0.15 and verdict["measurements"]["canary"]["error_rate"] > 0.15, verdict
    for h in hosts:
        env.serves(h, v2)
    assert load.count > 50


def test_the_deploys_own_smoke_test_does_not_make_the_canarys_latency_baseline_more_lenient(deploy_env,
                                                                                            canary_bundles):
    """The same, on latency: "slow" (v2) loaded under a fast v3 on the canary, smoke-tested through
    the main entry, 201 slow predicts in the canary's window before its switch whose live traffic
    v3 answers fast. That baseline's p95, p99 and mean were the slow version's own (its mean 10 ms
    against 1.5-3 ms live in the lab: a limit 1.5x above it let a canary 7x slower than live pass
    up to 15 ms). The baseline now holds live requests only; the slow canary is rolled back against
    it and the old host."""
    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    v1 = _first(env, hosts)
    v2, v3 = _loaded_under_the_next_one(env, canary_bundles, hosts, "slow", "c")
    assert v1 < v2 < v3
    # an 8 s bake, and so an 8 s window before the switch: a loaded CI run saw 9 live requests in 5 s,
    # under --min-requests, and that baseline was then not used
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], pause=0.1):
        res = env.cli("sync", "deploy", "--json", "--bake", "8", "--timeout", "60", "--latency-requests", "200",
                      "--latency-budget-ms", "5000", "--min-requests", "10")
    doc = json.loads(res.stdout)
    _smoke_main_ran(doc, env, v2)
    verdict = _check_rolled_back(env, hosts, v3, v2, res, "latency", min_requests=10)
    m = verdict["measurements"]
    # live requests only: the 201 of its own are left out
    assert m["before"]["own_requests"] >= 201 and 10 <= m["before"]["requests"] < 150, m["before"]
    assert "ms before" in verdict["line"], verdict["line"]        # judged against it too


def test_the_canarys_window_before_its_switch_leaves_out_the_deploys_prepare_on_it(deploy_env, canary_bundles,
                                                                                   paused_deploy):
    """Found by review (2026-12-07, twentieth stop): the canary's "before" window ran from the first
    read to its switch, across the deploy's prepare on that host — the validation copy's load,
    warmup and smoke test beside the live model — so what the host's live traffic met while the
    deploy worked there was its baseline. Here the deploy is held in the canary's prepare (after
    its validation load) while the canary's live traffic fails 600 requests: with that in its
    "before" window the limit became that rate + 1%, and "strict", failing 1 live request in 4,
    passed and rolled out. The window now leaves the canary's whole prepare out (its page read
    just before the first prepare step and just after the last), waits for --bake seconds of live
    traffic outside it, and the canary is rolled back against 0% before and on the other host."""
    import requests

    env = deploy_env
    hosts, v1, v2 = _two_hosts_on_a_then_promoted(env, canary_bundles, "strict")
    canary = hosts[0]
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], foreign=True) as load:
        held = paused_deploy(env.env, "after:load_validation", "--json", "--bake", "2", "--timeout", "60",
                             "--parallel", "1").wait_paused()          # the canary prepares first
        url = f"{canary.rest_url}/v1/models/{env.model}:predict"
        with requests.Session() as http:
            failed = sum(http.post(url, data=b"{not json", timeout=10).status_code == 400 for _ in range(600))
        res = held.finish(timeout=240)
    assert failed == 600
    verdict = _check_rolled_back(env, hosts, v1, v2, res, "error rate")
    before = verdict["measurements"]["before"]
    assert before["error_rate"] == 0 and before["own_requests"] >= 600 and before["requests"] >= 20, before
    assert before["seconds"] >= 2 * 0.9, before          # --bake seconds of live traffic outside the prepare
    assert load.non_200[hosts[1].name] == [] and load.count > 100


def _canary_switched_then_killed(env, canary_bundles, paused_deploy) -> tuple[list, int, int]:
    """Two hosts on v1; v2 ("strict") promoted; a deploy of it SIGKILLed once its canary (the first
    host) switched, before its verdict: the first host serves v2, the second v1, no row says so."""
    hosts, v1, v2 = _two_hosts_on_a_then_promoted(env, canary_bundles, "strict")
    paused_deploy(env.env, "after:switch", "--bake", "1", "--timeout", "60").wait_paused().kill()
    env.serves(hosts[0], v2)
    env.serves(hosts[1], v1)
    return hosts, v1, v2


def test_a_rerun_after_a_canary_nothing_judged_bakes_the_last_host_and_rolls_it_back(deploy_env, canary_bundles,
                                                                                     paused_deploy):
    """Found by review (2026-12-05, ninth stop): a deploy killed after its canary switched and
    before the verdict left v2 on one host of two. The rerun (a restarted watcher, a CI retry)
    saw one host to change, so no canary and no bake ("no canary (one host changes)"), and a
    version whose live traffic fails reached the whole fleet unjudged. Now the last host is its
    canary, judged against its own window before the switch, before any row says the fleet
    served v2; a breach puts it back and moves production back, and the next deploy of
    production puts back the host the killed deploy left."""
    env = deploy_env
    hosts, v1, v2 = _canary_switched_then_killed(env, canary_bundles, paused_deploy)
    first, last = hosts
    with HostLoad(hosts, env.model, env.bundles.golden("a")["request"], foreign=True) as load:
        res = env.cli("sync", "deploy", "--json", "--bake", "2", "--timeout", "60")
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["rollout"] == {"canary": [last.name], "waves": [[last.name]], "unjudged": [first.name]}
    (verdict,) = doc["bake"]
    assert verdict["host"] == last.name and verdict["outcome"] == "breached" and "error rate" in verdict["line"]
    assert verdict["measurements"]["before"]["error_rate"] == 0 and verdict["measurements"]["others"] is None
    assert "judged before the rollout is recorded" in res.stderr
    env.serves(last, v1)
    assert env.production() == v1 and env.tags(v2)["deploy_status"] == "failed"
    assert [(r.host, r.outcome) for r in _canary_rows(env, v2)] == [(last.name, "failed")]
    assert load.count > 50
    res = env.cli("sync", "deploy", "--json", "--timeout", "60")      # production (v1) everywhere again
    assert res.returncode == 0, res.stderr[-3000:]
    for h in hosts:
        env.serves(h, v1)


def test_a_later_wave_failure_keeps_the_canarys_verdict_on_the_version(deploy_env, paused_deploy):
    """The canary was judged (here: no traffic, passed by default) and a host of the next wave
    failed its load: the version's ``deploy_canary`` tag said ``none``, which the tag's contract
    keeps for a deploy that had no canary."""
    import shutil

    env = deploy_env
    hosts = env.add_monitored_hosts(2)
    v1 = _first(env, hosts)
    v2 = env.register("b")
    env.promote(v2)
    deploy = paused_deploy(env.env, "after:verify", "--bake", "1", "--timeout", "8", "--json").wait_paused()
    shutil.rmtree(hosts[1].base / env.model / str(v2))      # prepared there; its main-entry load now fails
    res = deploy.finish(timeout=240)
    assert res.returncode == 3, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["bake"][0]["host"] == hosts[0].name and doc["bake"][0]["outcome"] == "low_traffic_passed"
    for h in hosts:
        env.serves(h, v1)
    assert env.production() == v1
    tags = env.tags(v2)
    assert tags["deploy_status"] == "failed" and hosts[1].name in tags["deploy_reason"]
    assert tags["deploy_canary"] == "low_traffic_passed", tags


def test_a_rollout_killed_during_its_resumed_bake_is_not_recorded_deployed_unjudged(deploy_env, canary_bundles,
                                                                                     paused_deploy):
    """Found by review (2026-12-05, ninth stop): the resumed rollout's canary is the last host, so
    a deploy killed during its bake (after its switch, before its verdict) left every host on v2
    with no row. The next run took the "up to date" path and recorded v2 ``deployed`` (late
    ``deploy ok`` rows) though no canary ever judged it. With a bake asked, it now says so and
    records nothing; `--bake 0` (no verdict asked) records it as it is."""
    env = deploy_env
    hosts, v1, v2 = _canary_switched_then_killed(env, canary_bundles, paused_deploy)
    paused_deploy(env.env, "after:switch", "--bake", "1", "--timeout", "60").wait_paused().kill()
    for h in hosts:                                  # the resumed canary switched; no verdict, no row
        env.serves(h, v2)
    assert not _canary_rows(env, v2)
    res = env.cli("sync", "deploy", "--json", "--bake", "2", "--timeout", "60")
    assert res.returncode == 0, res.stderr[-3000:]
    assert env.tags(v2).get("deploy_status") in (None, "none")
    assert not [e for e in env.ledger(("deploy",)) if e.to_version == v2 and e.outcome == "ok"]
    doc = json.loads(res.stdout)
    assert doc["status"] == "up_to_date" and "not recorded as deployed" in doc["message"], doc["message"]
    assert "--bake 0" in doc["message"] and "sync rollback" in doc["message"]
    res = env.cli("sync", "deploy", "--json", "--bake", "0", "--timeout", "60")     # accepted as it is
    assert res.returncode == 0, res.stderr[-3000:]
    assert env.tags(v2)["deploy_status"] == "deployed"
    assert len([e for e in env.ledger(("deploy",)) if e.to_version == v2 and e.outcome == "ok"]) == 2
