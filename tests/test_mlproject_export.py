"""TF-Serving export, normalized signature and golden set (real TensorFlow, no MLflow)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlproject import export
from mlproject.datasets import load_partition

# ---------- plain functions ----------

def test_normalize_signature_accepts_tf_serving_metadata_json():
    # Shape of TF Serving's GET /v1/models/<m>/metadata -> metadata.signature_def.signature_def
    metadata = {
        "serving_default": {
            "inputs": {"image": {"dtype": "DT_FLOAT", "name": "serving_default_image:0",
                                 "tensor_shape": {"dim": [{"size": "-1"}, {"size": "8"}, {"size": "8"},
                                                          {"size": "1"}], "unknown_rank": False}}},
            "outputs": {"output_0": {"dtype": "DT_FLOAT", "name": "StatefulPartitionedCall:0",
                                     "tensor_shape": {"dim": [{"size": "-1"}, {"size": "10"}]}}},
            "method_name": "tensorflow/serving/predict"},
        "__saved_model_init_op": {"outputs": {}},
    }
    assert export.normalize_signature(metadata) == {"serving_default": {
        "method_name": "tensorflow/serving/predict",
        "inputs": {"image": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
        "outputs": {"output_0": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}
    camel = {"serving_default": {"methodName": "m", "inputs": {"x": {"dtype": "DT_FLOAT",
             "tensorShape": {"unknownRank": True}}}, "outputs": {}}}
    assert export.normalize_signature(camel)["serving_default"]["inputs"]["x"]["shape"] is None


def test_request_and_response_are_tf_serving_row_format_with_float32_values():
    images = np.array([[[[0.1]], [[1 / 3]]]], dtype=np.float32)   # (1, 2, 1, 1)
    req = export.predict_request(images)
    assert req == {"signature_name": "serving_default", "instances": [[[[0.1]], [[0.33333334]]]]}
    back = np.asarray(json.loads(json.dumps(req))["instances"], dtype=np.float32)
    np.testing.assert_array_equal(back, images)          # exact float32 round trip
    one = export.predict_response({"output_0": np.array([[0.25, 0.75]], np.float32)})
    assert one == {"predictions": [[0.25, 0.75]]}
    two = export.predict_response({"b": np.array([1.0, 2.0]), "a": np.array([3.0, 4.0])})
    assert two == {"predictions": [{"a": 3.0, "b": 1.0}, {"a": 4.0, "b": 2.0}]}


def test_the_golden_response_keeps_int64_bool_and_float64_outputs_as_tf_serving_answers_them():
    """(found by review) every output was cast to float32 for the golden response: an int64 past
    2**24 was recorded as another number (16777225 as 16777224.0), a boolean as 1.0 (TF Serving
    answers ``true``, "not a number" to the smoke test) and a float64 lost its digits past
    float32's (3687.6065162988207 as 3687.6064, 1.2e-4 off): the smoke test failed the very
    SavedModel that was exported. The served text below is the local server's answer for it."""
    from serving_sync.smoke import compare_outputs

    outputs = {"id": np.array([16777226, 16777225], np.int64), "confident": np.array([True, False]),
               "amount": np.array([3687.6065162988207, 1537.7124379837694], np.float64),
               "scores": np.array([[0.25, 1 / 3], [0.5, 0.1]], np.float32)}
    golden = json.loads(json.dumps(export.predict_response(outputs)))      # as logged and read back
    assert golden["predictions"][1] == {"amount": 1537.7124379837694, "confident": False, "id": 16777225,
                                        "scores": [0.5, 0.1]}
    served = json.loads('{"predictions": [{"amount": 3687.6065162988207, "confident": true, "id": 16777226, '
                        '"scores": [0.25, 0.333333343]}, {"amount": 1537.7124379837694, "confident": false, '
                        '"id": 16777225, "scores": [0.5, 0.100000001]}]}')
    assert compare_outputs(golden, served, 1e-4) == ([], pytest.approx(0.0, abs=1e-8))
    one = export.predict_response({"id": np.array([16777217], np.int64)})
    assert one == {"predictions": [16777217]} and type(one["predictions"][0]) is int


# ---------- real SavedModel ----------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mlproject.model import build_model, seed_everything

    seed_everything(7)
    model = build_model((8, 8, 1), 10, 0.01)
    part = load_partition("digits")
    model.fit(part.base.images[:200], part.base.labels[:200], epochs=1, verbose=0)
    path = export.export_saved_model(model, tmp_path_factory.mktemp("export") / "tfserving")
    return model, path


