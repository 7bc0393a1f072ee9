"""How serving_sync reaches a host's base directory: ``file://``, ``ssh://`` or ``s3://``.

``open_transport(host)`` picks the implementation from the host's target; modules are
imported lazily so that paramiko or boto3 load only when that kind of host is used.
"""
from __future__ import annotations

from .base import Transport


def open_transport(host, *, connect_timeout: float = 15.0) -> Transport:
    """A connected transport for a ``serving_sync.hosts.Host``."""
    scheme = host.target.scheme
    if scheme == "file":
        from .local import LocalTransport

        return LocalTransport(host.target.path)
    if scheme == "ssh":
        from .ssh import SshTransport

        return SshTransport.connect(host.target, known_hosts=host.known_hosts,
                                    identity_file=host.identity_file, timeout=connect_timeout)
    if scheme == "s3":
        from .s3 import S3Transport

        return S3Transport(host.target.bucket, host.target.path)
    raise ValueError(f"unsupported scheme {scheme!r}")


__all__ = ["Transport", "open_transport"]
