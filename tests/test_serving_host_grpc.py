"""The local server's gRPC PredictionService, called with tensorflow-serving-api's own stubs.

The cases follow TF Serving's ``tensorflow_model_server_test.py`` (half_plus_two: y = 0.5x + 2, its
classify/regress signatures, the response ``model_spec`` check of ``_VerifyModelSpec``) and the
status codes and messages of ``predict_util.cc``, ``classifier.cc``, ``regressor.cc``,
``multi_inference.cc``, ``get_model_metadata_impl.cc`` and ``server_core.cc``, over a real gRPC
channel to ``python -m serving_host.local_server``.
"""
from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from tests.helpers import TF_SERVING_TESTDATA

HALF_PLUS_TWO = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu"
TWO_VERSIONS = TF_SERVING_TESTDATA / "saved_model_half_plus_two_2_versions"
RPC_TIMEOUT = 10.0
METRICS_PATH = "/monitoring/prometheus/metrics"


def _config(label: bool) -> str:
    labels = 'version_labels { key: "stable" value: 123 }' if label else ""
    return f"""model_config_list {{
  config {{ name: "default" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" }}
  config {{ name: "two" base_path: "{TWO_VERSIONS}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }} {labels} }}
}}
"""


@pytest.fixture(scope="module")
def server(tfserving_session_factory, tmp_path_factory):
    base = tmp_path_factory.mktemp("grpc-serving")
    (base / "monitoring.config").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    srv = tfserving_session_factory(base, _config(False),
                                    extra_args=(f"--monitoring_config_file={base / 'monitoring.config'}",))
    for name, version in (("default", 123), ("two", 123), ("two", 124)):
        srv.wait_for_state(name, version, "AVAILABLE")
    srv.write_config(_config(True))  # a label may only name a loaded version: second config
    srv.channel = grpc.insecure_channel(srv.grpc_address)
    grpc.channel_ready_future(srv.channel).result(timeout=60)
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    srv.stub = prediction_service_pb2_grpc.PredictionServiceStub(srv.channel)
    deadline = time.monotonic() + 30
    while True:  # bounded: the label is in force once the config poll applied it
        try:
            srv.stub.Predict(predict_request("two", label="stable"), RPC_TIMEOUT)
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield srv
    srv.channel.close()
    srv.stop()


def predict_request(model="default", x=(2.0,), *, signature=None, version=None, label=None,
                    output_filter=()):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    if signature is not None:
        r.model_spec.signature_name = signature
    if version is not None:
        r.model_spec.version.value = version
    if label is not None:
        r.model_spec.version_label = label
    r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    r.output_filter.extend(output_filter)
    return r


def examples_input(target, xs=(2.0,)) -> None:
    for x in xs:
        target.example_list.examples.add().features.feature["x"].float_list.value.append(x)


def classify_request(model="default", signature="classify_x_to_y", xs=(2.0,)):
    from tensorflow_serving.apis import classification_pb2

    r = classification_pb2.ClassificationRequest()
    r.model_spec.name = model
    r.model_spec.signature_name = signature
    examples_input(r.input, xs)
    return r


def regress_request(model="default", signature="regress_x_to_y", xs=(2.0,)):
    from tensorflow_serving.apis import regression_pb2

    r = regression_pb2.RegressionRequest()
    r.model_spec.name = model
    r.model_spec.signature_name = signature
    examples_input(r.input, xs)
    return r


def multi_request(tasks, xs=(2.0,)):
    from tensorflow_serving.apis import inference_pb2

    r = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        t = r.tasks.add()
        t.model_spec.name = model
        t.model_spec.signature_name = signature
        t.method_name = method
    examples_input(r.input, xs)
    return r


REGRESS = "tensorflow/serving/regress"
CLASSIFY = "tensorflow/serving/classify"


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, RPC_TIMEOUT)
    return info.value


def verify_model_spec(spec, name, signature, version) -> None:
    """``_VerifyModelSpec`` of TF Serving's test base."""
    assert spec.name == name
    assert spec.signature_name == signature
    assert spec.version.value == version


# -- Predict ----------------------------------------------------------------------------------
def test_predict_default_signature_and_output_filter(server):
    from tensorflow.core.framework import types_pb2

    result = server.stub.Predict(predict_request(output_filter=["y"]), RPC_TIMEOUT)
    assert list(result.outputs) == ["y"]
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert [d.size for d in result.outputs["y"].tensor_shape.dim] == [1]
    verify_model_spec(result.model_spec, "default", "serving_default", 123)


def test_predict_batch_without_filter_returns_every_output(server):
    import tensorflow as tf

    result = server.stub.Predict(predict_request(x=(1.0, 4.0, -2.0)), RPC_TIMEOUT)
    assert list(result.outputs) == ["y"]
    assert tf.make_ndarray(result.outputs["y"]).tolist() == [2.5, 4.0, 1.0]


def test_a_scalar_output_has_its_empty_shape_as_tf_serving_writes_it(server):
    """``Tensor::AsProtoField`` sets ``tensor_shape`` through ``mutable_tensor_shape()``: a 0-d
    output's TensorProto has the field present (empty), so a client sees ``HasField`` true and
    the bytes ``12 00``; it was left out."""
    import tensorflow as tf

    from serving_host import apis

    result = server.stub.Predict(predict_request(x=2.0), RPC_TIMEOUT)
    y = result.outputs["y"]
    assert y.HasField("tensor_shape") and list(y.tensor_shape.dim) == []
    assert b"\x12\x00" in y.SerializeToString() and list(y.float_val) == [3.0]
    for arr in (np.float16(1.5), np.array(b"a", dtype=object), np.int64(7)):
        proto = apis.tensor_to_proto(np.asarray(arr))
        assert proto.HasField("tensor_shape") and tf.make_ndarray(proto).shape == ()


def test_predict_by_version_and_label(server):
    for kwargs, version in (({}, 124), ({"version": 123}, 123), ({"version": 124}, 124),
                            ({"label": "stable"}, 123)):
        result = server.stub.Predict(predict_request("two", **kwargs), RPC_TIMEOUT)
        verify_model_spec(result.model_spec, "two", "serving_default", version)
        assert list(result.outputs["y"].float_val) == [3.0]


def test_predict_named_signature(server):
    import tensorflow as tf

    r = predict_request(signature="regress_x_to_y")
    r.inputs.clear()
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(20.0)
    r.inputs["inputs"].CopyFrom(tf.make_tensor_proto([ex.SerializeToString()]))
    result = server.stub.Predict(r, RPC_TIMEOUT)
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", 123)
    assert tf.make_ndarray(result.outputs["outputs"]).reshape(-1).tolist() == [12.0]


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def test_string_inputs_in_tensor_content_are_read_as_tf_serving_reads_them(server):
    """``Tensor::FromProto`` reads a DT_STRING ``tensor_content`` with ``DecodeStringList`` (each
    length as a varint32, then the bytes: what C++ ``AsProtoTensorContent`` writes); it was refused
    as ``tensor parsing error`` (numpy cannot read strings from a buffer). Lengths that do not add
    up to the bytes are still a parsing error."""
    import tensorflow as tf
    from tensorflow.core.example import example_pb2
    from tensorflow.core.framework import tensor_pb2

    examples = []
    for x in (20.0, 2.0):
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.append(x)
        ex.features.feature["pad"].bytes_list.value.append(b"p" * 300 * (x < 10))   # a 2-byte length
        examples.append(ex.SerializeToString())
    assert len(examples[1]) > 300
    # port::EncodeStringList, as C++ AsProtoTensorContent writes it: every length, then every string
    tensor = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum)
    tensor.tensor_shape.dim.add().size = len(examples)
    tensor.tensor_content = b"".join(_varint(len(e)) for e in examples) + b"".join(examples)
    r = predict_request(signature="regress_x_to_y")
    r.inputs.clear()
    r.inputs["inputs"].CopyFrom(tensor)
    result = server.stub.Predict(r, RPC_TIMEOUT)
    assert tf.make_ndarray(result.outputs["outputs"]).reshape(-1).tolist() == [12.0, 3.0]
    r.inputs["inputs"].tensor_content = tensor.tensor_content + b"x"
    e = rpc_error(server.stub.Predict, r)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: inputs")


