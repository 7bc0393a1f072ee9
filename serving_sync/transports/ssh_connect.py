"""Open an SSH connection the safe way: pinned host key, public-key auth only, bounded waits.

- The server's host key must be in the known_hosts file. Unknown: refused with the
  ``ssh-keyscan`` command to pin it and the offered ``SHA256:`` fingerprint to compare out of
  band. Changed: refused naming the file and line, with both fingerprints.
- Only public keys are tried: the identity file; the SSH agent (``SSH_AUTH_SOCK``, as
  CircleCI's ``add_ssh_keys`` sets up); ``~/.ssh/id_*`` only when no identity file is set.
  Never a password or keyboard-interactive prompt.
- AES-GCM is preferred (fastest in paramiko: OpenSSL AEAD, no separate MAC pass).
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from pathlib import Path

from mlops_common import log
from mlops_common.errors import ConfigError

from ..errors import AuthFailed, HostKeyRejected, HostUnreachable
from ..hosts import Target
from . import known_hosts as kh

logger = log.get("sync.ssh")

PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr", "aes192-ctr")
WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET = 32 * 1024
SFTP_CHUNK = 256 * 1024     # an SFTP read or write of a version's file
DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
# OpenSSH's GlobalKnownHostsFile: only its @revoked lines are read (a fleet-wide revocation
# refuses a key that the known_hosts file pins, as ssh does); its pins are not trusted here.
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


def where_of(target: Target) -> str:
    host = f"[{target.host}]" if ":" in (target.host or "") else target.host    # IPv6: ssh://u@[::1]:22
    return f"ssh://{target.user}@{host}:{target.port}"


def reason(exc: BaseException) -> str:
    """First line of an exception's text (for one-line messages)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# A connection sshd drops before its banner (past its MaxStartups: other deploys, a scan) is
# tried again, at most this often, after a short jittered pause, all within the connect timeout.
# Nothing else is tried again: refused, unresolvable, timed out, host key, authentication.
BANNER_DROP_TRIES = 3
BANNER_DROP_PAUSE = (0.1, 0.5)      # seconds, times the try's number


class _DroppedBeforeBanner(Exception):
    """The server closed or reset the connection before its banner (``connect`` says so)."""


def connect(target: Target, *, known_hosts: Path | None, identity_file: Path | None,
            timeout: float = 15.0, sleep=time.sleep, clock=time.monotonic):
    """A connected, host-verified, authenticated ``paramiko.Transport``; one line on failure."""
    deadline = clock() + timeout
    for attempt in range(1, BANNER_DROP_TRIES + 1):
        try:
            return _connect_once(target, known_hosts=known_hosts, identity_file=identity_file,
                                 timeout=max(0.1, min(timeout, deadline - clock())))
        except _DroppedBeforeBanner:
            pause = random.uniform(*BANNER_DROP_PAUSE) * attempt
            if attempt == BANNER_DROP_TRIES or clock() + pause + 1.0 > deadline:
                tries = f" ({attempt} tries)" if attempt > 1 else ""
                raise HostUnreachable(
                    f"{where_of(target)}: SSH handshake failed: the server closed the connection before its "
                    f"banner{tries}, as sshd does past its MaxStartups (too many connections being set up at "
                    f"once: another deploy, a scan): rerun; if it persists, check that port {target.port} "
                    f"(the hosts file) is sshd's") from None
            logger.debug("%s: the server closed the connection before its banner (sshd's MaxStartups?); "
                        "trying again in %.1fs", where_of(target), pause)
            sleep(pause)
    raise AssertionError("unreachable")     # the last try returns or raises


