"""Known limits of publishing closed at the fifth stop's reviews (2026-12-05): a ``models.config``
that is a symbolic link (file and SSH transports, real sshd), the temp file of a config write cut
with the SSH connection, and S3 folder markers under a version (real SeaweedFS)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from mlops_common.errors import UserError
from serving_sync import host_config
from serving_sync import models_config as mc
from tests.test_sync_support import hut, ssh_host  # noqa: F401 - fixture

CONFIG = "model_config_list {\n}\n"


@pytest.mark.parametrize("hut", ["file", "ssh"], indirect=True)
@pytest.mark.parametrize("relative", [False, True], ids=["absolute-link", "relative-link"])
def test_a_models_config_that_is_a_link_is_written_through_the_link(hut, tmp_path, relative):
    """Found by review (2026-12-05, fifth stop): a ``models.config`` linked by config management
    (to /etc/tfserving/models.config) was replaced by a regular file at each write: the link was
    silently broken and the managed file kept the old config. TF Serving opens the path it was
    given, so the OS follows the link: the write goes through it (temp file + rename beside the
    target, as ``sed -i --follow-symlinks``)."""
    etc = tmp_path / "etc-tfserving"
    etc.mkdir()
    (etc / "models.config").write_text(CONFIG)
    base = hut.local_base
    base.mkdir(parents=True, exist_ok=True)
    link = base / "models.config"
    link.symlink_to(os.path.relpath(etc / "models.config", base) if relative else etc / "models.config")
    cfg = mc.parse('model_config_list {\n  config {\n    name: "m"\n    base_path: "/srv/m"\n'
                   '    model_platform: "tensorflow"\n  }\n}\n')
    text, changed = host_config.write(hut.transport, cfg)
    assert changed
    assert link.is_symlink() and os.readlink(link) == (os.path.relpath(etc / "models.config", base)
                                                       if relative else str(etc / "models.config"))
    assert (etc / "models.config").read_text() == text          # what TF Serving reads through the link
    assert host_config.read_text(hut.transport) == text
    assert sorted(os.listdir(etc)) == ["models.config"] and sorted(os.listdir(base)) == ["models.config"]
    # a second write (an unchanged text is skipped, another one goes through the link again)
    host_config.write_text(hut.transport, text + "\n")
    assert link.is_symlink() and (etc / "models.config").read_text() == text + "\n"


@pytest.fixture
def readonly_etc():
    """A folder owned by root, 0755, holding a models.config: readable by others, not writable."""
    d = Path("/tmp") / f"mlops-ro-etc-{uuid.uuid4().hex[:8]}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "models.config").write_text(CONFIG)
    os.chmod(d / "models.config", 0o666)          # the file itself is writable: not its folder
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_link_whose_folder_the_deploy_user_cannot_write_is_refused_in_one_line(
        sshd_factory, readonly_etc, tmp_path):
    """The temp file goes beside the link's target: a folder the deploy user cannot write is one
    line naming it, and neither the link nor the target changes (no fallback to replacing the link)."""
    from serving_sync.transports import open_transport

    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: needs root to create the unprivileged test user")
    srv = sshd_factory(user="mlopssynctest")
    base = Path("/tmp") / f"mlops-base-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o777)
    os.chmod(base, 0o777)
    try:
        (base / "models.config").symlink_to(readonly_etc / "models.config")
        t = open_transport(ssh_host(srv, base))
        try:
            with pytest.raises(UserError) as e:
                host_config.write_text(t, CONFIG + "# changed\n")
        finally:
            t.close()
        msg = e.value.message
        assert "\n" not in msg and str(readonly_etc) in msg and "Permission denied" in msg, msg
        assert (base / "models.config").is_symlink() and os.listdir(base) == ["models.config"]
        assert (readonly_etc / "models.config").read_text() == CONFIG
        assert os.listdir(readonly_etc) == ["models.config"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_config_write_cut_with_the_ssh_connection_leaves_no_temp_file_once_the_lock_is_released(
        sshd, tmp_path, monkeypatch):
    """Found by review (2026-12-05, fifth stop): an SSH connection cut between a config write's
    temp file and its rename left ``.models.config.tmp-*`` in the base until a lock takeover,
    which never came: the deploy released its lock over a new connection. That new connection
    now first removes the temp files of the writes the cut interrupted (their exact names, ours),
    while the lock is still held."""
    from serving_sync import connections
    from serving_sync.errors import HostUnreachable
    from serving_sync.lock import HostLock
    from serving_sync.transports import open_transport

    base = tmp_path / "remote-serving"
    base.mkdir()
    (base / "models.config").write_text(CONFIG)
    host = ssh_host(sshd, base)
    t = open_transport(host)
    conn = connections.HostConn(host, t, None)
    conn.lock = HostLock(t, purpose="deploy")
    conn.lock.acquire()
    sftp = t.sftp
    rename = sftp.posix_rename

    def cut(src, dst):          # the connection dies after the temp file was written
        t._t.close()
        return rename(src, dst)

    monkeypatch.setattr(sftp, "posix_rename", cut)
    with pytest.raises(HostUnreachable):
        host_config.write_text(t, CONFIG + "# v2\n")
    left = [n for n in os.listdir(base) if n.startswith(".models.config.tmp-")]
    assert len(left) == 1                                   # what the cut leaves
    connections.release(conn)
    t.close()
    assert sorted(os.listdir(base)) == [".serving_sync", "models.config"]
    assert (base / "models.config").read_text() == CONFIG
    assert not (base / ".serving_sync" / "lock").exists()


@pytest.mark.parametrize("hut", ["s3"], indirect=True)
def test_s3_folder_markers_under_a_version_do_not_fail_its_first_publish(hut, tmp_path):
    """Found by review (2026-12-05, fifth stop): a zero-byte key ending in ``/`` under a version
    (what the S3 console's "Create folder" makes) was an extra "file" to the verification, so the
    first deploy of that version failed (its cleanup removed the marker, the rerun worked). TF
    Serving skips such keys (an empty child name); they are folders, not files of the version."""
    from serving_sync import manifest as mf
    from serving_sync.publish import publish
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "m", variables_bytes=1000)
    m = mf.build(model)
    hut.raw_write("digits/1/", b"")
    hut.raw_write("digits/1/variables/", b"")
    assert hut.transport.files_under("digits/1") == []          # folders, not files of the version
    assert publish(hut.transport, "digits", 1, model, m).status == "uploaded"
    assert not hut.transport.verify("digits/1", m)
    # a folder made in the console under a published version: still the same version, not refused
    hut.raw_write("digits/1/notes/", b"")
    assert "notes/" in hut.raw_keys("digits/1")
    assert not hut.transport.verify("digits/1", m)
    assert publish(hut.transport, "digits", 1, model, m).status == "already_present"
    assert "saved_model.pb" in hut.raw_keys("digits/1")
    hut.transport.remove_tree("digits/1")                       # and removing the version removes them
    assert hut.raw_keys("digits") == []