def test_predict_errors(server):
    import tensorflow as tf

    stub = server.stub
    e = rpc_error(stub.Predict, predict_request("nope"))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    e = rpc_error(stub.Predict, predict_request(version=7))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND,
                                       "Servable not found for request: Specific(default, 7)")
    e = rpc_error(stub.Predict, predict_request("two", label="nope"))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "Unrecognized servable version label: nope")
    e = rpc_error(stub.Predict, predict_request(signature="nope"))
    assert (e.code(), e.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                       'Serving signature key "nope" not found.')

    r = predict_request()
    r.inputs["unknown"].CopyFrom(r.inputs["x"])
    e = rpc_error(stub.Predict, r)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == ("input size does not match signature: 2!=1 len({unknown,x}) != len({x}). "
                           "Sent extra: {unknown}. Missing but required: {}.")
    r = predict_request()
    r.inputs["z"].CopyFrom(r.inputs["x"])
    del r.inputs["x"]
    e = rpc_error(stub.Predict, r)
    assert (e.code(), e.details()) == (   # TensorFlow's saved_model::GetInputValues
        grpc.StatusCode.INVALID_ARGUMENT,
        "Signature input alias: x(feed name: x:0) not found in request and no default value provided. "
        "Inputs expected to be in the request {z}, or default input alias set: ")

    r = predict_request()
    r.inputs["x"].float_val.append(9.0)  # two values for a shape of one element: the first is used
    assert list(stub.Predict(r, RPC_TIMEOUT).outputs["y"].float_val) == [3.0]     # (tensor.cc FromProtoField)
    r.inputs["x"].tensor_shape.dim[0].size = -1
    e = rpc_error(stub.Predict, r)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")
    r.inputs["extra"].CopyFrom(r.inputs["x"])  # the count is checked before any tensor is parsed
    e = rpc_error(stub.Predict, r)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("input size does not match")
    r = predict_request()
    r.inputs["x"].CopyFrom(tf.make_tensor_proto([b"two"]))
    e = rpc_error(stub.Predict, r)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "Expects arg[0] to be float but string is provided")

    e = rpc_error(stub.Predict, predict_request(output_filter=["q"]))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "output tensor alias not found in signature: q Outputs expected "
                                       "to be in the set {y}.")
    e = rpc_error(stub.Predict, predict_request(output_filter=["y", "y"]))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: y")
    r = predict_request(output_filter=["q"])          # the filter is checked before the session run's dtypes
    r.inputs["x"].CopyFrom(tf.make_tensor_proto([b"two"]))
    e = rpc_error(stub.Predict, r)
    assert e.details().startswith("output tensor alias not found in signature: q")

    from tensorflow_serving.apis import predict_pb2

    e = rpc_error(stub.Predict, predict_pb2.PredictRequest())
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    r = predict_request("")
    e = rpc_error(stub.Predict, r)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")


