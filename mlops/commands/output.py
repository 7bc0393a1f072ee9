"""The one ``--json`` printer of every command."""
from __future__ import annotations

from mlops_common import strict_json


def emit(doc) -> None:
    """Exactly one JSON document on stdout, on one line (``jq``- and line-reader-friendly);
    human progress goes to stderr."""
    print(strict_json.dumps(doc, default=str))
