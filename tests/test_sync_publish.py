"""Publishing a version on file://, ssh:// (real sshd) and s3:// (real SeaweedFS) hosts:
complete, verified on the host, atomic, idempotent, immutable."""
from __future__ import annotations

import json

import pytest

from mlops_common.errors import UserError
from serving_sync import manifest as mf
from serving_sync.errors import PublishRefused
from serving_sync.layout import manifest_path
from serving_sync.publish import incoming_dirs, is_published, publish, published_versions, read_stored_manifest
from tests.test_sync_support import hut, make_model_tree  # noqa: F401 - fixture

MODEL = "digits"


@pytest.fixture
def model_dir(tmp_path):
    return make_model_tree(tmp_path / "model")


def test_publish_uploads_every_file_verified_and_stores_the_manifest(hut, model_dir):
    m = mf.build(model_dir)
    result = publish(hut.transport, MODEL, 3, model_dir, m)
    assert result.status == "uploaded"
    assert result.bytes_transferred == m.total_size
    # exactly the SavedModel, byte for byte, under the numeric name
    expected = sorted(f.path for f in m.files)
    assert hut.raw_keys(f"{MODEL}/3") == expected
    for f in m.files:
        assert hut.raw_read(f"{MODEL}/3/{f.path}") == (model_dir / f.path).read_bytes()
    assert hut.numeric_versions(MODEL) == ["3"]
    assert incoming_dirs(hut.transport, MODEL) == []
    # no manifest inside the version directory; it lives under .serving_sync/
    assert ".manifest.json" not in hut.raw_names(f"{MODEL}/3")
    stored = json.loads(hut.raw_read(manifest_path(MODEL, 3)))
    assert stored == json.loads(m.to_json())
    assert read_stored_manifest(hut.transport, MODEL, 3) == m
    assert published_versions(hut.transport, MODEL) == [3]
    assert hut.transport.verify(f"{MODEL}/3", m) == []
    if hut.kind != "s3":   # directories exist only on filesystems (keeps the empty assets dir)
        assert (hut.local_base / MODEL / "3" / "assets" / "empty-dir").is_dir()


def test_publishing_again_transfers_nothing(hut, model_dir):
    m = mf.build(model_dir)
    publish(hut.transport, MODEL, 1, model_dir, m)
    before = {k: hut.raw_read(f"{MODEL}/1/{k}") for k in hut.raw_keys(f"{MODEL}/1")}
    again = publish(hut.transport, MODEL, 1, model_dir, m)
    assert again.status == "already_present"
    assert again.bytes_transferred == 0
    assert {k: hut.raw_read(f"{MODEL}/1/{k}") for k in hut.raw_keys(f"{MODEL}/1")} == before
    assert hut.numeric_versions(MODEL) == ["1"]


def test_existing_version_with_different_content_is_refused(hut, model_dir, tmp_path):
    publish(hut.transport, MODEL, 2, model_dir, mf.build(model_dir))
    other = make_model_tree(tmp_path / "other", seed=99)
    with pytest.raises(PublishRefused) as e:
        publish(hut.transport, MODEL, 2, other, mf.build(other))
    msg = str(e.value)
    assert "immutable" in msg and f"{MODEL}/2" in msg and "sha256 mismatch" in msg
    assert "\n" not in msg
    # the published version is untouched
    for f in mf.build(model_dir).files:
        assert hut.raw_read(f"{MODEL}/2/{f.path}") == (model_dir / f.path).read_bytes()


