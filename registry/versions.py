"""Reading and tagging registered model versions, and fetching what a version serves.

Everything here returns plain data (``VersionInfo``, ``Bundle``, dicts) so that callers
(gate, promotion, serving_sync) decide on values, not on MLflow objects. Unknown models and
versions end as one ``NotFoundError`` line that says which one and what exists.

Aliases, versions, tags and artifacts behind the tracking server's proxy go through MLflow's
REST API (``registry.rest``): no ``import mlflow`` (over a second) on the rollback and deploy
paths. Artifact stores the server does not proxy go through MLflow's client.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable

from mlops_common import paths, settings
from mlops_common.errors import ConfigError, ConnectionFailure, NotFoundError, RefusedError

from . import artifacts, bundle_hashes
from . import tags as T
from .client import mlflow_errors, tracking_client
from .rest import MlflowRest, rest

PRODUCTION = "production"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version as plain data."""

    model: str
    version: int
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    created_at: datetime
    description: str | None = None

    @property
    def validation_status(self) -> str:
        return self.tags.get(T.VALIDATION_STATUS, "pending")

    @property
    def deploy_status(self) -> str | None:
        return self.tags.get(T.DEPLOY_STATUS)

    @property
    def created_ms(self) -> int:
        """MLflow's ``creation_timestamp`` (ms): what a ``register`` ledger row keeps as ``created_ms``."""
        return round(self.created_at.timestamp() * 1000)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "run_id": self.run_id,
                "source": self.source, "tags": dict(self.tags), "aliases": list(self.aliases),
                "created_at": self.created_at.isoformat(), "description": self.description}


@dataclass(frozen=True)
class Bundle:
    """What a version serves, downloaded: the SavedModel folder and the golden smoke set."""

    saved_model_dir: Path
    golden_request: dict
    golden_response: dict
    signature: dict
    sha256: dict[str, str] | None = None   # of each SavedModel file (relative to it), as checked


def parse_version(version) -> int:
    """A version number from user input, or one clear line (ASCII digits only: ``int()`` reads
    "0_3" as 3 and a full-width "３" as 3, and a promotion moved production to a version nobody typed)."""
    text = str(version).strip()
    if isinstance(version, bool) or not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ConfigError(f"'{version}' is not a version number; use a positive integer such as 3")
    v = int(text)
    if v < 1:
        raise ConfigError(f"version numbers start at 1, got {v}")
    if v > 2**63 - 1:       # MLflow's stores keep 64-bit integers: the server answered 500, five times
        raise ConfigError(f"{v} is larger than any version number (at most 2**63 - 1)")
    return v


def _info(mv: dict, aliases_by_version: dict[int, list[str]] | None = None) -> VersionInfo:
    """A version from MLflow's REST JSON (``model_version``)."""
    v = int(mv["version"])
    aliases = tuple(sorted(aliases_by_version.get(v, ()) if aliases_by_version is not None
                           else (mv.get("aliases") or ())))
    return VersionInfo(model=mv["name"], version=v, run_id=mv.get("run_id") or None, source=mv.get("source") or "",
                       tags={t["key"]: t.get("value", "") for t in mv.get("tags") or ()}, aliases=aliases,
                       created_at=datetime.fromtimestamp(int(mv.get("creation_timestamp") or 0) / 1000,
                                                         timezone.utc),
                       description=mv.get("description") or None)


def equals_clause(field: str, value: str) -> str:
    """A search-filter clause for ``field`` equal to ``value``, as MLflow's parser reads it: the
    text between the quotes is taken as it is (a backslash escapes nothing, so ``it\\'s`` was
    searched for with its backslash and a model named ``it's a model`` had no versions). The
    value is quoted with the quote it does not hold; holding both, it becomes a LIKE pattern
    with each quote and backslash a one-character wildcard, a superset the caller narrows to
    exact matches (``_search(..., keep=)``)."""
    value = str(value)
    if "'" not in value:
        return f"{field} = '{value}'"
    if '"' not in value:
        return f'{field} = "{value}"'
    pattern = value.replace("'", "_").replace("\\", "_")
    return f"{field} LIKE '{pattern}'"


