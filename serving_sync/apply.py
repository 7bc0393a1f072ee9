"""Make TF Serving apply a models.config, and the bounded waits a deploy needs.

Order matters (serving_host/README.md): TF Serving re-applies the file at every poll, so the
file is written first (atomically) and then the same text is sent over gRPC
``HandleReloadConfigRequest`` when the host has ``grpc`` configured; without gRPC the next
config poll picks it up, and the waits that follow (bounded) see it.
"""
from __future__ import annotations

import time

from mlops_common import log

from . import cancel, host_config
from . import models_config as mc
from .tfs_client import WaitVerdict, gone_verdict
from .transports.base import Transport

logger = log.get("sync.apply")

# How long a version may still show as END (a clean unload from an earlier config) after we
# aspired it again, before we conclude TF Serving is not picking up the new config.
END_GRACE_SECONDS = 15.0


def apply_config(host, transport: Transport, config: mc.ServingConfig, *, timeout: float) -> tuple[str, bool]:
    """Write ``config`` (skipped when unchanged), then ask TF Serving to reload it over gRPC."""
    text, changed = host_config.write(transport, config)
    if changed:
        reload(host, text, timeout=timeout)
    return text, changed


def apply_text(host, transport: Transport, text: str, *, timeout: float) -> bool:
    """Write this exact models.config text back (the restore path) and reload; True if written.

    A failed gRPC reload is only logged here: the file is what TF Serving applies at its next
    poll, and the caller waits (bounded) for the state it expects either way.
    """
    from .errors import HostUnreachable, ServingError

    if not host_config.write_text(transport, text):
        return False
    try:
        reload(host, text, timeout=timeout)
    except (HostUnreachable, ServingError) as exc:
        logger.warning("%s: %s; relying on TF Serving's config poll", host.name, exc.message)
    return True


def reload(host, text: str, *, timeout: float) -> None:
    if host.grpc:
        from .tfs_reload import reload_config

        reload_config(host.grpc, text, timeout=timeout)


def load_verdict(statuses, version: int, *, waited: float, grace: float = END_GRACE_SECONDS) -> WaitVerdict:
    """Like ``tfs_client.available_verdict``, but a clean END (unloaded by an earlier config) is
    "not picked up yet" for ``grace`` seconds: re-aspiring an unloaded version is normal in a
    rollback, and without gRPC TF Serving only sees the new config at its next poll."""
    s = next((x for x in statuses if x.version == int(version)), None)
    if s is None:
        return WaitVerdict(False, detail="not known to TF Serving yet")
    if s.state == "AVAILABLE":
        return WaitVerdict(True)
    if s.state == "END":
        if s.failed:
            return WaitVerdict(False, True, s.error_message or f"error code {s.error_code}")
        if waited >= grace:
            return WaitVerdict(False, True, f"still unloaded after {grace:.0f}s: TF Serving has not picked up "
                                            f"the new models.config (check its --model_config_file and "
                                            f"poll interval, or configure grpc for the host)")
        return WaitVerdict(False, detail="unloaded (END), waiting for the new config to load it")
    return WaitVerdict(False, detail=s.state)


def _checked(check, cancellable: bool):
    """``check`` that first honours an interrupt request (see ``cancel``) when ``cancellable``."""
    if not cancellable:
        return check

    def run():
        cancel.check()
        return check()
    return run


def wait_loaded(client, entry: str, version: int, *, timeout: float, interval: float = 0.2,
                grace: float = END_GRACE_SECONDS, cancellable: bool = True) -> None:
    """Until ``entry`` version ``version`` is AVAILABLE (END with an error -> TF Serving's reason)."""
    start = time.monotonic()
    client.wait_until(f"loading {entry} version {version}",
                      _checked(lambda: load_verdict(client.model_status(entry), version,
                                                    waited=time.monotonic() - start, grace=grace), cancellable),
                      timeout=timeout, interval=interval)


def wait_label(client, model: str, label: str, version: int, *, timeout: float, interval: float = 0.1,
               cancellable: bool = True) -> None:
    """Until ``label`` of ``model`` points at ``version`` (read from the label's metadata)."""
    def check() -> WaitVerdict:
        current = client.label_version(model, label)
        return WaitVerdict(current == int(version), detail=f"{label} -> {current}")
    client.wait_until(f"pointing {model}@{label} at version {version}", _checked(check, cancellable),
                      timeout=timeout, interval=interval)


def wait_gone(client, model: str, versions, *, timeout: float, interval: float = 0.1,
              cancellable: bool = True) -> None:
    """Until each of ``versions`` is unloaded (so unversioned requests go to the highest left)."""
    for v in versions:
        client.wait_until(f"unloading {model} version {v}",
                          _checked(lambda v=v: gone_verdict(client.model_status(model), int(v)), cancellable),
                          timeout=timeout, interval=interval)
