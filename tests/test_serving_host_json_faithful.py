"""The serving host's JSON answers, byte for byte as TF Serving HEAD writes them.

Each case follows a line of TF Serving's ``tensorflow_serving/util/json_tensor.cc`` (and, for the
version in the path, ``model_servers/http_rest_api_handler.cc`` / ``http_rest_api_util.cc``) or
abseil's ``absl/strings/escaping.cc`` (``Base64Unescape``):

- float/double inputs take any JSON number (IsNumber + GetFloat/GetDouble, no precision check
  since TF Serving 2.5): 16777217 -> 16777216.0, 1e39 -> inf; integer dtypes keep rapidjson's
  IsInt/IsInt64/IsUint/IsUint64 ranges;
- ``{"b64": ...}`` is decoded as absl does (whitespace skipped, no web-safe alphabet, padding
  absent or exact, '.' as a pad too), "Unable to base64 decode" otherwise;
- error texts of the current json_tensor.cc, and the echoed JSON as ``JsonValueToDebugString``
  writes it (PrettyWriter, single-line arrays, stopped at 256 bytes);
- a version in the path past int64: HTTP 400 with an empty body;
- error bodies and predict/classify/regress answers laid out as rapidjson's PrettyWriter does.

Server cases run over real HTTP against ``python -m serving_host.local_server``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from serving_host import json_request, json_response, json_text, tf_dtypes
from serving_host.status import ServingError
from tests.helpers import TF_SERVING_TESTDATA
from tests.test_serving_host_rest import _save_multi_io_model

HALF_PLUS_TWO = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu"
F, D, I32, I64, S = tf_dtypes.DT_FLOAT, tf_dtypes.DT_DOUBLE, tf_dtypes.DT_INT32, tf_dtypes.DT_INT64, tf_dtypes.DT_STRING


@pytest.fixture(scope="module")
def server(tfserving_session_factory, tmp_path_factory):
    models = tmp_path_factory.mktemp("faithful-models")
    _save_multi_io_model(models / "multi" / "1")
    config = f"""model_config_list {{
  config {{ name: "default" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" }}
  config {{ name: "multi" base_path: "{models / 'multi'}" model_platform: "tensorflow" }}
}}
"""
    srv = tfserving_session_factory(tmp_path_factory.mktemp("faithful-serving"), config, grpc=False)
    srv.wait_for_state("default", 123, "AVAILABLE")
    srv.wait_for_state("multi", 1, "AVAILABLE")
    yield srv
    srv.stop()


def post(srv, path: str, body=None, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(srv.rest_url + path, data=data, timeout=30)


def pretty_error(message: str) -> str:
    """MakeJsonFromStatus' body, built independently of the codec."""
    return '{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}"


# -- 1. float / double inputs: any JSON number, converted as rapidjson converts it ----------------
def test_whole_and_large_numbers_to_a_float_input_are_converted_not_refused(server):
    r = post(server, "/v1/models/default:predict", {"instances": [16777217, 1435774380]})
    assert r.status_code == 200, r.text
    x = np.array([16777217.0, 1435774380.0]).astype(np.float32)
    assert r.json() == {"predictions": (x * np.float32(0.5) + np.float32(2)).tolist()}
    r = post(server, "/v1/models/default:predict", {"inputs": [1e39]})
    assert r.status_code == 200, r.text
    assert r.text == '{\n    "outputs": [\n        Infinity\n    ]\n}'


def test_float_and_double_conversion_in_the_codec():
    t = json_request.tensors_from_instances([16777217, 1435774380, 1e39, -1e39, 2**70], {"x": F})["x"]
    assert t.dtype == np.float32
    assert t.tolist() == [16777216.0, 1435774336.0, float("inf"), float("-inf"), float(np.float32(2**70))]
    assert json_request.tensors_from_inputs([2**53 + 1, 1e300], {"x": D})["x"].tolist() == [2.0**53, 1e300]
    # integer dtypes keep rapidjson's IsInt / IsInt64 / IsUint64 (a '.' number is never an integer)
    for v, dt in ((2**31, I32), (2**63, I64), (1.0, I32), (True, I64), (-1, tf_dtypes.DT_UINT64)):
        with pytest.raises(ServingError, match="is not of expected type"):
            json_request.tensors_from_inputs([v], {"x": dt})
    assert json_request.tensors_from_inputs([2**64 - 1], {"x": tf_dtypes.DT_UINT64})["x"].tolist() == [2**64 - 1]


def test_empty_input_of_a_dtype_json_cannot_hold_is_an_empty_tensor():
    """AddValueToTensor refuses every value of a half input (UNIMPLEMENTED ``Conversion of JSON
    Value: ...``), but an empty list reaches none: TF Serving sends the empty tensor on."""
    half = 19                                             # DT_HALF
    assert json_request.tensors_from_inputs([], {"x": half})["x"].dtype == np.float16
    assert json_request.tensors_from_instances([[]], {"x": half})["x"].shape == (1, 0)
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_inputs([1.5], {"x": half})
    assert (e.value.code, e.value.message) == ("UNIMPLEMENTED", "Conversion of JSON Value: 1.5 to type: half")


def test_example_features_take_large_numbers_as_float():
    from tensorflow.core.example import example_pb2

    raw = json_request.serialized_examples({"examples": [{"f": [1e39, 16777217.0], "i": 16777217}]})[0]
    feat = example_pb2.Example.FromString(raw).features.feature
    assert list(feat["f"].float_list.value) == [float("inf"), 16777216.0]
    assert list(feat["i"].int64_list.value) == [16777217]
    with pytest.raises(ServingError) as e:
        json_request.serialized_examples({"examples": [{"x": 2**64 - 1}]})
    assert e.value.message == "Feature: x has uint64_t element. Only int64_t is supported."


def test_regress_with_a_number_past_float_range_is_200(server):
    r = post(server, "/v1/models/default:regress",
             {"signature_name": "regress_x_to_y", "examples": [{"x": 1e39}, {"x": 2.0}]})
    assert r.status_code == 200, r.text
    assert r.text == '{\n    "results": [Infinity, 3.0]\n}'


def test_inf_and_minus_nan_are_taken_and_written_back_as_tf_serving_writes_them(server):
    """rapidjson 1.1.0 with kParseNanAndInfFlag (json_tensor.cc) reads ``Inf``, ``-Inf`` and
    ``-NaN`` too; WriteDecimal writes them back as ``Infinity``, ``-Infinity``, ``NaN``."""
    r = post(server, "/v1/models/default:predict", raw=b'{"instances": [Inf, -Inf, -NaN, NaN, Infinity, -Infinity]}')
    assert r.status_code == 200, r.text
    assert r.text == ('{\n    "predictions": [Infinity, -Infinity, NaN, NaN, Infinity, -Infinity\n    ]\n}')
    r = post(server, "/v1/models/default:regress",
             raw=b'{"signature_name": "regress_x_to_y", "examples": [{"x": -Inf}, {"x": [Inf]}]}')
    assert r.status_code == 200, r.text
    assert r.text == '{\n    "results": [-Infinity, Infinity]\n}'


# -- 2. {"b64": ...} as absl::Base64Unescape -----------------------------------------------------
@pytest.mark.parametrize("text, decoded", [
    ("QUJD", b"ABC"), ("QUI=", b"AB"), ("QUI", b"AB"), ("QUI.", b"AB"), ("QQ==", b"A"), ("QQ", b"A"),
    ("QQ..", b"A"), ("QQ=.", b"A"), ("", b""), ("QU\nJD", b"ABC"), ("QUJD\r\nREVG\r\n", b"ABCDEF"),
    (" Q Q = = ", b"A"), ("\tQ\vQ\f=\r=", b"A"), ("+/8=", b"\xfb\xff"),
])
def test_base64_accepted_as_absl_accepts_it(text, decoded):
    assert json_request.base64_unescape(text) == decoded
    t = json_request.tensors_from_instances([{"b64": text}], {"x": S})["x"]
    assert t.tolist() == [decoded]


@pytest.mark.parametrize("text", [
    "QQ=", "QUJD=", "QUJD==", "QQ===", "Q", "Q===", "-_8=", "aGk-", "aGk_", "QQ==QQ==", "QQ=a",
    "QQ\x00=", "QUJDé", "!!notbase64!!",
])
def test_base64_refused_as_absl_refuses_it(text):
    assert json_request.base64_unescape(text) is None
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_instances([{"b64": text}], {"x": S})
    assert e.value.message == ("Failed to process element: 0 of 'instances' list. Error: "
                               "INVALID_ARGUMENT: Unable to base64 decode")


def test_base64_over_http(server):
    r = post(server, "/v1/models/multi:predict",
             {"instances": [{"a": [1.0, 2.0], "s": {"b64": "aG\nk"}}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["echo_bytes"] == {"b64": "aGk="}
    r = post(server, "/v1/models/multi:predict",
             {"instances": [{"a": [1.0, 2.0], "s": {"b64": "aGk-"}}]})
    assert r.status_code == 400
    assert r.text == pretty_error("Failed to process element: 0 key: s of 'instances' list. Error: "
                                  "INVALID_ARGUMENT: Unable to base64 decode")


# -- 3. error texts and the echoed JSON (JsonValueToDebugString) ---------------------------------
@pytest.mark.parametrize("doc, message", [
    ({"instances": 1.0}, "JSON Value: {\n    \"instances\": 1.0\n} Expecting 'instances' to be an list/array"),
    ({"instances": [1], "inputs": [1]}, "JSON Value: {\n    \"instances\": [1],\n    \"inputs\": [1]\n} "
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    ({"instances": []}, "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
])
def test_predict_document_errors(doc, message):
    with pytest.raises(ServingError) as e:
        json_request.predict_inputs(doc, {"x": F})
    assert e.value.message == message


def test_instance_keys_error_text():
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_instances([{"a": [1.0, 2.5]}], {"a": F, "b": F})
    assert e.value.message == ("Failed to process element: 0 of 'instances' list. JSON object: "
                               "{\n    \"a\": [1.0, 2.5]\n} keys must be equal to: a,b")


@pytest.mark.parametrize("value, text", [
    (1e39, "1e39"), (1.5e-7, "1.5e-7"), (1e-6, "0.000001"), (1e20, "100000000000000000000.0"),
    (1e21, "1e21"), (1.25e22, "1.25e22"), (0.1, "0.1"), (-0.0, "-0.0"), (3.0, "3.0"),
    (2**64, "18446744073709552000.0"), (2**64 - 1, "18446744073709551615"), (-(2**63), "-9223372036854775808"),
    ("\x1f\"\\é", '"\\u001F\\"\\\\é"'), (None, "null"), (True, "true"),
    ([1, [2, 3], {"k": [4]}], '[1, [2, 3], {\n        "k": [4]\n    }]'),
    ({"a": {"b": 1}, "c": []}, '{\n    "a": {\n        "b": 1\n    },\n    "c": []\n}'),
    ([1, float("nan"), 2], "[1, "), (float("inf"), ""),
])
def test_debug_text_is_rapidjson_pretty_writer(value, text):
    assert json_text.debug_text(value) == text


def test_debug_text_stops_after_256_bytes_but_writes_a_started_token_whole():
    expected, i = "[", 0
    while len(expected) < 256:                 # JsonWriterWithLimit: checked before each token
        expected += (", " if i else "") + str(i)
        i += 1
    assert json_text.debug_text(list(range(10_000))) == expected
    long = "x" * 5000
    assert json_text.debug_text([long, 1]) == '["' + long + '"'


def test_type_errors_echo_numbers_as_rapidjson_writes_them():
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_inputs([1e39], {"x": I32})
    assert e.value.message == "JSON Value: 1e39 Type: Number is not of expected type: int32"
    with pytest.raises(ServingError) as e:
        json_request.tensors_from_inputs([float("nan")], {"x": I64})
    assert e.value.message == "JSON Value:  Type: Number is not of expected type: int64"


def test_lone_high_surrogate_is_a_parse_error_not_a_crash(server):
    r = post(server, "/v1/models/default:predict", raw=b'{"instances": ["\\ud800"]}')
    assert r.status_code == 400
    assert r.json() == {"error": "JSON Parse error: The surrogate pair in string is invalid. at offset: 16"}


def test_a_body_cut_inside_a_string_is_answered_as_rapidjson_reads_it(server):
    """rapidjson 1.1.0 reads the end of the body as "\\0": a body cut just after a backslash is an
    invalid escape at that backslash, one cut just after a whole \\u escape lacks its closing
    quote (this server answered the other way round); a bad hex digit in a surrogate pair's
    second escape is a hex digit error at the pair's first escape."""
    cases = [(b'{"instances": ["ab\\', "Invalid escape character in string. at offset: 18"),
             (b'{"instances": ["ab\\u00e9', "Missing a closing quotation mark in string. at offset: 24"),
             (b'{"instances": ["\\ud83d\\uzz00"]}', "Incorrect hex digit after \\u escape in string. at offset: 16")]
    for raw, message in cases:
        r = post(server, "/v1/models/default:predict", raw=raw)
        assert r.status_code == 400, raw
        assert r.text == pretty_error("JSON Parse error: " + message), raw


def test_bytes_that_are_not_utf8_after_the_document_are_not_read(server):
    """rapidjson stops at the end of the root value (kParseStopWhenDoneFlag) and never checks the
    encoding: TF Serving answers a request followed by stray bytes; this server answered 400
    "Invalid encoding in string." A byte where a value should start is rapidjson's invalid value."""
    r = post(server, "/v1/models/default:predict", raw=b'{"instances": [1.0, 2.0]}\r\n\xff')
    assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
    r = post(server, "/v1/models/default:predict", raw=b'{"instances": [\xff]}')
    assert r.status_code == 400
    assert r.text == pretty_error("JSON Parse error: Invalid value. at offset: 15")


# -- 4. a version that is not an int64: 400 with an empty body -----------------------------------
@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/models/default/versions/99999999999999999999:predict"),
    ("POST", "/v1/models/default/versions/9223372036854775808:regress"),
    ("POST", "/v1/models/default/versions/99999999999999999999:PREDICT"),
    ("GET", "/v1/models/default/versions/99999999999999999999"),
    ("GET", "/v1/models/default/versions/99999999999999999999/metadata"),
])
def test_unconvertible_version_is_400_with_an_empty_body(server, method, path):
    r = requests.request(method, server.rest_url + path, data=b'{"instances": [1.0]}', timeout=30)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert r.content == b""


def test_other_path_errors_keep_their_json_body(server):
    r = requests.post(server.rest_url + "/v1/models/default/versions/1x:predict", timeout=30)
    assert r.status_code == 400
    assert r.text == pretty_error("Malformed request: POST /v1/models/default/versions/1x:predict")
    r = requests.post(server.rest_url + "/v1/models/default/versions/9223372036854775807:predict",
                      data=b'{"instances": [1.0]}', timeout=30)
    assert r.status_code == 404
    assert r.text == pretty_error("Servable not found for request: Specific(default, 9223372036854775807)")


# -- 5. error bodies: PrettyWriter -------------------------------------------------------------------
def test_error_body_bytes(server):
    r = post(server, "/v1/models/default:predict", raw=b'{"instances": 1.0}')
    assert r.status_code == 400
    assert r.text == ('{\n    "error": "JSON Value: {\\n    \\"instances\\": 1.0\\n} '
                      "Expecting 'instances' to be an list/array\"\n}")
    r = post(server, "/v1/models/default:predict", raw=b'{"instances": ["\\u0001"]}')
    assert r.text == ('{\n    "error": "Failed to process element: 0 of \'instances\' list. Error: '
                      'INVALID_ARGUMENT: JSON Value: \\"\\\\u0001\\" Type: String is not of expected type: '
                      'float"\n}')
    assert json_response.error_body("a\x02b\té") == '{\n    "error": "a\\u0002b\\té"\n}'


# -- 6. predictions / outputs / results layout --------------------------------------------------------
def test_row_format_single_output_layout(server):
    r = post(server, "/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.text == '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'


def test_columnar_single_output_layout(server):
    r = post(server, "/v1/models/default:predict", {"inputs": [1.0, 2.0]})
    assert r.text == '{\n    "outputs": [\n        2.5,\n        3.0\n    ]\n}'


def test_row_format_several_outputs_layout(server):
    r = post(server, "/v1/models/multi:predict", {"instances": [
        {"a": [1.0, 2.0], "s": {"b64": "aGk="}}, {"a": [3.0, 4.0], "s": "yo!"}]})
    assert r.status_code == 200, r.text
    item = ('        {{\n            "echo_bytes": {{\n                "b64": "{b}"\n            }},\n'
            '            "length": {n},\n            "sum": {s},\n            "twice": [{t}]\n        }}')
    assert r.text == ('{\n    "predictions": [\n'
                      + item.format(b="aGk=", n=2, s="3.0", t="2.0, 4.0") + ",\n"
                      + item.format(b="eW8h", n=3, s="7.0", t="6.0, 8.0") + "\n    ]\n}")


def test_columnar_several_outputs_layout(server):
    r = post(server, "/v1/models/multi:predict", {"inputs": {"a": [[1.0, 1.5]], "s": ["abcd"]}})
    assert r.status_code == 200, r.text
    assert r.text == """{
    "outputs": {
        "echo_bytes": [
            {
                "b64": "YWJjZA=="
            }
        ],
        "length": [
            4
        ],
        "sum": [
            2.5
        ],
        "twice": [
            [
                2.0,
                3.0
            ]
        ]
    }
}"""


def test_classify_layout(server):
    r = post(server, "/v1/models/default:classify",
             {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}, {"x": 10.0}]})
    assert r.status_code == 200, r.text
    assert r.text == '{\n    "results": [[["", 12.0]], [["", 7.0]]\n    ]\n}'


def test_an_empty_output_of_a_type_json_cannot_write_is_written_as_tf_serving_writes_it():
    """``AddSingleValueAndAdvance`` refuses a type it cannot write (half, complex, ...) at a value:
    an output with none (a 0 in its shape) is never asked, so TF Serving answers 200 with ``[]``s.
    This server checked the type first and answered 400 "Failed to write JSON value for tensor
    type: half" to a half output of shape [0, 3]."""
    empty_half = np.zeros((0, 3), np.float16)
    assert json_response.predict_response({"y": empty_half}, json_request.ROW) == '{\n    "predictions": []\n}'
    assert json_response.predict_response({"y": empty_half}, json_request.COLUMNAR) == '{\n    "outputs": []\n}'
    assert json_response.predict_response({"y": np.zeros((2, 0), np.complex64)}, json_request.ROW) == (
        '{\n    "predictions": [[], []\n    ]\n}')
    both = {"a": np.zeros((1, 0), np.float16), "b": np.array([[1.5]], np.float32)}
    assert json.loads(json_response.predict_response(both, json_request.ROW)) == {
        "predictions": [{"a": [], "b": [1.5]}]}
    with pytest.raises(ServingError, match="Failed to write JSON value for tensor type: half"):
        json_response.predict_response({"y": np.zeros((1, 1), np.float16)}, json_request.ROW)


def test_codec_layouts_without_a_server():
    one_bytes = {"x_bytes": np.array([b"\x01", b"\x02"], dtype=object)}
    assert json_response.predict_response(one_bytes, json_request.ROW) == (
        '{\n    "predictions": [{\n            "b64": "AQ=="\n        }, {\n'
        '            "b64": "Ag=="\n        }\n    ]\n}')
    assert json_response.predict_response({"y": np.zeros((0, 3), np.float32)}, json_request.ROW) == (
        '{\n    "predictions": []\n}')
    assert json_response.predict_response({"y": np.zeros((2, 0), np.float32)}, json_request.ROW) == (
        '{\n    "predictions": [[], []\n    ]\n}')
    assert json_response.predict_response({"y": np.float32(1)}, json_request.COLUMNAR) == '{\n    "outputs": 1.0\n}'
    assert json_response.predict_response({"y": np.array([[1, 2]], np.int32)}, json_request.ROW) == (
        '{\n    "predictions": [[1, 2]\n    ]\n}')
    with pytest.raises(ServingError, match="Failed to write JSON value for tensor type: half"):
        json_response.predict_response({"y": np.zeros(2, np.float16)}, json_request.ROW)
    assert json_response.regress_response([1.0, 2.5]) == '{\n    "results": [1.0, 2.5]\n}'
    assert json_response.classify_response([[("a", 0.5), ("b", 0.25)], []]) == (
        '{\n    "results": [[["a", 0.5], ["b", 0.25]], []\n    ]\n}')


def test_message_json_escapes_what_cs_protobuf_escapes_and_writes_the_rest_as_utf8():
    """C++ protobuf's JSON writer (``MustEscape``): control characters, ``"`` and ``\\`` as JSON
    wants, ``<``, ``>``, DEL, the C1 controls and invisible code points as lower-case ``\\u``
    escapes (past U+FFFF its surrogate pair), everything else as its UTF-8."""
    from tensorflow_serving.apis import model_pb2

    from serving_host.json_text import message_json

    spec = model_pb2.ModelSpec(name="é\n\"<>\x7f\x9f\u00ad\u2028\ufeff\U0001d173\U000e0041 ok/中")
    assert message_json(spec) == ('{\n  "name": "é\\n\\"\\u003c\\u003e\\u007f\\u009f\\u00ad\\u2028\\ufeff'
                                  '\\ud834\\udd73\\udb40\\udc41 ok/中"\n}')


def test_bytes_in_a_string_field_read_as_cs_protobufs_json_writer_reads_them():
    """``ConsumeUtf8Scalar``: a lead byte without its continuation bytes, a stray continuation
    byte, a 5-byte lead and a scalar past U+10FFFF are one space each; an overlong NUL is U+0000."""
    from serving_host.json_text import protobuf_utf8

    assert protobuf_utf8(b"ok \xc3\xa9\xf0\x9f\x98\x80") == "ok é\U0001f600"
    assert protobuf_utf8(b"a\xc3(b\x80c\xf8d\xf4\x90\x80\x80e\xc0\x80f\xe2\x82") == "a b c d e\x00f "
    assert protobuf_utf8(b"\xed\xa0\x80") == "\ufffd"    # a surrogate: C++ writes its bytes
