"""The deploy plan is a pure function of (desired version, observed host): every case, fast.

Observations are plain data as ``observe.observe_host`` builds them; the assertions check the
step kinds, the configs each write asks for (so TF Serving's label rule holds at every step)
and what is kept warm.
"""
from __future__ import annotations

import pytest

from mlops_common.errors import ConfigError
from serving_sync import models_config as mc
from serving_sync.plan import KEEP, ConfigTarget, HostObservation, MainTarget, applied, compose, final_target, plan_host

M = "digits"
BASE = "/srv/models/digits"
A = "AVAILABLE"


def obs(*, versions=(), labels=(), states=None, stable=None, validate=None, vstates=None, published=(),
        verified=(), policy="specific", base=BASE) -> HostObservation:
    has_main = bool(versions) or policy != "specific"
    return HostObservation(host="h1", model=M, base_path=BASE,
                           main_policy=policy if has_main else None, main_base_path=base if has_main else None,
                           main_versions=tuple(versions), main_labels=tuple(labels), validate=validate,
                           main_states=dict(states or {}), validate_states=dict(vstates or {}), stable=stable,
                           published=tuple(published), verified=tuple(verified))


def kinds(plan) -> list[str]:
    return [s.kind for s in plan.steps]


def step(plan, kind):
    return next(s for s in plan.steps if s.kind == kind)


def labels_only_on_available(plan, o: HostObservation) -> None:
    """Every config the plan writes labels only versions that are AVAILABLE at that moment."""
    loaded = set(o.available)
    for s in plan.steps:
        if s.kind in ("wait_main",):
            loaded.add(s.version)
        if s.config is None or not isinstance(s.config.main, MainTarget):
            continue
        for label, v in s.config.main.labels:
            assert v in loaded, f"{s.kind}: label {label} -> v{v} before v{v} is loaded in the main entry"


def test_first_deploy_validates_then_loads_then_labels():
    o = obs()
    p = plan_host(o, 1)
    assert kinds(p) == ["publish", "load_validation", "wait_validation", "smoke_validation", "drop_validation",
                        "load_main", "wait_main", "switch", "verify"]
    assert p.current is None and p.previous_kept is None
    assert step(p, "load_validation").config == ConfigTarget(None, 1)       # no main entry yet
    assert step(p, "load_main").config == ConfigTarget(MainTarget((1,), ()), None)
    assert step(p, "switch").config == ConfigTarget(MainTarget((1,), (("stable", 1),)), None)
    labels_only_on_available(p, o)


def test_upgrade_keeps_stable_on_the_serving_version_until_the_switch_and_keeps_it_warm():
    o = obs(versions=(1,), labels=(("stable", 1),), states={1: A}, stable=1, published=(1,), verified=(1,))
    p = plan_host(o, 2)
    assert kinds(p)[:4] == ["publish", "load_validation", "wait_validation", "smoke_validation"]
    assert step(p, "load_validation").config == ConfigTarget(MainTarget((1,), (("stable", 1),)), 2)
    assert step(p, "load_main").config == ConfigTarget(MainTarget((1, 2), (("stable", 1),)), None)
    assert step(p, "switch").config == ConfigTarget(MainTarget((1, 2), (("stable", 2),)), None)
    assert p.previous_kept == 1 and p.current == 1 and not p.fast_path
    labels_only_on_available(p, o)


def test_redeploy_of_what_serves_is_a_no_op():
    o = obs(versions=(1, 2), labels=(("stable", 2),), states={1: A, 2: A}, stable=2, published=(1, 2),
            verified=(1, 2))
    p = plan_host(o, 2)
    assert p.up_to_date and p.steps == () and "up to date" in p.notes


def test_not_up_to_date_when_the_version_was_never_verified_on_this_host():
    o = obs(versions=(2,), labels=(("stable", 2),), states={2: A}, stable=2, published=(2,), verified=())
    p = plan_host(o, 2)
    assert kinds(p) == ["smoke_main", "switch", "verify"]
    assert step(p, "smoke_main").entry == M


def test_rollback_to_the_warm_previous_version_is_one_switch():
    o = obs(versions=(1, 2), labels=(("stable", 2),), states={1: A, 2: A}, stable=2, published=(1, 2),
            verified=(1, 2))
    p = plan_host(o, 1)
    assert kinds(p) == ["switch", "verify"] and p.fast_path
    sw = step(p, "switch")
    # v2 is newer: keeping it loaded would keep unversioned traffic on it, so it goes
    assert sw.config == ConfigTarget(MainTarget((1,), (("stable", 1),)), None)
    assert sw.unload == (2,) and p.previous_kept is None
    assert any("not kept warm because it is newer" in n for n in p.notes)
    labels_only_on_available(p, o)


