"""Fast tests of the serving host's decisions: version discovery and policies, the
availability-preserving policy, config validation and label rules, and the JSON<->tensor rules.
"""
from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from serving_host import config as cfg
from serving_host import json_parse, json_request, json_response, tf_dtypes
from serving_host.policy import LOADING, NEW, READY, Action, Snapshot, next_action
from serving_host.status import ServingError
from serving_host.versions import (
    VersionPolicy,
    aspired,
    discover,
    missing_specific,
    no_versions_reason,
    parse_version,
)


# -- version discovery and policies -----------------------------------------------------------
def test_numeric_children_are_versions_and_others_are_ignored():
    found = discover(["00000123", "124", ".incoming-125-ab12", "assets", "7.5", "", "0"])
    assert found == {123: "00000123", 124: "124", 0: "0"}


def test_a_negative_folder_is_a_negative_version_as_simple_atoi_reads_it():
    """file_system_storage_path_source.cc ParseVersionNumber is ``absl::SimpleAtoi`` into an
    int64 and nothing checks the sign: TF Serving takes a folder ``-1`` as version -1 (latest
    only when nothing higher is there). The local server ignored negative folders."""
    assert parse_version("-1") == -1
    assert parse_version(str(-(2**63))) == -(2**63)
    assert parse_version(str(-(2**63) - 1)) is None
    found = discover(["-3", "-1", "x"])
    assert found == {-3: "-3", -1: "-1"}
    assert aspired(VersionPolicy(), found) == {-1: "-1"}
    assert aspired(VersionPolicy("latest", num_versions=2), {**found, 2: "2"}) == {2: "2", -1: "-1"}


def test_parse_version_limits():
    assert parse_version("00000123") == 123
    assert parse_version(str(2**63 - 1)) == 2**63 - 1
    assert parse_version(str(2**63)) is None
    assert parse_version("12a") is None
    assert parse_version("١٢") is None  # non-ASCII digits are not versions


def test_parse_version_strips_only_ascii_whitespace_as_simple_atoi_does():
    """absl::SimpleAtoi allows ASCII whitespace around the number (space, tab, newline, vertical
    tab, form feed, carriage return) and nothing else: a folder " 7 " is version 7 on TF Serving,
    "7" followed by a no-break space or a 0x1c (which Python's str.strip() also strips) is not."""
    assert parse_version(" 7\t\n\v\f\r") == 7
    assert parse_version("+7") == 7
    for name in ("7\u00a0", "\u20037", "7\x1c", "\x1f7", "7\x85", "\u30007"):
        assert parse_version(name) is None, repr(name)


def test_same_number_twice_keeps_a_stable_name():
    warned: list[str] = []
    assert discover(["007", "7"], warned.append) == {7: "7"}        # TF Serving: the later name wins
    assert discover(["7", "007"]) == {7: "7"}
    assert warned == ["Duplicate version directories detected. Version 7 will be loaded from 7, 007 will be ignored."]


def test_the_all_policy_loads_the_first_listed_name_of_a_version():
    """file_system_storage_path_source.cc AspireAllVersions emits every numeric child of the
    sorted listing (``007`` and ``7`` both as version 7), and AspiredVersionsManager manages the
    first (the second is "already being managed"): version 7 loads from ``007`` there, while
    the other policies take it from ``7`` (IndexChildrenByVersion, the later name)."""
    children = ["7", "007", "8"]
    found = discover(children)
    assert aspired(VersionPolicy("all"), found, children) == {7: "007", 8: "8"}
    assert aspired(VersionPolicy("latest", num_versions=2), found, children) == {7: "7", 8: "8"}
    assert aspired(VersionPolicy("specific", versions=frozenset({7})), found, children) == {7: "7"}


@pytest.mark.parametrize("policy, expected", [
    (VersionPolicy(), {5}),
    (VersionPolicy("latest", num_versions=2), {4, 5}),
    (VersionPolicy("latest", num_versions=10), {1, 4, 5}),
    (VersionPolicy("all"), {1, 4, 5}),
    (VersionPolicy("specific", versions=frozenset({1, 4, 9})), {1, 4}),
])
def test_policies_pick_aspired_versions(policy, expected):
    found = {1: "1", 4: "4", 5: "5"}
    assert set(aspired(policy, found)) == expected


def test_latest_zero_versions_serves_one_as_tf_serving_clamps_it():
    """AspireLatestVersions: std::max(num_versions, 1U)."""
    assert set(aspired(VersionPolicy("latest", num_versions=0), {1: "1", 4: "4", 5: "5"})) == {5}


def test_missing_specific_versions_are_reported():
    policy = VersionPolicy("specific", versions=frozenset({1, 9}))
    assert missing_specific(policy, {1: "1"}) == [9]
    assert missing_specific(VersionPolicy(), {}) == []


def test_why_a_policy_aspires_nothing_names_the_missing_specific_versions():
    specific = VersionPolicy("specific", versions=frozenset({5, 9}))
    assert no_versions_reason("m", "/b/m", specific, {1: "1", 9: "9"}) == (
        "Version(s) [5] of servable m, requested as 'specific' versions in the servable's version policy, "
        "were not found under base path /b/m (it holds version(s) 9, 1)")
    none = "No versions of servable m found under base path /b/m"
    assert no_versions_reason("m", "/b/m", specific, {}) == none
    assert no_versions_reason("m", "/b/m", VersionPolicy(), {}) == none
    assert no_versions_reason("m", "/b/m", VersionPolicy("specific"), {1: "1"}) == (
        "No specific versions requested for servable m.")
    many = no_versions_reason("m", "/b/m", specific, {v: str(v) for v in range(20, 40)})
    assert "(it holds version(s) 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, ...)" in many


def test_empty_base_path_aspires_nothing():
    assert aspired(VersionPolicy(), {}) == {}


# -- availability-preserving policy -----------------------------------------------------------
def test_new_version_loads_before_old_one_unloads():
    # v1 serving and no longer aspired, v2 aspired and new: load v2 first.
    snap = [Snapshot(1, READY, False), Snapshot(2, NEW, True)]
    assert next_action(snap) == Action("load", 2)
    # while v2 loads, v1 keeps serving
    assert next_action([Snapshot(1, READY, False), Snapshot(2, LOADING, True)]) is None
    # v2 ready: now unload v1
    assert next_action([Snapshot(1, READY, False), Snapshot(2, READY, True)]) == Action("unload", 1)


