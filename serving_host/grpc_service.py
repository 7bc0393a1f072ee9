"""gRPC ``tensorflow.serving.ModelService`` on ``--port``: GetModelStatus and ReloadConfig.

Semantics of TF Serving's ``model_service_impl.cc``: ``HandleReloadConfigRequest`` accepts only a
``model_config_list``, runs the same ReloadConfig as the config-file poll (so both end in the same
state), waits for models that are new in the config to load, and reports a failure both in the
response's ``status`` and as the RPC's status code (a label on a version that is not available
gives FAILED_PRECONDITION with "Request to assign label to version ...").
"""
from __future__ import annotations

import logging
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from serving_host import config as cfg
from serving_host.manager import Manager
from serving_host.rest import status_response
from serving_host.status import CODES, ServingError, invalid_argument

log = logging.getLogger("serving_host")


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
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802 - gRPC method name
        response = model_management_pb2.ReloadConfigResponse()
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
            response.status.error_message = exc.message
            context.set_code(getattr(grpc.StatusCode, exc.code))
            context.set_details(exc.message)
        return response


def serve(manager: Manager, host: str, port: int, workers: int = 8) -> grpc.Server:
    """Start the gRPC server; raises OSError when the port cannot be bound."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    server.start()
    return server