def test_long_error_messages_are_cut_as_tf_serving_cuts_them(server):
    e = rpc_error(server.stub.Predict, predict_request("m" * 2000))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    full = f"Servable not found for request: Latest({'m' * 2000})"
    assert e.details() == full[:1024] + "...TRUNCATED"
    # every RPC's status goes through ToGRPCStatus: GetModelStatus and GetModelMetadata too
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "m" * 2000
    e = rpc_error(model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus, status)
    assert e.code() == grpc.StatusCode.NOT_FOUND and len(e.details()) == 1024 + len("...TRUNCATED")
    e = rpc_error(server.stub.GetModelMetadata, metadata_request(fields=("f" * 2000,)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().endswith("...TRUNCATED")


def test_messages_over_grpcs_4_mib_default_pass_as_in_tf_serving(server):
    """server.cc sets the max message size to INT32_MAX: a 6 MB request and answer go through."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    big = 2**31 - 1
    with grpc.insecure_channel(server.grpc_address, options=[("grpc.max_receive_message_length", big),
                                                             ("grpc.max_send_message_length", big)]) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        n = 1_500_000
        result = stub.Predict(predict_request(x=np.full(n, 2.0, np.float32)), 60)
    y = result.outputs["y"].float_val
    assert len(y) == n and y[0] == y[-1] == 3.0


# -- Classify / Regress / MultiInference --------------------------------------------------------
def test_classify(server):
    result = server.stub.Classify(classify_request(xs=(2.0, 10.0)), RPC_TIMEOUT)
    scores = [[c.score for c in cl.classes] for cl in result.result.classifications]
    assert scores == [[3.0], [7.0]]
    assert result.result.classifications[0].classes[0].label == ""
    verify_model_spec(result.model_spec, "default", "classify_x_to_y", 123)


def test_regress(server):
    result = server.stub.Regress(regress_request(xs=(2.0, 80.0)), RPC_TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0, 42.0]
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", 123)
    r = regress_request("two")
    r.model_spec.version.value = 123
    verify_model_spec(server.stub.Regress(r, RPC_TIMEOUT).model_spec, "two", "regress_x_to_y", 123)


def test_examples_with_context(server):
    r = regress_request()
    r.input.example_list_with_context.context.features.feature["x"].float_list.value.append(4.0)
    r.input.example_list_with_context.examples.add()  # x comes from the context
    result = server.stub.Regress(r, RPC_TIMEOUT)
    assert [v.value for v in result.result.regressions] == [4.0]


def test_multi_inference(server):
    request = multi_request([("default", "regress_x_to_y", REGRESS), ("default", "classify_x_to_y", CLASSIFY)])
    result = server.stub.MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i, sig in enumerate(("regress_x_to_y", "classify_x_to_y")):
        verify_model_spec(result.results[i].model_spec, "default", sig, 123)


def test_classify_regress_multi_inference_errors(server):
    stub = server.stub
    cases = [
        (stub.Classify, classify_request("nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        (stub.Classify, classify_request(signature="nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "No signature was found with the name: nope"),
        (stub.Classify, classify_request(signature="serving_default"), grpc.StatusCode.INVALID_ARGUMENT,
         "Expected classification signature method_name to be tensorflow/serving/classify. "
         "Was: tensorflow/serving/predict"),
        (stub.Classify, classify_request(xs=()), grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
        (stub.Regress, regress_request(signature="classify_x_to_y"), grpc.StatusCode.INVALID_ARGUMENT,
         "Expected regression signature method_name to be tensorflow/serving/regress. "
         "Was: tensorflow/serving/classify"),
        (stub.Regress, regress_request(xs=()), grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
        (stub.MultiInference, multi_request([("default", "regress_x_to_y", REGRESS),
                                             ("two", "classify_x_to_y", CLASSIFY)]),
         grpc.StatusCode.INVALID_ARGUMENT,
         "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
        (stub.MultiInference, multi_request([("default", "regress_x_to_y", REGRESS)] * 2),
         grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
        (stub.MultiInference, multi_request([("default", "nope", REGRESS)]),
         grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
        (stub.MultiInference, multi_request([("default", "serving_default", "tensorflow/serving/predict")]),
         grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
        (stub.MultiInference, multi_request([("nope", "regress_x_to_y", REGRESS)]),
         grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        # Infer checks task by task: a bad signature in the first task is found before the
        # second task's model name (the local server checked every name first)
        (stub.MultiInference, multi_request([("default", "nope", REGRESS), ("two", "regress_x_to_y", REGRESS)]),
         grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
        (stub.MultiInference, multi_request([("default", "serving_default", "tensorflow/serving/predict"),
                                             ("", "regress_x_to_y", REGRESS)]),
         grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
        (stub.MultiInference, multi_request([("default", "regress_x_to_y", REGRESS), ("", "x", REGRESS)]),
         grpc.StatusCode.INVALID_ARGUMENT, "Found ModelSpec with an empty model name."),
        # examples fed to a float input: Session::Run's SetArgs message (it was Python's
        # "Type mismatch: actual string vs. expect float [[{{node _arg_x2_0_0}}]]")
        (stub.Regress, regress_request(signature="regress_x2_to_y3"), grpc.StatusCode.INVALID_ARGUMENT,
         "Expects arg[0] to be float but string is provided"),
        (stub.MultiInference, multi_request([("default", "regress_x_to_y", REGRESS),
                                             ("default", "regress_x2_to_y3", REGRESS)]),
         grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[1] to be float but string is provided"),
    ]
    for call, request, code, details in cases:
        e = rpc_error(call, request)
        assert (e.code(), e.details()) == (code, details), request


# -- GetModelMetadata -------------------------------------------------------------------------
def metadata_request(model="default", fields=("signature_def",), version=None):
    from tensorflow_serving.apis import get_model_metadata_pb2

    r = get_model_metadata_pb2.GetModelMetadataRequest()
    r.model_spec.name = model
    if version is not None:
        r.model_spec.version.value = version
    r.metadata_field.extend(fields)
    return r


def test_get_model_metadata(server):
    from tensorflow_serving.apis import get_model_metadata_pb2

    result = server.stub.GetModelMetadata(metadata_request(), RPC_TIMEOUT)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    assert result.metadata["signature_def"].Unpack(sigmap)
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y"} <= set(sigmap.signature_def)
    assert sigmap.signature_def["serving_default"].method_name == "tensorflow/serving/predict"
    assert sorted(sigmap.signature_def["serving_default"].inputs) == ["x"]
    result = server.stub.GetModelMetadata(metadata_request("two", version=123), RPC_TIMEOUT)
    assert (result.model_spec.name, result.model_spec.version.value) == ("two", 123)


def test_get_model_metadata_errors(server):
    stub = server.stub
    e = rpc_error(stub.GetModelMetadata, metadata_request(fields=()))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "GetModelMetadataRequest must specify at least one metadata_field")
    e = rpc_error(stub.GetModelMetadata, metadata_request(fields=("signature_def", "other")))
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Metadata field other is not supported")
    e = rpc_error(stub.GetModelMetadata, metadata_request("nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = rpc_error(stub.GetModelMetadata, metadata_request(version=5))
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND,
                                       "Servable not found for request: Specific(default, 5)")


def test_grpc_and_rest_answer_alike(server):
    """One inference core: the same input gives the same numbers over both APIs."""
    import requests

    xs = [0.5, 3.0, 1000.25]
    grpc_y = list(server.stub.Predict(predict_request(x=xs), RPC_TIMEOUT).outputs["y"].float_val)
    rest_y = requests.post(f"{server.rest_url}/v1/models/default:predict",
                           json={"instances": xs}, timeout=RPC_TIMEOUT).json()["predictions"]
    assert grpc_y == rest_y == [2.25, 3.5, 502.125]


# -- metrics ----------------------------------------------------------------------------------
def sample(server, name: str, labels: dict[str, str]) -> float:
    """One sample of the Prometheus page (parsed with prometheus_client's parser, which names
    a counter's samples ``<name>_total``); 0 if absent."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(server.rest_url + METRICS_PATH, timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def test_grpc_requests_are_counted_as_tf_serving_counts_them(server):
    """``prediction_service_impl.cc``: Predict/Classify/Regress counted (latency only when OK,
    entrypoint GRPC); MultiInference counts its examples; neither it nor metadata is a request."""
    stub = server.stub
    count = ":tensorflow:serving:request_count_total"  # the page writes no suffix; the parser adds it
    latency = ":tensorflow:serving:request_latency_count"

    def snapshot():
        return {
            "ok": sample(server, count, {"model_name": "two", "status": "OK"}),
            "missing": sample(server, count, {"model_name": "gone", "status": "NOT_FOUND"}),
            "bad": sample(server, count, {"model_name": "two", "status": "INVALID_ARGUMENT"}),
            **{api: sample(server, latency, {"model_name": "two", "API": api, "entrypoint": "GRPC"})
               for api in ("Predict", "Classify", "Regress")},
            "gone_latency": sample(server, latency, {"model_name": "gone", "API": "Predict", "entrypoint": "GRPC"}),
            "examples": sample(server, ":tensorflow:serving:request_example_count_total",
                               {"model": "two"}),
        }

    before = snapshot()
    for _ in range(3):
        stub.Predict(predict_request("two"), RPC_TIMEOUT)
    stub.Classify(classify_request("two"), RPC_TIMEOUT)
    stub.Regress(regress_request("two", xs=(1.0, 2.0)), RPC_TIMEOUT)
    stub.MultiInference(multi_request([("two", "regress_x_to_y", REGRESS)], xs=(1.0, 2.0, 3.0)), RPC_TIMEOUT)
    stub.GetModelMetadata(metadata_request("two"), RPC_TIMEOUT)
    rpc_error(stub.Predict, predict_request("gone"))
    rpc_error(stub.Regress, regress_request("two", xs=()))
    after = snapshot()
    delta = {k: after[k] - before[k] for k in before}
    assert delta == {"ok": 5, "missing": 1, "bad": 1, "Predict": 3, "Classify": 1, "Regress": 1,
                     "gone_latency": 0, "examples": 3}


# -- tensor conversion (no server) ------------------------------------------------------------
@pytest.mark.parametrize("values, dtype, field", [
    ([[1.5, -2.0]], "float32", "float_val"), ([1e300], "float64", "double_val"), ([7, -8], "int32", "int_val"),
    ([2**40], "int64", "int64_val"), ([True, False], "bool", "bool_val"), ([200], "uint8", "int_val"),
    ([b"a\x00b", b""], "object", "string_val"), ([1.0], "float16", "half_val"),
    ([1.0, -2.5, 65504.0], "float16", "half_val"), ([1.0, -2.5], "bfloat16", "half_val")])
def test_outputs_are_written_as_tf_serving_writes_them_and_read_back(values, dtype, field):
    import tensorflow as tf

    from serving_host import apis

    arr = np.array(values, dtype=tf.bfloat16.as_numpy_dtype if dtype == "bfloat16" else dtype)
    proto = apis.tensor_to_proto(arr)
    assert len(getattr(proto, field)) > 0 and not proto.tensor_content
    back = apis.tensor_from_proto("t", proto)
    assert back.shape == arr.shape and back.tolist() == arr.tolist()
    assert tf.make_ndarray(proto).tolist() == arr.tolist()


def test_a_quantized_output_keeps_its_type_and_int_val_as_in_tf_serving(tmp_path, tfserving_factory):
    """A ``qint8`` output (``tf.quantization.quantize``) is a ``DT_QINT8`` TensorProto with its
    integers in ``int_val`` on TF Serving (``AsProtoField``: the tensor's own type,
    ``ProtoHelper<qint8>::Fill``). The session callable hands it back as a plain int8 array, so it
    went out as ``DT_INT8``, and ``tf.make_ndarray`` on the client read another type."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    base = tmp_path / "models"
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        q = tf.quantization.quantize(x, -1.0, 1.0, tf.qint8).output
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(x)}, outputs={"q": info(q), "y": info(tf.identity(x, name="y"))},
            method_name="tensorflow/serving/predict")
        builder = tf.compat.v1.saved_model.Builder(str(base / "quant" / "1"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    srv = tfserving_factory(base, 'model_config_list { config { name: "quant" base_path: "%s" '
                                  'model_platform: "tensorflow" } }' % (base / "quant"))
    srv.wait_for_state("quant", 1, "AVAILABLE")
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(srv.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(predict_request("quant", x=(0.5, -1.0)), 60)
    out = result.outputs["q"]
    assert out.dtype == types_pb2.DT_QINT8
    assert list(out.int_val) == [63, -128] and not out.tensor_content
    assert tf.make_ndarray(out).dtype == tf.qint8.as_numpy_dtype
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT and list(result.outputs["y"].float_val) == [0.5, -1.0]


def test_tensor_protos_that_make_no_tensor_are_invalid_argument():
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving_host import apis
    from serving_host.status import ServingError

    bad = [tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 12),   # 3 floats, shape [2]
           tensor_pb2.TensorProto(dtype=types_pb2.DT_INVALID, float_val=[1])]
    bad[0].tensor_shape.dim.add().size = 2
    neg = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1])
    neg.tensor_shape.dim.add().size = -1
    for proto in bad + [neg]:
        with pytest.raises(ServingError) as info:
            apis.tensor_from_proto("x", proto)
        assert (info.value.code, info.value.message) == ("INVALID_ARGUMENT", "tensor parsing error: x")


def test_an_empty_tensor_of_a_reference_type_is_a_parsing_error_as_in_tensorflow():
    """``Tensor::FromProto`` of an empty tensor checks only that its dtype is one ``CASES`` knows,
    and no reference type is (DT_FLOAT_REF ... DT_VARIANT_REF): "tensor parsing error: x". For
    DT_RESOURCE_REF and DT_VARIANT_REF this server asked numpy for the type's form, which has none,
    and the call ended UNKNOWN "KeyError: 120"."""
    from tensorflow.core.framework import tensor_pb2

    from serving_host import apis
    from serving_host.status import ServingError

    for dtype in range(101, 124):
        proto = tensor_pb2.TensorProto(dtype=dtype)
        proto.tensor_shape.dim.add().size = 0
        with pytest.raises(ServingError) as info:
            apis.tensor_from_proto("x", proto)
        assert (info.value.code, info.value.message) == ("INVALID_ARGUMENT", "tensor parsing error: x"), dtype


def test_typed_values_beyond_the_shape_are_ignored_and_too_few_repeat_the_last():
    """``FromProtoField`` (tensor.cc): the first n values when there are more, the last value
    repeated when there are fewer, zeros when there are none."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving_host import apis

    def proto(values, n, **kw):
        p = tensor_pb2.TensorProto(dtype=kw.get("dtype", types_pb2.DT_FLOAT), **{kw.get("field", "float_val"): values})
        p.tensor_shape.dim.add().size = n
        return p

    assert apis.tensor_from_proto("x", proto([1, 2, 3], 2)).tolist() == [1.0, 2.0]
    assert apis.tensor_from_proto("x", proto([1, 2], 4)).tolist() == [1.0, 2.0, 2.0, 2.0]
    assert apis.tensor_from_proto("x", proto([], 3)).tolist() == [0.0, 0.0, 0.0]
    assert apis.tensor_from_proto("s", proto([b"a", b"b"], 1, dtype=types_pb2.DT_STRING,
                                             field="string_val")).tolist() == [b"a"]



def test_an_empty_tensor_ignores_its_tensor_content_as_tf_serving_does():
    """``Tensor::FromProto`` decodes values only when the shape has elements (N > 0): a
    zero-element tensor is made whatever ``tensor_content`` holds (only the dtype is checked).
    This server read the content anyway and refused it as ``tensor parsing error``."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving_host import apis
    from serving_host.status import ServingError

    for dtype, content, dims in ((types_pb2.DT_FLOAT, b"abcd", [0]), (types_pb2.DT_STRING, b"\x01a", [0, 3]),
                                 (types_pb2.DT_INT64, b"12345678", [2, 0])):
        p = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content)
        for d in dims:
            p.tensor_shape.dim.add().size = d
        assert apis.tensor_from_proto("x", p).shape == tuple(dims)
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"abc")   # N > 0: still read
    p.tensor_shape.dim.add().size = 1
    with pytest.raises(ServingError) as e:
        apis.tensor_from_proto("x", p)
    assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", "tensor parsing error: x")


def test_a_bool_tensor_content_byte_other_than_0_or_1_is_a_parsing_error_as_in_tensorflow():
    """``Tensor::FromProto`` refuses a DT_BOOL ``tensor_content`` holding a byte other than 0 or 1
    (TensorFlow's own ``ParseTensor`` op, which calls it, is the reference here), so TF Serving
    answers INVALID_ARGUMENT ``tensor parsing error: x``. This server fed the bytes as they were:
    the model ran on a bool of value 2 (read as true) and answered OK."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving_host import apis
    from serving_host.status import ServingError

    def proto(content):
        p = tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, tensor_content=content)
        p.tensor_shape.dim.add().size = len(content)
        return p

    assert apis.tensor_from_proto("x", proto(b"\x00\x01")).tolist() == [False, True]
    for content in (b"\x02\x01", b"\x01\xff", b"\x00\x00\x80"):
        with pytest.raises(tf.errors.InvalidArgumentError):     # the reference refuses it
            tf.io.parse_tensor(proto(content).SerializeToString(), tf.bool)
        with pytest.raises(ServingError) as e:
            apis.tensor_from_proto("x", proto(content))
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", "tensor parsing error: x")


def test_complex_and_quantized_values_beyond_the_shape_are_ignored_too():
    """``FromProtoField`` for complex (``scomplex_val``/``dcomplex_val``: two numbers an element,
    an odd last one ignored) and quantized types (``int_val``): the first n elements are used.
    This server refused them as "tensor parsing error"."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving_host import apis

    def proto(dtype, field, values, n):
        p = tensor_pb2.TensorProto(dtype=dtype, **{field: values})
        p.tensor_shape.dim.add().size = n
        return p

    assert apis.tensor_from_proto("x", proto(types_pb2.DT_COMPLEX64, "scomplex_val", [1, 2, 3, 4, 5, 6], 2)).tolist() \
        == [1 + 2j, 3 + 4j]
    assert apis.tensor_from_proto("x", proto(types_pb2.DT_COMPLEX128, "dcomplex_val", [1, 2, 3], 1)).tolist() \
        == [1 + 2j]
    assert apis.tensor_from_proto("x", proto(types_pb2.DT_COMPLEX64, "scomplex_val", [1, 2, 3], 2)).tolist() \
        == [1 + 2j, 1 + 2j]
    for dtype in (types_pb2.DT_QINT8, types_pb2.DT_QUINT8, types_pb2.DT_QINT32):
        assert len(apis.tensor_from_proto("x", proto(dtype, "int_val", [1, 2, 3], 2))) == 2


def test_narrow_integers_out_of_their_range_wrap_as_tf_serving_casts_them():
    """``FromProtoField`` copies ``int_val`` (int32) into uint8/int8/uint16/int16 and quantized
    elements, and ``half_val`` into 16 bits, with a C++ cast: 300 as uint8 is 44, -1 is 255.
    This server refused them as "tensor parsing error" (numpy will not wrap a Python int)."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from serving_host import apis

    def parsed(dtype, values, field="int_val"):
        p = tensor_pb2.TensorProto(dtype=dtype, **{field: values})
        p.tensor_shape.dim.add().size = len(values)
        return apis.tensor_from_proto("x", p)

    assert parsed(types_pb2.DT_UINT8, [300, -1, 7]).tolist() == [44, 255, 7]
    assert parsed(types_pb2.DT_INT8, [-200, 130]).tolist() == [56, -126]
    assert parsed(types_pb2.DT_UINT16, [70000, -2]).tolist() == [4464, 65534]
    assert parsed(types_pb2.DT_INT16, [40000]).tolist() == [-25536]
    assert parsed(types_pb2.DT_QUINT8, [257]).view("uint8").tolist() == [1]
    assert parsed(types_pb2.DT_HALF, [65536 + 0x3C00, -0x4000], field="half_val").tolist() == [1.0, -2.0]

def _tensor_proto(dtype: int, dims, **fields):
    from tensorflow.core.framework import tensor_pb2

    p = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for d in dims:
        p.tensor_shape.dim.add().size = d
    return p


FLOAT8_TYPES = (24, 25, 26, 27, 28)     # float8_e5m2, _e4m3fn, _e4m3fnuz, _e4m3b11fnuz, _e5m2fnuz


def test_float8_tensors_are_read_from_and_written_to_float8_val_as_tensorflow_does():
    """``Tensor::FromProto`` reads a float8 tensor's typed values from ``float8_val`` (one byte an
    element, the first n used, the last repeated, zeros when there are none) for all five float8
    types, and ``AsProtoField`` writes them there (TensorFlow's own ``ParseTensor`` op, which calls
    FromProto, is the reference). This server refused e4m3fnuz, e4m3b11fnuz and e5m2fnuz inputs
    given in ``float8_val`` (or with no values) and any float8 input with more values than its shape
    as "tensor parsing error", and wrote float8 outputs to ``tensor_content``."""
    import tensorflow as tf

    from serving_host import apis

    for dtype in FLOAT8_TYPES:
        for label, proto in (("more", _tensor_proto(dtype, [2], float8_val=b"\x3c\x40\x44")),
                             ("fewer", _tensor_proto(dtype, [3], float8_val=b"\x3c\x40")),
                             ("none", _tensor_proto(dtype, [2, 1])),
                             ("half_val only", _tensor_proto(dtype, [2], half_val=[0x3c, 0x40])),
                             ("tensor_content", _tensor_proto(dtype, [2], tensor_content=b"\x3c\x40"))):
            want = tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy()
            got = apis.tensor_from_proto("x", proto)
            assert (got.dtype, got.shape, got.tobytes()) == (want.dtype, want.shape, want.tobytes()), (dtype, label)
        arr = apis.tensor_from_proto("x", _tensor_proto(dtype, [2], float8_val=b"\x3c\x40"))
        out = apis.tensor_to_proto(arr)
        assert (out.dtype, out.float8_val, out.tensor_content) == (dtype, b"\x3c\x40", b""), dtype
        assert [d.size for d in out.tensor_shape.dim] == [2]


def test_float4_tensors_are_read_from_and_written_to_float8_val_as_tensorflow_does():
    """TensorFlow reads a float4_e2m1fn tensor's typed values from ``float8_val`` (one byte an
    element, the first n used, the last repeated), as it reads float8, and ``AsProtoField`` writes
    them there through the same helper. This server wrote float4 outputs to ``tensor_content`` (a
    client reading the typed field saw no values) and refused a float4 input with more values than
    its shape as "tensor parsing error"."""
    import tensorflow as tf

    from serving_host import apis

    dtype = 33      # DT_FLOAT4_E2M1FN
    for label, proto in (("more", _tensor_proto(dtype, [2], float8_val=b"\x01\x02\x03")),
                         ("fewer", _tensor_proto(dtype, [3], float8_val=b"\x01\x0a")),
                         ("none", _tensor_proto(dtype, [2, 1])),
                         ("tensor_content", _tensor_proto(dtype, [2], tensor_content=b"\x03\x04"))):
        want = tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy()
        got = apis.tensor_from_proto("x", proto)
        assert (got.dtype, got.shape, got.tobytes()) == (want.dtype, want.shape, want.tobytes()), label
    arr = apis.tensor_from_proto("x", _tensor_proto(dtype, [1, 2], float8_val=b"\x02\x0b"))
    out = apis.tensor_to_proto(arr)
    assert (out.dtype, out.float8_val, out.tensor_content) == (dtype, b"\x02\x0b", b"")
    assert [d.size for d in out.tensor_shape.dim] == [1, 2]
    back = tf.io.parse_tensor(out.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy()
    assert back.astype("float32").tolist() == [[1.0, -1.5]]


def test_int4_uint4_int2_uint2_inputs_take_their_first_values_as_tensorflow_does():
    """``Int4FromProtoField`` (int4, uint4; int2 and uint2 alike) reads one element an ``int_val``,
    the first n of them, the last repeated when there are fewer, each cut to its bits. This server
    refused such an input with more values than its shape as "tensor parsing error", where TF
    Serving makes the tensor and runs the model (TensorFlow's own ``ParseTensor`` is the reference)."""
    import tensorflow as tf

    from serving_host import apis

    for dtype in (29, 30, 31, 32):      # DT_INT4, DT_UINT4, DT_INT2, DT_UINT2
        for label, proto in (("more", _tensor_proto(dtype, [2, 2], int_val=[9, -9, 300, -129, 5, 6])),
                             ("one more", _tensor_proto(dtype, [1], int_val=[1, 2])),
                             ("fewer", _tensor_proto(dtype, [3], int_val=[1, 7])),
                             ("none", _tensor_proto(dtype, [2]))):
            want = tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy()
            got = apis.tensor_from_proto("x", proto)
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (dtype, label)
            assert got.astype("int32").tolist() == want.astype("int32").tolist(), (dtype, label)


def test_a_float8_or_float4_tensor_too_large_to_hold_is_a_parsing_error_as_in_tensorflow():
    """``Tensor::FromProto`` allocates a tensor's buffer before it reads ``float8_val``; when that
    fails (2**44 elements) it makes no tensor: TF Serving answers INVALID_ARGUMENT "tensor parsing
    error: x", as for every other type. This server's float8 reading let Python's MemoryError out,
    so the gRPC call ended UNKNOWN "MemoryError: " (float4 reads the same way). (TensorFlow's own
    ParseTensor refuses these too, after its allocator's 10 s of retries: not run here.)"""
    from serving_host import apis
    from serving_host.status import ServingError

    for dtype in (*FLOAT8_TYPES, 33):
        for fields in ({}, {"float8_val": b"\x01"}):
            proto = _tensor_proto(dtype, [2**44], **fields)
            with pytest.raises(ServingError) as e:
                apis.tensor_from_proto("x", proto)
            assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", "tensor parsing error: x"), dtype


def test_a_tensor_shape_is_read_as_tensorflow_reads_it():
    """``Tensor::FromProto`` reads its shape as a ``TensorShape``: ``unknown_rank`` is ignored (the
    dims are the shape), more than 254 dims make no tensor. This server refused ``unknown_rank`` as
    "tensor parsing error", and said the same of a tensor of rank 65 .. 254, which TF Serving makes
    and runs: that one is now refused as this server's own limit (numpy's 64 dimensions)."""
    import tensorflow as tf

    from serving_host import apis
    from serving_host.status import ServingError

    def reference(proto):
        return tf.io.parse_tensor(proto.SerializeToString(), tf.float32)

    for dims in ([2], []):
        proto = _tensor_proto(1, dims, float_val=[1.5])
        proto.tensor_shape.unknown_rank = True
        assert apis.tensor_from_proto("x", proto).tolist() == reference(proto).numpy().tolist()
    too_many = _tensor_proto(1, [1] * 255, float_val=[1.0])
    with pytest.raises(tf.errors.InvalidArgumentError):
        reference(too_many)
    with pytest.raises(ServingError) as e:
        apis.tensor_from_proto("x", too_many)
    assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", "tensor parsing error: x")
    for rank in (65, 254):
        proto = _tensor_proto(1, [1] * rank, float_val=[1.0])
        assert reference(proto).shape.rank == rank
        with pytest.raises(ServingError) as e:
            apis.tensor_from_proto("x", proto)
        assert (e.value.code, e.value.message) == (
            "INVALID_ARGUMENT", f"Tensor x of rank {rank}: more than the 64 dimensions the local server supports "
                                "(TF Serving takes up to 254)")
    assert apis.tensor_from_proto("x", _tensor_proto(1, [1] * 64, float_val=[1.0])).ndim == 64


def test_an_empty_tensor_with_huge_other_dimensions_is_read_as_tensorflow_reads_it():
    """``TensorShape::IsValid`` takes any sizes whose running product stays within int64: an empty
    tensor ([0, 2**62]) is made whatever its other sizes, and only a product that passes int64 before
    a 0 makes none. numpy holds an empty array only when its other sizes times the element's bytes
    fit: this server called [0, 2**62] "tensor parsing error". It now says that this is its own
    limit, for every type (a resource or variant one too); what numpy holds is made as before."""
    import tensorflow as tf

    from serving_host import apis
    from serving_host.status import ServingError

    def reference(proto):
        return tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(proto.dtype))

    for dtype, dims in ((1, [0, 2**40]), (1, [2**40, 0]), (10, [0, 2**62]), (20, [0, 2**40])):
        proto = _tensor_proto(dtype, dims)
        assert reference(proto).shape.as_list() == dims
        assert list(apis.tensor_from_proto("x", proto).shape) == dims
    for dtype, dims in ((1, [0, 2**62]), (2, [0, 2**61]), (7, [2**61, 0, 3]), (20, [0, 2**62]), (21, [0, 2**63 - 1])):
        proto = _tensor_proto(dtype, dims)
        assert reference(proto).shape.as_list() == dims
        with pytest.raises(ServingError) as e:
            apis.tensor_from_proto("x", proto)
        assert (e.value.code, e.value.message) == (
            "INVALID_ARGUMENT", f"Tensor x of shape [{','.join(map(str, dims))}]: an empty tensor larger in its "
                                "other dimensions than the local server supports (numpy's limit; TF Serving takes it)")
    for dims in ([2**62, 2**62, 0], [2**32, 2**32]):    # the product passes int64 before any 0
        proto = _tensor_proto(1, dims)
        with pytest.raises(tf.errors.InvalidArgumentError):
            reference(proto)
        with pytest.raises(ServingError) as e:
            apis.tensor_from_proto("x", proto)
        assert e.value.message == "tensor parsing error: x"


def test_the_metrics_page_with_a_query_is_refused_as_tf_serving_refuses_it(server):
    """ProcessPrometheusRequest (http_server.cc) compares uri_path() — query included — with the
    configured path: 400 "Unexpected path". This server stripped the query and answered 200."""
    import requests

    assert requests.get(server.rest_url + METRICS_PATH, timeout=10).status_code == 200
    r = requests.get(server.rest_url + METRICS_PATH + "?x=1", timeout=10)
    assert r.status_code == 400 and r.headers["Content-Type"] == "text/plain"
    assert r.text == f"Unexpected path: {METRICS_PATH}?x=1. Should be {METRICS_PATH}"


def test_a_wrong_dtype_is_reported_by_its_place_among_the_sorted_feed_names(tmp_path):
    """Session::Run (DirectSession) sorts the feeds by tensor name and FunctionCallFrame::SetArgs
    reports the first mismatch by that index, whatever the aliases: alias ``a`` feeds ``z:0`` and
    ``b`` feeds ``a:0``, so a string for ``a`` is arg[1]. This server counted by sorted alias
    and answered arg[0]."""
    import tensorflow as tf

    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        z = tf.compat.v1.placeholder(tf.float32, [None], name="z")
        a = tf.compat.v1.placeholder(tf.int64, [None], name="a")
        y = tf.identity(z + tf.cast(a, tf.float32), name="y")
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"a": info(z), "b": info(a)}, outputs={"y": info(y)},
            method_name="tensorflow/serving/predict")
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    servable = Servable.load("m", 1, path)
    try:
        good = {"a": np.array([1.5], np.float32), "b": np.array([2], np.int64)}
        assert servable.predict("", good)["y"].tolist() == [3.5]
        with pytest.raises(ServingError) as e:
            servable.predict("", {**good, "a": np.array([b"x"], object)})
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT",
                                                   "Expects arg[1] to be float but string is provided")
        with pytest.raises(ServingError) as e:       # both wrong: a:0 (alias b) comes first
            servable.predict("", {"a": np.array([b"x"], object), "b": np.array([1.0], np.float32)})
        assert e.value.message == "Expects arg[0] to be int64 but float is provided"
    finally:
        servable.close()


