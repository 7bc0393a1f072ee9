"""Real OpenSSH ``sshd`` servers on 127.0.0.1 (key auth, pinned host keys) for the lab.

Each server (``start_sshd``) is ``/usr/sbin/sshd -D -e -f <generated sshd_config>`` on a free
loopback port with its own generated ed25519 host key, ``PasswordAuthentication no``,
``KbdInteractiveAuthentication no``, ``UsePAM no``, ``AuthorizedKeysFile`` pointing at a generated
file that holds the given user key, the ``internal-sftp`` subsystem, and its log in
``<dir>/sshd.log``. ``keygen``, ``fingerprint`` and ``ensure_user`` (create a local user, root
only) are its helpers. The fixtures ``sshd``, ``sshd_factory`` and ``ssh_user_key`` in
tests/fixtures/sshd.py wrap it.

When ``/usr/sbin/sshd`` is missing the tests that need it are skipped with a message naming the
Debian package ``openssh-server`` (``make system-deps`` installs it).
"""
from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlops.ports import free_port

SSHD = "/usr/sbin/sshd"


def need_tools() -> None:
    if not (os.path.exists(SSHD) and os.access(SSHD, os.X_OK)):
        pytest.skip("SKIPPED LOUDLY: OpenSSH server not installed (/usr/sbin/sshd missing); install "
                    "the Debian package `openssh-server` (`make system-deps`) to run the SSH tests")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("SKIPPED LOUDLY: `ssh-keygen` missing; install the Debian package `openssh-client`")


def keygen(path: Path, comment: str = "mlops-test") -> str:
    """Generate an ed25519 key pair at ``path`` (no passphrase); return the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path.with_suffix(path.suffix + ".pub").read_text().strip()


def fingerprint(pub_path: Path) -> str:
    """``SHA256:...`` fingerprint of a public key file, as ``ssh-keygen -l`` prints it."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub_path)], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()[1]


@dataclass
class SshdServer:
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path
    host_key_pub: str
    host_key_fingerprint: str
    dir: Path
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def target(self, base: str | os.PathLike) -> str:
        """The hosts-file ``target`` for an absolute ``base`` directory on this server."""
        base = str(base)
        assert base.startswith("/"), "base must be absolute"
        return f"ssh://{self.user}@{self.host}:{self.port}{base}"

    def known_hosts_line(self, key_pub: str | None = None) -> str:
        key = (key_pub or self.host_key_pub).split()
        return f"[{self.host}]:{self.port} {key[0]} {key[1]}"

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


def ensure_user(name: str, *, login_shell: bool = False) -> bool:
    """Create local user ``name`` (root only); return True when we created it. Default: ``/bin/sh``
    and no home. ``login_shell``: as ``serving_host/install_server.sh`` creates the deploy user
    (``--create-home --shell /bin/bash``: bash and the distribution's ``/etc/skel/.bashrc``)."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.skip(f"SKIPPED LOUDLY: creating the test user {name!r} needs root")
    home = ["--create-home", "--shell", "/bin/bash"] if login_shell else \
        ["--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh"]
    # password field "*": no password login possible, but not "locked" (without PAM, as in the
    # lab's sshd, sshd refuses a locked account even for a key)
    subprocess.run(["useradd", "--system", *home, "--password", "*", name], check=True, capture_output=True,
                   timeout=30)
    return True


def start_sshd(dir: Path, *, user_key: tuple[Path, str], user: str | None = None,
               pin_key_pub: str | None = None, extra_config: tuple[str, ...] = (),
               timeout: float = 20, wrap: tuple[str, ...] = (), sftp: str = "internal-sftp") -> SshdServer:
    """Start one sshd in ``dir`` (config, host key, authorized_keys, log); wait for its banner.
    ``wrap``: a command prefix sshd runs under (the fleet benchmark's ``benchmarks/subreaper.py``;
    ``proc`` is then the wrapper, sshd's own pid is in ``dir/sshd.pid``). ``sftp``: the SFTP
    subsystem (Debian's default ``/usr/lib/openssh/sftp-server`` runs through the login shell)."""
    need_tools()
    dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dir, 0o755)  # a non-root login user must be able to read authorized_keys
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    host_key = dir / "ssh_host_ed25519_key"
    host_pub = keygen(host_key, comment="mlops-test-host")
    auth = dir / "authorized_keys"
    auth.write_text(user_key[1] + "\n")
    os.chmod(auth, 0o644)
    port = free_port()
    user = user or getpass.getuser()
    config = dir / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {host_key}",
        f"PidFile {dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {auth}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "PermitUserEnvironment no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "MaxSessions 30",
        "MaxStartups 50:30:100",
        "LogLevel VERBOSE",
        f"Subsystem sftp {sftp}",
        *extra_config,
        "",
    ]))
    log = dir / "sshd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*wrap, SSHD, "-D", "-e", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    known = dir / "known_hosts"
    server = SshdServer("127.0.0.1", port, user, user_key[0], known, host_pub,
                        fingerprint(host_key.with_suffix(".pub")), dir, log, proc)
    known.write_text(server.known_hosts_line(pin_key_pub) + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded wait for the SSH banner
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0"):
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"sshd on port {port} did not answer within {timeout:.0f}s; see {log}")
