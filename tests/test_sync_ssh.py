"""The ssh:// transport against a real OpenSSH sshd on 127.0.0.1: host keys, keys-only auth,
clear one-line errors, connection cuts mid-upload, full disks, permissions, SFTP fallback."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mlops_common.errors import ConfigError, UserError
from serving_sync import manifest as mf
from serving_sync import retention
from serving_sync.errors import AuthFailed, DiskFull, HostKeyRejected, HostPermissionDenied, HostUnreachable
from serving_sync.hosts import Target
from serving_sync.publish import incoming_dirs, publish
from serving_sync.transports.ssh import SshTransport
from tests.lab.sshd import keygen
from tests.test_sync_support import make_model_tree

MODEL = "digits"


def connect(sshd, base, *, port=None, known_hosts=None, identity_file="default", timeout=10.0,
            op_timeout=30.0, user=None):
    target = Target("ssh", str(base), host="127.0.0.1", port=port or sshd.port, user=user or sshd.user)
    return SshTransport.connect(target, known_hosts=known_hosts or sshd.known_hosts,
                                identity_file=sshd.identity_file if identity_file == "default" else identity_file,
                                timeout=timeout, op_timeout=op_timeout)


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg, msg
    return msg


def base_of(user: str, prefix: str) -> Path:
    """A base folder owned by ``user`` in a fresh folder others can enter (not under the test's
    tmp_path, which only root may enter)."""
    base = Path(tempfile.mkdtemp(prefix=prefix)) / "base"
    base.mkdir()
    shutil.chown(base, user, user)
    os.chmod(base.parent, 0o755)
    return base


# --- host keys -------------------------------------------------------------------------------

def test_unknown_host_key_is_refused_with_the_command_to_pin_it(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyRejected) as e:
        connect(sshd, tmp_path / "b", known_hosts=known)
    msg = one_line(e.value)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in msg
    assert sshd.host_key_fingerprint in msg          # the offered key, to compare out of band
    assert known.read_text() == ""                   # never auto-accepted
    # The command in the message really pins the key.
    out = subprocess.run(["ssh-keyscan", "-p", str(sshd.port), "-t", "ed25519", "127.0.0.1"],
                         capture_output=True, text=True, timeout=30).stdout
    known.write_text(out)
    connect(sshd, tmp_path / "b", known_hosts=known).close()


def test_missing_known_hosts_file_is_an_unknown_host(sshd, tmp_path):
    with pytest.raises(HostKeyRejected, match="does not exist"):
        connect(sshd, tmp_path / "b", known_hosts=tmp_path / "nope" / "known_hosts")


def test_changed_host_key_is_refused_naming_the_file_line_and_both_fingerprints(sshd, sshd_factory, tmp_path):
    impostor = sshd_factory(pin_key_of=sshd)   # its known_hosts pins sshd's key for its address
    kh = impostor.known_hosts
    kh.write_text("# comment\n" + kh.read_text())
    with pytest.raises(HostKeyRejected) as e:
        connect(impostor, tmp_path / "b")
    msg = one_line(e.value)
    assert "HOST KEY CHANGED" in msg and f"{kh} line 2" in msg
    assert sshd.host_key_fingerprint in msg and impostor.host_key_fingerprint in msg
    assert sshd.host_key_fingerprint != impostor.host_key_fingerprint


def test_a_re_keyed_host_is_pinned_again_with_the_commands_its_refusals_name(sshd, sshd_factory, tmp_path):
    """The on-call procedure after a host is re-keyed, run as the messages write it: the refusal's
    `ssh-keygen -R ...` removes the old pin, the README's `ssh-keyscan -p PORT HOST >> known_hosts`
    (also what the next refusal names) pins the new key, and then the host is trusted; the old key
    no longer is."""
    import re
    import shlex

    rekeyed = sshd_factory(pin_key_of=sshd)      # its known_hosts still pins the key it had before
    known = rekeyed.known_hosts
    known.write_text("# serving hosts\n" + known.read_text())
    with pytest.raises(HostKeyRejected) as e:
        connect(rekeyed, tmp_path / "b")
    m = re.search(r"\((ssh-keygen -R [^)]*)\)", one_line(e.value))
    assert m, e.value
    subprocess.run(shlex.split(m.group(1)), check=True, capture_output=True, timeout=30)
    with pytest.raises(HostKeyRejected) as e:    # the old pin is gone: unknown now, not accepted
        connect(rekeyed, tmp_path / "b")
    m = re.search(r"`(ssh-keyscan [^`]*)`", one_line(e.value))
    assert m, f"the old pin is still there: {e.value}"
    pin = m.group(1)
    assert pin == f"ssh-keyscan -p {rekeyed.port} 127.0.0.1 >> {known}"
    r = subprocess.run(pin, shell=True, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    connect(rekeyed, tmp_path / "b").close()
    assert sshd.host_key_pub.split()[1] not in known.read_text()


def test_hashed_known_hosts_entries_are_honoured(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    shutil.copy(sshd.known_hosts, known)
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True, timeout=30)
    assert known.read_text().startswith("|1|")
    connect(sshd, tmp_path / "b", known_hosts=known).close()


def test_a_key_revoked_in_the_global_known_hosts_is_refused_as_ssh_refuses_it(sshd, tmp_path, monkeypatch):
    """OpenSSH reads /etc/ssh/ssh_known_hosts beside the user's file, and a ``@revoked`` line there
    refuses the key even when the user's file pins it (a fleet-wide revocation). The deploy read
    only its one known_hosts file and connected to the revoked key (found by review, 2026-12-06,
    tenth stop). Now such a key is refused in one line naming that file and line."""
    from serving_sync.transports import ssh_connect

    system = tmp_path / "ssh_known_hosts"
    kt, kb = sshd.host_key_pub.split()[:2]
    system.write_text(f"# revoked fleet-wide\n@revoked * {kt} {kb}\n")
    r = subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                        "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", f"GlobalKnownHostsFile={system}",
                        "-o", "IdentitiesOnly=yes", "-i", str(sshd.identity_file), "-p", str(sshd.port),
                        f"{sshd.user}@127.0.0.1", "true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "REVOKED" in r.stderr, r.stderr       # what ssh does with these files
    monkeypatch.setattr(ssh_connect, "SYSTEM_KNOWN_HOSTS", system, raising=False)
    with pytest.raises(HostKeyRejected) as e:
        connect(sshd, tmp_path / "b")
    msg = one_line(e.value)
    assert f"marked @revoked in {system} line 2" in msg and sshd.host_key_fingerprint in msg, msg
    system.write_text(f"# pins only\n[127.0.0.1]:{sshd.port} {kt} {kb}\n")      # only its revocations count
    connect(sshd, tmp_path / "b").close()


def test_a_host_with_one_key_type_revoked_is_reached_with_its_other_pinned_key(sshd_factory, tmp_path):
    """A host with ed25519 and ecdsa keys whose ed25519 key is @revoked while its ecdsa key is
    pinned: ssh asks for the ecdsa key and connects; the deploy asked for ed25519 first (pinned
    on a line too) and refused the host as revoked (found by review, 2026-12-06, tenth stop).
    Now a pinned type whose key is revoked is asked for last; the revoked key itself stays refused."""
    ecdsa = tmp_path / "host_ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True,
                   capture_output=True, timeout=30)
    host = sshd_factory(extra_config=(f"HostKey {ecdsa}",))
    name = f"[127.0.0.1]:{host.port}"
    et, eb = ecdsa.with_suffix(".pub").read_text().split()[:2]
    dt, db = host.host_key_pub.split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked * {dt} {db}\n{name} {dt} {db}\n{name} {et} {eb}\n")
    r = subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                        "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
                        "-o", "IdentitiesOnly=yes", "-i", str(host.identity_file), "-p", str(host.port),
                        f"{host.user}@127.0.0.1", "true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr                                  # what ssh does with this file
    t = connect(host, tmp_path / "b", known_hosts=known)
    try:
        assert t._t.get_remote_server_key().get_base64() == eb
    finally:
        t.close()
    known.write_text(f"@revoked * {dt} {db}\n{name} {dt} {db}\n")      # only the revoked key pinned
    with pytest.raises(HostKeyRejected, match="marked @revoked in .* line 1"):
        connect(host, tmp_path / "b", known_hosts=known)


@pytest.mark.parametrize("algorithms", [("Ciphers aes128-cbc,aes256-cbc,3des-cbc",),
                                        ("Ciphers aes128-ctr", "MACs hmac-md5,hmac-md5-etm@openssh.com")])
def test_a_server_offering_only_what_openssh_no_longer_uses_is_refused_in_one_line(sshd_factory, tmp_path,
                                                                                     algorithms):
    """paramiko still offers CBC ciphers and MD5 MACs, which OpenSSH's client dropped; a server
    offering only those was used (found by the security review, 2026-12-05, fourth stop). Now the
    handshake is refused in one line that says what to enable."""
    weak = sshd_factory(extra_config=algorithms)
    with pytest.raises(HostUnreachable) as e:
        connect(weak, tmp_path / "b")
    msg = one_line(e.value)
    assert "SSH handshake failed" in msg and "enable modern ones in its sshd_config" in msg, msg


# --- authentication ----------------------------------------------------------------------------
def test_wrong_key_is_refused_with_a_clear_line(sshd, tmp_path):
    other = tmp_path / "other_key"
    keygen(other)
    with pytest.raises(AuthFailed) as e:
        connect(sshd, tmp_path / "b", identity_file=other)
    msg = one_line(e.value)
    assert str(other) in msg and "authorized_keys" in msg


def test_a_server_that_does_not_answer_authentication_in_time_is_not_a_refused_key(sshd_factory, tmp_path,
                                                                                  monkeypatch):
    """A host whose sshd looks keys up slowly (an AuthorizedKeysCommand, a directory) and does not
    answer within the timeout was reported as "the server refused public-key authentication ...
    add the deploy public key to that user's authorized_keys", sending people to a key that may
    be right, after one timeout per key tried (found by review, 2026-12-06, tenth stop). Now one
    line says the server did not answer authentication in time, at the first timeout."""
    slow = sshd_factory(extra_config=("AuthorizedKeysCommand /bin/sleep 20", "AuthorizedKeysCommandUser nobody"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    other = tmp_path / "directory_key"          # not in the file: sshd asks the command, which stalls
    keygen(other)
    start = time.monotonic()
    with pytest.raises(HostUnreachable) as e:
        connect(slow, tmp_path / "b", identity_file=other, timeout=2.0)
    msg = one_line(e.value)
    assert "did not answer public-key authentication within 2s" in msg and "authorized_keys" not in msg, msg
    assert time.monotonic() - start < 10


def test_missing_identity_file_is_a_config_error(sshd, tmp_path):
    with pytest.raises(UserError, match="identity_file .* does not exist"):
        connect(sshd, tmp_path / "b", identity_file=tmp_path / "missing_key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_identity_file_others_may_read_is_refused_as_ssh_refuses_it(sshd, tmp_path, mode):
    """OpenSSH will not use a private key that group or others may read; we used it (found by the
    security review, 2026-12-05, fourth stop). Now one line says to chmod 600, and the same key
    at 0600 logs in."""
    key = tmp_path / "deploy_key"
    shutil.copy(sshd.identity_file, key)
    key.chmod(mode)
    with pytest.raises(ConfigError) as e:
        connect(sshd, tmp_path / "b", identity_file=key)
    assert f"chmod 600 {key}" in one_line(e.value) and f"{mode:04o}" in one_line(e.value)
    key.chmod(0o600)
    connect(sshd, tmp_path / "b", identity_file=key).close()


def test_no_key_at_all_says_how_to_provide_one(sshd, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    with pytest.raises(AuthFailed, match="no SSH key"):
        connect(sshd, tmp_path / "b", identity_file=None)


def test_passphrase_key_without_agent_is_refused_without_prompting(sshd, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-pass", "-f", str(key)],
                   check=True, capture_output=True, timeout=30)
    with pytest.raises(UserError, match="passphrase.*ssh-add"):
        connect(sshd, tmp_path / "b", identity_file=key)


def test_ssh_agent_key_is_used_when_no_identity_file_is_set(sshd, tmp_path, monkeypatch):
    """As CircleCI's add_ssh_keys: the deploy key lives only in the agent."""
    with _ssh_agent(tmp_path, monkeypatch, sshd.identity_file):
        t = connect(sshd, tmp_path / "b", identity_file=None)
        try:
            assert t.list_dir("") == []
        finally:
            t.close()