def registered_model_aliases(model: str) -> dict[str, int]:
    """``{alias: version}`` of ``model`` (NotFoundError if the model does not exist)."""
    def missing():
        return NotFoundError(f"registered model '{model}' does not exist in the MLflow registry at "
                             f"{settings.tracking_uri()}; check --model-name / MLOPS_MODEL_NAME "
                             f"or register a version first (mlops train)")
    doc = rest().get("registered-models/get", {"name": model}, what=f"reading registered model '{model}'",
                     missing=missing)
    return {a["alias"]: int(a["version"]) for a in (doc.get("registered_model") or {}).get("aliases") or ()}


def model_created_ms(model: str) -> int | None:
    """When MLflow created the registered model now named ``model`` (its ``creation_timestamp``,
    ms, the server's clock): a model deleted and created again under the name has a later one.
    None when there is no such model (or the server does not say)."""
    try:
        doc = rest().get("registered-models/get", {"name": model}, what=f"reading registered model '{model}'",
                         missing=lambda: NotFoundError(""))
    except NotFoundError:
        return None
    ms = (doc.get("registered_model") or {}).get("creation_timestamp")
    return int(ms) if isinstance(ms, (int, str)) and str(ms).isdigit() else None


def _by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, v in aliases.items():
        out.setdefault(v, []).append(alias)
    return out


def get_version(model: str, version, *, aliases: dict[str, int] | None = None) -> VersionInfo:
    """Version ``version`` of ``model`` (NotFoundError naming the model or the version).

    ``aliases``: the model's ``{alias: version}`` if the caller just read them (saves a request).
    """
    v = parse_version(version)
    if aliases is None:
        aliases = registered_model_aliases(model)  # also: clear error for an unknown model

    def missing():
        latest = latest_version_number(model)
        hint = f"the latest is {latest}" if latest else "it has no versions yet"
        return NotFoundError(f"version {v} of registered model '{model}' does not exist "
                             f"({hint}); see `mlops registry status`")
    return _info(_version_doc(model, v, missing)["model_version"], _by_version(aliases))


def _version_doc(model: str, v: int, missing: Callable[[], Exception]) -> dict:
    """MLflow's ``model-versions/get`` answer for version ``v`` (``missing()`` is raised if none)."""
    return rest().get("model-versions/get", {"name": model, "version": str(v)},
                      what=f"reading version {v} of '{model}'", missing=missing)


def version_exists(model: str, version: int) -> bool:
    """Whether version ``version`` of ``model`` is in the registry (it may have been deleted): one
    request (``get_version`` also reads the aliases, and its "not found" line searches versions)."""
    try:
        _version_doc(model, parse_version(version), lambda: NotFoundError(""))
    except NotFoundError:
        return False
    return True


SEARCH_PAGE = 1000
# MLflow pages by offset, by default in ``last_updated_timestamp`` order, which a description write
# changes: a version updated while the pages were read moved to a page already read (skipped).
# Name and number never change, and a new version comes last.
SEARCH_ORDER = ["name ASC", "version_number ASC"]


def _search(filter_string: str, what: str, keep: Callable[[dict], bool]) -> list[dict]:
    """Every version the filter finds (bounded pagination) that ``keep`` accepts."""
    out, token = [], None
    for _ in range(1000):  # bounded pagination
        params = {"filter": filter_string, "max_results": SEARCH_PAGE, "order_by": SEARCH_ORDER}
        if token:
            params["page_token"] = token
        doc = rest().get("model-versions/search", params, what=what)
        out.extend(mv for mv in doc.get("model_versions") or () if keep(mv))
        token = doc.get("next_page_token")
        if not token:
            break
    return out


def list_versions(model: str) -> list[VersionInfo]:
    """Every version of ``model``, newest first, with its aliases."""
    aliases = registered_model_aliases(model)
    found = _search(equals_clause("name", model), f"listing versions of '{model}'", _named(model))
    return sorted((_info(mv, _by_version(aliases)) for mv in found), key=lambda i: -i.version)


def _named(model: str) -> Callable[[dict], bool]:
    return lambda mv: mv.get("name") == model