def test_failed_new_version_keeps_old_one_serving():
    assert next_action([Snapshot(1, READY, False), Snapshot(2, "error", True)]) is None


def test_nothing_aspired_unloads_lowest_first():
    assert next_action([Snapshot(3, READY, False), Snapshot(2, READY, False)]) == Action("unload", 2)


def test_two_unaspired_serving_versions_unload_one_even_while_loading():
    snap = [Snapshot(1, READY, False), Snapshot(2, READY, False), Snapshot(3, LOADING, True)]
    assert next_action(snap) == Action("unload", 1)


def test_highest_new_version_loads_first():
    assert next_action([Snapshot(1, NEW, True), Snapshot(2, NEW, True)]) == Action("load", 2)


# -- config parsing and validation ------------------------------------------------------------
CONFIG = """
model_config_list {
  config {
    name: "m"
    base_path: "/models/m"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 4 } }
    version_labels { key: "stable" value: 3 }
    version_labels { key: "canary" value: 4 }
  }
  config { name: "n" base_path: "/models/n/" model_platform: "tensorflow"
           model_version_policy { latest { num_versions: 2 } } }
  config { name: "o" base_path: "/models/o" model_platform: "tensorflow" model_version_policy { all {} } }
}
"""


def test_config_is_parsed_with_the_real_schema():
    sc = cfg.to_server_config(cfg.parse_text(CONFIG))
    assert sc.kind == "list"
    m, n, o = sc.models
    assert (m.name, m.base_path, m.labels) == ("m", "/models/m", {"stable": 3, "canary": 4})
    assert m.policy == VersionPolicy("specific", versions=frozenset({3, 4}))
    assert n.base_path == "/models/n" and n.policy == VersionPolicy("latest", num_versions=2)
    assert o.policy == VersionPolicy("all")


def test_an_entry_without_a_version_policy_serves_its_latest_version_only():
    """POLICY_CHOICE_NOT_SET falls through to kLatest, whose num_versions 0 is taken as 1."""
    sc = cfg.to_server_config(cfg.parse_text(
        'model_config_list { config { name: "m" base_path: "/models/m" model_platform: "tensorflow" } '
        'config { name: "z" base_path: "/models/z" model_platform: "tensorflow" '
        'model_version_policy { latest { } } } }'))
    for m in sc.models:
        assert m.policy == VersionPolicy("latest", num_versions=1)
        assert set(aspired(m.policy, {1: "1", 4: "4", 5: "5"})) == {5}


def test_a_base_path_that_is_a_uri_is_absolute():
    """UriIsRelativePath: a path with a scheme (gs://, s3://) is not relative."""
    sc = cfg.to_server_config(cfg.parse_text(
        'model_config_list { config { name: "m" base_path: "s3://bucket/models/m" model_platform: "tensorflow" } }'))
    assert sc.models[0].base_path == "s3://bucket/models/m"


@pytest.mark.parametrize("path", ["a/b://c", "1s3://bucket/m", "s_3://bucket/m", "://bucket/m", "s://bucket/m"])
def test_a_base_path_with_no_scheme_at_its_start_is_relative_and_refused(path):
    """io::ParseURI takes a scheme only as One(LETTER).Many(LETTER_DIGIT_DOT) (two characters or
    more) followed by :// at the start; anything else is a path, here a relative one:
    ValidateModelConfigList refuses it (a one-letter ``s://`` too)."""
    with pytest.raises(ServingError) as e:
        cfg.to_server_config(cfg.parse_text(
            f'model_config_list {{ config {{ name: "m" base_path: "{path}" model_platform: "tensorflow" }} }}'))
    assert e.value.message == f"Expected model m to have an absolute path or URI; got base_path()={path}"
    assert cfg.to_server_config(cfg.parse_text(
        'model_config_list { config { name: "m" base_path: "gs.x1://b/m" model_platform: "tensorflow" } }'))


def test_a_model_without_a_platform_in_the_last_validated_config_fails_every_later_config():
    """ValidateNoModelsChangePlatforms runs GetPlatform on every model of the old config, not only
    those the new config keeps: a refused config whose model had no platform (it became config_)
    makes a later config without that model fail too."""
    old = cfg.to_server_config(cfg.parse_text('model_config_list { config { name: "a" base_path: "/a" } }'))
    new = cfg.to_server_config(cfg.parse_text(
        'model_config_list { config { name: "b" base_path: "/b" model_platform: "tensorflow" } }'))
    with pytest.raises(ServingError) as e:
        cfg.check_platform_change(old, new)
    assert (e.value.code, e.value.message) == (
        "INVALID_ARGUMENT", "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
        "ModelServerConfig::model_platform, model name is a")


def test_empty_config_list_and_empty_file():
    assert cfg.to_server_config(cfg.parse_text("model_config_list {\n}\n")) == cfg.ServerConfig("list", ())
    assert cfg.to_server_config(cfg.parse_text("")).kind == "empty"


@pytest.mark.parametrize("text, message", [
    ('model_config_list { config { name: "m" base_path: "/a" model_platform: "tensorflow" } '
     'config { name: "m" base_path: "/b" model_platform: "tensorflow" } }',
     "Illegal to list model m multiple times in config list"),
    ('model_config_list { config { name: "m" base_path: "rel/path" model_platform: "tensorflow" } }',
     "Expected model m to have an absolute path or URI; got base_path()=rel/path"),
    ('model_config_list { config { name: "m" base_path: "/a" } }',
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform, "
     "model name is m"),
    ('model_config_list { config { name: "m" base_path: "/a" model_platform: "pytorch" } }',
     "Model m requests unsupported platform pytorch"),
    ('model_config_list { config { name: "m" base_path: "/a" model_platform: "tensorflow" model_type: TENSORFLOW } }',
     "Illegal setting both ModelServerConfig::model_type (deprecated) and ModelServerConfig::model_platform, "
     "model name is m"),
])
def test_invalid_configs_are_rejected_with_tf_serving_messages(text, message):
    with pytest.raises(ServingError) as e:
        cfg.check_platforms_supported(cfg.to_server_config(cfg.parse_text(text)))
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.message == message


