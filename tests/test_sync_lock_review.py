"""Host locks and host keys, against the faults a review found: a damaged known_hosts line was a
traceback, a forced interrupt during the first lock pass left every lock it took (blocking the
next deploy for the lock's TTL), another deploy's lock caught between its create and its write
was called corrupt (with --break-lock advice, the same token for every empty file), and a lock
TTL of 0.01 s was accepted. Real files on disk, a real paramiko key; no network."""
from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import paramiko
import pytest

from mlops_common import settings
from mlops_common.errors import ConfigError
from serving_sync.connections import HostConn, locked
from serving_sync.errors import HostKeyRejected, LockHeld
from serving_sync.hosts import Target
from serving_sync.layout import LOCK_PATH
from serving_sync.lock import HostLock
from serving_sync.transports import known_hosts as kh
from serving_sync.transports.local import LocalTransport
from serving_sync.transports.ssh_connect import check_host_key


def test_a_damaged_known_hosts_line_is_a_refusal_that_names_the_line(tmp_path):
    keys = kh.parse("# pinned\n127.0.0.1 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC\n")   # cut short
    offered = paramiko.RSAKey.generate(1024)
    with pytest.raises(HostKeyRejected) as e:
        check_host_key(offered, keys, tmp_path / "known_hosts",
                       Target("ssh", "/srv", host="127.0.0.1", port=22, user="deploy"))
    msg = e.value.message
    assert "\n" not in msg and "line 2" in msg and "damaged key" in msg and "refusing" in msg


def test_a_known_hosts_file_with_no_entry_at_all_says_so(tmp_path):
    """A garbage file (the wrong file named in the hosts file) read as "host not in FILE"."""
    known = tmp_path / "known_hosts"
    known.write_text("this is not\na known_hosts file\n# a comment\n")
    offered = paramiko.RSAKey.generate(1024)
    target = Target("ssh", "/srv", host="127.0.0.1", port=22, user="deploy")
    with pytest.raises(HostKeyRejected) as e:
        check_host_key(offered, kh.parse(known.read_text()), known, target)
    assert "none of its 2 lines is a known_hosts entry: is it the right file?" in e.value.message
    known.write_text("# only comments\n")
    with pytest.raises(HostKeyRejected) as e:
        check_host_key(offered, [], known, target)
    assert "known_hosts entry" not in e.value.message and "is not in" in e.value.message


class _SlowLock(LocalTransport):
    """Taking the lock takes a second (a host far away)."""

    def create_exclusive(self, rel, data):
        ok = super().create_exclusive(rel, data)
        if rel == LOCK_PATH:
            time.sleep(1.0)
        return ok


def test_a_forced_interrupt_during_the_first_lock_pass_releases_what_it_took(tmp_path):
    conns = []
    for i in range(3):
        (tmp_path / f"h{i}").mkdir()
        conns.append(HostConn(SimpleNamespace(name=f"h{i}"), _SlowLock(tmp_path / f"h{i}"), client=None))
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))   # a second Ctrl-C
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with locked(conns):
                time.sleep(5)
    finally:
        timer.cancel()
    assert [i for i in range(3) if (tmp_path / f"h{i}" / LOCK_PATH).exists()] == []


def test_a_lock_being_written_is_another_deploys_not_a_corrupt_one(tmp_path, monkeypatch):
    base = tmp_path / "h"
    base.mkdir()
    owner = HostLock(LocalTransport(base), heartbeat_every=0)
    path = base / LOCK_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")                                     # created, not yet written
    content = owner._new().to_json()

    def sleep(seconds):           # its creator writes it while the reader waits for it (not 0.3 s
        if not path.read_bytes():  # later by a timer: a loaded machine ran that past the wait)
            path.write_bytes(content)
        time.sleep(seconds)

    from serving_sync import lock as lock_module

    clock = SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.sleep = sleep
    with monkeypatch.context() as m:
        m.setattr(lock_module, "time", clock)
        with pytest.raises(LockHeld) as e:
            HostLock(LocalTransport(base), heartbeat_every=0).acquire()
    assert "corrupt" not in e.value.message and "another deploy holds the lock" in e.value.message
    path.write_bytes(b"")                 # still empty a second later: its creator died in between
    taker = HostLock(LocalTransport(base), heartbeat_every=0)
    taker.acquire()
    try:
        assert taker.took_over and path.read_bytes() == taker.info.to_json()
    finally:
        taker.release()
    path.write_bytes(b"{half a lock")                         # unreadable and not empty: corrupt
    with pytest.raises(LockHeld, match="cannot be read \\(corrupt\\)"):
        HostLock(LocalTransport(base), heartbeat_every=0).acquire()