def test_resource_and_variant_inputs_are_made_and_refused_by_the_runs_dtype_check_as_in_tf_serving(tmp_path):
    """``Tensor::FromProto`` makes DT_RESOURCE and DT_VARIANT tensors (handles from
    ``resource_handle_val``, variants decoded from ``variant_val``, defaults when none), so TF Serving
    runs the session with them and its dtype check answers INVALID_ARGUMENT "Expects arg[0] to be
    float but resource is provided". This server answered "tensor parsing error: x" to every one. A
    variant FromProto cannot decode is still a parsing error (TensorFlow's ``ParseTensor`` refuses
    it too); a model whose input is itself a resource is this server's limit, said so."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    from serving_host import apis
    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        h = tf.compat.v1.placeholder(tf.resource, [], name="h")
        y = tf.identity(x * 2, name="y")
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sigs = {name: tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(t)}, outputs={"y": info(y)}, method_name="tensorflow/serving/predict")
            for name, t in (("serving_default", x), ("handle", h))}
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=sigs)
        builder.save()
    servable = Servable.load("m", 1, path)

    def predict(proto, signature=""):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "m", signature
        request.inputs["x"].CopyFrom(proto)
        with pytest.raises(ServingError) as e:
            apis.predict(servable, request, 1)
        return e.value.code, e.value.message

    handle = tensor_pb2.TensorProto(dtype=20)
    handle.tensor_shape.dim.add().size = 2
    handle.resource_handle_val.add(device="/job:localhost/replica:0/task:0/device:CPU:0", name="v")
    variant = tensor_pb2.TensorProto(dtype=21)
    variant.tensor_shape.dim.add().size = 3
    undecodable = tensor_pb2.TensorProto(dtype=21)
    undecodable.tensor_shape.dim.add().size = 1
    undecodable.variant_val.add(type_name="no.such.Type")
    try:
        for proto, name in ((handle, "resource"), (variant, "variant")):
            tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(proto.dtype))  # TensorFlow makes it
            assert predict(proto) == ("INVALID_ARGUMENT", f"Expects arg[0] to be float but {name} is provided")
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.parse_tensor(undecodable.SerializeToString(), tf.variant)
        assert predict(undecodable) == ("INVALID_ARGUMENT", "tensor parsing error: x")
        scalar = tensor_pb2.TensorProto(dtype=20)
        scalar.tensor_shape.SetInParent()
        assert predict(scalar, "handle") == (
            "UNIMPLEMENTED", "Feeding h:0 a resource tensor: the local server cannot pass one to the model "
                             "(TF Serving does)")
        good = predict_pb2.PredictRequest()
        good.model_spec.name = "m"
        good.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.5], np.float32)))
        assert list(apis.predict(servable, good, 1).outputs["y"].float_val) == [3.0]
    finally:
        servable.close()


def _save_doubling_model(path: str, signatures) -> None:
    """A SavedModel at ``path``: ``y = x * 2`` for a float placeholder ``x``, with the signatures
    ``signatures(x, y, info, sig)`` returns (``info(tensor)`` its TensorInfo, ``sig(inputs, outputs)``
    a Predict SignatureDef of two such dicts)."""
    import tensorflow as tf

    def sig(inputs, outputs):
        return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs=inputs, outputs=outputs, method_name="tensorflow/serving/predict")

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x * 2.0, name="y")
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess, ["serve"],
            signature_def_map=signatures(x, y, tf.compat.v1.saved_model.utils.build_tensor_info, sig))
        builder.save()


def test_a_signature_without_outputs_is_the_runs_invalid_argument_as_in_tf_serving(tmp_path):
    """A signature with no outputs (and no output_filter) fetches nothing: TF Serving's
    ``Session::Run`` returns INVALID_ARGUMENT "Must specify at least one target to fetch or
    execute." (``subgraph.cc``), over gRPC and in a warmup replay, which fails the load with it.
    This server made the session callable outside its error mapping: the raw TensorFlow error
    reached gRPC as UNKNOWN "InvalidArgumentError: ..." and a warmup load as UNKNOWN too."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving_host import warmup
    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    _save_doubling_model(path, lambda x, y, info, sig: {"serving_default": sig({"x": info(x)}, {"y": info(y)}),
                                                        "no_outputs": sig({"x": info(x)}, {})})
    servable = Servable.load("m", 1, path)
    message = "Must specify at least one target to fetch or execute."
    try:
        assert servable.predict("", {"x": np.array([1.5], np.float32)})["y"].tolist() == [3.0]
        with pytest.raises(ServingError) as e:
            servable.predict("no_outputs", {"x": np.array([1.5], np.float32)})
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", message)
        entry = prediction_log_pb2.PredictionLog()
        entry.predict_log.request.model_spec.signature_name = "no_outputs"
        entry.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.5], dtype=tf.float32))
        (tmp_path / "1" / "assets.extra").mkdir()
        with tf.io.TFRecordWriter(warmup.requests_path(path)) as w:
            w.write(entry.SerializeToString())
        with pytest.raises(ServingError) as e:
            warmup.run(servable, path, model_name="m", version=1)
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", message)
    finally:
        servable.close()


