"""A published version survives a power loss right after its rename: every file and folder of
the version is flushed to disk before the rename into place, the rename's folder after it, and
``models.config``'s temp file before its rename (and its folder after, on file://); a version of a
few files is flushed file by file, of many by one syncfs — on file:// hosts (os.fsync
seen through /proc/self/fd) and ssh:// hosts (a real sshd: the host's ``sync`` behind a PATH
shim that records its arguments, and internal-sftp's own log of each fsync@openssh.com)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from serving_sync import manifest as mf
from serving_sync.publish import publish
from serving_sync.transports.local import LocalTransport
from serving_sync.transports.ssh_scripts import parse_output, upload_script
from tests.test_sync_ssh import connect
from tests.test_sync_support import make_model_tree

MODEL = "digits"


def _watch_local_io(monkeypatch) -> list[tuple]:
    """Record every fsync (by the path its descriptor names) and rename, in order."""
    events: list[tuple] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *a, **k):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, *a, **k)

    def replace(src, dst, *a, **k):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _split_at_rename(events, dst: str) -> tuple[str, set[str], set[str]]:
    at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == dst)
    before = {e[1] for e in events[:at] if e[0] == "fsync"}
    after = {e[1] for e in events[at + 1:] if e[0] == "fsync"}
    return events[at][1], before, after


@pytest.mark.parametrize("how", ["syncfs", "fsync-each", "no-syncfs"])
def test_a_file_host_flushes_the_version_before_its_rename_and_the_folder_after(tmp_path, monkeypatch, how):
    """Many files: one syncfs (fsync each where the system has none); a few: fsync each, so only
    the version's own bytes are waited for (``FLUSH_EACH_UP_TO``)."""
    from serving_sync.transports import local
    from serving_sync.transports.base import FLUSH_EACH_UP_TO

    many = how != "fsync-each"
    model = make_model_tree(tmp_path / "model", n_assets=FLUSH_EACH_UP_TO + 5 if many else 3)
    m = mf.build(model)
    assert (len(m.files) > FLUSH_EACH_UP_TO) == many
    base = tmp_path / "serving"
    t = LocalTransport(base)
    events = _watch_local_io(monkeypatch)
    real_call = getattr(local, "_syncfs_call", lambda: None)()
    if how != "no-syncfs":
        assert real_call is not None            # Linux: the one-call flush of the file system
        def call(fd):                           # noqa: E306 - recorded like os.fsync
            events.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
            return real_call(fd)
        monkeypatch.setattr(local, "_syncfs_call", lambda: call)
    else:                                       # a system without syncfs
        monkeypatch.setattr(local, "_syncfs_call", lambda: None, raising=False)
    assert publish(t, MODEL, 3, model, m).status == "uploaded"
    src, before, after = _split_at_rename(events, str(base / MODEL / "3"))
    if how == "syncfs":
        assert ("syncfs", src) in events[:events.index(("rename", src, str(base / MODEL / "3")))]
    else:
        assert not any(e[0] == "syncfs" for e in events)
        wanted = {f"{src}/{f.path}" for f in m.files} | {f"{src}/{d}" for d in m.dirs} | {src}
        assert wanted - before == set()        # every file and folder of the version, before
    assert str(base) in before                 # the model folder's entry (made just now)
    assert str(base / MODEL) in after          # the rename itself, after

    events.clear()
    t.write_file_atomic("models.config", b"model_config_list {}\n")
    src, before, after = _split_at_rename(events, str(base / "models.config"))
    assert src in before and str(base) in after


@pytest.fixture
def sync_shim(tmp_path):
    """A host ``sync`` first on sshd's PATH that logs ``<cwd> <args>`` then runs the real one."""
    d = tmp_path / "shim"
    d.mkdir()
    log = tmp_path / "sync-calls.log"
    shim = d / "sync"
    shim.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s %s\\n" "$PWD" "$a" >> {log}; done\n'
                    'exec /usr/bin/sync "$@"\n')
    shim.chmod(0o755)
    return d, log


SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@pytest.fixture
def logged_sftp(tmp_path):
    """OpenSSH's sftp-server, its own VERBOSE log (one line per open, fsync and rename) in a file."""
    if not os.access(SFTP_SERVER, os.X_OK):
        pytest.skip(f"SKIPPED LOUDLY: {SFTP_SERVER} (openssh-sftp-server) is missing")
    log = tmp_path / "sftp-server.log"
    wrapper = tmp_path / "sftp-logged"
    wrapper.write_text(f"#!/bin/sh\nexec {SFTP_SERVER} -e -l VERBOSE 2>>{log}\n")
    wrapper.chmod(0o755)
    return wrapper, log


def _calls(log) -> dict[str, list[str]]:
    """The shim's arguments, in order, by the directory it ran in."""
    got: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        cwd, _, arg = line.rpartition(" ")
        got.setdefault(cwd, []).append(arg)
    return got


def _sftp_log(log) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if "fsync" in ln or "rename" in ln]


def _index(lines, pattern) -> int:
    found = [i for i, ln in enumerate(lines) if pattern in ln]
    assert found, (pattern, lines[-20:])
    return found[-1]


@pytest.mark.parametrize("variables_bytes, n_assets", [(300_000, 3), (17 * 1024 * 1024, 3), (300_000, 70)],
                         ids=["tee-hashed", "python-hashed", "many-files"])
