"""Manifests, host-side hash output parsing, known_hosts verdicts, progress: fast unit tests."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys

import pytest

from mlops_common.errors import ConfigError, UserError
from serving_sync import manifest as mf
from serving_sync.progress import Progress, make_progress
from serving_sync.transports import known_hosts as kh
from serving_sync.transports.ssh_scripts import listing_script, parse_output, upload_script
from tests.test_sync_support import make_model_tree


def test_manifest_lists_files_dirs_sizes_and_hashes_deterministically(tmp_path):
    root = make_model_tree(tmp_path / "m", n_assets=2)
    a = mf.build(root)
    b = mf.build(root)
    assert a.to_json() == b.to_json()
    paths = [f.path for f in a.files]
    assert paths == sorted(paths)
    assert "variables/variables.index" in paths and "saved_model.pb" in paths
    assert "assets/empty-dir" in a.dirs and "variables" in a.dirs
    entry = a.by_path()["saved_model.pb"]
    data = (root / "saved_model.pb").read_bytes()
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    assert a.total_size == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert mf.Manifest.from_json(a.to_json()) == a
    assert json.loads(a.to_json())["format"] == mf.FORMAT
    assert a.completion_file == "saved_model.pb"


def test_manifest_changes_when_a_byte_changes(tmp_path):
    root = make_model_tree(tmp_path / "m")
    before = mf.build(root)
    p = root / "variables" / "variables.index"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    after = mf.build(root)
    assert mf.compare(before, mf.HostListing({f.path: f.sha256 for f in after.files},
                                             frozenset(after.dirs))) == \
        ["sha256 mismatch for variables/variables.index"]


def test_manifest_refuses_symlinks_and_bad_names(tmp_path):
    root = make_model_tree(tmp_path / "m")
    os.symlink(root / "saved_model.pb", root / "assets" / "link")
    with pytest.raises(UserError, match="symbolic link"):
        mf.build(root)
    root2 = make_model_tree(tmp_path / "n")
    (root2 / "assets" / "bad\\name").write_text("x")
    with pytest.raises(UserError, match="cannot be published"):
        mf.build(root2)
    with pytest.raises(UserError, match="not a directory"):
        mf.build(tmp_path / "missing")


def test_compare_reports_missing_extra_and_dirs():
    m = mf.Manifest((mf.FileEntry("a", 1, "0" * 64), mf.FileEntry("b/c", 1, "1" * 64)), ("b",))
    listing = mf.HostListing({"a": "0" * 64, "z": "2" * 64}, frozenset({"y"}), ("sym",))
    assert mf.compare(m, listing) == ["missing file b/c", "unexpected file z", "missing directory b",
                                      "unexpected directory y", "unexpected non-regular file sym"]
    no_dirs = mf.HostListing({"a": "0" * 64, "b/c": "1" * 64}, check_dirs=False)
    assert mf.compare(m, no_dirs) == []


def test_corrupt_manifest_json_is_one_clear_line():
    for text in ("{", '{"format": "other"}', '{"format": "%s", "files": [{"path": "../x", "size": 1, '
                 '"sha256": "%s"}]}' % (mf.FORMAT, "0" * 64)):
        with pytest.raises(ConfigError) as e:
            mf.Manifest.from_json(text, "host:/base/.serving_sync/manifests/m/1.json")
        assert "\n" not in str(e.value) and "manifests/m/1.json" in str(e.value)


def test_hash_output_of_real_tools_parses(tmp_path):
    root = make_model_tree(tmp_path / "m", n_assets=2)
    m = mf.build(root)
    expected = {f.path: f.sha256 for f in m.files}
    for cmd in ("sha256sum", "openssl dgst -sha256 -r"):
        out = subprocess.run(f"cd {root} && find . -type f -exec {cmd} {{}} +", shell=True,
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert mf.parse_hash_lines(out) == expected, cmd
    with pytest.raises(ValueError):
        mf.parse_hash_lines("not a hash line")


def test_sha256sums_escaped_line_of_a_name_with_a_backslash_parses(tmp_path):
    """Found by review (2026-12-06, fourteenth stop): GNU sha256sum (a host without a working
    openssl) starts the line of a name with a backslash with one and doubles it in the name; the
    line was "unexpected", a ValueError out of the check of a present version holding such a file."""
    import hashlib

    names = {"a\\b": b"one", "plain": b"two", "x\\\\y z": b"three"}
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
    out = subprocess.run("find . -type f -exec sha256sum {} +", shell=True, cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.startswith("\\") or "\n\\" in out, out      # the tool escapes here
    assert mf.parse_hash_lines(out) == {n: hashlib.sha256(d).hexdigest() for n, d in names.items()}


def _upload(dest, need_bytes, *, stdin: bytes = b"", stream_bytes: int = 0):
    """Run the upload script for ``dest`` under a real /bin/sh (as sshd would), ``stdin`` as its input."""
    return subprocess.run(["sh", "-c", upload_script(str(dest.parent), str(dest), need_bytes,
                                                     stream_bytes=stream_bytes)],
                          input=stdin, capture_output=True, timeout=60)


def test_remote_scripts_run_under_sh_and_their_output_parses(tmp_path):
    """The scripts the SSH transport runs, executed by a real /bin/sh (as sshd would)."""
    root = make_model_tree(tmp_path / "m", n_assets=2)
    m = mf.build(root)
    out = subprocess.run(["sh", "-c", listing_script(str(root))], capture_output=True, timeout=60).stdout
    res = parse_output(out)
    assert res.shell and res.listing is not None
    assert mf.compare(m, res.listing) == []
    missing = subprocess.run(["sh", "-c", listing_script(str(tmp_path / "nope"))], capture_output=True,
                             timeout=60)
    assert missing.returncode == 3
    # upload script: refuses when the disk has less than asked, before creating anything
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = _upload(dest, 10 ** 18)
    res = parse_output(p.stdout)
    assert "@nospace" in res.flags and int(res.flags["@nospace"]) > 0
    assert not dest.parent.exists()
    # ... and extracts a tar stream while hashing it (one pass), then lists names and sizes
    tar = subprocess.run(["tar", "-cf", "-", "-C", str(root), "."], capture_output=True, check=True,
                         timeout=60).stdout
    p = _upload(dest, 1000, stdin=tar)
    res = parse_output(p.stdout)
    assert p.returncode == 0 and "@ready" in res.flags and res.flags.get("@hashing") == "stream"
    assert res.stream_sha256 == hashlib.sha256(tar).hexdigest()
    assert res.sizes == {f.path: f.size for f in m.files}
    assert res.listing.dirs == frozenset(m.dirs) and res.listing.others == ()
    assert not (dest.parent / (dest.name + ".stream")).exists()   # the FIFO is gone
    assert sorted(x.name for x in dest.parent.iterdir()) == [dest.name]
    assert parse_output(b"This service allows sftp connections only.\n").shell is False


@pytest.mark.parametrize("trailing", [b"", os.urandom(3_000_000)])
def test_the_upload_script_hashes_a_big_stream_with_the_hosts_python(tmp_path, monkeypatch, trailing):
    """Big streams go through PY_TEE (1 MiB reads, no tee/FIFO): the same digest and listing as the
    shell's tee path. Bytes after the archive's end (tar stops reading there) are still hashed, so
    the digest is always of everything sent."""
    from serving_sync.transports import ssh_scripts

    monkeypatch.setattr(ssh_scripts, "PY_TEE_MIN_BYTES", 1)
    root = make_model_tree(tmp_path / "m", n_assets=2, variables_bytes=3_000_000)
    m = mf.build(root)
    tar = subprocess.run(["tar", "-cf", "-", "-C", str(root), "."], capture_output=True, check=True,
                         timeout=60).stdout + trailing
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = _upload(dest, 1000, stdin=tar, stream_bytes=m.total_size)
    res = parse_output(p.stdout)
    assert p.returncode == 0, p.stderr
    assert res.flags.get("@hashing") == "python"
    assert res.files_sha256 == _files_digest(tar) and res.stream_sha256 is None
    assert res.sizes == {f.path: f.size for f in m.files}
    assert mf.build(dest) == m
    if trailing:
        return   # (tee dies when tar stops reading: a partial digest, which the client refuses)
    # a host with no usable python3 takes the shell's tee path, with the same result
    monkeypatch.setattr(ssh_scripts, "_PICK_PYTHON", "P=\n")
    dest2 = tmp_path / "base" / "m" / ".incoming-2-x"
    p = _upload(dest2, 1000, stdin=tar, stream_bytes=m.total_size)
    res = parse_output(p.stdout)
    assert p.returncode == 0 and res.flags.get("@hashing") == "stream"
    assert res.stream_sha256 == hashlib.sha256(tar).hexdigest()


def _files_digest(tar: bytes) -> str:
    """sha256 over the sha256 digests of the archive's regular files, in archive order."""
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return hashlib.sha256(b"".join(hashlib.sha256(tf.extractfile(m).read()).digest()
                                       for m in tf.getmembers() if m.isreg())).hexdigest()


