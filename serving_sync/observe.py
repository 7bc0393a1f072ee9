"""Observe one host (read only): its models.config, what TF Serving reports, what is published.

The result is plain data for the planner (``plan.HostObservation``) plus the exact text of
``models.config``, which a failed deploy writes back.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import host_config
from . import models_config as mc
from . import verified as verified_record
from .layout import MODELS_CONFIG
from .plan import STABLE, HostObservation
from .publish import published_versions
from .transports.base import Transport


@dataclass(frozen=True)
class Observed:
    obs: HostObservation
    config: mc.ServingConfig
    config_text: str | None          # None: the file did not exist


def _states(client, name: str) -> dict[int, str]:
    return {s.version: s.state for s in client.model_status(name)}


def observe_host(host, transport: Transport, client, model: str, *, label: str = STABLE) -> Observed:
    """Read ``host``'s state for ``model`` (config file, TF Serving, published, verified)."""
    text = host_config.read_text(transport)
    config = mc.parse(text or "", f"{transport.url}/{MODELS_CONFIG}")
    base_path = mc.model_base_path(host.serving_base_path(), model)
    main = config.entry(model)
    val = config.entry(mc.validation_name(model))
    main_states = _states(client, model)
    validate_states = _states(client, mc.validation_name(model)) if val is not None else {}
    stable = client.label_version(model, label) if main_states else None
    obs = HostObservation(
        host=host.name, model=model, base_path=base_path,
        main_policy=main.policy if main is not None else None,
        main_base_path=main.base_path if main is not None else None,
        main_versions=tuple(main.versions) if main is not None and main.policy == "specific" else (),
        main_labels=tuple(main.labels) if main is not None else (),
        validate=(val.versions[0] if val is not None and val.policy == "specific" and val.versions else None),
        main_states=main_states, validate_states=validate_states, stable=stable,
        published=tuple(published_versions(transport, model)),
        verified=tuple(sorted(verified_record.read(transport, model))))
    return Observed(obs, config, text)
