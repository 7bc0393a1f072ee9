"""Register a logged model as a new version of a registered model, with lineage tags.

Every registration is also a ``register`` row in the ledger. The ledger is opened (and
migrated) before anything is registered, so a broken ``MLOPS_LEDGER_URL`` stops the command
before it creates a version the ledger would not know about.
"""
from __future__ import annotations

import secrets

from mlops_common import faultpoint, log
from mlops_common.errors import RefusedError, UserError, reworded

from . import bundle_hashes, versions
from . import tags as T
from .client import mlflow_errors, tracking_client
from .description import ensure_model_description, refresh_quietly
from .ledger import CREATED_MS, Entry, Ledger
from .provenance import Provenance

_log = log.get("registry.register")


def register_version(model_name: str, model_uri: str, *, run_id: str,
                     tags: dict[str, str] | None = None, description: str | None = None,
                     provenance: Provenance | None = None, bundle_files: dict[str, str] | None = None,
                     model_files: dict[str, str] | None = None) -> int:
    """Create version N of ``model_name`` from ``model_uri`` (a logged model); returns N.

    ``bundle_files``: the sha256 of every file the run logged under ``tfserving/`` and ``golden/``
    (``bundle_hashes.tree_files`` of the folder it logged), recorded in the ledger row so every
    later download is checked against it. ``model_files``: the same for the files of the logged
    model ``model_uri`` names (``bundle_hashes.model_files`` of it, read back after logging), so
    the gate scores the model that was registered (``bundle_hashes.check_model``).

    Tags: the caller's (dataset, retrained_from, ...), the commit and the CircleCI pipeline, and
    ``validation_status=pending``; the other CircleCI ids go to the ledger row (the description
    links the job from there), not to the narrow tag column. ``provenance``: who registers from
    where (default: the OS user in this job and checkout).
    """
    import mlflow

    ledger = Ledger()
    client = tracking_client()
    by = provenance or Provenance.from_environment()
    # this call's mark on what it creates: MLflow's retried copies of its request carry it too,
    # another command registering the same run at once does not (its version is not ours to delete)
    call = secrets.token_hex(6)
    all_tags = {T.VALIDATION_STATUS: "pending", **(tags or {}), T.REGISTER_CALL: call}
    if by.git_commit:
        all_tags[T.GIT_COMMIT] = by.git_commit
    if by.pipeline_id:
        all_tags[T.PIPELINE_ID] = by.pipeline_id
    # MLflow creates the version in one request of several (the registered model, the version, its
    # wait, a tag on the logged model, our description): whichever fails, no version stays
    # without its ledger row. The run's versions from before tell a version this call created.
    before = versions.versions_of_run(model_name, run_id, what=f"registering a version of '{model_name}'")
    version = None
    try:
        with mlflow_errors(f"registering a version of '{model_name}'"):
            mv = mlflow.register_model(model_uri, model_name, tags=all_tags, await_registration_for=300)
            version = int(mv.version)
            if description:
                client.update_model_version(model_name, mv.version, description=description)
        _remove_retried_copies(client, model_name, run_id, before, version, call)
        faultpoint.reached("register:after_version")
        ledger.append(Entry(
            action="register", model=model_name, outcome="ok", to_version=version,
            **by.row(),
            details={"run_id": mv.run_id or run_id, "model_uri": model_uri,
                     **({CREATED_MS: int(mv.creation_timestamp)} if mv.creation_timestamp else {}),
                     **{k: v for k, v in all_tags.items()
                        if k in (T.DATASET, T.DATASET_FINGERPRINT, T.RETRAINED_FROM, T.GIT_COMMIT)},
                     **({"ci": dict(by.ci)} if by.ci else {}),
                     **({"bundle_files": dict(bundle_files), "bundle_sha256": bundle_hashes.digest(bundle_files)}
                        if bundle_files else {}),
                     **({"model_files": dict(model_files), "model_sha256": bundle_hashes.digest(model_files)}
                        if model_files else {})}))
    except BaseException as exc:      # a signal, a ledger or server that stopped answering
        # every version of the run since ``before``, not only the one MLflow answered with: a retried
        # creation (its first answer lost) made more, which a later failure left behind otherwise
        since = _created_by(model_name, run_id, call)
        created = since if version is None else (since or set()) | {version}
        if created is None:           # whether MLflow created one cannot be read now
            if isinstance(exc, UserError):
                raise reworded(exc, f"{exc.message}; a version of '{model_name}' from run {run_id} may be "
                                    f"registered without its ledger row (its files are unchecked): look for it "
                                    f"in MLflow and delete it") from None
            raise
        kept = sorted(v for v in created if not _unregister(client, model_name, v))
        if created and isinstance(exc, UserError):
            one = len(created) == 1
            raise reworded(exc, f"{exc.message}; {_numbered(sorted(created), model_name)} " + (
                f"{'was' if one else 'were'} removed again: nothing is registered" if not kept else
                f"{'is' if one else 'are'} registered without {'its' if one else 'a'} ledger row (its files are "
                f"unchecked): delete {'it' if one else _numbered(kept, model_name)} in MLflow")) from None
        raise
    # the block built from the ledger, as after every step; the caller's own words stay below it
    refresh_quietly(model_name, version)
    try:
        ensure_model_description(model_name)
    except Exception as exc:  # noqa: BLE001 - a description is a view; the version is registered
        _log.warning("could not write the description of registered model '%s': %s", model_name, exc)
    return version


