"""``models.config``: parse it with TF Serving's own protobuf schema and decide if it may apply.

The decisions (is this config well formed, may these labels be assigned given what is loaded)
are pure functions on plain data, mirroring ``ServerCore::ReloadConfig`` and
``ServerCore::UpdateModelVersionLabelMap``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from serving_host.status import ServingError, failed_precondition, invalid_argument
from serving_host.versions import VersionPolicy

TENSORFLOW_PLATFORM = "tensorflow"


@dataclass(frozen=True)
class ModelEntry:
    """One ``config { ... }`` of a ``model_config_list``."""
    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)
    platform: str = TENSORFLOW_PLATFORM
    platform_error: str = ""    # GetPlatform's message, raised where TF Serving calls it (below)

    def source_key(self) -> tuple:
        """What the file-system source cares about (labels are not part of it)."""
        return (self.base_path, self.policy)


@dataclass(frozen=True)
class ServerConfig:
    """A parsed ``ModelServerConfig``: ``kind`` is "list", "empty" (nothing set) or "custom"."""
    kind: str
    models: tuple[ModelEntry, ...] = ()

    def by_name(self) -> dict[str, ModelEntry]:
        return {m.name: m for m in self.models}


def parse_text(text: str, path: str = "<text>"):
    """Parse text-format ``ModelServerConfig`` (the real proto); error like TF Serving's."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(cpp_string_escapes(text), msg)
    except (text_format.ParseError, ValueError) as exc:
        raise invalid_argument(f"Invalid protobuf file: '{path}' ({exc})") from None
    return msg


def _read_text_proto(path: str) -> str:
    """A config file's text, with TF Serving's errors for a missing, unreadable, empty or non-UTF-8
    file. ``ParseProtoTextFile`` reads it with ``NewReadOnlyMemoryRegionFromFile``, an ``mmap`` of
    its ``st_size`` bytes, and ``mmap`` of 0 bytes fails with EINVAL: a 0-byte file is an error
    there, not an empty config (one holding only a comment or a line break is one)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ServingError("NOT_FOUND", f"{path}; No such file or directory") from None
    except OSError as exc:
        raise ServingError("UNKNOWN", f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise invalid_argument(f"Invalid protobuf file: '{path}'") from None
    if not text:
        raise invalid_argument(empty_file_message(path))
    return text


def empty_file_message(path: str) -> str:
    """TF Serving's error for a 0-byte config file (``IOError(path, EINVAL)``)."""
    return f"{path}; Invalid argument"


def read_file(path: str):
    """Read and parse a ``models.config`` file."""
    return parse_text(_read_text_proto(path), path)


def single_model_proto(name: str, base_path: str):
    """The config TF Serving builds from ``--model_name`` and ``--model_base_path``."""
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    c = msg.model_config_list.config.add()
    c.name = name
    c.base_path = base_path
    c.model_platform = TENSORFLOW_PLATFORM
    return msg


def _platform(c) -> str:
    """``GetPlatform`` in server_core.cc (model_type is the deprecated spelling)."""
    if c.model_type != 0:  # MODEL_TYPE_UNSPECIFIED
        if c.model_platform:
            raise invalid_argument("Illegal setting both ModelServerConfig::model_type (deprecated) "
                                   f"and ModelServerConfig::model_platform, model name is {c.name}")
        if c.model_type == 1:  # TENSORFLOW
            return TENSORFLOW_PLATFORM
        raise invalid_argument(f"ModelServerConfig::model_type choice {c.model_type} not supported.")
    if not c.model_platform:
        raise invalid_argument("Illegal setting neither ModelServerConfig::model_type (deprecated) "
                               f"nor ModelServerConfig::model_platform, model name is {c.name}")
    return c.model_platform


_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9.]+://")


def _is_relative(path: str) -> bool:
    """``UriIsRelativePath``: no scheme as TF's ``io::ParseURI`` reads one (a letter, then one or
    more letters, digits or dots, ``One(LETTER).Many(LETTER_DIGIT_DOT)``, then ``://`` at the very
    start) and not absolute: ``a/b://c`` and the one-letter ``s://b`` are relative."""
    return not _URI_SCHEME.match(path) and not os.path.isabs(path)


