"""Observe one host (read only): its models.config, what TF Serving reports, what is published.

The result is plain data for the planner (``plan.HostObservation``) plus the exact text of
``models.config``, which a failed deploy writes back.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlops_common import log

from . import host_config
from . import models_config as mc
from . import verified as verified_record
from .layout import MODELS_CONFIG
from .plan import STABLE, HostObservation, loading_versions
from .publish import published_versions
from .retention import incomplete_versions
from .tfs_client import WaitVerdict
from .transports.base import Transport

logger = log.get("sync.observe")

GRPC_CHECK_S = 5.0     # how long a gRPC address may take to accept a connection


@dataclass(frozen=True)
class Observed:
    obs: HostObservation
    config: mc.ServingConfig
    config_text: str | None          # None: the file did not exist


def _states(client, name: str) -> dict[int, str]:
    return {s.version: s.state for s in client.model_status(name)}


def _failures(statuses) -> dict[int, str]:
    """TF Serving's reason for each version whose load failed (END with an error status)."""
    return {s.version: s.error_message or f"error code {s.error_code}" for s in statuses if s.failed}


def observe_host(host, transport: Transport, client, model: str, *, label: str = STABLE) -> Observed:
    """Read ``host``'s state for ``model`` (config file, TF Serving, published, verified), and check
    that its gRPC address (when it has one) answers: every config change goes through it."""
    text = host_config.read_text(transport)
    config = mc.parse(text or "", f"{transport.url}/{MODELS_CONFIG}")
    base_path = mc.model_base_path(host.serving_base_path(), model)
    main = config.entry(model)
    val = config.entry(mc.validation_name(model))
    statuses = client.model_status(model)
    main_states = {s.version: s.state for s in statuses}
    # asked even without a validation entry in the file: a killed deploy's copy that TF Serving still
    # holds (its config written, the reload not applied) is a whole model's memory nobody saw
    validate_states = _states(client, mc.validation_name(model))
    stable = client.label_version(model, label) if main_states else None
    # on S3 (no rename) a numeric folder is a version TF Serving can load only once its
    # saved_model.pb (uploaded last) is there: one without it (an upload or a removal that did not
    # finish) is no published version, though TF Serving's own listing (a ``latest`` entry) sees it
    folders = tuple(published_versions(transport, model))
    incomplete = tuple(incomplete_versions(transport, model, folders))
    obs = HostObservation(
        host=host.name, model=model, base_path=base_path,
        main_policy=main.policy if main is not None else None,
        main_base_path=main.base_path if main is not None else None,
        main_versions=tuple(main.versions) if main is not None and main.policy == "specific" else (),
        main_labels=tuple(main.labels) if main is not None else (),
        validate=(val.versions[0] if val is not None and val.policy == "specific" and val.versions else None),
        main_states=main_states, validate_states=validate_states, main_errors=_failures(statuses), stable=stable,
        published=tuple(x for x in folders if x not in incomplete), incomplete=incomplete,
        verified=tuple(sorted(verified_record.read(transport, model))),
        # a self-loading entry's newest complete ones: it keeps them loaded while a dead folder fails,
        # and loads them once retention removed that folder (TF Serving lists it, loads nothing of it)
        held_by_others=mc.versions_held_by_others(config, model, base_path,
                                                  tuple(x for x in folders if x not in incomplete)),
        loaded_by_others_on_publish=mc.entries_loading_new_versions(config, model, base_path),
        rename=transport.atomic_rename, pulls_from=host.store.url if getattr(host, "store", None) else None)
    if host.grpc:           # after the REST reads: a server that is down says so the usual way first
        from .tfs_reload import check_reachable

        check_reachable(host.grpc, timeout=min(GRPC_CHECK_S, client.timeout))
    return Observed(obs, config, text)


def observe_settled(host, transport: Transport, client, model: str, *, label: str = STABLE,
                    timeout: float = 60.0, interval: float = 0.2) -> Observed:
    """``observe_host`` once TF Serving has finished loading the main entry's versions. A host seen
    while it loads (TF Serving just restarted) serves nothing yet, so its plan would look like a
    first deploy's: its labels dropped, the version it is about to serve not kept warm and left
    to retention. Bounded by ``timeout``. A version whose load fails is settled too (END, with
    TF Serving's error): the plan unlists it before loading it again (``plan._stuck``), as TF
    Serving never loads a failed version again while it stays listed."""
    observed = observe_host(host, transport, client, model, label=label)
    loading = observed.obs.loading
    if not loading:
        return observed
    logger.info("%s: TF Serving is still loading v%s of '%s'; waiting for it before planning", host.name,
                ", v".join(map(str, loading)), model)

    def settled() -> WaitVerdict:
        states = _states(client, model)
        busy = loading_versions(states, observed.obs.main_policy, observed.obs.main_versions)
        return WaitVerdict(not busy, detail=", ".join(f"v{v} {states[v]}" for v in busy))

    client.wait_until(f"TF Serving to finish loading '{model}' on {host.name}", settled, timeout=timeout,
                      interval=interval)
    return observe_host(host, transport, client, model, label=label)
