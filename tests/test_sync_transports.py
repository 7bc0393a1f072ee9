"""The Transport contract, checked on every implementation (file, real sshd, real SeaweedFS)."""
from __future__ import annotations

import threading

import pytest

from mlops_common.errors import ConfigError
from serving_sync import manifest as mf
from serving_sync.transports.base import Transport
from tests.test_sync_support import hut, make_model_tree  # noqa: F401 - fixture


def test_small_files_read_write_exists_list_remove(hut):
    t: Transport = hut.transport
    assert t.list_dir("") == [] and t.list_dir("nope") == []
    assert not t.exists("models.config")
    with pytest.raises(FileNotFoundError):
        t.read_file("models.config")
    t.write_file_atomic("models.config", b"model_config_list {\n}\n")
    assert t.read_file("models.config") == b"model_config_list {\n}\n"
    assert hut.raw_read("models.config") == b"model_config_list {\n}\n"
    t.write_file_atomic("models.config", b"second")
    assert t.read_file("models.config") == b"second"
    assert t.exists("models.config")
    t.write_file_atomic("a/b/c.json", b"{}")            # parents created
    assert "a" in t.list_dir("") and t.list_dir("a") == ["b"]
    assert [n for n in hut.raw_names("") if not n.startswith(".")] == ["a", "models.config"]
    t.remove_file("a/b/c.json")
    t.remove_file("a/b/c.json")                          # absent is fine
    assert not t.exists("a/b/c.json")
    t.remove_tree("never-existed")                       # absent is fine



def test_a_small_file_over_the_limit_is_refused_not_cut(hut):
    """Found by review (2026-12-05, third stop): a file over the 4 MB read limit came back cut at
    the limit; a models.config cut at an entry's end would have been written back without the
    rest of the entries."""
    from mlops_common.errors import UserError

    t: Transport = hut.transport
    t.write_file_atomic("models.config", b"x" * 1001)
    with pytest.raises(UserError, match="models.config is larger than .* MB, the most mlops reads"):
        t.read_file("models.config", max_bytes=1000)
    assert t.read_file("models.config", max_bytes=1001) == b"x" * 1001

def test_create_exclusive_only_once(hut):
    t = hut.transport
    assert t.create_exclusive(".serving_sync/lock", b"one")
    assert not t.create_exclusive(".serving_sync/lock", b"two")
    assert t.read_file(".serving_sync/lock") == b"one"
    t.remove_file(".serving_sync/lock")
    assert t.create_exclusive(".serving_sync/lock", b"three")


def test_paths_outside_the_base_are_refused_before_any_io(hut):
    t = hut.transport
    for bad in ("../x", "a/../../x", "/etc/passwd", "a/..", "a\\b", "x\ny"):
        with pytest.raises(ConfigError):
            t.read_file(bad)
        with pytest.raises(ConfigError):
            t.write_file_atomic(bad, b"x")
        with pytest.raises(ConfigError):
            t.remove_tree(bad)
    with pytest.raises(ValueError):
        t.remove_tree("")                                # never the base itself


def test_upload_tree_and_remove_tree(hut, tmp_path):
    model = make_model_tree(tmp_path / "m", n_assets=5)
    m = mf.build(model)
    seen = []
    sent = hut.transport.upload_tree(model, "digits/.incoming-1-x", m, seen.append)
    assert sent == m.total_size == sum(seen)
    assert hut.raw_keys("digits/.incoming-1-x") == sorted(f.path for f in m.files)
    assert hut.transport.verify("digits/.incoming-1-x", m) == []
    hut.transport.remove_tree("digits/.incoming-1-x")
    assert hut.raw_keys("digits/.incoming-1-x") == []
    assert hut.transport.list_dir("digits") == []


def test_rename_is_atomic_and_never_moves_into_an_existing_dir(hut, tmp_path):
    if not hut.transport.atomic_rename:
        with pytest.raises(NotImplementedError):
            hut.transport.rename("a", "b")
        return
    model = make_model_tree(tmp_path / "m")
    m = mf.build(model)
    hut.transport.upload_tree(model, "digits/.incoming-1-a", m)
    hut.transport.upload_tree(model, "digits/.incoming-1-b", m)
    hut.transport.rename("digits/.incoming-1-a", "digits/1")
    with pytest.raises(FileExistsError):
        hut.transport.rename("digits/.incoming-1-b", "digits/1")
    assert hut.raw_names("digits/1") == sorted(["assets", "fingerprint.pb", "saved_model.pb", "variables"])


def test_readers_never_see_a_half_written_config(hut):
    """While models.config is rewritten, every read returns one complete version of it."""
    t = hut.transport
    a, b = b"A" * 200_000, b"B" * 150_000
    t.write_file_atomic("models.config", a)
    stop = threading.Event()
    errors: list[str] = []

    def writer():
        for i in range(15):
            t.write_file_atomic("models.config", a if i % 2 else b)
        stop.set()

    w = threading.Thread(target=writer)
    w.start()
    reads = 0
    while not stop.is_set() and reads < 500:   # bounded
        data = hut.raw_read("models.config")
        reads += 1
        if data not in (a, b):
            errors.append(f"partial read of {len(data)} bytes")
    w.join(timeout=120)
    assert not errors, errors[:3]
    assert reads > 0


def test_disk_free_is_reported_where_the_store_has_one(hut):
    free = hut.transport.disk_free()
    if hut.kind == "s3":
        assert free is None
    else:
        assert isinstance(free, int) and free > 0


def test_models_config_on_the_host_read_write_unchanged_and_malformed(hut):
    from mlops_common.errors import ConfigError
    from serving_sync import host_config
    from serving_sync import models_config as mc

    assert host_config.read(hut.transport) == mc.ServingConfig()
    cfg = mc.apply_state(mc.ServingConfig(), mc.ModelState("digits", "/models/digits", (1,), {"stable": 1}))
    text, changed = host_config.write(hut.transport, cfg)
    assert changed and hut.raw_read("models.config").decode() == text
    assert host_config.read(hut.transport) == cfg
    assert host_config.write(hut.transport, cfg) == (text, False)
    hut.raw_write("models.config", b"model_config_list { config { name: ")
    with pytest.raises(ConfigError) as e:
        host_config.read(hut.transport)
    assert "models.config is malformed" in str(e.value) and "\n" not in str(e.value)


def test_models_config_written_over_a_known_text_skips_the_read_and_never_skips_a_needed_write(hut, monkeypatch):
    """``known`` (what the deploy last applied) saves the read before a write; a wrong belief
    costs an identical rewrite at most, and only a read of the very same text skips the write."""
    from serving_sync import host_config

    t = hut.transport
    reads = []
    read = t.read_file
    monkeypatch.setattr(t, "read_file", lambda rel, *a: (reads.append(rel), read(rel, *a))[1])
    hut.raw_write("models.config", b"A")
    assert host_config.write_text(t, "B", known="A") is True and reads == []
    assert hut.raw_read("models.config") == b"B"
    assert host_config.write_text(t, "B", known="B") is False and reads == ["models.config"]
    hut.raw_write("models.config", b"C")                  # changed behind the caller's back
    assert host_config.write_text(t, "B", known="B") is True
    assert hut.raw_read("models.config") == b"B"
    assert host_config.write_text(t, "B", known="Z") is True      # wrong belief: rewritten, same text
    assert hut.raw_read("models.config") == b"B"
    assert host_config.write_text(t, "B") is False                # no belief: read, unchanged
