"""Which versions of a model should be served: TF Serving's file-system source, as pure functions.

TF Serving's ``FileSystemStoragePathSource`` lists the children of a model's ``base_path``, keeps
those whose names parse as integers (``00000123`` is version 123; ``.incoming-7-x`` is ignored)
and applies the model's version policy to pick the *aspired* versions the manager should load.
"""
from __future__ import annotations

from dataclasses import dataclass, field

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class VersionPolicy:
    """``latest {num_versions}`` (default latest 1), ``all``, or ``specific {versions}``."""
    kind: str = "latest"                 # "latest" | "all" | "specific"
    num_versions: int = 1                # latest only
    versions: frozenset[int] = field(default_factory=frozenset)  # specific only


def parse_version(name: str) -> int | None:
    """A child directory name as a version number, or None when TF Serving would ignore it.

    Like ``absl::SimpleAtoi``: optional surrounding ASCII whitespace (not Unicode spaces, which
    ``str.strip()`` would also take), an optional sign, decimal digits, within int64. A negative
    number is a version too (``-1`` is version -1): ``ParseVersionNumber`` checks no sign.
    """
    s = name.strip(" \t\n\v\f\r")
    if not s:
        return None
    digits = s[1:] if s[0] in "+-" else s
    if not digits.isdigit() or not digits.isascii():
        return None
    value = int(s)
    if value < INT64_MIN or value > INT64_MAX:
        return None
    return value


def discover(children: list[str], warn=None) -> dict[int, str]:
    """Map version number -> child name for the numeric children of a base path.

    ``IndexChildrenByVersion``: the children in sorted order (TF Serving lists them into a
    ``std::set``), a later name for the same number replacing an earlier one — of ``007`` and
    ``7`` the version is loaded from ``7`` (except under ``all``: see ``aspired``) — with TF
    Serving's warning passed to ``warn``.
    """
    found: dict[int, str] = {}
    for child in sorted(children):
        v = parse_version(child)
        if v is None:
            continue
        if v in found and warn is not None:
            warn(f"Duplicate version directories detected. Version {v} will be loaded from {child}, "
                 f"{found[v]} will be ignored.")
        found[v] = child
    return found


def aspired(policy: VersionPolicy, found: dict[int, str], children: list[str] | None = None) -> dict[int, str]:
    """The versions (and their directory names) that the policy wants loaded.

    ``all`` (``AspireAllVersions``) emits every numeric child of the sorted listing, so a number
    named twice is emitted twice and the manager keeps the first (the second is "already being
    managed"): with ``children`` given, version 7 of ``007`` and ``7`` loads from ``007``. The
    other policies read ``found`` (``IndexChildrenByVersion``: the later name).
    """
    if policy.kind == "all":
        if children is None:
            return dict(found)
        first: dict[int, str] = {}
        for child in sorted(children):
            v = parse_version(child)
            if v is not None and v in found:
                first.setdefault(v, child)
        return first
    if policy.kind == "specific":
        return {v: name for v, name in found.items() if v in policy.versions}
    n = max(1, policy.num_versions)
    keep = sorted(found, reverse=True)[:n]
    return {v: found[v] for v in keep}


def missing_specific(policy: VersionPolicy, found: dict[int, str]) -> list[int]:
    """Specific versions that were asked for but are not on disk (TF Serving logs a warning)."""
    if policy.kind != "specific":
        return []
    return sorted(v for v in policy.versions if v not in found)


def no_versions_reason(name: str, base_path: str, policy: VersionPolicy, found) -> str:
    """Why ``policy`` aspires no version of ``name`` given the numeric children ``found`` (what a
    new model's reload fails with; TF Serving logs it and waits). A ``specific`` policy whose
    versions are not there says so (TF Serving's warning) and which versions the folder holds: "No
    versions ... found" was untrue there. An empty ``specific`` list is TF Serving's own warning."""
    if policy.kind == "specific" and not policy.versions:
        return f"No specific versions requested for servable {name}."
    if policy.kind == "specific" and found:
        held = sorted(found, reverse=True)
        listed = ", ".join(str(v) for v in held[:10]) + (", ..." if len(held) > 10 else "")
        return (f"Version(s) {missing_specific(policy, found)} of servable {name}, requested as 'specific' "
                f"versions in the servable's version policy, were not found under base path {base_path} "
                f"(it holds version(s) {listed})")
    return f"No versions of servable {name} found under base path {base_path}"
