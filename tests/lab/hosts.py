"""Serving hosts for deploy tests: a local TF-Serving-compatible server each, behind a ``file``,
``ssh`` or ``s3`` target, written into ``$MLOPS_HOME/hosts.toml``.

:class:`HostFleet` makes them. ``file`` and ``ssh`` hosts borrow a server with a clean base from
the :class:`~tests.lab.servers.ServerPool` (given back at ``close()``), and so do ``s3`` hosts
(the bucket's mirror is written into the borrowed server's base); a host with extra server flags
gets a server of its own, unless ``pooled`` (monitored hosts: the pool lends servers started with
the same flags). SSH hosts log in to an sshd from
``sshd_factory`` (real OpenSSH on loopback, pinned host key) and use a base directory on this
machine that the host's TF server reads. S3 hosts publish to a bucket of the ``s3`` server; an
:class:`~tests.lab.s3mirror.S3Mirror` copies the bucket to the folder the local server reads.
"""
from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.lab.s3mirror import S3Mirror
from tests.lab.servers import MODEL_SERVER_ARGS, ServerPool


@dataclass
class ServingHost:
    name: str
    kind: str
    base: Path                  # where the host's TF server reads (file/ssh: the host base itself)
    server: object              # tests.lab.tfserving.TFServingHandle
    entry: dict                 # the [[hosts]] table
    s3_prefix: str | None = None
    mirror: S3Mirror | None = None

    @property
    def rest_url(self) -> str:
        return self.server.rest_url


def toml_value(value) -> str:
    return json.dumps(value)  # TOML basic strings are JSON strings for our plain values


def hosts_toml(entries: list[dict]) -> str:
    """A hosts file's text: one ``[[hosts]]`` table per entry."""
    lines = []
    for entry in entries:
        lines.append("[[hosts]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    return "\n".join(lines)


class HostFleet:
    """The hosts of one model (``model`` names the S3 prefixes) and its hosts file."""

    def __init__(self, model: str, hosts_file: Path, tmp: Path, factory, *, pool: ServerPool | None = None,
                 sshd_factory=None, s3=None):
        self.model, self.hosts_file, self.tmp, self.factory = model, hosts_file, tmp, factory
        self.pool, self.sshd_factory, self.s3 = pool, sshd_factory, s3
        self.hosts: list[ServingHost] = []
        self._stops: list = []
        self._borrowed: list = []
        self._mirrors: dict[int, S3Mirror] = {}      # id(server) -> the mirror writing its base (s3 hosts)
        self._sshd_server = None

    def new_host(self, kind: str, grpc: bool, name: str | None, server_args: tuple = (),
                 pooled: bool = False) -> ServingHost:
        """A host (not yet in the hosts file). ``pooled``: ``server_args`` too are lent by the pool."""
        name = name or f"{kind}{len(self.hosts) + 1}-{uuid.uuid4().hex[:4]}"
        if self.pool is None or (server_args and not pooled):       # a server of its own
            base = self.tmp / f"host-{name}"
            server = self.factory(base, grpc=grpc, extra_args=MODEL_SERVER_ARGS + tuple(server_args))
        else:
            server = self.pool.take(tuple(server_args))
            base = server.base
            self._borrowed.append(server)
        entry = {"name": name, "rest_url": server.rest_url}
        if grpc:
            entry["grpc"] = server.grpc_address
        mirror = prefix = None
        if kind == "file":
            entry["target"] = f"file://{base}"
        elif kind == "ssh":
            assert self.sshd_factory is not None, "ssh hosts: request the sshd_factory fixture in the test"
            sshd = self.sshd()
            entry.update(target=sshd.target(base), known_hosts=str(sshd.known_hosts),
                         identity_file=str(sshd.identity_file))
        elif kind == "s3":
            assert self.s3 is not None, "s3 hosts: request the s3_env fixture in the test"
            bucket = self.s3.make_bucket("deploy-hosts")
            prefix = f"{self.model}-{name}"
            entry["target"] = f"s3://{bucket}/{prefix}"
            mirror = S3Mirror(self.s3.client(), bucket, prefix, base, f"s3://{bucket}/{prefix}").start()
            self._stops.append(mirror.stop)
            self._mirrors[id(server)] = mirror
        else:
            raise ValueError(kind)
        return ServingHost(name, kind, base, server, entry, prefix, mirror)

    def sshd(self):
        """The one sshd the ssh hosts of this fleet log in to (started on first use)."""
        if self._sshd_server is None:
            self._sshd_server = self.sshd_factory()
        return self._sshd_server

    def add_host(self, kind: str = "file", *, grpc: bool = True, name: str | None = None,
                 server_args: tuple = ()) -> ServingHost:
        """``server_args``: extra server flags (e.g. ``--monitoring_config_file``): a fresh server."""
        h = self.new_host(kind, grpc, name, server_args)
        self.hosts.append(h)
        self.write_hosts_file()
        return h

    def add_hosts(self, n: int, kind: str = "file", *, grpc: bool = True, server_args: tuple = (),
                  pooled: bool = False) -> list[ServingHost]:
        names = [f"{kind}{len(self.hosts) + i + 1}-{uuid.uuid4().hex[:4]}" for i in range(n)]
        if kind == "ssh":
            self.sshd()
        with ThreadPoolExecutor(n) as pool:
            new = list(pool.map(lambda nm: self.new_host(kind, grpc, nm, server_args, pooled), names))
        self.hosts += new
        self.write_hosts_file()
        return new

    def write_hosts_file(self, hosts: list[ServingHost] | None = None) -> Path:
        self.hosts_file.write_text(hosts_toml([h.entry for h in hosts or self.hosts]))
        return self.hosts_file

    def config_text(self, host: ServingHost) -> str:
        """The models.config the host's target holds (s3: the object in the bucket)."""
        if host.kind == "s3":
            c = self.s3.client()
            bucket = host.entry["target"].split("/")[2]
            return c.get_object(Bucket=bucket, Key=f"{host.s3_prefix}/models.config")["Body"].read().decode()
        return (host.base / "models.config").read_text()

    def close(self) -> None:
        """Stop the S3 mirrors and give the borrowed servers back to the pool (once: a second
        close does nothing, so no server is handed out twice)."""
        stops, self._stops = self._stops, []
        borrowed, self._borrowed = self._borrowed, []
        for stop in stops:
            stop()
        for server in borrowed:
            mirror = self._mirrors.pop(id(server), None)
            if mirror is None or not mirror.thread.is_alive():    # a mirror still writing: not lent again
                self.pool.give_back(server)
