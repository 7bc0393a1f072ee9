"""A detached service of the embedded default: started in its own process group, logging to a
file in the state folder, and recorded in ``<state>/<name>.json`` (pid, its start time, url) so
a later command can reuse or stop it — and never signals a program that got the pid after a
reboot or a crash. ``mlops.local_services`` starts MLflow and the model server with it,
``mlops.throwaway_server`` infra-validate's server.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from mlops.ports import port_in_use
from mlops_common import log, stop
from mlops_common.errors import ConfigError, ConnectionFailure
from mlops_common.procs import boot_id, group_listens_on, group_members, is_process, pid_alive, process_identity

_log = log.get("detached_service")


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: Path
    identity: str = ""       # procs.process_identity(pid) when started
    ports: dict = field(default_factory=dict)     # what it was started with, e.g. {"grpc": 8500}
    build: str = ""          # what started it (the starter's digest of its command and code)
    mark: str = ""           # the MLOPS_SERVICE_MARK its processes' environment holds (see _group_is_ours)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "pid": self.pid, "url": self.url, "log": str(self.log),
                           "identity": self.identity, "ports": self.ports, "build": self.build,
                           "mark": self.mark})

    @property
    def running(self) -> bool:
        """Its process is still the one we started (not another program that got the pid). A
        record without an identity is trusted only where none can be read (no /proc): on Linux
        it matched any process with ``mlflow`` in its argv — another user's server too."""
        return is_process(self.pid, self.identity)


def _record_path(state: Path, name: str) -> Path:
    return state / f"{name}.json"


def read_record(state: Path, name: str) -> Service | None:
    path = _record_path(state, name)
    try:
        if not path.is_file():
            return None
        text = path.read_text()
    except OSError as exc:      # a name too long, a folder that cannot be read: one line, not a traceback
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); point MLOPS_HOME at a folder you "
                          f"can read and write") from None
    try:
        d = json.loads(text)
        return Service(d["name"], int(d["pid"]), d["url"], Path(d["log"]), str(d.get("identity") or ""),
                       dict(d.get("ports") or {}), str(d.get("build") or ""), str(d.get("mark") or ""))
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None


def wait_http_ok(url: str, *, timeout: float, proc: subprocess.Popen | None = None,
                 log: Path | None = None, ok: tuple[int, ...] = (200,), log_kept: bool = True,
                 gone=None) -> None:
    """Poll ``url`` until it answers a status in ``ok``, the process dies, or ``timeout`` passes.
    With ``proc`` (started in its own group) only an answer from a port its group listens on
    counts: a server of another state folder that took the port first answered for one that
    could not bind it, and `mlops up` said "MLflow is up" on the other's database.
    The failure names ``log`` when it stays (``log_kept``), and quotes its last line either way.
    ``gone`` (a server that is no process of ours: infra-validate's container), asked while nothing
    answers, says why the server is gone for good (None while it runs): the wait ends at once."""
    deadline = time.monotonic() + timeout
    port, another = urlsplit(url).port or 80, False
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            taken = f"port {port} on 127.0.0.1 was taken by another program meanwhile: " if another else ""
            raise ConnectionFailure(f"{taken}the service exited with code {proc.returncode} before answering "
                                    f"at {url}{_log_hint(log, log_kept)}")
        try:
            if _get_direct(url).status_code in ok:
                another = proc is not None and group_listens_on(proc.pid, port) is False
                if not another:
                    return
        except requests.RequestException:
            why = gone() if gone is not None else None
            if why:
                raise ConnectionFailure(f"{why}, before answering at {url}") from None
        time.sleep(0.25)
    raise ConnectionFailure(f"{url} did not answer within {timeout:g}s{_log_hint(log, log_kept)}")


def _get_direct(url: str) -> requests.Response:
    """GET ``url`` never through a proxy: every server waited for here listens on this machine's
    loopback, which a proxy cannot reach. With HTTP_PROXY set and 127.0.0.1 not in NO_PROXY (a
    company network), `mlops up` and the demo waited 120 s for a server that was answering, then
    stopped it with "did not answer", its log's last line saying it was running."""
    with requests.Session() as session:
        session.trust_env = False
        return session.get(url, timeout=2)


def _log_hint(log: Path | None, kept: bool) -> str:
    """"; see <log>: <its last line>" for a message; the path only when the log stays (a
    throw-away server's log, infra-validate's, goes with its folder before anyone opens it) and
    nothing at all without a log (it read "see None")."""
    if log is None:
        return ""
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    last = (tail.strip().splitlines() or [""])[-1]
    return (f"; see {log}" if kept else "") + (f": {last}" if last else "")



