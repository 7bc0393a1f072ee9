"""``mlops sync status``: per host, what the registry wants and what TF Serving serves, and drift.

``drift`` is a pure function of (production version, host observation); ``host_status`` is the
read-only I/O around it. An unreachable host is reported (one line), never skipped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlops_common.errors import UserError

from . import models_config as mc
from .plan import STABLE, HostObservation


def drift(obs: HostObservation, production: int | None, *, label: str = STABLE) -> list[str]:
    """Why this host does not serve ``production`` cleanly (empty list = in sync)."""
    out = []
    if production is None:
        out.append("no version holds production in the registry")
        return out
    if not obs.available:
        out.append(f"TF Serving serves no version of {obs.model}")
    else:
        if obs.stable != production:
            out.append(f"{label} -> {f'v{obs.stable}' if obs.stable is not None else 'nothing'}, production is "
                       f"v{production}")
        if obs.unversioned != production:
            out.append(f"unversioned requests -> v{obs.unversioned} (highest loaded), production is v{production}")
    if obs.main_policy is None and obs.available:
        out.append(f"models.config has no entry for {obs.model}, yet TF Serving serves it (TF Serving reads "
                   f"another config file, or has not applied this one)")
    elif obs.main_policy is not None and not mc.same_path(obs.main_base_path, obs.base_path):
        out.append(f"models.config loads {obs.model} from {obs.main_base_path}, not {obs.base_path} where "
                   f"versions are published")
    if obs.validate is not None:
        out.append(f"leftover validation entry {mc.validation_name(obs.model)} (v{obs.validate}) in models.config")
    stray = [v for v, s in sorted(obs.validate_states.items()) if s == "AVAILABLE" and v != obs.validate]
    if stray:
        out.append(f"TF Serving still serves {mc.validation_name(obs.model)} "
                   f"{', '.join(f'v{v}' for v in stray)}, which models.config does not ask for (TF Serving "
                   f"has not applied the file)")
    unlisted = [v for v in obs.available if v not in obs.main_versions] if obs.main_policy == "specific" else []
    if unlisted:
        out.append(f"TF Serving still serves {', '.join(f'v{v}' for v in unlisted)} of {obs.model}, which "
                   f"models.config does not list (TF Serving has not applied the file)")
    cfg_label = dict(obs.main_labels).get(label)
    if obs.main_policy is not None and cfg_label != obs.stable:
        out.append(f"models.config says {label} -> {cfg_label}, TF Serving says {obs.stable} "
                   f"(TF Serving has not applied the file, or rejected it)")
    not_loaded = [v for v in obs.main_versions if obs.main_states.get(v) != "AVAILABLE"]
    if not_loaded:
        out.append(f"models.config asks for {', '.join(_not_loaded(obs, v) for v in not_loaded)}")
    if production in obs.incomplete:
        out.append(f"v{production} is not published on the host: {obs.model}/{production} has no saved_model.pb "
                   f"(an upload or removal that did not finish)")
    elif production not in obs.published:
        out.append(f"v{production} is not published on the host")
    return out


def _not_loaded(obs: HostObservation, v: int) -> str:
    """One version models.config asks for that TF Serving does not serve, with why when it is known:
    TF Serving's reason for a failed load, or the version's folder missing from the host."""
    state = obs.main_states.get(v)
    if v in obs.main_errors:
        return f"v{v} {state} (TF Serving: {obs.main_errors[v]})"
    if v not in obs.published and mc.same_path(obs.main_base_path, obs.base_path):
        return f"v{v}{f' {state}' if state else ''} (not on the host: {obs.model}/{v} is missing)"
    return f"v{v} {state or 'unknown'}"


@dataclass
class HostStatus:
    name: str
    rest_url: str
    target: str
    reachable: bool
    error: str | None = None
    versions: dict[int, str] = field(default_factory=dict)          # main entry: version -> state
    validation: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)            # main entry: TF Serving's reason a load failed
    labels: dict[str, int | None] = field(default_factory=dict)     # as TF Serving answers
    unversioned: int | None = None
    config: dict | None = None
    published: list[int] = field(default_factory=list)
    verified: list[int] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    lock: str | None = None        # a deploy's host lock on it (one under way, or one a dead deploy left)

    @property
    def in_sync(self) -> bool:
        return self.reachable and not self.drift

    def to_dict(self) -> dict:
        # "host" as in every other sync command's --json; "name" kept for the scripts reading it
        return {"host": self.name, "name": self.name, "rest_url": self.rest_url, "target": self.target,
                "reachable": self.reachable, "error": self.error, "in_sync": self.in_sync,
                "versions": {str(k): v for k, v in sorted(self.versions.items())},
                "validation": {str(k): v for k, v in sorted(self.validation.items())},
                "errors": {str(k): v for k, v in sorted(self.errors.items())},
                "labels": self.labels, "unversioned": self.unversioned, "config": self.config,
                "published": self.published, "verified": self.verified, "drift": self.drift, "lock": self.lock}


def host_status(host, model: str, production: int | None, *, label: str = STABLE) -> HostStatus:
    """Observe one host (opens and closes its own connection); errors become ``error``."""
    from .connections import connected
    from .lock import HostLock
    from .observe import observe_host

    st = HostStatus(host.name, host.rest_url, host.target.url, False)
    try:
        with connected([host]) as (conn,):
            obs = observe_host(host, conn.transport, conn.client, model, label=label).obs
            # a drift seen mid-deploy (a validation entry, a label not yet moved) is that deploy's
            # work under way: the on-call must not "fix" it by hand. Read only, as a deploy judges it
            held = HostLock(conn.transport).preview()
            st.lock = held[0] if held is not None else None
    except UserError as exc:
        st.error = exc.message
        st.drift = ["unreachable or unreadable: " + exc.message]
        return st
    st.reachable = True
    st.versions = dict(obs.main_states)
    st.validation = dict(obs.validate_states)
    st.errors = dict(obs.main_errors)
    st.labels = {label: obs.stable}
    st.unversioned = obs.unversioned
    st.config = {"policy": obs.main_policy, "versions": list(obs.main_versions),
                 "labels": dict(obs.main_labels), "validation_entry": obs.validate}
    st.published = list(obs.published)
    st.verified = list(obs.verified)
    st.drift = drift(obs, production, label=label)
    return st


@dataclass
class FleetStatus:
    """``mlops sync status``: the registry's production version and every host's status."""

    model: str
    production: int | None
    hosts: list[HostStatus]

    @property
    def in_sync(self) -> bool:
        return all(s.in_sync for s in self.hosts)

    def to_dict(self) -> dict:
        return {"model": self.model, "production": self.production, "in_sync": self.in_sync,
                "hosts": [s.to_dict() for s in self.hosts]}


def fleet_status(model: str, hosts, *, label: str = STABLE) -> FleetStatus:
    """Read ``production`` from the registry, then observe every host (read-only)."""
    from registry import versions

    from . import parallel
    from .connections import CONNECT_AT_ONCE

    production = versions.production_version(model)
    # every host at once (a bounded number): a partition's silent hosts cost one wait, not one each
    outcomes = parallel.map_ordered(lambda h: host_status(h, model, production, label=label), hosts,
                                    workers=CONNECT_AT_ONCE, name="status")
    return FleetStatus(model, production, outcomes)