def test_rollback_to_a_cold_version_loads_it_beside_the_serving_one_first():
    o = obs(versions=(2, 3), labels=(("stable", 3),), states={1: "END", 2: A, 3: A}, stable=3,
            published=(1, 2, 3), verified=(1, 2, 3))
    p = plan_host(o, 1)
    assert kinds(p) == ["publish", "load_validation", "wait_validation", "smoke_validation", "drop_validation",
                        "load_main", "wait_main", "switch", "verify"]
    assert "already present" in step(p, "publish").text
    # while v1 loads in the main entry, stable stays on v3 and v3 (higher) keeps unversioned traffic
    assert step(p, "load_main").config == ConfigTarget(MainTarget((1, 3), (("stable", 3),)), None)
    sw = step(p, "switch")
    assert sw.config == ConfigTarget(MainTarget((1,), (("stable", 1),)), None) and sw.unload == (2, 3)
    labels_only_on_available(p, o)


def test_lower_new_version_never_published_here():
    o = obs(versions=(5,), labels=(("stable", 5),), states={5: A}, stable=5, published=(5,), verified=(5,))
    p = plan_host(o, 4)
    assert "upload" in step(p, "publish").text
    assert step(p, "switch").config.main == MainTarget((4,), (("stable", 4),))
    assert p.previous_kept is None


def test_drift_a_hand_loaded_higher_version_is_unloaded_and_stable_repaired():
    # registry says v2; someone loaded v3 by hand and pointed stable at it
    o = obs(versions=(2, 3), labels=(("stable", 3),), states={2: A, 3: A}, stable=3, published=(2, 3),
            verified=(2,))
    p = plan_host(o, 2)
    assert kinds(p) == ["switch", "verify"]
    sw = step(p, "switch")
    assert sw.config.main == MainTarget((2,), (("stable", 2),)) and sw.unload == (3,)


def test_drift_the_label_points_elsewhere_than_the_file_says():
    o = obs(versions=(1, 2), labels=(("stable", 2),), states={1: A, 2: A}, stable=1, published=(1, 2),
            verified=(1, 2))
    p = plan_host(o, 2)
    assert not p.up_to_date and kinds(p) == ["switch", "verify"]


def test_leftover_validation_entry_of_a_killed_deploy_is_validated_again_then_dropped():
    o = obs(versions=(1,), labels=(("stable", 1),), states={1: A}, stable=1, validate=2, vstates={2: A},
            published=(1, 2), verified=(1,))
    p = plan_host(o, 2)
    assert kinds(p)[:4] == ["publish", "load_validation", "wait_validation", "smoke_validation"]
    assert step(p, "switch").config.validate is None


def test_leftover_validation_entry_of_another_version_goes_in_the_switch():
    o = obs(versions=(1, 2), labels=(("stable", 2),), states={1: A, 2: A}, stable=2, validate=7,
            published=(1, 2, 7), verified=(1, 2))
    p = plan_host(o, 2)
    assert kinds(p) == ["switch", "verify"]
    assert step(p, "switch").config == ConfigTarget(MainTarget((1, 2), (("stable", 2),)), None)
    assert any("leftover validation entry" in n for n in p.notes)


def test_half_switched_config_of_a_killed_deploy_is_completed():
    # killed after load_main: v2 loaded and verified, stable still on v1, validation entry still there
    o = obs(versions=(1, 2), labels=(("stable", 1),), states={1: A, 2: A}, stable=1, validate=2,
            vstates={2: A}, published=(1, 2), verified=(1, 2))
    p = plan_host(o, 2)
    assert kinds(p) == ["switch", "verify"]
    assert step(p, "switch").config == ConfigTarget(MainTarget((1, 2), (("stable", 2),)), None)


def test_without_keep_previous_only_the_new_version_stays():
    o = obs(versions=(1,), labels=(("stable", 1),), states={1: A}, stable=1, published=(1,), verified=(1,))
    p = plan_host(o, 2, keep_previous=False)
    assert step(p, "switch").config.main == MainTarget((2,), (("stable", 2),)) and p.previous_kept is None


def test_other_labels_survive_when_their_version_stays_loaded():
    o = obs(versions=(1,), labels=(("canary", 1), ("stable", 1)), states={1: A}, stable=1, published=(1,),
            verified=(1,))
    final, prev, _ = final_target(o, 2)
    assert final.label_map == {"canary": 1, "stable": 2} and prev == 1


def test_a_main_entry_that_loads_new_versions_by_itself_is_pinned_before_the_upload_then_taken_over():
    # TF Serving's latest / all / default policy over the base path we publish into would load v5
    # the moment it is published, before its smoke test: pinned to what serves first
    for policy in ("latest", "all", "default"):
        o = obs(policy=policy, versions=(), states={4: A}, stable=None, published=(4,))
        p = plan_host(o, 5)
        assert kinds(p)[:2] == ["pin_main", "publish"], policy
        assert step(p, "pin_main").config == ConfigTarget(MainTarget((4,), ()), None)
        assert step(p, "load_validation").config.main == MainTarget((4,), ())
        assert step(p, "load_main").config.main == MainTarget((4, 5), ())
        assert step(p, "switch").config.main == MainTarget((4, 5), (("stable", 5),))
    nothing = plan_host(obs(policy="latest", versions=(), states={}, published=()), 5)
    assert step(nothing, "pin_main").config.main is None        # it served nothing: no main entry until v5


