"""Process facts shared by the local services and the deploy lock."""
from __future__ import annotations

import os
from collections.abc import Iterator


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def boot_id() -> str:
    """This boot's id (Linux), "" where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_identity(pid: int) -> str:
    """Who ``pid`` is, beyond its number: the boot and the process's start time (Linux
    ``/proc/<pid>/stat`` field 22, clock ticks after boot). A pid recorded in a file may belong to
    another program after a reboot or once the number is reused; the same pid with the same
    identity is the same process. "" where it cannot be read (not Linux, process gone)."""
    boot = boot_id()
    if not boot:
        return ""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[-1].split()[19]
        return f"{boot}:{start}"
    except (OSError, IndexError):
        return ""


def is_process(pid: int, identity: str | None) -> bool:
    """``pid`` is alive and is the process recorded as ``identity`` (``process_identity`` when
    it was started). A record without an identity is trusted only where none can be read."""
    if not pid_alive(pid):
        return False
    now = process_identity(pid)
    if not now:
        return not identity          # no /proc: the number is all there is
    return identity == now


def group_listens_on(pgid: int, port: int) -> bool | None:
    """Whether a process of group ``pgid`` holds a listening TCP socket on ``port`` (Linux: the
    socket's inode in ``/proc/net/tcp*``, found among the group's open files). None where that
    cannot be read (no /proc): the caller has only the answer to go by."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[-1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not readable:
        return None
    if not inodes:
        return False
    for entry in group_members(pgid):
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return True
        except OSError:
            continue        # gone meanwhile, or not ours to read
    return False


def group_members(pgid: int) -> Iterator[str]:
    """The pids (as ``/proc`` names them) of the processes in group ``pgid`` now; those that end
    or cannot be read meanwhile are left out. Nothing where there is no ``/proc``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[-1].split()[2]) == pgid:
                    yield entry
        except (OSError, IndexError, ValueError):
            continue        # gone meanwhile, or not ours to read
