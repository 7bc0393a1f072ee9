"""Errors specific to reaching and changing serving hosts (all one actionable line)."""
from __future__ import annotations

from mlops_common.errors import ConfigError, ConnectionFailure, NotFoundError, RefusedError, UserError


class NoProduction(NotFoundError):
    """No version of the model holds ``production`` (the alias deleted, or the version it named)."""


class HostUnreachable(ConnectionFailure):
    """A serving host (SSH, S3, TF Serving) could not be reached or the connection dropped."""


class HostKeyRejected(RefusedError):
    """The SSH host key is unknown or changed: never accepted automatically."""


class AuthFailed(ConfigError):
    """The SSH server or S3 refused our credentials."""


class HostPermissionDenied(ConfigError):
    """The deploy user may not write where it must (the base directory or bucket)."""


class DiskFull(UserError):
    """Not enough space on the host for a version (checked before and during upload)."""

    needed: int | None = None      # bytes, when the check before the upload refused it
    free: int | None = None

    @classmethod
    def at(cls, where: str, needed: int | None, free: int, *, nothing: str = "uploaded") -> "DiskFull":
        """The one line every transport says: where, how much, what to do, that nothing changed."""
        exc = cls(f"{where}: not enough free space: {(needed or 0) / 1e6:.1f} MB needed, {free / 1e6:.1f} MB "
                  f"free; free space there (or lower retention) and rerun; nothing was {nothing}")
        exc.needed, exc.free = needed, free
        return exc


class PublishRefused(RefusedError):
    """A published version differs from the registry's (versions are immutable)."""


class VerifyFailed(UserError):
    """Files on the host do not match the manifest after an upload."""


class LockHeld(RefusedError):
    """Another deploy holds the host's lock (or left a stale one)."""


class ServingError(UserError):
    """TF Serving answered with an error (load failed, bad request, bad config)."""


class NotTFServing(ConfigError):
    """A host's ``rest_url`` answers, but not as TF Serving does (another web server on that port)."""


class ServingTimeout(UserError):
    """TF Serving did not reach the expected state within the bounded wait."""


class SmokeFailed(UserError):
    """A smoke test (signature, golden outputs, latency) failed on a host."""


class LedgerWriteFailed(UserError):
    """A host's row could not be written to the ledger: the deploy stops (the ledger is the record)
    and every host is put back, but the version is not to blame."""


class ProductionNotExpected(RefusedError):
    """``production`` is not the version the caller expected (``sync deploy --expect-version``, a
    ``sync watch`` pass that only records what its hosts serve): nothing was deployed. ``now``:
    the version production names."""

    def __init__(self, message: str, *, now: int | None = None, exit_code: int | None = None):
        super().__init__(message, exit_code=exit_code)
        self.now = now


class ProductionMoved(UserError):
    """``production`` moved to another version while the deploy ran (a rollback, a promotion):
    the deploy stops before its next wave and puts every host back; the version is not to blame
    and the next deploy installs what production names now. ``deployed``: the deploy's result when
    its hosts stay on the version (a newer version overtook it after its last wave: it is recorded
    deployed), else None (nothing kept)."""

    deployed = None

    def __init__(self, model: str, deploying: int, now: int | None, *, tail: str = ""):
        super().__init__(f"production of '{model}' moved from v{deploying} to "
                         f"{'v' + str(now) if now is not None else 'no version'} while this deploy ran"
                         + (f"; {tail}" if tail else ""))
        self.now = now