def test_an_unmanaged_main_entry_on_another_base_path_is_kept_verbatim_while_validating_then_taken_over():
    o = obs(policy="latest", versions=(), states={4: A}, stable=None, published=(4,), base="/elsewhere/m")
    p = plan_host(o, 5)
    assert "pin_main" not in kinds(p)
    assert step(p, "load_validation").config.main == KEEP
    assert step(p, "load_main").config.main == MainTarget((4, 5), ())


def test_retention_preview_never_removes_serving_previous_or_kept_versions():
    o = obs(versions=(4,), labels=(("stable", 4),), states={4: A}, stable=4, published=(1, 2, 3, 4),
            verified=(4,))
    p = plan_host(o, 5, keep=2)
    assert p.retention == (1, 2, 3)                      # keep=2: v4 (previous) and v5 (serving) stay
    p = plan_host(o, 5, keep=1)
    assert p.retention == (1, 2, 3)                      # the previous version is kept whatever keep says


def test_compose_replaces_only_our_entries_and_keeps_other_models_verbatim():
    other = ('model_config_list { config { name: "other" base_path: "/x/other" model_platform: "tensorflow" '
             'model_version_policy { latest { num_versions: 2 } } } }')
    cfg = mc.parse(other)
    out = compose(cfg, M, BASE, ConfigTarget(MainTarget((1, 2), (("stable", 1),)), 2))
    assert [e.name for e in out.entries] == ["other", M, f"{M}__validate"]
    assert out.entries[0] == cfg.entries[0]
    text = mc.render(out)
    assert mc.parse(text).entry("other").policy == "latest"
    st = mc.state_of(mc.parse(text), M)
    assert st.versions == (1, 2) and st.labels == {"stable": 1} and st.validate == 2
    back = compose(mc.parse(text), M, BASE, ConfigTarget(None, None))
    assert [e.name for e in back.entries] == ["other"]


def test_main_target_refuses_a_label_on_a_version_it_does_not_load():
    with pytest.raises(ConfigError, match="not loaded"):
        MainTarget((1,), (("stable", 2),))
    with pytest.raises(ConfigError):
        MainTarget((), ())


def test_a_main_entry_reading_another_base_path_does_not_count_as_loaded():
    o = obs(versions=(1, 2), labels=(("stable", 2),), states={1: A, 2: A}, stable=2, published=(1, 2),
            verified=(1, 2), base="/old/place/digits")
    p = plan_host(o, 1)
    assert kinds(p)[:2] == ["publish", "load_validation"] and not p.fast_path
    assert step(p, "load_validation").config.main == KEEP


def test_another_label_keeps_an_older_version_loaded_and_a_newer_one_is_removed_with_a_note():
    """Found by a sweep (2026-12-04): `experiment -> v1` beside `stable -> v3` was dropped by the
    deploy of v4 (v1 unloaded, then deleted by retention), silently."""
    o = obs(versions=(1, 2, 3), labels=(("experiment", 1), ("stable", 3)), states={1: A, 2: A, 3: A}, stable=3,
            published=(1, 2, 3), verified=(1, 2, 3))
    p = plan_host(o, 4)
    assert p.final == MainTarget((1, 3, 4), (("experiment", 1), ("stable", 4)))
    assert step(p, "load_main").config.main == MainTarget((1, 3, 4), (("experiment", 1), ("stable", 3)))
    assert 1 not in p.retention
    labels_only_on_available(p, o)
    # a rollback to v2 while `canary -> v3`: v3 would take the unversioned requests, so it goes
    o = obs(versions=(2, 3), labels=(("canary", 3), ("stable", 3)), states={2: A, 3: A}, stable=3, published=(2, 3),
            verified=(2, 3))
    p = plan_host(o, 2)
    assert p.final == MainTarget((2,), (("stable", 2),))
    assert any("label canary -> v3 is removed" in n for n in p.notes), p.notes


def test_a_main_entry_written_with_a_trailing_slash_is_the_folder_we_publish_into():
    """Found by a sweep (2026-12-04): `base_path: ".../digits/"` with a latest policy was not seen
    to watch our folder (raw string comparison): nothing pinned it, a published version served at
    once, and after a failed smoke test it kept serving."""
    o = obs(policy="latest", base=BASE + "/", states={1: A}, stable=None, published=(1,))
    assert o.watches_base
    assert kinds(plan_host(o, 2))[0] == "pin_main"
    assert obs(versions=(1,), base=BASE + "//", states={1: A}, published=(1,)).managed
    assert mc.same_path("s3://b/m/", "s3://b//m") and not mc.same_path("/srv/models/digits", "/srv/models/digit")


