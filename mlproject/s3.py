"""Data batches on S3 (``s3://bucket/prefix``): list, read and write objects with boto3.

The endpoint comes from ``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL`` (MinIO, SeaweedFS,
...), credentials from the standard ``AWS_*`` variables. Every boto3 failure becomes one line
that says what to fix.
"""
from __future__ import annotations

import contextlib

from mlops_common import s3 as s3_factory
from mlops_common.errors import ConfigError, ConnectionFailure, NotFoundError, UserError, exc_text

MAX_KEYS = 10_000  # bound on how many objects one listing may return


def is_s3(location: str) -> bool:
    return str(location).startswith("s3://")


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    rest = uri[len("s3://"):] if is_s3(uri) else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"'{uri}' is not an S3 location; expected s3://bucket/prefix")
    return bucket, prefix


endpoint_url = s3_factory.endpoint_url
client = s3_factory.client


@contextlib.contextmanager
def s3_errors(what: str):
    """Translate boto3/botocore failures inside the block into one-line user errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = endpoint_url() or "AWS S3"
    try:
        yield
    except UserError:
        raise
    except (BotoCoreError, ClientError) as exc:
        kind, code = s3_factory.classify(exc)
        if kind == s3_factory.NO_CREDENTIALS:
            raise ConfigError(f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY") from None
        if kind == s3_factory.UNREACHABLE:
            raise ConnectionFailure(f"{what}: cannot reach S3 at {where}; check MLFLOW_S3_ENDPOINT_URL "
                                    f"/ AWS_ENDPOINT_URL and that the server runs") from None
        if kind in (s3_factory.NO_BUCKET, s3_factory.MISSING):
            raise NotFoundError(f"{what}: {code} at {where}; check the bucket and prefix") from None
        if kind in (s3_factory.DENIED, s3_factory.BAD_CREDENTIALS):
            raise ConfigError(f"{what}: S3 refused access ({code}); check AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY") from None
        if kind == s3_factory.BAD_NAME:
            raise ConfigError(f"{what}: not a valid S3 location ({exc_text(exc, 160)}); check the bucket name "
                              f"in the s3:// URL (lower case letters, digits, '.' and '-')") from None
        if kind == s3_factory.CONNECTION:
            raise ConnectionFailure(f"{what}: S3 at {where} failed: {type(exc).__name__}") from None
        raise UserError(f"{what}: S3 answered {code or 'an error'} at {where}") from None


def folder_prefix(prefix: str) -> str:
    """The key prefix of the folder ``prefix``: ``incoming`` -> ``incoming/`` (never ``incoming-rejected/``)."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def list_keys(uri: str, *, suffix: str = "") -> list[str]:
    """Keys in the folder ``uri`` and its sub-folders (``s3://b/incoming`` = ``incoming/``: dated
    sub-folders such as ``incoming/2026-01/`` are read, a sibling such as ``incoming-rejected/``
    is not) ending in ``suffix`` (in any case: ``BATCH.NPZ``), sorted; bounded by ``MAX_KEYS``."""
    bucket, prefix = parse_uri(uri)
    prefix = folder_prefix(prefix)
    keys: list[str] = []
    with s3_errors(f"listing {uri}"):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"] != prefix
                     and o["Key"].lower().endswith(suffix.lower())]
            if len(keys) > MAX_KEYS:
                raise UserError(f"more than {MAX_KEYS} objects under {uri}; use a narrower prefix")
    return sorted(keys)


def get_bytes(bucket: str, key: str) -> bytes:
    with s3_errors(f"reading s3://{bucket}/{key}"):
        return client().get_object(Bucket=bucket, Key=key)["Body"].read()


def put_bytes(uri: str, data: bytes) -> None:
    """Write one object (S3 writes are atomic: readers see all of it or nothing)."""
    bucket, key = parse_uri(uri)
    if not key or key.endswith("/"):
        raise ConfigError(f"'{uri}' names no object; give s3://bucket/path/name.npz")
    with s3_errors(f"writing {uri}"):
        client().put_object(Bucket=bucket, Key=key, Body=data)