@pytest.mark.parametrize("raw", ["0.01", "0", "nan"])
def test_a_lock_ttl_shorter_than_a_second_is_refused(monkeypatch, raw):
    monkeypatch.setenv("MLOPS_LOCK_TTL", raw)
    with pytest.raises(ConfigError, match="at least 1"):
        settings.lock_ttl()




def test_a_variable_named_for_a_secret_is_redacted_like_the_known_ones(monkeypatch):
    """``--secret-env HOOK_SECRET``: its value is a secret too (redaction knew only fixed names)."""
    from mlops_common import log

    monkeypatch.setenv("HOOK_SECRET_FOR_TEST", "zq8-unusual-hmac-secret-value")
    assert "zq8-unusual" in log.redact("secret zq8-unusual-hmac-secret-value")
    monkeypatch.setattr(settings, "_NAMED_SECRET_ENV_VARS", set())
    settings.treat_as_secret("HOOK_SECRET_FOR_TEST")
    assert log.redact("secret zq8-unusual-hmac-secret-value") == "secret ***"


@pytest.mark.parametrize("kind", ["file", "ssh"])    # S3's conditional PUT creates it with its bytes
def test_a_creator_stalled_before_writing_its_lock_never_holds_it_beside_the_breaker(kind, request, tmp_path,
                                                                                    monkeypatch):
    """Found in review: a deploy stalled between creating its lock file and writing it (a slow SFTP
    round trip, a loaded machine) for over SETTLE_S had its empty lock taken over as a dead one's;
    its write then went to the removed file and both deploys held the host."""
    from serving_sync.transports import open_transport
    from tests.test_sync_support import make_hut

    hut = make_hut(kind, request, tmp_path)
    other = open_transport(hut.host)
    breaker = HostLock(other, heartbeat_every=0)
    stalled: list = []
    started: list = []

    def meanwhile():       # the creator is stalled: its file is empty for over SETTLE_S
        started.append(True)
        stalled.append(breaker.acquire())

    if kind == "file":
        real_write = os.write

        def write(fd, data):
            if not started and os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{LOCK_PATH}"):
                meanwhile()
            return real_write(fd, data)
        monkeypatch.setattr(os, "write", write)
    else:
        real_create = hut.transport._create

        class _Stalls:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def write(self, data):
                if not started:
                    meanwhile()
                return self.f.write(data)

        monkeypatch.setattr(hut.transport, "_create",
                            lambda path: _Stalls(real_create(path)) if path.endswith(f"/{LOCK_PATH}")
                            else real_create(path))
    creator = HostLock(hut.transport, heartbeat_every=0)
    try:
        with pytest.raises(LockHeld):
            creator.acquire()
        assert stalled and json.loads(hut.raw_read(LOCK_PATH))["token"] == stalled[0].token
    finally:
        creator.release()
        breaker.release()
        other.close()
        hut.transport.close()


