"""Interrupting a deploy safely: a flag set by a signal handler, checked at safe points.

Raising an exception from a signal handler can land anywhere (inside a library callback, a
finalizer, a gRPC call) and be lost or crash the process, so ``mlops sync`` only sets this flag
on SIGTERM / Ctrl-C; the deploy checks it between steps, while waiting, between smoke-test
requests and between upload chunks, raises ``DeployInterrupted`` there, and puts the hosts back.
"""
from __future__ import annotations

import threading

from mlops_common.errors import UserError


class DeployInterrupted(UserError):
    """The deploy was interrupted (SIGTERM, Ctrl-C); hosts are put back, production is left alone."""

    exit_code = 130


_flag = threading.Event()
_why = {"reason": ""}


def request(reason: str) -> None:
    _why["reason"] = reason
    _flag.set()


def requested() -> bool:
    return _flag.is_set()


def check() -> None:
    """Raise ``DeployInterrupted`` if an interrupt was requested."""
    if _flag.is_set():
        raise DeployInterrupted(f"interrupted ({_why['reason'] or 'signal'})")


def reset() -> None:
    _flag.clear()
    _why["reason"] = ""
