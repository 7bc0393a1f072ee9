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
from .errors import HostUnreachable
from .tfs_client import WaitVerdict, available_verdict, gone_verdict
from .transports.base import Transport

logger = log.get("sync.apply")

# How long a version may still show as END (a clean unload from an earlier config) after we
# aspired it again, before we conclude TF Serving is not picking up the new config.
END_GRACE_SECONDS = 15.0


def apply_config(host, transport: Transport, config: mc.ServingConfig, *, timeout: float,
                 known: mc.ServingConfig | None = None, stale: bool = False) -> tuple[str, bool]:
    """Write ``config`` (skipped when unchanged), then ask TF Serving to reload it over gRPC.
    ``known``: the config this deploy last applied there (``host_config.write_text``). ``stale``:
    TF Serving was seen not to serve what the file holds (``plan.applied``): reload even when
    the file is unchanged (a killed deploy wrote it and never reloaded)."""
    text, changed = host_config.write(transport, config, known=known)
    if changed or stale:
        reload(host, text, timeout=timeout)
    return text, changed


def refused_label(exc: Exception) -> bool:
    """TF Serving refused a config because a label names a version that is not AVAILABLE."""
    msg = getattr(exc, "message", str(exc))
    return "FAILED_PRECONDITION" in msg and "not currently available for inference" in msg


def apply_config_over(host, transport: Transport, config: mc.ServingConfig, previous: mc.ServingConfig,
                      client, *, timeout: float, interval: float = 0.2, stale: bool = False) -> tuple[str, bool]:
    """``apply_config``, and once more if TF Serving's config poll undid ``previous`` meanwhile.

    TF Serving's poll thread reads models.config *outside* the config lock (server.cc
    ``PollFilesystemAndReloadConfig``), and a reload that adds a model holds that lock until the
    model loads. So a poll that read the file just before our last write can apply that older text
    right after our reload and unload the version we loaded (seen once: a first deploy of a
    100 MB model to 8 hosts, refused at the switch). The switch's labels then name a version
    that is not AVAILABLE and TF Serving refuses them — from the file too, on every poll. Here,
    when every labelled version was loaded by ``previous`` (what this host applied last): put
    ``previous`` back, wait (bounded) until those versions are AVAILABLE, and apply ``config``
    again, once. Any other refusal is raised at once."""
    from .errors import ServingError

    needed = {(e.name, v) for e in config.entries for _, v in e.labels}
    loaded_before = {(e.name, v) for e in previous.entries for v in e.versions}
    try:
        return apply_config(host, transport, config, timeout=timeout, known=previous, stale=stale)
    except ServingError as exc:
        if not refused_label(exc) or not needed <= loaded_before:
            raise           # not that race: a label on a version the previous config did not load
        logger.warning("%s: %s; TF Serving's config poll may have re-applied an older models.config: "
                       "applying the previous one again, then this one", host.name, exc.message)
    apply_config(host, transport, previous, timeout=timeout, known=config)
    for name, v in sorted(needed):
        wait_loaded(client, name, v, timeout=timeout, interval=interval)
    return apply_config(host, transport, config, timeout=timeout, known=previous, stale=stale)


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


def load_verdict(statuses, version: int, *, waited: float, grace: float = END_GRACE_SECONDS,
                 moved: bool = True) -> WaitVerdict:
    """Like ``tfs_client.available_verdict``, but a clean END (unloaded by an earlier config) is
    "not picked up yet" for ``grace`` seconds: re-aspiring an unloaded version is normal in a
    rollback, and without gRPC TF Serving only sees the new config at its next poll. So is a
    failed END while the version has shown no other state since the wait began (``moved``
    False): TF Serving keeps reporting an earlier attempt's failure until the new config starts
    a new load (a rerun of a version whose load once failed failed at once with the old error)."""
    s = next((x for x in statuses if x.version == int(version)), None)
    if s is None or s.state != "END" or (s.failed and (moved or waited >= grace)):
        return available_verdict(statuses, int(version))
    if s.failed:
        return WaitVerdict(False, detail=f"END with an earlier error ({s.error_message or s.error_code}), "
                                         f"waiting for the new config to load it again")
    if waited >= grace:
        return WaitVerdict(False, True, f"still unloaded after {grace:.0f}s: TF Serving has not picked up "
                                        f"the new models.config (check its --model_config_file and "
                                        f"poll interval, or configure grpc for the host)")
    return WaitVerdict(False, detail="unloaded (END), waiting for the new config to load it")


def _checked(check, cancellable: bool):
    """``check`` that first honours an interrupt request (see ``cancel``) when ``cancellable``."""
    if not cancellable:
        return check

    def run():
        cancel.check()
        return check()
    return run


def wait_loaded(client, entry: str, version: int, *, timeout: float, interval: float = 0.2,
                grace: float = END_GRACE_SECONDS, cancellable: bool = True, server_gone=None) -> None:
    """Until ``entry`` version ``version`` is AVAILABLE (END with an error -> TF Serving's reason).

    ``server_gone`` (infra-validate's throw-away server, whose process is ours): asked when the
    server does not answer, it says why the server is gone for good (None while it runs), which
    fails the wait at once instead of waiting for a restart until the timeout."""
    start = time.monotonic()
    moved = False           # seen absent or not END since this wait began: an END now is new

    def check() -> WaitVerdict:
        nonlocal moved
        try:
            statuses = client.model_status(entry)
        except HostUnreachable:
            why = server_gone() if server_gone is not None else None
            if why:
                return WaitVerdict(False, True, why)
            raise
        moved = moved or not any(x.version == int(version) and x.state == "END" for x in statuses)
        return load_verdict(statuses, version, waited=time.monotonic() - start, grace=grace, moved=moved)
    client.wait_until(f"loading {entry} version {version}", _checked(check, cancellable),
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
