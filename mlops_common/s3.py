"""The one S3 client factory (data batches, ``s3://`` hosts, the shared store).

Endpoint from ``MLFLOW_S3_ENDPOINT_URL`` (MLflow's name), else ``AWS_ENDPOINT_URL``, with
path-style addressing there (MinIO, SeaweedFS); credentials from boto3's own chain (``AWS_*``).
boto3 is imported only when a client is made.
"""
from __future__ import annotations

import threading

from mlops_common import settings

# boto3.client() makes every client from boto3's one default session, which is not thread-safe:
# two prepare threads making theirs at once failed now and then (KeyError 'credential_provider' or
# 'endpoint_resolver', boto/boto3#1592, #2750). Clients are thread-safe once made; a Session of
# their own each costs ~0.4 s of CPU per client (the service model loaded again), so they are
# made one at a time instead.
_CLIENT_LOCK = threading.Lock()


def endpoint_url() -> str | None:
    return settings.env("MLFLOW_S3_ENDPOINT_URL") or settings.env("AWS_ENDPOINT_URL")


def client(*, endpoint: str | None = None, connect_timeout: float = 10, read_timeout: float = 60,
           max_attempts: int = 3, **config):
    """A boto3 S3 client; ``endpoint`` overrides the environment's; ``config`` adds botocore
    ``Config`` options (e.g. ``max_pool_connections``, ``signature_version``)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint or endpoint_url()
    if endpoint is not None and not endpoint.lower().startswith(("http://", "https://")):
        from mlops_common.errors import ConfigError  # boto3: a ValueError traceback, "Invalid endpoint"

        host = endpoint.split("://")[-1].rsplit("@", 1)[-1]        # never a user:password before an '@'
        raise ConfigError(f"the S3 endpoint in MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL is not an http(s) "
                          f"URL; write it with its scheme, e.g. http://{host}")
    if endpoint is not None:
        _check_endpoint(endpoint)
    _check_credentials()
    from botocore.exceptions import ProfileNotFound

    try:
        with _CLIENT_LOCK:
            return boto3.client("s3", endpoint_url=endpoint, config=Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint else {}, **config))
    except ProfileNotFound as exc:      # was "S3 at <endpoint> failed: ProfileNotFound": the endpoint blamed
        from mlops_common.errors import ConfigError

        raise ConfigError(f"AWS_PROFILE names the AWS profile '{exc.kwargs.get('profile', '')}', which is in "
                          f"neither ~/.aws/config nor ~/.aws/credentials (AWS_CONFIG_FILE, "
                          f"AWS_SHARED_CREDENTIALS_FILE); name one that is, or unset AWS_PROFILE") from None


def _check_credentials() -> None:
    """One line naming the ``AWS_*`` credential botocore cannot sign or send (never its value):
    bytes that are not UTF-8 (set from a Latin-1 shell: a UnicodeEncodeError traceback from the
    signing, or "failed: HTTPClientError"), or a line break or control character in the key id or
    the session token (they travel in headers: "failed: HTTPClientError", nothing named)."""
    from mlops_common.errors import ConfigError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = settings.env(name)
        if value is None:
            continue
        settings.check_utf8(name, value)
        if name != "AWS_SECRET_ACCESS_KEY" and any(c < " " or c == "\x7f" for c in value):
            raise ConfigError(f"{name} contains a line break or control character (pasted with a newline?); "
                              f"set it to the bare value")


def _check_endpoint(endpoint: str) -> None:
    """One line for an http(s) endpoint boto3 cannot use: ``http://``, ``http://[::1``, a space
    (boto3: a ValueError traceback) or a port that is not a number (``EndpointResolutionError``
    at the first request, nothing to fix named). The value is not echoed: it may hold a password."""
    from urllib.parse import urlsplit

    from mlops_common.errors import ConfigError

    try:
        parts = urlsplit(endpoint)
        port = parts.port                   # ValueError: not a number, or out of 0-65535
        problem = ("it names no host" if not parts.hostname
                   else "it holds a space or a line break" if any(c.isspace() for c in endpoint)
                   else "port 0" if port == 0 else None)
    except ValueError as exc:
        problem = f"{exc}"                  # "Invalid IPv6 URL", "Port could not be cast to integer value as 'x'"
        problem = problem.split(" as ")[0]  # never the text after it (a piece of the value)
    if problem:
        raise ConfigError(f"the S3 endpoint in MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL is not a usable "
                          f"URL ({problem}); write it as http(s)://host:port, e.g. http://127.0.0.1:8333")


# What went wrong, as both readers of boto3's errors tell it (each in its own words):
NO_CREDENTIALS, BAD_CREDENTIALS, DENIED, UNREACHABLE = "no_credentials", "bad_credentials", "denied", "unreachable"
NO_BUCKET, MISSING, CHECKSUM, CONNECTION, OTHER = "no_bucket", "missing", "checksum", "connection", "other"
BAD_NAME = "bad_name"       # botocore refused the request before sending it (an invalid bucket name)
_BY_CODE = {
    **dict.fromkeys(("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"),
                    BAD_CREDENTIALS),
    **dict.fromkeys(("AccessDenied", "403", "AllAccessDisabled"), DENIED),
    "NoSuchBucket": NO_BUCKET,
    **dict.fromkeys(("NoSuchKey", "404"), MISSING),
    **dict.fromkeys(("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"), CHECKSUM),
}


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, S3 error code) of a boto3 / botocore failure: one table of codes for the data
    batches' reader and the ``s3://`` transport, so an expired token gets the credentials hint in
    both."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return NO_CREDENTIALS, ""
    if isinstance(exc, ParamValidationError):
        return BAD_NAME, ""
    if isinstance(exc, EndpointConnectionError):
        return UNREACHABLE, ""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return _BY_CODE.get(code, OTHER), code
    if isinstance(exc, (BotoCoreError, OSError)):
        return CONNECTION, ""
    return OTHER, ""