def versions_of_run(model: str, run_id: str, *, what: str | None = None) -> set[int]:
    """Numbers of the versions of ``model`` registered from run ``run_id`` (``what``: the step
    named in an error)."""
    found = _search(f"{equals_clause('name', model)} and {equals_clause('run_id', run_id)}",
                    what or f"listing versions of '{model}'", _named(model))
    return {int(mv["version"]) for mv in found if mv.get("run_id") == run_id}


def run_versions_tagged(model: str, run_id: str, key: str) -> dict[int, str | None]:
    """The versions of ``model`` registered from run ``run_id``, each with its tag ``key`` (None
    when it has none)."""
    found = _search(f"{equals_clause('name', model)} and {equals_clause('run_id', run_id)}",
                    f"listing versions of '{model}'", _named(model))
    return {int(mv["version"]): next((t.get("value") for t in mv.get("tags") or () if t.get("key") == key), None)
            for mv in found if mv.get("run_id") == run_id}


def latest_version_number(model: str) -> int | None:
    found = _search(equals_clause("name", model), f"listing versions of '{model}'", _named(model))
    return max((int(mv["version"]) for mv in found), default=None)


def find_by_tag(key: str, value: str) -> list[VersionInfo]:
    """Versions of any registered model whose tag ``key`` equals ``value``."""
    def tagged(mv: dict) -> bool:
        return any(t.get("key") == key and t.get("value") == value for t in mv.get("tags") or ())

    found = _search(equals_clause(f"tags.`{key}`", value), f"searching versions tagged {key}={value}", tagged)
    return sorted((_info(mv, {}) for mv in found), key=lambda i: (i.model, i.version))


def production_version(model: str) -> int | None:
    """The version ``production`` points at, or None when nothing has been promoted yet."""
    return registered_model_aliases(model).get(PRODUCTION)


def set_tags(model: str, version, tags: dict[str, str]) -> None:
    """Set version tags (values must not contain a secret: refused if they do)."""
    v = parse_version(version)
    secrets = settings.secret_values()
    for key, value in tags.items():
        if any(s in str(value) or s in key for s in secrets):
            raise RefusedError(f"refusing to write tag '{key}' on version {v} of '{model}': its value "
                               f"contains the value of a secret environment variable")
    client = rest()
    for key, value in tags.items():
        client.post("model-versions/set-tag", {"name": model, "version": str(v), "key": key, "value": str(value)},
                    what=f"tagging version {v} of '{model}'")


def delete_tags(model: str, version, keys) -> None:
    """Remove version tags (each one the version carries: MLflow refuses a missing one)."""
    v = parse_version(version)
    client = rest()
    for key in keys:
        client.delete("model-versions/delete-tag", {"name": model, "version": str(v), "key": key},
                      what=f"removing tag '{key}' of version {v} of '{model}'")


def set_alias(model: str, alias: str, version: int) -> None:
    rest().post("registered-models/alias", {"name": model, "alias": alias, "version": str(version)},
                what=f"pointing alias '{alias}' of '{model}' at version {version}")


def delete_alias(model: str, alias: str) -> None:
    rest().delete("registered-models/alias", {"name": model, "alias": alias},
                  what=f"removing alias '{alias}' of '{model}'")


RUNS_PER_SEARCH = 100


def runs_metrics(run_ids) -> dict[str, dict[str, float]]:
    """Final metric values (e.g. ``heldout_accuracy``) of many runs, in a few requests:
    ``runs/search`` with ``attributes.run_id IN (...)``, ``RUNS_PER_SEARCH`` ids a request, over
    every experiment (a version does not say which experiment its run is in). One ``runs/get``
    per version made ``registry status`` take 12 s for 1,200 versions on loopback, and grow
    with every version. A deleted run is absent from the answer."""
    ids = sorted({r for r in run_ids if r})
    if not ids:
        return {}
    experiments, token = [], None
    for _ in range(1000):  # bounded pagination
        params = {"max_results": 1000, "view_type": "ALL", **({"page_token": token} if token else {})}
        doc = rest().get("experiments/search", params, what="listing experiments")
        experiments += [e["experiment_id"] for e in doc.get("experiments") or ()]
        token = doc.get("next_page_token")
        if not token:
            break
    out: dict[str, dict[str, float]] = {}
    for i in range(0, len(ids), RUNS_PER_SEARCH):
        chunk = ids[i:i + RUNS_PER_SEARCH]
        body = {"experiment_ids": experiments, "max_results": len(chunk), "run_view_type": "ALL",
                "filter": "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in chunk) + ")"}
        doc = rest().post("runs/search", body, what=f"reading the metrics of {len(chunk)} runs")
        for run in doc.get("runs") or ():
            out[run["info"]["run_id"]] = {m["key"]: _metric_value(m.get("value"))
                                          for m in (run.get("data") or {}).get("metrics") or ()}
    return out


