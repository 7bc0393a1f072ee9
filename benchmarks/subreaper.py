"""Run a command as a Linux child subreaper, so the CPU of every process it starts gets counted.

    python benchmarks/subreaper.py -- /usr/sbin/sshd -D -f ...

Why: sshd's session for a non-root user is orphaned (its privilege-separation parent exits first)
and ends as a child of PID 1, so its CPU — decrypting the upload, the user's shell, tar, hashing —
never reaches sshd's reaped-children time and the fleet benchmark would miss it. Started under
this wrapper, orphans are reparented here instead (``PR_SET_CHILD_SUBREAPER``) and waited for, so
this process's reaped-children time (``/proc/<pid>/stat`` cutime + cstime) holds their CPU.
Exits with the command's exit status once it and every orphan are gone.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PREFIX = (sys.executable, os.path.abspath(__file__), "--")     # start_sshd(..., wrap=PREFIX)


def sshd_pids(server) -> list[int]:
    """The processes whose CPU with their reaped children is an sshd's share (started with
    ``wrap=PREFIX``): sshd itself (root's sessions, which it waits for; its pid from its
    ``PidFile``) and this wrapper (a non-root user's sessions, which sshd orphans)."""
    pids = [server.proc.pid]
    try:
        pids.append(int((server.dir / "sshd.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    return pids


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def wait_sessions(server, timeout: float = 5.0, poll: float = 0.01) -> bool:
    """Wait, at most ``timeout`` s, until an sshd started with ``wrap=PREFIX`` has no session
    left: the wrapper has no child but sshd, and sshd none (a child still listed, even exited,
    is not yet reaped, and its CPU not yet in the reaped-children time :func:`sshd_pids` is read
    for). False: some still there at ``timeout``."""
    pids = sshd_pids(server)
    wrapper, sshd = pids[0], (pids[1] if len(pids) > 1 else None)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in _children(wrapper) if p != sshd] + (_children(sshd) if sshd else [])
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: subreaper.py -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"subreaper: prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 1
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    # pass termination on to the command; the orphans it leaves are still waited for below. Once
    # the command is reaped its pid may be another process's: nothing is sent to it any more (a
    # signal then raised ProcessLookupError out of os.wait(), and the orphans were left behind)
    reaped = []

    def forward(sig, _frame):
        if not reaped:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            return status
        except InterruptedError:
            continue
        if pid == child:
            reaped.append(pid)
            status = os.waitstatus_to_exitcode(st)
            status = status if status >= 0 else 128 - status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
