"""Serving signature compatibility (pure, fast)."""
from __future__ import annotations

import copy

from registry.signature import covers, differences, format_problems

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


def test_an_input_shape_must_accept_everything_clients_send():
    assert covers([-1, 8, 8, 1], [-1, 8, 8, 1])
    assert covers([-1, -1, -1, 1], [-1, 8, 8, 1])       # widened: every old input still fits
    assert not covers([32, 8, 8, 1], [-1, 8, 8, 1])     # narrowed: a batch of 1 no longer fits
    assert not covers([1, 8, 8, 1], [-1, 8, 8, 1])
    assert not covers([-1, 28, 28, 1], [-1, 8, 8, 1])
    assert not covers([-1, 64], [-1, 8, 8, 1])
    assert covers(None, [-1, 8]) and not covers([-1, 8], None)
    assert differences(variant(inputs__inputs__shape=[-1, -1, -1, 1]), SIG) == []
    d = differences(variant(inputs__inputs__shape=[1, 8, 8, 1]), SIG)
    assert d == ["'serving_default' input 'inputs' shape [1, 8, 8, 1] does not accept every input of shape "
                 "[-1, 8, 8, 1] that clients send"]


def test_each_breaking_change_is_named():
    d = differences(variant(inputs__inputs__dtype="DT_INT64"), SIG)
    assert d == ["'serving_default' input 'inputs' dtype changed from DT_FLOAT to DT_INT64"]
    d = differences(variant(inputs__inputs__shape=[-1, 28, 28, 1]), SIG)
    assert len(d) == 1 and "shape [-1, 28, 28, 1] does not accept every input of shape [-1, 8, 8, 1]" in d[0]
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


def test_an_output_must_stay_what_clients_already_read():
    # 10 -> 12 (or 5) classes keeps the names, but what an index means to a client changes
    d = differences(variant(outputs__output_0__shape=[-1, 12]), SIG)
    assert d == ["'serving_default' output 'output_0' shape changed from [-1, 10] to [-1, 12], which clients "
                 "written for the old one may not handle"]
    assert differences(variant(outputs__output_0__shape=[-1, 5]), SIG)
    assert differences(variant(outputs__output_0__shape=[-1, -1]), SIG)   # a fixed size became any size
    assert differences(variant(outputs__output_0__dtype="DT_INT64"), SIG) == [
        "'serving_default' output 'output_0' dtype changed from DT_FLOAT to DT_INT64"]
    wider = variant(outputs__output_0__shape=[-1, -1])
    assert differences(variant(outputs__output_0__shape=[-1, 12]), wider) == []   # clients handle any size


def test_malformed_documents_are_reported_not_crashed_on():
    assert format_problems({}) == ["the signature document must be a non-empty JSON object of signatures"]
    assert format_problems([1, 2])
    assert "has no inputs" in format_problems({"serving_default": {"outputs": {"o": {"dtype": "DT_FLOAT"}}}})[0]
    assert "malformed shape" in format_problems(variant(inputs__inputs__shape="8x8"))[0]
    d = differences({"serving_default": {}}, SIG)
    assert d and all(x.startswith("new signature:") for x in d)