def _metric_value(value):
    """A metric's value from MLflow's REST answer, a float: proto3 JSON writes a NaN or infinite
    double as the string ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"`` (``registry status``
    formatted the string as a number: a traceback)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value


@lru_cache(maxsize=256)
def _artifact_root(tracking_uri: str, run_id: str) -> str:
    """Where a run's artifacts live (``mlflow-artifacts:/...``, ``s3://...``); it never changes."""
    doc = rest().get("runs/get", {"run_id": run_id}, what=f"reading run {run_id}")
    return str(((doc.get("run") or {}).get("info") or {}).get("artifact_uri") or "")


def artifact_root(run_id: str) -> str:
    return _artifact_root(settings.tracking_uri(), run_id)


def run_artifact_bytes(run_id: str, path: str) -> bytes | None:
    """A run's artifact as stored; None if the run has no such artifact.

    Artifacts behind the tracking server's proxy (the default of ``mlflow server``) are read with
    one REST request; other stores through MLflow's client.
    """
    what = f"reading artifact {path} of run {run_id}"
    root = artifact_root(run_id)
    if MlflowRest.proxied(root):
        return rest().artifact_bytes(root, path, what=what)
    client = tracking_client()
    parent = os.path.dirname(path)
    with mlflow_errors(what):
        listed = {f.path for f in client.list_artifacts(run_id, parent or None)}
        if path not in listed:
            return None
        with tempfile.TemporaryDirectory(prefix="mlops-artifact-") as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


def _artifact_doc(data: bytes, run_id: str, path: str) -> dict:
    try:
        return json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        raise ConfigError(f"artifact {path} of run {run_id} is not valid JSON; re-log it") from None


def run_artifact_json(run_id: str, path: str) -> dict | None:
    """A JSON artifact of a run, parsed; None if the run has no such artifact."""
    data = run_artifact_bytes(run_id, path)
    return None if data is None else _artifact_doc(data, run_id, path)


def bundle_artifact_json(model: str, info: "VersionInfo", path: str, *, unchanged: str, ledger=None) -> dict | None:
    """A JSON file of a version's bundle (``golden/signature.json``), checked against the hash
    recorded at registration (``unchanged``: what did not happen when it was changed, for the
    line); None when the run has no such file."""
    if not info.run_id:
        return None
    data = run_artifact_bytes(info.run_id, path)
    if data is None:
        return None
    bundle_hashes.check_files(model, info.version, {path: data}, ledger, unchanged=unchanged,
                              created_ms=info.created_ms)
    return _artifact_doc(data, info.run_id, path)


GOLDEN_NAMES = artifacts.GOLDEN_NAMES


def golden_set(model: str, version) -> dict[str, dict]:
    """``{"request": ..., "response": ..., "signature": ...}`` of a version's ``golden/``, checked
    against the hashes recorded at registration (a switch to a version already on the hosts is
    verified with this alone, so it must be what the version was gated with)."""
    info = get_version(model, version)
    if not info.run_id:
        raise NotFoundError(f"version {info.version} of '{model}' has no source run, so it has no golden "
                            f"set; register versions with mlops train")
    raw = {}
    for name in GOLDEN_NAMES:
        data = run_artifact_bytes(info.run_id, artifacts.golden_path(name))
        if data is None:
            raise NotFoundError(f"version {info.version} of '{model}': golden/{name}.json is missing from "
                                f"its run's artifacts; re-train and register it")
        raw[artifacts.golden_path(name)] = data
    bundle_hashes.check_files(model, info.version, raw, created_ms=info.created_ms)
    return {name: _artifact_doc(raw[artifacts.golden_path(name)], info.run_id, artifacts.golden_path(name))
            for name in GOLDEN_NAMES}