@contextlib.contextmanager
def _ssh_agent(tmp_path, monkeypatch, *keys):
    """A real ``ssh-agent`` holding ``keys`` (in that order) as this process's SSH_AUTH_SOCK, with
    an empty HOME (no ~/.ssh key to fall back on): the deploy key only in the agent, as CircleCI's
    add_ssh_keys leaves it. Its socket path; the agent is stopped after the block."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):   # bounded wait for the socket
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        for key in keys:
            subprocess.run(["ssh-add", str(key)], check=True, env=env, capture_output=True, timeout=30)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
        yield sock
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# --- unreachable -------------------------------------------------------------------------------
def test_connection_refused_is_one_clear_line(sshd, tmp_path):
    from mlops.ports import free_port

    port = free_port()                  # nothing listens there
    with pytest.raises(HostUnreachable) as e:
        connect(sshd, tmp_path / "b", port=port)
    msg = one_line(e.value)
    assert "connection refused" in msg and str(port) in msg


def test_host_that_never_answers_times_out_with_a_clear_line(sshd, blackhole, tmp_path):
    with pytest.raises(HostUnreachable) as e:
        connect(sshd, tmp_path / "b", port=blackhole, timeout=1.0)
    assert "handshake" in one_line(e.value) or "no answer" in str(e.value)


# --- connection cut mid-upload -----------------------------------------------------------------
@pytest.mark.parametrize("cut_after", [200, 3_000, 150_000, 1_500_000])
def test_connection_cut_leaves_nothing_numeric_and_the_next_run_completes(
        sshd, cut_proxy, tmp_path, cut_after):
    model = make_model_tree(tmp_path / "model", variables_bytes=3_000_000)
    m = mf.build(model)
    base = tmp_path / "srv"
    proxy = cut_proxy(sshd.port, cut_after)
    known = tmp_path / "known_hosts"
    key_type, key_b64 = sshd.host_key_pub.split()[:2]
    known.write_text(f"[127.0.0.1]:{proxy.port} {key_type} {key_b64}\n")

    with pytest.raises(UserError) as e:
        t = connect(sshd, base, port=proxy.port, known_hosts=known, timeout=5, op_timeout=15)
        try:
            publish(t, MODEL, 7, model, m)
        finally:
            t.close()
    one_line(e.value)
    assert isinstance(e.value, HostUnreachable), e.value
    assert proxy.cuts == 1
    # TF Serving would see nothing: no numeric directory, nothing partial under one
    versions_dir = base / MODEL
    assert not versions_dir.exists() or [n for n in os.listdir(versions_dir) if n.isdigit()] == []

    # the next run (the proxy no longer cuts) completes and is verified
    t = connect(sshd, base, port=proxy.port, known_hosts=known)
    try:
        r = publish(t, MODEL, 7, model, m)
        assert r.status == "uploaded"
        assert t.verify(f"{MODEL}/7", m) == []
        leftovers = incoming_dirs(t, MODEL)
        if cut_after >= 150_000:   # cut mid-stream: the dead upload's temporary dir is left behind
            assert leftovers, "expected the interrupted upload's .incoming-* directory"
        # a leftover temporary upload (if the cut came mid-stream) is retention's to remove
        stale = retention.stale_uploads(leftovers, now=time.time() + 7200)
        assert stale == sorted(leftovers)
        retention.apply(t, retention.RetentionPlan(MODEL, [], stale))
        assert incoming_dirs(t, MODEL) == []
        assert sorted(os.listdir(versions_dir)) == ["7"]
    finally:
        t.close()


# --- full disk, permissions ----------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a 2 MB tmpfs for the full-disk test (needs root and "
                    f"mount permission): {p.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.parametrize("kind", ["file", "ssh"])
def test_model_larger_than_free_space_is_refused_before_uploading(kind, small_tmpfs, sshd, tmp_path):
    from serving_sync.transports.local import LocalTransport

    model = make_model_tree(tmp_path / "model", variables_bytes=3_000_000)
    t = LocalTransport(small_tmpfs) if kind == "file" else connect(sshd, small_tmpfs)
    try:
        with pytest.raises(DiskFull) as e:
            publish(t, MODEL, 1, model, mf.build(model))
    finally:
        t.close()
    msg = one_line(e.value)
    assert "MB needed" in msg and "nothing was uploaded" in msg
    assert os.listdir(small_tmpfs) == []


@pytest.mark.parametrize("kind", ["file", "ssh"])
def test_disk_filling_up_during_upload_fails_cleanly(kind, small_tmpfs, sshd, tmp_path):
    from serving_sync.transports.local import LocalTransport

    model = make_model_tree(tmp_path / "model", variables_bytes=1_200_000)
    m = mf.build(model)
    filler = small_tmpfs / "filler"

    def fill_disk(_n: int) -> None:   # another process eats the space while we upload
        if not filler.exists():
            filler.write_bytes(b"\0" * 900_000)

    t = LocalTransport(small_tmpfs) if kind == "file" else connect(sshd, small_tmpfs)
    try:
        with pytest.raises(DiskFull) as e:
            publish(t, MODEL, 1, model, m, progress=fill_disk)
        one_line(e.value)
        assert sorted(os.listdir(small_tmpfs / MODEL)) == []    # temp upload removed, nothing numeric
        filler.unlink()
        assert publish(t, MODEL, 1, model, m).status == "uploaded"
    finally:
        t.close()


@pytest.fixture
def readonly_base():
    """A base directory owned by root, 0755: visible to other users but not writable."""
    d = Path("/tmp") / f"mlops-ro-base-{uuid.uuid4().hex[:8]}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_permission_denied_on_the_base_dir_is_one_clear_line(sshd_factory, readonly_base, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: needs root to create the unprivileged test user")
    srv = sshd_factory(user="mlopssynctest")
    model = make_model_tree(tmp_path / "model")
    os.chmod(tmp_path, 0o755)
    t = connect(srv, readonly_base)
    try:
        with pytest.raises(HostPermissionDenied) as e:
            publish(t, MODEL, 1, model, mf.build(model))
    finally:
        t.close()
    msg = one_line(e.value)
    assert "Permission denied" in msg and str(readonly_base) in msg
    assert os.listdir(readonly_base) == []


# --- fallbacks ---------------------------------------------------------------------------------
def test_sftp_only_account_publishes_and_verifies_by_reading_back(sshd_factory, tmp_path):
    """ForceCommand internal-sftp (no shell): pipelined SFTP writes, SFTP read-back hashes."""
    srv = sshd_factory(extra_config=("ForceCommand internal-sftp",))
    model = make_model_tree(tmp_path / "model", n_assets=20)
    m = mf.build(model)
    t = connect(srv, tmp_path / "srv", op_timeout=60)
    try:
        r = publish(t, MODEL, 2, model, m)
        assert r.status == "uploaded" and r.bytes_transferred == m.total_size
        assert t.verify(f"{MODEL}/2", m) == []
        (tmp_path / "srv" / MODEL / "2" / "assets" / "vocab-0003.txt").write_bytes(b"changed")
        assert t.verify(f"{MODEL}/2", m) == ["sha256 mismatch for assets/vocab-0003.txt"]
        assert t._no_shell            # it really went the SFTP way
        assert t.disk_free() is None
        t.remove_tree(f"{MODEL}/2")
        assert not (tmp_path / "srv" / MODEL / "2").exists()
        assert publish(t, MODEL, 3, model, m).status == "uploaded"   # and again, directly via SFTP
    finally:
        t.close()


def test_sftp_only_removal_removes_a_symlinked_version_and_never_what_it_points_at(sshd_factory, tmp_path):
    """Over SFTP (no shell) removing a version listed a symlinked version directory's target and
    deleted it — outside the base — then failed on the link with an error retention did not catch."""
    from serving_sync import retention

    srv = sshd_factory(extra_config=("ForceCommand internal-sftp",))
    base = tmp_path / "srv"
    outside = tmp_path / "precious"
    (outside / "sub").mkdir(parents=True)
    (outside / "data.bin").write_bytes(b"x" * 10)
    (outside / "sub" / "more.bin").write_bytes(b"y")
    for v in (2, 3, 4, 5):
        (base / MODEL / str(v)).mkdir(parents=True)
        (base / MODEL / str(v) / "saved_model.pb").write_bytes(b"pb")
    (base / MODEL / "1").symlink_to(outside, target_is_directory=True)
    t = connect(srv, base)
    try:
        rp = retention.plan(t, MODEL, serving=5, previous=4, keep=3)
        assert 1 in rp.remove_versions
        retention.apply(t, rp)
        assert t._no_shell            # it really went the SFTP way
    finally:
        t.close()
    assert not (base / MODEL / "1").is_symlink()                      # the link is gone
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == ["data.bin", "sub", "sub/more.bin"]


def test_tar_upload_sets_readable_modes_and_no_foreign_owner(sshd, tmp_path):
    model = make_model_tree(tmp_path / "model")
    os.chmod(model / "saved_model.pb", 0o600)   # TF Serving may run as another user
    t = connect(sshd, tmp_path / "srv")
    try:
        publish(t, MODEL, 1, model, mf.build(model))
    finally:
        t.close()
    pub = tmp_path / "srv" / MODEL / "1"
    assert (pub / "saved_model.pb").stat().st_mode & 0o777 == 0o644
    assert (pub / "variables").stat().st_mode & 0o777 == 0o755
    assert (pub / "saved_model.pb").stat().st_uid == os.geteuid()


@pytest.mark.parametrize("kind", ["file", "sftp-only"])
def test_published_folders_are_readable_by_another_user_whatever_the_umask(kind, sshd_factory, tmp_path):
    """Found by review (2026-12-05, third stop): TF Serving may run as another user (the tar upload
    sets 0644 files and 0755 folders, under ``umask 022``). The file transport and the SFTP upload
    set 0644 on files but made the folders with the deploying process's umask (a CI runner's 077
    or 027, ``ForceCommand internal-sftp -u 077``): ``<model>``, the version and ``variables``
    came out 0700, and a TF Serving running as another user could not load the version."""
    from serving_sync.transports.local import LocalTransport

    model = make_model_tree(tmp_path / "model")
    base = tmp_path / "srv"
    if kind == "file":
        t = LocalTransport(base)
    else:
        t = connect(sshd_factory(extra_config=("ForceCommand internal-sftp -u 077",)), base)
    old = os.umask(0o077)
    try:
        base.mkdir(mode=0o755)
        os.chmod(base, 0o755)
        publish(t, MODEL, 1, model, mf.build(model))
        assert kind == "file" or t._no_shell
    finally:
        os.umask(old)
        t.close()
    pub = base / MODEL / "1"
    modes = {str(p.relative_to(base)): p.stat().st_mode & 0o777 for p in [base / MODEL, *[pub, *pub.rglob("*")]]}
    assert modes == {k: (0o755 if (base / k).is_dir() else 0o644) for k in modes}, modes


def test_a_fleet_of_three_hosts_gets_the_same_verified_version(sshd_factory, tmp_path):
    """Three real sshd hosts, one at a time (as the deploy does); each holds its own lock."""
    from serving_sync.lock import HostLock

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    fleet = [sshd_factory() for _ in range(3)]
    assert len({s.port for s in fleet}) == 3
    assert len({s.host_key_fingerprint for s in fleet}) == 3
    for i, srv in enumerate(fleet):
        t = connect(srv, tmp_path / f"host{i}")
        try:
            with HostLock(t):
                assert publish(t, MODEL, 9, model, m).status == "uploaded"
                assert t.verify(f"{MODEL}/9", m) == []
        finally:
            t.close()
        # each host's key only opens that host
        other = fleet[(i + 1) % 3]
        with pytest.raises(HostKeyRejected):
            connect(srv, tmp_path / "x", known_hosts=other.known_hosts)
    for i in range(3):
        assert sorted(os.listdir(tmp_path / f"host{i}" / MODEL)) == ["9"]


@pytest.mark.parametrize("kind", ["ssh", "file"])
def test_a_full_disk_at_the_lock_leaves_no_lock_behind_and_says_the_disk_is_full(sshd, tmpfs, kind):
    """The exclusive create succeeded and its write failed: the empty file stayed, and once the
    space was freed every deploy was refused as holding a "corrupt" lock (--break-lock)."""
    from serving_sync.lock import HostLock
    from serving_sync.transports.local import LocalTransport

    mnt = tmpfs("1m")
    base = mnt / "base"
    (base / ".serving_sync").mkdir(parents=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill", "bs=4k"], capture_output=True, timeout=60)
    t = connect(sshd, base) if kind == "ssh" else LocalTransport(base)
    try:
        with pytest.raises(DiskFull) as e:
            with HostLock(t):
                pass
        assert "no space left" in one_line(e.value)
        assert os.listdir(base / ".serving_sync") == []
        os.remove(mnt / "fill")
        with HostLock(t):
            assert os.listdir(base / ".serving_sync") == ["lock"]
    finally:
        t.close()


@pytest.mark.parametrize("rc", ["printf 'motd'\n", "echo hello from bashrc\n", "echo 12\n"])
def test_a_login_shell_that_prints_at_start_still_runs_the_host_scripts(sshd_factory, tmp_path, rc):
    """A deploy user's ~/.bashrc that printed text without a newline glued it to the scripts'
    marker: the account was taken for one without a shell and the upload fell back to SFTP into
    the directory the script had made (a wrong "SFTP refused" line). One that printed a line
    made the free-space check read the text (no free-space checks at all)."""
    import pwd

    from serving_sync.lock import HostLock
    from tests.lab.sshd import ensure_user

    user = "mlopsbashrc"          # this test's own user, removed at its end (-f: a session may linger)
    ensure_user(user, login_shell=True)
    try:
        home = Path(pwd.getpwnam(user).pw_dir)
        (home / ".bashrc").write_text(rc)
        server = sshd_factory(user=user)
        base = base_of(user, "mlops-bashrc-")
        model = make_model_tree(tmp_path / "m")
        os.chmod(tmp_path, 0o755)
        t = connect(server, base, user=user)
        try:
            with HostLock(t):
                r = publish(t, "digits", 1, model)
            assert r.status == "uploaded" and not t._no_shell
            free = t.disk_free()
            assert isinstance(free, int) and free > 64 * 1024, free     # not the 12 a startup file printed
            assert t.verify("digits/1", mf.build(model)) == []
        finally:
            t.close()
            shutil.rmtree(base.parent)
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_a_login_shell_that_prints_breaks_an_external_sftp_server_and_says_so(sshd_factory, tmp_path):
    """Found by review (2026-12-05, third stop): with Debian's default ``Subsystem sftp
    /usr/lib/openssh/sftp-server`` sshd starts the SFTP server through the login shell, so a
    ``~/.bashrc`` that prints puts its text before the SFTP protocol (as for OpenSSH's own sftp and
    scp). The lock's first write raised paramiko's ``SFTPError: Garbage packet received`` out of
    every command ("a bug in mlops"). Now one line that names the startup file and the fix."""
    import pwd

    from serving_sync.lock import HostLock
    from tests.lab.sshd import ensure_user

    sftp_server = "/usr/lib/openssh/sftp-server"
    if not Path(sftp_server).exists():
        pytest.skip(f"SKIPPED LOUDLY: {sftp_server} is not installed here (Debian package openssh-sftp-server)")
    user = "mlopssftprc"          # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text("echo hello from bashrc\n")
        server = sshd_factory(user=user, sftp=sftp_server)
        base = base_of(user, "mlops-sftprc-")
        t = connect(server, base, user=user)
        try:
            with pytest.raises(UserError) as e:
                with HostLock(t):
                    pass
            msg = one_line(e.value)
            assert "SFTP" in msg and "~/.bashrc" in msg and "interactive" in msg, msg
            assert list(base.iterdir()) == []
        finally:
            t.close()
            shutil.rmtree(base.parent)
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_shell_options_a_login_shell_sets_do_not_reach_the_host_scripts(sshd_factory, tmp_path):
    """sshd makes bash read ~/.bashrc before every command: `set -e` there ended a pull from the
    shared store at the `wait` on its killed watcher (exit 143, "no error output"), so every
    deploy to that host failed at publish. Upload, pull, verify and the lock run as with the
    shell's defaults."""
    import functools
    import http.server
    import pwd
    import threading

    from serving_sync.lock import HostLock
    from serving_sync.store import Pull
    from tests.lab.sshd import ensure_user

    user = "mlopssete"            # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    model = make_model_tree(tmp_path / "m")
    os.chmod(tmp_path, 0o755)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(model)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text("set -euo pipefail\nset -C\n")
        server = sshd_factory(user=user)
        base = base_of(user, "mlops-sete-")
        m = mf.build(model)
        urls = {f.path: f"http://127.0.0.1:{httpd.server_address[1]}/{f.path}" for f in m.files}
        t = connect(server, base, user=user)
        try:
            with HostLock(t):
                assert publish(t, "digits", 1, model, m).status == "uploaded" and not t._no_shell
                assert publish(t, "digits", 2, model, m, pull=Pull("s3://b/p", m, urls)).status == "pulled"
            assert t.verify("digits/1", m) == [] and t.verify("digits/2", m) == []
        finally:
            t.close()
            shutil.rmtree(base.parent)
    finally:
        httpd.shutdown()
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def _descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (from /proc), children first."""
    parent_of = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent_of[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        out += kids
        todo += kids
    return out


def test_a_host_that_stops_answering_as_a_command_starts_is_a_timeout_not_a_hang(sshd_factory, tmp_path):
    """Found by review (2026-12-06, fourteenth stop): every host command opens a channel (bounded
    by op_timeout) and asks the host to start the command; paramiko waits for that answer without
    a timeout, so a host that stopped answering in between (a network gone silent, sshd stuck
    setting up the session) held the deploy for ever. Here the sshd serving the connection is
    stopped (SIGSTOP) right after the channel opened: one "stalled" line within op_timeout."""
    import signal
    import threading

    server = sshd_factory()
    base = tmp_path / "base"
    base.mkdir()
    t = connect(server, base, op_timeout=2)
    stopped: list[int] = []
    real_open = t._t.open_session

    def open_then_stop(*args, **kwargs):
        ch = real_open(*args, **kwargs)
        for pid in _descendants(server.proc.pid):     # this test's own sshd: its connection
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        return ch

    t._t.open_session = open_then_stop
    outcome: list = []

    def run():
        try:
            outcome.append(t.disk_free())
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(15)
    try:
        assert stopped, "no sshd process served the connection"
        assert not worker.is_alive(), "the command waited for ever for the host to start it"
        assert isinstance(outcome[0], HostUnreachable), outcome
        assert "no progress for 2s while checking free space" in one_line(outcome[0]), one_line(outcome[0])
        # and what to check (found by review, 2026-12-06, seventeenth stop: it named only the host)
        assert f"check the network path and that the host answers (`ssh -p {server.port} {server.user}@127.0.0.1 " \
            f"true`" in one_line(outcome[0]) and "rerun" in one_line(outcome[0]), one_line(outcome[0])
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        worker.join(15)
        t.close()


def test_aliases_a_login_shell_defines_do_not_reach_the_host_scripts(sshd_factory, tmp_path):
    """Found by review (2026-12-06, fourteenth stop): a ~/.bashrc with `shopt -s expand_aliases` and
    the dotfiles classic `alias mkdir='mkdir -pv'` changed the scripts' commands: the upload's
    `mkdir -- <dest>`, which must fail when the folder is there (another upload's, a leftover),
    became `mkdir -pv` and the tar went into the existing folder. Aliases are removed before the
    scripts' lines are read; a publish still works."""
    import pwd

    from tests.lab.sshd import ensure_user

    user = "mlopsalias"           # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text(
            "shopt -s expand_aliases\nalias mkdir='mkdir -pv'\n")
        server = sshd_factory(user=user)
        _publish_pull_and_refuse_a_taken_folder(user, server, tmp_path, "mlops-alias-")
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def _publish_pull_and_refuse_a_taken_folder(user: str, server, tmp_path: Path, prefix: str) -> None:
    """Through ``user``'s login shell: an upload into a folder that is there fails ("cannot
    create", nothing added), an upload (stream-hashed on the host), a pull from a shared store
    over HTTP on 127.0.0.1, the free-space check and the host's hash listing all work."""
    import functools
    import http.server
    import threading

    from serving_sync.lock import HostLock
    from serving_sync.store import Pull

    model = make_model_tree(tmp_path / "m")
    os.chmod(tmp_path, 0o755)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(model)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = base_of(user, prefix)
    try:
        there = base / "digits" / "taken"
        there.mkdir(parents=True)
        (there / "stale").write_text("another upload's file\n")
        for p in (base / "digits", there, there / "stale"):
            shutil.chown(p, user, user)
        m = mf.build(model)
        urls = {f.path: f"http://127.0.0.1:{httpd.server_address[1]}/{f.path}" for f in m.files}
        t = connect(server, base, user=user)
        try:
            with pytest.raises(UserError) as e:
                t.upload_tree(model, "digits/taken", m)
            assert "cannot create" in one_line(e.value), one_line(e.value)
            assert sorted(p.name for p in there.iterdir()) == ["stale"]
            with HostLock(t):
                assert publish(t, "digits", 1, model, m).status == "uploaded" and not t._no_shell
                assert publish(t, "digits", 2, model, m, pull=Pull("s3://b/p", m, urls)).status == "pulled"
            free = t.disk_free()
            assert isinstance(free, int) and free > 64 * 1024, free
            assert t.verify("digits/1", m) == [] and t.verify("digits/2", m) == []
            # again: the publish's own check was kept, so this one runs the host's hash listing
            assert t.verify("digits/1", m) == [] and t.verify("digits/2", m) == []
            assert t.listing("digits/1").files == {f.path: f.sha256 for f in m.files}
        finally:
            t.close()
    finally:
        httpd.shutdown()
        shutil.rmtree(base.parent)


