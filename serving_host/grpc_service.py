"""gRPC on ``--port``: ``tensorflow.serving.ModelService`` and ``PredictionService``.

PredictionService (``prediction_service_impl.cc``): Predict, Classify, Regress, MultiInference
and GetModelMetadata resolve the servable like ``ServerCore::GetServableHandle`` (NOT_FOUND for an
unknown model or version, INVALID_ARGUMENT for an unknown label) and run ``serving_host.apis``
over the same servable core as REST. Error texts longer than 1024 characters are cut as
``ToGRPCStatus`` cuts them, on every RPC. Predict, Classify and Regress count every request and time the OK
ones (``RecordModelRequestCount`` / ``RecordRequestLatency``, entrypoint ``GRPC``); TF Serving
records neither for MultiInference nor GetModelMetadata. Predict, Classify, Regress and
MultiInference turn the call's deadline into the session run's timeout (``DeadlineToTimeoutMillis``
-> ``RunOptions.timeout_in_ms``): a run still going at the deadline is cancelled and the call ends
DEADLINE_EXCEEDED "Timed out waiting for notification", its worker free again.

Semantics of TF Serving's ``model_service_impl.cc``: ``HandleReloadConfigRequest`` accepts only a
``model_config_list``, runs the same ReloadConfig as the config-file poll (so both end in the same
state), waits for models that are new in the config to load, and reports a failure both in the
response's ``status`` and as the RPC's status code (a label on a version that is not available
gives FAILED_PRECONDITION with "Request to assign label to version ...").
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving_host import apis, metrics
from serving_host import config as cfg
from serving_host.json_text import status_text
from serving_host.manager import Manager
from serving_host.rest import status_response
from serving_host.status import CODES, ServingError, invalid_argument

log = logging.getLogger("serving_host")


ERROR_MESSAGE_LIMIT = 1024
INT32_MAX = 2**31 - 1


def run_timeout_ms(context) -> int | None:
    """``DeadlineToTimeoutMillis(context->raw_deadline())``: the call's time left in whole
    milliseconds (``gpr_time_to_millis`` truncates), the session run's ``RunOptions.timeout_in_ms``
    (TF Serving's ``enforce_session_run_timeout``, on in ``tensorflow_model_server``). None for no
    deadline or one INT32_MAX ms (24.8 days) or more away, where gRPC stops counting: no limit in
    practice. A deadline already passed gives
    <= 0, which DirectSession takes as no limit."""
    remaining = context.time_remaining()
    if remaining is None or remaining * 1000 >= INT32_MAX:
        return None
    return int(remaining * 1000)


def grpc_message(message: str) -> str:
    """``ToGRPCStatus``: messages over 1024 bytes (``std::string::length``, UTF-8) are cut there
    and end in ``...TRUNCATED``; a character the cut splits is dropped here (C++ sends the bytes).
    A file name's bytes that are not UTF-8 are read as ``json_text.status_text`` reads them (gRPC's
    Python core sends UTF-8 text only)."""
    message = status_text(message)
    data = message.encode("utf-8")
    if len(data) > ERROR_MESSAGE_LIMIT:
        return data[:ERROR_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"
    return message


def _abort(context, exc: ServingError):
    """End the RPC with ``exc`` as ``ToGRPCStatus`` does (every RPC's status goes through it)."""
    context.abort(getattr(grpc.StatusCode, exc.code), grpc_message(exc.message))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: Manager):
        self.manager = manager

    def GetModelStatus(self, request, context):  # noqa: N802 - gRPC method name
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            return status_response(self.manager, spec.name, version)
        except ServingError as exc:
            _abort(context, exc)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802 - gRPC method name
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()     # ToStatusProto(status): present, empty when OK
        names = list(dict.fromkeys(request.metric_names))    # model_service_impl.cc GetMetrics
        before = {n: metrics.REGISTRY.first_int(n) for n in names}
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest."
                                       " Only ModelConfigList is currently supported")
            for i, c in enumerate(request.config.model_config_list.config):
                log.info("Config entry index : %d path : %s name : %s platform : %s",
                         i, c.base_path, c.name, c.model_platform)
            self.manager.reload_config(cfg.to_server_config(request.config))
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            response.status.error_code = CODES[exc.code]
            response.status.error_message = status_text(exc.message)
            context.set_code(getattr(grpc.StatusCode, exc.code))
            context.set_details(grpc_message(exc.message))
        for n in names:                                       # RecordMetricsIncrease, also after a failure
            response.metric.add(name=n, int64_value_increase=metrics.REGISTRY.first_int(n) - before[n])
        return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: Manager):
        self.manager = manager

    def _call(self, context, fn, spec, api: str | None):
        """Resolve the servable for ``spec``, run ``fn``; map errors and record metrics."""
        start = time.monotonic()
        code = "OK"
        try:
            version, label = apis.spec_choice(spec)
            with self.manager.handle(spec.name, version, label) as servable:
                return fn(servable)
        except ServingError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # noqa: BLE001 - a bug answers UNKNOWN and is logged
            log.exception("internal error in gRPC %s", api or "request")
            code, message = "UNKNOWN", f"{exc.__class__.__name__}: {exc}"
        finally:
            if api is not None:
                metrics.record_request(spec.name, api, "GRPC", code, time.monotonic() - start)
        context.abort(getattr(grpc.StatusCode, code), grpc_message(message))

    def _checked(self, context, request, api: str | None):
        try:
            apis.require_model_spec(request)
        except ServingError as exc:
            if api is not None:
                metrics.record_request(request.model_spec.name, api, "GRPC", exc.code, 0.0)
            _abort(context, exc)

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        self._checked(context, request, "Predict")
        timeout_ms = run_timeout_ms(context)
        return self._call(context, lambda s: apis.predict(s, request, s.version, timeout_ms),
                          request.model_spec, "Predict")

    def Classify(self, request, context):  # noqa: N802 - gRPC method name
        self._checked(context, request, "Classify")
        timeout_ms = run_timeout_ms(context)
        return self._call(context, lambda s: apis.classify(s, request, s.version, timeout_ms),
                          request.model_spec, "Classify")

    def Regress(self, request, context):  # noqa: N802 - gRPC method name
        self._checked(context, request, "Regress")
        timeout_ms = run_timeout_ms(context)
        return self._call(context, lambda s: apis.regress(s, request, s.version, timeout_ms),
                          request.model_spec, "Regress")

    def MultiInference(self, request, context):  # noqa: N802 - gRPC method name
        # GetModelSpecFromRequest: the first task's spec (an empty one names no model).
        spec = request.tasks[0].model_spec if request.tasks else None
        if spec is None:
            from tensorflow_serving.apis import model_pb2
            spec = model_pb2.ModelSpec()
        timeout_ms = run_timeout_ms(context)
        return self._call(context, lambda s: apis.multi_inference(s, request, s.version, timeout_ms),
                          spec, None)

    def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC method name
        self._checked(context, request, None)
        try:
            apis.check_metadata_request(request)
        except ServingError as exc:
            _abort(context, exc)
        return self._call(context, apis.metadata, request.model_spec, None)


