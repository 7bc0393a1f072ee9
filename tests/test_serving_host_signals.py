"""The local server's SIGTERM/SIGINT handler and the loop it ends."""
from __future__ import annotations

import signal
import threading

from tests.helpers import signal_at_every_line


def test_a_signal_stops_the_local_server_whichever_line_of_its_wait_it_lands_on(tmp_path, monkeypatch):
    """Python runs a signal handler in the main thread between two of its lines. The handler set
    a ``threading.Event`` that the main loop waited on: one landing while the loop held the
    Event's lock (going into or out of its ``wait``) waited for that lock forever, and the server
    ignored every later SIGTERM (the tests' and systemd's stop) until SIGKILL. Here the "handler"
    runs at every line of the waits ``main`` itself makes (once each), as a signal may."""
    from serving_host import local_server

    handlers = {}
    monkeypatch.setattr(signal, "signal", lambda sig, h: handlers.__setitem__(sig, h))
    threading_file = threading.__file__

    def called_from_main(frame, depth: int) -> bool:
        for _ in range(depth):
            frame = frame.f_back
            if frame is None:
                return False
            if frame.f_code is local_server.main.__code__:
                return True
        return False

    code = []
    signal_at_every_line(
        lambda: code.append(local_server.main([f"--model_base_path={tmp_path}", "--port=0", "--rest_api_port=0",
                                               "--file_system_poll_wait_seconds=0"])),
        lambda: handlers[signal.SIGTERM](signal.SIGTERM, None), timeout=90,
        traced=lambda frame: frame.f_code.co_filename == threading_file and called_from_main(frame, 2),
        armed=lambda: signal.SIGTERM in handlers)
    assert code == [0]
