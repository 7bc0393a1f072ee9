"""Batches of new data on a real S3 server (SeaweedFS `weed mini` on 127.0.0.1)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from mlops.ports import free_port
from mlproject.batches import make_batch, read_batches, to_npz_bytes
from mlproject.datasets import Arrays, fingerprint, load_partition
from tests.fixtures.trained import train_version
from tests.helpers import error_lines, mlflow_client, run_mlops


@pytest.fixture(scope="module")
def batch_bucket(s3_server):
    """A bucket with new/good.npz (written by the CLI), new/bad.npz and new/README.txt."""
    bucket = s3_server.make_bucket("mlproject-batches")
    r = run_mlops("data", "make-batch", "--kind", "good", "--out", f"s3://{bucket}/new/good.npz", "--json",
                  env=s3_server.env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["path"] == f"s3://{bucket}/new/good.npz"
    c = s3_server.client()
    c.put_object(Bucket=bucket, Key="new/bad.npz",
                 Body=to_npz_bytes(make_batch("bad", load_partition("digits").pool, seed=1)))
    c.put_object(Bucket=bucket, Key="new/README.txt", Body=b"not a batch")
    return bucket


def test_cli_validates_every_batch_under_an_s3_prefix(s3_server, batch_bucket):
    r = run_mlops("data", "validate", f"s3://{batch_bucket}/new/", "--json", env=s3_server.env())
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["ok"]
    assert [(b["source"], b["n"]) for b in report["batches"]] == [
        (f"s3://{batch_bucket}/new/bad.npz", 3600), (f"s3://{batch_bucket}/new/good.npz", 450)]


def test_make_batch_into_an_s3_folder_names_the_object_as_in_a_local_folder(s3_env, batch_bucket, capsys):
    """``--out s3://bucket/prefix/`` (with the slash) is a folder, as ``--help`` says (found
    untested by hand mutation, 2026-12-05, fifth stop)."""
    from argparse import Namespace

    from mlops.commands import data as data_commands

    data_commands.cmd_make_batch(Namespace(kind="good", out=f"s3://{batch_bucket}/dated/", dataset="digits",
                                           seed=4, repeats=None, json=True))
    assert json.loads(capsys.readouterr().out)["path"] == f"s3://{batch_bucket}/dated/good-digits-seed4.npz"
    listed = s3_env.client().list_objects_v2(Bucket=batch_bucket, Prefix="dated/")["Contents"]
    assert [o["Key"] for o in listed] == ["dated/good-digits-seed4.npz"]


def test_batches_read_from_s3_equal_the_ones_made_locally(s3_env, batch_bucket):
    pool = load_partition("digits").pool
    got = {b.source.rsplit("/", 1)[1]: b for b in read_batches(f"s3://{batch_bucket}/new", "digits")}
    assert set(got) == {"bad.npz", "good.npz"}
    for kind in ("good", "bad"):
        assert fingerprint(got[f"{kind}.npz"].data) == fingerprint(make_batch(kind, pool, seed=1))


def test_malformed_batch_on_s3_is_named_by_its_uri(s3_server, s3_env):
    bucket = s3_server.make_bucket("mlproject-broken")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 6)
    labels[0] = 11
    buf = io.BytesIO()
    np.savez(buf, images=rng.random((6, 8, 8, 1), dtype=np.float32), labels=labels)
    s3_server.client().put_object(Bucket=bucket, Key="in/x.npz", Body=buf.getvalue())
    r = run_mlops("data", "validate", f"s3://{bucket}/in/", env=s3_server.env())
    assert r.returncode == 2
    assert error_lines(r.stderr) == [f"error: invalid data in s3://{bucket}/in/x.npz: labels contain 11 "
                                      f"(expected integers 0..9); fix or remove that file"]


def test_a_batch_named_in_upper_case_on_s3_is_read_not_skipped(s3_server, s3_env):
    """``incoming/BATCH.NPZ`` was skipped without a word (the folder had "no .npz batches"), and
    naming the object itself read it as a folder (eighteenth stop review)."""
    bucket = s3_server.make_bucket("mlproject-upper")
    pool = load_partition("digits").pool
    s3_server.client().put_object(Bucket=bucket, Key="in/BATCH.NPZ",
                                  Body=to_npz_bytes(make_batch("good", pool, seed=2)))
    for location in (f"s3://{bucket}/in/", f"s3://{bucket}/in/BATCH.NPZ"):
        got = read_batches(location, "digits")
        assert [b.source for b in got] == [f"s3://{bucket}/in/BATCH.NPZ"]
        assert fingerprint(got[0].data) == fingerprint(make_batch("good", pool, seed=2))


def test_a_batch_uploaded_again_under_another_dated_folder_is_refused_by_both_uris(s3_server, s3_env):
    """The same batch in ``incoming/2026-01/`` and ``incoming/2026-02/`` (an upload repeated): the
    retrain read both and learned its examples twice (s18-data)."""
    bucket = s3_server.make_bucket("mlproject-reupload")
    body = to_npz_bytes(make_batch("good", load_partition("digits").pool, seed=1))
    for key in ("in/2026-01/batch.npz", "in/2026-02/batch-again.npz"):
        s3_server.client().put_object(Bucket=bucket, Key=key, Body=body)
    r = run_mlops("data", "validate", f"s3://{bucket}/in", env=s3_server.env())
    assert r.returncode == 2
    assert error_lines(r.stderr) == [f"error: invalid data in s3://{bucket}/in/2026-02/batch-again.npz: the same "
                                     f"examples as s3://{bucket}/in/2026-01/batch.npz (a copy?), which a retrain "
                                     f"would learn twice; remove one of the two files"]


@pytest.mark.parametrize("problem", ["no_bucket", "empty_prefix", "wrong_secret", "unreachable"])
def test_s3_failures_are_one_clear_line_without_secrets(s3_server, batch_bucket, problem):
    env = s3_server.env()
    location = f"s3://{batch_bucket}/new/"
    expected = ""
    if problem == "no_bucket":
        location, expected = "s3://no-such-bucket-here/new/", "NoSuchBucket"
    elif problem == "empty_prefix":
        location, expected = f"s3://{batch_bucket}/nothing-here/", "no .npz batches under"
    elif problem == "wrong_secret":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value-123"
        expected = "S3 refused access"
    elif problem == "unreachable":
        dead = f"http://127.0.0.1:{free_port()}"
        env.update(MLFLOW_S3_ENDPOINT_URL=dead, AWS_ENDPOINT_URL=dead)
        expected = f"cannot reach S3 at {dead}"
    r = run_mlops("data", "validate", location, env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = error_lines(r.stderr)
    assert expected in line
    assert "Traceback" not in r.stderr
    assert env["AWS_SECRET_ACCESS_KEY"] not in r.stderr + r.stdout


@pytest.mark.slow
def test_retrain_reads_incoming_batches_from_s3(mlops_env, s3_env, s3_server):

    bucket = s3_server.make_bucket("mlproject-retrain")
    pool = load_partition("digits").pool
    half = Arrays(pool.images[:200], pool.labels[:200])
    s3_server.client().put_object(Bucket=bucket, Key="incoming/2026-01/part-1.npz", Body=to_npz_bytes(half))
    res = train_version(incoming=f"s3://{bucket}/incoming/", epochs=1)
    assert res["version"] == 1 and res["retrained_from"] == "scratch"
    assert res["n_incoming"] == 200 and res["incoming"] == f"s3://{bucket}/incoming/"
    params = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"]).get_run(res["run_id"]).data.params
    assert params["incoming"] == f"s3://{bucket}/incoming/" and params["n_train"] == "1097"


@pytest.mark.parametrize("code, kind, says", [
    ("ExpiredToken", "ConfigError", "S3 refused access (ExpiredToken); check AWS_ACCESS_KEY_ID"),
    ("InvalidAccessKeyId", "ConfigError", "S3 refused access (InvalidAccessKeyId)"),
    ("NoSuchBucket", "NotFoundError", "NoSuchBucket at"),
    ("SlowDown", "UserError", "S3 answered SlowDown at"),
])
def test_s3_errors_of_the_batch_reader_and_the_transport_come_from_one_table(code, kind, says):
    """An expired token said only "S3 answered ExpiredToken" when data batches were read, where the
    s3:// transport gave the credentials hint (two tables of codes; now ``mlops_common.s3.classify``)."""
    from botocore.exceptions import ClientError

    from mlproject.s3 import s3_errors
    from serving_sync.transports.s3 import S3Transport

    exc = ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")
    with pytest.raises(Exception) as e:
        with s3_errors("reading s3://b/incoming"):
            raise exc
    assert type(e.value).__name__ == kind and says in str(e.value), str(e.value)
    if code in ("ExpiredToken", "InvalidAccessKeyId"):
        transport = S3Transport.__new__(S3Transport)
        transport.url, transport.bucket, transport.prefix = "s3://b/p", "b", "p"
        assert "S3 rejected the credentials" in transport._error(exc, "reading").message


