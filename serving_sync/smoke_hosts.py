"""``mlops sync smoke``: the smoke test against every host's stable route, changing nothing.

REST only (no SSH, no lock): what CircleCI's test-deployment job runs after a deploy. Each host
gets one report; an unreachable host is a failed check, not a crash.
"""
from __future__ import annotations

from mlops_common.errors import UserError

from .smoke import Check, Golden, SmokeOptions, SmokeReport, route_name, run_smoke
from .tfs_client import TFServingClient

VIA = ("stable", "version")


def smoke_hosts(hosts, model: str, version: int, golden: Golden, *, via: str = "stable",
                opts: SmokeOptions = SmokeOptions(), label: str = "stable") -> list[SmokeReport]:
    if via not in VIA:
        raise UserError(f"--via must be one of {', '.join(VIA)}, got {via!r}")
    reports = []
    for host in hosts:
        client = TFServingClient(host.rest_url)
        kw = {"label": label} if via == "stable" else {"route_version": version}
        try:
            reports.append(run_smoke(client, host.name, model, golden, version, opts=opts, **kw))
        except UserError as exc:
            r = SmokeReport(host.name, model, route_name(model, version=kw.get("route_version"),
                                                         label=kw.get("label")), version)
            r.checks.append(Check("reachable", False, exc.message))
            reports.append(r)
        finally:
            client.close()
    return reports