def _parsing(cls, behavior):
    """``behavior`` on the request's bytes parsed as ``cls``. Bytes that do not parse are gRPC C++'s
    ``GenericDeserialize``: INTERNAL with ``InitializationErrorString()``, empty for a proto3
    message (Python's gRPC answered INTERNAL "Exception deserializing request!")."""
    from google.protobuf.message import DecodeError

    def handler(data: bytes, context):
        try:
            request = cls.FromString(data)
        except DecodeError:
            context.abort(grpc.StatusCode.INTERNAL, "")
        return behavior(request, context)
    return handler


def _handlers(service: str, servicer, requests: dict[str, type]):
    """The unary handlers of ``service``, each response sent by its own ``SerializeToString``:
    Classify and MultiInference answer with ``apis.raw_label_type``'s classes, whose labels may be
    any bytes (the generated serializers take only their own class)."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(
        _parsing(cls, getattr(servicer, name)),
        response_serializer=lambda response: response.SerializeToString()) for name, cls in requests.items()}
    return grpc.method_handlers_generic_handler(service, handlers)


def _prediction_handlers(servicer: PredictionService):
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        inference_pb2,
        predict_pb2,
        regression_pb2,
    )

    return _handlers("tensorflow.serving.PredictionService", servicer, {
        "Classify": classification_pb2.ClassificationRequest, "Regress": regression_pb2.RegressionRequest,
        "Predict": predict_pb2.PredictRequest, "MultiInference": inference_pb2.MultiInferenceRequest,
        "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest})


def _model_handlers(servicer: ModelService):
    from tensorflow_serving.apis import get_model_status_pb2

    return _handlers("tensorflow.serving.ModelService", servicer, {
        "GetModelStatus": get_model_status_pb2.GetModelStatusRequest,
        "HandleReloadConfigRequest": model_management_pb2.ReloadConfigRequest})


# grpc.health.v1 (gRPC's DefaultHealthCheckService, which server.cc turns on with
# --enable_grpc_healthcheck_service): "" is SERVING from the start, and server.cc sets "ModelService"
# and "PredictionService" (those names, not the full ones) once, at start; any other name is unknown:
# Check answers NOT_FOUND, Watch streams SERVICE_UNKNOWN and stays open (as gRPC does: a status set
# later would be sent; TF Serving never sets one again).
HEALTH_SERVICES = ("", "ModelService", "PredictionService")
SERVING, SERVICE_UNKNOWN = 1, 3
MAX_SERVICE_NAME_BYTES = 200      # default_health_check_service.cc MAX_SERVICE_NAME_LENGTH
# A Watch holds one worker thread while its stream is open (gRPC C++ serves it from its own completion
# queue): at most this many at once, in threads of their own beyond ``workers``, so watchers never take
# the threads of Predict and the rest. One more is RESOURCE_EXHAUSTED.
MAX_WATCHES = 32
_WATCH_RECHECK_SECONDS = 60.0     # a missed wake-up costs at most this (is_active() is checked again)
_HEALTH_TYPES: tuple[type, type] | None = None


def _health_types() -> tuple[type, type]:
    """(HealthCheckRequest, HealthCheckResponse) of grpc/health/v1/health.proto, built here (no
    grpcio-health-checking needed): ``string service = 1`` / ``ServingStatus status = 1``."""
    global _HEALTH_TYPES
    if _HEALTH_TYPES is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fd = descriptor_pb2.FileDescriptorProto(name="serving_host_health.proto", package="grpc.health.v1",
                                                syntax="proto3")
        t = descriptor_pb2.FieldDescriptorProto
        fd.message_type.add(name="HealthCheckRequest").field.add(
            name="service", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
        resp = fd.message_type.add(name="HealthCheckResponse")
        enum = resp.enum_type.add(name="ServingStatus")
        for i, n in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
            enum.value.add(name=n, number=i)
        resp.field.add(name="status", number=1, type=t.TYPE_ENUM, label=t.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fd)
        _HEALTH_TYPES = tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{n}"))
                              for n in ("HealthCheckRequest", "HealthCheckResponse"))
    return _HEALTH_TYPES


def _health_service_name(request: bytes, context) -> str:
    """``DecodeRequest``: the service named in the request's bytes; INVALID_ARGUMENT "could not parse
    request" if they do not parse or the name is over ``MAX_SERVICE_NAME_LENGTH`` (200) bytes."""
    from google.protobuf.message import DecodeError

    try:
        service = _health_types()[0].FromString(request).service
    except DecodeError:
        service = None
    if service is None or len(service.encode("utf-8")) > MAX_SERVICE_NAME_BYTES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "could not parse request")
    return service