def test_an_ssh_host_syncs_the_version_before_its_rename_and_the_folder_after(
        sshd_factory, sync_shim, logged_sftp, tmp_path, variables_bytes, n_assets):
    from serving_sync.transports.base import FLUSH_EACH_UP_TO

    shim, calls = sync_shim
    sftp, sftp_log = logged_sftp
    srv = sshd_factory(extra_config=(f"SetEnv PATH={shim}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
                       sftp=str(sftp))
    model = make_model_tree(tmp_path / "model", n_assets=n_assets, variables_bytes=variables_bytes)
    m = mf.build(model)
    base = tmp_path / "srv"
    t = connect(srv, base, op_timeout=60)
    try:
        assert publish(t, MODEL, 3, model, m).status == "uploaded"
        t.write_file_atomic("models.config", b"model_config_list {}\n")
    finally:
        t.close()
    # the host's sync flushed, from inside the temporary folder, each of its files and folders (a
    # few) or the file system that holds them (syncfs: many), and the base (the model folder's
    # entry) and the folder above it (the base is new here: its entry)
    got = _calls(calls)
    tmp = next(c for c in got if os.path.basename(c).startswith(".incoming"))
    if len(m.files) > FLUSH_EACH_UP_TO:
        assert got[tmp] == ["--help", "-f", "--", ".", "-f", "--", str(base), str(tmp_path)], got[tmp]
    else:
        assert got[tmp][:2] == ["--help", "--"] and "-f" not in got[tmp], got[tmp]
        assert {f"./{f.path}" for f in m.files} | {f"./{d}" for d in m.dirs} | {"."} <= set(got[tmp])
        assert got[tmp][-3:] == ["--", str(base), str(tmp_path)]
    # ... before the rename, whose folder internal-sftp fsynced after it
    lines = _sftp_log(sftp_log)
    renamed = _index(lines, f'rename old "{tmp}" new "{base}/{MODEL}/3"')
    assert any(f'fsync "{base}/{MODEL}"' in ln for ln in lines[renamed + 1:]), lines[renamed:]
    # models.config: its temp file flushed before it is renamed over the file (never a short
    # one); its folder is not flushed after (two round trips a write: the file may come back as
    # it was before, whole)
    moved = _index(lines, f'new "{base}/models.config"')
    tmp_name = re.search(r'old "([^"]+)"', lines[moved]).group(1)
    assert any(f'fsync "{tmp_name}"' in ln for ln in lines[:moved])


def test_an_sftp_only_account_flushes_every_file_and_the_rename(sshd_factory, logged_sftp, tmp_path):
    sftp, sftp_log = logged_sftp
    srv = sshd_factory(extra_config=(f"ForceCommand {sftp}",))
    model = make_model_tree(tmp_path / "model", n_assets=3)
    m = mf.build(model)
    base = tmp_path / "srv"
    t = connect(srv, base, op_timeout=60)
    try:
        assert publish(t, MODEL, 2, model, m).status == "uploaded"
        assert t._no_shell
    finally:
        t.close()
    lines = _sftp_log(sftp_log)
    renamed = _index(lines, f'new "{base}/{MODEL}/2"')
    tmp = re.search(r'old "([^"]+)"', lines[renamed]).group(1)
    synced = {re.search(r'fsync "([^"]+)"', ln).group(1) for ln in lines[:renamed] if 'fsync "' in ln}
    assert {f"{tmp}/{f.path}" for f in m.files} | {f"{tmp}/{d}" for d in m.dirs} | {tmp} <= synced
    assert any(f'fsync "{base}/{MODEL}"' in ln for ln in lines[renamed + 1:])


def _upload_through_sync_shim(tmp_path, sync_body: str):
    """Run the upload script on a small version with ``sync`` replaced by a shell shim whose body
    is ``sync_body`` (``{log}``: the file it may record its calls in); (the script's exit code,
    its parsed output, the log, the version's manifest, the temporary folder)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "calls"
    (shim / "sync").write_text("#!/bin/sh\n" + sync_body.format(log=log))
    (shim / "sync").chmod(0o755)
    root = make_model_tree(tmp_path / "m", n_assets=2)
    tar = subprocess.run(["tar", "-cf", "-", "-C", str(root), "."], capture_output=True, check=True,
                         timeout=60).stdout
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = subprocess.run(["sh", "-c", upload_script(str(dest.parent), str(dest), 1000)], input=tar,
                       capture_output=True, timeout=60,
                       env={**os.environ, "PATH": f"{shim}:/usr/bin:/bin"})
    return p.returncode, parse_output(p.stdout), log, mf.build(root), dest


def test_a_host_whose_sync_takes_no_files_flushes_with_python3(tmp_path):
    """coreutils before 8.24 (``sync [OPTION]``): the host's python3 fsyncs each file instead;
    the shim's file arguments are never used, and the script says how it flushed."""
    rc, res, log, m, _ = _upload_through_sync_shim(
        tmp_path, 'echo "$*" >> {log}\n'
                  'case "$1" in --help) echo "Usage: sync [OPTION]"; exit 0;; esac\n'
                  'exec /usr/bin/sync\n')
    assert rc == 0 and res.flags.get("@synced") == "python", res.flags
    assert log.read_text().split("\n")[:1] == ["--help"] and "./" not in log.read_text()
    assert res.sizes == {f.path: f.size for f in m.files}


def test_a_version_pulled_from_the_shared_store_is_synced_before_it_is_listed(sync_shim, tmp_path):
    """The pull's host script (curl from presigned URLs) flushes what it downloaded, too."""
    import shutil

    from serving_sync.transports.ssh_scripts import fetch_script
    from tests.test_sync_store import _Served

    if shutil.which("curl") is None and shutil.which("wget") is None:
        pytest.skip("SKIPPED LOUDLY: neither curl nor wget on this machine (Debian package curl)")
    shim, calls = sync_shim
    model = make_model_tree(tmp_path / "model", n_assets=2)
    m = mf.build(model)
    served = _Served(model)
    dest = tmp_path / "host" / "digits" / ".incoming-1"
    try:
        p = subprocess.run(["sh", "-c", fetch_script(str(dest.parent), str(dest), 10_000, nonce="0" * 32)],
                           input=served.pull(m).script_input(), capture_output=True, timeout=60,
                           env={**os.environ, "PATH": f"{shim}:/usr/bin:/bin"})
    finally:
        served.close()
    res = parse_output(p.stdout)
    assert p.returncode == 0 and res.flags.get("@synced") == "files", (p.stdout[-300:], p.stderr[-300:])
    assert mf.compare(m, res.listing) == []
    got = _calls(calls)[str(dest)]                   # a few files: each of them, and their folders
    assert got[:2] == ["--help", "--"] and {f"./{f.path}" for f in m.files} | {"."} <= set(got), got


def test_a_host_whose_sync_cannot_flush_a_file_system_fsyncs_each_file(tmp_path):
    """A ``sync`` that takes files but refuses ``-f``: each file and folder of the version is
    fsynced by name instead."""
    rc, res, log, m, dest = _upload_through_sync_shim(
        tmp_path, 'for a in "$@"; do printf "%s %s\\n" "$PWD" "$a" >> {log}; done\n'
                  'case "$1" in -f) echo "sync: invalid option -- f" >&2; exit 1;; esac\n'
                  'exec /usr/bin/sync "$@"\n')
    assert rc == 0 and res.flags.get("@synced") == "files", res.flags
    args = set(_calls(log)[str(dest)])
    assert {f"./{f.path}" for f in m.files} | {f"./{d}" for d in m.dirs} | {"."} <= args
    assert str(tmp_path / "base") in args      # the model folder's entry in the base
    assert res.sizes == {f.path: f.size for f in m.files}


# --- a new base: the folders ``mkdir -p`` made above the version ------------------------------
# A first deploy to a host whose base does not exist yet creates it (and any missing folder
# above): the version, the model folder's entry in the base and the rename were flushed, but not
# the new folders' entries in their parents, so after a power loss the whole base could be gone
# while the deploy had reported it published (found by review, 2026-12-05, eighth stop). Each
# folder created is flushed now, and the first existing one above them (its entry is there).


def test_a_file_host_flushes_every_folder_it_made_above_a_new_base(tmp_path, monkeypatch):
    model = make_model_tree(tmp_path / "model", n_assets=2)
    m = mf.build(model)
    top = tmp_path / "new1"
    base = top / "new2"
    t = LocalTransport(base)
    events = _watch_local_io(monkeypatch)
    assert publish(t, MODEL, 3, model, m).status == "uploaded"
    _, before, _ = _split_at_rename(events, str(base / MODEL / "3"))
    assert {str(tmp_path), str(top), str(base)} <= before, sorted(before)
    # the lock (and any first write) makes the base too: the same folders flushed
    for i, rel in enumerate((".serving_sync/lock", "models.config")):
        events.clear()
        top = tmp_path / f"other{i}"
        t2 = LocalTransport(top / "base")
        if rel == "models.config":
            t2.write_file_atomic(rel, b"model_config_list {}\n")
        else:
            assert t2.create_exclusive(rel, b"x")
        synced = {e[1] for e in events if e[0] == "fsync"}
        assert {str(tmp_path), str(top), str(top / "base")} <= synced, (rel, sorted(synced))


@pytest.mark.parametrize("n_assets", [2, 70], ids=["few-files", "many-files"])
def test_an_ssh_host_syncs_every_folder_the_upload_made_above_a_new_base(sshd_factory, sync_shim, tmp_path,
                                                                         n_assets):
    shim, calls = sync_shim
    srv = sshd_factory(extra_config=(f"SetEnv PATH={shim}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",))
    model = make_model_tree(tmp_path / "model", n_assets=n_assets)
    m = mf.build(model)
    top = tmp_path / "new1"
    base = top / "new2"
    t = connect(srv, base, op_timeout=60)
    try:
        assert publish(t, MODEL, 3, model, m).status == "uploaded"
    finally:
        t.close()
    got = _calls(calls)
    tmp = next(c for c in got if os.path.basename(c).startswith(".incoming"))
    assert {str(tmp_path), str(top), str(base)} <= set(got[tmp]), got[tmp]
    # an existing base: only the base (the model folder's entry), as before
    calls.unlink()
    t = connect(srv, base, op_timeout=60)
    try:
        assert publish(t, "other", 1, model, m).status == "uploaded"
    finally:
        t.close()
    got = _calls(calls)
    tmp = next(c for c in got if os.path.basename(c).startswith(".incoming"))
    assert got[tmp][-2:] == ["--", str(base)] and str(top) not in got[tmp], got[tmp]


def test_an_ssh_lock_that_makes_a_new_base_fsyncs_each_folder_it_made(sshd_factory, logged_sftp, tmp_path):
    """In a deploy the lock is the first write (``create_exclusive`` over SFTP): it makes the base.
    Each folder made and the first existing one above are fsynced (internal-sftp's log); a base
    that exists costs nothing more."""
    sftp, sftp_log = logged_sftp
    srv = sshd_factory(sftp=str(sftp))
    base = tmp_path / "new1" / "new2"
    t = connect(srv, base, op_timeout=60)
    try:
        assert t.create_exclusive(".serving_sync/lock", b"x")
        synced = {m.group(1) for ln in _sftp_log(sftp_log) if (m := re.search(r'fsync "([^"]+)"', ln))}
        assert {str(tmp_path), str(tmp_path / "new1"), str(base), str(base / ".serving_sync")} <= synced, synced
        n = len(_sftp_log(sftp_log))
        assert t.create_exclusive(".serving_sync/other", b"x")
        assert len(_sftp_log(sftp_log)) == n          # nothing made: no folder flushed
    finally:
        t.close()
