"""TF Serving's REST API (``api_rest.md``): a request's method, path and body to an HTTP status and JSON.

``RestApi`` maps (method, path, body) to (HTTP status, JSON text) exactly as
``HttpRestApiHandler`` does: the same path patterns, the same ``{ "error": ... }`` bodies and
status codes. Every request under ``/v1/`` is counted in the metrics as ``http_server.cc`` counts it.
It knows nothing of sockets: ``http_server`` is the transport that calls it.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote

from serving_host import metrics
from serving_host.json_parse import parse_json
from serving_host.json_request import predict_inputs, serialized_examples, signature_name
from serving_host.json_response import classify_body, error_body, predict_body, regress_response
from serving_host.json_text import message_json, status_text, truncate
from serving_host.manager import Manager
from serving_host.status import ServingError, invalid_argument
from serving_host.tf_dtypes import dtype_name

log = logging.getLogger("serving_host")

# http_rest_api_util.cc:31-34; RE2's \d is [0-9] (Python's would take any Unicode digit).
PREDICTION_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
MODEL_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
INT64_MAX = 2**63 - 1


class BodyTooLarge(Exception):
    """The request body is over ``max_body_bytes``."""


class BodyUnreadable(Exception):
    """The body could not be read (malformed chunking, the client went away, a timeout)."""


@dataclass(frozen=True)
class Route:
    """What ``ParseModelInfo`` takes from a request line (``error`` if it cannot be served)."""
    method: str
    kind: str = ""          # predict / classify / regress (POST), status / metadata (GET)
    name: str = ""
    version: int | None = None
    label: str | None = None
    error: ServingError | None = None
    empty_body: bool = False  # the error is answered with no body at all (see route())

    @property
    def api(self) -> str:
        """The ``API`` label of request_latency: the POST verb, "" for GET (as http_server.cc)."""
        return self.kind if self.method == "POST" else ""


def route(method: str, path: str) -> Route:
    """Parse a ``/v1/`` path; never raises (a bad request carries its error)."""
    malformed = invalid_argument(f"Malformed request: {method} {truncate(path)}")
    if method == "POST":
        m = PREDICTION_RE.fullmatch(path)
    elif method == "GET":
        m = MODEL_STATUS_RE.fullmatch(path)
    else:
        m = None
    if m is None:
        return Route(method, error=malformed)
    name = unquote(m.group(1)) if m.group(1) else ""
    if method == "POST":
        kind = m.group(4)  # as matched: TF Serving's (?i) path takes ":PREDICT", its dispatch does not
    else:
        kind = "metadata" if m.group(4) == "metadata" else "status"
    label = unquote(m.group(3)) if m.group(3) else None
    version = None
    if m.group(2):
        version = int(m.group(2))
        if version > INT64_MAX:
            # ParseModelInfo (http_rest_api_util.cc:115-120) fails and ProcessRequest returns at
            # TF_RETURN_IF_ERROR (http_rest_api_handler.cc:80-82), before MakeJsonFromStatus
            # (:107): HTTP 400, Content-Type application/json (AddHeaders, :72), EMPTY body. It
            # runs before the dispatch, so a ":PREDICT" path with such a version is answered so too.
            return Route(method, kind, name, error=invalid_argument(
                f"Failed to convert version: {m.group(2)} to numeric."), empty_body=True)
    if method == "POST" and kind not in ("predict", "classify", "regress"):
        return Route(method, kind, name, error=malformed)
    if method == "GET" and not name:
        return Route(method, kind, name, version, label,
                     error=invalid_argument("Missing model name in request."))
    return Route(method, kind, name, version, label)


REST_TIMEOUT_MS = 30_000      # --rest_api_timeout_in_ms's default (server.h http_timeout_in_ms)


class RestApi:
    """Request processing, independent of the HTTP transport. ``timeout_in_ms`` > 0 is every
    predict/classify/regress run's ``RunOptions.timeout_in_ms`` (``HttpRestApiHandler``'s
    ``run_options_``): a run still going then is cancelled, 504 "Timed out waiting for notification"."""

    def __init__(self, manager: Manager, timeout_in_ms: int = REST_TIMEOUT_MS):
        self.manager = manager
        self.timeout_ms = timeout_in_ms if timeout_in_ms > 0 else None

    def handle(self, method: str, path: str, body) -> tuple[int, str | bytes]:
        """Answer one request under ``/v1/`` and count it (request_count, request_latency).

        ``body`` is the bytes or a callable that reads them; it is called only once the model
        version is resolved, so a body sent to an unknown model is never read. Errors of the
        body read itself (``BodyTooLarge``, ``OSError``, ``ValueError``) propagate to the transport.
        """
        start = time.monotonic()
        r = route(method, path)
        code = "OK"
        try:
            if r.error is not None:
                raise r.error
            if r.method == "POST":
                with self.manager.handle(r.name, r.version, r.label):
                    pass  # NOT_FOUND etc. before a byte of the body is read
                arriving, reader = time.monotonic(), body
                body = _read(body)
                # TF Serving's handler runs once libevent holds the whole request: a client
                # slow to send its body is not server latency (evhttp_server.cc); uncompressing a
                # gzip body is (ReadRequestBytes runs inside ProcessRequest's timing)
                arrived = getattr(getattr(reader, "__self__", None), "arrived", None)
                start += (arrived or time.monotonic()) - arriving
            status, text = 200, self._process(r, body)
        except ServingError as exc:
            code = exc.code
            # Every other error: MakeJsonFromStatus (json_tensor.cc:1129-1139), the message whole.
            status = exc.http_status
            text = "" if r.error is exc and r.empty_body else error_body(exc.message)
        except RecursionError:
            code = "INVALID_ARGUMENT"
            status, text = 400, error_body("JSON Parse error: Terminate parsing due to Handler error.")
        except (BodyTooLarge, BodyUnreadable):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, never a hang
            log.exception("internal error processing %s %s", method, truncate(path))
            code = "INTERNAL"
            status, text = 500, error_body(truncate(f"Internal: {exc.__class__.__name__}: {exc}", 4096))
        metrics.record_request(r.name, r.api, "REST", code, time.monotonic() - start)
        return status, text

    def _process(self, r: Route, body) -> str | bytes:
        if r.kind == "predict":
            return self.predict(r.name, r.version, r.label, body)
        if r.kind == "classify":
            return self.classify(r.name, r.version, r.label, body)
        if r.kind == "regress":
            return self.regress(r.name, r.version, r.label, body)
        if r.kind == "metadata":
            with self.manager.handle(r.name, r.version, r.label) as servable:
                return servable.metadata_json()
        return self.status(r.name, r.version)

    def predict(self, name, version, label, body: bytes) -> bytes:
        doc = parse_json(body)
        sig_name = signature_name(doc)
        with self.manager.handle(name, version, label) as servable:
            sig = servable.signature(sig_name)
            if sig is None:
                raise invalid_argument(f'Serving signature name: "{sig_name or "serving_default"}" '
                                       f"not found in signature def")
            tensors, fmt = predict_inputs(doc, {k: v.dtype for k, v in sig.inputs.items()})
            outputs = servable.predict(sig_name, tensors, timeout_ms=self.timeout_ms)
            types = {a: dtype_name(servable.tensor_dtype(sig.outputs[a].name) or 0) for a in outputs}
        return predict_body(outputs, fmt, types)

    def classify(self, name, version, label, body: bytes) -> bytes:
        return classify_body(self._run_examples(name, version, label, body, "classify"))

    def regress(self, name, version, label, body: bytes) -> str:
        return regress_response(self._run_examples(name, version, label, body, "regress"))

    def _run_examples(self, name, version, label, body: bytes, api: str):
        """The body's examples through the servable's ``classify`` or ``regress`` (``api``)."""
        doc = parse_json(body)
        sig_name = signature_name(doc)
        examples = serialized_examples(doc)
        with self.manager.handle(name, version, label) as servable:
            return getattr(servable, api)(sig_name, examples, timeout_ms=self.timeout_ms)

    def status(self, name: str, version: int | None) -> str:
        """``GetModelStatus``; like TF Serving, a label in the path does not narrow the answer."""
        response = status_response(self.manager, name, version)
        return message_json(response, preserving_proto_field_name=True,
                            always_print_fields_with_no_presence=True, indent=1)


def _read(body) -> bytes:
    if not callable(body):
        return body
    try:
        return body()
    except (OSError, ValueError) as exc:
        raise BodyUnreadable(str(exc)) from exc


def status_response(manager: Manager, name: str, version: int | None):
    """A ``GetModelStatusResponse`` proto (shared by REST and gRPC)."""
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for v, st in manager.model_status(name, version):
        mvs = response.model_version_status.add()
        mvs.version = v
        mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
        mvs.status.error_code = st.error_code_number
        mvs.status.error_message = status_text(st.error_message)    # a file name's bytes included
    return response
