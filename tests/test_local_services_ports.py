"""Ports for services the project starts (the lab's model servers, MLflow, sshd, SeaweedFS, and
the throwaway TF Serving of infra validation): never from the kernel's ephemeral range, which
outgoing connections draw from while a service is still starting (25 model servers started in a
row failed with "Address already in use" when the ports came from ``bind(0)``)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mlops import ports as service_ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_service_ports_never_come_from_the_ephemeral_range_and_are_free():
    lo, hi = service_ports.ephemeral_range()
    if not service_ports.listen_port_ranges((lo, hi)):
        pytest.skip(f"SKIPPED LOUDLY: this machine's ephemeral range {lo}-{hi} leaves no port above "
                    f"{service_ports.LISTEN_FLOOR} for services")
    many = service_ports.free_ports(40)
    ports = many + [service_ports.free_port() for _ in range(20)]
    inside = [p for p in ports if lo <= p <= hi]
    assert not inside, f"ports from the ephemeral range {lo}-{hi}: {inside}"
    assert all(p >= service_ports.LISTEN_FLOOR for p in ports)
    assert len(set(many)) == 40                     # one call's ports differ
    assert all(_bindable(p) for p in ports)         # released for the service to bind


def test_a_port_held_by_another_socket_is_never_chosen():
    held = []
    try:
        for p in service_ports.free_ports(30):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert not taken & set(service_ports.free_ports(30))
    finally:
        for s in held:
            s.close()


def test_ephemeral_range_is_the_kernels_setting_or_linuxs_default():
    assert service_ports.ephemeral_range("32768\t60999\n") == (32768, 60999)
    assert service_ports.ephemeral_range("1024 65000") == (1024, 65000)
    for bad in ("", "32768", "a b", "0 0", "60999 32768", "1 70000"):
        assert service_ports.ephemeral_range(bad) == service_ports.DEFAULT_EPHEMERAL, bad
    proc = Path(service_ports.EPHEMERAL_RANGE_FILE)
    if proc.exists():
        assert service_ports.ephemeral_range() == tuple(int(x) for x in proc.read_text().split())


def test_listen_port_ranges_are_what_the_ephemeral_range_leaves_above_the_floor():
    assert service_ports.listen_port_ranges((32768, 60999)) == [range(10000, 32768), range(61000, 65536)]
    assert service_ports.listen_port_ranges((49152, 65535)) == [range(10000, 49152)]
    assert service_ports.listen_port_ranges((20000, 30000)) == [range(10000, 20000), range(30001, 65536)]
    assert service_ports.listen_port_ranges((1024, 9000)) == [range(10000, 65536)]
    assert service_ports.listen_port_ranges((1024, 65535)) == []


def test_with_no_range_left_ports_still_come_free_from_the_kernel(monkeypatch):
    monkeypatch.setattr(service_ports, "ephemeral_range", lambda text=None: (1024, 65535))
    ports = service_ports.free_ports(5)
    assert len(set(ports)) == 5 and all(_bindable(p) for p in ports)


def test_parallel_test_workers_choose_ports_from_their_own_slices(monkeypatch):
    """Two xdist workers each start hundreds of services, binding each port seconds after
    choosing it: with one pool of ports, one worker could choose the port the other had just
    chosen. ``MLOPS_TEST_PORT_SLICE=k/n`` (tests/conftest.py, per worker) keeps them apart."""
    for k in (0, 1, 2):
        monkeypatch.setenv(service_ports.TEST_PORT_SLICE, f"{k}/3")
        ports = service_ports.free_ports(20) + [service_ports.free_port() for _ in range(5)]
        assert {p % 3 for p in ports} == {k}, ports
    for bad in ("", "3/3", "a/2", "1", "-1/2"):
        monkeypatch.setenv(service_ports.TEST_PORT_SLICE, bad)
        assert service_ports.test_port_slice() == (0, 1), bad


def test_this_worker_has_its_slice_when_the_suite_runs_in_parallel():
    import os

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        assert service_ports.test_port_slice() == (0, 1) or os.environ.get(service_ports.TEST_PORT_SLICE)
        return
    assert service_ports.test_port_slice() == (int(worker[2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