def _policy(c) -> VersionPolicy:
    p = c.model_version_policy
    which = p.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        return VersionPolicy("specific", versions=frozenset(int(v) for v in p.specific.versions))
    num = p.latest.num_versions if which == "latest" else 1
    return VersionPolicy("latest", num_versions=max(1, int(num)))


def to_server_config(msg) -> ServerConfig:
    """Validate a ``ModelServerConfig`` proto and turn it into plain data.

    Raises ServingError(INVALID_ARGUMENT) for duplicate names and relative base paths, with TF
    Serving's messages. A missing or contradictory platform (``GetPlatform``'s errors) and an
    unsupported one are refused later, by ``check_platform_change`` and ``check_platforms_supported``.
    """
    which = msg.WhichOneof("config")
    if which is None:
        return ServerConfig("empty")
    if which == "custom_model_config":
        return ServerConfig("custom")
    seen: set[str] = set()
    for c in msg.model_config_list.config:
        if c.name in seen:
            raise invalid_argument(f"Illegal to list model {c.name} multiple times in config list")
        seen.add(c.name)
    for c in msg.model_config_list.config:
        if _is_relative(c.base_path):
            raise invalid_argument(f"Expected model {c.name} to have an absolute path or URI; "
                                   f"got base_path()={c.base_path}")
    models = []
    for c in msg.model_config_list.config:
        try:
            platform, platform_error = _platform(c), ""
        except ServingError as exc:
            platform, platform_error = "", exc.message
        models.append(ModelEntry(name=c.name, base_path=c.base_path.rstrip("/") or "/",
                                 policy=_policy(c),
                                 labels={k: int(v) for k, v in c.version_labels.items()},
                                 platform=platform, platform_error=platform_error))
    return ServerConfig("list", tuple(models))


def check_transition(old: ServerConfig, new: ServerConfig) -> None:
    """Only ModelConfigList -> ModelConfigList transitions are legal after the first config."""
    if old.kind == "empty":
        if new.kind == "custom":
            raise invalid_argument("ModelServer does not yet support custom model config.")
        return
    if not (old.kind == "list" and new.kind == "list"):
        raise failed_precondition("Cannot transition to requested config. It is only legal to "
                                  "transition from one ModelConfigList to another.")


def _get_platform(m: ModelEntry) -> str:
    """``GetPlatform`` of one entry: its platform, or its error."""
    if m.platform_error:
        raise invalid_argument(m.platform_error)
    return m.platform


def check_platform_change(old: ServerConfig, new: ServerConfig) -> None:
    """``ValidateNoModelsChangePlatforms``: checked before labels and platform support. GetPlatform
    runs on every model of ``old`` and on the models of ``new`` that ``old`` has (a new model is
    skipped), so an earlier config holding a model without a platform fails every later reload."""
    before = {m.name: _get_platform(m) for m in old.models}
    for m in new.models:
        if m.name in before and before[m.name] != _get_platform(m):
            raise invalid_argument(f"Illegal to change a model's platform. For model {m.name} platform "
                                   f"was {before[m.name]} and new platform requested is {m.platform}")


def check_platforms_supported(new: ServerConfig) -> None:
    """Only ``tensorflow`` servables exist here (``CreateStoragePathRoutes``: GetPlatform, then the
    platform's route, model by model)."""
    for m in new.models:
        if _get_platform(m) != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {m.name} requests unsupported platform {m.platform}")


