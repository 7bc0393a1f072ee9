"""Serving signature compatibility (pure, fast)."""
from __future__ import annotations

import copy

from registry.signature import differences, format_problems, shapes_compatible

SIG = {"serving_default": {
    "method_name": "tensorflow/serving/predict",
    "inputs": {"inputs": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
    "outputs": {"output_0": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}


def variant(**changes):
    s = copy.deepcopy(SIG)
    sd = s["serving_default"]
    for path, value in changes.items():
        part, name, key = path.split("__")
        if value is None:
            del sd[part][name]
        elif key == "rename":
            sd[part][value] = sd[part].pop(name)
        else:
            sd[part][name][key] = value
    return s


def test_identical_signatures_are_compatible():
    assert differences(copy.deepcopy(SIG), SIG) == []


def test_wildcards_match_any_size_but_rank_must_agree():
    assert shapes_compatible([-1, 8, 8, 1], [-1, 8, 8, 1])
    assert shapes_compatible([-1, -1, -1, 1], [-1, 8, 8, 1])
    assert shapes_compatible([32, 8, 8, 1], [-1, 8, 8, 1])
    assert not shapes_compatible([-1, 28, 28, 1], [-1, 8, 8, 1])
    assert not shapes_compatible([-1, 64], [-1, 8, 8, 1])
    assert shapes_compatible(None, [-1, 8])
    assert differences(variant(inputs__inputs__shape=[-1, -1, -1, 1]), SIG) == []


def test_each_breaking_change_is_named():
    d = differences(variant(inputs__inputs__dtype="DT_INT64"), SIG)
    assert d == ["'serving_default' input 'inputs' dtype changed from DT_FLOAT to DT_INT64"]
    d = differences(variant(inputs__inputs__shape=[-1, 28, 28, 1]), SIG)
    assert len(d) == 1 and "shape [-1, 28, 28, 1] is not compatible with [-1, 8, 8, 1]" in d[0]
    d = differences(variant(inputs__inputs__rename="image"), SIG)
    assert "'serving_default' input 'inputs' was removed" in d
    assert "'serving_default' has a new input 'image' that current clients do not send" in d
    d = differences(variant(outputs__output_0__rename="probabilities"), SIG)
    assert d == ["'serving_default' output 'output_0' was removed",
                 "'serving_default' has a new output name 'probabilities'"]
    s = copy.deepcopy(SIG)
    s["serving_default"]["method_name"] = "tensorflow/serving/classify"
    assert "method changed" in differences(s, SIG)[0]
    assert differences({"other": SIG["serving_default"]}, SIG) == \
        ["signature 'serving_default' is gone (clients call it)"]


def test_output_shape_change_alone_does_not_break_clients():
    # e.g. 10 -> 12 classes keeps names; the rules only require the same output names
    assert differences(variant(outputs__output_0__shape=[-1, 12]), SIG) == []


def test_malformed_documents_are_reported_not_crashed_on():
    assert format_problems({}) == ["the signature document must be a non-empty JSON object of signatures"]
    assert format_problems([1, 2])
    assert "has no inputs" in format_problems({"serving_default": {"outputs": {"o": {"dtype": "DT_FLOAT"}}}})[0]
    assert "malformed shape" in format_problems(variant(inputs__inputs__shape="8x8"))[0]
    d = differences({"serving_default": {}}, SIG)
    assert d and all(x.startswith("new signature:") for x in d)
