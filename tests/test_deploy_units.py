"""``deploy/mlops-watch.service``, the example systemd unit for ``mlops sync watch``: systemd
accepts it, every flag it passes exists, its stop timeout outlasts a deploy, and it holds no secret.

Found by review (2026-12-06, tenth stop): the README said `systemctl stop` lets a deploy under way
finish, but a unit written from it got systemd's 90 s stop timeout, which SIGKILLs a deploy with a
longer bake mid-rollout; no unit was shipped.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

UNIT = REPO / "deploy" / "mlops-watch.service"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_accepts_the_watch_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed; the unit was not checked by systemd")
    # the unit's paths are an install's: point ExecStart at this checkout's mlops and run as root
    text = UNIT.read_text().replace("/srv/mlops/.venv/bin/mlops", str(REPO / ".venv" / "bin" / "mlops"))
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (p.stdout + p.stderr).splitlines() if UNIT.name in line or "Unknown" in line]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


def test_the_watch_unit_runs_flags_that_exist_and_outlasts_a_deploy_when_stopped():
    s = _settings()
    words = shlex.split(s["ExecStart"][0])
    assert words[0].endswith("/mlops") and words[1:3] == ["sync", "watch"], words
    p = subprocess.run([sys.executable, "-m", "mlops", "sync", "watch", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for flag in (w for w in words if w.startswith("--")):
        assert flag in p.stdout, f"`mlops sync watch` has no option {flag}"
    # the first SIGTERM finishes the deploy under way: the stop timeout outlasts CircleCI's 300 s
    # bake, the --timeout waits of a deploy and the lock it may wait for
    assert int(s["TimeoutStopSec"][0]) >= 900, s["TimeoutStopSec"]
    # ... and a deploy still under way --stop-within after it is put back before systemd's SIGKILL,
    # with time left for the put-back (nineteenth stop)
    within = float(words[words.index("--stop-within") + 1])
    assert within <= int(s["TimeoutStopSec"][0]) - 240, (within, s["TimeoutStopSec"])
    assert s["KillSignal"] == ["SIGTERM"] and s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["on-failure"]


def test_every_setting_the_watch_unit_names_is_one_the_watch_reads():
    """Found by review (2026-12-07, twentieth stop): the unit listed MLOPS_KNOWN_HOSTS among the
    settings of its environment file; only CircleCI's scripts/pin-host-keys.sh reads it, so a
    watch.env holding the hosts' keys there pinned nothing, and every pass failed on an unknown
    host key. Each MLOPS_ / MLFLOW_ name the unit gives as a setting is one the Python code reads."""
    settings = re.findall(r"^#\s+((?:MLOPS|MLFLOW)_\w+(?:,\s*(?:MLOPS|MLFLOW)_\w+)*)", UNIT.read_text(), re.M)
    names = {n.strip() for line in settings for n in line.split(",")}
    assert "MLOPS_HOSTS_FILE" in names, names
    code = "".join(f.read_text() for pkg in ("mlops_common", "registry", "serving_sync", "mlops")
                   for f in (REPO / pkg).rglob("*.py"))
    unread = sorted(n for n in names if f'"{n}"' not in code and f"'{n}'" not in code)
    assert not unread, f"the unit names settings the watch never reads: {unread}"


def test_the_watch_unit_takes_secrets_from_an_environment_file_only():
    s = _settings()
    assert s.get("EnvironmentFile"), "settings and secrets come from an EnvironmentFile"
    inline = " ".join(s.get("Environment", []) + s["ExecStart"])
    for name in ("TOKEN", "SECRET", "PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLOPS_LEDGER_URL"):
        assert name not in inline.upper(), inline


def test_the_watch_unit_is_hardened_and_writes_only_its_state_folder(tmp_path):
    """Found by review (2026-12-07, twentieth stop): the unit ran with ProtectSystem=full, which
    leaves /srv, /var, /opt and every home writable: a compromised watch (it holds the deploy key
    and the registry's token) could rewrite the venv it runs from or another service's files. It
    now sees the whole file system read-only (ProtectSystem=strict, ProtectHome=read-only: the
    SSH keys and known_hosts are read, never written) but for its state folder and a private /tmp,
    and keeps none of the kernel's or the devices' knobs (`systemd-analyze security` 8.7 EXPOSED
    before, under 2.5 now)."""
    s = _settings()
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "read-only"), ("PrivateTmp", "yes"),
                       ("NoNewPrivileges", "yes"), ("PrivateDevices", "yes"), ("UMask", "0077"),
                       ("CapabilityBoundingSet", "")):
        assert s.get(key) == [value], (key, s.get(key))
    # the state folder (a default SQLite ledger): the one systemd makes, named by MLOPS_HOME
    # (tests the state folder's own: test_the_watch_units_state_folder_is_made_by_systemd_...)
    assert _state_folder(s) == "/var/lib/" + s["StateDirectory"][0], s.get("Environment")
    assert not s.get("ReadWritePaths"), s["ReadWritePaths"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed; the unit's exposure was not measured")
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    if "--offline" in p.stderr and "unrecognized" in p.stderr:
        pytest.skip("SKIPPED LOUDLY: this systemd-analyze has no --offline; the unit's exposure was not measured")
    assert p.returncode == 0, p.stdout[-600:] + p.stderr


def _state_folder(s: dict[str, list[str]]) -> str | None:
    """The unit's MLOPS_HOME, its ``%S`` as a system unit's (``/var/lib``, systemd.unit(5))."""
    homes = [w.split("=", 1)[1] for line in s.get("Environment", []) for w in shlex.split(line)
             if w.startswith("MLOPS_HOME=")]
    return homes[-1].replace("%S", "/var/lib") if homes else None


def test_the_watch_units_state_folder_is_made_by_systemd_with_its_owner_and_mode():
    """Found by review (2026-12-07, twenty-first stop): the unit made /srv/mlops/.mlops writable
    (``ReadWritePaths=``) and told the operator to create it first: an install that skipped that
    step (or a new machine, a wiped folder) never started (systemd cannot make a missing folder
    writable: status 226/NAMESPACE), and one made by hand without its owner (root's) failed at
    the first ledger write. systemd now makes the state folder at each start (``StateDirectory=``,
    under /var/lib, owned by ``User=`` and ``Group=``, mode 0700: systemd.exec(5)), and the
    watch's MLOPS_HOME names it."""
    s = _settings()
    assert s.get("StateDirectory") == ["mlops"], s.get("StateDirectory")
    assert s.get("StateDirectoryMode") == ["0700"], s.get("StateDirectoryMode")
    # its owner: User= and Group= (systemd chowns the folder to them), a user of its own, not root
    assert s["User"] == ["mlops"] and s["Group"] == ["mlops"] and "DynamicUser" not in s, (s["User"], s["Group"])
    assert _state_folder(s) == "/var/lib/mlops", s.get("Environment")
    # nothing the unit needs to exist at its start is left to a step of the install: a path named
    # in ReadWritePaths= (or another *Paths=) that does not exist stops the unit, unless it has "-"
    for key in ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths"):
        needed = [w for line in s.get(key, []) for w in line.split() if not w.startswith("-")]
        assert not needed, f"{key}= names {needed}: the unit does not start where they do not exist"
    # and the unit's words say so: no step making the state folder by hand is left in its comments
    assert "install -d" not in UNIT.read_text()


# strace -y: '123 openat(AT_FDCWD</cwd>, "p", O_WRONLY|O_CREAT, 0600) = 3', '123 mkdir("p", 0777) = 0',
# '123 unlinkat(5</abs/dir>, "p", 0) = 0': the pid, the call, the folder a relative path is in, the path, the rest
_CALL = re.compile(r'^(\d+)\s+(\w+)\((?:(?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )?"([^"]*)"(.*)$')
_WRITING_CALLS = {"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir",
                  "link", "linkat", "symlink", "symlinkat", "truncate", "creat", "chmod", "fchmodat"}


def _written(trace: str, cwd: Path) -> list[Path]:
    """The paths a traced process opened for writing, made, removed, renamed or linked (a relative
    path without a folder descriptor: from its process's last ``chdir``)."""
    out, cwds = [], {}
    for line in trace.splitlines():
        m = _CALL.match(line)
        if m is None:
            continue
        pid, call, fd_dir, path, rest = m.groups()
        here = Path(fd_dir) if fd_dir else cwds.get(pid, cwd)
        full = Path(path) if path.startswith("/") else here / path
        if call in ("chdir", "fchdir"):
            cwds[pid] = full
            continue
        if call in ("open", "openat"):
            if not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", rest):
                continue
        elif call not in _WRITING_CALLS:
            continue
        out.append(full)
    return out


def _syscall_group(name: str, seen: dict) -> set[str]:
    """The system calls of a ``SystemCallFilter=`` group (``systemd-analyze syscall-filter``)."""
    if name not in seen:
        out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()[1:]       # the first line is the group's name
        seen[name] = set()
        for item in (x.strip() for x in out):
            if item and not item.startswith("#"):
                seen[name] |= _syscall_group(item, seen) if item.startswith("@") else {item}
    return seen[name]


def _unit_syscalls() -> tuple[set[str], set[str]]:
    """What the unit's ``SystemCallFilter=`` lines allow (the first) and deny (``~``)."""
    seen: dict = {}
    allowed, denied = set(), set()
    for line in _settings()["SystemCallFilter"]:
        deny = line.startswith("~")
        for group in line.lstrip("~").split():
            (denied if deny else allowed).update(_syscall_group(group, seen))
    return allowed, denied


def test_a_watchs_deploy_over_ssh_writes_and_calls_only_what_the_unit_allows(deploy_env, sshd_factory, tmp_path):
    """What ``ReadWritePaths=`` and ``PrivateTmp=`` leave writable is all a watch writes, and its
    system calls are all in the unit's ``SystemCallFilter=``: a real ``sync watch --once``
    deploying a version to an SSH host, every successful system call traced."""
    if shutil.which("strace") is None:
        pytest.skip("SKIPPED LOUDLY: strace is not installed; the watch's writes were not traced")
    env = deploy_env
    env.add_host("ssh")
    env.write_hosts_file()
    env.release("a")
    v2 = env.register("b")
    env.promote(v2)
    home, tmp, work = (tmp_path / n for n in ("home", "tmp", "work"))
    for d in (home, tmp, work):
        d.mkdir()
    trace = tmp_path / "trace"
    run = {**os.environ, **env.env, "HOME": str(home), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", "status=successful",
                        sys.executable, "-m", "mlops", "sync", "watch", "--once", "--json"],
                       cwd=work, env=run, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and '"deployed"' in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    text = trace.read_text()
    writable = (Path(env.env["MLOPS_HOME"]).resolve(), tmp.resolve(), Path("/dev"), Path("/proc"))
    written = _written(text, work)
    assert written, "nothing traced: the trace's format was not read"
    outside = sorted({str(w) for w in written if not any(w.resolve().is_relative_to(d) for d in writable)})
    assert not outside, outside
    if shutil.which("systemd-analyze") is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed; the system calls were not checked")
    called = set(re.findall(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]", text, re.M))
    allowed, denied = _unit_syscalls()
    assert len(called) > 30 and {"openat", "socket"} <= called, sorted(called)
    if os.geteuid() == 0:       # SQLite hands its journal to the database's owner when run as root only
        called.discard("fchown")
    refused = sorted(c for c in called if c not in allowed or c in denied)
    assert not refused, f"the unit's SystemCallFilter= refuses what the watch calls: {refused}"


def _systemd_clean(s: dict[str, list[str]], code: int) -> bool:
    """systemd counts the main process's exit ``code`` as a clean one: 0, or a code in
    ``SuccessExitStatus=``; any other leaves the unit "failed" (Result: exit-code), after a
    `systemctl stop` too (systemd.service(5), "SuccessExitStatus=")."""
    return code == 0 or str(code) in {w for line in s.get("SuccessExitStatus", []) for w in line.split()}


def _systemd_restarts(s: dict[str, list[str]], code: int | None, signal: str | None = None) -> bool:
    """What systemd does when the unit's main process ends on its own (not `systemctl stop`):
    ``Restart=on-failure`` restarts after an unclean exit code (``_systemd_clean``), a signal, a
    watchdog or a timeout, unless the exit code (or the signal) is in ``RestartPreventExitStatus=``
    (systemd.service(5), "Restart=" and "RestartPreventExitStatus=")."""
    assert s["Restart"] == ["on-failure"], s["Restart"]
    prevent = {w for line in s.get("RestartPreventExitStatus", []) for w in line.split()}
    if signal is not None:
        return signal not in prevent and signal.removeprefix("SIG") not in prevent
    return not _systemd_clean(s, code) and str(code) not in prevent


def test_a_watch_that_refuses_its_settings_is_not_restarted_but_a_crash_is(tmp_path):
    """Found by review (2026-12-07, twenty-first stop): ``Restart=on-failure`` restarted a watch
    that refused its settings (exit 2: a hosts file that does not load, a setting out of range, the
    webhook secret missing, its port taken) every 30 s for ever, each start one more error in the
    journal, and ``systemctl status`` said "activating (auto-restart)" rather than failed: a
    setting does not fix itself. The unit's own command, run for real with each such setting,
    exits with a code the unit does not restart on; a crash (exit 1), an interrupt not from
    systemd (130) and a kill still restart."""
    import socket

    s = _settings()
    words = shlex.split(s["ExecStart"][0])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = str(taken.getsockname()[1])
    words[words.index("--webhook-port") + 1] = port     # a port of this test's, held: "its port taken"
    home = tmp_path / "state"
    home.mkdir()
    good, bad = tmp_path / "hosts.toml", tmp_path / "typo.toml"
    good.write_text('[[hosts]]\nname = "a"\ntarget = "ssh://deploy@127.0.0.1:9/var/models"\n'
                    'rest_url = "http://127.0.0.1:9"\n')
    bad.write_text('[[hosts]]\nname = "a"\ntarget = "ssh://deploy@127.0.0.1:9/var/models"\nrest_url = \n')
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "JOURNAL_STREAM"))}
    base.update({"MLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                 "MLOPS_HOSTS_FILE": str(good), "MLOPS_WEBHOOK_SECRET": "s" * 32, "PYTHONPATH": str(REPO)})
    cases = {"not valid TOML": {"MLOPS_HOSTS_FILE": str(bad)},              # the hosts file does not load
             "MLOPS_BAKE_SECONDS='soon'": {"MLOPS_BAKE_SECONDS": "soon"},    # a setting out of range
             "--webhook-port needs MLOPS_WEBHOOK_SECRET": {"MLOPS_WEBHOOK_SECRET": ""},
             f"cannot listen on 127.0.0.1:{port}": {}}                     # the webhook's port taken
    try:
        for case, env in cases.items():
            p = subprocess.run([sys.executable, "-m", "mlops", *words[1:]], env={**base, **env}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
            lines = p.stderr.strip().splitlines()
            assert p.returncode != 0 and lines and lines[-1].startswith("error: "), (case, p.returncode, p.stderr)
            assert case in lines[-1], (case, lines[-1])
            assert not _systemd_restarts(s, p.returncode), (case, p.returncode, lines[-1])
    finally:
        taken.close()
    # what a restart may mend still restarts: a crash's traceback, a kill (the kernel's OOM killer);
    # an interrupt (130) is a stop someone asked for (test_a_planned_stop_...): not restarted
    assert _systemd_restarts(s, 1) and _systemd_restarts(s, None, "SIGKILL")
    assert not _systemd_restarts(s, 130)


def test_a_planned_stop_that_put_a_deploy_back_leaves_the_unit_stopped_not_failed():
    """Found by review (2026-12-07, twenty-second stop): `systemctl stop` during a deploy that
    outlasts ``--stop-within`` ends the watch with the deploy stopped and its hosts put back, exit
    130 (``test_stop_within_puts_the_hosts_back_...`` of tests/test_sync_watch_stop.py runs it for
    real). systemd counts only 0 (and death by SIGTERM, which the watch's handler
    never allows) as a clean exit unless ``SuccessExitStatus=`` says more: the unit read "failed"
    after a stop that did what it was asked, and an alert on failed units went off at each
    upgrade. Every exit a stop gives (0 after the pass; 130 after a put-back) is clean for the unit."""
    from serving_sync.watch import INTERRUPTED

    s = _settings()
    words = shlex.split(s["ExecStart"][0])
    assert "--stop-within" in words and "--once" not in words
    for code in (0, INTERRUPTED):
        assert _systemd_clean(s, code), f"a planned stop exiting {code} leaves the unit failed"
    for code in (1, 2, 3):        # a crash, settings refused, a failed deploy (--once only) stay failures
        assert not _systemd_clean(s, code), code


def test_the_watch_unit_has_no_watchdog_the_watch_does_not_feed():
    """Decided by review (2026-12-07, twenty-second stop): no ``WatchdogSec=`` (the unit's comment
    says why: a pass has no bound a watchdog could wait for, and a missed ping SIGABRTs a deploy
    mid-rollout). A watchdog added to the unit without the watch sending ``WATCHDOG=1`` (and
    ``READY=1`` under ``Type=notify``) would kill every watch after its first period."""
    s = _settings()
    code = "".join(f.read_text() for pkg in ("mlops_common", "serving_sync", "mlops")
                   for f in (REPO / pkg).rglob("*.py"))
    if "WATCHDOG=1" not in code:
        assert "WatchdogSec" not in s and s["Type"] == ["simple"], s.get("WatchdogSec")
    assert "No WatchdogSec=" in UNIT.read_text()
