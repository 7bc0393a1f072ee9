"""Warmup files (``assets.extra/tf_serving_warmup_requests``) on the local server, as TF Serving.

``saved_model_warmup_util.cc``: a TFRecord of PredictionLog replayed ``--num_request_iterations_for_warmup``
times per record before the version is AVAILABLE; more than 1000 records, a record that does not
parse, a file that is not a TFRecord, or a request that fails end the version in END with TF
Serving's message; warmup metrics are recorded when the file was read to its end (or a read error
stopped it). Each case is a model of TF Serving's half_plus_two with its own warmup file, all on one
running server (``--max_num_load_retries=0`` so a failed load ends at once).
"""
from __future__ import annotations

import shutil

import pytest

from tests.helpers import TF_SERVING_TESTDATA

HALF_PLUS_TWO = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
ITERATIONS = 2
METRICS_PATH = "/monitoring/prometheus/metrics"


def predict_log(model="warm", x=2.0, alias="x"):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    req = entry.predict_log.request
    req.model_spec.name = model
    req.inputs[alias].CopyFrom(tf.make_tensor_proto([x], dtype=tf.float32))
    return entry


def _examples(target, x=2.0) -> None:
    target.example_list.examples.add().features.feature["x"].float_list.value.append(x)


def all_kinds_of_logs():
    """One record of each kind TF Serving replays: predict, classify, regress, multi-inference."""
    from tensorflow_serving.apis import prediction_log_pb2

    classify = prediction_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.name = "warm"
    classify.classify_log.request.model_spec.signature_name = "classify_x_to_y"
    _examples(classify.classify_log.request.input)
    regress = prediction_log_pb2.PredictionLog()
    regress.regress_log.request.model_spec.name = "warm"
    regress.regress_log.request.model_spec.signature_name = "regress_x_to_y"
    _examples(regress.regress_log.request.input)
    multi = prediction_log_pb2.PredictionLog()
    task = multi.multi_inference_log.request.tasks.add()
    task.model_spec.name = "warm"
    task.model_spec.signature_name = "regress_x_to_y"
    task.method_name = "tensorflow/serving/regress"
    _examples(multi.multi_inference_log.request.input)
    return [predict_log(), classify, regress, multi]


def write_records(path, records: list[bytes]) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def make_model(root, name: str, warmup=None, raw: bytes | None = None):
    """<root>/<name>/1 = half_plus_two; its warmup file holds ``warmup`` records or ``raw`` bytes."""
    version_dir = root / name / "1"
    shutil.copytree(HALF_PLUS_TWO, version_dir)
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    if raw is not None:
        path.parent.mkdir(parents=True)
        path.write_bytes(raw)
    elif warmup is not None:
        write_records(path, warmup)
    return version_dir, path


# Bytes that are no PredictionLog (0xff starts a tag of wire type 7), most of them not UTF-8
BINARY_RECORD = b"\xff\xc3(\xc3\xa9\n\xe2\x82"


@pytest.fixture(scope="module")
def server(tfserving_session_factory, tmp_path_factory):
    models = tmp_path_factory.mktemp("warmup-models")
    paths = {
        "good": make_model(models, "good", [e.SerializeToString() for e in all_kinds_of_logs()]),
        "none": make_model(models, "none"),
        "too_many": make_model(models, "too_many", [predict_log().SerializeToString()] * 1001),
        "unparseable": make_model(models, "unparseable",
                                  [predict_log().SerializeToString(), b"not a prediction log"]),
        "binary_record": make_model(models, "binary_record", [BINARY_RECORD]),
        "not_tfrecord": make_model(models, "not_tfrecord", raw=b"this is not a TFRecord file, just text\n"),
        "bad_request": make_model(models, "bad_request", [predict_log(alias="nope").SerializeToString()]),
    }
    base = tmp_path_factory.mktemp("warmup-serving")
    monitoring = base / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    config = "model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{models / n}" model_platform: "tensorflow" }}\n'
        for n in paths) + "}\n"
    srv = tfserving_session_factory(base, config, config_poll_seconds=0, extra_args=(
        "--max_num_load_retries=0", f"--num_request_iterations_for_warmup={ITERATIONS}",
        f"--monitoring_config_file={monitoring}"))
    srv.paths = paths
    yield srv
    srv.stop()


