"""``mlops sync smoke``: the smoke test against every host's stable route, changing nothing.

REST only (no SSH, no lock): what CircleCI's promote-and-deploy job runs after its deploy. Each host
gets one report; an unreachable host is a failed check, not a crash.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlops_common.errors import ConfigError, UserError

from .errors import SmokeFailed
from .smoke import Check, Golden, SmokeOptions, SmokeReport, route_name, run_smoke
from .tfs_client import TFServingClient

VIA = ("stable", "version")


@dataclass
class FleetSmoke:
    """``mlops sync smoke``: one report per host for one version through one route."""

    model: str
    version: int
    via: str
    reports: list[SmokeReport]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "via": self.via, "passed": self.passed,
                "hosts": [r.to_dict() for r in self.reports]}

    def raise_if_failed(self) -> None:
        bad = [r for r in self.reports if not r.passed]
        if bad:
            raise SmokeFailed("smoke test failed on " + "; ".join(f"{r.host} ({r.summary()})" for r in bad))


def smoke_fleet(model: str, hosts, *, version: int | None = None, via: str = "stable",
                opts: SmokeOptions = SmokeOptions()) -> FleetSmoke:
    """Smoke-test ``version`` (default: the one holding ``production``) on every host, with the
    golden set from the registry; a failed check is in the result, never raised."""
    from registry import versions

    from .golden import fetch_golden

    version = version or versions.production_version(model)
    if version is None:
        raise ConfigError(f"no version of '{model}' holds production; pass --version N")
    reports = smoke_hosts(hosts, model, version, fetch_golden(model, version), via=via, opts=opts)
    return FleetSmoke(model, version, via, reports)


def smoke_hosts(hosts, model: str, version: int, golden: Golden, *, via: str = "stable",
                opts: SmokeOptions = SmokeOptions(), label: str = "stable") -> list[SmokeReport]:
    if via not in VIA:
        raise UserError(f"--via must be one of {', '.join(VIA)}, got {via!r}")
    reports = []
    for host in hosts:
        client = TFServingClient(host.rest_url)
        kw = {"label": label} if via == "stable" else {"route_version": version}
        try:
            reports.append(run_smoke(client, host.name, model, golden, version, opts=opts, commands=True, **kw))
        except UserError as exc:
            r = SmokeReport(host.name, model, route_name(model, version=kw.get("route_version"),
                                                         label=kw.get("label")), version)
            r.checks.append(Check("reachable", False, exc.message))
            reports.append(r)
        finally:
            client.close()
    return reports
