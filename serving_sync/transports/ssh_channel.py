"""Reading and writing one SSH exec channel: the bytes a host script prints and the bytes we send it.

Plain functions on a paramiko ``Channel`` (no transport state), so that the upload, the pull and
every short command read the same way: to the end, up to a script's go line, or to the end while
watching for a requested interrupt.
"""
from __future__ import annotations

import re
import socket
import time

from mlops_common.errors import UserError

from .ssh_scripts import MARK

# What the deploy reads of one host command, per stream. The most a script of ours prints is a
# version's hashed listing, about 100 bytes a file (64 MiB: some 600,000 files, past any
# SavedModel); its stderr is a few lines. Unbounded, a host that printed without end (a startup
# file of the deploy user's login shell in a loop, a program writing garbage) filled this
# machine's memory, one such buffer per host of a ``--parallel`` fleet, and never ended the read.
MAX_OUTPUT = 64 * 1024 * 1024
# What a script prints before its go line (``read_until_go``): the marker, a few flags, and what a
# login shell's startup file printed before them (a message of the day).
MAX_HEAD = 1024 * 1024


class OutputTooLarge(UserError):
    """A host command printed more than the deploy reads of it; the channel was closed."""


def _too_large(ch, where: str, what: str, limit: int, tail: bytes) -> OutputTooLarge:
    ch.close()                  # sshd closes the command's pipes: the host stops writing too
    return OutputTooLarge(
        f"{where}: a command on the host printed more than {limit // (1024 * 1024)} MiB {what}, far more "
        f"than the deploy's scripts print; stopped reading it so that it cannot fill this machine's memory "
        f"(check the deploy user's startup files, ~/.bashrc, ~/.profile, ~/.zshenv, for output in a loop; "
        f"last line: {_URL.sub('<URL>', last_line(tail[-4096:]))})")


# URLs in a host's output are not quoted: the pull gives the host presigned URLs (credentials for
# their lifetime), which a shell tracing its commands prints (every other message of the pull hides
# them, ``store.hide_presigned_urls``), nor the rest of one cut off before its scheme
_URL = re.compile(r"https?://\S+|\S*X-Amz-\S+")


def last_line(err: bytes) -> str:
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no error output"


def exec_command(ch, command: str, timeout: float) -> None:
    """``ch.exec_command(command)`` with its wait for the host's answer bounded by ``timeout``
    (``socket.timeout``, the channel closed). paramiko waits for that answer without a timeout: a
    host that stopped answering between the channel's opening (bounded) and the command's start
    (a network that went silent, sshd stuck setting up the session) held the deploy for ever."""
    _bounded(ch, lambda: ch.exec_command(command), timeout)


def invoke_subsystem(ch, name: str, timeout: float) -> None:
    """``ch.invoke_subsystem(name)`` (the SFTP server) with its wait bounded as ``exec_command``'s."""
    _bounded(ch, lambda: ch.invoke_subsystem(name), timeout)


def _bounded(ch, request, timeout: float) -> None:
    wait = ch._wait_for_event       # what paramiko's request calls once it sent the request

    def bounded() -> None:
        if not ch.event.wait(timeout):
            ch.close()
            raise socket.timeout()
        wait()                      # at once now: the answer, or the channel's end raised

    ch._wait_for_event = bounded
    try:
        request()
    finally:
        del ch._wait_for_event


def sender(ch):
    """``sendall`` without paramiko's copy of the remaining buffer per packet (memoryview slices)."""
    def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = ch.send(view)
            if n <= 0:
                raise EOFError("the host closed the upload channel")
            view = view[n:]
    return send


