"""Shared helpers for the serving_sync tests (no tests here; imported by tests/test_sync_*.py).

``make_model_tree(dir, ...)`` writes a SavedModel-shaped tree (``saved_model.pb``,
``fingerprint.pb``, ``variables/``, ``assets/`` incl. an empty directory) with random bytes:
publishing treats files as opaque bytes, so the bytes need not be a loadable graph (tests that
load the model use the real ``tiny_serving_bundle``).

``hut`` ("host under test") is a fixture parametrized over the three transports — ``file``,
``ssh`` (real sshd on loopback, base directory on this machine) and ``s3`` (real SeaweedFS) —
giving the transport plus a raw view of the host to check what TF Serving would see.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving_sync.hosts import Host, Target


def make_model_tree(root: Path, *, variables_bytes: int = 300_000, n_assets: int = 3,
                    seed: int = 0, asset_bytes: int = 1000) -> Path:
    import random

    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "saved_model.pb").write_bytes(rnd.randbytes(5000))
    (root / "fingerprint.pb").write_bytes(rnd.randbytes(60))
    (root / "variables").mkdir(exist_ok=True)
    (root / "variables" / "variables.index").write_bytes(rnd.randbytes(500))
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(rnd.randbytes(variables_bytes))
    (root / "assets").mkdir(exist_ok=True)
    for i in range(n_assets):
        (root / "assets" / f"vocab-{i:04d}.txt").write_bytes(rnd.randbytes(asset_bytes))
    (root / "assets" / "empty-dir").mkdir(exist_ok=True)
    return root


@dataclass
class HostUnderTest:
    kind: str
    transport: object
    host: Host
    local_base: Path | None = None       # file / ssh: where the base is on this machine
    s3_client: object = None
    bucket: str | None = None
    prefix: str = ""

    def raw_names(self, rel: str) -> list[str]:
        """Names directly under ``rel`` as the host stores them (bypassing the transport)."""
        if self.local_base is not None:
            p = self.local_base / rel
            return sorted(os.listdir(p)) if p.is_dir() else []
        pre = "/".join(x for x in (self.prefix, rel) if x) + "/"
        names = set()
        for page in self.s3_client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=pre):
            for o in page.get("Contents", []):
                names.add(o["Key"][len(pre):].split("/")[0])
        return sorted(names)

    def raw_keys(self, rel: str) -> list[str]:
        """Every file (relative to ``rel``) under ``rel`` on the host."""
        if self.local_base is not None:
            root = self.local_base / rel
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
        pre = "/".join(x for x in (self.prefix, rel) if x) + "/"
        keys = []
        for page in self.s3_client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=pre):
            keys += [o["Key"][len(pre):] for o in page.get("Contents", [])]
        return sorted(keys)

    def raw_read(self, rel: str) -> bytes:
        if self.local_base is not None:
            return (self.local_base / rel).read_bytes()
        key = "/".join(x for x in (self.prefix, rel) if x)
        return self.s3_client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def raw_write(self, rel: str, data: bytes) -> None:
        if self.local_base is not None:
            p = self.local_base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            return
        key = "/".join(x for x in (self.prefix, rel) if x)
        self.s3_client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def numeric_versions(self, model: str) -> list[str]:
        return [n for n in self.raw_names(model) if n.isdigit()]


def ssh_host(sshd, base: Path, name: str = "ssh-host") -> Host:
    return Host(name, Target("ssh", str(base), host=sshd.host, port=sshd.port, user=sshd.user),
                "http://127.0.0.1:1", known_hosts=sshd.known_hosts, identity_file=sshd.identity_file)


def make_hut(kind: str, request, tmp_path: Path) -> HostUnderTest:
    from serving_sync.transports import open_transport

    if kind == "file":
        base = tmp_path / "serving"
        host = Host("local", Target("file", str(base)), "http://127.0.0.1:1")
        return HostUnderTest(kind, open_transport(host), host, local_base=base)
    if kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        base = tmp_path / "remote-serving"
        host = ssh_host(sshd, base)
        return HostUnderTest(kind, open_transport(host), host, local_base=base)
    s3 = request.getfixturevalue("s3_env")
    bucket = s3.make_bucket(f"sync-{uuid.uuid4().hex[:10]}")
    host = Host("s3", Target("s3", "serving/base", bucket=bucket), "http://127.0.0.1:1")
    return HostUnderTest(kind, open_transport(host), host, s3_client=s3.client(), bucket=bucket,
                         prefix="serving/base")


@pytest.fixture(params=["file", "ssh", "s3"])
def hut(request, tmp_path):
    """A host under test for each transport (see the module docstring)."""
    h = make_hut(request.param, request, tmp_path)
    yield h
    h.transport.close()


def two_deploys_waiting_for_x(x: Path, y: Path, first: list, second: list, holding) -> dict:
    """Two deploys over bases ``x`` and ``y`` (``first`` and ``second``: their connections, the
    hosts named differently) while a third holds X's lock: the second starts and must wait for X
    holding nothing, then the first, likewise; X is freed and each deploy's ``holding(conns)``
    (called while it holds its locks) is its outcome, or the ``LockHeld`` message it ended with.
    The lock-order tests: waiting in one order, neither holds Y while it waits for X."""
    import logging
    import threading

    from serving_sync.connections import locked
    from serving_sync.layout import LOCK_PATH
    from serving_sync.lock import HostLock, LockHeld
    from serving_sync.transports.local import LocalTransport

    waiting = {"first": threading.Event(), "second": threading.Event()}
    current = threading.local()

    class _Waits(logging.Handler):      # "... (waiting up to 20s, --lock-wait)": that deploy waits now
        def emit(self, record):
            if "--lock-wait" in record.getMessage() and getattr(current, "name", None):
                waiting[current.name].set()

    handler, hosts_log = _Waits(), logging.getLogger("mlops.sync.hosts")
    level = hosts_log.level
    hosts_log.addHandler(handler)
    hosts_log.setLevel(logging.INFO)
    holder = HostLock(LocalTransport(x), heartbeat_every=0)
    holder.acquire()
    outcomes: dict = {}

    def deploy(name, conns):
        current.name = name
        try:
            with locked(conns, wait=20.0):
                outcomes[name] = holding(conns)
        except LockHeld as exc:
            outcomes[name] = exc.message

    lock_path = y / LOCK_PATH
    threads = [threading.Thread(target=deploy, args=("second", second))]
    try:
        threads[0].start()
        assert waiting["second"].wait(15), "the second deploy never waited for X"
        assert not lock_path.exists(), "a deploy waiting for X holds Y"
        threads.append(threading.Thread(target=deploy, args=("first", first)))
        threads[1].start()
        assert waiting["first"].wait(15), "the first deploy never waited for X"
        assert not lock_path.exists(), "a deploy waiting for X holds Y"
    finally:
        holder.release()
        for t in threads:
            t.join(timeout=40)
        hosts_log.removeHandler(handler)
        hosts_log.setLevel(level)
    return outcomes
