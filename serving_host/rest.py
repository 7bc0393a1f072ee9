"""TF Serving's REST API (``api_rest.md``) over a threaded HTTP/1.1 server with keep-alive.

``RestApi`` maps (method, path, body) to (HTTP status, JSON text) exactly as
``HttpRestApiHandler`` does: the same path patterns, the same ``{ "error": ... }`` bodies and
status codes, ``Content-Type: application/json``; paths outside ``/v1/`` get libevent's 404.
``serve`` wraps it in a ``ThreadingHTTPServer`` (one thread per connection, keep-alive,
``TCP_NODELAY``, one write per response) so concurrent clients do not wait on each other.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from serving_host import json_codec as jc
from serving_host.manager import Manager
from serving_host.status import ServingError, invalid_argument

log = logging.getLogger("serving_host")

PATH_RE = re.compile(r"/v1/.*", re.I | re.S)
PREDICTION_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
MODEL_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
INT64_MAX = 2**63 - 1

# libevent's evhttp_send_error() page, which TF Serving sends for paths outside /v1/.
NOT_FOUND_PAGE = ("<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                  "</BODY></HTML>\n")


class RestApi:
    """Request processing, independent of the HTTP transport."""

    def __init__(self, manager: Manager):
        self.manager = manager

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        try:
            return 200, self._process(method, path, body)
        except ServingError as exc:
            return exc.http_status, jc.error_body(exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, never a hang
            log.exception("internal error processing %s %s", method, path)
            return 500, jc.error_body(f"Internal: {exc.__class__.__name__}: {exc}")

    def _process(self, method: str, path: str, body: bytes) -> str:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = PREDICTION_RE.fullmatch(path)
        elif method == "GET":
            m = MODEL_STATUS_RE.fullmatch(path)
        else:
            m = None
        if m is None:
            raise malformed
        name = unquote(m.group(1)) if m.group(1) else ""
        version = None
        if m.group(2):
            version = int(m.group(2))
            if version > INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {m.group(2)} to numeric.")
        label = unquote(m.group(3)) if m.group(3) else None
        if method == "POST":
            kind = m.group(4)
            if kind == "predict":
                return self.predict(name, version, label, body)
            if kind == "classify":
                return self.classify(name, version, label, body)
            if kind == "regress":
                return self.regress(name, version, label, body)
            raise malformed
        if not name:
            raise invalid_argument("Missing model name in request.")
        if m.group(4) == "metadata":
            with self.manager.handle(name, version, label) as servable:
                return servable.metadata_json()
        return self.status(name, version)

    def predict(self, name, version, label, body: bytes) -> str:
        doc = jc.parse_json(body)
        sig_name = jc.signature_name(doc)
        with self.manager.handle(name, version, label) as servable:
            sig = servable.signature(sig_name)
            if sig is None:
                raise invalid_argument(f'Serving signature name: "{sig_name or "serving_default"}" '
                                       f"not found in signature def")
            tensors, fmt = jc.predict_inputs(doc, {k: v.dtype for k, v in sig.inputs.items()})
            outputs = servable.predict(sig_name, tensors)
        return jc.predict_response(outputs, fmt)

    def classify(self, name, version, label, body: bytes) -> str:
        doc = jc.parse_json(body)
        sig_name = jc.signature_name(doc)
        examples = jc.serialized_examples(doc)
        with self.manager.handle(name, version, label) as servable:
            results = servable.classify(sig_name, examples)
        return jc.classify_response(results)

    def regress(self, name, version, label, body: bytes) -> str:
        doc = jc.parse_json(body)
        sig_name = jc.signature_name(doc)
        examples = jc.serialized_examples(doc)
        with self.manager.handle(name, version, label) as servable:
            values = servable.regress(sig_name, examples)
        return jc.regress_response(values)

    def status(self, name: str, version: int | None) -> str:
        """``GetModelStatus``; like TF Serving, a label in the path does not narrow the answer."""
        from google.protobuf import json_format

        response = status_response(self.manager, name, version)
        return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True, indent=1)


def status_response(manager: Manager, name: str, version: int | None):
    """A ``GetModelStatusResponse`` proto (shared by REST and gRPC)."""
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for v, st in manager.model_status(name, version):
        mvs = response.model_version_status.add()
        mvs.version = v
        mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
        mvs.status.error_code = st.error_code_number
        mvs.status.error_message = st.error_message
    return response


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfserving-local"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _reply(self, status: int, content_type: str, text: str, *, head: bool = False) -> None:
        body = text.encode("utf-8")
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}"]
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)
        self.wfile.write(data)
        self.wfile.flush()

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._reply(400, "text/html", "<HTML><HEAD>\n<TITLE>400 Bad Request</TITLE>\n</HEAD>"
                                          "<BODY>\n<H1>Bad Request</H1>\n</BODY></HTML>\n")
            return
        path = urlsplit(self.path).path
        if not PATH_RE.fullmatch(path):
            self._reply(404, "text/html", NOT_FOUND_PAGE, head=self.command == "HEAD")
            return
        status, text = self.server.api.handle(self.command, path, body)  # type: ignore[attr-defined]
        self._reply(status, "application/json", text, head=self.command == "HEAD")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _dispatch


class RestServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: RestApi):
        self.api = api
        super().__init__(address, _Handler)


def serve(api: RestApi, host: str, port: int) -> tuple[RestServer, threading.Thread]:
    """Start serving in a background thread; ``server.shutdown()`` stops it."""
    server = RestServer((host, port), api)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="rest", daemon=True)
    thread.start()
    return server, thread