def test_versions_other_entries_load_from_our_folder_are_kept_by_retention():
    config = mc.parse(f'model_config_list {{ config {{ name: "{M}" base_path: "{BASE}" model_platform: "tensorflow" '
                      f'model_version_policy {{ specific {{ versions: 4 }} }} }} '
                      f'config {{ name: "shadow" base_path: "{BASE}/" model_platform: "tensorflow" '
                      f'model_version_policy {{ specific {{ versions: 1 }} }} '
                      f'version_labels {{ key: "x" value: 2 }} }} '
                      f'config {{ name: "other" base_path: "/srv/models/other" model_platform: "tensorflow" '
                      f'model_version_policy {{ specific {{ versions: 3 }} }} }} }}')
    assert mc.versions_held_by_others(config, M, BASE) == (1, 2)
    o = obs(versions=(4,), labels=(("stable", 4),), states={4: A}, stable=4, published=(1, 2, 3, 4, 5), verified=(4,))
    o = HostObservation(**{**o.__dict__, "held_by_others": (1, 2)})
    p = plan_host(o, 5, keep=1)
    assert set(p.retention) == {3}


def test_compose_keeps_the_fields_of_our_entry_it_does_not_manage():
    """Found by a sweep (2026-12-04): the entry was rebuilt from plain data, so its
    `logging_config` (request logging) was gone after any deploy — at load_validation already."""
    text = (f'model_config_list {{ config {{ name: "{M}" base_path: "{BASE}" model_platform: "tensorflow" '
            f'model_version_policy {{ specific {{ versions: 1 }} }} version_labels {{ key: "stable" value: 1 }} '
            f'logging_config {{ sampling_config {{ sampling_rate: 0.05 }} }} }} }}')
    config = mc.parse(text)
    out = mc.render(compose(config, M, BASE, ConfigTarget(MainTarget((1, 2), (("stable", 2),)), 2)))
    assert "sampling_rate: 0.05" in out and "versions: 2" in out and 'value: 2' in out
    main = mc.parse(out).entry(M)
    assert (main.versions, main.labels) == ((1, 2), (("stable", 2),))


def test_a_rerun_after_a_deploy_that_kept_another_label_changes_nothing():
    """Found by review: the warm copy of a rerun was taken as the newest older loaded version —
    the other label's — so the rerun unloaded the real warm copy (a deploy twice changed things)."""
    before = obs(versions=(1, 2), labels=(("exp", 2), ("stable", 1)), states={1: A, 2: A}, stable=1,
                 published=(1, 2), verified=(1, 2))
    p = plan_host(before, 3)
    assert p.final == MainTarget((1, 2, 3), (("exp", 2), ("stable", 3))) and p.previous_kept == 1
    after = obs(versions=p.final.versions, labels=p.final.labels, states={1: A, 2: A, 3: A}, stable=3,
                published=(1, 2, 3), verified=(1, 2, 3))
    again = plan_host(after, 3)
    assert again.up_to_date and again.final == p.final and again.previous_kept == 1


def test_another_label_of_an_entry_on_another_folder_is_not_carried_over():
    """Found by review: taking over a main entry that reads another folder kept its `exp -> v1`,
    a version our folder does not have: TF Serving could not load it and the switch failed."""
    o = obs(versions=(1, 2), labels=(("exp", 1), ("stable", 2)), states={1: A, 2: A}, stable=2, published=(2,),
            verified=(2,), base="/old/place/digits")
    final, _, _ = final_target(o, 3)
    assert 1 not in final.versions and "exp" not in final.label_map


def test_a_latest_policy_entry_keeps_its_other_label_through_every_step():
    """Found by review: pinned, the entry lost `exp` at load_main and got it back at the switch."""
    o = obs(policy="latest", versions=(2,), labels=(("exp", 1), ("stable", 2)), states={1: A, 2: A}, stable=2,
            published=(1, 2), verified=(1, 2))
    p = plan_host(o, 3)
    for kind in ("pin_main", "load_main", "switch"):
        assert step(p, kind).config.main.label_map.get("exp") == 1, kind
    labels_only_on_available(p, o)


def test_entries_on_our_folder_with_a_latest_all_or_default_policy_hold_what_they_would_load():
    def config(body):
        return mc.parse(f'model_config_list {{ config {{ name: "shadow" base_path: "{BASE}" '
                        f'model_platform: "tensorflow" {body} }} }}')

    published = (1, 2, 3, 4, 5, 6)
    assert mc.versions_held_by_others(config("model_version_policy { all {} }"), M, BASE, published) == published
    assert mc.versions_held_by_others(config("model_version_policy { latest { num_versions: 4 } }"), M, BASE,
                                      published) == (3, 4, 5, 6)
    assert mc.versions_held_by_others(config(""), M, BASE, published) == (6,)


