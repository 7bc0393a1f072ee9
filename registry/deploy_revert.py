"""Move ``production`` back after a failed deploy (``mlops sync``'s automatic revert): the failed
version tagged, a failed ``deploy`` row and a ``rollback`` row recorded, and the alias moved only
while it still names the failed version.
"""
from __future__ import annotations

from mlops_common import log

from . import description, versions
from .alias_move import UNKNOWN, production_move
from .ledger import Entry, Ledger
from .promotion_view import Promotion
from .provenance import Provenance, given

_log = log.get("registry.promotion")      # the moves' logger: these lines are part of their output


def revert_failed_deploy(model: str, failed_version, to_version, reason: str,
                         actor: str | None = None, *, host: str | None = None, host_was: int | None = UNKNOWN,
                         ledger: Ledger | None = None, provenance: Provenance | None = None) -> Promotion:
    """After a failed deploy: production back to ``to_version``, failed version tagged, rows recorded.

    Records a ``deploy`` row (outcome failed) for ``failed_version`` and a ``rollback`` row.
    The alias is only moved if it still points at ``failed_version``; if someone promoted another
    version meanwhile it is left alone (the rollback row then says ``refused`` and why).
    ``to_version`` None removes ``production`` (the first deploy ever failed). ``actor``:
    shorthand for a ``provenance`` built from the environment. ``host_was``: what ``host``
    served before the deploy (the failed ``deploy`` row's ``from_version``; default ``to_version``).
    """
    by = given(provenance, actor)
    ledger = ledger or Ledger()
    failed = versions.parse_version(failed_version)
    to = versions.parse_version(to_version) if to_version is not None else None
    versions.get_version(model, failed)
    from . import deploys

    deploys.tag(model, failed, deploys.FAILED, reason)      # first: whatever happens next, it failed
    if to is not None:
        versions.get_version(model, to)
    with production_move(ledger, model, by.actor) as locked:     # a killed promotion's move is recorded first
        current = locked.current
        locked.tx.append(Entry(action="deploy", model=model, outcome="failed",
                               from_version=to if host_was is UNKNOWN else host_was,
                               to_version=failed, host=host, reason=reason, **by.row()))
        if current == failed:
            entry = locked.record(Entry(
                action="rollback", model=model, outcome="ok", from_version=failed, to_version=to,
                host=host, reason=reason, **by.row(),
                details={"after_failed_deploy": failed, "automatic": True}), move_alias=True)
        else:
            why = (f"production is version {current} now, not the failed {failed}; "
                   f"left it alone")
            entry = locked.tx.append(Entry(action="rollback", model=model, outcome="refused",
                                           from_version=failed, to_version=to, host=host,
                                           reason=f"{reason} ({why})", **by.row()))
            _log.warning("not moving production of '%s': %s", model, why)
    at = entry.at.isoformat(timespec="seconds")
    promo = Promotion(model=model, action="rollback", from_version=failed, to_version=to,
                      provenance=by, reason=reason, at=at, ledger_id=entry.id, moved=locked.moved,
                      details={"after_failed_deploy": failed, "production_was": current})
    if locked.moved:     # `to` keeps the approver it had; both descriptions show the rollback
        description.refresh_quietly(model, to, failed)
    else:                # the tag rebuilt it before the failed deploy row
        description.refresh_quietly(model, failed)
    return promo
