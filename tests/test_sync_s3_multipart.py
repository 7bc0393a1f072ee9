"""Files above S3's single-PUT limit (5 GiB) go up as multipart uploads (real SeaweedFS): verified
against the manifest, aborted when a part fails or the upload is interrupted, and unfinished
uploads a killed run left are aborted by the next publish and by retention. The threshold and
the part size are lowered here (``MULTIPART_THRESHOLD``, ``MIN_PART_SIZE``) so a 12 MiB shard
takes 3 parts of 5 MiB (S3's smallest part)."""
from __future__ import annotations

import pytest

from mlops_common.errors import UserError
from serving_sync import manifest as mf
from serving_sync.publish import is_published, publish
from serving_sync.transports import s3 as s3t
from tests.test_sync_support import make_model_tree

MODEL = "digits"
MIB = 1024 ** 2
SHARD = "variables/variables.data-00000-of-00001"


@pytest.fixture
def s3_hut(request, tmp_path, monkeypatch):
    from tests.test_sync_support import make_hut

    monkeypatch.setattr(s3t, "MULTIPART_THRESHOLD", 6 * MIB)
    monkeypatch.setattr(s3t, "MIN_PART_SIZE", 5 * MIB)
    h = make_hut("s3", request, tmp_path)
    yield h
    h.transport.close()


@pytest.fixture
def big_model(tmp_path):
    return make_model_tree(tmp_path / "model", variables_bytes=12 * MIB + 1234)


def _key(h, rel: str) -> str:
    return "/".join(x for x in (h.prefix, rel) if x)


def _unfinished(h, rel: str = "") -> list[str]:
    """Keys of the multipart uploads in progress under ``rel`` (as the store lists them)."""
    resp = h.s3_client.list_multipart_uploads(Bucket=h.bucket, Prefix=_key(h, rel))
    return [u["Key"] for u in resp.get("Uploads", [])]


def _start_dead_upload(h, rel: str) -> None:
    """What a deploy killed (SIGKILL) after its first part leaves: an upload never completed."""
    up = h.s3_client.create_multipart_upload(Bucket=h.bucket, Key=_key(h, rel))
    h.s3_client.upload_part(Bucket=h.bucket, Key=_key(h, rel), UploadId=up["UploadId"], PartNumber=1,
                            Body=b"x" * (5 * MIB))


def test_part_size_covers_the_largest_s3_object_in_10000_parts():
    assert s3t.part_size(6 * 1024 ** 3) == s3t.MIN_PART_SIZE
    for size in (s3t.MAX_SINGLE_PUT + 1, 700 * 1024 ** 3, s3t.MAX_OBJECT):
        p = s3t.part_size(size)
        assert 5 * MIB <= p <= 5 * 1024 ** 3 and -(-size // p) <= s3t.MAX_PARTS, (size, p)


def test_a_file_above_the_threshold_uploads_in_parts_and_is_verified(s3_hut, big_model, monkeypatch):
    """It was refused ("single objects above 5 GiB are not supported by the S3 transport")."""
    m = mf.build(big_model)
    r = publish(s3_hut.transport, MODEL, 3, big_model, m)
    assert r.status == "uploaded" and r.bytes_transferred == m.total_size
    head = s3_hut.s3_client.head_object(Bucket=s3_hut.bucket, Key=_key(s3_hut, f"{MODEL}/3/{SHARD}"),
                                        ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3") and head["ChecksumSHA256"].endswith("-3"), head
    assert s3_hut.raw_read(f"{MODEL}/3/{SHARD}") == (big_model / SHARD).read_bytes()
    assert _unfinished(s3_hut) == []
    # another process (a rerun) checks the store's composite against the upload's metadata:
    # verified and already present without reading the object back
    monkeypatch.setattr(s3t.S3Transport, "_read_back_sha256", lambda self, key: pytest.fail(key))
    other = s3t.S3Transport(s3_hut.bucket, s3_hut.prefix)
    assert other.verify(f"{MODEL}/3", m) == []
    assert publish(other, MODEL, 3, big_model, m).status == "already_present"


def test_a_multipart_object_replaced_with_our_metadata_but_other_bytes_is_read_back(s3_hut, big_model):
    """The metadata is the uploader's word; only the store's own composite checksum makes it true."""
    m = mf.build(big_model)
    publish(s3_hut.transport, MODEL, 3, big_model, m)
    key = _key(s3_hut, f"{MODEL}/3/{SHARD}")
    meta = s3_hut.s3_client.head_object(Bucket=s3_hut.bucket, Key=key)["Metadata"]
    assert meta[s3t.META_SHA256] == m.by_path()[SHARD].sha256
    up = s3_hut.s3_client.create_multipart_upload(Bucket=s3_hut.bucket, Key=key, Metadata=meta,
                                                  ChecksumAlgorithm="SHA256")
    r = s3_hut.s3_client.upload_part(Bucket=s3_hut.bucket, Key=key, UploadId=up["UploadId"], PartNumber=1,
                                     Body=b"other bytes", ChecksumAlgorithm="SHA256")
    s3_hut.s3_client.complete_multipart_upload(
        Bucket=s3_hut.bucket, Key=key, UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]}]})
    problems = s3t.S3Transport(s3_hut.bucket, s3_hut.prefix).verify(f"{MODEL}/3", m)
    assert any(SHARD in p for p in problems), problems