def test_a_plan_says_when_another_entry_will_serve_the_version_the_moment_it_is_published():
    """Another team's entry on our folder with a `latest`, `all` or default policy loads a
    version as soon as it is published, before the smoke test: the plan says so, naming it."""
    def config(body):
        return mc.parse(f'model_config_list {{ config {{ name: "{M}" base_path: "{BASE}" model_platform: "tensorflow" '
                        f'model_version_policy {{ specific {{ versions: 4 }} }} }} '
                        f'config {{ name: "shadow" base_path: "{BASE}/" model_platform: "tensorflow" {body} }} '
                        f'config {{ name: "other" base_path: "/srv/models/other" model_platform: "tensorflow" }} }}')

    for body, newest in (("model_version_policy { latest { num_versions: 2 } }", 2),
                         ("model_version_policy { all {} }", None), ("", 1)):
        assert mc.entries_loading_new_versions(config(body), M, BASE) == (("shadow", newest),), body
    pinned = config("model_version_policy { specific { versions: 4 } }")
    assert mc.entries_loading_new_versions(pinned, M, BASE) == ()
    o = obs(versions=(4,), labels=(("stable", 4),), states={4: A}, stable=4, published=(4,), verified=(4,))
    warned = HostObservation(**{**o.__dict__, "loaded_by_others_on_publish": (("shadow", 1),)})
    [note] = [n for n in plan_host(warned, 5).notes if "shadow" in n]
    assert "serve v5 as soon as it is published, before the smoke test" in note
    assert not any("shadow" in n for n in plan_host(o, 5).notes)
    # already published (a rerun): the entry loaded it already; nothing new to say
    again = HostObservation(**{**warned.__dict__, "published": (4, 5)})
    assert not any("shadow" in n for n in plan_host(again, 5).notes)


def test_a_plan_does_not_say_another_entry_serves_an_older_version_its_latest_policy_does_not_load():
    """A deploy of an older version (a rollback to one retention removed) publishes v3 beside v5
    and v6: another team's entry with `latest 1`, `latest 2` or the default policy keeps serving
    v5/v6 and never loads v3; only `all`, or a `latest` N that reaches v3, serves it on publish."""
    def config(body):
        return mc.parse(f'model_config_list {{ config {{ name: "{M}" base_path: "{BASE}" model_platform: "tensorflow" '
                        f'model_version_policy {{ specific {{ versions: 6 }} }} }} '
                        f'config {{ name: "shadow" base_path: "{BASE}" model_platform: "tensorflow" {body} }} }}')

    o = obs(versions=(6,), labels=(("stable", 6),), states={6: A}, stable=6, published=(5, 6), verified=(5, 6))
    for body, loads_v3 in (("model_version_policy { latest { num_versions: 1 } }", False), ("", False),
                           ("model_version_policy { latest { num_versions: 2 } }", False),
                           ("model_version_policy { latest { num_versions: 3 } }", True),
                           ("model_version_policy { all {} }", True)):
        others = mc.entries_loading_new_versions(config(body), M, BASE)
        seen = HostObservation(**{**o.__dict__, "loaded_by_others_on_publish": others})
        assert any("shadow" in n for n in plan_host(seen, 3).notes) == loads_v3, body
        assert any("shadow" in n for n in plan_host(seen, 7).notes), body      # a new version: every one of them


# --- found by hand mutation of the plan's decisions (2026-12-05) ------------------------------
def test_without_a_stable_label_the_host_serves_its_highest_version_and_keeps_it_warm():
    """TF Serving sends unversioned requests to the highest loaded version: that is what serves."""
    o = obs(versions=(1, 2), states={1: A, 2: A}, published=(1, 2), verified=(1, 2))
    p = plan_host(o, 3)
    assert p.current == 2 and p.previous_kept == 2 and p.final == MainTarget((2, 3), (("stable", 3),))


def test_a_specific_main_entry_listing_no_version_is_kept_as_it_is_while_validating():
    """`specific {}` by hand: not ours to rebuild (a MainTarget of no version is a ConfigError)."""
    o = HostObservation(host="h1", model=M, base_path=BASE, main_policy="specific", main_base_path=BASE,
                        published=(1,))
    p = plan_host(o, 1)
    assert step(p, "load_validation").config.main == KEEP
    assert step(p, "switch").config.main == MainTarget((1,), (("stable", 1),))


def test_a_label_on_a_version_that_is_not_loaded_is_left_out_of_every_config_written():
    """TF Serving refuses a config labelling a version that is not AVAILABLE: the validation config
    keeps only the labels it can honour, and the final one does not load v1 again for its label."""
    o = obs(versions=(1, 3), labels=(("experiment", 1), ("stable", 3)), states={1: "END", 3: A}, stable=3,
            published=(1, 3), verified=(3,))
    p = plan_host(o, 4)
    assert step(p, "load_validation").config.main == MainTarget((1, 3), (("stable", 3),))
    assert p.final == MainTarget((3, 4), (("stable", 4),))
    labels_only_on_available(p, o)