def test_a_published_version_with_the_other_completion_file_is_refused_not_replaced(hut, model_dir, tmp_path):
    """A complete version saved as saved_model.pbtxt is somebody's published version: a tree with
    saved_model.pb under the same number is refused (on S3 it was taken for a leftover and replaced)."""
    text_tree = make_model_tree(tmp_path / "pbtxt", seed=7)
    (text_tree / "saved_model.pb").rename(text_tree / "saved_model.pbtxt")
    publish(hut.transport, MODEL, 6, text_tree, mf.build(text_tree))
    before = {k: hut.raw_read(f"{MODEL}/6/{k}") for k in hut.raw_keys(f"{MODEL}/6")}
    assert "saved_model.pbtxt" in before
    with pytest.raises(PublishRefused, match="immutable"):
        publish(hut.transport, MODEL, 6, model_dir, mf.build(model_dir))
    assert {k: hut.raw_read(f"{MODEL}/6/{k}") for k in hut.raw_keys(f"{MODEL}/6")} == before


def test_tampered_file_on_the_host_is_detected(hut, model_dir):
    m = mf.build(model_dir)
    publish(hut.transport, MODEL, 4, model_dir, m)
    hut.raw_write(f"{MODEL}/4/variables/variables.index", b"corrupted")
    problems = hut.transport.verify(f"{MODEL}/4", m)
    assert problems == ["sha256 mismatch for variables/variables.index"]
    hut.raw_write(f"{MODEL}/4/extra.txt", b"x")
    assert "unexpected file extra.txt" in hut.transport.verify(f"{MODEL}/4", m)
    with pytest.raises(PublishRefused):
        publish(hut.transport, MODEL, 4, model_dir, m)


def test_not_a_savedmodel_is_refused_before_any_upload(hut, tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="not a SavedModel"):
        mf.build(d)
    hand_made = mf.Manifest((mf.FileEntry("readme.txt", 2, mf.sha256_file(d / "readme.txt")),))
    with pytest.raises(UserError, match="not a SavedModel"):
        publish(hut.transport, MODEL, 1, d, hand_made)
    assert hut.raw_names(MODEL) == []


def test_bad_model_name_or_version_is_refused(hut, model_dir):
    m = mf.build(model_dir)
    for name in ("../evil", "a/b", "", ".hidden", "x__validate"):
        with pytest.raises(UserError):
            publish(hut.transport, name, 1, model_dir, m)
    for v in (0, -1, "1a", "01", True):
        with pytest.raises(UserError):
            publish(hut.transport, MODEL, v, model_dir, m)
    assert hut.raw_names("") == []   # refused before any I/O


@pytest.mark.parametrize("name", ["models.config", "monitoring.config"])
def test_a_model_named_like_a_file_of_the_base_is_refused_before_any_io(hut, model_dir, name):
    """A model called ``models.config`` was published as the folder ``<base>/models.config/``: on a
    fresh host the deploy's next step could not write TF Serving's config file (a directory stood
    there), and TF Serving's ``--model_config_file`` named a directory from then on."""
    from serving_sync.layout import MODELS_CONFIG
    from serving_sync.names import BASE_FILES

    assert MODELS_CONFIG in BASE_FILES
    with pytest.raises(UserError, match="names a file of the serving host's base"):
        publish(hut.transport, name, 1, model_dir, mf.build(model_dir))
    assert hut.raw_names("") == []


def test_manifest_changed_after_upload_fails_verification_and_leaves_nothing(hut, model_dir):
    """The host-side hash check is real: a manifest that lies about a file makes publish fail."""
    m = mf.build(model_dir)
    files = list(m.files)
    i = next(k for k, f in enumerate(files) if f.path == "variables/variables.index")
    files[i] = mf.FileEntry(files[i].path, files[i].size, "0" * 64)
    lying = mf.Manifest(tuple(files), m.dirs)
    with pytest.raises(UserError) as e:
        publish(hut.transport, MODEL, 5, model_dir, lying)
    assert "\n" not in str(e.value)
    assert hut.numeric_versions(MODEL) == []
    assert incoming_dirs(hut.transport, MODEL) == []
    assert not is_published(hut.transport, MODEL, 5, m)