def metrics_page(srv) -> str:
    import requests

    r = requests.get(srv.rest_url + METRICS_PATH, timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def test_a_good_file_is_replayed_before_the_version_is_available(server):
    import requests

    server.wait_for_state("good", 1, "AVAILABLE")
    version_dir, path = server.paths["good"]
    log = server.log()
    assert (f"Finished reading warmup data for model at {path}. Number of warmup records read: 4."
            in log), log[-3000:]
    started = log.index(f"Starting to read warmup data for model at {path}")
    assert started < log.index("Successfully loaded servable version {name: good version: 1}")
    page = metrics_page(server)
    assert f':tensorflow:serving:model_warmup_records_read{{model_path="{version_dir}",status="OK"}} 4' in page
    assert f':tensorflow:serving:model_warmup_latency_count{{model_path="{version_dir}",status="OK"}} 1' in page
    # Every record ran ITERATIONS times, under the model name its request names ("warm").
    for api in ("Predict", "Classify", "Regress"):
        assert (f':tensorflow:serving:runtime_latency_count{{model_name="warm",API="{api}",runtime="TF1"}} '
                f"{ITERATIONS}") in page, api
    assert f':tensorflow:serving:request_example_count_total{{model="warm"}} {ITERATIONS}' in page
    r = requests.post(f"{server.rest_url}/v1/models/good:predict", json={"instances": [2.0]}, timeout=10)
    assert r.json() == {"predictions": [3.0]}


def test_no_file_is_fine(server):
    server.wait_for_state("none", 1, "AVAILABLE")
    assert f"No warmup data file found at {server.paths['none'][1]}" in server.log()


def _ended(server, name: str) -> dict:
    st = server.wait_for_state(name, 1, "END")
    return st["status"]


def test_more_than_1000_records_fail_the_load(server):
    version_dir, path = server.paths["too_many"]
    assert _ended(server, "too_many") == {
        "error_code": "INVALID_ARGUMENT",
        "error_message": f"Number of warmup records exceeds the maximum (1000) at {path}"}
    assert f'model_path="{version_dir}"' not in metrics_page(server)  # TF Serving returns before recording


def test_a_record_that_does_not_parse_fails_the_load(server):
    version_dir, path = server.paths["unparseable"]
    assert _ended(server, "unparseable") == {
        "error_code": "INVALID_ARGUMENT",
        "error_message": f"Failed to parse warmup record: not a prediction log from {path}"}
    assert f'model_path="{version_dir}"' not in metrics_page(server)


def test_a_binary_record_that_does_not_parse_is_quoted_as_tf_serving_quotes_it(server):
    """saved_model_warmup_util.cc quotes the record's bytes (``StrCat``) and the status answer is
    written by C++ protobuf's JSON writer, which writes each UTF-8 character as it is and each byte
    sequence that does not decode as one space (the byte that broke a sequence goes with it). This
    server quoted the record decoded with U+FFFD for each bad byte, which TF Serving never writes."""
    import requests

    _, path = server.paths["binary_record"]
    server.wait_for_state("binary_record", 1, "END")
    r = requests.get(f"{server.rest_url}/v1/models/binary_record", timeout=10)
    message = f"Failed to parse warmup record:   \u00e9\n  from {path}"
    assert r.json()["model_version_status"][0]["status"] == {"error_code": "INVALID_ARGUMENT",
                                                              "error_message": message}
    assert f'"error_message": "Failed to parse warmup record:   \u00e9\\n  from {path}"'.encode() in r.content


def test_a_file_that_is_not_a_tfrecord_fails_the_load(server):
    version_dir, _ = server.paths["not_tfrecord"]
    status = _ended(server, "not_tfrecord")
    assert status["error_code"] == "DATA_LOSS"
    assert status["error_message"].startswith("corrupted record at 0")
    assert status["error_message"].endswith(". Please verify your warmup data is in TFRecord format.")
    page = metrics_page(server)
    assert (f':tensorflow:serving:model_warmup_records_read{{model_path="{version_dir}",'
            'status="DATA_LOSS: corrupted record at 0') in page


def test_a_failing_warmup_request_fails_the_load(server):
    assert _ended(server, "bad_request") == {
        "error_code": "INVALID_ARGUMENT",
        "error_message": "Signature input alias: x(feed name: x:0) not found in request and no default value "
                         "provided. Inputs expected to be in the request {nope}, or default input alias set: "}


def test_warmup_off_loads_without_reading_the_file(tmp_path):
    """``enable_model_warmup=False`` (``--enable_model_warmup=false``): the file is not read."""
    from serving_host import config as cfg
    from serving_host.manager import Manager

    make_model(tmp_path, "m", [b"not a prediction log"])
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" model_platform: "tensorflow" }} }}')
    for enabled, state in ((False, "AVAILABLE"), (True, "END")):
        manager = Manager(max_num_load_retries=0, file_system_poll_wait_seconds=0, enable_model_warmup=enabled)
        try:
            try:
                manager.reload_config(cfg.to_server_config(cfg.read_file(str(tmp_path / "models.config"))),
                                      wait_timeout=60)
            except Exception:  # noqa: BLE001 - the failing load is reported by the status below
                pass
            ((version, st),) = manager.model_status("m")
            assert (version, st.state) == (1, state), st
        finally:
            manager.stop()


def test_reload_config_reports_the_increase_of_the_metrics_asked_for(server, tmp_path_factory):
    """``ReloadConfigRequest.metric_names`` (model_service_impl.cc ``GetMetrics`` /
    ``RecordMetricsIncrease``): one ``metric`` per name asked for (repeats once), the first point
    of that metric (points in label order, as the Prometheus page lists them) after the reload
    minus the first point before; 0 for a histogram or a metric that does not exist. The new
    model's path sorts before every other, so its 3 warmup records become the first point."""
    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    first = tmp_path_factory.mktemp("aaa-first")
    make_model(first, "reloaded", [predict_log(model="reloaded").SerializeToString()] * 3)
    models = server.paths["good"][0].parents[1]
    text = "model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{models / n}" model_platform: "tensorflow" }}\n'
        for n in server.paths) + f'  config {{ name: "reloaded" base_path: "{first / "reloaded"}" ' \
                                 'model_platform: "tensorflow" }\n}\n'
    request = model_management_pb2.ReloadConfigRequest(
        config=text_format.Parse(text, model_server_config_pb2.ModelServerConfig()),
        metric_names=["/tensorflow/serving/model_warmup_records_read", "/no/such/metric",
                      "/tensorflow/serving/model_warmup_latency",
                      "/tensorflow/serving/model_warmup_records_read"])

    def first_point() -> tuple[str, int]:
        line = next(ln for ln in metrics_page(server).splitlines()
                    if ln.startswith(":tensorflow:serving:model_warmup_records_read{"))
        labels, value = line.rsplit(" ", 1)
        return labels, int(value)

    before = first_point()
    with grpc.insecure_channel(server.grpc_address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=120)
    after = first_point()
    assert response.status.error_code == 0, response.status.error_message
    assert str(first / "reloaded" / "1") in after[0] and after[1] == 3 and before[0] != after[0]
    assert [(m.name, m.int64_value_increase) for m in response.metric] == [
        ("/tensorflow/serving/model_warmup_records_read", after[1] - before[1]), ("/no/such/metric", 0),
        ("/tensorflow/serving/model_warmup_latency", 0)]     # a histogram has no int64 value


