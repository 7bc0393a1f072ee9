"""Errors with TensorFlow Serving's status codes, so REST and gRPC answers match the real server.

TF Serving turns a ``tensorflow::Status`` into an HTTP status (``http_server.cc``) and a gRPC
code; keeping the same code names here keeps both mappings in one place.
"""
from __future__ import annotations

# tensorflow/core/protobuf/error_codes.proto (tensorflow.error.Code) names and numbers.
CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

# ToHTTPStatusCode() in tensorflow_serving/model_servers/http_server.cc.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A failed operation: a TF status code name and the message TF Serving would give."""

    def __init__(self, code: str, message: str):
        if code not in CODES or code == "OK":
            raise ValueError(f"not an error code: {code}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __str__(self) -> str:  # absl::Status::ToString() style
        return f"{self.code}: {self.message}"


def invalid_argument(msg: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", msg)


def not_found(msg: str) -> ServingError:
    return ServingError("NOT_FOUND", msg)


def failed_precondition(msg: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", msg)


def _tf_error(exc: BaseException) -> BaseException | None:
    """The TensorFlow error (``tf.errors.OpError``: it carries its TF code number) that ``exc`` is,
    or that it re-raises under a Python type with the same text: ``import_graph_def`` raises
    ``ValueError(str(e))`` while handling the C++ INVALID_ARGUMENT of a graph that does not build,
    which TF Serving's ``session->Create`` returns as it is."""
    if isinstance(getattr(exc, "error_code", None), int):
        return exc
    inner = exc.__cause__ or exc.__context__
    if isinstance(getattr(inner, "error_code", None), int) and str(inner) == str(exc):
        return inner
    return None


def from_exception(exc: BaseException) -> ServingError:
    """Map an exception raised while loading or running a model to a status."""
    if isinstance(exc, ServingError):
        return exc
    tf_error = _tf_error(exc)
    if tf_error is not None:
        code = tf_error.error_code
        name = next((n for n, v in CODES.items() if v == code and n != "OK"), "UNKNOWN")
        message = getattr(tf_error, "message", None) or str(tf_error)
        return ServingError(name, message)
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "does not exist" in text or "could not be found" in text:
        return ServingError("NOT_FOUND", text)
    if isinstance(exc, OSError):
        return ServingError("UNKNOWN", text)
    return ServingError("UNKNOWN", f"{exc.__class__.__name__}: {text}")
