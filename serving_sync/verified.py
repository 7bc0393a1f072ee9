"""Which versions passed the smoke test on a host: ``<base>/.serving_sync/verified/<model>.json``.

Host-side state, written by the deploy right after a version passed its smoke test there and
read by the planner: a version that is loaded in the main entry AND verified on this host can be
switched to at once (the instant rollback). Entries of versions removed by retention (dead S3
folders too) are dropped before it removes them.
"""
from __future__ import annotations

import json
import time

from mlops_common import log
from mlops_common.lineage import os_user

from .layout import verified_path
from .transports.base import Transport

logger = log.get("sync.verified")
FORMAT = "serving_sync.verified/1"


def parse(data: bytes | str) -> dict[int, dict]:
    """``{version: {"at": ..., "by": ...}}``; an unreadable record counts as empty (re-verify)."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            return {}
        return {int(k): dict(v) for k, v in (doc.get("versions") or {}).items() if int(k) > 0}
    except (ValueError, TypeError, AttributeError):
        return {}


def render(model: str, versions: dict[int, dict]) -> bytes:
    doc = {"format": FORMAT, "model": model,
           "versions": {str(k): versions[k] for k in sorted(versions)}}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def read(transport: Transport, model: str) -> dict[int, dict]:
    try:
        data = transport.read_file(verified_path(model))
    except FileNotFoundError:
        return {}
    record = parse(data)
    if not record and data.strip():
        logger.warning("%s: %s is unreadable; versions will be smoke-tested again", transport.url,
                       verified_path(model))
    return record


def add(transport: Transport, model: str, version: int, *, route: str) -> None:
    record = read(transport, model)
    record[int(version)] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": os_user(),
                            "route": route}
    transport.write_file_atomic(verified_path(model), render(model, record))


def forget(transport: Transport, model: str, versions: list[int]) -> None:
    record = read(transport, model)
    if not any(int(v) in record for v in versions):
        return
    for v in versions:
        record.pop(int(v), None)
    transport.write_file_atomic(verified_path(model), render(model, record))
