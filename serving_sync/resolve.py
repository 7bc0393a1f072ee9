"""Which version ``mlops sync deploy`` and ``mlops sync plan`` install: ``--version N`` or the one
holding ``production``, and ``--expect-version N``'s check of it (read from the registry)."""
from __future__ import annotations

from .errors import NoProduction, ProductionNotExpected


def resolve_version(model: str, version: int | None) -> tuple[int, str]:
    """The version to deploy: ``--version N`` (must exist) or the one holding ``production``."""
    from registry import versions

    if version is not None:
        return versions.get_version(model, version).version, "--version"
    v = versions.production_version(model)
    if v is None:
        raise NoProduction(f"no version of '{model}' holds the production alias; promote one first "
                           f"(mlops registry promote --version N) or pass --version N")
    return v, "production"


def expected_production(model: str, production: int, expect: int | None) -> None:
    """``--expect-version N``: a CI job deploys the version it promoted or nothing. Production may
    have moved since (a rollback, or an earlier deploy of N that failed and moved it back, so a
    rerun of the job would find every host up to date on the old version and pass)."""
    if expect is not None and production != expect:
        raise ProductionNotExpected(f"production of '{model}' is v{production}, not v{expect} (--expect-version): "
                                    f"it moved after v{expect} was promoted (a rollback, or a failed deploy of "
                                    f"v{expect} moved it back: see `mlops registry history`); nothing was deployed",
                                    now=production)