def test_two_input_aliases_of_one_tensor_are_refused_as_tf_serving_refuses_them(tmp_path):
    """``GetInputValues`` feeds one (tensor name, value) pair per input alias; two aliases of one
    placeholder feed it twice and TF Serving's ``Session::Run`` refuses the graph: INVALID_ARGUMENT
    'Endpoint "x:0" fed more than once.' (``subgraph.cc``). This server built its feeds as a dict by
    tensor name, so the second value silently replaced the first and the request answered OK: a
    model that cannot serve Predict on TF Serving passed here."""
    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    _save_doubling_model(path, lambda x, y, info, sig: {
        "serving_default": sig({"a": info(x), "b": info(x)}, {"y": info(y)}),
        "echo": sig({"x": info(x)}, {"y": info(x)})})
    servable = Servable.load("m", 1, path)
    one = np.array([1.5], np.float32)
    try:
        with pytest.raises(ServingError) as e:
            servable.predict("", {"a": one, "b": one})
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", 'Endpoint "x:0" fed more than once.')
        with pytest.raises(ServingError) as e:      # an input fetched as an output: the graph build's too
            servable.predict("echo", {"x": one})
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT", "x:0 is both fed and fetched.")
    finally:
        servable.close()


def _broken_names_model(path: str) -> None:
    """serving_default feeds ``x`` (no ":0", as a hand-written SignatureDef may name it); ``gone``
    fetches a tensor the graph does not have."""
    def signatures(x, y, info, sig):
        bare, gone = info(x), info(y)
        bare.name = "x"
        gone.name = "nope:0"
        return {"serving_default": sig({"x": bare}, {"y": info(y)}), "gone": sig({"x": info(x)}, {"y": gone})}

    _save_doubling_model(path, signatures)


