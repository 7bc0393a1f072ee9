"""Fetching and verifying a deploy's version: the bundle or golden set from the registry, or a host's kept copy."""
from __future__ import annotations

from pathlib import Path

from mlops_common import log
from mlops_common.errors import UserError
from registry import bundle_hashes
from registry.artifacts import TFSERVING

from . import cancel
from . import manifest as mf
from .connections import connected
from .fleet_plan import observe_and_plan
from .golden import download_bundle, fetch_golden
from .host_run import HostRun
from .options import DeployOptions
from .publish import is_published, read_stored_manifest

logger = log.get("sync.fleet")


class Lazy:
    """The bundle / golden set, fetched once and only if a step needs it."""

    def __init__(self, model: str, version: int, workdir: Path):
        self.model, self.version, self.workdir = model, version, workdir
        self._bundle = None
        self._golden = None

    def bundle(self):
        if self._bundle is None:
            logger.info("downloading v%d of '%s' (SavedModel and golden set) from MLflow", self.version, self.model)
            # a SIGTERM stops the download at once, not at the first prepare step once it ended
            b = download_bundle(self.model, self.version, self.workdir / "bundle", check=cancel.check)
            self._bundle = (b.saved_model_dir, mf.build(b.saved_model_dir, known=b.sha256))
            self._golden = b.golden
        return self._bundle

    def golden(self):
        if self._golden is None:
            self._golden = fetch_golden(self.model, self.version)
        return self._golden


def fetch(model: str, v: int, runs: list[HostRun], lazy: Lazy) -> None:
    """What the prepare phase needs from the registry, before any host changes: the bundle when a
    host must be sent the SavedModel, else only the golden set. A host that already has ``v``
    published (not loaded: a rollback to a version kept on disk) and a stored manifest with
    exactly the SavedModel hashes recorded at registration has its copy verified
    against that manifest by its publish step (names, kinds, sizes, as after a download: the
    manifest was written only once the host's bytes matched it), then loaded and smoke-tested as
    always; it needs no download, and a host pulling from a shared store pulls nothing (its copy
    is on disk: ``fleet`` uploads to a store only for a host that lacks the version). A mismatch,
    an unreadable manifest or a version registered without hashes downloads as before."""
    present = [r for r in runs if r.plan.publishes and v in r.observed.obs.published]
    record = bundle_hashes.recorded(model, v) if present else None
    for run in present if record else ():
        if (stored := _matching_copy(run.host, run.transport, run.observed.obs, model, v, record)) is not None:
            run.use_bundle(_kept_copy(run, stored, lazy))
    if any(r.plan.publishes and not r.keeps_copy for r in runs):
        lazy.bundle()
    else:
        lazy.golden()


def _matching_copy(host, transport, obs, model: str, v: int, record: dict | None):
    """The host's stored manifest of ``v`` when ``fetch`` needs no download for it: published
    there (not loaded), the manifest exactly the registration's hashes; else None."""
    if record is None or v not in obs.published:
        return None
    try:
        stored = read_stored_manifest(transport, model, v)
    except UserError:
        return None
    return stored if stored is not None and mf.matches_record(stored, record, TFSERVING) else None


def needs_download(model: str, hosts, v: int, opts: DeployOptions) -> bool:
    """Whether a deploy of ``v`` to ``hosts`` now would download its SavedModel from the registry:
    some host publishes it and has no copy ``fetch`` would verify instead (changing nothing;
    a host that cannot be observed raises ``UserError``)."""
    with connected(hosts) as conns:
        observed, plans = observe_and_plan(conns, model, v, opts)
        publishing = [(c, o) for c, o, p in zip(conns, observed, plans) if p.publishes]
        record = bundle_hashes.recorded(model, v) if publishing else None
        return any(_matching_copy(c.host, c.transport, o.obs, model, v, record) is None for c, o in publishing)


def _kept_copy(run: HostRun, stored, lazy: Lazy):
    """``HostRun``'s bundle for a host whose copy of the version matches the registration: no
    folder to send, the stored manifest to verify it against; removed since it was observed, the
    version is downloaded after all."""
    def bundle():
        if is_published(run.transport, run.model, run.plan.desired, stored):
            return None, stored
        return lazy.bundle()
    return bundle