def test_a_corrupted_part_is_refused_and_the_upload_aborted(s3_hut, big_model, monkeypatch):
    m = mf.build(big_model)
    client = s3_hut.transport.client
    real = client.upload_part

    def corrupt_the_second_part(**kw):
        if kw["PartNumber"] == 2:
            body = bytearray(kw["Body"].read())
            body[100] ^= 1                             # a bit flipped on the way; the checksum is the file's
            kw["Body"] = bytes(body)
        return real(**kw)

    monkeypatch.setattr(client, "upload_part", corrupt_the_second_part)
    with pytest.raises(UserError) as e:
        publish(s3_hut.transport, MODEL, 4, big_model, m)
    assert "checksum did not match" in e.value.message
    assert _unfinished(s3_hut) == []                      # no invisible parts left billing storage
    assert not is_published(s3_hut.transport, MODEL, 4, m) and s3_hut.raw_keys(f"{MODEL}/4") == []


def test_an_upload_interrupted_between_parts_is_aborted(s3_hut, big_model):
    m = mf.build(big_model)
    seen = []

    def interrupt_after_the_first_part(n: int) -> None:
        seen.append(n)
        if n == 5 * MIB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(s3_hut.transport, MODEL, 5, big_model, m, interrupt_after_the_first_part)
    assert 5 * MIB in seen
    assert _unfinished(s3_hut) == [] and s3_hut.raw_keys(f"{MODEL}/5") == []


def test_a_file_changed_since_it_was_hashed_is_refused_and_aborted(s3_hut, big_model):
    m = mf.build(big_model)
    p = big_model / SHARD
    data = bytearray(p.read_bytes())
    data[-1] ^= 1                                          # same size, other bytes: the manifest is stale
    p.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        publish(s3_hut.transport, MODEL, 6, big_model, m)
    assert "changed since it was hashed" in e.value.message
    assert _unfinished(s3_hut) == [] and not is_published(s3_hut.transport, MODEL, 6, m)


def test_a_killed_runs_unfinished_upload_is_aborted_by_the_next_publish(s3_hut, big_model):
    m = mf.build(big_model)
    _start_dead_upload(s3_hut, f"{MODEL}/7/{SHARD}")
    _start_dead_upload(s3_hut, f"{MODEL}/70/{SHARD}")     # another version's: not this publish's to touch
    assert len(_unfinished(s3_hut, f"{MODEL}/7/")) == 1
    assert publish(s3_hut.transport, MODEL, 7, big_model, m).status == "uploaded"
    assert _unfinished(s3_hut, f"{MODEL}/7/") == []
    assert len(_unfinished(s3_hut, f"{MODEL}/70/")) == 1


def test_retention_and_removal_abort_unfinished_uploads(s3_hut, monkeypatch):
    """A killed upload with no object completed is in no LIST of objects: retention never saw it."""
    from serving_sync import retention

    _start_dead_upload(s3_hut, f"{MODEL}/8/{SHARD}")
    retention.apply(s3_hut.transport, retention.RetentionPlan(MODEL))
    assert len(_unfinished(s3_hut, MODEL)) == 1           # younger than an hour: maybe a live upload
    monkeypatch.setattr(retention, "DEFAULT_UPLOAD_AGE", -1.0)
    retention.apply(s3_hut.transport, retention.RetentionPlan(MODEL))
    assert _unfinished(s3_hut, MODEL) == []
    _start_dead_upload(s3_hut, f"{MODEL}/9/{SHARD}")
    s3_hut.transport.remove_tree(f"{MODEL}/9")
    assert _unfinished(s3_hut, MODEL) == []


def test_a_host_pulls_an_identical_copy_of_a_multipart_object_from_the_store(s3_env, sshd, tmp_path,
                                                                            monkeypatch):
    from serving_sync import store
    from serving_sync.hosts import Store, _Where, parse_target
    from tests.test_sync_ssh import connect

    monkeypatch.setattr(s3t, "MULTIPART_THRESHOLD", 6 * MIB)
    monkeypatch.setattr(s3t, "MIN_PART_SIZE", 5 * MIB)
    model = make_model_tree(tmp_path / "model", variables_bytes=12 * MIB + 1234)
    m = mf.build(model)
    bucket = s3_env.make_bucket("multipart-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    assert store.StoreCopies(MODEL, 1).upload(st, model, m)["status"] == "uploaded"
    head = s3_env.client().head_object(Bucket=bucket, Key=f"fleet/{MODEL}/1/{SHARD}")
    assert head["ETag"].strip('"').endswith("-3")
    base = tmp_path / "host"
    base.mkdir()
    t = connect(sshd, base)
    try:
        pull = store.presign(st, MODEL, 1, m, 300)
        r = publish(t, MODEL, 1, model, m, pull=pull)
        assert r.status == "pulled" and t.verify(f"{MODEL}/1", m) == []
        for f in m.files:
            assert (base / MODEL / "1" / f.path).read_bytes() == (model / f.path).read_bytes()
    finally:
        t.close()
