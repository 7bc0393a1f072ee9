"""Check an SSH server's host key against a known_hosts file: never accept an unknown key.

Pure decision on the file's text so that the verdict (ok / unknown / changed / revoked), with
the file line to fix and both fingerprints, is tested without a network.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownKey:
    line: int          # 1-based line number in the file
    patterns: str      # host field as written (may be hashed |1|salt|hash)
    key_type: str
    key_b64: str
    marker: str = ""   # "", "@revoked" or "@cert-authority" (never a pin: named in a refusal only)


@dataclass(frozen=True)
class Verdict:
    status: str                        # "ok" | "unknown" | "changed" | "revoked"
    line: int | None = None            # the known_hosts line that pins (or revokes) the host
    expected_fingerprint: str | None = None


def lookup_name(host: str, port: int) -> str:
    """How OpenSSH names the host in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key_b64: str) -> str:
    """OpenSSH ``SHA256:...`` fingerprint of a base64 public key blob; a damaged blob (a line cut
    by a bad copy and paste) is named as such, so the refusal still points at the line to fix."""
    try:
        blob = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        return "a damaged key (not valid base64)"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse(text: str) -> list[KnownKey]:
    keys: list[KnownKey] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = ""
        if fields[0].startswith("@"):
            marker, fields = fields[0], fields[1:]
            if marker not in ("@revoked", "@cert-authority"):
                continue
        if len(fields) < 3:
            continue
        keys.append(KnownKey(n, fields[0], fields[1], fields[2], marker))
    return keys


def _glob(pattern: str) -> re.Pattern:
    """OpenSSH host patterns: only ``*`` and ``?`` are wildcards (``[`` is literal)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in pattern.lower()) + r"\Z")


def _matches(patterns: str, name: str) -> bool:
    if patterns.startswith("|1|"):
        try:
            _, _, salt, digest = patterns.split("|", 3)
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
        except (ValueError, TypeError):
            return False
    matched = False
    for pat in patterns.split(","):
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        if _glob(pat).match(name):
            if negate:
                return False
            matched = True
    return matched


def cert_authority_lines(keys: list[KnownKey], host: str, port: int) -> list[int]:
    """Lines of ``@cert-authority`` entries whose patterns cover the host (not used: no certificates)."""
    name = lookup_name(host, port).lower()
    return [k.line for k in keys if k.marker == "@cert-authority" and _matches(k.patterns, name)]


def known_key_types(keys: list[KnownKey], host: str, port: int) -> tuple[list[str], list[str]]:
    """Key types pinned for the host (asked for first, as OpenSSH does), then the types pinned
    only by keys that are also @revoked (asked for after those: ssh reaches a host whose other
    pinned key is fine; alone, they are still asked for, so the refusal says revoked)."""
    name = lookup_name(host, port).lower()
    revoked = {k.key_b64 for k in keys if k.marker == "@revoked"}
    pinned = [k for k in keys if not k.marker and _matches(k.patterns, name)]
    good = [k.key_type for k in pinned if k.key_b64 not in revoked]
    return good, [k.key_type for k in pinned if k.key_b64 in revoked and k.key_type not in good]


def check(keys: list[KnownKey], host: str, port: int, key_type: str, key_b64: str) -> Verdict:
    """Verdict on the key a server offered."""
    name = lookup_name(host, port).lower()
    for k in keys:
        if k.marker == "@revoked" and k.key_b64 == key_b64:
            return Verdict("revoked", k.line, fingerprint(k.key_b64))
    pinned = [k for k in keys if not k.marker and _matches(k.patterns, name)]
    for k in pinned:
        if k.key_type == key_type and k.key_b64 == key_b64:
            return Verdict("ok", k.line, fingerprint(k.key_b64))
    if not pinned:
        return Verdict("unknown")
    same_type = [k for k in pinned if k.key_type == key_type]
    k = (same_type or pinned)[0]
    return Verdict("changed", k.line, fingerprint(k.key_b64))
