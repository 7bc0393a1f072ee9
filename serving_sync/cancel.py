"""Interrupting a deploy safely: a flag set by a signal handler, checked at safe points.

Raising an exception from a signal handler can land anywhere (inside a library callback, a
finalizer, a gRPC call) and be lost or crash the process, so around a deploy the signal handler
only sets this flag on SIGTERM / Ctrl-C (``mlops sync``'s handler, or every command's inside a
``stop.deferred()``, as ``mlops demo`` deploys); the deploy checks it between steps, while
waiting, between smoke-test requests and between upload chunks, raises ``DeployInterrupted``
there, and puts the hosts back.

The flag is ``mlops_common.stop``'s, the one "a signal asked for a stop" of every command:
``request`` / ``requested`` / ``reset`` are its ``ask`` / ``asked`` / ``clear`` under the names
the deploy's callers use.
"""
from __future__ import annotations

from mlops_common import stop
from mlops_common.errors import UserError


class DeployInterrupted(UserError):
    """The deploy was interrupted (SIGTERM, Ctrl-C); hosts are put back, production is left alone."""

    exit_code = 130
    #: True when the rollout's failure path raised it (``deploy_failure.fail``: the hosts were
    #: planned, and its message says which were put back and where production stands); False for
    #: a stop before that (resolving, connecting, waiting for a lock), which changed no host
    in_rollout: bool = False


request = stop.ask
requested = stop.asked
reset = stop.clear


def check() -> None:
    """Raise ``DeployInterrupted`` if a stop was asked (``mlops_common.stop``)."""
    if stop.asked():
        raise DeployInterrupted(f"interrupted ({stop.reason() or 'signal'})")