def test_saved_model_serving_default_equals_keras_predictions(exported):
    from mlproject.model import predict

    model, path = exported
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    images = load_partition("digits").heldout.images[:64]
    (served,) = export.run_saved_model(path, images).values()
    np.testing.assert_allclose(served, predict(model, images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)   # probabilities


def test_golden_set_matches_what_the_saved_model_returns(exported):
    _, path = exported
    images = load_partition("digits").heldout.images[:8]
    golden = json.loads(json.dumps(export.golden_set(path, images)))   # as stored in MLflow
    assert golden["signature.json"] == {"serving_default": {
        "method_name": "tensorflow/serving/predict",
        "inputs": {"image": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
        "outputs": {"output_0": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}
    sent = np.asarray(golden["request.json"]["instances"], dtype=np.float32)
    np.testing.assert_array_equal(sent, images)
    (again,) = export.run_saved_model(path, sent).values()
    np.testing.assert_allclose(np.asarray(golden["response.json"]["predictions"]), again, rtol=1e-6, atol=1e-7)
    assert len(golden["response.json"]["predictions"]) == 8


def _warmup_records(path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for raw in tf.data.TFRecordDataset(str(path / export.WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        out.append(log)
    return out


def test_warmup_file_is_in_the_savedmodel_parses_and_replays_the_golden_request(exported, tmp_path):
    import shutil

    import tensorflow as tf

    from serving_sync import manifest as mf

    _, original = exported
    path = tmp_path / "tfserving"
    shutil.copytree(original, path)
    images = load_partition("digits").heldout.images[:8]
    golden = export.golden_set(path, images)
    signature_before = export.signature_defs(path)
    written = export.write_warmup_requests(path, golden["request.json"])
    assert written == path / "assets.extra" / "tf_serving_warmup_requests" and written.is_file()

    logs = _warmup_records(path)
    assert len(logs) == 2          # one record per shape: the golden batch, then one instance
    assert all(lg.WhichOneof("log_type") == "predict_log" for lg in logs)
    req = logs[0].predict_log.request
    assert req.model_spec.signature_name == "serving_default" and list(req.inputs) == ["image"]
    batch = tf.make_ndarray(req.inputs["image"])
    np.testing.assert_array_equal(batch, np.asarray(golden["request.json"]["instances"], np.float32))
    single = tf.make_ndarray(logs[1].predict_log.request.inputs["image"])
    np.testing.assert_array_equal(single, batch[:1])
    # what the warmup sends, the SavedModel answers as the golden set says
    (out,) = export.run_saved_model(path, batch).values()
    np.testing.assert_allclose(np.asarray(golden["response.json"]["predictions"]), out, rtol=1e-6, atol=1e-7)
    # golden set, signature and manifest still agree: the file is one more file of the version
    assert export.signature_defs(path) == signature_before
    assert json.loads(json.dumps(export.golden_set(path, images))) == json.loads(json.dumps(golden))
    assert "assets.extra/tf_serving_warmup_requests" in mf.build(path).by_path()
    assert mf.build(path).completion_file == "saved_model.pb"


def test_warmup_has_one_record_per_request_shape_whatever_the_golden_size():
    """TF Serving runs every record at every load: a repeated shape would only slow each load."""
    from tensorflow_serving.apis import prediction_log_pb2

    def shapes(logs):
        out = []
        for raw in logs:
            lg = prediction_log_pb2.PredictionLog.FromString(raw)
            out.append(tuple(d.size for d in lg.predict_log.request.inputs["x"].tensor_shape.dim))
        return out

    request = {"signature_name": "serving_default", "instances": np.zeros((1500, 2), np.float32).tolist()}
    assert shapes(export.warmup_logs(request, "x")) == [(1500, 2), (1, 2)]
    one = {"signature_name": "serving_default", "instances": [[1.0, 2.0]]}
    assert shapes(export.warmup_logs(one, "x")) == [(1, 2)]
    assert len(export.warmup_logs(request, "x", max_records=1)) == 1 <= export.MAX_WARMUP_RECORDS


def test_warmup_records_carry_the_requests_signature_and_its_float32_values():
    """Found by hand mutation (2026-12-05, fifth stop): the shapes alone were checked, so records
    of float64 bytes (which TF Serving cannot read as DT_FLOAT) or of another signature passed."""
    from tensorflow_serving.apis import prediction_log_pb2

    values = [[0.1, 0.7], [1.0, 0.25]]
    logs = export.warmup_logs({"signature_name": "scores", "instances": values}, "x")
    first = prediction_log_pb2.PredictionLog.FromString(logs[0]).predict_log.request
    assert first.model_spec.signature_name == "scores"
    np.testing.assert_array_equal(np.frombuffer(first.inputs["x"].tensor_content, "<f4").reshape(2, 2),
                                  np.asarray(values, np.float32))