ZSH, DASH = "/usr/bin/zsh", "/bin/dash"


@pytest.mark.parametrize("shell, dotfiles", [(ZSH, "none"), (ZSH, "common"), (DASH, "none")])
def test_a_deploy_user_whose_login_shell_is_zsh_or_dash_publishes_pulls_and_lists(
        sshd_factory, tmp_path, shell, dotfiles):
    """Found by review (2026-12-06, fourteenth stop): sshd runs the host scripts as `$SHELL -c`,
    and zsh does not split unquoted variables: `find . -type f -exec $H {} +` with H="openssl dgst
    -sha256 -r" looked for a command of that whole name, so every listing failed (exit 94) and an
    upload's stream hash never came back — every deploy to a host whose deploy user has zsh failed.
    The scripts now ask zsh for sh's rules (`emulate -R sh`). "common": a ~/.zshenv (the one file a
    non-interactive zsh reads) with options, an alias and a function dotfiles set, and a ~/.zshrc;
    zsh parses the whole `-c` text before running it, so the alias reached every line until the
    scripts ran through `eval`. dash (Debian's /bin/sh) as the login shell works the same."""
    import pwd

    from tests.lab.sshd import ensure_user

    if not Path(shell).exists():
        pkg = "zsh" if shell == ZSH else "dash"
        pytest.skip(f"SKIPPED LOUDLY: {shell} is not installed here (Debian package {pkg}; scripts/system-deps.sh "
                    f"installs zsh): a deploy user with that login shell is not tested")
    user = "mlopszsh" if shell == ZSH else "mlopsdash"     # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        subprocess.run(["usermod", "--shell", shell, user], check=True, capture_output=True, timeout=30)
        assert pwd.getpwnam(user).pw_shell == shell
        home = Path(pwd.getpwnam(user).pw_dir)
        if dotfiles == "common":
            (home / ".zshenv").write_text(
                'export PATH="$HOME/bin:$PATH"\n'
                "setopt extended_glob no_unset pipe_fail ksh_arrays no_bsd_echo\n"
                "alias mkdir='mkdir -pv'\n"
                'df() { command df -h "$@" }\n')
            (home / ".zshrc").write_text(
                "setopt autocd correct hist_ignore_dups share_history extended_glob\n"
                "bindkey -e\nautoload -Uz compinit && compinit\nPROMPT='%n@%m %~ %# '\n")
        server = sshd_factory(user=user)
        _publish_pull_and_refuse_a_taken_folder(user, server, tmp_path, f"mlops-{Path(shell).name}-")
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_functions_a_login_shell_defines_do_not_reach_the_host_scripts(sshd_factory, tmp_path):
    """Found by review (2026-12-06, fourteenth stop): `unalias -a` removes aliases only, and a
    ~/.bashrc that defines `mkdir() { command mkdir -p "$@"; }` still replaced the scripts'
    `mkdir -- <dest>`, which must fail when the folder is there: the tar went into another
    upload's folder. The scripts unset, as functions, every command name they run."""
    import pwd

    from tests.lab.sshd import ensure_user

    user = "mlopsfunc"            # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text(
            'mkdir() { command mkdir -p "$@"; }\ndf() { command df -h "$@"; }\n')
        server = sshd_factory(user=user)
        _publish_pull_and_refuse_a_taken_folder(user, server, tmp_path, "mlops-func-")
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_a_field_separator_a_login_shell_sets_does_not_reach_the_host_scripts(sshd_factory, tmp_path):
    """Found by review (2026-12-06, fifteenth stop): a ~/.bashrc (or ~/.zshenv) that sets
    `IFS=$'\\n'` left the scripts' unquoted `$H` ("openssl dgst -sha256 -r") unsplit: find looked
    for a program of that whole name, every hash listing failed (exit 94) and no stream hash came
    back. The scripts unset IFS (the shell's default splitting) first."""
    import pwd

    from tests.lab.sshd import ensure_user

    user = "mlopsifs"             # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text("IFS=$'\\n'\n")
        server = sshd_factory(user=user)
        _publish_pull_and_refuse_a_taken_folder(user, server, tmp_path, "mlops-ifs-")
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_tar_options_and_cdpath_a_login_shell_exports_do_not_reach_the_host_scripts(sshd_factory, tmp_path):
    """Found by review (2026-12-06, fifteenth stop): GNU tar reads TAR_OPTIONS from the
    environment, so a deploy user's exported `--strip-components=1` (or `--exclude`) unpacked every
    upload wrongly and verification failed with no hint why; CDPATH sends a relative `cd` to a
    folder of that name elsewhere. The scripts unset both."""
    import pwd

    from tests.lab.sshd import ensure_user

    user = "mlopstaropt"          # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        decoy = tmp_path / "decoy"
        decoy.mkdir(mode=0o755)
        tmp_path.chmod(0o755)
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text(
            f"export TAR_OPTIONS='--strip-components=1 --exclude=*.pb'\nexport CDPATH={decoy}\n")
        server = sshd_factory(user=user)
        _publish_pull_and_refuse_a_taken_folder(user, server, tmp_path, "mlops-taropt-")
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_a_restricted_login_shell_is_one_line_before_anything_is_written(sshd_factory, tmp_path):
    """rbash forbids redirection and cd: the scripts' `command -v tar >/dev/null` failed, the
    upload fell back to SFTP, and the listing's `cd` failing was taken for a missing directory —
    "a bug in mlops (unexpected FileNotFoundError)" on every deploy, an empty model folder left."""
    import pwd

    from serving_sync.lock import HostLock
    from tests.lab.sshd import ensure_user

    if not Path("/bin/rbash").exists():
        pytest.skip("SKIPPED LOUDLY: /bin/rbash is not installed here")
    user = "mlopsrbash"
    ensure_user(user, login_shell=True)
    try:
        subprocess.run(["usermod", "--shell", "/bin/rbash", user], check=True, capture_output=True, timeout=30)
        assert pwd.getpwnam(user).pw_shell == "/bin/rbash"
        server = sshd_factory(user=user)
        base = base_of(user, "mlops-rbash-")
        t = connect(server, base, user=user)
        try:
            model = make_model_tree(tmp_path / "m")
            with HostLock(t):
                with pytest.raises(UserError) as e:
                    publish(t, "digits", 1, model)
            line = one_line(e.value)
            assert "login shell is restricted (rbash" in line, line
            # the shells docs/production.md supports, all of them
            assert "bash (/bin/bash), sh/dash (/bin/sh) or zsh (/usr/bin/zsh)" in line, line
            assert [p.name for p in base.iterdir()] in ([], [".serving_sync"])      # no model folder
        finally:
            t.close()
            shutil.rmtree(base.parent)
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