def test_a_concurrent_publisher_that_won_leaves_no_manifest_of_ours_behind(model_dir, tmp_path):
    """Another publisher renames its different bytes into place just before ours (the lock should
    prevent it): ours is refused, and the stored manifest no longer describes our bytes, so the
    next publish verifies the files there instead of taking them for ours."""
    import shutil

    from serving_sync.transports.local import LocalTransport

    other = make_model_tree(tmp_path / "other", seed=99)

    class Raced(LocalTransport):
        def rename(self, src, dst):
            if not (self.base / dst).exists():
                shutil.copytree(other, self.base / dst)      # the other publisher finished first
            return super().rename(src, dst)

    t = Raced(tmp_path / "base")
    try:
        m = mf.build(model_dir)
        with pytest.raises(PublishRefused, match="immutable"):
            publish(t, MODEL, 5, model_dir, m)
        assert read_stored_manifest(t, MODEL, 5) is None
        with pytest.raises(PublishRefused, match="immutable"):      # not "already_present"
            publish(t, MODEL, 5, model_dir, m)
    finally:
        t.close()


def test_only_ascii_digits_name_a_version(tmp_path):
    from serving_sync import retention
    from serving_sync.transports.local import LocalTransport

    t = LocalTransport(tmp_path / "base")
    try:
        for name in ("3", "\uff15", "\u00b2", "07"):      # 3, fullwidth 5, superscript 2, leading zero
            (tmp_path / "base" / MODEL / name).mkdir(parents=True)
        assert published_versions(t, MODEL) == [3]
        rp = retention.plan(t, MODEL, serving=None, previous=None, keep=0)
        assert rp.remove_versions == [3]
    finally:
        t.close()


def test_which_directory_names_are_published_versions_one_rule_for_publish_and_retention(tmp_path):
    from serving_sync import retention
    from serving_sync.layout import version_of
    from serving_sync.publish import published_versions
    from serving_sync.transports import local

    assert [version_of(n) for n in ("12", "1", "012", "0", "１２", "12a", ".incoming-3-x", "")] == \
        [12, 1, None, None, None, None, None, None]
    for name in ("1", "2", "10", "012", "１２", "notes"):
        (tmp_path / "m" / name).mkdir(parents=True)
    t = local.LocalTransport(tmp_path)
    assert published_versions(t, "m") == [1, 2, 10]
    assert retention.plan(t, "m", serving=10, previous=2, keep=0).remove_versions == [1]


@pytest.fixture
def s3_hut(request, tmp_path):
    from tests.test_sync_support import make_hut

    h = make_hut("s3", request, tmp_path)
    yield h
    h.transport.close()


def test_two_deploys_uploading_one_version_to_a_shared_store_both_succeed(s3_hut, model_dir, monkeypatch):
    """Two fleets sharing a store uploaded the same version at once: the second removed the first's
    partial upload as a dead leftover and completed it; the first then found the completion file
    it had not sent, failed, and its clean-up deleted the second's complete, verified copy."""
    from serving_sync.transports import open_transport

    m = mf.build(model_dir)
    other = open_transport(s3_hut.host)           # the other fleet's deploy: its own connection
    real = type(s3_hut.transport).upload_tree
    results = []

    def upload_then_the_other_deploy(self, local_dir, dest_rel, manifest, *a, **kw):
        sent = real(self, local_dir, dest_rel, manifest, *a, **kw)
        if self is s3_hut.transport and not results:      # the first deploy's body is up
            results.append(publish(other, MODEL, 5, model_dir, m))
        return sent

    monkeypatch.setattr(type(s3_hut.transport), "upload_tree", upload_then_the_other_deploy)
    first = publish(s3_hut.transport, MODEL, 5, model_dir, m)
    assert results[0].status == "uploaded" and first.status == "uploaded"
    assert is_published(s3_hut.transport, MODEL, 5, m) and s3_hut.transport.verify(f"{MODEL}/5", m) == []
    other.close()