def test_a_feed_name_without_its_index_is_dtype_checked_as_the_session_checks_it(tmp_path):
    """A signature input named ``x`` feeds ``x:0`` (ParseTensorName) and Session::Run's SetArgs
    refuses a wrong dtype with "Expects arg[0] to be float but string is provided". This server
    looked ``x`` up as a tensor, found none, skipped its check and answered with the session
    callable's Python text instead."""
    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    _broken_names_model(path)
    servable = Servable.load("m", 1, path)
    try:
        assert servable.predict("", {"x": np.array([1.5], np.float32)})["y"].tolist() == [3.0]
        with pytest.raises(ServingError) as e:
            servable.predict("", {"x": np.array([b"a"], object)})
        assert (e.value.code, e.value.message) == ("INVALID_ARGUMENT",
                                                   "Expects arg[0] to be float but string is provided")
    finally:
        servable.close()


def test_the_graph_build_fails_before_the_dtype_check_as_in_direct_session(tmp_path):
    """DirectSession::Run makes its executors (GetOrCreateExecutors: a fetch the graph does not
    have fails there) before SetArgs checks the fed dtypes, so a wrong dtype sent to a signature
    that cannot run gets the build's error, the same as a right one. This server checked the
    dtype first and answered "Expects arg[0] ..." for it."""
    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    _broken_names_model(path)
    servable = Servable.load("m", 1, path)
    try:
        with pytest.raises(ServingError) as right:
            servable.predict("gone", {"x": np.array([1.5], np.float32)})
        with pytest.raises(ServingError) as wrong:
            servable.predict("gone", {"x": np.array([b"a"], object)})
        assert "Expects arg" not in right.value.message
        assert (wrong.value.code, wrong.value.message) == (right.value.code, right.value.message)
    finally:
        servable.close()


