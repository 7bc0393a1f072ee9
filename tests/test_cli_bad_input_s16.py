"""Bad input found by the sixteenth stop's command-line sweep (s16-cli): one line, a non-zero exit,
nothing written. In-process through ``mlops.cli.main``; no server needed."""
from __future__ import annotations

import pytest

from mlops.cli import main


@pytest.mark.parametrize("out", ["s3://", "s3:///"])
def test_make_batch_out_s3_without_a_bucket_is_refused_not_written_to_a_local_s3_folder(
        out, tmp_path, monkeypatch, capsys):
    """``--out s3://`` (an unset ``s3://$BUCKET/``) lost its slashes to the folder join: the batch
    went to ``./s3:/bad-digits-seed1.npz`` in the current folder, exit 0, "wrote bad batch"."""
    monkeypatch.chdir(tmp_path)
    code = main(["data", "make-batch", "--kind", "bad", "--out", out])
    err = capsys.readouterr().err
    assert code == 2, err
    assert [line for line in err.splitlines() if line] == [
        f"error: '{out}' is not an S3 location; expected s3://bucket/prefix"]
    assert list(tmp_path.iterdir()) == []

