"""Free loopback ports for the services mlops starts (MLflow, the model servers, the test lab's
servers): outside the kernel's ephemeral range, so no outgoing connection takes one in the
seconds before its service binds it.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL = (32768, 60999)   # Linux's default (macOS and Windows use 49152-65535)
LISTEN_FLOOR = 10000                  # below: well-known ports and the usual fixed service ports
_MAX_TRIES = 200


def ephemeral_range(text: str | None = None) -> tuple[int, int]:
    """The ports the kernel gives to the local end of outgoing connections (and to ``bind(0)``):
    Linux's ``ip_local_port_range``, or its default where that cannot be read."""
    if text is None:
        try:
            text = Path(EPHEMERAL_RANGE_FILE).read_text()
        except OSError:
            return DEFAULT_EPHEMERAL
    try:
        lo, hi = (int(x) for x in text.split())
    except ValueError:
        return DEFAULT_EPHEMERAL
    return (lo, hi) if 0 < lo <= hi <= 65535 else DEFAULT_EPHEMERAL


def listen_port_ranges(ephemeral: tuple[int, int], floor: int = LISTEN_FLOOR) -> list[range]:
    """The ports from ``floor`` to 65535 outside the ephemeral range (pure; empty when none)."""
    lo, hi = ephemeral
    return [r for r in (range(floor, min(lo, 65536)), range(max(hi + 1, floor), 65536)) if len(r)]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports for services about to start, outside the ephemeral range.

    ``bind(0)`` answers with an ephemeral port, and a service takes seconds to bind what it was
    given (the model server imports TensorFlow first): in between, any outgoing connection on the
    machine may get that port as its local end, and the service dies with "Address already in
    use" (seen with 25 model servers started in a row). Outside that range the kernel never hands
    a port out by itself. Each port is checked by binding it (held until all ``n`` are chosen, so
    they differ); the choice uses the OS's randomness, so processes that seeded ``random`` alike
    (test workers) do not pick alike. Falls back to ``bind(0)`` when no such range is left.
    """
    ranges = listen_port_ranges(ephemeral_range())
    total = sum(len(r) for r in ranges)
    pick = random.SystemRandom()
    k, every = test_port_slice()
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        while len(ports) < n:
            s = held.enter_context(socket.socket())
            for _ in range(_MAX_TRIES if total else 0):
                port = _nth(ranges, pick.randrange(total))
                if port % every != k:
                    continue
                try:    # a port already held (chosen a moment ago) fails here too
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    continue
            else:
                s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


TEST_PORT_SLICE = "MLOPS_TEST_PORT_SLICE"


def test_port_slice() -> tuple[int, int]:
    """``(k, n)``: choose only ports whose number is ``k`` modulo ``n``. A test hook, inert unless
    ``MLOPS_TEST_PORT_SLICE=k/n`` is set (tests/conftest.py sets it per pytest-xdist worker): two
    workers each start hundreds of services, each binding its port seconds after choosing it, and
    one could choose the port the other had just chosen ("Address already in use")."""
    k, _, n = os.environ.get(TEST_PORT_SLICE, "").partition("/")
    if k.isdigit() and n.isdigit() and 0 <= int(k) < int(n):
        return int(k), int(n)
    return 0, 1


def _nth(ranges: list[range], k: int) -> int:
    """The ``k``-th port of the ranges taken one after another."""
    for r in ranges:
        if k < len(r):
            return r[k]
        k -= len(r)
    raise IndexError(k)


def free_port() -> int:
    """One free loopback port for a service about to start (see ``free_ports``)."""
    return free_ports(1)[0]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
