"""``models.config`` (TF Serving's ModelServerConfig, text format): build, parse, change.

Pure functions on plain data; the protobuf schema (``model_server_config_pb2``, which does not
import TensorFlow) does the parsing and printing, so the file is exactly what TF Serving reads.

For each managed model there is a main entry ``<model>`` with a ``specific`` version policy
(the versions to keep loaded) and labels such as ``stable``, and optionally a validation-only
entry ``<model>__validate`` with the same base path and a ``specific`` policy for the one
version being validated. That is how a new, higher version is loaded and smoke-tested while
unversioned and ``stable`` traffic stays on the previous version (TF Serving sends unversioned
requests to the highest *loaded* version of an entry, and a label may only point at a loaded
version). Entries serving_sync does not manage are kept verbatim.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field, replace

from mlops_common.errors import ConfigError

from .names import VALIDATE_SUFFIX, check_model_name, check_version

LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
PLATFORM = "tensorflow"


def validation_name(model: str) -> str:
    """Name of the validation-only entry for ``model`` (a valid TF Serving model name)."""
    return f"{model}{VALIDATE_SUFFIX}"


def same_path(a: str | None, b: str | None) -> bool:
    """Two base paths naming one directory as TF Serving reads them: ``/m/`` and ``/m`` (and
    ``/x//m``) are one. Compared as raw strings, a main entry written with a trailing slash was
    not seen to watch the folder we publish into, and a published version served at once."""
    if a is None or b is None:
        return a == b

    def norm(p: str) -> str:
        if "://" in p:
            scheme, rest = p.split("://", 1)
            return f"{scheme}://{re.sub('/+', '/', rest).rstrip('/')}"
        return posixpath.normpath(p)

    return norm(a) == norm(b)


def versions_held_by_others(config: "ServingConfig", model: str, base_path: str,
                            published: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Versions that entries other than ``model``'s own (main and validation) load or label from
    ``model``'s folder (``published``: the versions in it): another team's entry reading it.
    Retention must keep them: a ``specific`` entry's versions, a ``latest`` one's newest N, an
    ``all`` one's every version, TF Serving's default policy's newest, and every label's."""
    ours = {model, validation_name(model)}
    return _held([e for e in config.entries if e.name not in ours and same_path(e.base_path, base_path)], published)


def versions_named(config: "ServingConfig", model: str, published: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Every version of ``model`` that ``config`` loads or labels: its own entries' (main and
    validation) and those of any entry whose base path is a ``<...>/<model>`` folder (the base as
    TF Serving sees it may be any path, ``model_base_path``: a mirror, another URL). A self-loading
    policy holds the newest of ``published``, as in ``versions_held_by_others``."""
    return _held(_reading(config, model), published)


def _held(entries: list["ModelEntry"], published: tuple[int, ...]) -> tuple[int, ...]:
    """The versions ``entries`` load or label: a ``specific`` entry's versions, a self-loading
    policy's newest of ``published``, every label's."""
    newest_first = sorted(published, reverse=True)
    held: set[int] = set()
    for e in entries:
        if e.policy == "specific":
            held.update(e.versions)
        else:
            n = _newest_loaded(e)
            held.update(published if n is None else newest_first[:n])
        held.update(v for _, v in e.labels)
    return tuple(sorted(held))


def loads_newest(config: "ServingConfig", model: str) -> bool:
    """Whether an entry ``versions_named`` counts loads by a self-loading policy (it then needs the
    published versions)."""
    return any(e.policy != "specific" for e in _reading(config, model))


def _reading(config: "ServingConfig", model: str) -> list["ModelEntry"]:
    ours = {model, validation_name(model)}
    return [e for e in config.entries if e.name in ours or posixpath.basename(e.base_path.rstrip("/")) == model]


def _newest_loaded(e: "ModelEntry") -> int | None:
    """How many of the newest versions a self-loading policy serves: ``latest`` N's N, TF
    Serving's default 1, ``all`` every one (None)."""
    if e.policy == "all":
        return None
    return max(1, e.versions[0] if e.policy == "latest" and e.versions else 1)


def entries_loading_new_versions(config: "ServingConfig", model: str,
                                 base_path: str) -> tuple[tuple[str, int | None], ...]:
    """Entries other than ``model``'s own that read ``model``'s folder with a policy that loads a
    new version by itself (``latest``, ``all``, TF Serving's default): they serve a version the
    moment it is published, before the deploy's smoke test. A deploy does not rewrite another
    team's entry; it says so (a plan note). Each as (name, N): it loads the newest N versions
    (``latest`` N, the default's 1), None for ``all``: an older version published is not loaded."""
    ours = {model, validation_name(model)}
    return tuple(sorted((e.name, _newest_loaded(e)) for e in config.entries
                        if e.name not in ours and same_path(e.base_path, base_path) and e.policy != "specific"))


def keeping_extras(old: "ModelEntry | None", new: "ModelEntry") -> "ModelEntry":
    """``new`` (base path, version policy, labels) with every other field of ``old`` kept as it
    was: its ``logging_config``, ``platform_config``, a deprecated ``model_type``. Built from
    plain data alone, a deploy dropped them (request logging stopped)."""
    if old is None or old.raw is None:
        return new
    from google.protobuf import text_format

    c = _pb().ModelConfig()
    text_format.Parse(old.raw, c)
    c.name, c.base_path = new.name, new.base_path
    c.ClearField("model_version_policy")
    c.model_version_policy.specific.versions.extend(new.versions)
    c.ClearField("version_labels")
    for label, v in new.labels:
        c.version_labels[label] = v
    return replace(new, raw=text_format.MessageToString(c))


def model_base_path(serving_base: str, model: str) -> str:
    """Where TF Serving finds ``model``'s version directories: ``<base>/<model>``."""
    return f"{serving_base.rstrip('/')}/{model}"


@dataclass(frozen=True)
class ModelEntry:
    """One ``config { ... }`` entry."""

    name: str
    base_path: str
    policy: str = "specific"               # specific | latest | all | default
    versions: tuple[int, ...] = ()         # specific: versions to load; latest: (num_versions,)
    labels: tuple[tuple[str, int], ...] = ()
    platform: str = PLATFORM
    raw: str | None = field(default=None, compare=False)   # verbatim text for foreign entries

    @property
    def label_map(self) -> dict[str, int]:
        return dict(self.labels)


@dataclass(frozen=True)
class ServingConfig:
    entries: tuple[ModelEntry, ...] = ()

    def entry(self, name: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.name == name), None)