def read_until_go(ch, go: bytes, *, mark_timeout: float, where: str = "the host",
                  limit: int = MAX_HEAD) -> tuple[str, bytes]:
    """Read a script's stdout until the line ``go``; return how it went and what was read. The
    upload waits for ``@ready`` (then streams), the pull for its nonce line (then sends the URLs).

    ``"go"``: the line came (our script runs and waits for its input). ``"ended"``: stdout ended
    first (the script stopped early: ``@nofetch``, ``@nospace``, a restricted shell; or a program
    that is not our script exited). ``"silent"`` / ``"other"``: no ``MARK`` line within
    ``mark_timeout`` and nothing / something else printed: the account runs another program
    (``ForceCommand internal-sftp``, a forced command), which must not be sent anything. Once
    ``MARK`` is there, the wait for ``go`` is the channel's timeout (``socket.timeout``). More than
    ``limit`` bytes before ``go`` is ``OutputTooLarge`` (the channel closed).
    """
    buf = b""
    mark = MARK.encode()
    saved = ch.gettimeout()
    deadline = time.monotonic() + mark_timeout
    try:
        while True:
            lines = buf.split(b"\n")[:-1]
            if go in lines:
                return "go", buf
            marked = mark in lines
            if marked:
                ch.settimeout(saved)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ("other" if buf else "silent"), buf
                ch.settimeout(left)
            try:
                data = ch.recv(4096)
            except socket.timeout:
                if marked:
                    raise
                continue
            if not data:
                return "ended", buf + b"\n"
            buf += data
            if len(buf) > limit:
                raise _too_large(ch, where, "before its script started", limit, buf)
    finally:
        ch.settimeout(saved)


class _Wake:
    """Woken when data (or the end) reaches either stream of a channel: the event that paramiko's
    ``BufferedPipe.set_event`` sets from the transport's thread. Not ``Channel.fileno()``: that
    is an OS pipe the transport thread writes to while feeding data, and ``Channel.close()`` closes
    its descriptors without stopping that thread, so closing a channel the host still floods (too
    much output, a timeout, an interrupt) could make the thread write to a closed descriptor
    (EBADF: the whole SSH connection dies, "SSH session not active" for the host's next command) or
    to one the number was reused for. ``clear`` is a no-op: a stream's read emptying its buffer
    must not hide data that came on the other; the reader resets before it reads instead."""

    def __init__(self) -> None:
        import threading

        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        pass

    def reset(self) -> None:
        self._event.clear()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)


def read_output(ch, timeout: float, *, interruptible: bool = False, poll: float = 0.5, where: str = "the host",
                limit: int = MAX_OUTPUT) -> tuple[bytes, bytes]:
    """stdout and stderr to their end, read together; more than ``timeout`` seconds with output on
    neither is a stall (``socket.timeout``). ``interruptible``: a requested interrupt is checked at
    least every ``poll`` seconds. Both streams share the channel's window: read one to its end
    before the other and a host printing more than the window (16 MB) to the other (a noisy
    login shell, a traceback loop) blocks, the first never ends, and the command only stalls.
    More than ``limit`` bytes on either stream is ``OutputTooLarge`` naming ``where`` (the channel
    closed)."""
    from ..cancel import check

    chunks: tuple[list[bytes], list[bytes]] = ([], [])
    sizes = [0, 0]
    reads = (ch.recv, ch.recv_stderr)
    open_streams = [0, 1]
    saved = ch.gettimeout()
    wake = _Wake()              # set while data is buffered on either stream, or at the end
    ch.in_buffer.set_event(wake)
    ch.in_stderr_buffer.set_event(wake)
    ch.settimeout(0.0)          # recv: what is buffered, socket.timeout if nothing
    quiet_since = time.monotonic()
    try:
        while open_streams:
            got = False
            wake.reset()        # before the reads: data fed after them sets it again
            for i in list(open_streams):
                try:
                    data = reads[i](65536)
                except socket.timeout:
                    continue
                if data:
                    chunks[i].append(data)
                    sizes[i] += len(data)
                    if sizes[i] > limit:
                        raise _too_large(ch, where, ("to stdout", "to stderr")[i], limit, chunks[i][-1])
                    got = True
                else:
                    open_streams.remove(i)
            if got:
                quiet_since = time.monotonic()
            elif open_streams:
                left = timeout - (time.monotonic() - quiet_since)
                if left <= 0:
                    raise socket.timeout()
                wake.wait(min(left, poll) if interruptible else left)
            if interruptible:
                check()
        return b"".join(chunks[0]), b"".join(chunks[1])
    finally:
        ch.settimeout(saved)
