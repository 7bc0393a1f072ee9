"""The one S3 client factory (data batches, ``s3://`` hosts, the shared store).

Endpoint from ``MLFLOW_S3_ENDPOINT_URL`` (MLflow's name), else ``AWS_ENDPOINT_URL``, with
path-style addressing there (MinIO, SeaweedFS); credentials from boto3's own chain (``AWS_*``).
boto3 is imported only when a client is made.
"""
from __future__ import annotations

from mlops_common import settings


def endpoint_url() -> str | None:
    return settings.env("MLFLOW_S3_ENDPOINT_URL") or settings.env("AWS_ENDPOINT_URL")


def client(*, endpoint: str | None = None, connect_timeout: float = 10, read_timeout: float = 60,
           max_attempts: int = 3, **config):
    """A boto3 S3 client; ``endpoint`` overrides the environment's; ``config`` adds botocore
    ``Config`` options (e.g. ``max_pool_connections``, ``signature_version``)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint or endpoint_url()
    return boto3.client("s3", endpoint_url=endpoint, config=Config(
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else {}, **config))