def spawn(name: str, cmd: list[str], *, state: Path, url: str, health_url: str,
          env: dict[str, str] | None = None, timeout: float = 120,
          ok: tuple[int, ...] = (200,), ports: dict | None = None,
          log_kept: bool = True, build: str = "") -> tuple[Service, subprocess.Popen]:
    """Start ``cmd`` detached, record it as service ``name`` at once (a start killed during the
    wait — a CI cancel, a closed terminal — leaves a server ``mlops down`` can still stop), wait
    for ``health_url``; on any failure stop it and forget it."""
    import secrets

    log = state / f"{name}.log"
    rotate_log(log)
    mark = secrets.token_hex(8)
    env = {**(os.environ if env is None else env), SERVICE_MARK: mark, SERVICE_STATE: str(state), SERVICE_NAME: name}
    proc = svc = None
    try:    # from the start: a Ctrl-C (or SIGTERM) while the record is made stops the server too
        # a signal landing as Popen returns (its child already running) lost the child: under this
        # block it only asks, and the stop is raised at the block's end, inside this try
        with stop.deferred():
            with open_in_state(state, log.name, "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env=env)
            svc = Service(name, proc.pid, url, log, process_identity(proc.pid), dict(ports or {}), build, mark)
            write_record(state, svc)
        wait_http_ok(health_url, timeout=timeout, proc=proc, log=log, ok=ok, log_kept=log_kept)
    except BaseException:
        if proc is not None:
            stop_pid(proc.pid)
            if svc is not None:
                _stop_orphans(svc)      # its first process died (and was reaped): a worker kept the port
            _record_path(state, name).unlink(missing_ok=True)
        raise
    return svc, proc


LOG_KEEP_BYTES = 10 * 2**20     # the previous run's log keeps at most its last 10 MiB


def rotate_log(log: Path, keep: int | None = None) -> None:
    """At a service's start: its previous log becomes ``<log>.1`` (its last ``keep`` bytes; one
    older log is dropped), and the new run writes a new ``<log>``. The log was appended to forever
    (a server restarted daily for months: a state folder of gigabytes). Best effort: a log that
    cannot be moved is appended to as before."""
    keep = LOG_KEEP_BYTES if keep is None else keep
    old = log.with_name(log.name + ".1")
    try:
        size = log.stat().st_size
    except OSError:
        return          # no log yet (or no state folder: open_in_state says why)
    try:
        if size <= keep:
            os.replace(log, old)
            return
        with open(log, "rb") as f:
            f.seek(size - keep)
            f.readline()                # from the first whole line
            tail = f.read()
        tmp = old.with_name(f".{old.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(tail)
            os.replace(tmp, old)
        except OSError:
            tmp.unlink(missing_ok=True)     # a partial copy (a full disk) is not left behind
            raise
        log.unlink()
    except OSError as exc:
        _log.warning("cannot rotate %s (%s); appending to it", log, exc.strerror or exc)


def open_in_state(state: Path, name: str, mode: str):
    """``open(state / name, mode)``, creating the state folder; one line when it cannot be written."""
    try:
        state.mkdir(parents=True, exist_ok=True)
        return open(state / name, mode)
    except OSError as exc:
        raise ConfigError(f"cannot write the state folder {state} ({exc.strerror or exc}); point "
                          f"MLOPS_HOME at a folder you can write") from None


def write_whole(path: Path, text: str) -> None:
    """``text`` at ``path``, whole or not at all (written beside it, then renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); point MLOPS_HOME at a folder "
                          f"you can write") from None


def write_record(state: Path, svc: Service) -> None:
    """The service's record, whole or not at all."""
    write_whole(_record_path(state, svc.name), svc.to_json())


def _term_then_kill(send, gone, timeout: float) -> bool:
    """SIGTERM with ``send``, wait up to ``timeout`` for ``gone()``, then SIGKILL likewise. False
    when there was nothing to signal (``send`` found no process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            send(sig)
        except ProcessLookupError:
            return sig is signal.SIGKILL
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(0.1)
    return True


def stop_pid(pid: int, *, timeout: float = 15, what: str = "") -> None:
    """SIGTERM the process group of ``pid`` (its own group: ``spawn`` starts a session), else
    ``pid`` alone, then SIGKILL if it does not exit in time. ConfigError (one line, naming
    ``what``) when it runs as another user: `mlops down` of a server root started was a
    PermissionError traceback."""
    try:
        own_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return

    def send(sig) -> None:
        try:        # never signal a group the process merely belongs to
            (os.killpg if own_group else os.kill)(pid, sig)
        except PermissionError:
            try:
                os.kill(pid, sig)
            except PermissionError:
                raise ConfigError(f"cannot stop {what or 'process'} (pid {pid}): it runs as another user; "
                                  f"stop it as that user (`mlops down` with the same MLOPS_HOME)") from None

    def gone() -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return not pid_alive(pid)

    _term_then_kill(send, gone, timeout)


def _stop_orphans(rec: Service, *, timeout: float = 15) -> bool:
    """The rest of a service whose first process died (MLflow's uvicorn worker keeps the port):
    its process group, which ``spawn`` made with the recorded pid as its number. Linux does not
    give that number to a new process while the group lives, so every member is ours — in the boot
    the record was made in: after a reboot the number may be any program's group (it killed
    another program's processes). True when there were any."""
    boot = rec.identity.split(":", 1)[0]
    if not rec.identity or not boot or boot != boot_id() or pid_alive(rec.pid) \
            or not _group_is_ours(rec.pid, rec.mark):
        return False        # the number is another program's now (or never was ours to judge)

    def send(sig) -> None:
        try:
            os.killpg(rec.pid, sig)
        except PermissionError:
            raise ProcessLookupError from None     # not ours to signal: as if there were none

    def gone() -> bool:
        try:
            os.killpg(rec.pid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        return False

    return _term_then_kill(send, gone, timeout)


SERVICE_MARK = "MLOPS_SERVICE_MARK"
# the state folder and the name a service was started for, in its environment too: with its record
# gone (the state folder removed under it: `rm -rf .mlops`, `git clean -fdx`), `mlops down` said
# "nothing running" and the next start "port taken by another program", and nothing stopped it
SERVICE_STATE = "MLOPS_SERVICE_STATE"
SERVICE_NAME = "MLOPS_SERVICE_NAME"


# how long a group member that reads as an empty environment (inside execve) is read again
EXEC_SETTLE_S = 1.0


def _group_is_ours(pgid: int, mark: str) -> bool:
    """A process of group ``pgid`` has ``SERVICE_MARK=mark`` in its environment (inherited from
    ``spawn``). The group's number is the recorded pid: once that process died, the number may be
    given to another program that makes a group of it and exits (a daemon's double fork, a shell's
    pipeline), and `mlops down` killed that program's processes. A record without a mark (made
    before marks) is judged by its boot alone, as before."""
    if not mark:
        return True
    want = f"{SERVICE_MARK}={mark}".encode()
    # A member caught inside execve reads as an empty environment (the kernel sets the new one up
    # after switching the process to its new memory): a server's first process that forks a worker
    # and dies at once left that worker running when the read fell there. Such a read is asked
    # again, for at most EXEC_SETTLE_S.
    deadline = time.monotonic() + EXEC_SETTLE_S
    while True:
        unsure = False
        for entry in group_members(pgid):
            env = _environ(entry)
            if env is None:
                continue        # gone meanwhile, or not ours to read
            if want in env.split(b"\0"):
                return True
            unsure = unsure or not env
        if not unsure or time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _environ(pid: str) -> bytes | None:
    """``/proc/<pid>/environ`` (None: gone, or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def _group_lives(rec: Service) -> bool:
    """What ``_stop_orphans`` would stop: ``rec``'s process group, its first process gone, in the
    boot the record was made in."""
    boot = rec.identity.split(":", 1)[0]
    if not rec.identity or not boot or boot != boot_id() or pid_alive(rec.pid) \
            or not _group_is_ours(rec.pid, rec.mark):
        return False
    try:
        os.killpg(rec.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def forget(state: Path, rec: Service) -> bool:
    """Stop what is left of a recorded service and drop its record. True when something of it ran;
    a record whose pid is now another program's is dropped without a signal."""
    ran = rec.running
    if ran:
        stop_pid(rec.pid, what=f"{rec.name} at {rec.url}")
    else:
        ran = _stop_orphans(rec)
    try:
        _record_path(state, rec.name).unlink(missing_ok=True)
    except OSError as exc:      # a read-only state folder: it is stopped; say the record stays
        _log.warning("%s is stopped, but its record %s could not be removed (%s)", rec.name,
                    _record_path(state, rec.name), exc.strerror or exc)
    return ran


def unrecorded_services(state: Path) -> dict[int, str]:
    """The process groups (their number: their name) of services started for ``state`` that still
    run: found by the ``SERVICE_STATE`` of their environment (only processes this user may read),
    zombies left out. After ``stop_service`` of every record, what is left is what no record names."""
    want = os.fsencode(f"{SERVICE_STATE}={state}")      # a path that is not UTF-8 too (`mlops down` takes it)
    found: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if want not in env or not pid_alive(int(entry)):
                continue
            pgid = os.getpgid(int(entry))
        except (OSError, ValueError):
            continue        # gone meanwhile, or not ours to read
        if pgid == os.getpgrp():
            continue        # never the caller's own group
        name = next((v.split(b"=", 1)[1].decode(errors="replace") for v in env
                     if v.startswith(f"{SERVICE_NAME}=".encode())), "service")
        found.setdefault(pgid, name)
    return found


def stop_unrecorded(state: Path, *, timeout: float = 15) -> list[str]:
    """Stop what ``unrecorded_services`` finds (each group: SIGTERM, then SIGKILL); their names."""
    stopped = []
    for pgid, name in unrecorded_services(state).items():
        def send(sig, pgid=pgid) -> None:
            try:
                os.killpg(pgid, sig)
            except PermissionError:
                raise ProcessLookupError from None     # not ours to signal: as if there were none

        def gone(pgid=pgid) -> bool:
            return not any(pid_alive(int(p)) for p in group_members(pgid))

        if _term_then_kill(send, gone, timeout):
            stopped.append(name)
    return stopped


def stop_service(state: Path, name: str) -> bool:
    """Stop service ``name`` if its recorded process (or what is left of it) still runs, and
    forget it. True when it ran."""
    rec = read_record(state, name)
    return False if rec is None else forget(state, rec)


def _unrecorded_hint(state: Path | None) -> str:
    """For a port found taken: a service started for ``state`` that no record names may hold it (its
    state folder was removed under it), and `mlops down` stops it; "" when there is none."""
    if state is None:
        return ""
    groups = unrecorded_services(state)
    with contextlib.suppress(OSError):
        for path in state.glob("*.json"):
            with contextlib.suppress(ConfigError):
                if (rec := read_record(state, path.stem)) is not None:
                    groups.pop(rec.pid, None)
    if not groups:
        return ""
    names = ", ".join(sorted(set(groups.values())))
    return (f" ({names}, started for {state}, still runs with no record of it, its folder removed under it? "
            f"`mlops down` or `make down` stops it)")


def refuse_taken_ports(rec: Service | None, ports: dict[int, str], *, state: Path | None = None) -> None:
    """One line for a port another program holds. With ``rec`` (a service of ours that runs):
    only ports it does not hold itself, checked before it is stopped — `mlops up --port P2`
    stopped a healthy server on P1, then refused because P2 was taken. With ``state``: the line
    says when a service started for it with no record may be that program."""
    if rec is not None and not rec.running:
        if _group_lives(rec):
            return      # what is left of it may hold its ports: starting it stops that first
        rec = None      # gone (a reboot, a crash): its ports are checked as any (the demo's MLflow
        #                 started, then the model server found its port taken: MLflow left running)
    own = set() if rec is None else {*(rec.ports or {}).values(), urlsplit(rec.url).port}
    for port, what in ports.items():
        if port not in own and port_in_use(port):
            kept = f"; {rec.name} keeps running on {rec.url}" if rec is not None else ""
            raise ConfigError(f"port {port} on 127.0.0.1 is taken by another program{kept}; set {what} "
                              f"to a free port{_unrecorded_hint(state)}")


@contextlib.contextmanager
def one_start_at_a_time(state: Path, name: str, timeout: float = 300):
    """Hold ``state``'s start lock for service ``name`` (``flock``, released if the process dies).
    Two `mlops up` at once both started a server: one lost the port, its error path removed the
    winner's record, and the server that listened was recorded nowhere."""
    from mlops_common import filelock

    def timed_out() -> Exception:
        return ConfigError(f"another start of {name} for {state} has held its lock for {timeout:g}s; wait "
                           f"for it or run `mlops down`")

    with open_in_state(state, f".{name}.start-lock", "a") as f, \
            filelock.held(f, timeout=timeout, poll=0.1, timed_out=timed_out):
        yield

