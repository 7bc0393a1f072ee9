"""models.config as plain data <-> ModelServerConfig text, and the hand-made gRPC reload encoding
checked against TF Serving's real generated classes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mlops_common.errors import ConfigError
from serving_sync import models_config as mc
from serving_sync.tfs_reload import decode_response, decode_varint, encode_request, encode_varint
from tests.helpers import REPO

FOREIGN = """model_config_list {
  config {
    name: "other-team"
    base_path: "/models/other"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    logging_config { sampling_config { sampling_rate: 0.5 } }
  }
  config {
    name: "digits"
    base_path: "/models/digits"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 } }
    version_labels { key: "stable" value: 3 }
  }
}
"""


def test_render_parse_round_trip_is_exact_and_deterministic():
    state = mc.ModelState("digits", "/models/digits", (4, 3), {"stable": 3, "canary": 4}, validate=5)
    cfg = mc.apply_state(mc.ServingConfig(), state)
    text = mc.render(cfg)
    assert mc.render(mc.parse(text)) == text
    assert mc.parse(text) == cfg
    assert mc.state_of(mc.parse(text), "digits") == state
    assert text == mc.render(mc.apply_state(mc.ServingConfig(), state))   # same state, same bytes
    main = mc.parse(text).entry("digits")
    val = mc.parse(text).entry(mc.validation_name("digits"))
    assert main.versions == (3, 4) and main.label_map == {"canary": 4, "stable": 3}
    assert val.base_path == main.base_path and val.policy == "specific" and val.versions == (5,)
    assert val.labels == ()


def test_the_text_is_what_the_real_protobuf_parser_reads():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    state = mc.ModelState("digits", "s3://bucket/prefix/digits", (7,), {"stable": 7})
    msg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(mc.render(mc.apply_state(mc.ServingConfig(), state)), msg)
    (c,) = msg.model_config_list.config
    assert (c.name, c.base_path, c.model_platform) == ("digits", "s3://bucket/prefix/digits", "tensorflow")
    assert list(c.model_version_policy.specific.versions) == [7]
    assert dict(c.version_labels) == {"stable": 7}


def test_foreign_entries_are_kept_verbatim_and_ours_replaced():
    cfg = mc.parse(FOREIGN, "/srv/models.config")
    new = mc.apply_state(cfg, mc.ModelState("digits", "/models/digits", (3, 4), {"stable": 3}, validate=None))
    text = mc.render(new)
    assert "sampling_rate: 0.5" in text and "num_versions: 2" in text
    assert [e.name for e in mc.parse(text).entries] == ["other-team", "digits"]
    assert mc.state_of(mc.parse(text), "other-team") is None           # latest policy: not ours
    assert mc.state_of(mc.parse(text), "digits").versions == (3, 4)
    # adding then removing the validation entry
    with_val = mc.apply_state(new, mc.ModelState("digits", "/models/digits", (3, 4), {"stable": 3}, validate=9))
    assert mc.validation_name("digits") in [e.name for e in with_val.entries]
    assert mc.apply_state(with_val, mc.ModelState("digits", "/models/digits", (3, 4), {"stable": 3})) == new


def test_empty_config_renders_a_valid_empty_list():
    assert mc.render(mc.ServingConfig()).strip() == "model_config_list {\n}"
    assert mc.parse("").entries == () and mc.parse(mc.render(mc.ServingConfig())).entries == ()


def test_states_tf_serving_would_refuse_are_refused_here():
    with pytest.raises(ConfigError, match="not among the loaded versions"):
        mc.ModelState("digits", "/m/digits", (3,), {"stable": 4})
    with pytest.raises(ConfigError, match="at least one version"):
        mc.ModelState("digits", "/m/digits", ())
    with pytest.raises(ConfigError, match="invalid label"):
        mc.ModelState("digits", "/m/digits", (3,), {"bad label": 3})
    with pytest.raises(ConfigError):
        mc.ModelState("../digits", "/m/digits", (3,))
    with pytest.raises(ConfigError):
        mc.ModelState("digits", "/m/../etc", (3,))


@pytest.mark.parametrize("text, words", [
    ("model_config_list { config { name: 'a' base_path: '/x' ", "malformed"),
    ("model_config_list { config { nme: 'a' } }", "malformed"),
    ("model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }",
     "twice"),
    ('custom_model_config { type_url: "x" }', "custom_model_config"),
])
def test_malformed_file_is_one_clear_line_naming_it(text, words):
    with pytest.raises(ConfigError) as e:
        mc.parse(text, "/srv/models/models.config")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("/srv/models/models.config") and words in msg


def test_building_the_config_and_the_reload_request_never_imports_tensorflow():
    code = ("import sys\n"
            "from serving_sync import models_config as mc, tfs_reload\n"
            "from google.protobuf import text_format\n"
            "from tensorflow_serving.config import model_server_config_pb2 as pb\n"
            "t = mc.render(mc.apply_state(mc.ServingConfig(), mc.ModelState('m', '/b/m', (1,), {'stable': 1})))\n"
            "msg = pb.ModelServerConfig(); text_format.Parse(t, msg)\n"
            "tfs_reload.encode_request(msg.SerializeToString())\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras')))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout


# --- gRPC ReloadConfig encoding vs the real generated classes ----------------------------------
def _configs():
    small = mc.apply_state(mc.ServingConfig(), mc.ModelState("m", "/b/m", (1,)))
    big = mc.ServingConfig()
    for i in range(300):   # > 16 KiB: a 3-byte length varint
        big = mc.apply_state(big, mc.ModelState(f"model-{i}", f"/very/long/base/path/{i}" * 3, (i + 1,),
                                                {"stable": i + 1}))
    return [mc.ServingConfig(), small, big]


def test_reload_request_bytes_equal_the_generated_class():
    from tensorflow_serving.apis import model_management_pb2

    for cfg in _configs():
        proto = mc.to_proto(cfg)
        want = model_management_pb2.ReloadConfigRequest(config=proto).SerializeToString()
        assert encode_request(proto.SerializeToString()) == want
        back = model_management_pb2.ReloadConfigRequest.FromString(encode_request(proto.SerializeToString()))
        assert back.config == proto
    assert len(mc.to_proto(_configs()[2]).SerializeToString()) > 16384


def test_reload_response_decodes_what_the_generated_class_encodes():
    from tensorflow_serving.apis import model_management_pb2

    ok = model_management_pb2.ReloadConfigResponse()
    assert decode_response(ok.SerializeToString()).ok
    ok.status.error_code = 0
    assert decode_response(ok.SerializeToString()).ok
    bad = model_management_pb2.ReloadConfigResponse()
    bad.status.error_code = 9
    bad.status.error_message = ("Request to assign label to version 5 of model digits, "
                                "which is not currently available. — ünïcode")
    st = decode_response(bad.SerializeToString())
    assert (st.error_code, st.code_name) == (9, "FAILED_PRECONDITION")
    assert st.error_message == bad.status.error_message
    with pytest.raises(ValueError):
        decode_response(b"\x0a\x05\x08")   # truncated


def test_varints_round_trip():
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2 ** 31 - 1, 2 ** 63 - 1):
        assert decode_varint(encode_varint(n), 0) == (n, len(encode_varint(n)))
    assert len(encode_varint(-1)) == 10


def test_another_entry_with_an_escape_tf_serving_refuses_is_malformed_not_rewritten():
    """A shared models.config whose other entry holds ``\\d`` (TF Serving refuses the file) or
    ``\\?`` (TF Serving reads ``?``): parsed as Python's text_format does, the deploy took the first
    for a backslash and rewrote it as ``\\\\d``, another team's base path changed, and the second
    as ``\\\\?``. Now the first is malformed and the second kept as TF Serving reads it."""
    entry = 'model_config_list {{ config {{ name: "other" base_path: "/data{}x" model_platform: "tensorflow" }} }}'
    with pytest.raises(ConfigError, match="malformed"):
        mc.parse(entry.format("\\d"))
    assert mc.parse(entry.format("\\?")).entry("other").base_path == "/data?x"