def test_a_warmup_file_that_cannot_be_opened_fails_the_load_without_metrics(tmp_path, monkeypatch):
    """saved_model_warmup_util.cc: ``NewRandomAccessFile`` failing returns its error
    (TF_RETURN_IF_ERROR) before any warmup metric is recorded; only a read error after the open
    is recorded. A UNIX socket at the file's path exists (FilesExist) but does not open (ENXIO,
    NOT_FOUND as TensorFlow maps it). The local server opened the file lazily and recorded
    ``model_warmup_records_read`` / ``model_warmup_latency`` with that status."""
    import socket

    from serving_host import metrics, warmup
    from serving_host.status import ServingError

    version_dir = tmp_path / "m" / "1"
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True)
    # bound by its relative name: an xdist worker's tmp_path is longer than a socket address takes
    with monkeypatch.context() as mp, socket.socket(socket.AF_UNIX) as s:
        mp.chdir(path.parent)
        s.bind(path.name)
    with pytest.raises(ServingError) as e:
        warmup.run(None, str(version_dir), model_name="m", version=1)
    assert (e.value.code, e.value.message) == ("NOT_FOUND", f"{path}; No such device or address")
    assert f'model_path="{version_dir}"' not in metrics.render()


def test_the_warmup_options_are_logged_as_tensorflow_model_server_logs_them(tmp_path, caplog):
    """``RunSavedModelWarmupUntracked`` logs ``model_warmup_options.DebugString()``; the
    tensorflow_model_server binary never enables session metadata, so the options it logs carry
    ``num_request_iterations`` (only when the flag is > 0, server.cc) and no ``model_name`` /
    ``model_version`` (saved_model_bundle_source_adapter.cc sets them only with session metadata).
    The local server added ``model_name: "m" model_version: 1`` to every such line."""
    import logging

    from serving_host import warmup
    from serving_host.servable import Servable

    version_dir, path = make_model(tmp_path, "m", [predict_log().SerializeToString()])
    servable = Servable.load("m", 1, str(version_dir))
    try:
        caplog.set_level(logging.INFO, logger="serving_host")
        for flag, options in ((0, ""), (3, "num_request_iterations { value: 3 }")):
            caplog.clear()
            warmup.run(servable, str(version_dir), model_name="m", version=1,
                       num_request_iterations_for_warmup=flag)
            starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Starting to read")]
            assert starts == [f"Starting to read warmup data for model at {path} with model-warmup-options "
                              f"{options}"], starts
    finally:
        servable.close()
