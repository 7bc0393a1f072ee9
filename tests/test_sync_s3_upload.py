"""``S3Transport.upload_tree`` over its own threads: what starts after a failure or a stop."""
from __future__ import annotations

import threading

import pytest

from serving_sync.errors import HostUnreachable
from serving_sync.manifest import FileEntry, Manifest
from serving_sync.transports import s3 as s3t


class _Client:
    """put_object: ``big`` waits until the thread that failed ``bad`` has ended (or 10 s)."""

    def __init__(self):
        self.puts, self.failed, self.failer = [], threading.Event(), None

    def put_object(self, *, Bucket, Key, Body, ContentLength, ChecksumSHA256):
        self.puts.append(Key)
        if Key.endswith("big"):
            assert self.failed.wait(10)
            self.failer.join(10)      # an executor's worker never ends here: it went on uploading
        elif Key.endswith("bad"):
            self.failer = threading.current_thread()
            self.failed.set()
            raise OSError("connection reset")


def _tree(tmp_path, sizes):
    files = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        files.append(FileEntry(name, size, "0" * 64))
    return Manifest(tuple(sorted(files, key=lambda f: f.path)))


def test_after_a_failed_put_no_other_object_starts(tmp_path, monkeypatch):
    """Sixteenth stop: ``pool.map`` saw a failure only in the files' order, so while the biggest
    file still uploaded, the other workers went on with every remaining file (a cancel, raised
    after an object, did not stop the upload either). Now no object starts after a failure."""
    monkeypatch.setattr(s3t, "WORKERS", 2)
    m = _tree(tmp_path, {"big": 50, "bad": 40, "c": 30, "d": 20, "e": 10})
    client = _Client()
    t = s3t.S3Transport("bucket", "p", client=client)
    with pytest.raises(HostUnreachable):
        t.upload_tree(tmp_path, "m/1", m)
    assert sorted(k.rsplit("/", 1)[-1] for k in client.puts) == ["bad", "big"], client.puts


def test_a_forced_stop_as_a_worker_starts_returns_only_after_its_put(tmp_path, monkeypatch):
    """A forced stop (KeyboardInterrupt) while the worker thread starts: ``upload_tree`` raised
    at once while the PUT went on (after publish's clean-up and the lock's release: a
    ``saved_model.pb`` alone under a removed version). Now the PUT returns first."""
    real_start, started, entered, returned, done = (threading.Thread.start, [], threading.Event(),
                                                    threading.Event(), [])

    def start(self):
        real_start(self)
        started.append(self)
        if len(started) == 1:
            assert entered.wait(5), "the worker never began its PUT"
            raise KeyboardInterrupt

    class Client:
        def put_object(self, **kw):
            entered.set()
            returned.wait(2)         # in flight when upload_tree returned, if it did early
            done.append(returned.is_set())

    m = _tree(tmp_path, {"saved_model.pb": 5})
    t = s3t.S3Transport("bucket", "p", client=Client())
    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        t.upload_tree(tmp_path, "m/1", m)
    returned.set()
    monkeypatch.undo()
    for th in started:
        th.join(5)
    assert done == [False], "the PUT went on after upload_tree returned"