def download_logged_model(uri: str, dest) -> Path:
    """The files of the logged MLflow model ``uri`` (``models:/<name>/<version>``, ``models:/m-...``)
    downloaded into the existing folder ``dest`` with MLflow's client (whatever store holds them);
    the folder they are in. Check them with ``bundle_hashes.check_model`` before using them."""
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))


def log_run_text(run_id: str, text: str, artifact_file: str) -> None:
    """Attach a text artifact (e.g. the gate report) to a run, even a finished one."""
    client = tracking_client()
    what = f"logging {artifact_file} to run {run_id}"
    # MLflow writes the text to a file in TMPDIR before uploading it: a full one is this machine's
    with mlflow_errors(what), paths.full_disk_is_one_line(what, tempfile.gettempdir()):
        client.log_text(run_id, text, artifact_file)


def download_bundle(model: str, version, dest, *, check: Callable[[], None] | None = None) -> Bundle:
    """Download the ``tfserving/`` and ``golden/`` artifacts of a version's run into ``dest``.

    ``dest`` ends up holding ``tfserving/`` and ``golden/``; the download goes to a temporary
    folder next to it first, so a failure never leaves a half-written bundle behind.
    ``check`` (a deploy's interrupt: raises to stop) is called at least every tenth of a second
    while the files come through the server's artifact proxy (the download stops at once, its
    threads left to end at their next chunk), and between the parts otherwise.
    """
    check = check or _go_on
    info = get_version(model, version)
    if not info.run_id:
        raise NotFoundError(f"version {info.version} of '{model}' has no source run, so it has no "
                            f"tfserving/ and golden/ artifacts; register versions with mlops train")
    dest = Path(dest)
    what = f"downloading the artifacts of version {info.version} of '{model}'"
    # a full disk here is this machine's, not the version's: one line saying where to free space
    full = functools.partial(paths.full_disk_is_one_line, what, dest.parent,
                             tail="the version is not at fault; nothing was kept")
    with full():
        dest.parent.mkdir(parents=True, exist_ok=True)
        root = artifact_root(info.run_id)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.incoming-", dir=dest.parent))
        try:
            if MlflowRest.proxied(root):
                _download_proxied(info, root, tmp, what, check)
            else:
                client = tracking_client()
                with mlflow_errors(what), full():   # MLflow's download error names ENOSPC
                    _refuse_missing(info, {f.path for f in client.list_artifacts(info.run_id)})
                    for sub in BUNDLE_PARTS:
                        check()
                        client.download_artifacts(info.run_id, sub, str(tmp))
            check()
            # the bytes registered, not the store's now
            hashes = bundle_hashes.check(model, info.version, tmp, created_ms=info.created_ms)
            bundle = _read_bundle(tmp, model, info.version)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    saved = {path.removeprefix(f"{artifacts.TFSERVING}/"): sha for path, sha in (hashes or {}).items()
             if path.startswith(f"{artifacts.TFSERVING}/")}
    return Bundle(saved_model_dir=dest / artifacts.TFSERVING, golden_request=bundle.golden_request,
                  golden_response=bundle.golden_response, signature=bundle.signature,
                  sha256=saved if hashes is not None else None)


BUNDLE_PARTS = bundle_hashes.PARTS
DOWNLOAD_THREADS = 8
JOIN_S = 1.0        # how long a stopped download's threads are waited for


def _refuse_missing(info: VersionInfo, top: set[str]) -> None:
    missing = [p for p in BUNDLE_PARTS if p not in top]
    if missing:
        raise NotFoundError(f"run {info.run_id} of version {info.version} of '{info.model}' has no "
                            f"{' or '.join(p + '/' for p in missing)} artifact; it was not logged "
                            f"by mlproject's training, re-train and register it")