def _set_size_field(tar: bytearray, at: int, field: bytes) -> None:
    """Rewrite the size field of the header at ``at`` and its checksum."""
    tar[at + 124:at + 136] = field
    tar[at + 148:at + 156] = b" " * 8
    tar[at + 148:at + 156] = b"%06o\0 " % sum(tar[at:at + 512])


@pytest.mark.parametrize("size_as", ["pax", "base-256"])
def test_the_hosts_python_reads_pax_and_base_256_sizes(tmp_path, monkeypatch, size_as):
    """Files over 8 GiB get their size from a pax record or as a base-256 number (GNU tar reads
    both); the host's per-file digest must follow the same sizes."""
    import tarfile

    from serving_sync.transports import ssh_scripts

    monkeypatch.setattr(ssh_scripts, "PY_TEE_MIN_BYTES", 1)
    data = os.urandom(70_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("a.bin", "b.bin"):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            if size_as == "pax" and name == "a.bin":
                ti.pax_headers = {"size": str(len(data)), "comment": "x=y"}
            tf.addfile(ti, io.BytesIO(data))
    tar = bytearray(buf.getvalue())
    first = 1024 if size_as == "pax" else 0   # the pax header and its data come first
    _set_size_field(tar, first, b"\0" * 12 if size_as == "pax" else b"\x80" + len(data).to_bytes(11, "big"))
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = _upload(dest, 1000, stdin=bytes(tar), stream_bytes=10)
    res = parse_output(p.stdout)
    assert p.returncode == 0, p.stderr
    one = hashlib.sha256(data).digest()
    assert res.files_sha256 == hashlib.sha256(one + one).hexdigest()
    assert (dest / "a.bin").read_bytes() == data and (dest / "b.bin").read_bytes() == data


_RECORD_WRITEBACK = """import ctypes, os, sys
real, log = ctypes.CDLL, sys.argv.pop(1)


class Recorded:
    argtypes = None

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, fd, offset, nbytes, flags):
        self.fn.argtypes = self.argtypes
        rc = self.fn(fd, offset, nbytes, flags)
        with open(log, "a") as f:
            f.write(f"{os.readlink(f'/proc/self/fd/{fd}')}\\t{os.fstat(fd).st_size}\\t{flags}\\t{rc}\\n")
        return rc


class Lib:
    def __init__(self, *a, **k):
        self.lib = real(*a, **k)

    def __getattr__(self, name):
        fn = getattr(self.lib, name)
        return Recorded(fn) if name == "sync_file_range" else fn


ctypes.CDLL = Lib
code = sys.argv[sys.argv.index("-c") + 1]
sys.argv = ["-c"] + sys.argv[sys.argv.index("-c") + 2:]
exec(compile(code, "<PY_TEE>", "exec"), {"__name__": "__main__"})
"""


@pytest.mark.parametrize("tar_format", ["pax", "ustar"])
def test_the_hosts_python_starts_writeback_of_big_files_while_they_arrive(tmp_path, monkeypatch, tar_format):
    """Every ``KICK`` bytes of a file, the host's python asks the kernel to start writing it
    (sync_file_range, SYNC_FILE_RANGE_WRITE), so the flush before the rename waits for the tail
    only. Checked through the real call, recorded: the right files (long names from a pax
    ``path`` record or a ustar prefix), only those bigger than a kick, and the publish unchanged."""
    import tarfile

    from serving_sync.transports import ssh_scripts

    kick = 4 * 1024 * 1024      # > the 1 MiB pipe (+ tar's 10 KiB) tar lags by: its file exists at a kick
    monkeypatch.setattr(ssh_scripts, "PY_TEE", ssh_scripts.PY_TEE.replace("KICK = 32 * 1048576",
                                                                          f"KICK = {kick}"))
    assert f"KICK = {kick}" in ssh_scripts.PY_TEE
    monkeypatch.setattr(ssh_scripts, "PY_TEE_MIN_BYTES", 1)
    shim, log = tmp_path / "shim.py", tmp_path / "writeback.log"
    shim.write_text(_RECORD_WRITEBACK)
    wrapper = tmp_path / "python3"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {shim} {log} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(ssh_scripts, "_PICK_PYTHON", f"P={wrapper}\n")
    long_dir = "d" * 60 + "/" + "e" * 60
    files = {"variables/variables.data-00000-of-00001": os.urandom(2 * kick + 100),
             f"{long_dir}/big.bin": os.urandom(kick + 4096),
             "small.bin": os.urandom(kick // 2)}
    if tar_format == "pax":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        tar = buf.getvalue()
        assert b"path=" in tar          # the long name went into a pax record
    else:
        src = tmp_path / "src"
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        tar = subprocess.run(["tar", "--format=ustar", "-cf", "-", "-C", str(src), *files],
                             capture_output=True, check=True, timeout=60).stdout
        assert b"ustar" in tar and b"path=" not in tar
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = _upload(dest, 1000, stdin=tar, stream_bytes=10)
    res = parse_output(p.stdout)
    assert p.returncode == 0, p.stderr
    assert res.flags.get("@hashing") == "python"
    assert {n: (dest / n).read_bytes() for n in files} == files
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    kicked = {path for path, *_ in rows}
    assert kicked == {str(dest / "variables/variables.data-00000-of-00001"), str(dest / long_dir / "big.bin")}
    assert all(flags == "2" and rc == "0" and int(size) > 0 for _, size, flags, rc in rows)


def test_a_stream_that_is_not_tar_fails_on_the_python_path_and_says_so(tmp_path, monkeypatch):
    from serving_sync.transports import ssh_scripts

    monkeypatch.setattr(ssh_scripts, "PY_TEE_MIN_BYTES", 1)
    dest = tmp_path / "base" / "m" / ".incoming-1-x"
    p = _upload(dest, 1000, stdin=os.urandom(100_000), stream_bytes=10)
    res = parse_output(p.stdout)
    assert p.returncode == 95 and "@tarfailed" in res.flags and "@end" not in res.flags
    assert b"tar" in p.stderr


def _key_b64(seed: bytes) -> str:
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(seed).digest()
    return base64.b64encode(blob).decode()


def test_known_hosts_verdicts():
    k1, k2 = _key_b64(b"one"), _key_b64(b"two")
    salt = os.urandom(20)
    import hmac
    hashed = "|1|%s|%s" % (base64.b64encode(salt).decode(),
                           base64.b64encode(hmac.new(salt, b"[10.0.0.9]:2222", "sha1").digest()).decode())
    text = "\n".join([
        "# comment",
        f"[127.0.0.1]:2222,other ssh-ed25519 {k1}",
        f"@cert-authority *.example ssh-ed25519 {k2}",
        f"{hashed} ssh-ed25519 {k2}",
        f"*.corp,!bad.corp ssh-ed25519 {k1}",
        f"@revoked * ssh-ed25519 {_key_b64(b'revoked')}",
    ])
    keys = kh.parse(text)
    assert kh.check(keys, "127.0.0.1", 2222, "ssh-ed25519", k1).status == "ok"
    changed = kh.check(keys, "127.0.0.1", 2222, "ssh-ed25519", k2)
    assert (changed.status, changed.line) == ("changed", 2)
    assert changed.expected_fingerprint == kh.fingerprint(k1)
    assert kh.check(keys, "127.0.0.1", 22, "ssh-ed25519", k1).status == "unknown"   # port matters
    assert kh.check(keys, "10.0.0.9", 2222, "ssh-ed25519", k2).status == "ok"      # hashed entry
    assert kh.check(keys, "a.corp", 22, "ssh-ed25519", k1).status == "ok"          # wildcard
    assert kh.check(keys, "bad.corp", 22, "ssh-ed25519", k1).status == "unknown"   # negated
    assert kh.check(keys, "x.example", 22, "ssh-ed25519", k2).status == "unknown"  # CA lines skipped
    assert kh.check(keys, "any", 22, "ssh-ed25519", _key_b64(b"revoked")).status == "revoked"
    assert kh.lookup_name("h", 22) == "h" and kh.lookup_name("h", 2200) == "[h]:2200"


def test_fingerprint_matches_ssh_keygen(tmp_path):
    from tests.lab.sshd import fingerprint, keygen

    pub = keygen(tmp_path / "k")
    assert kh.fingerprint(pub.split()[1]) == fingerprint(tmp_path / "k.pub")


def test_progress_draws_on_a_terminal_and_stays_quiet_otherwise():
    out = io.StringIO()
    p = Progress(2_000_000, "upload digits/3", enabled=True, stream=out, interval=0)
    p(1_000_000)
    p(1_000_000)
    p.done()
    text = out.getvalue()
    assert "upload digits/3: 1.0/2.0 MB (50%)" in text and "2.0/2.0 MB (100%)" in text
    assert text.endswith("\n") and "MB/s" in text
    quiet = io.StringIO()
    q = Progress(10, "x", stream=quiet)          # StringIO is not a tty -> quiet
    q(10)
    q.done()
    assert quiet.getvalue() == "" and q.transferred == 10
    assert make_progress(10, "x", json_mode=True).enabled is False


def test_a_file_name_that_is_not_utf8_is_named_as_every_command_shows_such_a_byte(tmp_path):
    """A SavedModel file named in Latin-1 was refused as ``'caf\\udce9.txt'`` (a repr of the lone
    surrogate) where every other line shows such a byte as ``\\xe9``."""
    root = make_model_tree(tmp_path / "m", variables_bytes=10, n_assets=0)
    with open(os.path.join(os.fsencode(root / "assets"), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 named")
    with pytest.raises(UserError) as e:
        mf.scan(root)
    assert e.value.message == (f"{root}: file name 'assets/caf\\xe9.txt' cannot be published (not UTF-8); "
                               f"rename it in the SavedModel")
