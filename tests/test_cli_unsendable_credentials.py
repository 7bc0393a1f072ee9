"""An AWS or MLflow credential botocore or requests cannot send, and a state folder that is not
UTF-8 for ``mlops up``, get one line naming the variable, exit 2, no traceback, never the secret."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlops.ports import free_ports
from tests.helpers import REPO


def _mlops(argv: list[str], env: dict[bytes, bytes], tmp_path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m mlops`` with an environment of bytes (as a Latin-1 shell sets it), no MLflow server,
    no S3 server and no AWS configuration of this machine."""
    base = {k: v for k, v in os.environb.items() if not k.startswith((b"MLOPS_", b"MLFLOW_", b"AWS_"))}
    base.update({b"MLOPS_HOME": os.fsencode(tmp_path / "home"), b"MLFLOW_TRACKING_URI": b"http://127.0.0.1:9",
                 b"PYTHONIOENCODING": b"utf-8", b"AWS_CONFIG_FILE": os.fsencode(tmp_path / "no-aws-config"),
                 b"AWS_SHARED_CREDENTIALS_FILE": os.fsencode(tmp_path / "no-aws-credentials"),
                 b"AWS_ENDPOINT_URL": b"http://127.0.0.1:9", b"AWS_DEFAULT_REGION": b"us-east-1",
                 b"AWS_EC2_METADATA_DISABLED": b"true"})
    env = {k: v.replace(b"{tmp}", os.fsencode(tmp_path)) for k, v in env.items()}
    return subprocess.run([sys.executable, "-m", "mlops", *argv], env={**base, **env}, cwd=REPO,
                          capture_output=True, timeout=timeout)


def _not_utf8(name: str) -> str:
    return (f"error: {name} is not UTF-8 text (bytes of another encoding: set the shell or the script to UTF-8 "
            f"and set it again)")


def _control(name: str) -> str:
    return (f"error: {name} contains a line break or control character (pasted with a newline?); set it to "
            f"the bare value")


def _latin1(name: str) -> str:
    return (f"error: {name} holds a character HTTP basic auth cannot send (Latin-1 only: no euro sign, no "
            f"letters beyond Western European ones); change it on the MLflow server and set it again")


KEYS = {b"AWS_ACCESS_KEY_ID": b"AKIA0123456789EXAMPLE", b"AWS_SECRET_ACCESS_KEY": b"wJalrXUtnFEMI0123456789"}