@dataclass(frozen=True)
class ModelState:
    """What one managed model should look like on a host."""

    model: str
    base_path: str
    versions: tuple[int, ...]              # loaded in the main entry
    labels: dict[str, int] = field(default_factory=dict)
    validate: int | None = None            # version loaded in the validation entry, if any

    def __post_init__(self):
        check_model_name(self.model)
        vs = tuple(sorted({check_version(v) for v in self.versions}))
        if not vs:
            raise ConfigError(f"models.config: model {self.model!r} must keep at least one version loaded")
        object.__setattr__(self, "versions", vs)
        for label, v in self.labels.items():
            if not LABEL_RE.match(label):
                raise ConfigError(f"models.config: invalid label {label!r} (letters, digits, '_', '-')")
            if check_version(v) not in vs:
                raise ConfigError(f"models.config: label {label!r} -> {v} but version {v} is not among "
                                  f"the loaded versions {list(vs)} (TF Serving refuses labels on "
                                  f"versions that are not loaded)")
        if self.validate is not None:
            object.__setattr__(self, "validate", check_version(self.validate))
        if not self.base_path or ".." in self.base_path.split("/"):
            raise ConfigError(f"models.config: invalid base path {self.base_path!r}")


def apply_state(config: ServingConfig, state: ModelState) -> ServingConfig:
    """``config`` with ``state``'s main and validation entries replaced (others untouched)."""
    vname = validation_name(state.model)
    main = ModelEntry(state.model, state.base_path, "specific", state.versions,
                      tuple(sorted(state.labels.items())))
    val = (ModelEntry(vname, state.base_path, "specific", (state.validate,))
           if state.validate is not None else None)
    out: list[ModelEntry] = []
    placed_main = placed_val = False
    for e in config.entries:
        if e.name == state.model:
            out.append(main)
            placed_main = True
        elif e.name == vname:
            if val is not None:
                out.append(val)
                placed_val = True
        else:
            out.append(e)
    if not placed_main:
        out.append(main)
    if val is not None and not placed_val:
        out.append(val)
    return ServingConfig(tuple(out))