def _remove_retried_copies(client, model_name: str, run_id: str, before: set[int], version: int,
                           call: str) -> None:
    """Delete the versions of the run this call created besides ``version``: MLflow's client
    retries a creation whose answer was lost (a proxy's 502/504 after the server committed it),
    and each try that reached the server made a version, which no ledger row would know. A
    version of the run that another command created meanwhile (another ``register_call``) is not
    ours to delete: when its number is lower, this call's version is the one that goes
    (``RefusedError``, and the caller removes it); the lowest stays, whichever call checks first."""
    found = _run_versions(model_name, run_id)
    if found is None:
        _log.warning("could not check whether MLflow created more than version %s of '%s' from run %s (a "
                     "retried request); `mlops registry status` lists every version", version, model_name, run_id)
        return
    for v in sorted(v for v, c in found.items() if c == call and v != version):
        if not _unregister(client, model_name, v):
            _log.warning("version %s of '%s' (a retried request's copy of version %s) has no ledger row and "
                         "could not be removed: delete it in MLflow", v, model_name, version)
    earlier = sorted(v for v, c in found.items() if c != call and v not in before and v < version)
    if earlier:
        raise RefusedError(f"run {run_id} was registered meanwhile as version {earlier[0]} of '{model_name}' by "
                           f"another command")


def _run_versions(model_name: str, run_id: str) -> dict[int, str | None] | None:
    """The versions of ``model_name`` registered from ``run_id``, each with the call that created
    it; None when the registry cannot say."""
    try:
        return versions.run_versions_tagged(model_name, run_id, T.REGISTER_CALL)
    except Exception:  # noqa: BLE001 - the first error is the one to report
        return None


def _created_by(model_name: str, run_id: str, call: str) -> set[int] | None:
    """The versions of ``model_name`` registered from ``run_id`` by this call (its retried
    copies included); None when the registry cannot say."""
    found = _run_versions(model_name, run_id)
    return None if found is None else {v for v, c in found.items() if c == call}


def _numbered(numbers: list[int], model_name: str) -> str:
    if len(numbers) == 1:
        return f"version {numbers[0]} of '{model_name}'"
    return f"versions {', '.join(map(str, numbers))} of '{model_name}'"


def _unregister(client, model_name: str, version: int) -> bool:
    """Delete the version just created (nobody has gated or promoted it yet); False if MLflow
    would not (it is then said in the error line)."""
    try:
        client.delete_model_version(model_name, str(version))
        _log.warning("version %s of '%s' removed again: it has no ledger row", version, model_name)
        return True
    except Exception:  # noqa: BLE001 - the first error is the one to report
        return False
