"""The S3 fixture itself: a real SeaweedFS server that other tests rely on."""
from __future__ import annotations

import base64
import hashlib

import pytest


def test_s3_server_roundtrip_checksum_and_conditional_put(s3_server):
    from botocore.exceptions import ClientError

    bucket = s3_server.make_bucket("fixture-check")
    assert s3_server.make_bucket("fixture-check") == bucket  # idempotent
    c = s3_server.client()
    data = b"hello seaweed" * 100
    c.put_object(Bucket=bucket, Key="a/b.txt", Body=data, ChecksumAlgorithm="SHA256")
    assert c.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == data
    head = c.head_object(Bucket=bucket, Key="a/b.txt", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    # a wrong checksum is rejected by the server
    with pytest.raises(ClientError):
        c.put_object(Bucket=bucket, Key="a/bad.txt", Body=data,
                     ChecksumSHA256=base64.b64encode(b"\0" * 32).decode())
    # conditional create: the second one fails
    c.put_object(Bucket=bucket, Key="lock", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=bucket, Key="lock", Body=b"2", IfNoneMatch="*")
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"


def test_s3_env_points_boto3_at_the_server(s3_env):
    import boto3

    s3_env.make_bucket("fixture-env")
    # endpoint from AWS_ENDPOINT_URL, credentials from AWS_* (as our code and MLflow read them)
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert "fixture-env" in names
