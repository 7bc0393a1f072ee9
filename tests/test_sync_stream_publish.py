"""The one-pass publish (issue 17) and unsafe file names (issue 14, item 5), over a real sshd.

One pass on each side: a client thread hashes each file and the stream while the sender sends (the
manifest comes out of the upload), the host hashes the tar stream as it extracts it; the guarantees
stay (verified before numeric, immutable, mismatch refused). File names: every control and
line-separator character is refused before anything reaches a host, and a deploy that meets one
ends in one line with the host as it was.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from mlops_common.errors import ConfigError, UserError
from serving_sync import manifest as mf
from serving_sync.errors import PublishRefused
from serving_sync.names import check_relpath
from serving_sync.publish import incoming_dirs, publish, read_stored_manifest
from serving_sync.transports import ssh_scripts
from tests.test_sync_ssh import MODEL, connect, one_line
from tests.test_sync_support import make_model_tree


@pytest.fixture(params=["python", "stream", "big-without-python"])
def host_hasher(request, monkeypatch):
    """Run a test through each way the host hashes what it extracts, and check which ran: its
    python3 (big uploads: per-file digests), tee into a FIFO and the hash tool (small uploads:
    the stream's sha256), and a big upload to a host without python3 (the client, which skipped
    the stream hash, computes it once the host says it needs it)."""
    from serving_sync.transports import ssh_upload

    monkeypatch.setattr(ssh_scripts, "PY_TEE_MIN_BYTES", 1 << 62 if request.param == "stream" else 1)
    if request.param == "big-without-python":
        monkeypatch.setattr(ssh_scripts, "_PICK_PYTHON", "P=\n")
    seen = []
    real = ssh_upload.parse_output

    def recording(stdout):
        res = real(stdout)
        if "@hashing" in res.flags:
            seen.append(res.flags["@hashing"])
        return res

    monkeypatch.setattr(ssh_upload, "parse_output", recording)
    yield request.param
    assert seen and set(seen) == {"python" if request.param == "python" else "stream"}, seen


# --- names (pure) ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b", "a\u2028b",
                                 "a\u2029b", "a\\b", "../a", "/a", ""])
def test_check_relpath_refuses_every_control_and_line_separator(bad):
    with pytest.raises(ConfigError):
        check_relpath(bad)


def test_check_relpath_keeps_ordinary_unicode_and_spaces():
    assert check_relpath("assets/vocab é 1.txt") == "assets/vocab é 1.txt"


def test_a_carriage_return_in_a_savedmodel_name_is_one_line_before_any_host(tmp_path):
    root = make_model_tree(tmp_path / "m")
    (root / "assets" / "a\rb.txt").write_bytes(b"x")
    for fn in (mf.build, mf.scan):
        with pytest.raises(UserError) as e:
            fn(root)
        assert "cannot be published" in one_line(e.value) and "\r" not in str(e.value)


def test_hash_and_size_output_is_split_on_newlines_only():
    d = "ab" * 32
    assert mf.parse_hash_lines(f"{d}  ./a\x0bb\n{d} *./c\x1cd\n") == {"a\x0bb": d, "c\x1cd": d}
    assert ssh_scripts.parse_size_lines(["  12 ./a\x0cb", "12 total"]) == {"a\x0cb": 12}


# --- the one-pass publish over real OpenSSH -------------------------------------------------------
def test_publish_without_a_manifest_hashes_in_the_upload_and_stores_the_same_manifest(sshd, tmp_path, host_hasher):
    model = make_model_tree(tmp_path / "m", n_assets=5, variables_bytes=2_000_000)
    base = tmp_path / "base"
    with connect(sshd, base) as t:
        r = publish(t, MODEL, 1, model)                      # no manifest: built in the same pass
        assert r.status == "uploaded" and r.bytes_transferred == mf.scan(model).total_size
        stored = read_stored_manifest(t, MODEL, 1)
        assert stored == mf.build(model)                      # the stream's hashes are the file hashes
        assert t.verify(f"{MODEL}/1", stored) == []           # and the host agrees, file by file
        again = publish(t, MODEL, 1, model)
        assert again.status == "already_present" and again.bytes_transferred == 0
        assert incoming_dirs(t, MODEL) == []
    assert not any(p.name.endswith(".stream") for p in (base / MODEL).iterdir())   # no FIFO left


def test_a_file_changed_after_its_manifest_is_refused_and_nothing_is_published(sshd, tmp_path):
    model = make_model_tree(tmp_path / "m")
    m = mf.build(model)
    p = model / "variables" / "variables.index"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))                                # same size, other bytes
    with connect(sshd, tmp_path / "base") as t:
        with pytest.raises(UserError) as e:
            publish(t, MODEL, 1, model, m)
        assert "changed since its manifest" in one_line(e.value)
        assert not t.exists(f"{MODEL}/1") and incoming_dirs(t, MODEL) == []


def test_a_stream_the_host_hashed_differently_is_refused(sshd, tmp_path, monkeypatch, host_hasher):
    """What the host extracted must be what was hashed: a stream digest that differs is refused."""
    from serving_sync.transports import ssh_upload

    real = ssh_upload.stream_tree

    class Lying:
        def __init__(self, hasher):
            self.result = hasher.result

        def files_digest(self):
            return hashlib.sha256(b"something else").hexdigest()

        stream_digest = files_digest

    def lying(*a, **k):
        s = real(*a, **k)
        s.hasher = Lying(s.hasher)
        return s

    monkeypatch.setattr(ssh_upload, "stream_tree", lying)
    model = make_model_tree(tmp_path / "m")
    with connect(sshd, tmp_path / "base") as t:
        with pytest.raises(UserError) as e:
            publish(t, MODEL, 1, model)
        assert "do not match the manifest" in one_line(e.value)
        assert not t.exists(f"{MODEL}/1") and incoming_dirs(t, MODEL) == []


def test_a_file_rewritten_between_the_hash_and_the_send_is_refused(sshd, tmp_path, monkeypatch, host_hasher):
    """The hasher reads each file ahead of the sender (another core, while the host's shell starts):
    bytes that change between its read and the send no longer match the host's stream hash."""
    from serving_sync.transports import ssh_upload, tarstream
    from serving_sync.transports.tarstream import StreamHasher

    model = make_model_tree(tmp_path / "m")
    variables = model / "variables" / "variables.data-00000-of-00001"

    hashers = []

    class HashThenRewrite(StreamHasher):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            hashers.append(self)

        def run(self):
            super().run()
            data = bytearray(variables.read_bytes())
            data[0] ^= 0xFF
            variables.write_bytes(bytes(data))               # same size, other bytes

    real_ready = ssh_upload.read_until_go

    def ready_after_the_rewrite(*a, **k):                    # the sender reads only after it
        for h in hashers:
            h.join()
        return real_ready(*a, **k)

    monkeypatch.setattr(tarstream, "StreamHasher", HashThenRewrite)
    monkeypatch.setattr(ssh_upload, "read_until_go", ready_after_the_rewrite)
    with connect(sshd, tmp_path / "base") as t:
        with pytest.raises(UserError) as e:
            publish(t, MODEL, 1, model)
        assert "do not match the manifest" in one_line(e.value)
        assert not t.exists(f"{MODEL}/1") and incoming_dirs(t, MODEL) == []


def test_the_hasher_digest_is_the_sha256_of_exactly_the_bytes_sent(tmp_path):
    from serving_sync.transports import tarstream
    from serving_sync.transports.tarstream import stream_tree

    model = make_model_tree(tmp_path / "m")
    sent = bytearray()
    streamed = stream_tree(model, mf.scan(model), sent.extend)
    assert streamed.hasher.stream_digest() == hashlib.sha256(bytes(sent)).hexdigest()
    per_file = b"".join(hashlib.sha256((model / f.path).read_bytes()).digest() for f in mf.scan(model).files)
    assert streamed.hasher.files_digest() == hashlib.sha256(per_file).hexdigest()
    tarstream.forget()
    lazy = tarstream.shared_hasher(model, mf.scan(model), stream=False)   # a big upload's hasher
    assert lazy.result() and lazy.digest == ""                            # skips the stream hash
    assert lazy.stream_digest() == hashlib.sha256(bytes(sent)).hexdigest()   # until a host asks
    assert streamed.manifest == mf.build(model)
    assert streamed.sent == mf.scan(model).total_size


def test_a_fleet_hashes_the_model_once_and_a_changed_tree_gets_a_fresh_hash(sshd, tmp_path, monkeypatch):
    """Hosts publishing the same tree share one hasher (hash once, reuse across hosts); a tree
    changed since is hashed again, so its new bytes are what every host verifies."""
    from serving_sync.transports import tarstream

    started = []

    class Counting(tarstream.StreamHasher):
        def run(self):
            started.append(self.local_dir)
            super().run()

    monkeypatch.setattr(tarstream, "StreamHasher", Counting)
    model = make_model_tree(tmp_path / "m")
    for i in range(3):
        with connect(sshd, tmp_path / f"base{i}") as t:
            assert publish(t, MODEL, 1, model).status == "uploaded"
    assert len(started) == 1
    variables = model / "variables" / "variables.data-00000-of-00001"
    data = bytearray(variables.read_bytes())
    data[0] ^= 0xFF
    variables.write_bytes(bytes(data))
    with connect(sshd, tmp_path / "base3") as t:
        publish(t, MODEL, 1, model)
        assert read_stored_manifest(t, MODEL, 1) == mf.build(model)
    assert len(started) == 2


def test_a_present_version_whose_files_changed_size_is_refused(sshd, tmp_path):
    model = make_model_tree(tmp_path / "m")
    base = tmp_path / "base"
    with connect(sshd, base) as t:
        publish(t, MODEL, 1, model)
    with open(base / MODEL / "1" / "variables" / "variables.index", "ab") as f:
        f.write(b"tampered")
    with connect(sshd, base) as t:
        with pytest.raises(PublishRefused, match="immutable"):
            publish(t, MODEL, 1, model)


def test_a_present_version_without_its_stored_manifest_is_hashed_on_the_host(sshd, tmp_path):
    model = make_model_tree(tmp_path / "m")
    base = tmp_path / "base"
    with connect(sshd, base) as t:
        publish(t, MODEL, 1, model)
    shutil.rmtree(base / ".serving_sync" / "manifests")
    p = base / MODEL / "1" / "variables" / "variables.index"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))                                # same size: only a hash sees it
    with connect(sshd, base) as t:
        with pytest.raises(PublishRefused, match="sha256 mismatch"):
            publish(t, MODEL, 1, model)


