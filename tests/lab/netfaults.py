"""Network faults on loopback for the lab: :class:`CutProxy`, a TCP pass-through that resets a
connection after N client -> server bytes (the ``cut_proxy`` fixture in tests/fixtures/netfaults.py
wraps it; benchmarks use it to count bytes), and :class:`DelayProxy`, one that holds every chunk
for a fixed time each way, as a distant host's round trip does (``benchmarks/bench_latency.py``).

All threads are daemons bounded by socket timeouts.
"""
from __future__ import annotations

import queue
import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) so the peer sees the connection die, not a clean EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Proxy:
    """A loopback TCP listener that connects each client to ``target`` and hands both sockets
    to ``_serve`` (the subclass's pumps); ``stop`` resets every connection."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            self._socks += [client, server]
            self._serve(client, server)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        for s in self._socks:
            _reset(s)
        self._thread.join(timeout=5)


class CutProxy(_Proxy):
    """Loopback TCP pass-through that resets the first ``cut_connections`` connections once they
    carried ``cut_after`` bytes client -> server (``None``: never; then it only counts ``sent``)."""

    def __init__(self, target_port: int, cut_after: int | None, *, cut_connections: int = 1,
                 target_host: str = "127.0.0.1"):
        self.cut_after = cut_after
        self.cut_connections = cut_connections
        self.connections = 0
        self.cuts = 0
        self.sent: list[int] = []      # bytes connection i carried client -> server
        self._lock = threading.Lock()
        super().__init__(target_port, target_host)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            limit = self.cut_after if self.connections <= self.cut_connections else None
            index = len(self.sent)
            self.sent.append(0)
        state = {"closed": False}
        threading.Thread(target=self._pump, args=(client, server, limit, state, index), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, None, state), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None, state: dict,
              index: int | None = None) -> None:
        sent = 0
        src.settimeout(0.5)
        while not self._stop.is_set() and not state["closed"]:
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if limit is not None and sent + len(data) >= limit:
                try:
                    dst.sendall(data[: max(0, limit - sent)])
                except OSError:
                    pass
                with self._lock:
                    self.cuts += 1
                break
            try:
                dst.sendall(data)
            except OSError:
                break
            sent += len(data)
            if index is not None:
                self.sent[index] = sent
        if not state["closed"]:
            state["closed"] = True
            _reset(src)
            _reset(dst)

class DelayProxy(_Proxy):
    """Loopback TCP pass-through that delivers each chunk ``rtt / 2`` seconds after it arrived, in
    both directions, so every request/answer exchange through it takes at least ``rtt`` more
    (bandwidth is not limited: reading and delivering are separate threads)."""

    def __init__(self, target_port: int, rtt: float, *, target_host: str = "127.0.0.1"):
        self.delay = rtt / 2
        self.connections = 0
        super().__init__(target_port, target_host)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        self.connections += 1
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((client, server), (server, client)):
            chunks: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._deliver, args=(chunks, dst), daemon=True).start()

    def _read(self, src: socket.socket, chunks: queue.Queue) -> None:
        src.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _deliver(self, chunks: queue.Queue, dst: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                due, data = chunks.get(timeout=0.5)
            except queue.Empty:
                continue
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)      # pass the half-close on, as TCP would
                    return
                dst.sendall(data)
            except OSError:
                return