def test_syntax_error_names_the_file():
    with pytest.raises(ServingError) as e:
        cfg.parse_text("model_config_list { config { name: ", "/x/models.config")
    assert e.value.code == "INVALID_ARGUMENT"
    assert "Invalid protobuf file: '/x/models.config'" in e.value.message


def test_only_list_to_list_transitions():
    lst = cfg.ServerConfig("list", ())
    cfg.check_transition(cfg.ServerConfig("empty"), lst)
    cfg.check_transition(lst, lst)
    with pytest.raises(ServingError) as e:
        cfg.check_transition(lst, cfg.ServerConfig("empty"))
    assert e.value.code == "FAILED_PRECONDITION"


def _models(labels: dict[str, int]):
    return (cfg.ModelEntry("m", "/m", labels=labels),)


def test_labels_may_point_only_at_available_versions():
    assert cfg.label_map(_models({"stable": 1}), {("m", 1)}, {}, False) == {"m": {"stable": 1}}
    with pytest.raises(ServingError) as e:
        cfg.label_map(_models({"stable": 2}), {("m", 1)}, {"m": {"stable": 1}}, False)
    assert e.value.code == "FAILED_PRECONDITION"
    assert e.value.message == ("Request to assign label to version 2 of model m, which is not currently "
                               "available for inference")


def test_flag_allows_new_labels_but_not_moving_existing_ones_to_unavailable_versions():
    assert cfg.label_map(_models({"canary": 2}), {("m", 1)}, {"m": {"stable": 1}}, True) == {"m": {"canary": 2}}
    assert cfg.label_map(_models({"stable": 2}), set(), {"m": {"stable": 2}}, True) == {"m": {"stable": 2}}
    with pytest.raises(ServingError):
        cfg.label_map(_models({"stable": 2}), {("m", 1)}, {"m": {"stable": 1}}, True)


def test_a_label_before_any_model_list_is_unavailable_as_tf_serving_answers(tmp_path):
    """server_core.cc GetModelVersionForLabel: until a model_config_list has set the label map
    (an empty config file at start, or a first list refused for its labels), a request by label
    is UNAVAILABLE "Model labels does not init yet.<label>"; once one applied, INVALID_ARGUMENT
    "Unrecognized servable version label". This server answered the latter from the start."""
    from serving_host.manager import Manager

    m = Manager(max_num_load_retries=0, file_system_poll_wait_seconds=0, enable_model_warmup=False)
    try:
        m.reload_config(cfg.ServerConfig("empty"))          # an empty models.config: no action
        (tmp_path / "m" / "1").mkdir(parents=True)
        labelled = cfg.ServerConfig("list", (cfg.ModelEntry("m", str(tmp_path / "m"), labels={"stable": 1}),))
        with pytest.raises(ServingError):                   # refused before the label map is swapped
            m.reload_config(labelled, wait_timeout=5)
        for label in ("stable", ""):
            with pytest.raises(ServingError) as e, m.handle("m", label=label):
                pass
            assert (e.value.code, e.value.message) == ("UNAVAILABLE", f"Model labels does not init yet.{label}")
        m.reload_config(cfg.ServerConfig("list", ()), wait_timeout=5)
        with pytest.raises(ServingError) as e, m.handle("m", label="stable"):
            pass
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", "Unrecognized servable version label: stable")
    finally:
        m.stop()


# -- JSON <-> tensors ------------------------------------------------------------------------
F, S, I64, I32, B = tf_dtypes.DT_FLOAT, tf_dtypes.DT_STRING, tf_dtypes.DT_INT64, tf_dtypes.DT_INT32, tf_dtypes.DT_BOOL


def test_dtype_names_are_tensorflows_for_every_datatype():
    """The one ``dtype_name`` (the JSON rules' and the session run's) is DataTypeString for every
    DataType, the newer ones and the references too: a float8 input's JSON refusal named
    ``type_24`` where TF Serving says float8_e5m2."""
    from tensorflow.core.framework import types_pb2

    for name, number in types_pb2.DataType.items():
        if number:
            assert tf_dtypes.dtype_name(number) == name.removeprefix("DT_").lower()
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_inputs([1.0], {"x": types_pb2.DT_FLOAT8_E5M2})
    assert (e.value.code, e.value.message) == ("UNIMPLEMENTED", "Conversion of JSON Value: 1.0 to type: float8_e5m2")


def test_row_format_batches_instances():
    t = json_request.tensors_from_instances([[1.0, 2.0], [3, 4]], {"x": F})["x"]
    assert t.dtype == np.float32 and t.shape == (2, 2)
    assert t.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_row_format_named_inputs_and_b64():
    raw = b"\x00\xffbin"
    t = json_request.tensors_from_instances([{"a": [1.0], "s": {"b64": base64.b64encode(raw).decode()}},
                                   {"a": [2.0], "s": "text"}], {"a": F, "s": S})
    assert t["a"].tolist() == [[1.0], [2.0]]
    assert t["s"].tolist() == [raw, b"text"]


