"""Stands in for TF Serving's S3 filesystem: the local server cannot read ``s3://`` (real TF
Serving can), so a mirror thread copies the bucket's objects to a local folder for it
(``saved_model.pb`` last, as an S3 filesystem would see them complete) and rewrites the base paths
of ``models.config``; the objects and the config in the bucket are exactly what real TF Serving
would read."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class S3Mirror:
    """Copy ``s3://bucket/prefix`` to ``local`` every 0.2 s (bounded by stop()), rewriting the
    base paths in models.config from ``s3_base`` to ``local``."""

    def __init__(self, client, bucket: str, prefix: str, local: Path, s3_base: str):
        self.client, self.bucket, self.prefix, self.local, self.s3_base = client, bucket, prefix, local, s3_base
        self.etags: dict[str, str] = {}
        self._stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "S3Mirror":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def _loop(self, max_seconds: float = 900.0) -> None:
        deadline = time.monotonic() + max_seconds          # bounded even if stop() is never called
        while not self._stop.wait(0.2) and time.monotonic() < deadline:
            try:
                self.sync_once()
            except Exception as exc:  # noqa: BLE001 - reported by the tests that care
                self.errors.append(repr(exc))

    def sync_once(self) -> None:
        objs = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + "/"):
            for o in page.get("Contents", []):
                objs[o["Key"][len(self.prefix) + 1:]] = o["ETag"]
        files = sorted((k for k in objs if k != "models.config" and not k.startswith(".serving_sync/")),
                       key=lambda k: (k.endswith("saved_model.pb"), k))
        for rel in files:
            if self.etags.get(rel) != objs[rel]:
                self._get(rel, lambda b: b)
                self.etags[rel] = objs[rel]
        for rel in [k for k in self.etags if k not in objs]:
            (self.local / rel).unlink(missing_ok=True)
            del self.etags[rel]
            parent = (self.local / rel).parent
            while parent != self.local and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        if "models.config" in objs and self.etags.get("models.config") != objs["models.config"]:
            self._get("models.config", lambda b: b.replace(self.s3_base.encode(), str(self.local).encode()))
            self.etags["models.config"] = objs["models.config"]

    def _get(self, rel: str, transform) -> None:
        body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{rel}")["Body"].read()
        dest = self.local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.mirror-tmp")
        tmp.write_bytes(transform(body))
        os.replace(tmp, dest)
