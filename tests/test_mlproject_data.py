"""Data sets, frozen partition, fingerprints, batches and validation (fast: no TF, no MLflow)."""
from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest

from mlops_common.errors import ConfigError, NotFoundError
from mlproject import batches, metrics, validation
from mlproject.constants import BAD_BATCH_REPEATS, SPLITS
from mlproject.datasets import Arrays, fingerprint, load, load_partition, partition, train_validation_split
from mlproject.validation import DataError
from tests.helpers import run_mlops


def _index_set(a: Arrays) -> set[bytes]:
    return {row.tobytes() + bytes([int(y)]) for row, y in zip(a.images, a.labels)}


# ---------- base data and the frozen partition ----------

def test_digits_are_float32_images_in_unit_range():
    data = load("digits")
    assert data.images.dtype == np.float32
    assert data.images.shape == (1797, 8, 8, 1)
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert data.labels.dtype == np.int64 and set(np.unique(data.labels)) == set(range(10))


def test_digits_are_scikit_learns_own_read_without_importing_it():
    """The file scikit-learn ships, byte for byte what ``load_digits`` gives; and a process that
    only loads the data never pays for importing scikit-learn."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    data, ref = load("digits"), load_digits()
    assert np.array_equal(data.images.reshape(-1, 64) * 16, ref.data)
    assert np.array_equal(data.labels, ref.target)
    probe = ("import sys; from mlproject.datasets import load; load('digits'); "
             "print('sklearn' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_partition_sizes_come_from_the_constants_and_are_disjoint():
    part = load_partition("digits")
    sizes = SPLITS["digits"]
    assert (len(part.heldout), len(part.pool), len(part.base)) == (sizes.heldout, sizes.pool,
                                                                   1797 - sizes.heldout - sizes.pool)
    total = np.concatenate([part.base.images, part.pool.images, part.heldout.images])
    assert sorted(map(bytes, np.ascontiguousarray(total).reshape(len(total), -1))) == \
        sorted(map(bytes, np.ascontiguousarray(load("digits").images).reshape(1797, -1)))


def test_heldout_is_frozen_and_independent_of_the_training_seed():
    part = load_partition("digits")
    again = partition(load("digits"), SPLITS["digits"])
    assert fingerprint(again.heldout) == fingerprint(part.heldout)
    # The training seed only splits the training data; it never touches the held-out set.
    a_train, a_val = train_validation_split(part.base, seed=1)
    b_train, b_val = train_validation_split(part.base, seed=2)
    assert fingerprint(a_val) != fingerprint(b_val)
    assert _index_set(a_train) | _index_set(a_val) == _index_set(part.base)
    assert not (_index_set(a_train) | _index_set(a_val)) & _index_set(part.heldout)
    assert fingerprint(load_partition("digits").heldout) == fingerprint(part.heldout)


def test_shared_partition_arrays_are_read_only():
    with pytest.raises(ValueError):
        load_partition("digits").heldout.labels[0] = 3


def test_fingerprint_changes_with_any_pixel_or_label():
    part = load_partition("digits")
    base = Arrays(part.base.images.copy(), part.base.labels.copy())
    same = Arrays(part.base.images.copy(), part.base.labels.copy())
    assert fingerprint(base) == fingerprint(same)
    assert len(fingerprint(base)) == 64
    pixel = Arrays(base.images.copy(), base.labels)
    pixel.images[3, 2, 2, 0] = np.float32(0.5) if pixel.images[3, 2, 2, 0] != 0.5 else np.float32(0.25)
    label = Arrays(base.images, base.labels.copy())
    label.labels[0] = (label.labels[0] + 1) % 10
    assert len({fingerprint(base), fingerprint(pixel), fingerprint(label)}) == 3


def test_unknown_dataset_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown data set 'mnist'; choose one of: digits, fashion_mnist"):
        load("mnist")


# ---------- batches ----------

def test_good_batch_is_the_held_back_pool_with_true_labels():
    pool = load_partition("digits").pool
    good = batches.make_batch("good", pool, seed=3)
    assert len(good) == len(pool)
    assert _index_set(good) == _index_set(pool)          # same (image, label) pairs
    assert not _index_set(good) & _index_set(load_partition("digits").heldout)


def test_bad_batch_repeats_pool_images_with_independently_shuffled_labels():
    pool = load_partition("digits").pool
    bad = batches.make_batch("bad", pool, seed=3)
    n = len(pool)
    assert len(bad) == BAD_BATCH_REPEATS * n
    for r in range(BAD_BATCH_REPEATS):
        chunk = slice(r * n, (r + 1) * n)
        np.testing.assert_array_equal(bad.images[chunk], pool.images)
        assert sorted(bad.labels[chunk]) == sorted(pool.labels)      # same label distribution
    assert (bad.labels == np.tile(pool.labels, BAD_BATCH_REPEATS)).mean() < 0.25  # ~chance agreement
    assert not np.array_equal(bad.labels[:n], bad.labels[n:2 * n])   # each repeat shuffled anew
    assert fingerprint(batches.make_batch("bad", pool, seed=3)) == fingerprint(bad)  # seeded


def test_unknown_batch_kind_is_rejected():
    with pytest.raises(ConfigError, match="unknown batch kind 'ugly'"):
        batches.make_batch("ugly", load_partition("digits").pool, seed=1)


def test_write_batch_round_trips_and_leaves_no_temp_files(tmp_path):
    good = batches.make_batch("good", load_partition("digits").pool, seed=1)
    where = batches.write_batch(good, str(tmp_path / "sub" / "good.npz"))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["good.npz"]
    (back,) = batches.read_batches(where, "digits")
    assert back.source == where
    assert fingerprint(back.data) == fingerprint(good)
    with np.load(where, allow_pickle=False) as z:
        assert z["images"].dtype == np.float32 and z["labels"].dtype == np.int64
    with pytest.raises(ConfigError, match="must end in .npz"):
        batches.write_batch(good, str(tmp_path / "good.bin"))


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid(n=5, h=8, w=8):
    rng = np.random.default_rng(0)
    return rng.random((n, h, w, 1), dtype=np.float32), rng.integers(0, 10, n)


# ---------- validation (plain function) ----------

@pytest.mark.parametrize("case, expected", [
    ("wrong_shape", "images have shape (5, 7, 8, 1), expected (N, 8, 8, 1) or (N, 8, 8)"),
    ("label_11", "labels contain 11 (expected integers 0..9)"),
    ("nan", "images contain 2 NaN/infinite values"),
    ("empty", "empty batch (0 examples)"),
    ("float64", "images have dtype float64, expected float32 in [0, 1]"),
    ("out_of_range", "image values span [0, 255], expected [0, 1]"),
    ("float_labels", "labels have dtype float64, expected integers 0..9"),
    ("count_mismatch", "4 labels for 5 images"),
    ("two_channels", "images have shape (5, 8, 8, 2)"),
    # found by hand mutation (2026-12-05, fifth stop): each bound below could be dropped unnoticed
    ("negative_pixel", "image values span [-0.5, "),
    ("label_10", "labels contain 10 (expected integers 0..9)"),
    ("label_negative", "labels contain -1 (expected integers 0..9)"),
    ("labels_2d", "labels have shape (5, 1), expected (N,)"),
])
def test_validation_names_each_problem(case, expected):
    images, labels = _valid()
    if case == "wrong_shape":
        images = images[:, :7]
    elif case == "label_11":
        labels = labels.copy()
        labels[2] = 11
    elif case == "nan":
        images = images.copy()
        images[0, 0, 0, 0] = np.nan
        images[1, 1, 1, 0] = np.inf
    elif case == "empty":
        images, labels = images[:0], labels[:0]
    elif case == "float64":
        images = images.astype(np.float64)
    elif case == "out_of_range":
        images = images.copy()
        images[0, 0, 0, 0] = 255
        images[0, 0, 1, 0] = 0
    elif case == "float_labels":
        labels = labels.astype(np.float64)
    elif case == "count_mismatch":
        labels = labels[:4]
    elif case == "two_channels":
        images = np.concatenate([images, images], axis=3)
    elif case == "negative_pixel":
        images = images.copy()
        images[0, 0, 0, 0] = -0.5
    elif case in ("label_10", "label_negative"):
        labels = labels.copy()
        labels[2] = 10 if case == "label_10" else -1
    elif case == "labels_2d":
        labels = labels[:, None]
    found = validation.problems(images, labels, image_size=(8, 8))
    assert any(expected in p for p in found), found


def test_valid_batches_have_no_problems_with_or_without_channel_axis():
    images, labels = _valid()
    assert validation.problems(images, labels, image_size=(8, 8)) == []
    assert validation.problems(images[..., 0], labels, image_size=(8, 8)) == []
    assert validation.problems(images, labels.astype(np.uint8), image_size=(8, 8)) == []   # keras' own labels
    pool = load_partition("digits").pool
    bad = batches.make_batch("bad", pool, seed=1)   # noisy labels, but well-formed
    assert validation.problems(bad.images, bad.labels, image_size=(8, 8)) == []


def test_check_raises_one_line_naming_the_source():
    images, labels = _valid()
    labels[0] = 11
    with pytest.raises(DataError) as err:
        validation.check("/data/new/b1.npz", images, labels, image_size=(8, 8))
    msg = err.value.message
    assert "\n" not in msg
    assert msg.startswith("invalid data in /data/new/b1.npz: labels contain 11")


def test_heldout_index_leaves_out_what_may_be_trained_on_and_counts_copies_in_one_line():
    """Found by hand mutation (2026-12-05, fifth stop): dropping ``allowed`` (the pool's own
    duplicates of held-out images) or the singular wording went unnoticed."""
    rng = np.random.default_rng(3)
    held = rng.random((4, 8, 8, 1), dtype=np.float32)
    index = validation.ExampleIndex.of(held, allowed=held[:1])
    assert index.count(held[:1]) == 0 and index.count(held[1:]) == 3
    with pytest.raises(DataError, match=r"^b\.npz holds 1 example of the digits held-out set: .*; remove it$"):
        validation.check_not_heldout("b.npz", held[1:2], index, dataset="digits")
    with pytest.raises(DataError, match=r"^b\.npz holds 2 examples of .*; remove them$"):
        validation.check_not_heldout("b.npz", held[1:3], index, dataset="digits")


def test_split_sizes_that_leave_no_base_are_refused_and_validation_never_overlaps_training():
    from mlproject.constants import SplitSizes

    data = Arrays(np.zeros((10, 8, 8, 1), np.float32), np.arange(10))
    with pytest.raises(ValueError, match="no base data"):
        partition(data, SplitSizes(heldout=6, pool=4))
    train, val = train_validation_split(data, seed=1, fraction=0.3)
    assert len(train) + len(val) == 10 and len(val) == 3
    assert not set(train.labels.tolist()) & set(val.labels.tolist())
    tiny_train, tiny_val = train_validation_split(data.take(np.arange(3)), seed=1, fraction=0.1)
    assert (len(tiny_train), len(tiny_val)) == (2, 1)      # Keras' per-epoch validation needs one example


def test_an_s3_location_with_a_port_is_refused_and_a_bad_batch_repeats_at_least_once():
    with pytest.raises(ConfigError, match="without a user name, password or port") as err:
        batches.check_location("s3://bucket:9000/incoming")
    assert "9000" not in err.value.message
    with pytest.raises(ConfigError, match="--repeats must be at least 1"):
        batches.make_batch("bad", load_partition("digits").pool, seed=1, repeats=0)
    with pytest.raises(ConfigError, match="a S3:// URL is not supported; .*s3://bucket/prefix \\(in lower case\\)"):
        batches.check_location("S3://bucket/incoming")
    images, labels = _valid()
    labels[:3] = [12, 11, -2]
    assert "labels contain -2, 11, 12 (expected" in "; ".join(validation.problems(images, labels, image_size=(8, 8)))


def test_validate_counts_the_other_invalid_files_and_repeats_is_for_bad_batches_only(tmp_path):
    """Found by hand mutation (2026-12-05, fifth stop): neither was checked."""
    from argparse import Namespace

    from mlops.commands import data as data_commands

    images, labels = _valid()
    _save(tmp_path / "a.npz", images=images, labels=labels + 20)
    _save(tmp_path / "b.npz", images=images * 300, labels=labels)
    _save(tmp_path / "c.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=r"a\.npz: labels contain .*; fix or remove that file \(1 more invalid file"):
        data_commands.cmd_validate(Namespace(location=str(tmp_path), dataset="digits", json=False))
    with pytest.raises(ConfigError, match="--repeats applies to --kind bad only"):
        data_commands.cmd_make_batch(Namespace(kind="good", out=str(tmp_path / "g.npz"), dataset="digits", seed=1,
                                               repeats=2, json=False))
    assert not (tmp_path / "g.npz").exists()


# ---------- reading batches from a folder ----------

def test_read_batches_reads_a_folder_in_name_order_and_adds_the_channel_axis(tmp_path):
    images, labels = _valid()
    _save(tmp_path / "b.npz", images=images[..., 0], labels=labels)
    _save(tmp_path / "a.npz", images=images[:2], labels=labels[:2])
    (tmp_path / "notes.txt").write_text("ignored")
    got = batches.read_batches(str(tmp_path), "digits")
    assert [b.source.rsplit("/", 1)[1] for b in got] == ["a.npz", "b.npz"]
    assert got[1].data.images.shape == (5, 8, 8, 1)


def test_a_batch_named_in_upper_case_is_read_not_skipped(tmp_path):
    """Found by review (2026-12-07, eighteenth stop): ``BATCH.NPZ`` (a Windows export, a camera's
    upload tool) in an incoming folder was skipped without a word: the retrain trained on the other
    batches, or said the folder had none. numpy reads it whatever the case of its suffix."""
    images, labels = _valid()
    for name, part in (("A.NPZ", slice(0, 2)), ("b.Npz", slice(2, None))):
        with open(tmp_path / name, "wb") as f:     # a path: np.savez would append ".npz"
            np.savez(f, images=images[part], labels=labels[part])
    got = batches.read_batches(str(tmp_path), "digits")
    assert [b.source.rsplit("/", 1)[1] for b in got] == ["A.NPZ", "b.Npz"]
    assert sum(len(b.data.labels) for b in got) == len(labels)


@pytest.mark.parametrize("content, expected", [
    (b"", "not a .npz file"),
    (b"garbage", "not a .npz file"),
    ("truncated", "cannot read it as a .npz batch"),
    ("missing_labels", "no 'labels' array (found: images)"),
    ("pickled", "holds object (pickled) arrays"),
    # found by a bad-input sweep: tracebacks (AttributeError on bytes, a 23 TiB allocation)
    ("not_npy_members", "'images' is not a numpy array (not a .npy inside the .npz)"),
    ("huge_header", "declares an array too large to load"),
    # found by a sweep: numpy's "header too long" was reported as pickled arrays
    ("long_header", "has a .npy header over numpy's 10,000-byte limit"),
])
def test_unreadable_batches_are_rejected_by_name(tmp_path, content, expected):
    import io
    import zipfile

    path = tmp_path / "incoming.npz"
    images, labels = _valid()
    if content == "not_npy_members":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("images.npy", b"these are not array bytes")
            z.writestr("labels.npy", b"nor these")
    elif content == "huge_header":
        header = {"descr": "<f4", "fortran_order": False, "shape": (100_000_000_000, 8, 8, 1)}
        raw = io.BytesIO()
        np.lib.format.write_array_header_1_0(raw, header)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("images.npy", raw.getvalue() + b"\0" * 64)
            z.writestr("labels.npy", raw.getvalue())
    elif content == "long_header":
        head = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }" + " " * 30_000 + "\n"
        raw = np.lib.format.magic(2, 0) + len(head).to_bytes(4, "little") + head.encode() + b"\0" * 4
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("images.npy", raw)
            z.writestr("labels.npy", raw)
    elif content == "truncated":
        _save(path, images=images, labels=labels)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "missing_labels":
        _save(path, images=images)
    elif content == "pickled":
        _save(path, images=images, labels=np.array([{"a": 1}] * 5, dtype=object))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        batches.read_batches(str(path), "digits")
    assert err.value.message.startswith(f"invalid data in {path}: ")
    assert expected in err.value.message and "\n" not in err.value.message


def test_missing_or_empty_locations_are_clear(tmp_path):
    with pytest.raises(NotFoundError, match="no .npz batches in folder"):
        batches.read_batches(str(tmp_path), "digits")
    with pytest.raises(NotFoundError, match="does not exist"):
        batches.read_batches(str(tmp_path / "nope"), "digits")


def _special(tmp_path, kind: str) -> str:
    import os
    import socket

    if kind == "fifo":
        os.mkfifo(tmp_path / "x.npz")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "x.npz"))
        sock.close()                     # the socket file stays
    else:
        return "/dev/null"
    return str(tmp_path / "x.npz")


@pytest.mark.parametrize("kind, what", [("fifo", "a FIFO (named pipe)"), ("socket", "a socket"),
                                        ("chardev", "a character device")])
def test_an_incoming_location_that_is_no_regular_file_says_what_it_is(tmp_path, kind, what):
    """A FIFO, a socket or /dev/null as --incoming (retrain, prepare_data) was "does not exist":
    now it says what it is and what to give instead, without opening it (a FIFO would block)."""
    from mlproject.train import prepare_data

    location = _special(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        prepare_data("digits", location)
    assert err.value.message == (f"incoming data '{location}' is {what}, not a regular file; give a .npz "
                                 f"file, a folder of them, or s3://bucket/prefix")


def test_data_validate_on_a_fifo_is_refused_without_opening_it(tmp_path):
    """`mlops data validate FIFO`: one line naming it, never a read that waits for a writer (bounded by
    the subprocess timeout)."""
    fifo = _special(tmp_path, "fifo")
    r = run_mlops("data", "validate", fifo, timeout=120)
    assert r.returncode != 0 and r.stdout == "", r.stderr
    assert r.stderr.strip() == (f"error: incoming data '{fifo}' is a FIFO (named pipe), not a regular file; "
                                f"give a .npz file, a folder of them, or s3://bucket/prefix"), r.stderr



@pytest.mark.parametrize("entry", ["dangling link", "fifo"])
def test_a_batch_of_a_folder_that_is_no_file_is_refused_not_skipped(tmp_path, entry):
    """A folder's ``*.npz`` that is a link to a missing file (git-annex or DVC content not fetched)
    or a FIFO was left out without a word: the retrain trained on the other batches, `data validate`
    said every batch was valid. Now it is one line naming it, for retrain and validate alike."""
    import os

    from mlproject.train import prepare_data

    images, labels = _valid()
    _save(tmp_path / "a.npz", images=images, labels=labels)
    odd = tmp_path / "b.npz"
    if entry == "fifo":
        os.mkfifo(odd)
        expected = f"incoming data '{odd}' is a FIFO (named pipe), not a .npz file; remove it from the folder"
    else:
        odd.symlink_to("../.git/annex/objects/b.npz")
        expected = (f"incoming data '{odd}' is a symbolic link to '../.git/annex/objects/b.npz', which does not "
                    f"exist; fetch the file it points to or remove the link")
    for read in (lambda: prepare_data("digits", str(tmp_path)),
                 lambda: batches.inspect_batches(str(tmp_path), "digits")):
        with pytest.raises(ConfigError) as err:
            read()
        assert err.value.message == expected
    (tmp_path / "sub.npz").mkdir()           # a folder named like a batch is still not read
    odd.unlink()
    assert [b.source for b in batches.read_batches(str(tmp_path), "digits")] == [str(tmp_path / "a.npz")]

# ---------- metrics (plain function) ----------

def test_metrics_from_probabilities():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 1, 1, 2])
    s = metrics.summarize(probs, labels, 3)
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.3, 0.8])), rel=1e-6)
    assert s["per_class_accuracy"] == {"0": 1.0, "1": 0.5, "2": 1.0}
    assert s["per_class_count"] == {"0": 1, "1": 2, "2": 1}
    np.testing.assert_array_equal(metrics.confusion(labels, probs.argmax(1), 3),
                                  [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert s["non_probability_outputs"] == 0


def test_loss_is_clipped_like_keras_a_missing_class_scores_0_and_no_examples_is_an_error():
    """Found by hand mutation (2026-12-05, fifth stop): none of these was checked."""
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    s = metrics.summarize(probs, np.array([1, 1]), 3)
    assert s["loss"] == pytest.approx(-np.log(metrics.EPSILON) / 2)      # finite, not inf
    assert s["per_class_accuracy"] == {"0": 0.0, "1": 0.5, "2": 0.0}
    assert s["per_class_count"] == {"0": 0, "1": 2, "2": 0}
    with pytest.raises(ValueError, match="no examples to evaluate"):
        metrics.summarize(probs[:0], np.array([], np.int64), 3)


def test_rows_that_are_not_probabilities_are_counted():
    """The gate's ``class_probabilities`` rule rests on this count (docs/architecture.md)."""
    probs = np.array([[0.2, 0.8],          # a distribution
                      [0.5, 0.5005],       # sums to 1 within the slack
                      [np.nan, 1.0],       # not finite
                      [-0.5, 1.5],         # sums to 1, values outside [0, 1]
                      [0.3, 0.3],          # values in [0, 1], sum not 1
                      [3.0, -2.0]],        # logits summing to 1
                     np.float32)
    assert metrics.non_probability_rows(probs) == 4
    assert metrics.summarize(probs, np.array([1, 1, 1, 1, 1, 0]), 2)["non_probability_outputs"] == 4


