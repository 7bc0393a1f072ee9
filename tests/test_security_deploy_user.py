"""The deploy needs no privileges: a plain non-root user, key authentication only, a pinned host
key, write access to the base directory and nothing else (no Docker group, no sudo).

A real OpenSSH sshd on 127.0.0.1 (``PasswordAuthentication no``) lets the user ``mlopsdeploy``
(created by the sshd fixture, no password, no home) log in with the session's key. The base
directory is owned by that user and is the only place it may write; a local
TF-Serving-compatible server (root, like a real TF Serving container) reads it.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.faults import one_error_line
from tests.lab.hosts import ServingHost

DEPLOY_USER = "mlopsdeploy"
PRIVILEGED_GROUPS = {"root", "sudo", "wheel", "admin", "docker"}


@pytest.fixture
def deploy_user_base():
    """``/tmp/mlops-deploy-<id>`` owned by the deploy user (created by the sshd fixture first)."""
    d = Path("/tmp") / f"mlops-deploy-{uuid.uuid4().hex[:8]}"
    d.mkdir(mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_plain_user_with_a_key_deploys_and_needs_nothing_else(deploy_env, sshd_factory, deploy_user_base):
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: creating the unprivileged deploy user needs root")
    env = deploy_env
    sshd = sshd_factory(user=DEPLOY_USER)
    user = pwd.getpwnam(DEPLOY_USER)
    os.chown(deploy_user_base, user.pw_uid, user.pw_gid)
    # the user: not root, in no privileged group, no password, no login home
    groups = {g.gr_name for g in grp.getgrall() if DEPLOY_USER in g.gr_mem} | {grp.getgrgid(user.pw_gid).gr_name}
    assert user.pw_uid != 0 and not groups & PRIVILEGED_GROUPS, groups
    server = env.factory(deploy_user_base, grpc=True, extra_args=("--max_num_load_retries=0",))
    os.chown(deploy_user_base / "models.config", user.pw_uid, user.pw_gid)
    entry = {"name": "plain-user", "target": sshd.target(deploy_user_base), "rest_url": server.rest_url,
             "grpc": server.grpc_address, "known_hosts": str(sshd.known_hosts),
             "identity_file": str(sshd.identity_file)}
    host = ServingHost("plain-user", "ssh", deploy_user_base, server, entry)
    env.hosts.append(host)
    env.write_hosts_file()

    v1, v2 = env.register("a"), env.register("b")
    for v in (v1, v2):
        env.promote(v)
        r = env.cli("sync", "deploy")
        assert r.returncode == 0, r.stderr
        env.serves(host, v)
    # everything the deploy wrote belongs to the deploy user and lies under the base directory
    for p in deploy_user_base.rglob("*"):
        assert p.lstat().st_uid == user.pw_uid, f"{p} is owned by uid {p.lstat().st_uid}"
    log = sshd.log.read_text()
    assert f"Accepted publickey for {DEPLOY_USER}" in log and "Accepted password" not in log


def test_password_authentication_is_not_even_offered(sshd):
    """Only keys: the server offers no password method, so no password can be guessed or needed."""
    import paramiko

    sock = paramiko.Transport(("127.0.0.1", sshd.port))
    try:
        sock.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as e:
            sock.auth_password(sshd.user, "any-password")
        assert e.value.allowed_types == ["publickey"]
    finally:
        sock.close()


def test_the_deploy_user_cannot_write_outside_its_base(deploy_env, sshd_factory):
    """Pointed at a directory it does not own, the same user gets one clear line and nothing is
    written (tests/test_sync_ssh.py checks the same at the transport level)."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: creating the unprivileged deploy user needs root")
    env = deploy_env
    sshd = sshd_factory(user=DEPLOY_USER)
    root_owned = Path("/tmp") / f"mlops-root-owned-{uuid.uuid4().hex[:8]}"
    root_owned.mkdir(mode=0o755)
    try:
        host = env.add_host("file")
        host.entry.update(target=sshd.target(root_owned), known_hosts=str(sshd.known_hosts),
                          identity_file=str(sshd.identity_file))
        env.write_hosts_file()
        v1 = env.register("a")
        env.promote(v1)
        r = env.cli("sync", "deploy")
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and "Permission denied" in line and str(root_owned) in line, line
        assert os.listdir(root_owned) == []
        assert subprocess.run(["id", "-u", DEPLOY_USER], capture_output=True, text=True).stdout.strip() != "0"
    finally:
        shutil.rmtree(root_owned, ignore_errors=True)