def test_a_label_on_a_version_not_published_in_our_folder_is_not_kept():
    o = obs(versions=(1, 3), labels=(("experiment", 1), ("stable", 3)), states={1: A, 3: A}, stable=3,
            published=(3,), verified=(3,))
    assert plan_host(o, 4).final == MainTarget((3, 4), (("stable", 4),))


def test_the_labels_of_a_main_entry_reading_another_folder_are_not_carried_over():
    """Its v1 is another folder's v1: the entry is replaced whole (only the warm copy is kept)."""
    o = obs(versions=(1, 2), labels=(("experiment", 1), ("stable", 2)), states={1: A, 2: A}, stable=2,
            published=(1, 2), verified=(1, 2), base="/old/place/digits")
    assert plan_host(o, 3).final == MainTarget((2, 3), (("stable", 3),))


def test_a_rerun_keeps_the_newest_older_version_warm_and_unloads_the_rest():
    o = obs(versions=(1, 2, 3), labels=(("stable", 3),), states={1: A, 2: A, 3: A}, stable=3,
            published=(1, 2, 3), verified=(1, 2, 3))
    p = plan_host(o, 3)
    assert p.previous_kept == 2 and p.final == MainTarget((2, 3), (("stable", 3),))
    assert kinds(p) == ["switch", "verify"]


def test_a_rerun_does_not_load_again_a_version_the_config_no_longer_lists():
    """v2 still AVAILABLE while TF Serving unloads it (a deploy without keep-previous): up to date."""
    o = obs(versions=(3,), labels=(("stable", 3),), states={2: A, 3: A}, stable=3, published=(2, 3),
            verified=(2, 3))
    p = plan_host(o, 3)
    assert p.previous_kept is None and p.final == MainTarget((3,), (("stable", 3),))
    assert p.up_to_date


def test_not_up_to_date_while_unversioned_requests_go_to_a_higher_version():
    """`stable` is right but a higher version still loaded takes the unversioned requests."""
    o = obs(versions=(3,), labels=(("stable", 3),), states={3: A, 4: A}, stable=3, published=(3, 4), verified=(3,))
    p = plan_host(o, 3)
    assert not p.up_to_date and step(p, "switch").unload == (4,)


def test_not_up_to_date_while_the_main_entry_reads_another_folder():
    """Everything else matches (versions, label, verified): the entry must still move to our folder."""
    o = obs(versions=(3,), labels=(("stable", 3),), states={3: A}, stable=3, published=(3,), verified=(3,),
            base="/old/place/digits")
    p = plan_host(o, 3)
    assert not p.up_to_date and "publish" in kinds(p)


def test_not_up_to_date_when_the_version_is_not_published_on_the_host():
    o = obs(versions=(3,), labels=(("stable", 3),), states={3: A}, stable=3, published=(), verified=(3,))
    p = plan_host(o, 3)
    assert not p.up_to_date
    # found by a mutation review (2026-12-05): the plan was the fast path (switch, verify), which
    # never publishes: the host never read as up to date (every rerun and watch pass switched it
    # again) and a TF Serving restart found no v3. It publishes v3 again and validates it first.
    assert kinds(p)[:2] == ["publish", "load_validation"] and "switch" in kinds(p), kinds(p)


def test_compose_with_keep_leaves_the_main_entry_verbatim_and_adds_the_validation_entry():
    cfg = mc.parse(f'model_config_list {{ config {{ name: "{M}" base_path: "/elsewhere/{M}" '
                   f'model_platform: "tensorflow" model_version_policy {{ latest {{ num_versions: 2 }} }} }} '
                   f'config {{ name: "other" base_path: "/x/other" model_platform: "tensorflow" }} }}')
    out = compose(cfg, M, BASE, ConfigTarget(KEEP, 5))
    assert [e.name for e in out.entries] == [M, "other", f"{M}__validate"]
    assert out.entry(M) == cfg.entry(M) and out.entry(M).raw == cfg.entry(M).raw
    assert out.entry(f"{M}__validate") == mc.ModelEntry(f"{M}__validate", BASE, "specific", (5,))
    assert [e.name for e in compose(out, M, BASE, ConfigTarget(KEEP, None)).entries] == [M, "other"]


def test_a_latest_policy_without_num_versions_holds_the_newest_version():
    """TF Serving serves max(num_versions, 1) of the newest (file_system_storage_path_source.cc):
    `latest {}` holds the newest, which retention must keep."""
    cfg = mc.parse(f'model_config_list {{ config {{ name: "shadow" base_path: "{BASE}" '
                   f'model_platform: "tensorflow" model_version_policy {{ latest {{ }} }} }} }}')
    assert mc.versions_held_by_others(cfg, M, BASE, (1, 2, 3)) == (3,)