def test_class_labels_that_are_not_utf8_leave_as_their_bytes_as_in_tf_serving(tmp_path, tfserving_factory):
    """``PostProcessClassificationResult`` copies the classes tensor's bytes into ``label``
    (``set_label(data, size)``); C++ protobuf only logs a proto3 string that is not UTF-8 when it
    serializes, so gRPC Classify and MultiInference send the bytes, and REST's rapidjson
    ``writer.String`` writes them unchecked. This server replaced them with U+FFFD on both APIs."""
    import requests
    import tensorflow as tf

    from serving_host import apis

    base = tmp_path / "models"
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        n = tf.size(examples)
        classes = tf.reshape(tf.tile(tf.constant([b"\xffcat", b"ok"]), [n]), [-1, 2])
        scores = tf.ones(tf.stack([n, 2]), tf.float32)
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"inputs": info(examples)}, outputs={"classes": info(classes), "scores": info(scores)},
            method_name="tensorflow/serving/classify")
        builder = tf.compat.v1.saved_model.Builder(str(base / "raw" / "1"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    srv = tfserving_factory(base, 'model_config_list { config { name: "raw" base_path: "%s" '
                                  'model_platform: "tensorflow" } }' % (base / "raw"))
    srv.wait_for_state("raw", 1, "AVAILABLE")
    from tensorflow_serving.apis import classification_pb2, inference_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "raw"
    request.input.example_list.examples.add()
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name, task.method_name = "raw", "tensorflow/serving/classify"
    multi.input.CopyFrom(request.input)
    with grpc.insecure_channel(srv.grpc_address) as channel:     # the answers' bytes, not parsed
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Classify",
                                  request_serializer=lambda m: m.SerializeToString())(request, timeout=60)
        raw_multi = channel.unary_unary("/tensorflow.serving.PredictionService/MultiInference",
                                        request_serializer=lambda m: m.SerializeToString())(multi, timeout=60)
    assert b"\n\x04\xffcat" in raw and b"\n\x04\xffcat" in raw_multi   # field 1, 4 bytes: the label
    got = apis.raw_label_type("tensorflow.serving.ClassificationResponse").FromString(raw)
    assert [(c.label, c.score) for c in got.result.classifications[0].classes] == [(b"\xffcat", 1.0), (b"ok", 1.0)]
    got_multi = apis.raw_label_type("tensorflow.serving.MultiInferenceResponse").FromString(raw_multi)
    assert [c.label for c in got_multi.results[0].classification_result.classifications[0].classes] == [
        b"\xffcat", b"ok"]
    r = requests.post(f"{srv.rest_url}/v1/models/raw:classify", json={"examples": [{}]}, timeout=60)
    assert r.status_code == 200
    assert r.content == b'{\n    "results": [[["\xffcat", 1.0], ["ok", 1.0]]\n    ]\n}'


# -- grpc.health.v1 ---------------------------------------------------------------------------
def _health_request(service: str) -> bytes:
    """``HealthCheckRequest(service=service)``'s bytes (field 1, its length as a varint)."""
    data = service.encode()
    if not data:
        return b""
    n, size = len(data), b""
    while n > 0x7F:
        size, n = size + bytes([n & 0x7F | 0x80]), n >> 7
    return b"\n" + size + bytes([n]) + data


def _health_check(channel, service: str) -> bytes:
    """grpc.health.v1.Health/Check on raw bytes."""
    return channel.unary_unary("/grpc.health.v1.Health/Check")(_health_request(service), timeout=RPC_TIMEOUT)


def test_the_grpc_health_service_answers_as_tf_serving_with_its_flag(server, tfserving_factory, tmp_path):
    """server.cc: --enable_grpc_healthcheck_service turns on gRPC's DefaultHealthCheckService ("" is
    SERVING) and sets "ModelService" and "PredictionService" SERVING; another name is NOT_FOUND
    "service name unknown". Without the flag there is no Health service (UNIMPLEMENTED). The local
    server took the flag and ignored it, so a client's health probe got UNIMPLEMENTED."""
    with pytest.raises(grpc.RpcError) as info:
        _health_check(server.channel, "")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    config = (f'model_config_list {{ config {{ name: "default" base_path: "{HALF_PLUS_TWO}" '
              f'model_platform: "tensorflow" }} }}\n')
    srv = tfserving_factory(tmp_path / "base", config, extra_args=("--enable_grpc_healthcheck_service=true",))
    with grpc.insecure_channel(srv.grpc_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        for service in ("", "ModelService", "PredictionService"):
            assert _health_check(channel, service) == b"\x08\x01", service      # status: SERVING
        for service in ("tensorflow.serving.PredictionService", "nope"):
            with pytest.raises(grpc.RpcError) as info:
                _health_check(channel, service)
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                                 "service name unknown")
        with pytest.raises(grpc.RpcError) as info:      # not a HealthCheckRequest
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff", timeout=RPC_TIMEOUT)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                             "could not parse request")
        # DecodeRequest refuses a name over 200 bytes (MAX_SERVICE_NAME_LENGTH) as not parsing, in Check
        # and Watch; a 200-byte name is only unknown. The local server answered NOT_FOUND / SERVICE_UNKNOWN.
        for service in ("x" * 201, "\u00e9" * 101):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/grpc.health.v1.Health/Check")(_health_request(service), timeout=RPC_TIMEOUT)
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                 "could not parse request")
            assert _watch_until_deadline(channel, service, RPC_TIMEOUT) == ([], grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError) as info:
            _health_check(channel, "x" * 200)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND, "service name unknown")



def _watch_until_deadline(channel, service: str, seconds: float = 1.0) -> tuple[list[bytes], grpc.StatusCode]:
    """Health/Watch(service) read until the call ends (its deadline at the latest): (messages, code)."""
    call = channel.unary_stream("/grpc.health.v1.Health/Watch")(_health_request(service), timeout=seconds)
    got = []
    try:
        for message in call:
            got.append(message)
            assert len(got) < 10, got                       # bounded: a few messages at most
    except grpc.RpcError as exc:
        return got, exc.code()
    return got, grpc.StatusCode.OK


def test_the_grpc_health_watch_streams_as_grpcs_default_health_service(server, tfserving_factory, tmp_path):
    """gRPC C++'s DefaultHealthCheckService (default_health_check_service.cc) serves Watch: the
    service's status at once (SERVING for "", "ModelService", "PredictionService"; SERVICE_UNKNOWN,
    not an error, for any other name), then the stream stays open for updates (TF Serving sets none
    after start); bytes that do not parse are INVALID_ARGUMENT "could not parse request". The local
    server answered Watch UNIMPLEMENTED. Open watches do not take the threads of Predict, a client's
    cancel frees its slot, and stopping the server ends an open Watch at once (UNAVAILABLE, as a
    client of TF Serving sees the process end)."""
    with pytest.raises(grpc.RpcError) as info:          # without the flag: no Health service
        next(server.channel.unary_stream("/grpc.health.v1.Health/Watch")(b"", timeout=RPC_TIMEOUT))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    config = (f'model_config_list {{ config {{ name: "default" base_path: "{HALF_PLUS_TWO}" '
              f'model_platform: "tensorflow" }} }}\n')
    srv = tfserving_factory(tmp_path / "base", config, extra_args=("--enable_grpc_healthcheck_service=true",))
    srv.wait_for_state("default", 123, "AVAILABLE")
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(srv.grpc_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        for service, status in (("", b"\x08\x01"), ("ModelService", b"\x08\x01"),
                                ("PredictionService", b"\x08\x01"), ("nope", b"\x08\x03")):
            # one message, then open until the client's deadline (the server does not end it)
            assert _watch_until_deadline(channel, service) == ([status], grpc.StatusCode.DEADLINE_EXCEEDED), service
        with pytest.raises(grpc.RpcError) as info:
            next(channel.unary_stream("/grpc.health.v1.Health/Watch")(b"\xff", timeout=RPC_TIMEOUT))
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                             "could not parse request")

        from serving_host.grpc_service import MAX_WATCHES

        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        calls = [watch(b"", timeout=120) for _ in range(MAX_WATCHES)]
        try:
            assert [next(c) for c in calls] == [b"\x08\x01"] * MAX_WATCHES      # all open at once
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            y = stub.Predict(predict_request(x=(1.0,)), RPC_TIMEOUT).outputs["y"].float_val
            assert list(y) == [2.5]                                              # Predict still answers
            with pytest.raises(grpc.RpcError) as info:
                next(watch(b"", timeout=RPC_TIMEOUT))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many open Health/Watch streams" in info.value.details()
            calls.pop().cancel()
            deadline = time.monotonic() + 30
            while True:          # bounded: the server frees the slot once it sees the cancel
                extra = watch(b"", timeout=120)
                try:
                    assert next(extra) == b"\x08\x01"
                    calls.append(extra)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "a cancelled Watch kept its slot"
                    time.sleep(0.1)
            started = time.monotonic()
            srv.stop()                                        # SIGTERM: grace of 2 s for unary calls
            for c in calls:
                with pytest.raises(grpc.RpcError) as info:
                    next(c)
                assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE,
                                                                     "server shutting down")
            assert time.monotonic() - started < 60
        finally:
            for c in calls:
                c.cancel()

def test_a_request_that_does_not_parse_is_internal_with_no_text_as_grpc_cpp_answers(server):
    """gRPC C++'s ``GenericDeserialize`` (grpcpp/impl/codegen/proto_utils.h): bytes that do not parse as
    the request are INTERNAL with ``InitializationErrorString()``, empty for TF Serving's proto3
    requests, before TF Serving's handler runs. Python's gRPC answered INTERNAL "Exception
    deserializing request!" (and logged a traceback)."""
    not_a_message = b"\\xff"                          # field 31 with wire type 7: no such thing
    bad_utf8_name = b"\\x0a\\x03\\x0a\\x01\\xff"          # model_spec { name: "\\xff" }: proto3 strings are UTF-8
    for method in ("/tensorflow.serving.PredictionService/Predict",
                   "/tensorflow.serving.PredictionService/Classify",
                   "/tensorflow.serving.PredictionService/GetModelMetadata",
                   "/tensorflow.serving.ModelService/GetModelStatus",
                   "/tensorflow.serving.ModelService/HandleReloadConfigRequest"):
        for data in (not_a_message, bad_utf8_name):
            with pytest.raises(grpc.RpcError) as info:
                server.channel.unary_unary(method)(data, timeout=RPC_TIMEOUT)
            assert (info.value.code(), info.value.details() or "") == (grpc.StatusCode.INTERNAL, ""), (method, data)
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()       # the same handlers still answer
    request.model_spec.name = "default"
    status = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(request, RPC_TIMEOUT)
    assert [(s.version, s.state) for s in status.model_version_status] == [(123, 30)]


# -- deadlines: the call's deadline is the session run's timeout -----------------------------
SPIN_FOREVER = 2**62          # loop iterations no run finishes (microseconds each)


