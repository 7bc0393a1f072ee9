"""The shape of a fleet rollout, as a pure function: which hosts switch first, then in which waves.

A deploy runs in two phases (docs/architecture.md, "Rollout"). PREPARE changes nothing that
serves, on every host in parallel (at most ``parallel`` at once). SWITCH goes wave by wave: wave
0 is the canary (``canary`` hosts, default 1 when two or more hosts change), judged on its live
traffic (``bake``) before any other host switches; the rest follow in waves of ``wave`` hosts
(``"N"`` or ``"P%"`` of the hosts after the canary; default: all at once), each wave in parallel.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mlops_common.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    canary: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]            # every wave, the canary's first when there is one
    # hosts already serving the version from a rollout of it that nothing judged (a deploy stopped
    # between its canary's switch and its verdict): the canary now is the version's first verdict
    unjudged: tuple[str, ...] = ()

    @property
    def bakeable(self) -> bool:
        """A canary with hosts after it (something to protect, and to compare it with), or one
        that resumes a rollout nothing judged (the version is on hosts already: its verdict decides
        whether production keeps it, even when the canary is the last host to switch)."""
        return bool(self.canary) and (len(self.waves) > 1 or bool(self.unjudged))

    def judged(self, each_wave: bool = False) -> tuple[str, ...]:
        """The hosts judged on their live traffic: the canary, and with ``--bake-each-wave`` every
        wave but the last (no host is left after it to protect) — the canary of a resumed rollout
        (``unjudged``) stays judged when it is the only wave."""
        if not self.bakeable:
            return ()
        return tuple(n for w in ((self.waves[:-1] or self.waves[:1]) if each_wave else self.waves[:1]) for n in w)

    def to_dict(self) -> dict:
        return {"canary": list(self.canary), "waves": [list(w) for w in self.waves], "unjudged": list(self.unjudged)}


def parse_wave(value: str | None) -> str | None:
    """``--wave``: ``N`` hosts or ``P%`` of the hosts after the canary (checked, kept as text)."""
    if value is None:
        return None
    text = str(value).strip()
    m = re.fullmatch(r"([0-9]+)(%?)", text)       # ASCII digits only, as every number flag (flags._whole)
    if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(1)) > 100):
        raise ConfigError(f"--wave must be a number of hosts (e.g. 2) or a percentage 1%-100% (e.g. 25%), "
                          f"got {value!r}")
    return text


def wave_size(wave: str | None, remaining: int) -> int:
    if wave is None or remaining == 0:
        return max(remaining, 1)
    if wave.endswith("%"):
        return max(1, math.ceil(remaining * int(wave[:-1]) / 100))
    return int(wave)


def shape(hosts: list[str], *, canary: int | None = None, wave: str | None = None,
          unjudged: tuple[str, ...] = ()) -> Shape:
    """Canary first (hosts-file order), then waves; ``canary`` None: 1 when two or more hosts, or
    when one host changes and ``unjudged`` hosts already serve the version (see ``Shape``). A lone
    changing host is no canary (``--canary 1`` or not) unless ``unjudged``: nothing follows it, and
    nothing judges it (``bakeable``); the plan and the deploy both call it wave 1. A canary of every
    changing host is refused (none left to compare it with) unless ``unjudged``: a rollout resumed
    with the ``--canary N`` it began with then judges the N or fewer hosts left as its canary, each
    on its own window before its switch, as it judges a lone host left."""
    n = 1 if canary is None and (len(hosts) >= 2 or (hosts and unjudged)) else (canary or 0)
    if n < 0:
        raise ConfigError(f"--canary must be 0 or more hosts, got {n}")
    if hosts and n >= len(hosts) and len(hosts) >= 2 and not unjudged:
        raise ConfigError(f"--canary {n} leaves no host to compare it with: {len(hosts)} hosts change; "
                          f"use at most {len(hosts) - 1}")
    n = min(n, len(hosts)) if len(hosts) >= 2 or unjudged else 0
    first, rest = tuple(hosts[:n]), list(hosts[n:])
    size = wave_size(parse_wave(wave), len(rest))
    waves = [first] if first else []
    waves += [tuple(rest[i:i + size]) for i in range(0, len(rest), size)]
    return Shape(first, tuple(waves), tuple(unjudged))


def stays_when_overtaken(v: int, now: int | None, served_before: set, failed: bool) -> bool:
    """After the last wave switched, ``production`` moved from ``v`` to ``now``: keep the fleet on
    ``v`` (True) or put every host back (False)?

    Back when production moved to what a host served before (a rollback, another fleet's failed
    deploy moving it back: the put-back is that move), when ``v`` failed elsewhere meanwhile,
    or when production went to an older version or none (a rollback of some kind). Kept only
    when a newer version overtook ``v`` (a promotion while it rolled out): ``v`` passed every
    check on these hosts, what they served before is no longer production either, and putting
    them back would undo a rollback that ``v`` was (``sync rollback`` v3 -> v2 overtaken by v4
    went back to v3, the version rolled back from). The next deploy installs ``now`` from ``v``."""
    return now is not None and now > v and now not in served_before and not failed

