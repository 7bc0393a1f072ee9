"""Warmup: replay ``<version>/assets.extra/tf_serving_warmup_requests`` before a version serves.

TF Serving's ``saved_model_warmup.cc`` and ``saved_model_warmup_util.cc``: the file is a TFRecord
of ``PredictionLog``; each record's request (predict, classify, regress or multi-inference) runs
``--num_request_iterations_for_warmup`` times through the same code as a live request
(``serving_host.apis``). No file is fine. A record that does not parse, more than 1000 records,
or a request that fails fails the load with TF Serving's message. The warmup metrics
(latency and records read, by model path and status) are recorded when the file was read to
its end or a read error stopped it, as TF Serving records them; the early returns (a file that
cannot be opened among them) record nothing.
"""
from __future__ import annotations

import logging
import os
import time

from serving_host import apis, metrics
from serving_host.json_text import protobuf_utf8
from serving_host.servable import Servable
from serving_host.status import ServingError, from_exception, invalid_argument

log = logging.getLogger("serving_host")

ASSETS_EXTRA = "assets.extra"
REQUESTS_FILE = "tf_serving_warmup_requests"
MAX_NUM_RECORDS = 1000


def requests_path(export_dir: str) -> str:
    return os.path.join(export_dir, ASSETS_EXTRA, REQUESTS_FILE)


def iterations(num_request_iterations_for_warmup: int) -> int:
    """``server.cc``: the flag is used only when > 0; otherwise each record runs once."""
    return num_request_iterations_for_warmup if num_request_iterations_for_warmup > 0 else 1


def options_text(num_request_iterations_for_warmup: int) -> str:
    """``ModelWarmupOptions::DebugString`` as TF Serving logs it (one line here): the iterations
    when the flag is > 0 (``server.cc``), else nothing. ``tensorflow_model_server`` never turns
    session metadata on, so its adapter does not set ``model_name`` / ``model_version`` in the
    options it logs (``saved_model_bundle_source_adapter.cc`` sets them only with it)."""
    if num_request_iterations_for_warmup > 0:
        return f"num_request_iterations {{ value: {num_request_iterations_for_warmup} }}"
    return ""


def replay(servable: Servable, record) -> None:
    """``RunWarmupRequest``: one PredictionLog's request, response discarded."""
    kind = record.WhichOneof("log_type")
    if kind == "regress_log":
        apis.regress(servable, record.regress_log.request, None)
    elif kind == "classify_log":
        apis.classify(servable, record.classify_log.request, None)
    elif kind == "predict_log":
        apis.predict(servable, record.predict_log.request, None)
    elif kind == "multi_inference_log":
        apis.multi_inference(servable, record.multi_inference_log.request, None)
    elif kind is not None:
        number = record.DESCRIPTOR.fields_by_name[kind].number
        raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {number}")


def _records(path: str):
    """An iterator over the file's records; a bad frame is DATA_LOSS, as ``SequentialRecordReader``
    says. The file is opened here, at once (TensorFlow's ``RecordIterator`` opens it when made),
    so an open error is raised by this call, not by the first record.

    TensorFlow's record reader (``tf.io``) rather than ``tf.data``, whose errors carry op names.
    """
    import tensorflow as tf

    return tf.compat.v1.io.tf_record_iterator(path)


def run(servable: Servable, export_dir: str, *, model_name: str, version: int,
        num_request_iterations_for_warmup: int = 0) -> None:
    """``RunSavedModelWarmup``: raise ServingError (the load fails) or return when warm.
    ``model_name`` / ``version`` name the servable, as the manager knows it; TF Serving's
    binary leaves them out of the warmup options it logs (``options_text``)."""
    from tensorflow_serving.apis import prediction_log_pb2

    start = time.monotonic()
    path = requests_path(export_dir)
    if not os.path.exists(path):
        log.info("No warmup data file found at %s", path)
        return
    n_iter = iterations(num_request_iterations_for_warmup)
    log.info("Starting to read warmup data for model at %s with model-warmup-options %s", path,
             options_text(num_request_iterations_for_warmup))
    try:
        records = _records(path)
    except Exception as exc:  # noqa: BLE001 - NewRandomAccessFile's error: returned before any metric
        raise from_exception(exc) from None
    count = 0
    status: ServingError | None = None
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - a read error ends the replay with its status
            status = from_exception(exc)
            break
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(record)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError
            # StrCat of the record's bytes: what TF Serving's status answer shows of them
            raise invalid_argument(f"Failed to parse warmup record: {protobuf_utf8(record)} from {path}") from None
        for _ in range(n_iter):
            replay(servable, entry)
        count += 1
        if count > MAX_NUM_RECORDS:
            raise invalid_argument(f"Number of warmup records exceeds the maximum ({MAX_NUM_RECORDS}) "
                                   f"at {path}")
    seconds = time.monotonic() - start
    metrics.record_warmup(export_dir, "OK" if status is None else str(status), seconds, count)
    if status is not None and status.code == "DATA_LOSS":
        raise ServingError("DATA_LOSS", f"{status.message}. Please verify your warmup data is in "
                                        "TFRecord format.")
    if status is not None:
        raise status
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
             "Elapsed time (microseconds): %d.", path, count, int(seconds * 1e6))