# ---------- training parameters (plain data) ----------

@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "--epochs must be at least 1, got 0"),
    ("batch_size", -2, "--batch-size must be between 1 and 2147483647 \\(2\\*\\*31 - 1\\), got -2"),
    ("batch_size", 0, "--batch-size must be between 1 and 2147483647"),
    ("batch_size", 10**20, "--batch-size must be between 1 and 2147483647"),   # was a TensorFlow traceback
    ("learning_rate", 0.0, "--learning-rate must be a positive number, got 0.0"),
    ("learning_rate", float("inf"), "--learning-rate must be a positive number, got inf"),
    ("learning_rate", float("nan"), "--learning-rate must be a positive number, got nan"),
    ("learning_rate", 1e-300, "--learning-rate 1e-300 is 0 in float32"),    # registered an untrained model
    # started a run that diverged in its first epoch (a FAILED run left), after numpy's overflow warning
    ("learning_rate", 1e39, "--learning-rate 1e\\+39 is infinite in float32"),
    ("seed", 2**32, "--seed must be between 0 and 4294967295"),
    ("seed", -1, "--seed must be between 0 and 4294967295"),
    ("dataset", "cifar", "unknown data set 'cifar'"),
])
def test_training_parameters_are_checked_before_anything_runs(field, value, message):
    from mlproject.train import TrainParams

    assert TrainParams().checked() == TrainParams()
    assert TrainParams(seed=2**32 - 1, batch_size=1).checked().seed == 2**32 - 1
    with pytest.raises(ConfigError, match=message), warnings.catch_warnings():
        warnings.simplefilter("error")      # one line, not numpy's warning before it
        TrainParams(**{field: value}).checked()