def _connect_once(target: Target, *, known_hosts: Path | None, identity_file: Path | None,
                  timeout: float):
    import paramiko

    where = where_of(target)
    known_file = Path(known_hosts or Path("~/.ssh/known_hosts")).expanduser()
    keys = load_known_hosts(known_file)
    revoked = system_revocations(known_file)
    sock = open_socket(target.host, target.port, timeout, where)
    t = None
    connected = None
    try:
        t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        t.banner_timeout = timeout
        t.handshake_timeout = timeout
        t.auth_timeout = timeout
        opts = t.get_security_options()
        supported = [c for c in opts.ciphers if not c.endswith("-cbc")]     # OpenSSH's client: no CBC
        opts.ciphers = tuple([c for c in PREFERRED_CIPHERS if c in supported]
                             + [c for c in supported if c not in PREFERRED_CIPHERS])
        opts.digests = tuple(m for m in opts.digests if not m.startswith("hmac-md5"))   # nor MD5
        pinned_types, revoked_types = kh.known_key_types(keys, target.host, target.port)
        if pinned_types or revoked_types:  # ask for the key type we can check, as OpenSSH does
            def rank(k: str) -> int:
                return 0 if base_key_type(k) in pinned_types else 1 if base_key_type(k) in revoked_types else 2
            opts.key_types = tuple(sorted(opts.key_types, key=rank))     # stable: paramiko's order within
        try:
            t.start_client(timeout=timeout)
        except paramiko.IncompatiblePeer as exc:
            raise HostUnreachable(f"{where}: SSH handshake failed ({reason(exc)}): the server offers only "
                                  f"algorithms OpenSSH's own client no longer uses (CBC ciphers, MD5 MACs, "
                                  f"SHA-1 key exchange); enable modern ones in its sshd_config") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not t.remote_version and (isinstance(exc, EOFError) or isinstance(
                    exc.__context__, (EOFError, ConnectionResetError))):   # not a timeout: no banner
                raise _DroppedBeforeBanner() from None
            raise HostUnreachable(f"{where}: SSH handshake failed ({reason(exc)}); check that an SSH "
                                  f"server listens there and the network path") from None
        if not (t.is_active() and t.initial_kex_done):
            raise HostUnreachable(f"{where}: SSH handshake failed (no answer within {timeout:.0f}s); "
                                  f"check that an SSH server listens there and the network path")
        check_host_key(t.get_remote_server_key(), keys, known_file, target, revoked)
        authenticate(t, target.user, identity_file, where)
        t.set_keepalive(15)
        connected = t
        return connected
    finally:
        if connected is None:
            if t is not None:
                t.close()
            sock.close()


def base_key_type(key_type: str) -> str:
    return {"rsa-sha2-256": "ssh-rsa", "rsa-sha2-512": "ssh-rsa"}.get(key_type, key_type)


def load_known_hosts(path: Path) -> list[kh.KnownKey]:
    import stat

    try:
        if not stat.S_ISREG(path.stat().st_mode):   # a FIFO waited forever, /dev/zero filled memory
            raise ConfigError(f"known_hosts file {path} is not a regular file; point known_hosts (hosts file) "
                              f"or MLOPS_SYNC_KNOWN_HOSTS at the file that pins the serving hosts' keys")
        return kh.parse(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read known_hosts file {path}: {exc.strerror}") from None


def system_revocations(known_file: Path) -> tuple[Path, list[kh.KnownKey]]:
    """The ``@revoked`` lines of the system-wide known_hosts file (none when it is missing,
    unreadable or not a regular file: ssh skips such a file too)."""
    system = Path(SYSTEM_KNOWN_HOSTS)
    try:
        if system.resolve() == known_file.resolve():
            return system, []
        keys = load_known_hosts(system)
    except (ConfigError, OSError):
        return system, []
    return system, [k for k in keys if k.marker == "@revoked"]


def open_socket(host: str, port: int, timeout: float, where: str) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise HostUnreachable(f"{where}: connection refused; check that sshd runs on {host} and "
                              f"listens on port {port} (the port in the hosts file)") from None
    except socket.gaierror as exc:
        raise HostUnreachable(f"{where}: cannot resolve host name {host!r} ({exc.strerror}); "
                              f"fix the target in the hosts file") from None
    except socket.timeout:
        raise HostUnreachable(f"{where}: no answer within {timeout:.0f}s; check the address, "
                              f"firewall and that the host is up") from None
    except ConnectionResetError:    # accepted, then reset before connect() returned (loopback)
        raise _DroppedBeforeBanner() from None
    except OSError as exc:
        raise HostUnreachable(f"{where}: cannot connect ({exc.strerror or exc}); check the address "
                              f"and network") from None
    # Small SSH messages (window adjusts, channel requests) must not wait for Nagle.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def check_host_key(key, keys: list[kh.KnownKey], known_file: Path, target: Target,
                   revoked: tuple[Path, list[kh.KnownKey]] | None = None) -> None:
    """Raise HostKeyRejected unless the offered key is pinned for this host and port and not
    revoked in ``known_file`` or in ``revoked`` (the system file's @revoked lines)."""
    where = where_of(target)
    key_type, key_b64 = key.get_name(), key.get_base64()
    offered = kh.fingerprint(key_b64)
    if revoked is not None:
        system, lines = revoked
        v = kh.check(lines, target.host, target.port, base_key_type(key_type), key_b64)
        if v.status == "revoked":
            raise HostKeyRejected(f"{where}: the server's host key {offered} is marked @revoked in "
                                  f"{system} line {v.line}; refusing to connect")
    verdict = kh.check(keys, target.host, target.port, base_key_type(key_type), key_b64)
    if verdict.status == "ok":
        return
    name = kh.lookup_name(target.host, target.port)
    if verdict.status == "unknown":
        port_opt = f"-p {target.port} " if target.port != 22 else ""
        missing = "" if known_file.exists() else " (the file does not exist)"
        if not any(k.key_type.startswith(KEY_TYPE_PREFIXES) for k in keys) and (lines := _entry_lines(known_file)):
            missing = f" (none of its {lines} lines is a known_hosts entry: is it the right file?)"
        if ca := kh.cert_authority_lines(keys, target.host, target.port):
            missing = (f" (only its @cert-authority line {ca[0]} covers it: host certificates are not used, "
                       f"pin the host's own key)")
        raise HostKeyRejected(
            f"{where}: host key not trusted: {name} is not in {known_file}{missing}; the server "
            f"offered {key_type} {offered}. Pin it with `ssh-keyscan {port_opt}{target.host} >> "
            f"{known_file}` after comparing that fingerprint with the host's out of band")
    if verdict.status == "revoked":
        raise HostKeyRejected(f"{where}: the server's host key {offered} is marked @revoked in "
                              f"{known_file} line {verdict.line}; refusing to connect")
    raise HostKeyRejected(
        f"{where}: HOST KEY CHANGED for {name}: {known_file} line {verdict.line} pins "
        f"{verdict.expected_fingerprint} but the server offered {key_type} {offered}; refusing "
        f"(possible man-in-the-middle). If the host was re-keyed, confirm the new fingerprint out "
        f"of band, then replace line {verdict.line} (ssh-keygen -R '{name}' -f {known_file})")


KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")     # what a known_hosts key type starts with


def _entry_lines(path: Path) -> int:
    """Lines of ``path`` that are neither blank nor comments (0 when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def candidate_keys(identity_file: Path | None, where: str, agent_timeout: float = 15.0):
    """(label, key) pairs to try: identity file, agent keys, default ~/.ssh keys (no file set)."""
    import paramiko

    if identity_file is not None:
        path = Path(identity_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: identity_file {path} does not exist; fix the path in the hosts "
                              f"file or remove it to use the SSH agent")
        _refuse_public_key(path, where)
        _refuse_open_key(path, where)
        try:
            key = _load_key(path)
        except paramiko.PasswordRequiredException:
            key = None
            if not os.environ.get("SSH_AUTH_SOCK"):
                raise ConfigError(f"{where}: identity_file {path} is protected by a passphrase; load it "
                                  f"into ssh-agent (ssh-add {path}) and remove identity_file from the "
                                  f"hosts file") from None
        except (paramiko.SSHException, ValueError, OSError) as exc:
            raise ConfigError(f"{where}: cannot load identity_file {path} ({reason(exc)}); it must be "
                              f"an OpenSSH or PEM private key") from None
        if key is not None:
            yield str(path), key
    if os.environ.get("SSH_AUTH_SOCK"):
        agent_answers(os.environ["SSH_AUTH_SOCK"], agent_timeout, where)
        agent = None
        try:
            agent = paramiko.Agent()
            for i, k in enumerate(agent.get_keys()):
                yield f"agent key {i + 1} ({k.get_name()})", k
        except paramiko.SSHException as exc:
            logger.warning("%s: SSH agent unavailable (%s)", where, reason(exc))
        finally:        # its keys sign only while authenticating: no agent socket kept per connection
            if agent is not None:
                agent.close()
    if identity_file is None:
        ssh_dir = Path("~/.ssh").expanduser()
        for name in DEFAULT_KEY_FILES:
            p = ssh_dir / name
            if p.is_file():
                try:
                    key = _load_key(p)
                except (paramiko.SSHException, ValueError, OSError):
                    continue   # encrypted or unreadable default key: skip it, like ssh in batch mode
                yield str(p), key


def agent_answers(sock_path: str, timeout: float, where: str) -> None:
    """Ask the agent for its key list with a deadline before paramiko does without one: an agent
    that accepts and never answers (a stuck or stopped ``ssh-agent``) hung the deploy for good.
    An agent that is not there is left to paramiko (it offers no key, as ``ssh`` goes on)."""
    request = b"\x00\x00\x00\x01\x0b"       # SSH2_AGENTC_REQUEST_IDENTITIES (RFC draft-miller-ssh-agent)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(request)
            if not s.recv(4):
                return                          # closed at once: paramiko says the agent is unavailable
    except TimeoutError:
        raise ConfigError(f"{where}: the SSH agent at SSH_AUTH_SOCK={sock_path} did not answer within "
                          f"{timeout:.0f}s; restart ssh-agent, or unset SSH_AUTH_SOCK to use identity_file") from None
    except OSError:
        return                                  # no agent there: paramiko offers no agent key


def agent_unreachable(sock_path: str) -> str | None:
    """Why no agent answers at ``sock_path`` (None when one accepts the connection)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(sock_path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _refuse_public_key(path: Path, where: str) -> None:
    """identity_file naming the ``.pub`` half: say so (its mode 0644 was "chmod 600" advice)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return                  # left to the key loader's own message
    if head.startswith(tuple(p.encode() for p in KEY_TYPE_PREFIXES)):
        private = path.with_suffix("") if path.suffix == ".pub" else None
        raise ConfigError(f"{where}: identity_file {path} is a public key; point identity_file at the private "
                          f"key{f' ({private})' if private else ''}, whose public half is in authorized_keys")


def _refuse_open_key(path: Path, where: str) -> None:
    """OpenSSH refuses a private key of ours that group or others may read ("UNPROTECTED
    PRIVATE KEY FILE", sshkey_perm_ok): such a key is refused here too, so a key that works
    for us works for ``ssh`` and the other way round."""
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        raise ConfigError(f"{where}: identity_file {path} may be read by others (mode {st.st_mode & 0o777:04o}); "
                          f"ssh refuses such a key too: chmod 600 {path}")


def _load_key(path: Path):
    """Load a private key without a passphrase; an encrypted one -> PasswordRequiredException."""
    import paramiko

    try:
        return paramiko.PKey.from_path(path)
    except TypeError as exc:   # cryptography: "Key is password-protected, but password was not provided"
        if "password" in str(exc).lower():
            raise paramiko.PasswordRequiredException(str(exc)) from None
        raise ValueError(str(exc)) from None


def authenticate(t, user: str, identity_file: Path | None, where: str) -> None:
    keys = contextlib.closing(candidate_keys(identity_file, where, agent_timeout=t.auth_timeout))
    with keys as candidates:        # closed on return or error: the agent's connection with it
        _try_keys(t, user, identity_file, where, candidates)


def _try_keys(t, user: str, identity_file: Path | None, where: str, candidates) -> None:
    import paramiko

    tried: list[str] = []
    for label, key in candidates:
        tried.append(label)
        try:
            remaining = t.auth_publickey(user, key)
        except paramiko.AuthenticationException as exc:
            if str(exc) == "Authentication timeout.":      # paramiko's words when auth_timeout ran out
                raise HostUnreachable(f"{where}: the server did not answer public-key authentication within "
                                      f"{t.auth_timeout:.0f}s; check the host's sshd (a slow AuthorizedKeysCommand "
                                      f"or directory lookup) and rerun") from None
            if not t.is_active():       # sshd closes after MaxAuthTries refused keys
                raise _too_many_keys(where, tried, identity_file) from None
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if len(tried) > 1 and not t.is_active():
                raise _too_many_keys(where, tried[:-1], identity_file) from None
            raise HostUnreachable(f"{where}: connection lost during authentication ({reason(exc)})") from None
        if not remaining and t.is_authenticated():
            return
    locked = identity_file is not None and str(Path(identity_file).expanduser()) not in tried
    if locked:      # passphrase-protected, with SSH_AUTH_SOCK set (else candidate_keys said so)
        path = Path(identity_file).expanduser()
        agent = (f"holds only other keys ({', '.join(tried)}), which the server refused" if tried
                 else "offers no key")
        raise AuthFailed(f"{where}: identity_file {path} is protected by a passphrase and the SSH agent "
                         f"(SSH_AUTH_SOCK) {agent}; load it into the agent (ssh-add {path})")
    if not tried:
        agent = os.environ.get("SSH_AUTH_SOCK")
        dead = agent_unreachable(agent) if agent else None
        raise AuthFailed(f"{where}: no SSH key to authenticate with: set identity_file in the hosts "
                         f"file, or start ssh-agent with the deploy key (SSH_AUTH_SOCK"
                         + (f"={agent} has no agent: {dead})" if dead else f"={agent} holds no key)" if agent else ")"))
    raise AuthFailed(f"{where}: the server refused public-key authentication for user {user!r} "
                     f"(tried {', '.join(tried)}); add the deploy public key to that user's "
                     f"authorized_keys on the host or fix identity_file")


def _too_many_keys(where: str, tried: list[str], identity_file: Path | None) -> AuthFailed:
    """sshd closed the connection after refusing the keys ``tried`` ("Too many authentication
    failures", its MaxAuthTries, default 6): an agent holding more keys than that."""
    fix = (f"identity_file {Path(identity_file).expanduser()} was refused: add its public key to that "
           f"user's authorized_keys on the host" if identity_file is not None and tried
           and tried[0] == str(Path(identity_file).expanduser()) else
           "set identity_file in the hosts file to the deploy key (it is offered first), or load only "
           "the deploy key into the SSH agent")
    return AuthFailed(f"{where}: the server closed the connection after refusing {len(tried)} key(s) "
                      f"({', '.join(tried)}; sshd's MaxAuthTries, default 6); {fix}")