def test_a_self_loading_main_entry_is_pinned_without_a_label_on_a_version_it_unloaded():
    """`latest` moved from v1 to v2 and unloaded v1, its `stable -> 1` left behind: the pinned
    config must not label v1 (TF Serving refuses a label on a version that is not AVAILABLE)."""
    o = obs(policy="latest", versions=(), labels=(("stable", 1),), states={2: A}, stable=None, published=(1, 2))
    p = plan_host(o, 3)
    assert step(p, "pin_main").config == ConfigTarget(MainTarget((2,), ()), None)
    labels_only_on_available(p, o)


def test_a_label_left_on_a_version_that_never_loaded_is_not_written_before_it_loads():
    """A switch config naming v4 whose load failed: the load_main config must not label v4 yet."""
    o = obs(versions=(3, 4), labels=(("stable", 4),), states={3: A, 4: "END"}, stable=None, published=(3, 4),
            verified=(3,))
    p = plan_host(o, 4)
    assert step(p, "load_main").config.main == MainTarget((3, 4), ())
    labels_only_on_available(p, o)


def test_the_switch_waits_out_only_versions_above_the_new_one():
    """Unversioned requests go to the highest loaded version: a lower one being unloaded is no wait."""
    o = obs(versions=(1, 2), labels=(("stable", 2),), states={1: A, 2: A}, stable=2, published=(1, 2, 3),
            verified=(1, 2, 3))
    p = plan_host(o, 3)
    assert p.final.versions == (2, 3) and step(p, "switch").unload == ()


def test_the_retention_preview_keeps_the_version_a_rollback_would_go_to():
    o = obs(versions=(4,), labels=(("stable", 4),), states={4: A}, stable=4, published=(1, 2, 3, 4), verified=(4,))
    assert plan_host(o, 5, keep=1).retention == (1, 2, 3)
    assert plan_host(o, 5, keep=1, rollback_to=2).retention == (1, 3)


def test_a_warm_copy_served_from_another_folder_is_not_kept_when_our_folder_lacks_it():
    """Found by a mutation review (2026-12-05): taking over a main entry that serves v7 from
    another folder, the final entry on our folder listed v7 as the warm copy although our folder
    has no v7: TF Serving unloaded it, the plan said "keep v7 loaded", and the host never read as
    up to date again (every rerun and every `sync watch` pass switched it anew)."""
    o = obs(versions=(7,), labels=(("stable", 7),), states={7: A}, stable=7, published=(), verified=(),
            base="/old/place/digits")
    p = plan_host(o, 8)
    assert p.previous_kept is None and p.final == MainTarget((8,), (("stable", 8),)), p
    assert any("previous v7 is not kept warm: it is served from /old/place/digits" in n for n in p.notes), p.notes
    # published in our folder too: kept, as before
    o2 = obs(versions=(7,), labels=(("stable", 7),), states={7: A}, stable=7, published=(7,), verified=(7,),
             base="/old/place/digits")
    assert plan_host(o2, 8).previous_kept == 7


def test_a_listed_version_whose_load_failed_is_unlisted_before_it_is_loaded_again():
    # a deploy killed while v2 failed to load in the main entry (or a hand edit): TF Serving never
    # loads v2 again while it stays listed, so every config the plan writes until load_main
    # must leave it out (the rerun failed at wait_main with the old error, every time)
    from dataclasses import replace
    o = replace(obs(versions=(1, 2), labels=(("stable", 1),), states={1: A, 2: "END"}, stable=1,
                    published=(1, 2), verified=(1,)), main_errors={2: "out of memory"})
    p = plan_host(o, 2)
    assert kinds(p) == ["pin_main", "publish", "load_validation", "wait_validation", "smoke_validation",
                        "drop_validation", "load_main", "wait_main", "switch", "verify"]
    assert step(p, "pin_main").config == ConfigTarget(MainTarget((1,), (("stable", 1),)), None)
    assert step(p, "load_validation").config.main == MainTarget((1,), (("stable", 1),))
    assert step(p, "load_main").config.main == MainTarget((1, 2), (("stable", 1),))
    # a leftover validation entry whose version ended is dropped in the same write, then added again
    o = obs(versions=(1,), labels=(("stable", 1),), states={1: A}, stable=1, validate=2, vstates={2: "END"},
            published=(1, 2), verified=(1,))
    p = plan_host(o, 2)
    assert kinds(p)[:3] == ["pin_main", "publish", "load_validation"]
    assert step(p, "pin_main").config == ConfigTarget(MainTarget((1,), (("stable", 1),)), None)
    assert step(p, "load_validation").config.validate == 2


