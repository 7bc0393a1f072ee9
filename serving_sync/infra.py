"""``mlops sync infra-validate``: load a candidate in a throw-away TF Serving before approval.

The candidate's SavedModel is published with the file transport into a temporary base, a
``models.config`` naming only that version is written, a throw-away server (started by the
caller: the real ``tensorflow/serving`` image or the local compatible server) loads it, and the
same smoke test as a deploy runs against it. The server and the temporary base are removed
afterwards. The only registry change is the ``infra_validation`` tag and a ledger row.

``choose_server`` is the pure decision for ``--server auto``; the servers themselves are
started by ``mlops.throwaway_server`` (the composition root), so this module stays free of them.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from mlops_common import log
from mlops_common.errors import ConfigError, reworded
from mlops_common.paths import full_disk_is_one_line, local_folder

from . import host_config
from . import manifest as mf
from . import models_config as mc
from .apply import wait_loaded
from .errors import DiskFull, SmokeFailed
from .golden import download_bundle
from .publish import publish
from .smoke import Check, SmokeOptions, SmokeReport, run_smoke
from .tfs_client import TFServingClient
from .transports.local import LocalTransport

logger = log.get("sync.infra")
SERVERS = ("auto", "docker", "local")
LEDGER_HOST = "infra-validate"


def choose_server(requested: str, docker_works: Callable[[], bool]) -> str:
    """``local`` as asked; ``docker`` as asked, refused where no Docker engine answers; ``auto``:
    docker when ``docker info`` works, else local."""
    if requested not in SERVERS:
        raise ConfigError(f"--server must be one of {', '.join(SERVERS)}, got {requested!r}")
    if requested == "auto":
        return "docker" if docker_works() else "local"
    if requested == "docker" and not docker_works():
        raise ConfigError("--server docker: no Docker engine answers here (`docker info` failed); use "
                          "--server local or auto")
    return requested


@dataclass
class ThrowawayServer:
    """What a started server tells us: where its REST API is and where it sees the base."""

    kind: str
    rest_url: str
    serving_base: str          # the base directory as the server sees it (docker: /models)
    exited: Callable[[], str | None] = lambda: None     # why it is gone for good; None while it runs


@dataclass
class InfraResult:
    model: str
    version: int
    server: str
    passed: bool = False
    error: str | None = None
    report: SmokeReport | None = None
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    rest_url: str | None = None          # of the throw-away server (gone afterwards)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "server": self.server, "passed": self.passed,
                "rest_url": self.rest_url,
                "error": self.error, "seconds": round(self.seconds, 3),
                "checks": [c.__dict__ for c in self.checks]}

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise SmokeFailed(f"infra validation of v{self.version} of '{self.model}' failed in {self.server} "
                              f"TF Serving: {self.error}")


ServerStarter = Callable[[Path], ContextManager[ThrowawayServer]]


def validate(model: str, version: int, *, server: str, start_server: ServerStarter,
             opts: SmokeOptions = SmokeOptions(), timeout: float = 120.0,
             workdir: str | None = None) -> InfraResult:
    """Publish, load and smoke-test ``version`` in a throw-away server; never raises for a failed
    check (the result says), only for problems before the server could be tried."""
    start = time.monotonic()
    result = InfraResult(model, version, server)
    what, tail = f"infra-validating v{version} of '{model}'", "nothing was recorded"
    with full_disk_is_one_line(what, workdir or tempfile.gettempdir(), tail=tail):
        tmp = Path(tempfile.mkdtemp(prefix="mlops-infra-", dir=workdir))
    try:
        bundle = download_bundle(model, version, tmp / "bundle")
        base = tmp / "serving"
        with _full_base_is_one_line(what, tmp, tail):
            base.mkdir()
            t = LocalTransport(base)
            publish(t, model, version, bundle.saved_model_dir,
                    mf.build(bundle.saved_model_dir, known=bundle.sha256))
            host_config.write(t, mc.ServingConfig())     # the server needs a valid file to start
        with start_server(base) as srv:
            result.rest_url = srv.rest_url
            cfg = mc.apply_state(mc.ServingConfig(), mc.ModelState(
                model, mc.model_base_path(srv.serving_base, model), (version,)))
            host_config.write(t, cfg)      # read at the server's next config poll
            client = TFServingClient(srv.rest_url)
            try:
                load = Check("load", True)
                t0 = time.monotonic()
                try:
                    wait_loaded(client, model, version, timeout=timeout, server_gone=srv.exited)
                    load.message = f"v{version} AVAILABLE in {srv.kind} TF Serving"
                except Exception as exc:  # noqa: BLE001 - reported as a failed check
                    load.passed, load.message = False, str(exc)
                load.seconds = time.monotonic() - t0
                result.checks.append(load)
                if load.passed:
                    result.report = run_smoke(client, f"{LEDGER_HOST} ({srv.kind})", model, bundle.golden,
                                              version, route_version=version, opts=opts)
                    result.checks += result.report.checks
            finally:
                client.close()
        result.passed = bool(result.checks) and all(c.passed for c in result.checks)
        if not result.passed:
            result.error = "; ".join(f"{c.name}: {c.message}" for c in result.checks if not c.passed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        result.seconds = time.monotonic() - start
    return result


@contextlib.contextmanager
def _full_base_is_one_line(what: str, tmp: Path, tail: str) -> Iterator[None]:
    """The temporary base is on this machine's disk (TMPDIR's): a full one says so and what to do,
    not a transport's line naming a folder gone by then and host retention."""
    try:
        with full_disk_is_one_line(what, tmp, tail=tail):
            yield
    except DiskFull as exc:
        where = local_folder(tmp)
        if exc.free is None:
            raise reworded(exc, f"{what}: no space left on the disk of {where} on this machine; free space "
                                f"there and rerun; {tail}") from None
        raise reworded(exc, f"{what}: not enough free space on the disk of {where} on this machine: "
                            f"{(exc.needed or 0) / 1e6:.1f} MB needed, {exc.free / 1e6:.1f} MB free; free space "
                            f"there and rerun; {tail}") from None


def validate_and_record(model: str, version: int, *, server: str, start_server: ServerStarter,
                        opts: SmokeOptions = SmokeOptions(), timeout: float = 120.0) -> InfraResult:
    """``mlops sync infra-validate``: ``validate``, then ``record`` the verdict in the registry."""
    result = validate(model, version, server=server, start_server=start_server, opts=opts, timeout=timeout)
    record(result)
    return result


def record(result: InfraResult) -> None:
    """Tag ``infra_validation=passed|failed`` and append a ``smoke_test`` ledger row."""
    from registry import description, tags, versions
    from registry.ledger import Ledger
    from registry.provenance import Provenance

    outcome = "passed" if result.passed else "failed"
    versions.set_tags(result.model, result.version, {tags.INFRA_VALIDATION: outcome})
    Ledger().record("smoke_test", result.model, outcome=outcome, to_version=result.version,
                    host=f"{LEDGER_HOST}:{result.server}", reason=result.error,
                    **Provenance.from_environment().row(), details={"check": "infra_validation", **result.to_dict()})
    description.refresh_quietly(result.model, result.version)     # the page the approver reads at `hold`