def state_of(config: ServingConfig, model: str) -> ModelState | None:
    """The managed state of ``model`` in ``config`` (None if absent or not a ``specific`` entry)."""
    main = config.entry(model)
    if main is None or main.policy != "specific" or not main.versions:
        return None
    val = config.entry(validation_name(model))
    validate = val.versions[0] if val is not None and val.policy == "specific" and val.versions else None
    return ModelState(model, main.base_path, main.versions, main.label_map, validate)


# --- protobuf text format -----------------------------------------------------------------
def _pb():
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


def to_proto(config: ServingConfig):
    from google.protobuf import text_format

    pb = _pb()
    msg = pb.ModelServerConfig()
    msg.model_config_list.SetInParent()
    for e in config.entries:
        c = msg.model_config_list.config.add()
        if e.raw is not None:
            text_format.Parse(e.raw, c)
            continue
        c.name = e.name
        c.base_path = e.base_path
        c.model_platform = e.platform
        policy = c.model_version_policy
        if e.policy == "specific":
            policy.specific.versions.extend(e.versions)
        elif e.policy == "latest":
            policy.latest.num_versions = e.versions[0] if e.versions else 1
        elif e.policy == "all":
            policy.all.SetInParent()
        for label, v in e.labels:
            c.version_labels[label] = v
    return msg


def render(config: ServingConfig) -> str:
    """The text TF Serving reads (deterministic: same state, same bytes)."""
    from google.protobuf import text_format

    return text_format.MessageToString(to_proto(config))


def _entry_from_proto(c) -> ModelEntry:
    from google.protobuf import text_format

    policy = c.model_version_policy.WhichOneof("policy_choice") if c.HasField("model_version_policy") else None
    labels = tuple(sorted((k, int(v)) for k, v in c.version_labels.items()))
    if policy == "specific":
        versions = tuple(int(v) for v in c.model_version_policy.specific.versions)
    elif policy == "latest":
        versions = (int(c.model_version_policy.latest.num_versions),)
    else:
        versions = ()
    return ModelEntry(c.name, c.base_path, policy or "default", versions, labels,
                      c.model_platform or PLATFORM, raw=text_format.MessageToString(c))


def parse(text: str, source: str = "models.config") -> ServingConfig:
    """Parse an existing file; a malformed one is one line naming it and the position."""
    from google.protobuf import text_format

    pb = _pb()
    msg = pb.ModelServerConfig()
    if text.strip():
        try:
            text_format.Parse(cpp_string_escapes(text), msg)     # as TF Serving reads it
        except (text_format.ParseError, ValueError) as exc:
            raise ConfigError(f"{source} is malformed ({exc}); fix it by hand or restore it from the "
                              f"last deploy (serving_sync will not overwrite a file it cannot read)") from None
    if msg.HasField("custom_model_config"):
        raise ConfigError(f"{source} uses custom_model_config, which serving_sync does not manage; "
                          f"use model_config_list")
    entries = tuple(_entry_from_proto(c) for c in msg.model_config_list.config)
    names = [e.name for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{source} lists model {dup!r} twice; TF Serving refuses duplicate names")
    return ServingConfig(tuple(replace(e, raw=None) if _managed_shape(e) else e for e in entries))


def _managed_shape(e: ModelEntry) -> bool:
    """Entries we can rebuild exactly from plain data keep no raw text (so they compare equal)."""
    from google.protobuf import text_format

    rebuilt = to_proto(ServingConfig((replace(e, raw=None),))).model_config_list.config[0]
    return e.raw is not None and text_format.MessageToString(rebuilt) == e.raw


_SIMPLE_ESCAPES = frozenset("abfnrtv\\'\"01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


def cpp_string_escapes(text: str) -> str:
    """``text`` with its string literals' escapes checked as protobuf's C++ tokenizer reads them
    (``io::Tokenizer::ConsumeString``), which TF Serving's ``TextFormat::ParseFromString`` uses:
    an escape it refuses (``\\d``, ``\\/``, ``\\N{...}``, ``\\8``) raises ValueError("line:col :
    message"); ``\\?`` (a ``?`` there) is returned as ``?``. Python's text_format kept those as a
    backslash and the character, so a file TF Serving refuses or reads otherwise parsed here (the
    same check as ``serving_host.config``'s, which may not import serving_sync)."""
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
