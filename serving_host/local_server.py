"""``python -m serving_host.local_server``: a local TensorFlow-Serving-compatible model server.

NOT TensorFlow Serving. Production hosts run the real ``tensorflow/serving`` image (see
``serving_host/install_server.sh``). This stands in for ``tensorflow_model_server`` where that
binary cannot run (the embedded default, the tests, CI): same flags (``--flag=value``), same
``models.config`` schema, same version policies and transitions, same REST API and the gRPC
ModelService (GetModelStatus, HandleReloadConfigRequest) and PredictionService, warmup replay of
``assets.extra/tf_serving_warmup_requests``, and with ``--monitoring_config_file`` the Prometheus
page of TF Serving's exporter on the REST port. The REST edge holds under hostile input: a fixed
worker pool, socket timeouts, a body-size limit, the model resolved before the body is read.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import textwrap

DESCRIPTION = """\
Local TensorFlow-Serving-compatible model server.

This is NOT TensorFlow Serving: production uses real TensorFlow Serving (the
tensorflow/serving Docker image, started by serving_host/install_server.sh).
This server stands in for tensorflow_model_server where that binary cannot run
(the embedded default, tests, CI). It takes the same flags with the same
--flag=value syntax, reads the same models.config (ModelServerConfig text
proto), polls model base paths for numeric version directories, applies the
latest/all/specific version policies, loads a new version before unloading the
old one, enforces the version label rules, and serves the same REST API
(/v1/models/...), the gRPC ModelService and PredictionService on --port, replays
warmup requests before a version becomes AVAILABLE, and with
--monitoring_config_file serves Prometheus metrics on the REST port.
"""

EPILOG = """\
example:
  python -m serving_host.local_server --rest_api_port=8501 --port=8500 \\
      --model_config_file=/var/models/models.config \\
      --model_config_file_poll_wait_seconds=1 --file_system_poll_wait_seconds=1 \\
      --monitoring_config_file=/var/models/monitoring.config

monitoring.config (MonitoringConfig text proto):
  prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }
"""


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes"):
        return True
    if t in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# TF Serving flags (model_servers/main.cc) that the local server takes and ignores, with one log
# line each, so a production command line starts it instead of exiting on "unrecognized arguments".
NO_EFFECT_FLAGS = (
    "batching_parameters_file", "enable_batching", "enable_per_model_batching_parameters",
    "rest_api_enable_cors_support",
    "grpc_channel_arguments", "grpc_max_threads", "grpc_socket_path",
    "ssl_config_file", "use_alts_credentials",
    "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "tensorflow_session_config_file", "thread_pool_factory_config_file", "num_unload_threads",
    "saved_model_tags", "platform_config_file", "flush_filesystem_caches",
    "remove_unused_fields_from_bundle_metagraph", "enable_serialization_as_tensor_content", "mixed_precision",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled", "per_process_gpu_memory_fraction",
    "skip_initialize_tpu", "enable_signature_method_name_check", "enable_profiler",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving_host.local_server", description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--port", type=int, metavar="N", default=0,
                   help="gRPC port for the ModelService and PredictionService (Predict, Classify, Regress, "
                        "MultiInference, GetModelMetadata); "
                        "0 = no gRPC (default: 0; real TF Serving defaults to 8500)")
    p.add_argument("--rest_api_port", type=int, metavar="N", default=0,
                   help="port for the HTTP/REST API; 0 = no REST API (default: 0)")
    p.add_argument("--model_name", default="default", metavar="NAME",
                   help="name of the single model served with --model_base_path (default: default)")
    p.add_argument("--model_base_path", default="", metavar="DIR",
                   help="base path of the single model (numeric version directories below it)")
    p.add_argument("--model_config_file", default="", metavar="FILE",
                   help="ModelServerConfig text proto (model_config_list {...}); overrides "
                        "--model_name/--model_base_path")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, metavar="N", default=0,
                   help="re-read and apply --model_config_file every N seconds; 0 = read once (default: 0)")
    p.add_argument("--file_system_poll_wait_seconds", type=int, metavar="N", default=1,
                   help="poll model base paths for new versions every N seconds; 0 = only when the "
                        "config changes; negative = never (default: 1)")
    p.add_argument("--max_num_load_retries", type=int, metavar="N", default=5,
                   help="times a failed load is retried before the version ends in END (default: 5)")
    p.add_argument("--load_retry_interval_micros", type=int, metavar="N", default=60_000_000,
                   help="wait between load retries, in microseconds (default: 60000000 = 1 minute)")
    p.add_argument("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True,
                   default=False, metavar="BOOL",
                   help="allow a NEW label to point at a version that is not loaded yet (default: false)")
    p.add_argument("--num_load_threads", type=int, metavar="N", default=0,
                   help="threads that load/unload versions in parallel; 0 = one at a time, and "
                        "version changes wait for the running load and its retries, as TF "
                        "Serving's default (default: 0)")
    p.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
                   metavar="BOOL",
                   help="replay <version>/assets.extra/tf_serving_warmup_requests before a version "
                        "becomes AVAILABLE (default: true)")
    p.add_argument("--num_request_iterations_for_warmup", type=int, metavar="N", default=1,
                   help="times each warmup request is replayed; used only if > 0 (default: 1)")
    p.add_argument("--monitoring_config_file", default="", metavar="FILE",
                   help="MonitoringConfig text proto; with prometheus_config { enable: true } the "
                        "REST port serves Prometheus metrics at its path (default: "
                        "/monitoring/prometheus/metrics)")
    p.add_argument("--rest_api_num_threads", type=int, metavar="N", default=None,
                   help="worker threads for REST requests; idle connections hold none "
                        "(default: 4 x CPUs, as TF Serving)")
    p.add_argument("--rest_api_timeout_in_ms", type=int, metavar="N", default=30_000,
                   help="a REST predict/classify/regress whose model still runs after N ms is cancelled "
                        "and answered 504; <= 0 = no limit (default: 30000, as TF Serving)")
    p.add_argument("--rest_api_socket_timeout_seconds", type=float, metavar="S", default=30.0,
                   help="close a REST connection idle or stalled this long (local server only; "
                        "default: 30)")
    p.add_argument("--rest_api_max_body_bytes", type=int, metavar="N", default=64 * 1024 * 1024,
                   help="answer 413 to a larger REST request body without reading it (local server "
                        "only; default: 67108864 = 64 MiB)")
    p.add_argument("--enable_grpc_healthcheck_service", type=_bool, nargs="?", const=True, default=False,
                   metavar="BOOL", help="serve grpc.health.v1.Health/Check on --port: \"\", ModelService and "
                                        "PredictionService answer SERVING (default: false)")
    p.add_argument("--bind_address", default="127.0.0.1", metavar="ADDR",
                   help="address both ports listen on (local server only; real TF Serving listens on "
                        "all interfaces) (default: 127.0.0.1)")
    ignored = p.add_argument_group("TF Serving flags taken and ignored (logged at start)",
                                   textwrap.fill(" ".join(f"--{n}" for n in NO_EFFECT_FLAGS), 92))
    for name in NO_EFFECT_FLAGS:
        ignored.add_argument(f"--{name}", nargs="?", const="true", default=None, help=argparse.SUPPRESS)
    return p


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s: %(levelname).1s serving_host] %(message)s"))
    logger = logging.getLogger("serving_host")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _what_to_fix(exc, path: str, fix: str, empty_fix: str) -> str:
    """``fix``, or for an empty config file ``empty_fix`` (TF Serving says no more than EINVAL)."""
    from serving_host.config import empty_file_message

    if path and exc.message == empty_file_message(path):
        return f"the file is empty, which TF Serving cannot read: {empty_fix}"
    return fix


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model_config_file and not args.model_base_path:
        return _fail("set --model_config_file=FILE or --model_base_path=DIR (both are empty)", 2)
    if args.port and args.port == args.rest_api_port:
        return _fail("--rest_api_port cannot be the same as --port; use a different port", 2)
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            return _fail(f"--{flag} must be between 0 and 65535", 2)
    if args.rest_api_num_threads is not None and args.rest_api_num_threads < 1:
        return _fail("--rest_api_num_threads must be at least 1", 2)
    if args.rest_api_socket_timeout_seconds <= 0 or args.rest_api_max_body_bytes < 0:
        return _fail("--rest_api_socket_timeout_seconds must be > 0 and --rest_api_max_body_bytes >= 0", 2)
    metrics_path = None
    # before the slow imports: a typo fails at once. Only with a REST port, as TF Serving reads the
    # file only when it starts its HTTP server (server.cc: inside ``if (http_port != 0)``)
    if args.monitoring_config_file and args.rest_api_port:
        from serving_host.config import read_metrics_path
        from serving_host.status import ServingError

        try:
            metrics_path = read_metrics_path(args.monitoring_config_file)
        except ServingError as exc:
            return _fail(f"{exc.message}; " + _what_to_fix(
                exc, args.monitoring_config_file, "fix --monitoring_config_file and start again",
                "write a prometheus_config into it or leave --monitoring_config_file out, and start again"))
    _setup_logging()
    log = logging.getLogger("serving_host")
    log.info("Local TF-Serving-compatible server (not TensorFlow Serving; production uses "
             "tensorflow/serving) starting")
    for name in NO_EFFECT_FLAGS:
        if getattr(args, name) is not None:
            log.warning("--%s=%s has no effect in the local server (TF Serving uses it)", name, getattr(args, name))

    # not a threading.Event: a handler runs in the main thread between two of its lines, maybe while
    # it holds the Event's lock in its wait, and Event.set then waited for that lock forever
    stop: queue.SimpleQueue = queue.SimpleQueue()       # its put is reentrant
    signal.signal(signal.SIGTERM, lambda *_: stop.put(True))
    signal.signal(signal.SIGINT, lambda *_: stop.put(True))

    from serving_host import config as cfg
    from serving_host.status import ServingError

    try:        # before the slow imports (gRPC's pulls in TensorFlow): a config typo fails at once
        if args.model_config_file:
            initial = cfg.to_server_config(cfg.read_file(args.model_config_file))
        else:
            log.info("Building single TensorFlow model file config: model_name: %s model_base_path: %s",
                     args.model_name, args.model_base_path)
            initial = cfg.to_server_config(cfg.single_model_proto(args.model_name, args.model_base_path))
    except ServingError as exc:
        return _fail(f"{exc.message}; " + _what_to_fix(
            exc, args.model_config_file, "fix the model config and start again",
            "write model_config_list {} into it for a server with no models, and start again"))

    from serving_host import grpc_service, http_server, rest
    from serving_host.manager import Manager

    manager = Manager(max_num_load_retries=args.max_num_load_retries,
                      load_retry_interval_micros=args.load_retry_interval_micros,
                      file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                      allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
                      num_load_threads=args.num_load_threads,
                      enable_model_warmup=args.enable_model_warmup,
                      num_request_iterations_for_warmup=args.num_request_iterations_for_warmup)
    try:
        manager.reload_config(initial)
    except ServingError as exc:
        if exc.code == "FAILED_PRECONDITION" and "assign label" in exc.message:
            return _fail(f"{exc.message}; at start no version is loaded yet: start with "
                         "--allow_version_labels_for_unavailable_models or add the labels after the "
                         "versions are AVAILABLE")
        if exc.code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"):
            return _fail(f"{exc.message}; " + _what_to_fix(
            exc, args.model_config_file, "fix the model config and start again",
            "write model_config_list {} into it for a server with no models, and start again"))
        log.error("%s (serving the models that did load)", exc.message)
    manager.start_polling()
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        manager.watch_config_file(args.model_config_file, args.model_config_file_poll_wait_seconds)

    grpc_server = rest_server = None
    try:
        if args.port:
            grpc_server = grpc_service.serve(manager, args.bind_address, args.port,
                                             health_check=args.enable_grpc_healthcheck_service)
            log.info("Running gRPC ModelServer at %s:%d ...", args.bind_address, args.port)
        if args.rest_api_port:
            rest_server, _ = http_server.serve(
                rest.RestApi(manager, args.rest_api_timeout_in_ms), args.bind_address, args.rest_api_port,
                num_threads=args.rest_api_num_threads or http_server.DEFAULT_NUM_THREADS,
                socket_timeout=args.rest_api_socket_timeout_seconds,
                max_body_bytes=args.rest_api_max_body_bytes, metrics_path=metrics_path)
            log.info("Exporting HTTP/REST API at:%s:%d ...", args.bind_address, args.rest_api_port)
            if metrics_path:
                log.info("Prometheus metrics at http://%s:%d%s", args.bind_address,
                         args.rest_api_port, metrics_path)
    except OSError as exc:
        manager.stop()
        if grpc_server is not None:
            grpc_server.stop(0)
        return _fail(f"cannot listen: {exc}; choose free ports with --port/--rest_api_port")

    stop.get()                      # a signal's handler runs during the wait (it is interruptible)
    log.info("Shutting down")
    if rest_server is not None:
        rest_server.shutdown()
        rest_server.server_close()
    if grpc_server is not None:
        grpc_server.stop(grace=2).wait(5)
    manager.stop()
    log.info("Stopped")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines out of the log
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # no slow interpreter teardown of TF sessions and daemon threads
