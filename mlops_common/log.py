"""Logging for every command: human lines on stderr, secrets redacted."""
from __future__ import annotations

import logging
import sys

from .settings import secret_values

_CONFIGURED = False


class RedactSecrets(logging.Filter):
    """Replace the value of any secret environment variable in a log record with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            msg = record.getMessage()
            for s in secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, None
        return True


def redact(text: str) -> str:
    for s in secret_values():
        text = text.replace(s, "***")
    return text


def setup(verbose: bool = False) -> None:
    global _CONFIGURED
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger("mlops")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # Quieten chatty libraries unless asked.
    for name in ("paramiko", "urllib3", "botocore", "boto3", "s3transfer", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    _CONFIGURED = True


def get(name: str) -> logging.Logger:
    """A logger under the ``mlops`` hierarchy, e.g. ``get("sync.deploy")``."""
    return logging.getLogger(f"mlops.{name}")