def _save_spinning_model(path: str) -> None:
    """A SavedModel whose run loops ``n`` times: Predict feeds ``n`` (int64 scalar) and fetches
    ``y`` = n; ``regress`` / ``classify`` read ``n`` from each tf.Example (``inputs``) and loop the
    largest, answering each example's n as its value / its one score."""
    import tensorflow as tf

    def spin(count):
        _, acc = tf.while_loop(lambda i, a: i < count, lambda i, a: (i + 1, a + 1.0),
                               (tf.constant(0, tf.int64), tf.constant(0.0)))
        return acc

    info = tf.compat.v1.saved_model.utils.build_tensor_info
    build = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        n = tf.compat.v1.placeholder(tf.int64, [], name="n")
        y = tf.identity(spin(n), name="y")
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        ns = tf.io.parse_example(examples, {"n": tf.io.FixedLenFeature([1], tf.int64)})["n"][:, 0]
        values = tf.cast(ns, tf.float32) + spin(tf.reduce_max(ns)) * 0.0
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            "serving_default": build({"n": info(n)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "regress": build({"inputs": info(examples)}, {"outputs": info(values)}, REGRESS),
            "classify": build({"inputs": info(examples)}, {"scores": info(tf.expand_dims(values, 1))}, CLASSIFY)})
        builder.save()


def _spin_examples(target, n: int) -> None:
    target.example_list.examples.add().features.feature["n"].int64_list.value.append(n)


def _spin_requests(model: str, n: int) -> dict:
    """Predict, Classify, Regress and MultiInference requests that loop ``n`` times."""
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, inference_pb2, predict_pb2, regression_pb2

    p = predict_pb2.PredictRequest()
    p.model_spec.name = model
    p.inputs["n"].CopyFrom(tf.make_tensor_proto(n, tf.int64))
    c = classification_pb2.ClassificationRequest()
    c.model_spec.name, c.model_spec.signature_name = model, "classify"
    _spin_examples(c.input, n)
    r = regression_pb2.RegressionRequest()
    r.model_spec.name, r.model_spec.signature_name = model, "regress"
    _spin_examples(r.input, n)
    m = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress", REGRESS), ("classify", CLASSIFY)):
        task = m.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = model, signature, method
    _spin_examples(m.input, n)
    return {"Predict": p, "Classify": c, "Regress": r, "MultiInference": m}


def test_a_run_past_its_timeout_is_cancelled_with_deadline_exceeded_as_in_direct_session(tmp_path):
    """``RunOptions.timeout_in_ms`` (what TF Serving sets from a gRPC deadline): DirectSession
    cancels a run still going at that time and returns DEADLINE_EXCEEDED "Timed out waiting for
    notification", for Predict, Classify, Regress and MultiInference alike. This server took no
    timeout: the run went on however long the model took."""
    from tensorflow_serving.apis import input_pb2

    from serving_host.apis import serialized_examples
    from serving_host.servable import Servable
    from serving_host.status import ServingError

    path = str(tmp_path / "1")
    _save_spinning_model(path)
    servable = Servable.load("m", 1, path)

    def examples(n):
        i = input_pb2.Input()
        _spin_examples(i, n)
        return serialized_examples(i)

    runs = {
        "Predict": lambda n, t: servable.predict("", {"n": np.array(n, np.int64)}, timeout_ms=t)["y"].tolist(),
        "Classify": lambda n, t: servable.classify("classify", examples(n), timeout_ms=t),
        "Regress": lambda n, t: servable.regress("regress", examples(n), timeout_ms=t),
        "MultiInference": lambda n, t: servable.multi_inference(
            [("m", "regress", REGRESS), ("m", "classify", CLASSIFY)], examples(n), timeout_ms=t),
    }
    try:
        assert runs["Predict"](3, 10_000) == 3.0
        assert runs["Regress"](3, 10_000) == [3.0]
        assert runs["Predict"](3, None) == 3.0             # no timeout: the session callable
        for api, run in runs.items():
            start = time.monotonic()
            with pytest.raises(ServingError) as e:
                run(SPIN_FOREVER, 300)
            assert (e.value.code, e.value.message) == ("DEADLINE_EXCEEDED", "Timed out waiting for notification"), api
            assert time.monotonic() - start < 20, api
    finally:
        servable.close()


def test_a_grpc_deadline_ends_the_run_as_tf_serving_ends_it(tmp_path, tfserving_factory):
    """``prediction_service_impl.cc``: Predict, Classify, Regress and MultiInference set the session
    run's timeout from the call's deadline (``DeadlineToTimeoutMillis``), so a model still running at
    the deadline is cancelled: the request is counted DEADLINE_EXCEEDED and its worker is free, and an
    unload (which waits for the requests in flight) goes through. This server ignored the deadline:
    the client gave up but the run went on for as long as the model ran, holding a gRPC worker and the
    version's unload, and was never counted."""
    base = tmp_path / "serving"
    _save_spinning_model(str(base / "slow" / "1"))
    (base / "monitoring.config").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    config = (f'model_config_list {{ config {{ name: "slow" base_path: "{base / "slow"}" '
              'model_platform: "tensorflow" } }\n')
    srv = tfserving_factory(base, config, extra_args=(f"--monitoring_config_file={base / 'monitoring.config'}",))
    srv.wait_for_state("slow", 1, "AVAILABLE")
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(srv.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        quick = _spin_requests("slow", 3)
        assert stub.Predict(quick["Predict"], RPC_TIMEOUT).outputs["y"].float_val == [3.0]
        assert [r.value for r in stub.Regress(quick["Regress"], RPC_TIMEOUT).result.regressions] == [3.0]
        for api, request in _spin_requests("slow", SPIN_FOREVER).items():
            with pytest.raises(grpc.RpcError) as e:
                getattr(stub, api)(request, timeout=1.0)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, api
    count = ":tensorflow:serving:request_count_total"
    deadline = time.monotonic() + 30
    while sample(srv, count, {"model_name": "slow", "status": "DEADLINE_EXCEEDED"}) < 3:   # not MultiInference
        assert time.monotonic() < deadline, "the runs past their deadline were never ended"
        time.sleep(0.2)
    srv.write_config("model_config_list {\n}\n")
    srv.wait_for_state("slow", 1, "END", timeout=30)       # no run is left in flight


def test_a_rest_run_past_rest_api_timeout_in_ms_is_cancelled_with_504_as_in_tf_serving(tmp_path, tfserving_factory):
    """``HttpRestApiHandler`` runs predict, classify and regress with ``RunOptions.timeout_in_ms`` =
    ``--rest_api_timeout_in_ms`` (default 30000): a run still going then is cancelled and answered
    504 ``{"error": "Timed out waiting for notification"}``. This server took the flag and ignored
    it: the request hung for as long as the model ran, holding a REST worker and the version's unload."""
    import requests

    from serving_host.local_server import build_parser

    assert build_parser().parse_args([]).rest_api_timeout_in_ms == 30000
    base = tmp_path / "serving"
    _save_spinning_model(str(base / "slow" / "1"))
    config = (f'model_config_list {{ config {{ name: "slow" base_path: "{base / "slow"}" '
              'model_platform: "tensorflow" } }\n')
    srv = tfserving_factory(base, config, extra_args=("--rest_api_timeout_in_ms=1000",))
    srv.wait_for_state("slow", 1, "AVAILABLE")
    url = f"{srv.rest_url}/v1/models/slow"
    r = requests.post(f"{url}:predict", json={"inputs": {"n": 3}}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"outputs": 3.0})
    for verb, body in (("predict", {"inputs": {"n": SPIN_FOREVER}}),
                       ("classify", {"signature_name": "classify", "examples": [{"n": SPIN_FOREVER}]}),
                       ("regress", {"signature_name": "regress", "examples": [{"n": SPIN_FOREVER}]})):
        r = requests.post(f"{url}:{verb}", json=body, timeout=30)
        assert (r.status_code, r.json()) == (504, {"error": "Timed out waiting for notification"}), verb
    srv.write_config("model_config_list {\n}\n")
    srv.wait_for_state("slow", 1, "END", timeout=30)       # no run is left in flight


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_runs_with_different_timeouts_share_one_copy_of_the_graphs_constants(tmp_path):
    """DirectSession keeps one set of executors per feed and fetch names whatever a run's
    ``RunOptions``, so TF Serving holds a model's constants once however its requests' timeouts
    differ (warmup none, REST ``--rest_api_timeout_in_ms``, each gRPC deadline its own). A session
    callable is made with its timeout: runs with a timeout, and without, each built their own
    executors, each with its own copy of a frozen graph's constants (100 MiB more per copy here)."""
    import tensorflow as tf

    from serving_host.servable import Servable

    path = str(tmp_path / "1")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        weights = tf.constant(np.full(25_000_000, 0.5, np.float32))     # 100 MiB, not folded away
        y = tf.identity(tf.reduce_sum(weights * x[0]) + x, name="y")
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    servable = Servable.load("m", 1, path)
    try:
        one, want = {"x": np.array([1.0], np.float32)}, [pytest.approx(12_500_001.0, rel=1e-3)]
        assert servable.predict("", one)["y"].tolist() == want
        before = _rss_mib()
        for timeout_ms in (30_000, 12_345, None, 9_999):
            assert servable.predict("", one, timeout_ms=timeout_ms)["y"].tolist() == want
        assert _rss_mib() - before < 60, "another copy of the model's constants"
    finally:
        servable.close()