def test_a_passphrase_key_the_agent_does_not_hold_says_to_add_it(sshd, tmp_path, monkeypatch):
    """Found by review (2026-12-05, third stop): with SSH_AUTH_SOCK set (CircleCI sets it) but the
    agent not holding the passphrase-protected identity_file (or not answering), the line said "no
    SSH key to authenticate with: set identity_file in the hosts file", which was set."""
    key = tmp_path / "locked"
    shutil.copy(sshd.identity_file, key)
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "s3cret-pass", "-f", str(key)],
                   check=True, capture_output=True, timeout=30)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "no-agent.sock"))
    with pytest.raises(AuthFailed) as e:
        connect(sshd, tmp_path / "b", identity_file=key)
    msg = one_line(e.value)
    assert f"identity_file {key} is protected by a passphrase" in msg and f"ssh-add {key}" in msg, msg
    assert "set identity_file" not in msg and "s3cret-pass" not in msg


def test_an_ssh_agent_that_never_answers_is_one_line_not_a_hang(sshd, tmp_path, monkeypatch):
    """Found by review (2026-12-06, tenth stop): an SSH_AUTH_SOCK whose agent accepts and never
    answers (a stuck or stopped ssh-agent) hung the deploy for good: paramiko asks the agent for
    its keys with no deadline. It is asked with the connection's timeout first now."""
    import socket
    import threading

    sock_path = tmp_path / "stuck-agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(4)                  # connections queue; nothing ever reads or answers them
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock_path))
    outcome: list = []

    def attempt():
        try:
            connect(sshd, tmp_path / "b", identity_file=None, timeout=2.0).close()
            outcome.append("connected")
        except UserError as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    listener.close()
    assert outcome, "the connection still waits on the agent after 20 s"
    assert isinstance(outcome[0], ConfigError), outcome
    msg = one_line(outcome[0])
    assert f"SSH_AUTH_SOCK={sock_path} did not answer within 2s" in msg, msg
    assert time.monotonic() - started < 10


