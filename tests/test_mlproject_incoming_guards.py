"""Guards on incoming retraining data: the frozen held-out set never becomes training data, and an
S3 location reads exactly the batches a local folder of the same name would.

Held-out: every example of the held-out set is fingerprinted (the dense-rank pattern of its pixels,
so a copy scaled differently or saved as float64/without the channel axis is still recognised); a
batch holding any of them is refused with one line naming the file and the count, before an MLflow
run starts or anything is registered. Through the real ``mlops`` command line and the real MLflow
server of the session.

S3: ``s3://bucket/incoming`` is the folder ``incoming/`` (with its sub-folders: dated uploads), never
a sibling sharing the prefix such as ``incoming-rejected/...``. On the session's real SeaweedFS S3
server (no mocks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlops_common.errors import NotFoundError
from mlproject.batches import make_batch, read_batches, to_npz_bytes, write_batch
from mlproject.datasets import Arrays, load_partition
from mlproject.validation import DataError
from tests.fixtures.trained import train_version
from tests.helpers import error_lines, mlflow_client, run_mlops

REFUSAL = ("holds {n} examples of the digits held-out set: the gate would measure the model on data it "
           "trained on; remove them")


def _heldout() -> Arrays:
    return load_partition("digits").heldout


def _save(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels)
    return path


# ---------- held-out examples are never training data ----------

def test_retrain_on_the_heldout_set_is_refused_before_any_run(mlops_env, tmp_path):
    folder = tmp_path / "incoming"
    batch = Path(write_batch(_heldout(), str(folder / "batch-001.npz")))

    r = run_mlops("retrain", "--incoming", str(folder), "--epochs", "1")

    assert r.returncode == 2, r.stderr[-3000:]
    assert error_lines(r.stderr) == [f"error: {batch} {REFUSAL.format(n=450)} (nothing was trained or registered)"]
    assert "Traceback" not in r.stderr
    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []
    assert client.get_experiment_by_name(mlops_env["MLOPS_MODEL_NAME"]) is None   # no run either


def test_retrain_on_a_folder_holding_a_batch_twice_is_refused_before_any_run(mlops_env, tmp_path):
    """The same batch saved twice in the folder (s18-data): the retrain trained on both copies."""
    folder = tmp_path / "incoming"
    good = make_batch("good", load_partition("digits").pool, seed=1)
    first = write_batch(good, str(folder / "batch-001.npz"))
    again = write_batch(good, str(folder / "batch-001 (1).npz"))

    r = run_mlops("retrain", "--incoming", str(folder), "--epochs", "1")

    assert r.returncode == 2, r.stderr[-3000:]
    assert error_lines(r.stderr) == [f"error: invalid data in {first}: the same examples as {again} (a copy?), "
                                     f"which a retrain would learn twice; remove one of the two files (nothing "
                                     f"was trained or registered)"]
    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []
    assert client.get_experiment_by_name(mlops_env["MLOPS_MODEL_NAME"]) is None   # no run either


@pytest.mark.slow
def test_retrain_from_production_on_heldout_data_starts_no_run_and_registers_nothing(mlops_env, tmp_path):
    name = mlops_env["MLOPS_MODEL_NAME"]
    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    first = train_version(epochs=1)
    client.set_registered_model_alias(name, "production", str(first["version"]))
    experiment = client.get_experiment_by_name(name).experiment_id
    # A realistic mix: new samples from the pool plus a few held-out images slipped in.
    pool, heldout = load_partition("digits").pool, _heldout()
    mixed = Arrays(np.concatenate([pool.images[:100], heldout.images[10:17]]),
                   np.concatenate([pool.labels[:100], heldout.labels[10:17]]))
    batch = Path(write_batch(mixed, str(tmp_path / "incoming" / "batch-002.npz")))

    r = run_mlops("retrain", "--incoming", str(batch), "--epochs", "1")

    assert r.returncode == 2, r.stderr[-3000:]
    assert error_lines(r.stderr) == [f"error: {batch} {REFUSAL.format(n=7)} (nothing was trained or registered)"]
    runs = client.search_runs([experiment])
    assert [run.info.run_id for run in runs] == [first["run_id"]]
    assert [int(v.version) for v in client.search_model_versions(f"name='{name}'")] == [first["version"]]
    assert client.get_model_version_by_alias(name, "production").version == str(first["version"])


@pytest.mark.parametrize("variant", ["float32", "rescaled", "float64_no_channel", "relabelled"])
def test_heldout_copies_are_recognised_however_they_were_saved(tmp_path, variant):
    heldout = _heldout()
    images, labels = heldout.images[:40], heldout.labels[:40]
    if variant == "rescaled":          # 0..16 divided by 17 instead of 16: other values, same image
        images = (images * np.float32(16.0) / np.float32(17.0)).astype(np.float32)
    elif variant == "float64_no_channel":
        images = (images[..., 0].astype(np.float64) * 16.0 / 16.0).astype(np.float32)
    elif variant == "relabelled":      # the held-out images with other labels are still held-out images
        labels = (labels + 1) % 10
    pool = load_partition("digits").pool
    new = pool.images[20:50, ..., 0] if images.ndim == 3 else pool.images[20:50]
    _save(tmp_path / "a-new.npz", pool.images[:20], pool.labels[:20])
    bad = _save(tmp_path / "b-mixed.npz", np.concatenate([new, images]),
                np.concatenate([pool.labels[20:50], labels]))

    with pytest.raises(DataError) as err:
        read_batches(str(tmp_path), "digits")
    assert err.value.message == f"{bad} {REFUSAL.format(n=40)}"


def test_batches_of_new_data_are_not_mistaken_for_heldout(tmp_path):
    pool = load_partition("digits").pool
    for kind in ("good", "bad"):
        write_batch(make_batch(kind, pool, seed=3), str(tmp_path / f"{kind}.npz"))
    got = read_batches(str(tmp_path), "digits")
    assert [len(b.data) for b in got] == [3600, 450]   # bad.npz, good.npz


def test_data_validate_reports_heldout_examples_like_retrain_does(tmp_path):
    folder = tmp_path / "incoming"
    pool = load_partition("digits").pool
    write_batch(make_batch("good", pool, seed=1), str(folder / "batch-001.npz"))
    leaked = Path(write_batch(Arrays(_heldout().images[:1], _heldout().labels[:1]), str(folder / "batch-002.npz")))

    r = run_mlops("data", "validate", str(folder), "--json")

    assert r.returncode == 2, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert [(b["ok"], b["n"]) for b in report["batches"]] == [(True, 450), (False, None)]
    one = ("holds 1 example of the digits held-out set: the gate would measure the model on data it trained on; "
           "remove it")
    assert error_lines(r.stderr) == [f"error: {leaked} {one}"]


# ---------- an S3 location reads its folder, not the siblings sharing its prefix ----------

LAYOUT = {   # key -> what is there
    "incoming/batch-001.npz": "batch",
    "incoming/batch-002.npz": "batch",
    "incoming/notes.txt": "text",
    "incoming/2026-01/batch-000.npz": "batch",          # a dated sub-folder: read
    "incoming-rejected/batch-009.npz": "batch",         # a sibling sharing the prefix: never read
    "incoming.npz-old/batch-008.npz": "batch",
    "top.npz": "batch",
}


def _batch_bytes(seed: int) -> bytes:
    pool = load_partition("digits").pool
    return to_npz_bytes(pool.take(np.arange(seed, seed + 5)))


@pytest.fixture(scope="module")
def layout_bucket(s3_server):
    """The tree above in a bucket; returns its name."""
    bucket = s3_server.make_bucket("incoming-guards")
    c = s3_server.client()
    for i, (key, what) in enumerate(sorted(LAYOUT.items())):
        c.put_object(Bucket=bucket, Key=key, Body=_batch_bytes(i) if what == "batch" else b"not a batch")
    return bucket


def _names(batches, root: str) -> list[str]:
    return [b.source[len(root):].lstrip("/") for b in batches]


FOLDER = ["incoming/2026-01/batch-000.npz", "incoming/batch-001.npz", "incoming/batch-002.npz"]


@pytest.mark.parametrize("location", ["incoming", "incoming/"])
def test_s3_prefix_reads_its_folder_and_never_a_sibling_sharing_the_prefix(s3_env, layout_bucket, location):
    got = read_batches(f"s3://{layout_bucket}/{location}", "digits")
    assert _names(got, f"s3://{layout_bucket}") == FOLDER


def test_s3_location_naming_a_npz_object_reads_that_object_only(s3_env, layout_bucket):
    (b,) = read_batches(f"s3://{layout_bucket}/incoming/batch-002.npz", "digits")
    assert b.source == f"s3://{layout_bucket}/incoming/batch-002.npz" and len(b.data) == 5


def test_s3_prefix_of_no_folder_finds_nothing_even_when_a_sibling_has_batches(s3_env, layout_bucket):
    with pytest.raises(NotFoundError) as err:
        read_batches(f"s3://{layout_bucket}/incoming-rej", "digits")     # only incoming-rejected/ exists
    assert err.value.message == (f"no .npz batches under s3://{layout_bucket}/incoming-rej/; "
                                 f"upload batches there first")


def test_cli_validate_on_an_s3_prefix_skips_its_siblings(s3_server, layout_bucket):
    r = run_mlops("data", "validate", f"s3://{layout_bucket}/incoming", "--json", env=s3_server.env())
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert [b["source"] for b in report["batches"]] == [f"s3://{layout_bucket}/{k}" for k in FOLDER]


def test_heldout_batch_on_s3_is_named_by_its_uri(s3_env, s3_server):
    bucket = s3_server.make_bucket("incoming-guards-heldout")
    s3_server.client().put_object(Bucket=bucket, Key="incoming/batch-001.npz", Body=to_npz_bytes(_heldout()))
    with pytest.raises(DataError) as err:
        read_batches(f"s3://{bucket}/incoming", "digits")
    assert err.value.message == f"s3://{bucket}/incoming/batch-001.npz {REFUSAL.format(n=450)}"
