"""Options of one deploy (``mlops sync deploy`` flags): bounds, smoke test, retention, rollout shape."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import retention
from .bake import Limits
from .smoke import SmokeOptions


@dataclass(frozen=True)
class DeployOptions:
    timeout: float = 120.0                   # every wait is bounded by this
    smoke: SmokeOptions = field(default_factory=SmokeOptions)
    keep_previous: bool = True
    keep: int = retention.DEFAULT_KEEP       # published versions kept per model
    label: str = "stable"
    json_mode: bool = False                  # no progress bar
    poll_interval: float = 0.2
    fast: bool = False                       # allow a second copy of the new version (no drop_validation)
    parallel: int = 8                        # PREPARE: hosts at once
    canary: int | None = None                # None: 1 when two or more hosts change
    wave: str | None = None                  # "N" | "P%" | None: all remaining at once
    bake: float = 0.0                        # seconds the canary is judged on live traffic (0: no bake)
    bake_each_wave: bool = False
    staged_restore: bool = False             # a restore after a rollback keeps canary / wave / bake
    # the hosts file of another fleet than the configured one (``--hosts`` naming another file than
    # MLOPS_HOSTS_FILE / $MLOPS_HOME/hosts.toml): its rows say so (``details.fleet``) and it writes
    # no ``deploy_status`` tag, which is the configured fleet's
    fleet: str | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        from mlops_common.errors import ConfigError

        if not 1 <= self.timeout <= 24 * 3600:
            raise ConfigError(f"--timeout must be between 1 and 86400 seconds, got {self.timeout:g}")
        if self.keep < 1:
            raise ConfigError(f"--keep must be at least 1, got {self.keep}")
        if self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {self.parallel}")
        if not 0 <= self.bake <= 24 * 3600:
            raise ConfigError(f"--bake must be between 0 and 86400 seconds, got {self.bake}")