def test_a_host_without_mkfifo_still_verifies_by_hashing_after_extraction(sshd, tmp_path, monkeypatch):
    """The older two-pass script is kept for hosts without a FIFO; it still checks every file."""
    monkeypatch.setattr(ssh_scripts, "_PICK_HASH", ssh_scripts._PICK_HASH + "mkfifo() { return 1; }\n")
    model = make_model_tree(tmp_path / "m")
    with connect(sshd, tmp_path / "base") as t:
        r = publish(t, MODEL, 1, model)
        assert r.status == "uploaded" and t.verify(f"{MODEL}/1", mf.build(model)) == []


@pytest.mark.parametrize("name", ["my models", "it's \"q\"", "$(touch {marker})"])
def test_a_base_path_with_shell_characters_is_never_run_as_shell_code(sshd, tmp_path, monkeypatch, name):
    """The small-upload script's FIFO trap quoted the already quoted path again: with a space its
    action became ``rm -f -- <the path up to the space>`` (a file beside the base was deleted), a
    ``'`` broke every small upload, and ``$(…)`` ran on the host."""
    monkeypatch.setattr(ssh_scripts, "PY_TEE_MIN_BYTES", 1 << 62)       # the tee + FIFO script
    monkeypatch.chdir(tmp_path)
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    name = name.format(marker=marker)
    model = make_model_tree(tmp_path / "m")
    beside = tmp_path / name.split(" ")[0]
    if beside.name != name:
        beside.write_text("keep me")
    base = tmp_path / name / "base"
    with connect(sshd, base) as t:
        r = publish(t, MODEL, 1, model)
        assert r.status == "uploaded" and t.verify(f"{MODEL}/1", mf.build(model)) == []
    assert beside.exists()
    ran = [*tmp_path.rglob(marker), *Path.home().glob(marker)]
    for p in ran:
        p.unlink()
    assert not ran
    assert not any(p.name.endswith(".stream") for p in (base / MODEL).iterdir())