# ---------- the command line ----------

def test_cli_make_batch_and_validate(tmp_path):
    r = run_mlops("data", "make-batch", "--kind", "bad", "--out", str(tmp_path), "--seed", "2", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["kind"] == "bad" and made["n"] == BAD_BATCH_REPEATS * SPLITS["digits"].pool
    assert made["path"] == str(tmp_path / "bad-digits-seed2.npz")
    r = run_mlops("data", "make-batch", "--kind", "good", "--out", str(tmp_path / "good.npz"))
    assert r.returncode == 0 and "wrote good batch: 450 digits examples" in r.stdout
    r = run_mlops("data", "validate", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and [b["n"] for b in report["batches"]] == [3600, 450]


def test_cli_validate_rejects_a_malformed_batch_in_one_line(tmp_path):
    images, labels = _valid()
    labels[1] = 11
    _save(tmp_path / "b.npz", images=images, labels=labels)
    r = run_mlops("data", "validate", str(tmp_path / "b.npz"))
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: invalid data in {tmp_path / 'b.npz'}: labels contain 11 (expected integers "
                      f"0..9); fix or remove that file"]
    assert "FAIL" in r.stdout


def test_cli_make_batch_refuses_a_wrong_suffix_without_writing(tmp_path):
    r = run_mlops("data", "make-batch", "--kind", "good", "--out", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "must end in .npz" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_npz_written_by_make_batch_is_a_plain_zip_without_pickles(tmp_path):
    r = run_mlops("data", "make-batch", "--kind", "good", "--out", str(tmp_path / "g.npz"))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "g.npz") as z:
        assert sorted(z.namelist()) == ["images.npy", "labels.npy"]


def test_first_non_finite_names_the_earliest_epoch_that_diverged():
    from mlproject.model import first_non_finite

    assert first_non_finite({"loss": [2.0, 1.0], "val_loss": [2.1, 1.2]}) is None
    assert first_non_finite({}) is None
    assert first_non_finite({"loss": [2.0, 1e300, float("inf")], "val_loss": [2.1, float("nan"), 3.0]}) \
        == (1, "val_loss", pytest.approx(float("nan"), nan_ok=True))
    assert first_non_finite({"loss": [float("nan")], "val_loss": [float("nan")]})[:2] == (0, "loss")


def _zip_with(path, mutate) -> bytes:
    """A valid batch whose zip headers ``mutate`` edits (as another tool or a damaged copy would)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 8, 8, 1), np.float32), labels=np.array([0, 1]))
    raw = bytearray(buf.getvalue())
    mutate(raw)
    path.write_bytes(bytes(raw))
    return bytes(raw)


def _set_encrypted(raw: bytearray) -> None:
    raw[6] |= 1                                   # local header: general purpose flag, bit 0
    central = raw.find(b"PK\x01\x02")
    raw[central + 8] |= 1                         # central directory: the same flag


def _unknown_method(raw: bytearray) -> None:
    raw[8] = 99                                   # local header: compression method
    central = raw.find(b"PK\x01\x02")
    raw[central + 10] = 99


@pytest.mark.parametrize("mutate, words", [(_set_encrypted, "encrypted"), (_unknown_method, "compression method")])
def test_a_zip_numpy_cannot_open_is_one_line_naming_the_file(tmp_path, mutate, words):
    """Found by a sweep (2026-12-04): an encrypted member or an unknown compression method was a
    RuntimeError / NotImplementedError traceback in `retrain` and `data validate`."""
    raw = _zip_with(tmp_path / "odd.npz", mutate)
    with pytest.raises(DataError, match=f"invalid data in odd.npz: cannot read it as a .npz batch \\(.*{words}"):
        batches.parse_npz("odd.npz", raw)


def test_incoming_paths_that_cannot_be_read_say_so_in_one_line(tmp_path):
    """Found by a sweep (2026-12-04): a name too long and an unknown ~user were tracebacks."""
    with pytest.raises(ConfigError, match="cannot read it"):
        batches.read_batches(str(tmp_path / ("a" * 300 + ".npz")), "digits")
    with pytest.raises(ConfigError, match="'~no-such-user-mlops' is not a user with a home directory"):
        batches.read_batches("~no-such-user-mlops/x.npz", "digits")
    with pytest.raises(ConfigError, match="must end in .npz"):        # S3 keys too: a retrain reads only *.npz
        batches.write_batch(batches.Arrays(np.zeros((1, 8, 8, 1), np.float32), np.array([0])), "s3://b/x.txt")


def test_an_s3_endpoint_without_its_scheme_is_one_line(monkeypatch):
    """Found by a sweep (2026-12-04): boto3's "Invalid endpoint" ValueError traceback."""
    from mlops_common import s3

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "127.0.0.1:8333")
    with pytest.raises(ConfigError, match="is not an http\\(s\\) URL; write it with its scheme, e.g. "
                                          "http://127.0.0.1:8333"):
        s3.client()
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "minio:hunter2secret@127.0.0.1:8333")
    with pytest.raises(ConfigError) as e:
        s3.client()
    assert "hunter2secret" not in str(e.value) and str(e.value).endswith("e.g. http://127.0.0.1:8333")