def _health_response(status: int) -> bytes:
    return _health_types()[1](status=status).SerializeToString()


def _health_check(request: bytes, context):
    """``DefaultHealthCheckService``'s Check: the request's bytes -> the response's bytes."""
    if _health_service_name(request, context) not in HEALTH_SERVICES:
        context.abort(grpc.StatusCode.NOT_FOUND, "service name unknown")
    return _health_response(SERVING)


class HealthWatches:
    """The open ``Watch`` streams: each waits for its RPC to end or for ``shutdown``."""

    def __init__(self, limit: int = MAX_WATCHES):
        self.limit = limit
        self._cond = threading.Condition()
        self._open = 0
        self._shut = False

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def shutdown(self) -> None:
        """The server is stopping: every open Watch ends now (UNAVAILABLE, as a client of TF Serving
        sees when the process ends) rather than holding the stop for its grace period."""
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def watch(self, request: bytes, context):
        """``WatchCallHandler``: the service's status at once (SERVICE_UNKNOWN for an unknown name),
        then the stream stays open until the client ends it or the server stops."""
        service = _health_service_name(request, context)
        with self._cond:
            if self._shut:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")
            if self._open >= self.limit:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many open Health/Watch streams (at most {self.limit}); close one and retry")
            self._open += 1
        try:
            yield _health_response(SERVING if service in HEALTH_SERVICES else SERVICE_UNKNOWN)
            if not context.add_callback(self._wake):
                return                                  # the RPC has already ended
            with self._cond:
                while context.is_active() and not self._shut:
                    self._cond.wait(_WATCH_RECHECK_SECONDS)
                shut = self._shut
        finally:
            with self._cond:
                self._open -= 1
        if shut and context.is_active():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")


def _health_handler(watches: HealthWatches):
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(_health_check),
        "Watch": grpc.unary_stream_rpc_method_handler(watches.watch)})


class _Server:
    """The ``grpc.Server``, whose ``stop`` first ends the open Health/Watch streams."""

    def __init__(self, server: grpc.Server, watches: HealthWatches | None):
        self._server, self._watches = server, watches

    def stop(self, grace):
        if self._watches is not None:
            self._watches.shutdown()
        return self._server.stop(grace)

    def __getattr__(self, name):
        return getattr(self._server, name)


def serve(manager: Manager, host: str, port: int, workers: int = 8, *,
          health_check: bool = False) -> _Server:
    """Start the gRPC server; raises OSError when the port cannot be bound. ``health_check``:
    ``--enable_grpc_healthcheck_service``, grpc.health.v1.Health/Check and Watch as TF Serving answers
    them."""
    unlimited = 2**31 - 1  # server.cc: builder.SetMaxMessageSize(INT32_MAX), not gRPC's 4 MiB default
    watches = HealthWatches() if health_check else None
    threads = workers + (watches.limit if watches else 0)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", unlimited),
                                  ("grpc.max_send_message_length", unlimited)])
    server.add_generic_rpc_handlers((_model_handlers(ModelService(manager)),
                                     _prediction_handlers(PredictionService(manager))))
    if watches is not None:
        server.add_generic_rpc_handlers((_health_handler(watches),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    server.start()
    return _Server(server, watches)