def test_a_carriage_return_name_through_ssh_publish_is_one_line_and_the_host_is_untouched(sshd, tmp_path):
    model = make_model_tree(tmp_path / "m")
    (model / "assets" / "evil\r.txt").write_bytes(b"x")
    base = tmp_path / "base"
    with connect(sshd, base) as t:
        for manifest in (None, "build"):
            with pytest.raises(UserError) as e:
                publish(t, MODEL, 1, model, mf.build(model) if manifest else None)
            assert "cannot be published" in one_line(e.value)
    assert not (base / MODEL).exists() or os.listdir(base / MODEL) == []


# --- a bug inside a real deploy ------------------------------------------------------------------
def test_an_unexpected_error_inside_a_deploy_puts_the_host_back_in_one_line(deploy_env, monkeypatch):
    """A bug (here: the upload raising a RuntimeError with a two-line message) is still a deploy
    failure: every host back, one line naming the bug, the traceback only in the debug log."""
    from mlops_common.errors import DeployFailed
    from serving_sync.transports.local import LocalTransport

    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    config_v1 = env.config_text(host)
    v2 = env.register("b")
    env.promote(v2)

    def boom(self, *a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(LocalTransport, "upload_tree_hashing", boom)
    with pytest.raises(DeployFailed) as e:
        env.deploy()
    msg = one_line(e.value)
    assert f"deploy of v{v2}" in msg and "this is a bug in mlops (unexpected RuntimeError)" in msg, msg
    assert "-v" in msg and "boom second line" in msg
    assert env.config_text(host) == config_v1
    assert sorted(n for n in os.listdir(host.base / env.model) if not n.startswith(".")) == [str(v1)]
    env.serves(host, v1)