@pytest.mark.parametrize("instances, dtypes, fragment", [
    ([["x", "y"]], {"x": F}, 'JSON Value: "x" Type: String is not of expected type: float'),
    ([1, True], {"x": F}, "Type: True is not of expected type: float"),
    ([[1.0], [1.0, 2.0]], {"x": F}, "Expecting tensor size: 1 but got: 2"),
    ([[[1.0, 2.0], [3.0]]], {"x": F}, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ([[[1.0], 2.0]], {"x": F}, "found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ([1.5], {"x": I64}, "is not of expected type: int64"),
    ([2**31], {"x": I32}, "is not of expected type: int32"),
    ([1, 2], {"a": F, "b": F}, "instances is a plain list, but expecting list of objects"),
    ([{"a": 1.0}], {"a": F, "b": F}, "keys must be equal to: a,b"),
    ([{"a": 1.0, "b": 1.0}, 2.0], {"a": F, "b": F}, "Expecting object but got list at item 1"),
    ([{"zz": 1.0}], {"a": F}, "JSON object: does not have named input: zz"),
    ([{"b64": "!!notbase64!!"}], {"x": S}, "Unable to base64 decode"),
    ([{"b64": "aGk="}], {"x": F}, "is not of expected type: float"),
])
def test_row_format_errors(instances, dtypes, fragment):
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_instances(instances, dtypes)
    assert e.value.code == "INVALID_ARGUMENT"
    assert fragment in e.value.message


D = tf_dtypes.DT_DOUBLE
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("instances, dt", [
    ([[1.0, 2.0], [3, 4]], F), ([[[0.5], [0.25]]] * 3, F), ([1, 2.5, -0.0], F), ([[]], F), ([[[]], [[]]], D),
    ([NAN, INF, -INF], F), ([16777215, -16777215], F), ([16777216], F), ([1e39], F), ([3.4e38, 1e300], D),
    ([2**53 - 1, 1.5], D), ([2**53], D), ([2**70], F), ([1, True], F), ([[1.0, False]], D), ([[1, 2], [3]], F),
    ([[1, 2], 3], F), ([1, [2]], F), ([[1, 2], [3, [4]]], F), ([["1"]], F), ([[None]], F), ([{"b64": "aGk="}], F),
    ([[1.0, 2.0]], I64), ([1, 2], I32),
])
def test_plain_number_fast_path_answers_exactly_as_the_element_walk(instances, dt, monkeypatch):
    """The numpy fast path (``_plain_numbers``) and the element-by-element walk (``_fill``) give
    the same tensor — dtype, shape and bits — or the same error, with and without batching."""
    def outcome():
        try:
            t = json_request.tensors_from_instances(instances, {"x": dt})["x"]
        except ServingError as exc:
            return "error", exc.code, exc.message
        return "tensor", t.dtype, t.shape, t.tobytes()

    fast = outcome()
    monkeypatch.setattr(json_request, "_plain_numbers", lambda *a: None)
    assert outcome() == fast


@pytest.mark.parametrize("instances, dt", [
    ([[1.0, 2.0], [3, 4]], F), ([[[0.5], [0.25]]] * 3, F), ([1, 2.5, -0.0], F), ([3.4e38, 1e300], D),
])
def test_plain_numbers_take_the_fast_path(instances, dt, monkeypatch):
    """The comparison above would pass with the fast path disconnected: plain numbers must use it."""
    real, answers = json_request._plain_numbers, []

    def spy(*args):
        answers.append(real(*args))
        return answers[-1]

    monkeypatch.setattr(json_request, "_plain_numbers", spy)
    json_request.tensors_from_instances(instances, {"x": dt})
    assert any(a is not None for a in answers), answers


def test_plain_number_fast_path_takes_plain_numbers_and_leaves_the_rest():
    shape = json_request.dense_shape([[1.0, 2], [3, 4]])
    assert json_request._plain_numbers([[1.0, 2], [3, 4]], F, shape) == [1.0, 2, 3, 4]
    for odd in ([[1.0, True]], [[1.0, "2"]], [[1.0], [2.0, 3.0]]):
        assert json_request._plain_numbers(odd, F, json_request.dense_shape(odd)) is None, odd
    assert json_request._plain_numbers([16777217, 1e39], F, [2]) == [16777217, 1e39]   # no precision check
    assert json_request._plain_numbers([1, 2], I64, [2]) is None          # only float and double tensors


def test_columnar_inputs():
    assert json_request.tensors_from_inputs([3.0, 4.0], {"x": F})["x"].tolist() == [3.0, 4.0]
    assert json_request.tensors_from_inputs(5.0, {"x": F})["x"].shape == ()
    both = json_request.tensors_from_inputs({"a": [[1, 2]], "b": [True]}, {"a": I64, "b": B})
    assert both["a"].dtype == np.int64 and both["b"].tolist() == [True]
    with pytest.raises(ServingError, match="Missing named input: b in 'inputs' object."):
        json_request.tensors_from_inputs({"a": [1]}, {"a": I64, "b": B})
    with pytest.raises(ServingError, match="inputs is a plain value/list"):
        json_request.tensors_from_inputs([1], {"a": I64, "b": B})


@pytest.mark.parametrize("doc, fragment", [
    ({"instances": [1.0], "inputs": [1.0]}, "expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"instances": 1.0}, "Expecting 'instances' to be an list/array"),
    ({"instances": []}, "No values in 'instances' array"),
    ({"foo": 1}, "Missing 'inputs' or 'instances' key"),
])
def test_predict_request_shape_errors(doc, fragment):
    with pytest.raises(ServingError) as e:
        json_request.predict_inputs(doc, {"x": F})
    assert fragment in e.value.message


@pytest.mark.parametrize("body, fragment", [
    (b"", "JSON Parse error: The document is empty"),
    (b"instances = [1, 2]", "JSON Parse error: Invalid value."),
    (b"[1, 2]", "Is not object"),
])
def test_json_parse_errors(body, fragment):
    with pytest.raises(ServingError) as e:
        json_parse.parse_json(body)
    assert fragment in e.value.message


# Expected texts: rapidjson 1.1.0 (the version TF Serving pins) built with json_tensor.cc's
# ParseJson flags (kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag) and run
# on each body: GetParseError_En(...) and GetErrorOffset(), a byte offset.
@pytest.mark.parametrize("body, message", [
    (b'{"instances": [1 2]}', "Missing a comma or ']' after an array element. at offset: 17"),
    (b'{"instances": [1', "Missing a comma or ']' after an array element. at offset: 16"),
    (b'{"instances": [[1, 2] [3]]}', "Missing a comma or ']' after an array element. at offset: 22"),
    (b'{"a": [1, 2}', "Missing a comma or ']' after an array element. at offset: 11"),
    (b'{"a": [01]}', "Missing a comma or ']' after an array element. at offset: 8"),
    (b'{"a": [1.5.3]}', "Missing a comma or ']' after an array element. at offset: 10"),
    (b'{"a": {"b": 1 "c": 2}}', "Missing a comma or '}' after an object member. at offset: 14"),
    (b'{"a": {"b": 1]}', "Missing a comma or '}' after an object member. at offset: 13"),
    (b'{"a": "x\ny"}', "Invalid escape character in string. at offset: 8"),
    (b'{"a": "x\x00y"}', "Missing a closing quotation mark in string. at offset: 8"),
    (b'{"a": "abc', "Missing a closing quotation mark in string. at offset: 10"),
    (b'{"a": [1., 2.]}', "Miss fraction part in number. at offset: 9"),
    (b'{"a": [-1.e5]}', "Miss fraction part in number. at offset: 10"),
    (b'{"a": [1e, 2]}', "Miss exponent in number. at offset: 9"),
    (b'{"a": [1.5E+]}', "Miss exponent in number. at offset: 12"),
    (b'{"a": [tru]}', "Invalid value. at offset: 10"),
    (b'{"a": [fals ]}', "Invalid value. at offset: 11"),
    (b'{"a": [nul]}', "Invalid value. at offset: 10"),
    (b'   tru', "Invalid value. at offset: 6"),
    (b'{"a": [-]}', "Invalid value. at offset: 8"),
    (b'{"a": [-x]}', "Invalid value. at offset: 8"),
    (b'{"a": [Nax]}', "Invalid value. at offset: 9"),
    (b'{"a": [-Nope]}', "Invalid value. at offset: 9"),
    (b'{"a": [Infinit]}', "Invalid value. at offset: 14"),
    (b'{"a": [.5]}', "Invalid value. at offset: 7"),
    (b':{"a": 1}', "The document is empty. at offset: 0"),
    (b'  ]', "The document is empty. at offset: 2"),
    (b'\x00{"a": 1}', "The document is empty. at offset: 0"),
    (b'x', "Invalid value. at offset: 0"),
    (b'{"a": "\\u12"}', "Incorrect hex digit after \\u escape in string. at offset: 7"),
    (b'{"a": "\\q"}', "Invalid escape character in string. at offset: 7"),
    # offsets count bytes, not characters
    (b'{"\xc3\xa9": [1,]}', "Invalid value. at offset: 10"),
    (b'{"a": "\xe2\x82\xac", "b": tru}', "Invalid value. at offset: 21"),
    (b'{"a": "\xe2\x82\xac\t"}', "Invalid escape character in string. at offset: 10"),
    (b'{"\xc3\xa9": "abc', "Missing a closing quotation mark in string. at offset: 11"),
])
def test_json_parse_errors_are_rapidjson_s_texts_and_byte_offsets(body, message):
    """Python's json says "Expecting ',' delimiter" in an array and an object alike, "Invalid
    control character" for a raw newline or NUL in a string, stops a number at "1." and counts
    characters; rapidjson's texts and offsets were not reproduced for these."""
    with pytest.raises(ServingError) as e:
        json_parse.parse_json(body)
    assert e.value.message == "JSON Parse error: " + message


# Expected texts: rapidjson 1.1.0 run as above. A body cut inside a string (a client's buffer,
# a short Content-Length) ends on what ParseStringToStream reads as "\\0"; the second escape of
# a surrogate pair is read with ParseHex4 before the pair is checked.
@pytest.mark.parametrize("body, message", [
    (b'{"s": "\\', "Invalid escape character in string. at offset: 7"),
    (b'{"s": "x\\u00e9', "Missing a closing quotation mark in string. at offset: 14"),
    (b'{"s": "x\\u00e9\\', "Invalid escape character in string. at offset: 14"),
    (b'{"s": "\\ud83d', "The surrogate pair in string is invalid. at offset: 7"),
    (b'{"s": "\\ud83d\\', "The surrogate pair in string is invalid. at offset: 7"),
    (b'{"s": "\\ud83d\\u', "Incorrect hex digit after \\u escape in string. at offset: 7"),
    (b'{"s": "\\ud83d\\ude0', "Incorrect hex digit after \\u escape in string. at offset: 7"),
    (b'{"s": "\\ud83d\\ude00', "Missing a closing quotation mark in string. at offset: 19"),
    (b'{"s": "\\ud83d\\uzz00"}', "Incorrect hex digit after \\u escape in string. at offset: 7"),
    (b'{"s": "\\ud83d\\u0041"}', "The surrogate pair in string is invalid. at offset: 7"),
    (b'{"a": "\\ud83d\\ude00", "s": "\\', "Invalid escape character in string. at offset: 28"),
])
def test_json_string_errors_are_read_as_rapidjson_reads_the_string(body, message):
    """This server answered Python's view: "Missing a closing quotation mark" for a body ending
    in a backslash, "Incorrect hex digit" for one ending just after a whole \\u escape, "The
    surrogate pair … is invalid" for a bad hex digit in a pair's second escape."""
    with pytest.raises(ServingError) as e:
        json_parse.parse_json(body)
    assert e.value.message == "JSON Parse error: " + message


# Expected texts: rapidjson 1.1.0 run as above: a misplaced -Inf / -NaN is reported at its "-".
@pytest.mark.parametrize("body, message", [
    (b'{"b" -Inf}', "Missing a colon after a name of object member. at offset: 5"),
    (b'{"instances": [1.0 -Inf]}', "Missing a comma or ']' after an array element. at offset: 19"),
    (b'{"instances": [{ -NaN}]}', "Missing a name for object member. at offset: 17"),
    (b'{"b":0-Inf}', "Missing a comma or '}' after an object member. at offset: 6"),
])
def test_a_misplaced_minus_inf_is_reported_at_its_minus_sign(body, message):
    """This server reported these one byte later, at the I or N (it handed Python's json a
    ``-Inf`` as ``" NaN"``, the padding before the word)."""
    with pytest.raises(ServingError) as e:
        json_parse.parse_json(body)
    assert e.value.message == "JSON Parse error: " + message


# Expected texts: rapidjson 1.1.0 run as above; it never checks the encoding.
@pytest.mark.parametrize("body, message", [
    (b'{"instances": [\xff]}', "Invalid value. at offset: 15"),
    (b'{"instances": [1.0\xff]}', "Missing a comma or ']' after an array element. at offset: 18"),
    (b'{"instances": [1.0] \xa9', "Missing a comma or '}' after an object member. at offset: 20"),
    (b'  \x80{"instances": [1.0]}', "Invalid value. at offset: 2"),
    (b'{"a": "\xff"}', "Invalid encoding in string. at offset: 7"),     # kept by rapidjson: README
])
def test_a_byte_that_is_not_utf8_outside_a_string_is_answered_as_rapidjson_answers_it(body, message):
    """This server answered "Invalid encoding in string." for any byte that is not UTF-8, in a
    string or not, and refused a whole request followed by one."""
    with pytest.raises(ServingError) as e:
        json_parse.parse_json(body)
    assert e.value.message == "JSON Parse error: " + message
    assert json_parse.parse_json(b'{"instances": [1.0]}\n\xff\xfe') == {"instances": [1.0]}


def test_json_parsing_stops_at_the_end_of_the_document_as_rapidjson_does():
    """json_tensor.cc parses with kParseStopWhenDoneFlag: what follows the root value is not read
    (this server answered "The document root must not be followed by other values.")."""
    assert json_parse.parse_json(b' {"a": 1} x') == {"a": 1}
    assert json_parse.parse_json(b'{"a": 1, "a": 2}') == {"a": 1}       # FindMember: the first
    # inside, TF Serving's example parsing assigns each member in turn (the last wins), and a
    # {"b64": …} object must have exactly one member
    doc = json_parse.parse_json(b'{"examples": [{"x": [1.0], "x": [2.0]}], "b": {"b64": "YQ==", "b64": "Yg=="}}')
    assert doc["examples"][0]["x"] == [2.0] and not json_request._is_b64(doc["b"])


def test_a_utf8_byte_order_mark_is_skipped_as_rapidjson_skips_it():
    """json_tensor.cc reads the body through EncodedInputStream<UTF8<>, MemoryStream>, whose
    constructor takes a leading 0xEF, then 0xBB, then 0xBF, each if it comes next (rapidjson
    1.1.0 encodedstream.h): a body saved with a BOM (Notepad, PowerShell) is read by TF Serving.
    This server answered "Invalid value. at offset: 0". Offsets still count the skipped bytes;
    rapidjson's whitespace is space, \\t, \\n, \\r only."""
    for body in (b'\xef\xbb\xbf{"a": 1}', b'\xef\xbb\xbf  {"a": 1}', b'\xbb{"a": 1}', b'\xef\xbf{"a": 1}'):
        assert json_parse.parse_json(body) == {"a": 1}, body
    for body, message in ((b'\xef\xbb\xbf', "The document is empty. at offset: 3"),
                          (b'\xef\xbb\xbf \n', "The document is empty. at offset: 5"),
                          (b'\xef\xbb\xbf{"a": [1 2]}', "Missing a comma or ']' after an array element. at offset: 12"),
                          (b'\xef\xbb\xbf{"a": "\xff"}', "Invalid encoding in string. at offset: 10"),
                          (b'\xef\xbb\xbf{"a": "\\ud800"}', "The surrogate pair in string is invalid. at offset: 10"),
                          (b'\xef\xbb\xbf\xef\xbb\xbf{}', "Invalid value. at offset: 3"),
                          (b'\x0c{"a": 1}', "Invalid value. at offset: 0"),
                          ("\u00a0".encode(), "Invalid value. at offset: 0")):
        with pytest.raises(ServingError) as e:
            json_parse.parse_json(body)
        assert e.value.message == "JSON Parse error: " + message, body


def test_a_number_too_big_is_reported_at_its_own_byte_offset():
    """rapidjson reports kParseErrorNumberTooBig at the number's start (ParseNumber's
    ``startOffset``, a byte offset). This server gave the first place the number's text occurs,
    counted in characters: inside a key that spells it, or one short after a non-ASCII key."""
    for body, offset in ((b'{"1e400": 1, "a": 1e400}', 18), ('{"\u00e9": 1e400}'.encode(), 7),
                         (b'{"a": -1e400}', 6), (b'{"a": "9e999", "b": [1, 9e999]}', 24),
                         ('{"\u00e9\u00e9": ['.encode() + b"9" * 5000 + b"]}", 10)):
        with pytest.raises(ServingError) as e:
            json_parse.parse_json(body)
        assert e.value.message == f"JSON Parse error: Number too big to be stored in double. at offset: {offset}", body


def test_numbers_skip_the_checks_only_where_none_can_pass_dbl_max(monkeypatch):
    """A body with no run of 200 digits and no 3-digit exponent is decoded with the C scanner's own
    int() and float() (no Python call per number); the largest numbers such a body can hold stay
    finite and decode exactly as the checked path decodes them, and every number that could pass
    DBL_MAX still takes the checked path."""
    big = "9" * 199
    bodies = [b'{"a": [1.5, -2, 0.25e-12, 3E+99, -0.0]}',
              ('{"a": [%s.%se99, -%se+99, %s]}' % (big, big, big, big)).encode(),
              '{"\u00e9": [1e99, -9.5e-99, 18446744073709551616]}'.encode()]
    for body in bodies:
        assert not json_parse._may_hold_huge_number(body), body
        fast = json_parse.parse_json(body)
        with monkeypatch.context() as m:
            m.setattr(json_parse, "_may_hold_huge_number", lambda _body: True)
            checked = json_parse.parse_json(body)
        assert fast == checked and all(math.isfinite(v) for v in fast[next(iter(fast))]), body
        assert [type(v) for v in fast[next(iter(fast))]] == [type(v) for v in checked[next(iter(checked))]]
    for body in (b'{"a": 1e308}', b'{"a": 1e309}', b'{"a": 1E+400}', b'{"a": 1e-0400}', b'{"a": ' + b"1" * 200 + b"}",
                 b'{"a": 1' + b"0" * 200 + b'.5}'):
        assert json_parse._may_hold_huge_number(body), body


def test_a_repeated_named_input_in_columnar_inputs_takes_its_first_value():
    """FillTensorMapFromInputsMap finds each named input with FindMember: the first of repeated
    keys. This server took the last (``{"x": [1.0], "x": [5.0]}`` predicted on 5.0, and a bad
    second value was an error TF Serving never reads)."""
    for body in (b'{"inputs": {"x": [1.0], "x": [5.0]}}', b'{"inputs": {"x": [1.0], "x": "s"}}'):
        tensors, _ = json_request.predict_inputs(json_parse.parse_json(body), {"x": F})
        assert tensors["x"].tolist() == [1.0], body
    two = {"a": F, "b": F}
    tensors, _ = json_request.predict_inputs(
        json_parse.parse_json(b'{"inputs": {"b": 2.0, "a": [1.0], "b": [7.0], "a": 3}}'), two)
    assert tensors["a"].tolist() == [1.0] and tensors["b"].tolist() == 2.0


def test_special_floats_are_read_as_rapidjson_1_1_0_reads_them():
    """json_tensor.cc parses with kParseNanAndInfFlag, and TF Serving pins rapidjson 1.1.0
    (workspace.bzl), whose ParseNumber takes ``NaN``, ``Inf`` and ``Infinity``, each with an
    optional ``-`` (this server refused ``Inf``, ``-Inf`` and ``-NaN`` with "Invalid value.")."""
    doc = json_parse.parse_json(b'{"a": [NaN, -NaN, Inf, -Inf, Infinity, -Infinity], "s": "Inf -NaN"}')
    a = doc["a"]
    assert math.isnan(a[0]) and math.isnan(a[1])
    assert a[2:] == [math.inf, -math.inf, math.inf, -math.inf]
    assert doc["s"] == "Inf -NaN"
    doc = json_parse.parse_json(b'{"x":Inf,"y":{"z":-Inf},"n":-NaN}')
    assert doc["x"] == math.inf and doc["y"]["z"] == -math.inf and math.isnan(doc["n"])
    with pytest.raises(ServingError) as e:                  # a number, as there: not an object
        json_parse.parse_json(b"-Inf ")
    assert e.value.message == "JSON Value:  Is not object"
    # what rapidjson 1.1.0 still refuses: a partial word, lower case
    for body in (b'{"a": [Infinit]}', b'{"a": [inf]}', b'{"a": [nan]}', b'{"a": [Na]}'):
        with pytest.raises(ServingError, match="JSON Parse error: Invalid value."):
            json_parse.parse_json(body)
    # offsets of later errors are those of the text as sent
    with pytest.raises(ServingError, match="at offset: 12$"):
        json_parse.parse_json(b'{"a": [-Inf,]}')


def test_signature_name_must_be_a_string():
    with pytest.raises(ServingError, match="'signature_name' key must be a string value."):
        json_request.signature_name({"signature_name": 100})


@pytest.mark.parametrize("value, text", [
    (2.5, "2.5"), (3.0, "3.0"), (0.1, "0.1"), (42.0, "42.0"), (9000000.0, "9e+06"),
    (1e-05, "1e-05"), (float("nan"), "NaN"), (float("-inf"), "-Infinity"), (1 / 3, "0.333333343"),
])
def test_float32_formatting(value, text):
    assert json_response.format_float(float(np.float32(value))) == text


def test_row_and_columnar_responses():
    y = np.array([[2.5], [3.0]], dtype=np.float32)
    assert json.loads(json_response.predict_response({"y": y}, json_request.ROW)) == {"predictions": [[2.5], [3.0]]}
    assert json.loads(json_response.predict_response({"y": y}, json_request.COLUMNAR)) == {"outputs": [[2.5], [3.0]]}
    multi = {"b_bytes": np.array([b"\x01", b"\x02"], dtype=object), "n": np.array([1, 2], dtype=np.int64)}
    assert json.loads(json_response.predict_response(multi, json_request.ROW)) == {
        "predictions": [{"b_bytes": {"b64": "AQ=="}, "n": 1}, {"b_bytes": {"b64": "Ag=="}, "n": 2}]}
    assert json.loads(json_response.predict_response(multi, json_request.COLUMNAR)) == {
        "outputs": {"b_bytes": [{"b64": "AQ=="}, {"b64": "Ag=="}], "n": [1, 2]}}


def test_row_response_needs_a_consistent_batch():
    with pytest.raises(ServingError, match="has inconsistent batch size"):
        json_response.predict_response({"a": np.zeros(2), "b": np.zeros(3)}, json_request.ROW)
    with pytest.raises(ServingError, match="has no shape information"):
        json_response.predict_response({"a": np.float32(1.0)}, json_request.ROW)


def test_examples_become_serialized_tf_examples():
    from tensorflow.core.example import example_pb2

    docs = json_request.serialized_examples({"context": {"c": "ctx", "x": 1.0},
                                   "examples": [{"x": 80.0, "ids": [1, 2], "flag": True}]})
    ex = example_pb2.Example.FromString(docs[0])
    f = ex.features.feature
    assert list(f["x"].float_list.value) == [80.0]          # the example wins over the context
    assert list(f["c"].bytes_list.value) == [b"ctx"]
    assert list(f["ids"].int64_list.value) == [1, 2]
    assert list(f["flag"].int64_list.value) == [1]


def test_example_int64_limits_are_rapidjson_s():
    """json_tensor.cc: an integer is refused as uint64 only when ``!IsInt64() && IsUint64()``, so
    INT64_MAX and INT64_MIN are int64 features, 2**63 is refused."""
    from tensorflow.core.example import example_pb2

    doc = json_request.serialized_examples({"examples": [{"x": [2**63 - 1, -2**63]}]})[0]
    assert list(example_pb2.Example.FromString(doc).features.feature["x"].int64_list.value) == [2**63 - 1, -2**63]
    with pytest.raises(ServingError) as e:
        json_request.serialized_examples({"examples": [{"x": [2**63]}]})
    assert e.value.message == "Feature: x has uint64_t element. Only int64_t is supported."


@pytest.mark.parametrize("doc, fragment", [
    ({}, "When method is classify, key 'examples' is expected and was not found"),
    ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
    ({"examples": []}, "'examples' value is an empty array"),
    ({"examples": [1]}, "Example must be JSON object but got JSON Number"),
    ({"examples": [{"x": [1, "a"]}]}, "Unexpected element type in feature: x expecting type: int64"),
    ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
    # AddValueToFeature checks the feature's kind before it decodes a {"b64": ...}
    ({"examples": [{"x": [1, {"b64": "!"}]}]}, "Unexpected element type in feature: x expecting type: int64"),
])
def test_example_errors(doc, fragment):
    with pytest.raises(ServingError) as e:
        json_request.serialized_examples(doc)
    assert fragment in e.value.message


def test_error_body_is_tf_serving_shaped():
    assert json.loads(json_response.error_body('a "quoted"\nmessage')) == {"error": 'a "quoted"\nmessage'}
    assert json_response.error_body("x") == '{\n    "error": "x"\n}'      # rapidjson PrettyWriter



def test_load_failures_map_to_tf_status_codes():
    import tensorflow as tf

    from serving_host.status import HTTP_STATUS, from_exception

    assert from_exception(tf.errors.InvalidArgumentError(None, None, "bad shape")).code == "INVALID_ARGUMENT"
    assert from_exception(tf.errors.NotFoundError(None, None, "gone")).message == "gone"
    assert from_exception(FileNotFoundError("no dir")).code == "NOT_FOUND"
    assert from_exception(OSError("SavedModel file does not exist at: /x")).code == "NOT_FOUND"
    assert from_exception(ValueError("odd")).code == "UNKNOWN"
    assert HTTP_STATUS["FAILED_PRECONDITION"] == 400 and HTTP_STATUS["UNAVAILABLE"] == 503


def test_every_status_code_has_tf_serving_s_http_status():
    """ToHTTPStatusCode (http_server.cc), code by code: a REST client of the deploy (smoke test,
    bake) sees these, so one wrong entry would pass here and differ on a real host."""
    from serving_host.status import CODES, HTTP_STATUS, ServingError

    assert HTTP_STATUS == {
        "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
        "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
    assert set(CODES) == set(HTTP_STATUS)
    assert ServingError("ABORTED", "x").http_status == 409


def test_reload_config_metric_reads_the_first_point_in_label_order():
    """model_service_impl.cc GetMetrics takes the first point of the metric's point set; a TF
    counter's cells are a std::map keyed by label values, so that is the smallest label tuple,
    whatever order the cells were made in (0 for a histogram, a metric without points, or none)."""
    from serving_host import metrics

    r = metrics.serving_registry()
    r.counter(metrics.REQUEST_COUNT, ("m", "OK"), 5)
    r.counter(metrics.REQUEST_COUNT, ("a", "OK"), 2)
    r.counter(metrics.REQUEST_COUNT, ("m", "INVALID_ARGUMENT"), 7)
    assert r.first_int(metrics.REQUEST_COUNT) == 2
    r.sample(metrics.REQUEST_LATENCY, ("a", "predict", "REST"), 10)
    assert r.first_int(metrics.REQUEST_LATENCY) == 0
    assert r.first_int(metrics.EXAMPLE_COUNT_TOTAL) == 0 and r.first_int("/no/such") == 0


def test_an_unload_waits_for_a_request_in_flight_however_long_it_runs():
    """TF Serving's manager frees a version once its last handle is released, without a time
    limit (basic_manager.cc). ``Servable.close`` gave up after 30 s and closed the session under
    the running request (HTTP 499, "cancelled")."""
    import threading

    from serving_host.servable import Servable
    from tests.helpers import TF_SERVING_TESTDATA

    path = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
    servable = Servable.load("default", 123, str(path))
    bounds, waiting = [], threading.Event()
    real_wait_for = servable._idle.wait_for

    def recording(predicate, timeout=None):
        bounds.append(timeout)
        waiting.set()
        return real_wait_for(predicate, timeout=timeout)

    servable._idle.wait_for = recording
    servable.acquire()
    closer = threading.Thread(target=servable.close, daemon=True)    # a failed assert leaves it waiting
    closer.start()
    assert waiting.wait(30)          # the closer got there (a loaded machine starts it late)
    closer.join(0.3)
    assert closer.is_alive() and bounds == [None]      # waiting, with no bound
    servable.release()
    closer.join(10)
    assert not closer.is_alive() and servable._closed


def test_grpc_error_messages_are_cut_at_1024_bytes_not_characters():
    """ToGRPCStatus cuts std::string's length(): bytes. A 600-character name of two-byte
    characters (1235 bytes) came back whole."""
    from serving_host.grpc_service import grpc_message

    cut = grpc_message("é" * 600)
    assert cut.endswith("...TRUNCATED") and cut.removesuffix("...TRUNCATED") == "é" * 512
    assert grpc_message("é" * 512) == "é" * 512 and grpc_message("x" * 1025) == "x" * 1024 + "...TRUNCATED"


def test_a_saved_model_pbtxt_that_does_not_parse_is_named_as_a_text_proto(tmp_path):
    """TensorFlow's ReadSavedModel reads ``saved_model.pb`` if it exists, else
    ``saved_model.pbtxt`` with ReadTextProto, whose failure is DATA_LOSS ``Can't parse <path> as
    text proto``. The local server named ``saved_model.pb`` "as binary proto" for a bad pbtxt, a
    file that is not there."""
    from serving_host.servable import Servable

    (tmp_path / "saved_model.pbtxt").write_text("this is { not a saved model\n")
    with pytest.raises(ServingError) as e:
        Servable.load("m", 1, str(tmp_path))
    assert (e.value.code, e.value.message) == (
        "DATA_LOSS", f"Can't parse {tmp_path / 'saved_model.pbtxt'} as text proto")
    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xff not a proto")      # the .pb is read first
    with pytest.raises(ServingError) as e:
        Servable.load("m", 1, str(tmp_path))
    assert (e.value.code, e.value.message) == (
        "DATA_LOSS", f"Can't parse {tmp_path / 'saved_model.pb'} as binary proto")


@pytest.mark.parametrize("escape", ["\\d", "\\/", "\\8", "\\N{DIGIT ONE}", "\\xg", "\\U00110000"])
def test_a_string_escape_tf_serving_refuses_is_an_invalid_protobuf_file(escape):
    """protobuf's C++ tokenizer (TextFormat::ParseFromString) refuses an escape it does not know;
    Python's text_format kept it as a backslash and the character: a file TF Serving refuses ran."""
    with pytest.raises(ServingError) as e:
        cfg.parse_text(f'model_config_list {{ config {{ name: "m" base_path: "/a{escape}b" '
                       f'model_platform: "tensorflow" }} }}', "/b/models.config")
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.message.startswith("Invalid protobuf file: '/b/models.config'")


def test_a_question_mark_escape_is_a_question_mark_as_tf_serving_reads_it():
    """``\\?`` is a ``?`` to the C++ tokenizer (Python's text_format kept the backslash); escapes
    in a comment are not read at all."""
    msg = cfg.parse_text('# it\'s \\d\nmodel_config_list { config { name: "m" base_path: "/a\\?b\\\\d\'#" '
                         'model_platform: "tensorflow" } }')
    assert msg.model_config_list.config[0].base_path == "/a?b\\d'#"