def test_a_known_hosts_that_is_not_a_regular_file_is_one_line(tmp_path):
    """Found by review (2026-12-05, third stop): known_hosts is read before connecting; a FIFO
    there waited forever, and /dev/zero read until memory ran out (a MemoryError traceback).
    (Through a subprocess with a time limit: the code before hangs on the FIFO.)"""
    import sys

    from tests.helpers import REPO

    fifo = tmp_path / "known_hosts.fifo"
    os.mkfifo(fifo)
    code = ("import sys\n"
            "from serving_sync.hosts import Target\n"
            "from serving_sync.transports.ssh_connect import connect\n"
            "from mlops_common.errors import UserError\n"
            "try:\n"
            "    connect(Target('ssh', '/srv/models', host='127.0.0.1', port=1, user='deploy'),\n"
            "            known_hosts=sys.argv[1], identity_file=None, timeout=2)\n"
            "except UserError as exc:\n"
            "    print(type(exc).__name__, exc.message)\n")
    for known in (str(fifo), "/dev/null"):
        r = subprocess.run([sys.executable, "-c", code, known], capture_output=True, text=True, timeout=30,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.stdout.strip() == (f"ConfigError known_hosts file {known} is not a regular file; point known_hosts "
                                    f"(hosts file) or MLOPS_SYNC_KNOWN_HOSTS at the file that pins the serving "
                                    f"hosts' keys"), r.stdout + r.stderr


def test_a_file_name_on_the_host_that_is_not_utf8_is_one_line(sshd, tmp_path):
    """paramiko decodes SFTP file names as UTF-8: an operator's stray file named in Latin-1 in the
    model's folder made every listing of it a UnicodeDecodeError traceback (found by review,
    2026-12-05, fourth stop). Now one line says which folder and what to do."""
    base = tmp_path / "b"
    (base / "m" / "1").mkdir(parents=True)
    with open(os.fsencode(str(base / "m")) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    t = connect(sshd, base)
    try:
        with pytest.raises(UserError) as e:
            t.list_dir("m")
        msg = one_line(e.value)
        assert "is not UTF-8 text" in msg and "rename or remove that file on the host" in msg, msg
        assert t.list_dir("") == ["m"]          # the connection still works
    finally:
        t.close()


def _tree(base: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), base) for d, ds, fs in os.walk(base) for n in ds + fs}