@pytest.mark.parametrize("endpoint, problem", [
    ("http://", "it names no host"),
    ("http://minio:hunter2secret@[::1", "Invalid IPv6 URL"),
    ("https://s3 .example.com", "a space"),
    ("http://minio:hunter2secret@127.0.0.1:8333x", "Port could not be cast to integer value"),
    ("http://127.0.0.1:99999", "Port out of range"),
])
def test_an_s3_endpoint_boto3_cannot_use_is_one_line_without_its_password(monkeypatch, endpoint, problem):
    """Found by review (2026-12-05, third stop): ``http://``, an unclosed ``[``, a space were boto3's
    ValueError traceback out of ``mlops data validate`` / ``retrain`` / an S3 host; a port that is
    not a number said only "S3 ... failed: EndpointResolutionError"."""
    from mlops_common import s3

    for var in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
        monkeypatch.setenv(var, endpoint)
        with pytest.raises(ConfigError) as e:
            s3.client()
        assert "MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL is not a usable URL" in e.value.message
        assert problem in e.value.message and "hunter2secret" not in e.value.message


@pytest.mark.parametrize("location", ["https://user:hunter2secret@example.com/b.npz",
                                      "HTTPS://hunter2secret@example.com/new/",
                                      "s3://user:hunter2secret@bucket/b.npz"])
