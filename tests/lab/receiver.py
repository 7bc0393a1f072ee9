"""A local HTTP receiver on 127.0.0.1 for what the code under test POSTs (webhooks, notifications).

``post_receiver(answer)`` serves until its ``with`` ends; ``answer(path, headers, body)`` is
called for every POST and returns the status to answer (headers are lower-cased).
"""
from __future__ import annotations

import contextlib
from http.server import BaseHTTPRequestHandler
from typing import Callable

from tests.helpers import loopback_http


@contextlib.contextmanager
def post_receiver(answer: Callable[[str, dict, bytes], int], *, location: str | None = None):
    """Yield the receiver's base URL (``http://127.0.0.1:PORT``). ``location``: a ``Location``
    header sent with every answer (a redirect's target)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            if location is not None:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with loopback_http(Handler) as url:
        yield url