@pytest.mark.parametrize("kind", ["ssh", "file"])
def test_a_file_name_with_a_line_break_in_a_published_version_is_one_line(sshd, tmp_path, kind):
    """Someone made ``bad\\nname`` inside a published version on the host: the host's listing is
    line-based (find, the hash tool), and the ssh:// verify and re-deploy of that version without
    its stored manifest were a ``ValueError`` traceback ("unexpected hash output line"), where the
    file:// host refused it as a different version (found by review, 2026-12-05, eighth stop).
    Now every reading of the folder (a re-deploy with or without the stored manifest, verify) is
    the same one line on both, naming the host and the folder, and nothing on the host changes."""
    from serving_sync.transports.local import LocalTransport

    model = make_model_tree(tmp_path / "model", n_assets=2)
    m = mf.build(model)
    base = tmp_path / "b"
    t = connect(sshd, base) if kind == "ssh" else LocalTransport(base)
    try:
        assert publish(t, MODEL, 3, model, m).status == "uploaded"
        vdir = base / MODEL / "3"
        (vdir / "variables" / "bad\nname").write_bytes(b"x")
        stored = base / ".serving_sync" / "manifests" / MODEL / "3.json"
        assert stored.exists()
        host = t.where if kind == "ssh" else t.url
        want = (f"{host}: a file name with a line break under {vdir}; remove or rename it on the host "
                f"(find {vdir} -name '*[[:cntrl:]]*' lists it), then rerun")
        for what in ("re-deploy (stored manifest)", "verify", "re-deploy (hashed on the host)"):
            before = _tree(base)
            with pytest.raises(UserError) as e:
                if what == "verify":
                    t.verify(f"{MODEL}/3", m)
                else:
                    publish(t, MODEL, 3, model, m)
            assert one_line(e.value) == want, what
            assert _tree(base) == before, what           # nothing written, nothing removed
            stored.unlink(missing_ok=True)               # then: hashed on the host
        assert t.list_dir(MODEL) == ["3"]                # the connection still works
    finally:
        t.close()