def test_a_url_is_refused_without_echoing_it_and_nothing_is_written(location, tmp_path):
    """Found by review (2026-12-05, third stop): ``make-batch --out https://user:pw@host/b.npz``
    wrote the batch to the local folder ``./https:/user:pw@host/`` and exited 0 (the password on disk
    and on stdout); ``data validate`` and ``retrain --incoming`` read it as that path and echoed the
    password ("does not exist"), an ``s3://user:pw@bucket`` with botocore's bucket-name error."""
    from mlproject.train import prepare_data
    from tests.fixtures.faults import one_error_line
    from tests.helpers import REPO

    for argv in (["data", "make-batch", "--kind", "good", "--out", location], ["data", "validate", location]):
        r = run_mlops(*argv, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and "s3://bucket/prefix" in line, line
        assert "hunter2secret" not in r.stdout + r.stderr
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError) as e:
        prepare_data("digits", location)
    assert "hunter2secret" not in e.value.message


def test_an_s3_location_botocore_refuses_to_send_says_to_check_the_bucket_name(monkeypatch):
    """Found by a sweep (2026-12-04): "S3 ... failed: ParamValidationError", with nothing to fix."""
    import boto3

    # boto3's default session keeps the first credentials it resolves: these fake ones must not
    # outlive the test (every later S3 test in this worker was refused with InvalidAccessKeyId)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for var, value in (("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_ACCESS_KEY_ID", "x"),
                       ("AWS_SECRET_ACCESS_KEY", "y")):
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=r"not a valid S3 location \(Parameter validation failed.*check the "
                                          r"bucket name in the s3:// URL"):
        batches.read_batches("s3://Bad_Bucket!/incoming", "digits")