def missing_artifacts(model: str, version, *, max_entries: int = 100_000) -> list[str]:
    """What of ``version``'s ``tfserving/`` and ``golden/`` its run's artifacts lack now, from a
    listing (no download): the files recorded at registration that are not listed, or (registered
    without a record) a part with no file at all. ``mlops sync rollback`` asks before production
    moves: a version whose artifacts were deleted from the store cannot be installed on a host. A
    run that no longer exists (deleted, then removed for good by ``mlflow gc``, its artifacts with
    it) lacks both parts."""
    info = get_version(model, version)
    if not info.run_id:
        return [f"{p}/" for p in BUNDLE_PARTS]
    what = f"listing the artifacts of version {info.version} of '{model}'"
    try:
        root = artifact_root(info.run_id)
    except NotFoundError:       # not a listing that could not be read: there is nothing to list
        return [f"{p}/" for p in BUNDLE_PARTS]
    if MlflowRest.proxied(root):
        client = rest()
        have = {f["path"] for p in BUNDLE_PARTS for f in client.artifact_files(info.run_id, p, what=what)}
    else:
        client, have, todo = tracking_client(), set(), list(BUNDLE_PARTS)
        with mlflow_errors(what):
            while todo and len(have) + len(todo) <= max_entries:
                for f in client.list_artifacts(info.run_id, todo.pop()):
                    (todo.append if f.is_dir else have.add)(f.path)
    expected = bundle_hashes.recorded(model, info.version, created_ms=info.created_ms)
    if expected:
        return sorted(p for p in expected if p not in have)
    return [f"{p}/" for p in BUNDLE_PARTS if not any(h.startswith(f"{p}/") for h in have)]


def _go_on() -> None:
    """``download_bundle``'s ``check`` when none is given: nothing stops it."""


def _download_proxied(info: VersionInfo, root: str, into: Path, what: str, check: Callable[[], None]) -> None:
    """Every file of the bundle through the server's artifact proxy, several at a time, each
    checked against the size the listing gave. The downloads run in daemon threads while this
    one calls ``check``: when it raises (or a download fails), the others stop at their next
    chunk, waited for at most ``JOIN_S`` (one stalled on its socket is left to its timeout, and
    the process's exit does not wait for it)."""
    import queue
    import threading

    client = rest()
    top = client.get("artifacts/list", {"run_id": info.run_id}, what=what)
    _refuse_missing(info, {f["path"] for f in top.get("files") or () if f.get("is_dir")})
    files = [f for part in BUNDLE_PARTS for f in client.artifact_files(info.run_id, part, what=what)]
    for f in files:
        if ".." in Path(f["path"]).parts or Path(f["path"]).is_absolute():
            raise ConfigError(f"{what}: the artifact listing names an unsafe path {f['path']!r}")
        (into / f["path"]).parent.mkdir(parents=True, exist_ok=True)

    def fetch(f: dict) -> None:
        size = client.artifact_to_file(root, f["path"], str(into / f["path"]), what=what, stop=stopped.is_set)
        if size != f["file_size"]:
            raise ConnectionFailure(f"{what}: {f['path']} arrived with {size} of {f['file_size']} bytes; retry")

    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: queue.SimpleQueue = queue.SimpleQueue()
    stopped = threading.Event()
    for f in files:
        todo.put(f)

    def worker() -> None:
        while not stopped.is_set():
            try:
                f = todo.get_nowait()
            except queue.Empty:
                return
            try:
                fetch(f)
                done.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                done.put(exc)

    threads = [threading.Thread(target=worker, name=f"download-{i}", daemon=True)
               for i in range(min(DOWNLOAD_THREADS, len(files)))]
    for t in threads:
        t.start()
    try:
        for _ in files:
            while True:
                check()
                try:
                    exc = done.get(timeout=0.1)
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
    finally:
        stopped.set()       # on a failure or an interrupt: the other downloads stop too
        # at their next chunk, mostly within this second: the caller then removes their folder
        # without them still writing into it (one stalled on its socket is left to its timeout)
        deadline = time.monotonic() + JOIN_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


def _read_bundle(root: Path, model: str, version: int) -> Bundle:
    where = f"version {version} of '{model}'"
    if not (root / artifacts.TFSERVING / "saved_model.pb").is_file():
        raise NotFoundError(f"{where}: tfserving/ has no saved_model.pb; it is not a SavedModel")
    docs = {}
    for name in GOLDEN_NAMES:
        path = root / artifacts.golden_path(name)
        if not path.is_file():
            raise NotFoundError(f"{where}: golden/{name}.json is missing from its run's artifacts")
        try:
            docs[name] = json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{where}: golden/{name}.json is not valid JSON") from None
    return Bundle(root / artifacts.TFSERVING, docs["request"], docs["response"], docs["signature"])