def test_the_upload_script_stops_on_a_line_break_name_in_its_upload_folder(tmp_path):
    """The `.incoming-*` folder's listing after extraction (names and sizes, or hashes) says
    ``@linebreak`` (exit 93) instead of printing a name that reads as two lines."""
    import io
    import tarfile

    from serving_sync.transports.ssh_scripts import listing_script, parse_output, upload_script

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("saved_model.pb", b"pb"), ("assets/bad\nname", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = subprocess.run(["sh", "-c", upload_script(str(dest.parent), str(dest), 1000)], input=buf.getvalue(),
                       capture_output=True, timeout=60)
    res = parse_output(p.stdout)
    assert p.returncode == 93 and "@linebreak" in res.flags and res.listing is None, (p.stdout, p.stderr)
    p = subprocess.run(["sh", "-c", listing_script(str(dest))], capture_output=True, timeout=60)
    res = parse_output(p.stdout)
    assert p.returncode == 93 and "@linebreak" in res.flags and res.listing is None, (p.stdout, p.stderr)


@pytest.mark.parametrize("kind", ["ssh", "file"])
def test_retention_goes_on_past_an_upload_folder_named_with_a_line_break(sshd, tmp_path, kind):
    """A folder ``.incoming-...\\n...`` in the model's folder (not ours: our names never hold
    one) is listed as a stale upload, and its removal was refused by the path check ("unsafe
    path"): retention stopped there on every deploy, removing no old version and no later
    leftover (found by review, 2026-12-05, eighth stop); the same for a ``.models.config.tmp-*``
    in the base. Now it is left, with a warning, and the rest is removed."""
    from serving_sync.transports.local import LocalTransport

    model = make_model_tree(tmp_path / "model", n_assets=1)
    m = mf.build(model)
    base = tmp_path / "b"
    t = connect(sshd, base) if kind == "ssh" else LocalTransport(base)
    try:
        for v in (1, 2, 3):
            publish(t, MODEL, v, model, m)
        odd = ".incoming-1-20200101T000000Z-ab\ncd"
        (base / MODEL / odd).mkdir()
        (base / MODEL / ".incoming-1-20200101T000000Z-abcd").mkdir()
        (base / ".models.config.tmp-ab\ncd").write_text("")     # listed after a lock takeover
        (base / ".models.config.tmp-abcd").write_text("")
        rp = retention.plan(t, MODEL, serving=3, previous=2, keep=2, config_temps=True)
        retention.apply(t, rp)
        assert sorted(os.listdir(base / MODEL)) == [odd, "2", "3"]
        assert ".models.config.tmp-abcd" not in os.listdir(base)
    finally:
        t.close()


@pytest.mark.parametrize("interruptible", [False, True], ids=["short-command", "pull"])
def test_a_command_printing_megabytes_to_stderr_ends_with_its_stderr_not_a_stall(sshd, tmp_path, interruptible):
    """Found by review (2026-12-06, fourteenth stop): a command's stdout was read to its end before
    its stderr. Both share the channel's window (ssh_connect.WINDOW_SIZE, 16 MB), so a host command
    printing more than that to stderr (a noisy login shell's startup file, a traceback loop) blocked
    writing it, its stdout never ended, and the deploy waited op_timeout to report a stall instead of
    the error. Here 20 MB go to stderr, then a line to stdout: the whole of both comes back, well
    within op_timeout."""
    base = tmp_path / "base"
    base.mkdir()
    t = connect(sshd, base, op_timeout=5)
    try:
        ch = t._open_exec("head -c 20000000 /dev/zero | tr '\\0' e >&2; echo 'the real error' >&2; "
                          "echo done; exit 3")
        try:
            ch.shutdown_write()
            started = time.monotonic()
            rc, out, err = t._finish(ch, interruptible=interruptible)
        finally:
            ch.close()
        assert time.monotonic() - started < 5
        assert (rc, out) == (3, b"done\n")
        assert len(err) == 20_000_000 + len(b"the real error\n")
        assert err.endswith(b"e" * 1000 + b"the real error\n")
    finally:
        t.close()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_host_command_printing_without_end_is_one_line_not_this_machines_memory(sshd, tmp_path, stream):
    """Found by review (2026-12-06, fifteenth stop): a host command's output was read to its end
    whatever its size, so a host printing without end (a startup file in a loop) filled the
    deploying machine's memory. Past ``ssh_channel.MAX_OUTPUT`` on either stream the channel is
    closed and the deploy says so in one line naming the host. Here 100 MB (more than the cap) go
    to one stream of a command that then ends: before, all of it came back."""
    from serving_sync.transports.ssh_channel import MAX_OUTPUT, OutputTooLarge

    assert MAX_OUTPUT < 100_000_000
    base = tmp_path / "base"
    base.mkdir()
    t = connect(sshd, base, op_timeout=20)
    try:
        ch = t._open_exec("head -c 100000000 /dev/zero | tr '\\0' x" + (" >&2" if stream == "stderr" else "")
                          + "; echo done")
        try:
            ch.shutdown_write()
            with pytest.raises(OutputTooLarge) as e:
                t._finish(ch)
        finally:
            ch.close()
        line = one_line(e.value)
        assert line.startswith(f"{t.where}: a command on the host printed more than 64 MiB to {stream}"), line
        assert t.disk_free() > 0          # the connection still works
    finally:
        t.close()


def test_reading_a_host_command_never_makes_the_channel_pipe_whose_close_races_the_transport(sshd, tmp_path,
                                                                                           monkeypatch):
    """Found by a full CI run (twenty-first stop): the test above failed once under load with the
    connection dead after the flooding channel was closed ("SSH session not active" for the next
    command; paramiko logged "Socket exception: Bad file descriptor"). ``read_output`` waited on
    ``Channel.fileno()``, an OS pipe that paramiko's transport thread writes to as data comes in;
    ``Channel.close()`` closes that pipe's descriptors without stopping the thread, so data still
    arriving from a flooding host made the thread write to a closed descriptor (or to one the number
    was reused for) and the whole connection died. Now the reader waits on an in-process event
    (``BufferedPipe.set_event``); here making such a pipe fails the test, over a flood cut short,
    a command's output read to its end, and free space read after both."""
    import paramiko.pipe

    from serving_sync.transports.ssh_channel import OutputTooLarge, read_output

    def no_pipe():
        raise AssertionError("Channel.fileno(): an OS pipe whose close races paramiko's transport thread")

    monkeypatch.setattr(paramiko.pipe, "make_pipe", no_pipe)
    base = tmp_path / "base"
    base.mkdir()
    t = connect(sshd, base, op_timeout=20)
    try:
        ch = t._open_exec("head -c 8000000 /dev/zero | tr '\\0' x >&2; echo done")
        try:
            ch.shutdown_write()
            with pytest.raises(OutputTooLarge):
                read_output(ch, 20, where=t.where, limit=1024 * 1024)
        finally:
            ch.close()
        ch = t._open_exec("printf out; printf err >&2")
        try:
            ch.shutdown_write()
            assert read_output(ch, 20, where=t.where) == (b"out", b"err")
        finally:
            ch.close()
        assert t.disk_free() > 0          # the connection still works
    finally:
        t.close()


def test_a_login_shell_printing_megabytes_before_the_upload_script_starts_is_one_line(sshd, tmp_path):
    """The same for what the upload and pull scripts print before their go line
    (``ssh_channel.read_until_go``, which read it all, splitting the whole of it into lines at every
    4 KB read): past ``MAX_HEAD`` (1 MiB) it stops with one line naming the host."""
    from serving_sync.transports.ssh_channel import MAX_HEAD, OutputTooLarge, read_until_go
    from serving_sync.transports.ssh_scripts import MARK

    base = tmp_path / "base"
    base.mkdir()
    t = connect(sshd, base, op_timeout=20)
    try:
        ch = t._open_exec(f"head -c {2 * MAX_HEAD} /dev/zero | tr '\\0' x; printf '\\n%s\\n@ready\\n' {MARK}")
        try:
            with pytest.raises(OutputTooLarge) as e:
                read_until_go(ch, b"@ready", mark_timeout=10, where=t.where)
        finally:
            ch.close()
        line = one_line(e.value)
        assert line.startswith(f"{t.where}: a command on the host printed more than 1 MiB before its script "
                               f"started"), line
    finally:
        t.close()


def test_a_deploy_user_with_a_translated_locale_still_gets_the_permission_error(sshd_factory, readonly_base,
                                                                               tmp_path):
    """Found by review (2026-12-06, fifteenth stop): the host's error messages are read for what
    they say (``oserrors.from_stderr``: "Permission denied", "No space left on device"), and the
    host scripts ran in the deploy user's locale. A German one (here ``LANGUAGE=de``, which this
    machine's translations answer without a compiled de_DE locale) made mkdir say "Keine
    Berechtigung": the permission error came out as a bare "cannot create", a full disk as an
    extraction failure, and `sync --help` lost its FILE (the flush fell back to the slowest way).
    The scripts run with ``LC_ALL=C``, as a login without any locale already did."""
    import pwd

    from tests.lab.sshd import ensure_user

    user = "mlopslocale"          # this test's own user, removed at its end
    ensure_user(user, login_shell=True)
    try:
        (Path(pwd.getpwnam(user).pw_dir) / ".bashrc").write_text("export LANG=C.UTF-8 LANGUAGE=de\n")
        server = sshd_factory(user=user)
        model = make_model_tree(tmp_path / "model")
        os.chmod(tmp_path, 0o755)
        t = connect(server, readonly_base, user=user)
        try:
            rc, out, _ = t._exec("rm /nonexistent-mlops-locale; sync --help")
            assert b"FILE" in out, out
            with pytest.raises(HostPermissionDenied) as e:
                t.upload_tree(model, f"{MODEL}/.incoming-1", mf.build(model))
        finally:
            t.close()
        msg = one_line(e.value)
        assert "Permission denied" in msg and str(readonly_base) in msg, msg
        assert os.listdir(readonly_base) == []
    finally:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, timeout=30)


class _Flood:
    """A channel whose stderr repeats ``line`` without end (a host shell tracing the pull script,
    `set -x` in the deploy user's startup file: every URL it is given is printed)."""

    def __init__(self, line: bytes):
        self.line, self.closed = line, False
        self.in_buffer = self.in_stderr_buffer = self     # paramiko's BufferedPipe, for set_event

    def set_event(self, event):
        event.set()

    def recv(self, n):
        import socket
        raise socket.timeout()

    def recv_stderr(self, n):
        return self.line * 4

    def gettimeout(self):
        return 10.0

    def settimeout(self, t):
        pass

    def close(self):
        self.closed = True


def test_a_host_printing_without_end_is_quoted_without_the_presigned_urls_it_printed():
    """Found by review (2026-12-06, fifteenth stop, s15-security): the too-much-output line quoted
    the host's last line as it was, while every other message of the pull hides its URLs
    (``store.hide_presigned_urls``): a pull traced by the host's shell ended its last line with a
    presigned URL, a credential for its lifetime, and the deploy's output and CI log carried it."""
    from serving_sync.transports.ssh_channel import OutputTooLarge, read_output

    ch = _Flood(b"+ printf 'url = \"%s\"\\n' 'https://store.example:9000/b/m/1/x?X-Amz-Credential=AKIAEXAMPLE"
                b"&X-Amz-Signature=PRESIGNEDSECRET1'\n")
    with pytest.raises(OutputTooLarge) as e:
        read_output(ch, 5.0, where="web-1", limit=4096)
    line = one_line(e.value)
    assert ch.closed and line.startswith("web-1: a command on the host printed more than"), line
    assert "PRESIGNEDSECRET1" not in line and "AKIAEXAMPLE" not in line and "last line: + printf" in line, line


def test_an_agent_with_more_keys_than_the_server_tries_says_to_name_the_deploy_key(sshd_factory, tmp_path,
                                                                                 monkeypatch, ssh_user_key):
    """sshd closes the connection after MaxAuthTries refused keys (default 6, "Too many
    authentication failures"): an agent holding more keys than that, the deploy key among the
    last, was "connection lost during authentication (No existing session)", read as a network
    fault, naming nothing to fix (found by review, 2026-12-06, seventeenth stop). Now one line
    says the server closed after refusing the keys tried and to set identity_file to the deploy key."""
    server = sshd_factory(extra_config=("MaxAuthTries 2",))
    for name in ("other1", "other2"):
        keygen(tmp_path / name)
    with _ssh_agent(tmp_path, monkeypatch, tmp_path / "other1", tmp_path / "other2", ssh_user_key[0]):
        with pytest.raises(AuthFailed) as e:
            connect(server, tmp_path / "b", identity_file=None)
        msg = one_line(e.value)
        assert "agent key 1" in msg and "agent key 2" in msg and "MaxAuthTries" in msg, msg
        assert "identity_file" in msg, msg
        connect(server, tmp_path / "b", identity_file=ssh_user_key[0]).close()   # what the line says works