def test_a_relative_incoming_path_is_recorded_absolute(tmp_path, monkeypatch):
    """Found by a sweep (2026-12-04): params, tags and the run's input said `incoming/batch.npz`,
    which tells nobody where the data was (and `mlflow run` reads it from the project folder)."""
    from mlproject.train import prepare_data

    (tmp_path / "incoming").mkdir()
    batches.write_batch(batches.make_batch("good", load_partition("digits").pool, seed=1),
                        str(tmp_path / "incoming" / "batch.npz"))
    monkeypatch.chdir(tmp_path)
    data = prepare_data("digits", "incoming/batch.npz")
    assert data.incoming_location == str(tmp_path / "incoming" / "batch.npz")
    assert [b.source for b in data.incoming] == [str(tmp_path / "incoming" / "batch.npz")]
    with pytest.raises(ConfigError, match="'~no-such-user-mlops' is not a user with a home directory"):
        prepare_data("digits", "~no-such-user-mlops/x.npz")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),      # printed a table of untrained models, exit 0
    (["--learning-rate", "0"], "--learning-rate must be a positive number"),
    (["--seeds", "1", "-1"], "--seed must be between 0 and 4294967295"),
    (["--dataset", "mnist"], "unknown data set 'mnist'"),
    (["--epochs", "1", "--repeats", "0"], "--repeats must be at least 1, got 0"),   # a traceback after training
])
def test_calibrate_refuses_bad_parameters_in_one_line_before_training(argv, message, capsys, monkeypatch):
    from mlproject import calibrate, train

    def no_training(*args, **kwargs):
        raise AssertionError("trained with a bad parameter")

    monkeypatch.setattr(train, "fit_model", no_training)
    with pytest.raises(SystemExit) as stopped:
        calibrate.main(argv if "--seeds" in argv else ["--seeds", "1", *argv])
    assert stopped.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert line.startswith("python -m mlproject.calibrate: error: ") and message in line, line


