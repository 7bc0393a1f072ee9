"""What a fleet deploy did: the record ``fleet.deploy`` fills in as it runs the rollout's states and
returns (hosts, plans, timings per phase, waves, bakes, the registry's state), which ``deploy_failure``
and ``deploy_retention`` add to and ``sync deploy --json`` prints."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .host_run import HostOutcome


@dataclass
class FleetResult:
    model: str
    version: int
    source: str                          # "production" | "--version"
    status: str                          # deployed | up_to_date | failed
    hosts: list[HostOutcome] = field(default_factory=list)
    plans: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    registry: dict | None = None
    message: str = ""
    timings: dict = field(default_factory=dict)   # seconds per phase (each host's steps: hosts[].steps)
    rollout: dict = field(default_factory=dict)   # rollout.Shape: canary, waves
    waves: list[dict] = field(default_factory=list)   # per wave: hosts, switch_seconds, bake, bake_seconds
    bake: list[dict] = field(default_factory=list)    # every bake.Verdict, with its measurements
    stores: list[dict] = field(default_factory=list)  # shared stores uploaded to once (store.StoreCopies)
    restore: dict | None = None          # a restore after a rollback: rolled_back_from, reason
    switched: list[str] = field(default_factory=list)   # hosts whose switch was recorded (deploy ok rows)
    message_extra: str = ""
    blames_version: bool = False         # a failure that says the version is bad (not a host, the network,
                                         # a signal, the ledger): production moved back, deploy_status=failed
    running: tuple | None = None         # (phase, since) of the phase under way: timed when a failure ends it
    registry_note: str = ""              # a failure's last part: where production stands (deploy_failure.fail)

    def answered_after(self, since: float) -> float | None:
        """Seconds from ``since`` until the last host answered with the new version's outputs."""
        times = [h.answered_at for h in self.hosts if h.answered_at is not None]
        return round(max(times) - since, 3) if times else None

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source, "status": self.status,
                "message": self.message, "seconds": round(self.seconds, 3), "registry": self.registry,
                "hosts": [h.to_dict() for h in self.hosts], "plans": self.plans, "timings": self.timings,
                "rollout": self.rollout, "waves": self.waves, "bake": self.bake, "stores": self.stores,
                "restore": self.restore}

    def lap(self, phase: str, since: float) -> float:
        """Record ``phase`` as lasting from ``since`` until now; returns now."""
        now = time.monotonic()
        self.timings[phase] = round(now - since, 3)
        self.running = None
        return now

    def begin(self, phase: str, since: float) -> None:
        """``phase`` is under way from ``since``: a failure in it still gets its ``timings`` entry."""
        self.running = (phase, since)

    def end_running(self) -> float:
        """Time the phase under way up to now (a failure ended it), once; returns now."""
        now = time.monotonic()
        if self.running is not None:
            self.timings.setdefault(self.running[0], round(now - self.running[1], 3))
            self.running = None
        return now