@pytest.mark.parametrize("env, line", [
    ({**KEYS, b"AWS_SECRET_ACCESS_KEY": b"s3cr\xe9t-value-0123456789"}, _not_utf8("AWS_SECRET_ACCESS_KEY")),
    ({**KEYS, b"AWS_SESSION_TOKEN": b"t\xf6ken-value-0123456789"}, _not_utf8("AWS_SESSION_TOKEN")),
    ({**KEYS, b"AWS_ACCESS_KEY_ID": b"AKIA\xc90123456789"}, _not_utf8("AWS_ACCESS_KEY_ID")),
    ({**KEYS, b"AWS_SESSION_TOKEN": b"token-value-0123456789\n"}, _control("AWS_SESSION_TOKEN")),
    ({**KEYS, b"AWS_ACCESS_KEY_ID": b"AKIA0123456789\r\n"}, _control("AWS_ACCESS_KEY_ID")),
])
def test_an_aws_credential_botocore_cannot_sign_or_send_is_one_line_naming_it(env, line, tmp_path):
    """A secret key or session token of bytes that are not UTF-8 was a UnicodeEncodeError traceback
    from botocore's request signing (botocore/auth.py) or an AttributeError from its headers; a key
    id of such bytes, or a line break in the key id or token, "S3 at ... failed: HTTPClientError",
    which named nothing to fix."""
    proc = _mlops(["data", "validate", "s3://bucket/x"], env, tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.splitlines() == [line]
    assert b"0123456789" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("env, line", [
    ({b"MLFLOW_TRACKING_USERNAME": b"bob", b"MLFLOW_TRACKING_PASSWORD": "pa€s-0123456789".encode()},
     _latin1("MLFLOW_TRACKING_PASSWORD")),
    ({b"MLFLOW_TRACKING_USERNAME": b"bob", b"MLFLOW_TRACKING_PASSWORD": b"pa\xe9s-0123456789"},
     _not_utf8("MLFLOW_TRACKING_PASSWORD")),
    ({b"MLFLOW_TRACKING_USERNAME": "b€b-0123456789".encode(), b"MLFLOW_TRACKING_PASSWORD": b"password"},
     _latin1("MLFLOW_TRACKING_USERNAME")),
    ({b"MLFLOW_TRACKING_USERNAME": b"b\xe9b-0123456789", b"MLFLOW_TRACKING_PASSWORD": b"password"},
     _not_utf8("MLFLOW_TRACKING_USERNAME")),
])
def test_an_mlflow_basic_auth_credential_outside_latin1_is_one_line_naming_it(env, line, tmp_path):
    """``requests`` encodes HTTP basic auth as Latin-1: a password (or user name) with a euro sign, or
    of bytes that are not UTF-8, was a UnicodeEncodeError traceback when the first request was built."""
    proc = _mlops(["registry", "status"], env, tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.splitlines() == [line]
    assert b"0123456789" not in proc.stderr + proc.stdout


def test_a_latin1_basic_auth_password_is_still_sent(monkeypatch):
    from mlops_common import settings

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa\u00e9s")
    assert settings.basic_auth() == ("bob", "pa\u00e9s")


@pytest.mark.parametrize("argv", [["up"], ["demo", "--yes", "--quick"]])
def test_mlops_up_under_a_state_folder_that_is_not_utf8_is_one_line_before_anything_starts(argv, tmp_path):
    """``mlops up`` with MLOPS_HOME of bytes that are not UTF-8 made the folder, the MLflow database and
    started the server, then printing "MLflow is up ... (state in <it>)" was a traceback (exit 1, a
    server left running); ``mlops demo`` made its lock there, then its first step's line was one.
    Now: one line naming MLOPS_HOME, nothing made, nothing started."""
    home = b"{tmp}/h\xe9me"
    ports = [str(p).encode() for p in free_ports(3)]
    env = {b"MLOPS_HOME": home, b"MLOPS_MLFLOW_PORT": ports[0], b"MLOPS_REST_PORT": ports[1],
           b"MLOPS_GRPC_PORT": ports[2]}
    try:
        proc = _mlops(argv, env, tmp_path, timeout=300)
    finally:
        if (os.fsencode(tmp_path) + b"/h\xe9me") in [os.fsencode(p) for p in tmp_path.iterdir()]:
            _mlops(["down"], env, tmp_path)       # the code before the fix started a server: stop it
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.splitlines() == [
        "error: the state folder's path (MLOPS_HOME, default ./.mlops) is not UTF-8 text (bytes of another "
        "encoding: it cannot be printed nor name the ledger's SQLite file; point MLOPS_HOME at a folder whose "
        "path is UTF-8)"]
    assert list(tmp_path.iterdir()) == []


def test_mlops_down_under_a_state_folder_that_is_not_utf8_says_nothing_runs(tmp_path):
    """``mlops down`` with nothing running under MLOPS_HOME of bytes that are not UTF-8: printing
    "nothing running for <it>" was a traceback, exit 1. It still works (a server started there by an
    older version can be stopped), the path shown with ``\\xe9``."""
    proc = _mlops(["down"], {b"MLOPS_HOME": b"{tmp}/h\xe9me"}, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert proc.stdout.decode() == f"nothing running for {tmp_path}/h\\xe9me\n"
    assert proc.stderr == b""


@pytest.mark.parametrize("argv", [["sync", "status"], ["sync", "watch", "--once"]])
def test_an_error_naming_a_state_folder_that_is_not_utf8_shows_it_as_mlops_down_does(argv, tmp_path):
    """``mlops sync`` named a hosts file under MLOPS_HOME of bytes that are not UTF-8 as
    ``h\\udce9me`` (Python's escape of the lone surrogate) where ``mlops down`` shows ``h\\xe9me``
    (the byte): one path, two spellings. Every line a command writes shows such a byte as ``\\xe9``."""
    proc = _mlops(argv, {b"MLOPS_HOME": b"{tmp}/h\xe9me"}, tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.splitlines() == [
        f"error: hosts file {tmp_path}/h\\xe9me/hosts.toml does not exist; create it ([[hosts]] with name, "
        "target, rest_url; see docs/architecture.md) or set MLOPS_SYNC_TARGET and MLOPS_SYNC_REST_URL"]


def test_a_log_line_shows_a_byte_that_is_not_utf8_as_xe9():
    """A logged path with an undecodable byte (a lone surrogate) is shown as ``\\xe9``, as on stdout."""
    import logging

    from mlops_common import log

    record = logging.LogRecord("mlops.x", logging.INFO, __file__, 1, "reading %s", (os.fsdecode(b"/h\xe9me"),), None)
    assert log.RedactingFormatter("%(message)s").format(record) == "reading /h\\xe9me"
