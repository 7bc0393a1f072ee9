"""How the changing hosts of a fleet roll out — one decision for ``sync plan`` and ``sync deploy``.

``decide_rollout`` is pure: the shape (``rollout.shape``) and whether the deploy restores a
version a rollback made production again (no canary, one wave, no bake). ``rollout_for`` and
``unjudged_everywhere`` read the ledger it needs, only when it can change the answer;
``unjudged_hosts`` reads it through the callable it is given.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from registry import deploys

from . import rollout
from .options import DeployOptions


@dataclass(frozen=True)
class RolloutDecision:
    """How the changing hosts roll out — one decision for ``sync plan`` and ``sync deploy``, so the
    plan cannot say other than the deploy does."""

    opts: DeployOptions          # the options in force (a restore unstages them)
    restore: dict | None         # the rollback this deploy restores from (None: a deploy like any other)
    shape: rollout.Shape

    @property
    def bake(self) -> float:
        """Seconds the canary is judged: 0 when none was asked or there is no canary to judge."""
        return self.opts.bake if self.shape.bakeable else 0.0


def decide_rollout(changing: list[str], opts: DeployOptions, restoring=None,
                   unjudged: tuple[str, ...] = ()) -> RolloutDecision:
    """The rollout of ``changing`` hosts (pure). ``restoring``: the ledger row of a rollback to this
    version, which held production before (``deploys.restoring``).

    Such a deploy restores it: no canary, one wave, no bake, whatever MLOPS_BAKE_SECONDS says — the
    fleet gets off the version rolled back from as fast as one host's switch, and the prepare phase
    still checks the restored version on every host before any switches. ``--canary``, ``--wave``
    or ``--bake`` on the command line (``opts.staged_restore``) keep the staged rollout."""
    restore = None
    if _could_restore(changing, opts) and restoring is not None:
        opts = dataclasses.replace(opts, canary=0, wave=None, bake=0.0, bake_each_wave=False)
        restore = {"rolled_back_from": restoring.from_version, "reason": restoring.reason}
        unjudged = ()        # no verdict is asked of a restore (as with --canary 0 or --bake 0)
    return RolloutDecision(opts, restore, rollout.shape(changing, canary=opts.canary, wave=opts.wave,
                                                        unjudged=unjudged))


def _could_restore(changing: list[str], opts: DeployOptions) -> bool:
    """Whether a restore would unstage this rollout: two or more hosts change, and no --canary,
    --wave or --bake asks for the staged one."""
    return len(changing) >= 2 and not opts.staged_restore


def rollout_for(model: str, version: int, changing: list[str], opts: DeployOptions,
                unjudged: tuple[str, ...] = ()) -> RolloutDecision:
    """``decide_rollout``, reading the ledger only when a restore could change the answer. After a
    chain of rollbacks before one deploy (v3 -> v2, v2 -> v1), the version rolled back from is
    the one the hosts served (v3: ``deploys.rolled_back_before``), not the newest rollback's."""
    restoring = deploys.restoring(model, version) if _could_restore(changing, opts) else None
    if restoring is not None and (chain := deploys.rolled_back_before(model, version)):
        restoring = dataclasses.replace(restoring, from_version=chain[-1].from_version)
    return decide_rollout(changing, opts, restoring, unjudged)


def unjudged_hosts(plans, opts: DeployOptions, rolled_out) -> tuple[str, ...]:
    """The hosts already on the version while others still change, when no rollout of it finished
    (``rolled_out()``, read only then): a deploy stopped between its canary's switch and its
    verdict left them there, so the next canary is the version's first verdict, even when it is
    the last host to switch (a restarted watcher, a rerun). Empty without a bake or a canary."""
    on = tuple(p.host for p in plans if p.up_to_date)
    if not on or len(on) == len(plans) or opts.bake <= 0 or opts.canary == 0:
        return ()
    return () if rolled_out() else on


def unjudged_everywhere(model: str, v: int, plans, opts: DeployOptions) -> bool:
    """Every host serves ``v``, which a deploy of it began and nothing judged
    (``DeployLedger.unjudged``), while a verdict is asked (a bake, a canary not 0, two hosts or
    more): a resumed rollout's canary is its last host, so a deploy stopped during that bake
    leaves the whole fleet on ``v`` with no row. Recording it ``deployed`` then
    (``record_converged``) would roll it out with no verdict. A version the registry says is
    deployed is not read further; nor is a restore asked, which has no bake (``decide_rollout``:
    a `sync rollback` killed after its switch is recorded as before)."""
    if len(plans) < 2 or opts.bake <= 0 or opts.canary == 0 or deploys.status(model, v) == deploys.DEPLOYED:
        return False
    if not deploys.DeployLedger(model).unjudged(v):
        return False
    return not _could_restore([p.host for p in plans], opts) or deploys.restoring(model, v) is None