def test_a_failed_upload_never_removes_a_complete_copy_another_deploy_made(s3_hut, model_dir, monkeypatch):
    """The failure clean-up removed the version's objects, including a complete copy that another
    deploy had finished meanwhile: a host of that fleet still pulling it got 404s."""
    from serving_sync.transports import open_transport

    m = mf.build(model_dir)
    other = open_transport(s3_hut.host)
    real_verify = type(s3_hut.transport).verify

    failed = []

    def other_completes_then_this_check_fails(self, rel, manifest):
        if self is s3_hut.transport and not failed:       # this deploy's first check of its upload
            publish(other, MODEL, 7, model_dir, m)
            failed.append(rel)
            return ["a check that failed for a reason of its own"]
        return real_verify(self, rel, manifest)

    monkeypatch.setattr(type(s3_hut.transport), "verify", other_completes_then_this_check_fails)
    with pytest.raises(UserError):
        publish(s3_hut.transport, MODEL, 7, model_dir, m)
    monkeypatch.setattr(type(s3_hut.transport), "verify", real_verify)
    assert is_published(other, MODEL, 7, m) and other.verify(f"{MODEL}/7", m) == []
    other.close()


def test_an_object_that_is_not_the_versions_is_removed_before_the_upload(s3_hut, model_dir):
    """Objects already under the version's prefix are written over (another deploy may be
    uploading them); one the manifest does not name (a leftover of another build under the same
    number) is removed first, so the upload does not fail its check on it."""
    m = mf.build(model_dir)
    s3_hut.raw_write(f"{MODEL}/8/variables/stale.bin", b"from another build")
    s3_hut.raw_write(f"{MODEL}/8/variables/variables.index", b"half written")
    r = publish(s3_hut.transport, MODEL, 8, model_dir, m)
    assert r.status == "uploaded" and s3_hut.transport.verify(f"{MODEL}/8", m) == []


@pytest.mark.parametrize("kind", ["file", "ssh"])
def test_a_savedmodel_whose_manifest_is_over_4_mb_publishes_again_as_already_present(kind, request, tmp_path):
    """36,000 files (a big ``assets/``, many ``variables/`` shards) make a stored manifest of about
    4.7 MB. It was read with the 4 MB cap of config and lock files: the first publish worked, every
    later one (a rerun, a rollback to it) failed with "larger than 4 MB ... trim it or split the
    models", about a file serving_sync itself wrote."""
    from tests.test_sync_support import make_hut

    d = make_model_tree(tmp_path / "model", variables_bytes=10, n_assets=0)
    for i in range(36_000):
        (d / "assets" / f"asset-{i:06d}-of-a-big-vocabulary.txt").write_bytes(b"")
    m = mf.build(d)
    assert len(m.to_json()) > 4 * 1024 * 1024
    h = make_hut(kind, request, tmp_path)
    try:
        assert publish(h.transport, MODEL, 1, d, m).status == "uploaded"
        assert read_stored_manifest(h.transport, MODEL, 1) == m
        again = publish(h.transport, MODEL, 1, d, m)
        assert again.status == "already_present" and again.bytes_transferred == 0
    finally:
        h.transport.close()


def test_a_file_name_that_is_not_utf8_is_one_line_before_any_host(hut, model_dir):
    """A SavedModel file named in Latin-1 (``caf\\xe9.txt``, written where the locale is not UTF-8).
    On S3 (keys are UTF-8) the upload ended in botocore's ``UnicodeEncodeError`` after part of the
    objects had been PUT; over SSH the first publish went through and every later one (a rerun, a
    rollback to it) ended in paramiko's ``UnicodeDecodeError`` listing it. A SavedModel refers to
    its files by proto strings, which are UTF-8: the name is refused in one line now, before any
    host is touched, like a control character."""
    import os

    with open(os.path.join(os.fsencode(model_dir / "assets"), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 named")
    for attempt in (lambda: mf.build(model_dir), lambda: mf.scan(model_dir),
                    lambda: publish(hut.transport, MODEL, 1, model_dir)):
        with pytest.raises(UserError) as e:
            attempt()
        assert "\n" not in str(e.value) and "not UTF-8" in str(e.value) and "caf" in str(e.value)
    assert hut.raw_names("") == []
