"""Fleet rollout decisions as pure functions, fast: the rollout's shape (canary, waves), the plan's
two phases and memory order, the bake's parsing of TF Serving's Prometheus page and its verdicts,
and the one "previous production" rule."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from mlops_common.errors import ConfigError, UserError
from registry.ledger import Entry
from registry.promotion_rules import previous_production
from serving_sync import bake, bake_stats, metrics_windows, rollout
from serving_sync.plan import AVAILABLE, HostObservation, Phase, StepKind, plan_host

M = "digits"


# --- rollout shape -------------------------------------------------------------------------
def test_default_shape_is_one_canary_then_everything_else_in_one_wave():
    s = rollout.shape(["a", "b", "c", "d"])
    assert s.canary == ("a",) and s.waves == (("a",), ("b", "c", "d"))


def test_single_host_has_no_canary():
    assert rollout.shape(["a"]) == rollout.Shape((), (("a",),))
    assert rollout.shape([]) == rollout.Shape((), ())


@pytest.mark.parametrize("wave,expected", [
    ("2", (("a",), ("b", "c"), ("d", "e"), ("f",))),
    ("50%", (("a",), ("b", "c", "d"), ("e", "f"))),
    ("1%", (("a",), ("b",), ("c",), ("d",), ("e",), ("f",))),
    ("100%", (("a",), ("b", "c", "d", "e", "f"))),
])
def test_waves_by_count_or_percentage_of_the_hosts_after_the_canary(wave, expected):
    assert rollout.shape(list("abcdef"), wave=wave).waves == expected


def test_canary_zero_and_two():
    assert rollout.shape(list("abc"), canary=0).waves == (("a", "b", "c"),)
    s = rollout.shape(list("abcd"), canary=2, wave="1")
    assert s.canary == ("a", "b") and s.waves == (("a", "b"), ("c",), ("d",))


def test_judged_hosts_are_the_canary_or_every_wave_but_the_last():
    s = rollout.shape(["h1", "h2", "h3", "h4"], wave="1")
    assert s.judged() == ("h1",)
    assert s.judged(each_wave=True) == ("h1", "h2", "h3")        # h4's wave is last: nothing after it
    assert rollout.shape(["h1", "h2", "h3"], canary=0).judged(each_wave=True) == ()   # no canary, no bake
    assert rollout.shape(["h1"]).judged(each_wave=True) == ()


@pytest.mark.parametrize("wave", ["0", "-1", "abc", "0%", "101%", "2.5", "\uff15", "5\u0660%"])   # full-width 5; 50%
def test_bad_wave_is_one_config_error(wave):
    with pytest.raises(ConfigError, match="--wave"):
        rollout.shape(list("abc"), wave=wave)


def test_canary_must_leave_a_host_to_compare_with():
    with pytest.raises(ConfigError, match="--canary 3"):
        rollout.shape(list("abc"), canary=3)



def test_two_changing_hosts_get_the_default_canary():
    """architecture.md: the canary is 1 host by default "when >= 2 hosts change" (two is enough)."""
    s = rollout.shape(["a", "b"])
    assert s.canary == ("a",) and s.waves == (("a",), ("b",)) and s.judged() == ("a",)


def test_an_explicit_canary_on_a_lone_host_is_allowed_and_not_baked():
    """Nothing after it to protect or compare with: no refusal, and no host is judged — so it is
    no canary (the plan called it wave 1, the deploy "canary": review, 2026-12-07, twentieth stop)."""
    s = rollout.shape(["a"], canary=1)
    assert s.canary == () and s.waves == (("a",),)
    assert not s.bakeable and s.judged() == () and s.judged(each_wave=True) == ()


def test_a_rollout_that_resumes_one_nothing_judged_bakes_its_last_host_as_the_canary():
    """Found by review (2026-12-05, ninth stop): a deploy killed between its canary's switch and its
    verdict left v on one host of two; the rerun (a restarted watcher) saw one host to change, so
    no canary, and v reached the whole fleet with no verdict at all."""
    s = rollout.shape(["b"], unjudged=("a",))
    assert s.canary == ("b",) and s.waves == (("b",),) and s.bakeable and s.judged() == ("b",)
    assert s.to_dict() == {"canary": ["b"], "waves": [["b"]], "unjudged": ["a"]}
    assert not rollout.shape(["b"], canary=0, unjudged=("a",)).bakeable       # --canary 0 stays no canary
    many = rollout.shape(["b", "c"], unjudged=("a",))                            # as before: b, then c
    assert many.canary == ("b",) and many.waves == (("b",), ("c",))


def test_a_resumed_rollout_takes_the_canary_it_was_started_with(monkeypatch):
    """Found by review (2026-12-07, twenty-second stop): a deploy with --canary 2 on four hosts
    killed between its canary's switch and its verdict (a restarted `sync watch --canary 2`, a CI
    retry) left two hosts on the version; the rerun, with the same flags, was refused by `sync
    plan` and `sync deploy` alike ("--canary 2 leaves no host to compare it with: 2 hosts change;
    use at most 1"), at every pass of a watch, and the fleet stayed half on a version nothing
    judged. As a lone host left does (``--canary`` any N), the hosts left to change are now the
    canary, each judged on its own window before its switch, before any row says the fleet served
    the version; without hosts nothing judged, such a canary is still refused."""
    from serving_sync.options import DeployOptions
    from serving_sync.rollout_decision import decide_rollout

    s = rollout.shape(["c", "d"], canary=2, unjudged=("a", "b"))
    assert s.canary == ("c", "d") and s.waves == (("c", "d"),) and s.bakeable and s.judged() == ("c", "d")
    assert s.judged(each_wave=True) == ("c", "d")
    d = decide_rollout(["c", "d"], DeployOptions(bake=5, canary=2), unjudged=("a", "b"))   # plan and deploy
    assert d.shape == s and d.bake == 5
    assert rollout.shape(["c", "d"], canary=1, unjudged=("a", "b")).waves == (("c",), ("d",))
    with pytest.raises(ConfigError, match="--canary 2 leaves no host to compare it with"):
        rollout.shape(["c", "d"], canary=2)


def test_bake_each_wave_still_judges_the_canary_of_a_resumed_rollout():
    """Found by review (2026-12-05, ninth stop): with --bake-each-wave, ``judged`` was every wave
    but the last, so a resumed rollout whose canary is its only (last) wave judged nobody: the
    Baker did not require the canary's metrics before the prepare, nor leave the deploy's own
    smoke test out of its window before the switch, though the deploy still baked it."""
    s = rollout.shape(["b"], unjudged=("a",))
    assert s.judged(each_wave=True) == ("b",) == s.judged()
    assert rollout.shape(["b", "c", "d"], wave="1", unjudged=("a",)).judged(each_wave=True) == ("b", "c")
    assert rollout.shape(["b"], canary=0, unjudged=("a",)).judged(each_wave=True) == ()


def test_a_fleet_on_a_version_nothing_judged_is_not_recorded_when_a_verdict_is_asked(monkeypatch):
    """Found by review (2026-12-05, ninth stop): a deploy killed during a resumed rollout's bake
    leaves every host on the version with no row; `record_converged` recorded it deployed."""
    from registry import deploys
    from serving_sync.options import DeployOptions
    from serving_sync.rollout_decision import unjudged_everywhere

    state = {"status": None, "unjudged": True, "restoring": None}
    monkeypatch.setattr(deploys, "status", lambda m, v: state["status"])
    monkeypatch.setattr(deploys, "restoring", lambda m, v: state["restoring"])
    monkeypatch.setattr(deploys, "DeployLedger", lambda m: SimpleNamespace(unjudged=lambda v: state["unjudged"]))
    two = [SimpleNamespace(host=h, up_to_date=True) for h in "ab"]
    assert unjudged_everywhere("m", 2, two, DeployOptions(bake=5))
    assert not unjudged_everywhere("m", 2, two[:1], DeployOptions(bake=5))          # a lone host: no canary
    for opts in (DeployOptions(bake=0), DeployOptions(bake=5, canary=0)):              # no verdict asked
        assert not unjudged_everywhere("m", 2, two, opts)
    state["restoring"] = SimpleNamespace(from_version=3)                               # a restore: no bake
    assert not unjudged_everywhere("m", 2, two, DeployOptions(bake=5))
    assert unjudged_everywhere("m", 2, two, DeployOptions(bake=5, staged_restore=True))
    state.update(restoring=None, status="deployed")
    assert not unjudged_everywhere("m", 2, two, DeployOptions(bake=5))
    state.update(status=None, unjudged=False)                                          # judged, or adopted
    assert not unjudged_everywhere("m", 2, two, DeployOptions(bake=5))


def test_only_a_rollout_nothing_finished_has_unjudged_hosts():
    from serving_sync.options import DeployOptions
    from serving_sync.rollout_decision import unjudged_hosts

    plans = [SimpleNamespace(host="a", up_to_date=True), SimpleNamespace(host="b", up_to_date=False)]
    asked = []

    def rolled_out(answer):
        return lambda: asked.append(answer) or answer

    assert unjudged_hosts(plans, DeployOptions(bake=5), rolled_out(False)) == ("a",)
    assert unjudged_hosts(plans, DeployOptions(bake=5), rolled_out(True)) == ()      # a new host joins
    assert asked == [False, True]
    for opts in (DeployOptions(bake=0), DeployOptions(bake=5, canary=0)):               # no verdict asked
        assert unjudged_hosts(plans, opts, rolled_out(False)) == ()
    every = [SimpleNamespace(host=h, up_to_date=True) for h in "ab"]
    assert unjudged_hosts(every, DeployOptions(bake=5), rolled_out(False)) == ()
    assert asked == [False, True]                                  # the ledger read only when it decides


def test_a_negative_canary_is_one_config_error():
    with pytest.raises(ConfigError, match="--canary must be 0 or more hosts, got -1"):
        rollout.shape(list("abc"), canary=-1)

# --- the plan's phases and memory order -----------------------------------------------------
def _obs(**kw) -> HostObservation:
    base = dict(host="h1", model=M, base_path="/srv/digits", main_policy="specific", main_base_path="/srv/digits",
                main_versions=(1,), main_labels=(("stable", 1),), main_states={1: AVAILABLE}, stable=1,
                published=(1,), verified=(1,))
    base.update(kw)
    return HostObservation(**base)


def test_prepare_never_touches_the_main_entry_and_switch_starts_by_unloading_the_validation_copy():
    p = plan_host(_obs(), 2)
    prep, switch = p.phase(Phase.PREPARE), p.phase(Phase.SWITCH)
    assert [s.kind for s in prep] == ["publish", "load_validation", "wait_validation", "smoke_validation"]
    for s in prep:
        if s.config is not None:           # the main entry stays exactly as observed
            assert s.config.main.versions == (1,) and s.config.main.label_map == {"stable": 1}
    assert [s.kind for s in switch] == ["drop_validation", "load_main", "wait_main", "switch", "verify"]
    drop, load = switch[0], switch[1]
    assert drop.config.validate is None and drop.config.main.versions == (1,)   # only the copy goes
    assert load.config.validate is None                # the main load never sits beside the validation copy
    assert all(isinstance(s.kind, StepKind) for s in p.steps)


def test_fast_keeps_the_validation_copy_until_the_switch():
    p = plan_host(_obs(), 2, fast=True)
    assert StepKind.DROP_VALIDATION not in [s.kind for s in p.steps]
    load = next(s for s in p.steps if s.kind == StepKind.LOAD_MAIN)
    assert load.config.validate == 2
    assert "drop the validation entry" in next(s for s in p.steps if s.kind == StepKind.SWITCH).text


def test_fast_path_is_all_switch_phase():
    o = _obs(main_versions=(1, 2), main_states={1: AVAILABLE, 2: AVAILABLE}, published=(1, 2), verified=(1, 2))
    p = plan_host(o, 1)
    assert p.fast_path and p.phase(Phase.PREPARE) == ()


# --- parsing TF Serving's metrics ------------------------------------------------------------
PAGE = """# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="digits",status="OK"} 90
:tensorflow:serving:request_count{model_name="digits",status="INVALID_ARGUMENT"} 10
:tensorflow:serving:request_count{model_name="digits__validate",status="OK"} 7
:tensorflow:serving:request_count{model_name="other",status="OK"} 1000
# TYPE :tensorflow:serving:request_latency histogram
:tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="REST",le="1000"} 50
:tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="REST",le="2000"} 90
:tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="REST",le="+Inf"} 100
:tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="GRPC",le="1000"} 10
:tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="GRPC",le="2000"} 10
:tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="GRPC",le="+Inf"} 10
:tensorflow:serving:request_latency_sum{model_name="digits",API="predict",entrypoint="REST"} 150000
:tensorflow:serving:request_latency_count{model_name="digits",API="predict",entrypoint="REST"} 100
"""


def test_parse_keeps_one_model_and_sums_api_and_entrypoint():
    s = metrics_windows.parse(PAGE, "digits")
    assert s.requests == {"OK": 90, "INVALID_ARGUMENT": 10}
    assert s.buckets == {1000.0: 60, 2000.0: 100, float("inf"): 110}
    assert metrics_windows.parse(PAGE, "nothing-here") == metrics_windows.Snapshot()


def test_parse_refuses_what_is_not_prometheus_text():
    with pytest.raises(UserError, match="not Prometheus text"):
        metrics_windows.parse('{"json": true}\n', "digits")


def test_window_is_the_difference_and_survives_a_counter_reset():
    # requests: the inference requests answered OK (the histogram's count) plus every error
    a = metrics_windows.Snapshot({"OK": 130.0, "INTERNAL": 1.0}, {1000.0: 50.0, float("inf"): 100.0}, 90_000.0, 100.0)
    b = metrics_windows.Snapshot({"OK": 190.0, "INTERNAL": 5.0}, {1000.0: 60.0, float("inf"): 150.0}, 140_000.0, 150.0)
    w = metrics_windows.window(a, b)
    assert (w.requests, w.errors, w.restarted) == (54, 4, False)
    assert dict(w.buckets) == {1000.0: 10.0, float("inf"): 50.0} and w.mean_ms == pytest.approx(1.0)
    restarted = metrics_windows.Snapshot({"OK": 3.0}, {1000.0: 3.0, float("inf"): 3.0}, 600.0, 3.0)
    reset = metrics_windows.window(b, restarted)
    assert (reset.requests, reset.errors, reset.restarted) == (3, 0, True)     # counts since the restart


def test_quantile_matches_prometheus_histogram_quantile():
    buckets = ((1000.0, 50.0), (2000.0, 90.0), (float("inf"), 100.0))
    assert bake_stats.quantile(buckets, 0.5) == pytest.approx(1000.0)
    assert bake_stats.quantile(buckets, 0.7) == pytest.approx(1500.0)
    assert bake_stats.quantile(buckets, 0.99) == pytest.approx(2000.0)      # open top bucket: highest bound
    assert bake_stats.quantile((), 0.5) is None and bake_stats.quantile(((1.0, 0.0),), 0.5) is None


# --- verdicts ------------------------------------------------------------------------------
def _w(requests, errors=0, fast=None, slow=0):
    """``requests`` of which ``errors`` failed; latency: ``fast`` under 1 ms, ``slow`` at 50-100 ms."""
    fast = requests - slow if fast is None else fast
    return metrics_windows.Window(requests, errors, ((1000.0, float(fast)), (50_000.0, float(fast)),
                                          (100_000.0, float(fast + slow)), (float("inf"), float(fast + slow))))


LIMITS = bake.Limits(max_error_rate=0.01, max_latency_ratio=1.5, min_requests=20)


def test_error_rate_breach_says_it_in_one_line_with_the_figures():
    v = bake.judge("web-2", _w(320, 40), _w(300), dataclasses.replace(_w(600), hosts=2), LIMITS)
    assert v.outcome == "breached" and not v.passed
    assert v.line == ("canary web-2: error rate 12.5% (40/320) vs 0.0% before and 0.0% on the other hosts; "
                      "limit 1.0%: rolled back")
    assert v.measurements["canary"]["errors"] == 40 and v.measurements["others"]["requests"] == 600


def test_the_verdict_says_the_other_host_when_the_old_version_is_on_one_host():
    """Found by review (2026-12-07, twenty-first stop): a fleet of two compares its canary with one
    old host, and the line said "on the other hosts" (the error rate's and the mean's)."""
    v = bake.judge("web-2", _w(320, 40), _w(300), _w(600), LIMITS)
    assert v.line == ("canary web-2: error rate 12.5% (40/320) vs 0.0% before and 0.0% on the other host; "
                      "limit 1.0%: rolled back"), v.line
    slow = metrics_windows.Window(100, 0, (), 4.0e6, 100, seconds=10.0)        # 40 ms each, exact sums
    fast = metrics_windows.Window(100, 0, (), 0.5e6, 100, seconds=10.0)
    v = bake.judge("web-2", slow, None, fast, LIMITS)
    assert "mean latency 40.0 ms vs 5.0 ms on the other host; limit 1.5x" in v.line, v.line


def test_errors_the_old_version_has_too_are_not_the_canarys_fault():
    v = bake.judge("web-2", _w(300, 30), _w(300, 29), _w(600, 60), LIMITS)
    assert v.passed and v.outcome == "passed"


def test_latency_breach_against_the_worst_baseline():
    v = bake.judge("web-2", _w(100, slow=100), _w(100), _w(200), LIMITS)
    assert v.outcome == "breached" and "p95 latency" in v.line and "limit 1.5x" in v.line


def test_same_latency_passes_with_its_figures():
    v = bake.judge("web-2", _w(100), _w(100), _w(200), LIMITS)
    assert v.passed and v.line.startswith("canary web-2: error rate 0.0% (0/100)") and v.line.endswith("passed")


@pytest.mark.parametrize("policy,outcome,passed", [("pass", "low_traffic_passed", True),
                                                   ("fail", "low_traffic_failed", False)])
def test_low_traffic_follows_the_policy(policy, outcome, passed):
    # a quiet fleet: the canary's window before its switch was quiet too (else its traffic fell)
    v = bake.judge("web-2", _w(5, 1), _w(12), None, bake.Limits(min_requests=20, on_low_traffic=policy))
    assert v.outcome == outcome and v.passed is passed
    assert "not enough traffic (5 requests < 20)" in v.line and f"--on-low-traffic {policy}" in v.line


@pytest.mark.parametrize("policy", ["pass", "fail"])
def test_a_quiet_canary_whose_requests_fail_is_rolled_back_as_a_breach(policy):
    """Found by review (2026-12-07, twenty-first stop): a canary with fewer than --min-requests was
    "not enough traffic" whatever its errors, so a version failing all 5 of its requests in a quiet
    hour passed with the default --on-low-traffic pass and rolled out. Too few requests to judge
    its latency are not too few to tell that they fail: errors beyond chance at the limit's rate
    (as for a busy canary, each quiet baseline's noise counted) breach; one error of 5 is still
    chance, and so are 2 of 5 where the old version failed 3 of 12 in the same hour."""
    limits = bake.Limits(min_requests=20, on_low_traffic=policy)
    v = bake.judge("web-2", _w(5, 5), _w(12), None, limits)
    assert v.outcome == "breached" and not v.passed, v.line
    assert v.line == ("canary web-2: error rate 100.0% (5/5) vs 0.0% before; limit 1.0% (fewer than "
                      "--min-requests 20, but more errors than chance explains): rolled back"), v.line
    v = bake.judge("web-2", _w(5, 1), _w(12), None, limits)
    assert v.outcome == f"low_traffic_{policy}ed" and "not enough traffic" in v.line, v.line
    # the old version failed as often in the same quiet hour (a client's bad inputs): not the canary's fault
    v = bake.judge("web-2", _w(5, 2), _w(12, 3), None, limits)
    assert v.outcome == f"low_traffic_{policy}ed" and "not enough traffic" in v.line, v.line


def test_baselines_with_too_little_traffic_do_not_count():
    # before: 10 requests, 5 errors (ignored: < min_requests); the canary's 10% is judged against 0%
    v = bake.judge("web-2", _w(100, 10), _w(10, 5), None, LIMITS)
    assert v.outcome == "breached"



def test_the_error_rate_is_judged_against_the_worse_baseline():
    """5.5% on the canary, 0% before its switch and 5% on the old hosts: within 1% of the worse
    baseline's (architecture.md, "Rollout"), so not the canary's fault."""
    v = bake.judge("web-2", _w(1000, 55), _w(1000, 0), _w(1000, 50), LIMITS)
    assert v.passed, v.line
    assert bake.judge("web-2", _w(1000, 100), _w(1000, 0), _w(1000, 50), LIMITS).outcome == "breached"


def test_the_p95_is_judged_against_the_worse_baseline():
    """Slow old hosts: a canary as slow as they are passes, though its own window before was fast."""
    v = bake.judge("web-2", _w(100, slow=100), _w(100), _w(200, slow=200), LIMITS)
    assert v.passed, v.line


def _timed(requests, mean_us):
    return metrics_windows.Window(requests, 0, (), mean_us * requests, requests)


def test_a_mean_exactly_at_the_latency_limit_is_not_a_breach():
    """"more than --max-latency-ratio times": 1.5 ms against 1.0 ms at 1.5x passes, 1.501 ms does not."""
    v = bake.judge("web-2", _timed(100, 1500.0), _timed(100, 1000.0), None, LIMITS)
    assert v.passed and v.measurements["mean_compared"], v.line
    v = bake.judge("web-2", _timed(100, 1501.0), _timed(100, 1000.0), None, LIMITS)
    assert v.outcome == "breached" and "mean latency 1.501 ms vs 1.000 ms before" in v.line, v.line


def test_a_baseline_without_a_latency_sum_is_no_mean_to_compare_with():
    """A page without ``_sum`` (a mean of 0 ms) is no measurement: every canary would breach."""
    v = bake.judge("web-2", _timed(100, 1000.0), _timed(100, 0.0), None, LIMITS)
    assert v.passed and not v.measurements["mean_compared"], v.line

@pytest.mark.parametrize("kw", [dict(max_error_rate=2), dict(max_latency_ratio=0.5), dict(min_requests=0),
                                dict(on_low_traffic="maybe"), dict(min_traffic_ratio=1.5),
                                dict(min_traffic_ratio=-0.1)])
def test_bad_limits_are_config_errors(kw):
    with pytest.raises(ConfigError):
        bake.Limits(**kw)


# --- the one "previous production" rule -------------------------------------------------------
def _e(action, frm, to, outcome="ok"):
    return Entry(action=action, model=M, outcome=outcome, from_version=frm, to_version=to)


def test_previous_production_skips_versions_whose_deploy_failed():
    entries = [_e("promote", None, 1), _e("promote", 1, 2), _e("promote", 2, 3)]
    assert previous_production(entries, 3) == 2
    assert previous_production(entries, 3, {2}) == 1
    # a rollback 3 -> 2 then a new promotion 4: back to 2, not to 3
    entries += [_e("rollback", 3, 2), _e("promote", 2, 4)]
    assert previous_production(entries, 4) == 2
    assert previous_production([], 1) is None


# --- a restarted watcher does not retry a failed version ---------------------------------------
def test_failed_after_promotion_is_cleared_by_promoting_again():
    from registry.promotion_rules import failed_after_promotion

    rows = [_e("promote", 1, 2), _e("deploy", 1, 2, "failed")]
    assert failed_after_promotion(rows, 2)
    assert not failed_after_promotion(rows + [_e("promote", 1, 2)], 2)
    assert failed_after_promotion([], 2)                  # only the tag says so


def test_failed_versions_follow_the_registry_so_a_version_promoted_again_is_tried_again():
    from serving_sync.watch import FailedVersions

    failed_in_registry = {3}
    fv = FailedVersions(recorded=lambda v: v in failed_in_registry)
    assert fv.skip(3) and fv.skip(3)                        # tagged failed since its promotion
    assert not fv.skip(4)
    failed_in_registry.discard(3)                           # promoted again (no webhook needed)
    assert not fv.skip(3)
    fv.add(5)                                               # failed here, the registry never took it:
    assert fv.skip(5)                                       # it counts too, until forgotten
    fv.forget(5)
    assert not fv.skip(5)
    alone = FailedVersions()                                # without a registry: this watch's failures
    alone.add(4)
    assert alone.skip(4) and not alone.skip(3)


def test_a_failed_deploy_is_a_ledger_row_even_when_mlflow_refuses_the_revert(monkeypatch):
    """MLflow down when production should move back: the deploy's failure still reaches the ledger,
    so the version's newest deploy row is not a canary host's "ok" that a later rollback trusts."""
    from types import SimpleNamespace

    from registry import deploy_revert
    from serving_sync import deploy_failure, fleet

    rows = []

    def recorder(action, outcome, **fields):
        rows.append((action, outcome, fields["to_version"], fields["details"].get("registry_error")))

    recorder.previous_production = lambda v: 1
    recorder.rollback_in_rollout = lambda v: None
    recorder.provenance = None

    def down(*a, **k):
        raise UserError("MLflow at http://127.0.0.1:5000 is not reachable")

    monkeypatch.setattr(deploy_revert, "revert_failed_deploy", down)
    result = fleet.FleetResult("m", 2, "production", "failed")
    run = SimpleNamespace(host=SimpleNamespace(name="web-1"), plan=SimpleNamespace(current=1))
    note = deploy_failure.registry_after_failure(result, recorder, run, "smoke test failed",
                                                 "smoke_validation", kept_because=None)
    assert "could not update the registry" in note and result.registry["moved"] is False
    assert rows == [("deploy", "failed", 2, "MLflow at http://127.0.0.1:5000 is not reachable")]
    rows.clear()
    deploy_failure.registry_after_failure(result, recorder, run, "interrupted", "bake",
                                          kept_because="interrupted")
    assert [r[:3] for r in rows] == [("deploy", "failed", 2)]          # the kept-because row, once


def test_a_failed_rollback_says_the_hosts_serve_production_again_only_when_every_host_was_put_back(monkeypatch):
    """Found by review (twenty-second stop, fixed at the twenty-fourth): a failed rollback's note
    said "production is v2 again, which the hosts still serve" also when some hosts could not be
    put back (the line before named them): those serve what the rollback left on them."""
    from types import SimpleNamespace

    from registry import deploy_revert
    from serving_sync import deploy_failure, fleet

    def recorder(action, outcome, **fields):
        pass

    recorder.previous_production = lambda v: 2
    recorder.rollback_in_rollout = lambda v: SimpleNamespace(from_version=2)    # this deploy was the rollback to v1
    recorder.provenance = None
    promo = SimpleNamespace(moved=True, ledger_id=7, details={}, to_dict=lambda: {"moved": True})
    monkeypatch.setattr(deploy_revert, "revert_failed_deploy", lambda *a, **k: promo)
    run = SimpleNamespace(host=SimpleNamespace(name="web-1"), plan=SimpleNamespace(current=2))
    every = deploy_failure.registry_after_failure(fleet.FleetResult("m", 1, "production", "failed"), recorder, run,
                                                  "smoke test failed", "smoke_validation", kept_because=None)
    assert every.startswith("the rollback to v1 failed: production is v2 again, which the hosts still serve"), every
    some = deploy_failure.registry_after_failure(fleet.FleetResult("m", 1, "production", "failed"), recorder, run,
                                                 "smoke test failed", "smoke_validation", kept_because=None,
                                                 not_back=["web-3", "web-4"])
    assert some.startswith("the rollback to v1 failed: production is v2 again, which the hosts put back serve "
                           "(not web-3, web-4: above) (ledger #7)"), some
    assert "still serve" not in some


def test_a_version_deploy_stopped_by_a_host_does_not_claim_production_holds_it():
    """``--version 2`` while production is v1: a lost connection said "production left at v2"."""
    from types import SimpleNamespace

    from serving_sync import deploy_failure, fleet

    def recorder(action, outcome, **fields):
        pass

    recorder.provenance = None
    run = SimpleNamespace(host=SimpleNamespace(name="web-1"), plan=SimpleNamespace(current=1))
    pinned = fleet.FleetResult("m", 2, "--version", "failed")
    note = deploy_failure.registry_after_failure(pinned, recorder, run, "lost the SSH connection", "publish",
                                                 kept_because="the connection was lost")
    assert note.startswith("production not involved (--version) (the connection was lost)"), note
    prod = fleet.FleetResult("m", 2, "production", "failed")
    note = deploy_failure.registry_after_failure(prod, recorder, run, "lost the SSH connection", "publish",
                                                 kept_because="the connection was lost")
    assert note.startswith("production left at v2 (the connection was lost)"), note
    assert "fix the cause and rerun" in note
    # a signal is not a cause to fix (`sync watch` said so after a plain SIGTERM)
    note = deploy_failure.registry_after_failure(prod, recorder, run, "interrupted", "switch",
                                                 kept_because=deploy_failure.INTERRUPTED_BY_SIGNAL)
    assert "(the deploy was interrupted); rerun `mlops sync deploy`" in note and "fix the cause" not in note, note


def test_a_long_bake_says_it_is_still_baking(monkeypatch):
    """CircleCI ends a step that prints nothing for 10 minutes: a bake of MLOPS_BAKE_SECONDS=900
    was killed mid-canary. It now says what it waits for, and how long, every PROGRESS_EVERY s."""
    import logging

    from serving_sync import canary

    monkeypatch.setattr(canary, "PROGRESS_EVERY", 0.05)
    clock = {"now": 0.0}        # a clock of its own: on a loaded machine real sleeps ran long (2 lines)

    def sleep(seconds: float) -> None:
        clock["now"] += seconds

    monkeypatch.setattr(canary, "time", SimpleNamespace(monotonic=lambda: clock["now"], sleep=sleep))
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    canary.logger.addHandler(handler)
    old_level = canary.logger.level
    canary.logger.setLevel(logging.INFO)
    try:
        canary._sleep(0.32, "judging web-2 on live traffic")
        canary._sleep(0.2)                                   # nothing to say: silent
    finally:
        canary.logger.removeHandler(handler)
        canary.logger.setLevel(old_level)
    assert lines == ["bake: judging web-2 on live traffic, 0s left"] * 3, lines    # at 0.1, 0.2, 0.3 s of 0.32
    assert clock["now"] == pytest.approx(0.52)


def test_one_rollout_decision_for_plan_and_deploy():
    """``sync plan`` and ``sync deploy`` both take the rollout from ``decide_rollout`` (they
    decided it in two places, so the plan could drift from what the deploy does)."""
    from serving_sync.options import DeployOptions
    from serving_sync.rollout_decision import decide_rollout

    staged = DeployOptions(bake=30.0)
    d = decide_rollout(["a", "b", "c"], staged)
    assert (d.shape.canary, d.bake, d.restore) == (("a",), 30.0, None)
    assert decide_rollout(["a"], staged).bake == 0.0                   # no canary: nothing to judge
    assert decide_rollout(["a", "b"], DeployOptions(bake=30.0, canary=0)).bake == 0.0
    row = SimpleNamespace(from_version=7, reason="too slow")
    d = decide_rollout(["a", "b", "c"], staged, row)                   # a restore: all at once, no bake
    assert (d.shape.canary, d.shape.waves, d.bake) == ((), (("a", "b", "c"),), 0.0)
    assert d.restore == {"rolled_back_from": 7, "reason": "too slow"}
    kept = decide_rollout(["a", "b", "c"], DeployOptions(bake=30.0, staged_restore=True), row)
    assert (kept.shape.canary, kept.bake, kept.restore) == (("a",), 30.0, None)   # --canary/--wave/--bake
    assert decide_rollout(["a"], staged, row).restore is None          # one host: nothing to unstage
    # a restore asks no verdict: hosts left on the version by a rollout nothing judged are not named
    assert decide_rollout(["b", "c"], staged, row, ("a",)).shape.to_dict()["unjudged"] == []
    assert decide_rollout(["b"], staged, None, ("a",)).shape.to_dict()["unjudged"] == ["a"]


@pytest.mark.parametrize("v, now, before, failed, stays", [
    (2, 3, {1}, False, True),          # a deploy of v2 overtaken by v3's promotion: keep v2
    (1, 3, {2}, False, True),          # a rollback to v1 overtaken by v3: not back to v2
    (2, 1, {1}, False, False),         # a rollback to what the hosts served: that is the put-back
    (2, 3, {3}, False, False),         # moved to what the hosts served before: put back (cheap)
    (2, 3, {1}, True, False),          # v2 failed on another fleet meanwhile
    (3, 1, {2}, False, False),         # an older version: a rollback of some kind
    (2, None, {1}, False, False),      # production removed
])
def test_a_rollout_overtaken_stays_only_for_a_newer_version_it_did_not_fail_against(v, now, before, failed, stays):
    from serving_sync.rollout import stays_when_overtaken

    assert stays_when_overtaken(v, now, before, failed) is stays


def test_a_latency_breachs_figures_breach_as_shown():
    """Found by review (2026-12-07, twenty-first stop): the figures of a latency breach were shown
    to one decimal (two under 0.1 ms), so a mean of 1.04 ms against 0.69 ms read "1.0 ms vs 0.7 ms;
    limit 1.5x: rolled back" (1.43x as shown), and a p95 in TF Serving's bucket from 0.105 ms
    against one up to 0.0583 ms read "0.1 ms vs 0.06 ms; limit 1.75x". The line now shows as many
    decimals as it takes for its figures to breach as well."""
    slow = metrics_windows.Window(1000, 0, (), 1.04e6, 1000, seconds=10.0)      # exact sums: 1.04 ms each
    fast = metrics_windows.Window(1000, 0, (), 0.69e6, 1000, seconds=10.0)
    v = bake.judge("web-2", slow, fast, None, LIMITS)
    assert v.outcome == "breached" and "mean latency 1.04 ms vs 0.69 ms before; limit 1.5x" in v.line, v.line
    les = [10 * 1.8 ** i for i in range(33)] + [float("inf")]                   # TF Serving's limits (µs)

    def all_in(i: int) -> metrics_windows.Window:       # 200 requests in the bucket up to les[i]
        return metrics_windows.Window(200, 0, tuple((le, 200.0 if j >= i else 0.0) for j, le in enumerate(les)),
                                      0.0, 200)
    v = bake.judge("web-2", all_in(5), all_in(3), None, bake.Limits(max_latency_ratio=1.75))
    assert v.outcome == "breached", v.line
    assert "p95 latency at least 0.105 ms vs at most 0.0583 ms before; limit 1.75x" in v.line, v.line


def test_the_rollout_line_names_every_wave_that_is_baked(monkeypatch):
    """Found by review (2026-12-07, twenty-first stop): with ``--bake-each-wave`` the deploy's
    rollout line named the canary's bake alone ("canary h1, bake 60s; wave h2; wave h3"), and wave
    h2's 60 s wait came unannounced. Every judged wave now says its bake; the last never bakes."""
    from serving_sync import fleet
    from serving_sync.options import DeployOptions

    said: list[str] = []
    monkeypatch.setattr(fleet.logger, "info", lambda msg, *a: said.append(msg % a))
    fleet._log_shape(rollout.shape(["h1", "h2", "h3"], wave="1"), DeployOptions(bake=60, bake_each_wave=True), 3)
    fleet._log_shape(rollout.shape(["h1", "h2", "h3"], wave="1"), DeployOptions(bake=60), 3)
    fleet._log_shape(rollout.shape(["h1", "h2", "h3"], wave="1"), DeployOptions(bake=0, bake_each_wave=True), 3)
    assert said == ["rollout: prepare 3 hosts (3 at a time), then canary h1, bake 60s; wave h2, bake 60s; wave h3",
                    "rollout: prepare 3 hosts (3 at a time), then canary h1, bake 60s; wave h2; wave h3",
                    "rollout: prepare 3 hosts (3 at a time), then canary h1, no bake; wave h2; wave h3"], said