@pytest.mark.parametrize("o", [
    obs(versions=(1, 5), labels=(("stable", 1),), states={1: A, 5: A}, stable=1, published=(1,)),   # folder gone
    obs(versions=(1, 5), labels=(("stable", 1),), states={1: A, 5: A}, stable=1, published=(1, 5),
        base="/elsewhere/digits"),                                                                   # another folder
])
@pytest.mark.parametrize("fast", [False, True])
def test_peak_memory_counts_the_validation_copy_whenever_the_deploy_loads_one(o, fast):
    """`sync plan`'s peak memory left the new version's validation copy out whenever the main entry
    had the version loaded, though the deploy publishes it and loads that copy unless it is loaded
    from the folder it publishes into (found by review, 2026-12-06, fifteenth stop)."""
    from serving_sync.plan import StepKind, peak_copies

    assert StepKind.LOAD_VALIDATION in kinds(plan_host(o, 5, fast=fast))
    assert peak_copies(o, 5, fast=fast) == (1, 5) + (5,) * (2 if fast else 1)
    here = obs(versions=(1, 5), labels=(("stable", 1),), states={1: A, 5: A}, stable=1, published=(1, 5))
    assert StepKind.LOAD_VALIDATION not in kinds(plan_host(here, 5, fast=fast))
    assert peak_copies(here, 5, fast=fast) == (1, 5)


def test_not_up_to_date_while_tf_serving_serves_a_validation_copy_the_file_does_not_list():
    """A deploy killed before reloading the config that dropped `digits__validate`: the copy stays
    loaded until a reload, so the host is not up to date (the switch reloads) and not applied."""
    o = obs(versions=(3,), labels=(("stable", 3),), states={3: A}, stable=3, published=(3,), verified=(3,),
            vstates={3: A})
    p = plan_host(o, 3)
    assert not p.up_to_date and kinds(p) == ["switch", "verify"]
    assert not applied(o) and applied(obs(versions=(3,), labels=(("stable", 3),), states={3: A}, stable=3,
                                          vstates={3: "END"}))


def test_tf_serving_has_not_applied_a_file_whose_label_or_versions_it_does_not_show():
    """What makes the first unchanged write of a rerun reload anyway (``HostRun._write``)."""
    base = dict(versions=(2, 3), labels=(("stable", 3),), published=(2, 3))
    assert applied(obs(**base, states={2: A, 3: A}, stable=3))
    assert not applied(obs(**base, states={2: A, 3: A}, stable=2))            # switch written, not reloaded
    assert not applied(obs(**base, states={2: A}, stable=None))                # v3 never seen
    assert not applied(obs(**base, states={2: A, 3: "END"}, stable=3))         # listed again, unloaded
    assert not applied(obs(**base, states={1: A, 2: A, 3: A}, stable=3))       # v1 unlisted, still loaded
    assert not applied(obs(**base, states={2: A, 3: A}, stable=3, validate=3))   # validation copy not seen
    assert applied(obs(**base, states={2: A, 3: A}, stable=3, validate=3, vstates={3: "LOADING"}))


def test_peak_memory_counts_a_leftover_validation_copy_of_another_version():
    """A killed deploy's validation copy of v4 stays loaded until the new validation copy of v5 is
    AVAILABLE (TF Serving's AvailabilityPreservingPolicy loads an aspired version before it unloads
    one no longer aspired): `sync plan`'s peak left it out, a host sized by the plan ran out of
    memory at its deploy's first load (found by review, 2026-12-07, nineteenth stop)."""
    from serving_host.policy import READY, Snapshot, next_action
    from serving_sync.plan import StepKind, peak_copies, peak_memory

    o = obs(versions=(1,), labels=(("stable", 1),), states={1: A}, stable=1, published=(1, 4), verified=(1,),
            validate=4, vstates={4: A})
    assert step(plan_host(o, 5), StepKind.LOAD_VALIDATION).config.validate == 5
    # the load of v5 comes first, v4 is unloaded only once v5 serves
    assert next_action([Snapshot(4, READY, False), Snapshot(5, "new", True)]).kind == "load"
    assert peak_copies(o, 5) == (1, 4, 5)
    assert peak_memory(peak_copies(o, 5), {1: 100, 4: 100, 5: 100}) == 360
    # --fast: the larger of that moment and the later one holding two copies of v5
    assert peak_copies(o, 5, fast=True, sizes={1: 10, 4: 30, 5: 20}) == (1, 4, 5)
    assert peak_copies(o, 5, fast=True, sizes={1: 10, 4: 10, 5: 20}) == (1, 5, 5)
    # a stray copy (the file lists none) counts the same; one of v5 itself is the copy the deploy keeps
    stray = obs(versions=(1,), labels=(("stable", 1),), states={1: A}, stable=1, published=(1, 4),
                vstates={4: A, 5: A})
    assert peak_copies(stray, 5) == (1, 4, 5)
    # nothing loaded by the deploy (v5 verified in the main entry): the leftover is held until the switch
    here = obs(versions=(1, 5), labels=(("stable", 1),), states={1: A, 5: A}, stable=1, published=(1, 4, 5),
               verified=(1, 5), validate=4, vstates={4: A})
    assert peak_copies(here, 5) == (1, 5, 4)