def label_map(models: tuple[ModelEntry, ...], available: set[tuple[str, int]],
              current: dict[str, dict[str, int]], allow_unavailable: bool) -> dict[str, dict[str, int]]:
    """The new label -> version map, or FAILED_PRECONDITION if a label may not be assigned.

    A label may only point at a version that is AVAILABLE now. With
    ``--allow_version_labels_for_unavailable_models`` a *new* label (or one that keeps its
    version) may point at any version, but an existing label still cannot be moved to a
    version that is not available.
    """
    result: dict[str, dict[str, int]] = {}
    for m in models:
        for label, version in m.labels.items():
            allowed = False
            if allow_unavailable:
                existing = current.get(m.name, {}).get(label)
                allowed = existing is None or existing == version
            if not allowed and (m.name, version) not in available:
                raise failed_precondition(f"Request to assign label to version {version} of model "
                                          f"{m.name}, which is not currently available for inference")
            result.setdefault(m.name, {})[label] = version
    return result


# --------------------------------------------------------------------------------------------
# --monitoring_config_file
# --------------------------------------------------------------------------------------------
PROMETHEUS_DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


def _monitoring_config_class():
    """``tensorflow.serving.MonitoringConfig`` (config/monitoring_config.proto).

    tensorflow-serving-api ships no ``monitoring_config_pb2``; the schema is built here from
    the same field names and numbers so text-format parsing is protobuf's own.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/config/monitoring_config.proto",
                                           package="tensorflow.serving", syntax="proto3")
    fd = descriptor_pb2.FieldDescriptorProto
    prom = f.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=fd.TYPE_BOOL, label=fd.LABEL_OPTIONAL)
    prom.field.add(name="path", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    mon = f.message_type.add(name="MonitoringConfig")
    mon.field.add(name="prometheus_config", number=1, type=fd.TYPE_MESSAGE, label=fd.LABEL_OPTIONAL,
                  type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def metrics_path(text: str, path: str = "<text>") -> str | None:
    """The path the REST port serves Prometheus metrics on, or None when not enabled.

    As ``CreateAndStartHttpServer``: only ``prometheus_config { enable: true }`` turns it on; an
    empty ``path`` means ``/monitoring/prometheus/metrics``.
    """
    from google.protobuf import text_format

    msg = _monitoring_config_class()()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise invalid_argument(f"Invalid protobuf file: '{path}' ({exc})") from None
    if not msg.prometheus_config.enable:
        return None
    return msg.prometheus_config.path or PROMETHEUS_DEFAULT_PATH


def read_metrics_path(path: str) -> str | None:
    """``metrics_path`` of a ``--monitoring_config_file``."""
    return metrics_path(_read_text_proto(path), path)


_SIMPLE_ESCAPES = frozenset("abfnrtv\\'\"01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


def cpp_string_escapes(text: str) -> str:
    """``text`` with its string literals' escapes checked as protobuf's C++ tokenizer reads them
    (``io::Tokenizer::ConsumeString``), which TF Serving's ``TextFormat::ParseFromString`` uses:
    an escape it refuses (``\\d``, ``\\/``, ``\\N{...}``, ``\\8``) raises ValueError("line:col :
    message"); ``\\?`` (a ``?`` there) is returned as ``?``. Python's text_format kept those as a
    backslash and the character, so a file TF Serving refuses or reads otherwise parsed here."""
    out: list[str] = []
    i, n, quote, line, start = 0, len(text), None, 1, 0
    while i < n:
        c = text[i]
        if c == "\n":
            line, start, quote = line + 1, i + 1, None   # a string never spans lines (refused later)
        elif quote is None and c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
            continue
        elif quote is None and c in "\"'":
            quote = c
        elif quote is not None and c == quote:
            quote = None
        elif quote is not None and c == "\\" and i + 1 < n:
            e, rest = text[i + 1], text[i + 2:i + 10]
            ok = (e in _SIMPLE_ESCAPES or e == "?"
                  or (e == "x" and rest[:1] in _HEX and rest[:1] != "")
                  or (e == "u" and len(rest) >= 4 and set(rest[:4]) <= _HEX)
                  or (e == "U" and len(rest) >= 8 and rest[:2] == "00" and rest[2] in "01"
                      and set(rest[3:8]) <= _HEX))
            if not ok:
                raise ValueError(f"{line}:{i - start + 1} : Invalid escape sequence in string literal.")
            out.append("?" if e == "?" else text[i:i + 2])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