def test_a_signal_raised_by_settle_while_connecting_closes_the_transports_that_opened(monkeypatch):
    """``settle`` raises a Ctrl-C / SIGTERM once every call returned: the connections they opened
    were lost with its results and never closed (an SSH session per host until the process ended)."""
    from serving_sync import connections, parallel

    closed: list[str] = []

    class Transport:
        def __init__(self, name: str):
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    real_settle = parallel.settle

    def settle_then_signal(*args, **kwargs):
        real_settle(*args, **kwargs)        # every host connected, then the signal that landed meanwhile
        raise KeyboardInterrupt

    monkeypatch.setattr(connections, "open_transport", lambda host: Transport(host.name))
    monkeypatch.setattr(parallel, "settle", settle_then_signal)
    hosts = [SimpleNamespace(name=f"h{i}", rest_url="http://127.0.0.1:9/") for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        with connections.connected(hosts):
            pytest.fail("the block ran after the signal")
    assert sorted(closed) == ["h0", "h1", "h2"]


class _InterruptedAfterItsSecondCreate(LocalTransport):
    """The second lock file this transport creates is made, then a forced stop lands (the second
    Ctrl-C raises KeyboardInterrupt in the main thread as the create returns)."""

    creates = 0

    def create_exclusive(self, rel, data):
        ok = super().create_exclusive(rel, data)
        if rel == LOCK_PATH:
            self.creates += 1
            if self.creates == 2:
                raise KeyboardInterrupt
        return ok


def test_a_forced_stop_as_the_one_at_a_time_pass_takes_a_lock_releases_it(tmp_path):
    """The first pass finds h1 held and gives h0 back; the pass one host at a time takes h0 again
    and the forced stop lands before ``c.lock`` was set: the lock stayed on h0 for its TTL."""
    for name in ("h0", "h1"):
        (tmp_path / name).mkdir()
    other = HostLock(LocalTransport(tmp_path / "h1"), heartbeat_every=0)     # another deploy's
    other.acquire()
    h0 = _InterruptedAfterItsSecondCreate(tmp_path / "h0")
    conns = [HostConn(SimpleNamespace(name="h0"), h0, client=None),
             HostConn(SimpleNamespace(name="h1"), LocalTransport(tmp_path / "h1"), client=None)]
    try:
        with pytest.raises(KeyboardInterrupt):
            with locked(conns, wait=5.0):
                pytest.fail("locked every host")
    finally:
        other.release()
    assert h0.creates == 2 and not (tmp_path / "h0" / LOCK_PATH).exists()
    assert [c.lock for c in conns] == [None, None]


def _two_ctrl_c_in_the_wait_for(prefix: str, ready: threading.Event, monkeypatch):
    """``parallel.settle``'s wait for its threads ``<prefix>_N`` gets two Ctrl-C (out of its join,
    in the main thread) once ``ready`` is set: the first is kept, the second stops the wait.
    Returns the real join, to wait for the abandoned threads afterwards."""
    real_join, raised = threading.Thread.join, []

    def join(self, timeout=None):
        if (threading.current_thread() is threading.main_thread() and self.name.startswith(prefix + "_")
                and len(raised) < 2):
            assert ready.wait(10)
            raised.append(1)
            raise KeyboardInterrupt(len(raised))
        return real_join(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", join)
    return real_join


def _finish_abandoned(prefix: str, real_join) -> None:
    for t in [t for t in threading.enumerate() if t.name.startswith(prefix + "_")]:
        real_join(t, 10)
        assert not t.is_alive(), f"{t.name} still runs"


class _Gate:
    """Hosts a and b wait in their call until ``go`` (both under way when the Ctrl-Cs land)."""

    def __init__(self):
        self.entered = {"a": threading.Event(), "b": threading.Event()}
        self.both, self.go = threading.Event(), threading.Event()

    def hold(self, name: str) -> None:
        if name in self.entered:
            self.entered[name].set()
            if all(e.is_set() for e in self.entered.values()):
                self.both.set()
            assert self.go.wait(10)


def test_a_second_ctrl_c_while_connecting_leaves_no_connection_open(monkeypatch):
    """A second Ctrl-C stops ``settle``'s wait at once; the connections its threads still opened
    were never closed (``connected`` had closed what it knew of), and the threads went on to the
    next hosts. Now a thread closes what it opens after the stop, and takes no other host."""
    from serving_sync import connections

    gate, opened = _Gate(), []

    class Transport:
        def __init__(self, name):
            self.name, self.closed = name, False

        def close(self):
            self.closed = True

    def open_transport(host):
        gate.hold(host.name)
        t = Transport(host.name)
        opened.append(t)
        return t

    monkeypatch.setattr(connections, "open_transport", open_transport)
    monkeypatch.setattr(connections, "CONNECT_AT_ONCE", 2)
    real_join = _two_ctrl_c_in_the_wait_for("connect", gate.both, monkeypatch)
    hosts = [SimpleNamespace(name=n, rest_url="http://127.0.0.1:9") for n in "abc"]
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            with connections.connected(hosts):
                pass
        assert e.value.args == (2,)
    finally:
        gate.go.set()
        _finish_abandoned("connect", real_join)
    assert sorted(t.name for t in opened) == ["a", "b"], "a host was connected after the stop"
    assert [t.name for t in opened if not t.closed] == [], "a connection opened after the stop stayed open"


def test_a_second_ctrl_c_during_the_first_lock_pass_leaves_no_lock(tmp_path, monkeypatch):
    """The first lock pass's threads still took locks after a second Ctrl-C stopped the wait:
    ``locked`` released the ones it saw (before they were created: "taken over by someone else")
    and never saw the later ones, so the hosts stayed locked for the TTL. Now a thread releases a
    lock it takes after the stop itself, and no thread tries another host."""
    from serving_sync import connections

    gate = _Gate()

    class Gated(LocalTransport):
        def create_exclusive(self, rel, data):
            if rel == LOCK_PATH:
                gate.hold(self.base.name)
            return super().create_exclusive(rel, data)

    conns = []
    for n in "abc":
        (tmp_path / n).mkdir()
        conns.append(HostConn(SimpleNamespace(name=n), Gated(tmp_path / n), client=None))
    monkeypatch.setattr(connections, "LOCK_AT_ONCE", 2)
    real_join = _two_ctrl_c_in_the_wait_for("lock", gate.both, monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            with locked(conns):
                pass
        assert e.value.args == (2,)
    finally:
        gate.go.set()
        _finish_abandoned("lock", real_join)
    assert [n for n in "abc" if (tmp_path / n / LOCK_PATH).exists()] == [], "a host stayed locked"
    beating = [t.name for t in threading.enumerate() if t.name.startswith("lock-heartbeat") and str(tmp_path) in t.name]
    assert beating == [], "a lock's heartbeat still runs"


def test_a_lock_whose_owners_clock_is_ahead_says_so_not_when_it_is_taken_over(tmp_path):
    """Found by review (2026-12-07, eighteenth stop): an owner whose clock ran an hour ahead (a
    CI runner off NTP, killed) left a lock the refusal called "last heartbeat 0s ago; taken over
    automatically after 10 min": a person waited 10 min and met the same line, the lock held for
    the hour more. Now the line says the heartbeat is ahead of this clock, names NTP, and says
    when it is really taken over."""
    base = tmp_path / "h"
    base.mkdir()
    ahead = HostLock(LocalTransport(base), ttl=600, heartbeat_every=0, clock=lambda: time.time() + 3600)
    ahead.acquire()
    try:
        with pytest.raises(LockHeld) as e:
            HostLock(LocalTransport(base), ttl=600, heartbeat_every=0).acquire()
        msg = e.value.message
        assert "0s ago" not in msg and "after 10 min" not in msg, msg
        assert "60 min ahead of this machine's clock" in msg and "NTP" in msg, msg
        assert "taken over automatically only in 70 min" in msg and "--break-lock" in msg, msg
    finally:
        ahead.release()


def test_an_owner_whose_heartbeat_cannot_be_written_still_learns_its_lock_was_taken_over(tmp_path):
    """Found by review (2026-12-07, eighteenth stop): a heartbeat write that failed (a full disk)
    skipped the check that the lock is still ours: silent for the TTL, the lock was rightly taken
    over as stale, and the owner's thread only noted "trouble" at every beat, never ``lost``; the
    deploy went on, its put-back writing to a host another deploy held. Now a failed beat still
    reads the lock and says it was lost."""
    from serving_sync.lock import heartbeat_path

    class DiskFullForHeartbeats(LocalTransport):
        def write_file_atomic(self, rel, data):
            if rel.startswith(heartbeat_path("")):
                raise OSError(28, "No space left on device")
            return super().write_file_atomic(rel, data)

    base = tmp_path / "h"
    base.mkdir()
    owner = HostLock(DiskFullForHeartbeats(base), ttl=600, heartbeat_every=0)
    owner.acquire()
    token = owner.info.token
    taker = HostLock(LocalTransport(base), ttl=600, heartbeat_every=0, break_lock=token)
    taker.acquire()                        # stale after the TTL (here: named), another deploy's now
    try:
        with pytest.raises(LockHeld, match="lost its lock"):
            owner.beat()
        with pytest.raises(OSError):       # still ours: the write's own error, as before
            taker_owner = HostLock(DiskFullForHeartbeats(base), ttl=600, heartbeat_every=0)
            taker_owner.info = taker.info
            taker_owner.beat()
    finally:
        owner.release()
        taker.release()
    assert not (base / LOCK_PATH).exists()


def test_a_second_ctrl_c_in_the_first_lock_pass_closes_no_connection_a_lock_try_still_uses(tmp_path, monkeypatch):
    """Eighteenth stop: after a second Ctrl-C in the first lock pass, ``connected``'s clean-up
    closed every connection while lock tries still ran on them; over SSH a create that reached
    the host lost its answer to that close, the try failed, and the lock stayed for its TTL. Now
    a connection a try still uses is closed by that try once it is done (its lock released)."""
    from serving_sync import connections

    gate, transports = _Gate(), []

    class Cut(LocalTransport):
        """The lock's create reaches the host; its answer is lost if the connection closed meanwhile."""

        closed = False

        def create_exclusive(self, rel, data):
            if rel != LOCK_PATH:
                return super().create_exclusive(rel, data)
            gate.hold(self.base.name)
            created = super().create_exclusive(rel, data)
            if self.closed:
                raise OSError("Socket is closed")
            return created

        def close(self):
            self.closed = True
            super().close()

    def open_transport(host):
        transports.append(Cut(tmp_path / host.name))
        return transports[-1]

    for n in "abc":
        (tmp_path / n).mkdir()
    monkeypatch.setattr(connections, "open_transport", open_transport)
    monkeypatch.setattr(connections, "LOCK_AT_ONCE", 2)
    hosts = [SimpleNamespace(name=n, rest_url="http://127.0.0.1:9") for n in "abc"]
    real_join = _two_ctrl_c_in_the_wait_for("lock", gate.both, monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            with connections.connected(hosts) as conns, locked(conns):
                pass
        assert e.value.args == (2,)
    finally:
        gate.go.set()
        _finish_abandoned("lock", real_join)
    assert [n for n in "abc" if (tmp_path / n / LOCK_PATH).exists()] == [], "a host stayed locked"
    assert sorted(t.base.name for t in transports if not t.closed) == [], "a connection stayed open"


def test_a_heartbeat_channel_that_died_is_opened_again_and_the_beats_go_on(request, tmp_path):
    """Found by review (2026-12-07, eighteenth stop): the heartbeat thread's own SFTP channel (ssh
    hosts) was never opened again after an error: one channel cut (the rest of the connection
    fine) made every later beat fail on the dead channel, silently (``trouble``), so the lock was
    taken over after the TTL while the deploy still ran. Now a failed beat closes its channel and
    the next beat opens a new one. Real loopback sshd."""
    from serving_sync.lock import heartbeat_path
    from tests.test_sync_support import make_hut

    hut = make_hut("ssh", request, tmp_path)
    channels: list = []
    real_channel = hut.transport.lock_channel

    def recorded():
        channels.append(real_channel())
        return channels[-1]

    hut.transport.lock_channel = recorded
    owner = HostLock(hut.transport, ttl=600, heartbeat_every=0.1)
    beats: list = []
    beaten = threading.Event()
    real_beat = owner.beat

    def counted(t=None):
        real_beat(t)
        beats.append(t)
        beaten.set()

    owner.beat = counted
    owner.acquire()
    try:
        assert beaten.wait(10), "the heartbeat thread never beat"
        channels[0].sftp.get_channel().close()       # the thread's channel is cut, the connection is not
        written = lambda: json.loads(hut.raw_read(heartbeat_path(owner.info.token)))["heartbeat"]  # noqa: E731
        before = written()
        beaten.clear()
        deadline = time.monotonic() + 10
        while beats[-1] is channels[0] and time.monotonic() < deadline:
            beaten.wait(max(0.0, deadline - time.monotonic()))
            beaten.clear()
        assert beats[-1] is not channels[0], f"no heartbeat after the channel was cut ({owner.trouble})"
        assert len(channels) == 2 and beats[-1] is channels[1]     # over a new channel
        assert written() > before and not owner.lost          # on the host: the lock stays fresh
    finally:
        owner.release()
        hut.transport.close()
    assert not (hut.local_base / LOCK_PATH).exists()


class _Closing(LocalTransport):
    closed = False

    def close(self):
        self.closed = True
        super().close()


def _hosts_on_disk(tmp_path, monkeypatch, names: str):
    """Hosts ``names`` whose connections (``connected``) are ``_Closing`` transports on disk."""
    from serving_sync import connections

    transports: dict[str, _Closing] = {}

    def open_transport(host):
        (tmp_path / host.name).mkdir(exist_ok=True)
        transports[host.name] = _Closing(tmp_path / host.name)
        return transports[host.name]

    monkeypatch.setattr(connections, "open_transport", open_transport)
    return [SimpleNamespace(name=n, rest_url="http://127.0.0.1:9", target=SimpleNamespace(scheme="file"))
            for n in names], transports


def _after_two_ctrl_c(prefix: str, gate: _Gate, monkeypatch, body, transports) -> None:
    """``body()`` (inside ``connected``) gets two Ctrl-C in its wait for threads ``<prefix>_N``
    while hosts a and b are held in a step: once the second one is out of ``connected``, their
    connections must still be open; they finish, and then every connection is closed."""
    from mlops_common import stop

    real_join = _two_ctrl_c_in_the_wait_for(prefix, gate.both, monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            body()
        assert e.value.args == (2,)
        assert [n for n in "ab" if transports[n].closed] == [], "closed under a step still running"
    finally:
        gate.go.set()
        _finish_abandoned(prefix, real_join)
        stop.clear()
    assert sorted(n for n, t in transports.items() if not t.closed) == [], "a connection stayed open"


@pytest.mark.parametrize("phase", ["prepare", "switch"])
def test_a_second_ctrl_c_in_a_phase_closes_no_connection_a_host_step_still_uses(tmp_path, monkeypatch, phase):
    """Eighteenth stop, follow-up: after a second Ctrl-C in the prepare (or a switch) phase,
    ``connected``'s clean-up closed every connection while hosts still ran their step on it (a
    half-written publish directory, a models.config write cut mid-way). Now a host's step keeps
    its connection until it is done (``connections.in_use``); a host not begun (c) is not."""
    from serving_sync import connections, fleet
    from serving_sync.plan import Phase

    gate, ends = _Gate(), []
    hosts, transports = _hosts_on_disk(tmp_path, monkeypatch, "abc")
    monkeypatch.setattr(fleet, "fail", lambda *a, **k: pytest.fail("put back under hosts still running"))

    def step(conn, phase):
        gate.hold(conn.host.name)
        ends.append((conn.host.name, conn.transport.closed))    # the step's last write

    def body():
        with connections.connected(hosts) as conns:
            runs = [SimpleNamespace(host=c.host, conn=c, execute=functools.partial(step, c)) for c in conns]
            fleet._phase(fleet.FleetResult("m", 2, "production", "failed"), None, runs, runs, Phase(phase), 2)

    _after_two_ctrl_c(phase, gate, monkeypatch, body, transports)
    assert sorted(ends) == [("a", False), ("b", False)], "a step ran on a closed connection, or c was begun"


def _retention_after_a_deploy(monkeypatch, hosts, apply, parallel: int):
    """``fleet._succeeded``'s retention over ``hosts`` (each removes v1 through ``apply``), the
    registry's writes stood in for: what the forced-stop tests of retention drive."""
    from serving_sync import connections, deploy_retention, fleet, retention
    from serving_sync.options import DeployOptions

    monkeypatch.setattr(fleet.deploys, "tag", lambda *a, **k: None)
    monkeypatch.setattr(fleet, "_tag_rolled_back", lambda *a, **k: None)
    monkeypatch.setattr(retention, "plan", lambda t, model, **kw: retention.RetentionPlan(model, remove_versions=[1]))
    monkeypatch.setattr(deploy_retention.verified, "forget", lambda *a: None)
    monkeypatch.setattr(retention, "apply", apply)
    plan = SimpleNamespace(model="m", desired=2, current=1, previous_kept=None, final=SimpleNamespace(versions=(2,)),
                           held_by_others=())

    def body():
        with connections.connected(hosts) as conns:
            runs = [SimpleNamespace(host=c.host, conn=c, transport=c.transport, plan=plan, heartbeat=lambda **k: None,
                                    outcome=SimpleNamespace(retention=None, host=c.host.name, from_version=1,
                                                            previous_kept=None)) for c in conns]
            fleet._succeeded(fleet.FleetResult("m", 2, "production", "failed"),
                             SimpleNamespace(rollback_target=lambda: None), runs, DeployOptions(parallel=parallel))

    return body


def test_a_second_ctrl_c_in_retention_closes_no_connection_a_removal_still_uses(tmp_path, monkeypatch):
    """The same for retention after a deploy succeeded: a removal cut half way by the close."""
    gate, ends = _Gate(), []
    hosts, transports = _hosts_on_disk(tmp_path, monkeypatch, "abc")

    def apply(t, rp):
        gate.hold(t.base.name)
        ends.append((t.base.name, t.closed))

    body = _retention_after_a_deploy(monkeypatch, hosts, apply, parallel=2)
    _after_two_ctrl_c("retention", gate, monkeypatch, body, transports)
    assert sorted(ends) == [("a", False), ("b", False)], "a removal ran on a closed connection, or c was begun"


def test_a_second_ctrl_c_in_the_put_back_closes_no_connection_a_put_back_still_uses(tmp_path, monkeypatch):
    """The same for the put-back (it goes on to every host after a second Ctrl-C): a
    models.config write back cut mid-way by the close."""
    from serving_sync import connections, deploy_failure, host_run

    gate, ends = _Gate(), []
    hosts, transports = _hosts_on_disk(tmp_path, monkeypatch, "ab")

    def restore(conn):
        gate.hold(conn.host.name)
        ends.append((conn.host.name, conn.transport.closed))
        return {"needed": True, "ok": True}

    def run(conn) -> host_run.HostRun:
        r = host_run.HostRun.__new__(host_run.HostRun)
        r.conn, r.host, r.touched, r.outcome = conn, conn.host, True, SimpleNamespace(restore=None)
        return r

    monkeypatch.setattr(host_run.HostRun, "restore", lambda self: restore(self.conn))

    def body():
        with connections.connected(hosts) as conns:
            _, forced = deploy_failure._restore_all([run(c) for c in conns])
            raise forced

    _after_two_ctrl_c("restore", gate, monkeypatch, body, transports)
    assert sorted(ends) == [("a", False), ("b", False)], "a put-back ran on a closed connection"


@pytest.mark.parametrize("doing", ["write", "read"])
def test_a_closed_sftp_channel_is_a_lost_channel_not_a_permission_problem(request, tmp_path, doing):
    """Found by review (2026-12-07, eighteenth stop): an SFTP channel closed while the SSH
    connection was still up ("Socket is closed", no errno) was reported as "the SFTP server refused
    writing ... check that the deploy user can write to ...": a person went looking at
    permissions. Now it is its own line: the channel closed, not a permission problem, rerun.
    Real loopback sshd."""
    from serving_sync.errors import HostUnreachable
    from tests.test_sync_support import make_hut

    hut = make_hut("ssh", request, tmp_path)
    try:
        hut.transport.write_file_atomic("models.config", b"x\n")
        hut.transport.sftp.get_channel().close()          # the channel goes, the connection stays
        assert hut.transport._t.is_active()
        with pytest.raises(HostUnreachable) as lost:
            if doing == "write":
                hut.transport.write_file_atomic("models.config", b"y\n")
            else:
                hut.transport.read_file("models.config")
        line = lost.value.message
        assert "SFTP channel closed" in line and "not a permission problem" in line, line
        assert "can write to" not in line and "rerun" in line and "\n" not in line, line
        assert hut.raw_read("models.config") == b"x\n"    # nothing half-written
    finally:
        hut.transport.close()


def test_a_heartbeat_that_keeps_failing_stops_the_deploys_next_step_before_the_lock_goes_stale(request, tmp_path):
    """Found by review (2026-12-07, eighteenth stop): when the heartbeat thread's SFTP channel could
    not be opened again, every beat failed quietly (``trouble``): only the main thread's refresh
    between steps kept the lock fresh, and a long step ran on until the lock went stale and another
    deploy took it. Now ``KEEP_TRIES`` failed beats in a row (one every TTL/4) make the next step's
    check fail with one line: the lock could not be kept. Real loopback sshd."""
    from serving_sync.connections import Heartbeat
    from serving_sync.errors import HostUnreachable
    from tests.test_sync_support import make_hut

    hut = make_hut("ssh", request, tmp_path)
    tried: list = []
    enough = threading.Event()

    def cannot_open():        # the SFTP subsystem refused (MaxSessions reached, sftp-server gone)
        tried.append(time.monotonic())
        if len(tried) > 4:        # a TTL's worth of beats failed: the lock may be stale now
            enough.set()
        raise OSError("SFTP subsystem refused (test)")

    hut.transport.lock_channel = cannot_open
    owner = HostLock(hut.transport, ttl=600, heartbeat_every=0.05)
    owner.acquire()
    try:
        assert enough.wait(10), "the heartbeat thread stopped trying"
        with pytest.raises(HostUnreachable) as unkept:
            Heartbeat([SimpleNamespace(lock=owner)], every=3600)()     # the next step's check, no I/O
        line = unkept.value.message
        assert "could not keep its lock" in line and "SFTP subsystem refused" in line and "\n" not in line, line
        with pytest.raises(HostUnreachable):
            owner.refresh()
        assert not owner.lost                  # still ours: the host is put back as after a lost connection
    finally:
        owner.release()
        hut.transport.close()
    assert not (hut.local_base / LOCK_PATH).exists()


def test_a_second_ctrl_c_in_the_prepare_leaves_the_workdir_to_the_last_upload(tmp_path, monkeypatch):
    """Eighteenth stop, settle 3: ``_deploy``'s ``finally`` removed its work directory straight
    after a second Ctrl-C while prepare steps still uploaded the bundle from it (the publish failed
    part way). Now the removal is handed to the last step still under way (``parallel.LastOut``),
    as ``_deploy`` does it: the steps read the bundle, then it is gone."""
    import shutil

    from serving_sync import connections, fleet, parallel
    from serving_sync.plan import Phase

    gate, read = _Gate(), []
    hosts, transports = _hosts_on_disk(tmp_path, monkeypatch, "abc")
    workdir = tmp_path / "mlops-deploy-x"
    (workdir / "bundle").mkdir(parents=True)
    (workdir / "bundle" / "saved_model.pb").write_bytes(b"model")
    monkeypatch.setattr(fleet, "fail", lambda *a, **k: pytest.fail("put back under hosts still running"))

    def step(conn, phase):
        gate.hold(conn.host.name)
        read.append((conn.host.name, (workdir / "bundle" / "saved_model.pb").exists()))    # the upload's read

    def body():
        users = parallel.LastOut()
        try:
            with connections.connected(hosts) as conns:
                runs = [SimpleNamespace(host=c.host, conn=c, execute=functools.partial(step, c)) for c in conns]
                fleet._phase(fleet.FleetResult("m", 2, "production", "failed"), None, runs, runs, Phase.PREPARE, 2,
                             users)
        finally:
            users.done(functools.partial(shutil.rmtree, workdir, ignore_errors=True))

    _after_two_ctrl_c("prepare", gate, monkeypatch, body, transports)
    assert sorted(read) == [("a", True), ("b", True)], "the bundle was removed under an upload"
    assert not workdir.exists(), "the last step did not remove the work directory"


def test_a_second_ctrl_c_in_a_phase_releases_no_lock_under_a_host_step_still_running(tmp_path, monkeypatch):
    """Eighteenth stop, settle 3: after a second Ctrl-C in a phase, ``locked``'s clean-up released
    every host's lock while hosts still ran their step (``in_use``): they went on changing a host
    no lock guarded, which another deploy could then take. Now the release of a lock whose
    connection is in use is handed to that step, done once it is; the others are released at once."""
    from serving_sync import connections, fleet
    from serving_sync.plan import Phase

    gate, held = _Gate(), []
    hosts, transports = _hosts_on_disk(tmp_path, monkeypatch, "abc")
    for h in hosts:
        h.target = None         # lock_order by name
    monkeypatch.setattr(fleet, "fail", lambda *a, **k: pytest.fail("put back under hosts still running"))

    def step(conn, phase):
        gate.hold(conn.host.name)
        held.append((conn.host.name, (tmp_path / conn.host.name / LOCK_PATH).exists()))   # the step's last write

    def body():
        with connections.connected(hosts) as conns, locked(conns):
            runs = [SimpleNamespace(host=c.host, conn=c, execute=functools.partial(step, c)) for c in conns]
            fleet._phase(fleet.FleetResult("m", 2, "production", "failed"), None, runs, runs, Phase.PREPARE, 2)

    _after_two_ctrl_c("prepare", gate, monkeypatch, body, transports)
    assert sorted(held) == [("a", True), ("b", True)], "a host step ran on after its lock was released"
    assert [n for n in "abc" if (tmp_path / n / LOCK_PATH).exists()] == [], "a host stayed locked"


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_second_ctrl_c_in_a_one_host_retention_cuts_no_removal(tmp_path, monkeypatch, parallel):
    """Eighteenth stop, settle 3: retention of a single item (one changed host, or --parallel 1)
    ran in the main thread (``map_ordered``'s inline path), where a forced stop cut a removal part
    way. Now it runs in a worker thread as the phases do (``inline=False``): the Ctrl-Cs land in
    the wait, the removal finishes on its open connection, which is closed after it."""
    gate, ends = _Gate(), []
    del gate.entered["b"]                   # one host: a alone is held
    hosts, transports = _hosts_on_disk(tmp_path, monkeypatch, "a")
    hosts[0].store = None

    def apply(t, rp):
        if threading.current_thread() is threading.main_thread():
            ends.append(("main thread", t.base.name))
            return
        gate.hold(t.base.name)
        ends.append((t.base.name, t.closed))

    body = _retention_after_a_deploy(monkeypatch, hosts, apply, parallel)
    from mlops_common import stop

    real_join = _two_ctrl_c_in_the_wait_for("retention", gate.both, monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            body()
        assert e.value.args == (2,)
        assert not transports["a"].closed, "closed under the removal still running"
    finally:
        gate.go.set()
        _finish_abandoned("retention", real_join)
        stop.clear()
    assert ends == [("a", False)], "the removal ran where a signal lands, or on a closed connection"
    assert transports["a"].closed, "the connection stayed open"