def test_a_calibration_whose_training_diverges_is_one_line_not_a_traceback(capsys):
    """Found by a review (2026-12-07, nineteenth stop): `--learning-rate 1e30` passes the checks
    (finite in float32), the training diverges, and `fit_model`'s one line came out as a traceback
    (so would Fashion-MNIST that cannot be downloaded)."""
    from mlproject import calibrate

    code = calibrate.main(["--seeds", "1", "--epochs", "1", "--learning-rate", "1e30"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("python -m mlproject.calibrate: error: training diverged: loss became nan at epoch 1/1")
    assert "Traceback" not in err


def test_a_version_whose_dataset_tag_is_no_data_set_says_to_fix_the_tag(monkeypatch):
    """``mlops registry gate`` (which has no --dataset) and ``mlops evaluate`` said "unknown data set
    'mnist'; choose one of: digits, fashion_mnist" for a version tagged dataset=mnist: not where the
    name came from, nor what to change. Nothing is loaded."""
    from datetime import datetime, timezone

    from mlproject import evaluate
    from registry import versions

    info = versions.VersionInfo("clf", 3, "r1", "models:/m-1", {"dataset": "mnist"}, (), datetime.now(timezone.utc))
    monkeypatch.setattr(versions, "get_version", lambda model, version: info)
    monkeypatch.setattr(evaluate, "load_checked", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ConfigError) as refused:
        evaluate.evaluate_version("clf", 3)
    assert refused.value.message.startswith("version 3 of 'clf' has the dataset tag 'mnist', which is none of this "
                                            "project's data sets (digits, fashion_mnist): set the version's tag")


def test_a_retrain_from_a_production_whose_dataset_tag_is_no_data_set_says_to_fix_the_tag(monkeypatch):
    """A production tagged dataset=mnist made `mlops retrain` say "unknown data set 'mnist'; choose one
    of ...", and `--dataset digits` then "production was trained on 'mnist', not 'digits'". Now the line
    names production's tag; from scratch on a named data set stays allowed (its weights are not used)."""
    from datetime import datetime, timezone

    from mlproject import tracking, train
    from registry import client, versions

    info = versions.VersionInfo("clf", 2, "r1", "models:/m-1", {"dataset": "mnist"}, ("production",),
                                datetime.now(timezone.utc))
    monkeypatch.setattr(client, "tracking_client", lambda: None)
    monkeypatch.setattr(tracking, "production_version", lambda model: 2)
    monkeypatch.setattr(versions, "get_version", lambda model, version: info)
    for params, scratch in ((train.TrainParams(), False), (train.TrainParams(), True),
                            (train.TrainParams(dataset="digits"), False)):
        with pytest.raises(ConfigError, match="^production \\(version 2\\) of 'clf' has the dataset tag 'mnist', "
                                              "which is none of this project's data sets"):
            train.retrain_plan("clf", params, from_scratch=scratch)
    assert train.retrain_plan("clf", train.TrainParams(dataset="digits"), from_scratch=True) == \
        (train.TrainParams(dataset="digits"), None)


# ---------- eighteenth stop (s18-data) ----------

def test_a_batch_copied_into_the_folder_is_refused_not_trained_on_twice(tmp_path):
    """``a copy.npz`` beside ``a.npz`` (or the same examples saved shuffled): the retrain read both
    and learned those examples twice, ``data validate`` said both were fine."""
    images, labels = _valid()
    _save(tmp_path / "a.npz", images=images, labels=labels)
    order = [4, 2, 0, 1, 3]     # the same examples, saved in another order, compressed, without the channel axis
    np.savez_compressed(tmp_path / "a copy.npz", images=images[order, ..., 0], labels=labels[order].astype(np.int32))
    _save(tmp_path / "b.npz", images=images[:3], labels=labels[:3])
    with pytest.raises(DataError) as exc:
        batches.read_batches(str(tmp_path), "digits")
    assert exc.value.message == (f"invalid data in {tmp_path / 'a.npz'}: the same examples as "
                                 f"{tmp_path / 'a copy.npz'} (a copy?), which a retrain would learn twice; "
                                 f"remove one of the two files")
    r = run_mlops("data", "validate", str(tmp_path), "--json")
    assert r.returncode == 2 and [line for line in r.stderr.splitlines() if line.startswith("error:")] == \
        [f"error: {exc.value.message}"]
    report = json.loads(r.stdout)
    assert not report["ok"] and [b["ok"] for b in report["batches"]] == [True, False, True]
    (tmp_path / "a copy.npz").unlink()
    assert [len(b.data) for b in batches.read_batches(str(tmp_path), "digits")] == [5, 3]


def test_a_batch_too_large_for_memory_is_one_line_naming_it_not_a_traceback(tmp_path):
    """A batch larger than the memory the process may use: a ``MemoryError`` traceback from
    ``read_bytes`` (exit 1). The address space is limited so an 8 GiB (sparse) file cannot fit."""
    import resource
    import subprocess
    import sys

    from tests.helpers import REPO

    huge = tmp_path / "huge.npz"
    with open(huge, "wb") as f:
        f.write(b"PK")
        f.truncate(8 * 1024 ** 3)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 1024 ** 3, 4 * 1024 ** 3))

    r = subprocess.run([sys.executable, "-m", "mlops", "data", "validate", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [f"error: invalid data in {huge}: too large to load into this machine's memory "
                                     f"(a retrain loads every batch whole); split it into smaller batches"]


def test_data_validate_says_why_each_invalid_file_failed_not_only_the_first(tmp_path):
    """Every FAIL line said only the file's name: the error line gave the first file's problem and
    "(1 more invalid file(s))", so the others' reasons took a rerun with --json to learn."""
    images, labels = _valid()
    _save(tmp_path / "a.npz", images=images, labels=np.array([0, 1, 20, 3, 4]))
    _save(tmp_path / "b.npz", images=images * 300, labels=labels)
    held = load_partition("digits").heldout
    _save(tmp_path / "c.npz", images=held.images[:2], labels=held.labels[:2])
    _save(tmp_path / "d.npz", images=images, labels=labels)
    r = run_mlops("data", "validate", str(tmp_path))
    assert r.returncode == 2
    assert r.stdout.splitlines() == [
        f"FAIL {tmp_path / 'a.npz'}: labels contain 20 (expected integers 0..9); fix or remove that file",
        f"FAIL {tmp_path / 'b.npz'}: image values span [{(images * 300).min():.4g}, {(images * 300).max():.4g}], "
        f"expected [0, 1]; fix or remove that file",
        f"FAIL {tmp_path / 'c.npz'}: holds 2 examples of the digits held-out set: the gate would measure the "
        f"model on data it trained on; remove them",
        f"ok   {tmp_path / 'd.npz'}: 5 examples"]


def test_batches_that_fit_one_by_one_but_not_together_are_one_line(tmp_path, monkeypatch):
    """Each batch read and validated, joining them with the base set raised ``MemoryError``: a
    traceback from ``mlops retrain`` (the join is the retrain's first copy of all the data)."""
    from mlproject import train

    images, labels = _valid()
    _save(tmp_path / "a.npz", images=images, labels=labels)
    _save(tmp_path / "b.npz", images=images[:3], labels=labels[:3])

    def no_memory(*parts):
        raise MemoryError

    monkeypatch.setattr(train, "concat", no_memory)
    with pytest.raises(DataError) as exc:
        train.prepare_data("digits", str(tmp_path))
    assert exc.value.message == (f"the incoming batches at {tmp_path} (8 examples) and the digits base set are too "
                                 f"large to hold in this machine's memory together (a retrain loads them whole); "
                                 f"retrain on fewer batches at a time (nothing was trained or registered)")