def test_an_identity_file_that_is_the_public_key_says_to_name_the_private_key(sshd, tmp_path):
    """identity_file pointed at the ``.pub`` half (mode 0644, as ssh-keygen writes it) was told
    "may be read by others ... chmod 600", sending people to chmod a public key and then meet a
    second refusal (found by review, 2026-12-06, seventeenth stop). Now one line says it is the
    public key and names the private key file beside it."""
    pub = Path(str(sshd.identity_file) + ".pub")
    with pytest.raises(ConfigError) as e:
        connect(sshd, tmp_path / "b", identity_file=pub)
    msg = one_line(e.value)
    assert "public key" in msg and str(sshd.identity_file) in msg and "chmod" not in msg, msg


def test_an_sftp_server_that_never_answers_is_a_timeout_not_a_hang(sshd_factory, tmp_path):
    """The SFTP session was opened with paramiko's own waits: the subsystem request without any
    time limit and the SFTP version exchange on a channel with none, so a host whose SFTP server
    starts and never speaks (a login shell's startup file that blocks, an NFS home that hangs:
    Debian's `Subsystem sftp /usr/lib/openssh/sftp-server` runs through the login shell) held the
    deploy for good (found by review, 2026-12-06, seventeenth stop; here the server only sleeps
    20 s). Now each wait is the transport's op_timeout and the line names the host and the step."""
    server = sshd_factory(sftp="/bin/sleep 20")
    t = connect(server, tmp_path / "b", op_timeout=2.0)
    try:
        start = time.monotonic()
        with pytest.raises(HostUnreachable) as e:
            t.list_dir("")
        msg = one_line(e.value)
        assert time.monotonic() - start < 10, msg
        assert "SFTP server did not answer within 2s" in msg and str(server.port) in msg, msg
    finally:
        t.close()


def test_a_host_covered_only_by_a_cert_authority_line_is_told_to_pin_its_own_key(sshd, tmp_path):
    """A fleet trusting host certificates has a ``@cert-authority`` line covering every host; host
    certificates are not negotiated here, and the refusal said the host "is not in" the file that
    names it, sending people to look for a typo (found by review, 2026-12-06, seventeenth stop).
    Now it names that line and says to pin the host's own key; the key it offers is still refused."""
    ca = tmp_path / "host_ca"
    keygen(ca)
    known = tmp_path / "known_hosts"
    known.write_text("@cert-authority [127.0.0.1]:* " + " ".join(Path(str(ca) + ".pub").read_text().split()[:2]) + "\n")
    with pytest.raises(HostKeyRejected) as e:
        connect(sshd, tmp_path / "b", known_hosts=known)
    msg = one_line(e.value)
    assert "@cert-authority" in msg and "line 1" in msg and f"ssh-keyscan -p {sshd.port} 127.0.0.1" in msg, msg


def test_a_server_that_closes_before_its_banner_names_maxstartups(sshd, tmp_path):
    """sshd closes a connection before its banner when more are being set up than its MaxStartups
    allows (default 10:30:100: another deploy, a scan, hosts behind one sshd); the line said
    "check that an SSH server listens there and the network path", where one listens and a rerun
    is the fix (found by review, 2026-12-06, seventeenth stop; seen with a real sshd at
    MaxStartups 1). Now it names MaxStartups and the port to check. A listener that accepts and
    closes stands in for sshd's random early drop."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []

    def accept_and_close():
        for _ in range(5):      # bounded: three connections are expected (the tries)
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(HostUnreachable) as e:
            connect(sshd, tmp_path / "b", port=port, timeout=5.0)
    finally:
        listener.close()
    msg = one_line(e.value)
    assert "MaxStartups" in msg and f":{port}" in msg and "before its banner" in msg, msg
    # tried again, but a bounded number of times and within the connect timeout
    assert len(accepted) == 3 and "(3 tries)" in msg and time.monotonic() - started < 5.0, (accepted, msg)


def test_a_connection_dropped_before_the_banner_is_tried_again_within_the_timeout(sshd, tmp_path):
    """sshd past its MaxStartups closes (or resets) a connection before its banner at random; one
    such drop failed the whole deploy's connect (found by review, 2026-12-06, seventeenth stop).
    Now such a connection is tried again (at most 3 tries, within the connect timeout). A proxy
    in front of the real sshd closes the first connection and resets the second, as sshd's early
    drop does; the third reaches sshd and the deploy goes on."""
    import socket
    import struct
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):      # ends at EOF or when the test closes the sockets
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def proxy() -> None:
        for n in range(10):                     # bounded: three connections are expected
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            if n == 0:
                conn.close()                    # closed before the banner
            elif n == 1:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()                    # reset before the banner
            else:
                upstream = socket.create_connection(("127.0.0.1", sshd.port), timeout=10)
                upstream.settimeout(None)
                accepted.append(upstream)
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    known = tmp_path / "known_hosts"
    key_type, key_b64 = sshd.host_key_pub.split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    base = tmp_path / "b"
    base.mkdir()
    started = time.monotonic()
    try:
        t = connect(sshd, base, port=port, known_hosts=known, timeout=8.0)
        try:
            assert t.list_dir("") == []
        finally:
            t.close()
    finally:
        listener.close()
        for s in accepted:
            s.close()
    assert len(accepted) >= 3 and time.monotonic() - started < 8.0


@pytest.mark.parametrize("dead", ["stale socket", "missing"])
def test_an_ssh_auth_sock_with_no_agent_behind_it_is_named(sshd, tmp_path, monkeypatch, dead):
    """SSH_AUTH_SOCK naming a socket no agent listens on (an agent that exited, a stale path from
    another session) gave "no SSH key ... start ssh-agent", without the path that was looked at
    (found by review, 2026-12-06, seventeenth stop). Now the line names SSH_AUTH_SOCK's path."""
    import socket

    sock_path = tmp_path / "agent.sock"
    if dead == "stale socket":          # the file of an agent that exited: nothing listens
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(sock_path))
        s.close()
        assert sock_path.exists()
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock_path))
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    with pytest.raises(AuthFailed) as e:
        connect(sshd, tmp_path / "b", identity_file=None)
    msg = one_line(e.value)
    assert "no SSH key" in msg and f"SSH_AUTH_SOCK={sock_path} has no agent" in msg, msg


def test_an_ipv6_host_is_shown_in_brackets_before_its_port(tmp_path):
    """Every SSH line starts with where the host is; an IPv6 address came out as
    ``ssh://deploy@::1:2222``, where the port cannot be told from the address (found by review,
    2026-12-06, seventeenth stop). Now ``ssh://deploy@[::1]:2222``, as the hosts file writes it.
    (No connection: the host-key check is a plain function.)"""
    from serving_sync.hosts import parse_target
    from serving_sync.transports.ssh_connect import check_host_key

    class Offered:          # the server's host key, as paramiko hands it over
        def get_name(self):
            return "ssh-ed25519"

        def get_base64(self):
            return "AAAAC3NzaC1lZDI1NTE5AAAAIGvSmsF9h7J3bEFCg0Uj8Lk9Y3o6J2fQm5aQW0Sx0Kc7"

    class Where:
        def error(self, field, problem):
            return ConfigError(f"{field}: {problem}")

    target = parse_target("ssh://deploy@[::1]:2222/srv/models", Where())
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyRejected) as e:
        check_host_key(Offered(), [], known, target)
    msg = one_line(e.value)
    assert msg.startswith("ssh://deploy@[::1]:2222: "), msg


def _unix_socket_fds() -> set[int]:
    """This process's open file descriptors that are Unix-domain sockets (an agent connection)."""
    with open("/proc/net/unix") as f:
        inodes = {line.split()[6] for line in f.read().splitlines()[1:] if len(line.split()) > 6}
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                fds.add(int(fd))
    return fds


def test_the_ssh_agent_connection_is_closed_once_its_keys_were_used(sshd, tmp_path, monkeypatch):
    """paramiko's Agent() opens a connection to SSH_AUTH_SOCK and was never closed: the transport
    keeps the key that logged in, the key its agent, so one agent socket stayed open per connection
    (a long `sync watch` reconnects for every deploy; found by review, 2026-12-06, seventeenth
    stop). Now it is closed once authentication is over; the connection still works."""
    opened = []
    with _ssh_agent(tmp_path, monkeypatch, sshd.identity_file):
        try:
            before = _unix_socket_fds()
            for _ in range(3):      # as a watch does, deploy after deploy
                opened.append(connect(sshd, tmp_path / "b", identity_file=None))
            assert _unix_socket_fds() - before == set(), "an SSH agent connection is left open per connection"
            with pytest.raises(FileNotFoundError):
                opened[-1].read_file("nothing-here")          # the connection itself still works
        finally:
            for t in opened:
                t.close()