@pytest.mark.parametrize("command", [("retrain", "--epochs", "1", "--incoming"), ("data", "validate")])
def test_an_s3_batch_without_credentials_is_one_line_and_starts_no_run(mlops_env, s3_server, batch_bucket,
                                                                       tmp_path, command):
    """No AWS_* keys, no credentials file, no instance metadata: one line saying which variables
    to set, exit 2, and for a retrain no MLflow run and no version."""
    no_credentials = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
                      "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                      "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
                      "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    r = run_mlops(*command, f"s3://{batch_bucket}/new/", env=no_credentials, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert error_lines(r.stderr) == [f"error: listing s3://{batch_bucket}/new/: no S3 credentials; set "
                                      f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]
    client = mlflow_client(mlops_env["MLFLOW_TRACKING_URI"])
    assert client.get_experiment_by_name(mlops_env["MLOPS_MODEL_NAME"]) is None       # no run
    assert client.search_model_versions(f"name='{mlops_env['MLOPS_MODEL_NAME']}'") == []


@pytest.mark.parametrize("profile", ["nope", ""])
def test_an_aws_profile_that_does_not_exist_is_named_not_the_endpoint(tmp_path, profile):
    """Found by review (2026-12-05, ninth stop): ``AWS_PROFILE`` naming no profile (or set empty)
    gave "S3 at <endpoint> failed: ProfileNotFound", sending people to the endpoint. The one
    client factory serves the batches' reader and the ``s3://`` transport alike."""
    r = run_mlops("data", "validate", "s3://batches/new/", timeout=120,
                  env={"AWS_PROFILE": profile, "AWS_CONFIG_FILE": str(tmp_path / "none"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                       "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert error_lines(r.stderr) == [f"error: AWS_PROFILE names the AWS profile '{profile}', which is in neither "
                                      f"~/.aws/config nor ~/.aws/credentials (AWS_CONFIG_FILE, "
                                      f"AWS_SHARED_CREDENTIALS_FILE); name one that is, or unset AWS_PROFILE"]
