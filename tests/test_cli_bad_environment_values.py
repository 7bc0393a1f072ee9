"""A variable of the environment that is wrong (bytes that are not UTF-8, out of range, a malformed
URL) gets one line naming it, a non-zero exit, no traceback, no secret."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _mlops(argv: list[str], env: dict[bytes, bytes], tmp_path) -> subprocess.CompletedProcess:
    """``python -m mlops`` with an environment of bytes (as a Latin-1 shell sets it), no MLflow server."""
    base = {k: v for k, v in os.environb.items() if not k.startswith((b"MLOPS_", b"MLFLOW_"))}
    base.update({b"MLOPS_HOME": os.fsencode(tmp_path / "home"), b"MLFLOW_TRACKING_URI": b"http://127.0.0.1:9",
                 b"PYTHONIOENCODING": b"utf-8"})
    env = {k: v.replace(b"{tmp}", os.fsencode(tmp_path)) for k, v in env.items()}
    return subprocess.run([sys.executable, "-m", "mlops", *argv], env={**base, **env}, cwd=REPO,
                          capture_output=True, timeout=120)


SECRET = b"s3cr\xe9t-value-0123456789"       # Latin-1 bytes: not UTF-8


@pytest.mark.parametrize("env, argv, line", [
    ({b"MLOPS_WEBHOOK_SECRET": SECRET}, ["registry", "webhook", "create", "--url", "http://127.0.0.1:9/hook"],
     "error: MLOPS_WEBHOOK_SECRET holds bytes that are not UTF-8 text (raw random bytes?); use printable "
     "random text, e.g. `openssl rand -hex 32`"),
    ({b"MLOPS_LEDGER_URL": b"postgresql://u:p\xe9ssword-0123456789@127.0.0.1:9/ledger"}, ["registry", "history"],
     "error: MLOPS_LEDGER_URL is not UTF-8 text (bytes of another encoding: set the shell or the script to "
     "UTF-8 and set it again)"),
    ({b"MLOPS_LEDGER_URL": b"sqlite:////tmp/l\xe9dger.db"}, ["registry", "history"],
     "error: MLOPS_LEDGER_URL is not UTF-8 text (bytes of another encoding: set the shell or the script to "
     "UTF-8 and set it again)"),
    ({b"MLFLOW_TRACKING_URI": b"http://mlfl\xf6w:5000"}, ["registry", "status"],
     "error: MLFLOW_TRACKING_URI is not UTF-8 text (bytes of another encoding: set the shell or the script to "
     "UTF-8 and set it again)"),
    ({b"MLOPS_HOME": b"{tmp}/h\xe9me"}, ["registry", "history"],
     "error: the state folder's path (MLOPS_HOME, default ./.mlops) is not UTF-8 text (bytes of another "
     "encoding: the ledger's SQLite URL cannot name it; point MLOPS_HOME at a folder whose path is UTF-8)"),
    ({b"MLOPS_MODEL_NAME": b"mod\xe9l"}, ["registry", "status"],
     "error: MLOPS_MODEL_NAME is not UTF-8 text (bytes of another encoding: set the shell or the script to "
     "UTF-8 and set it again)"),
])
def test_a_variable_that_is_not_utf8_is_one_line_naming_it_not_two_tracebacks(env, argv, line, tmp_path):
    """A secret variable of bytes that are not UTF-8 made every write to stdout or stderr fail (the
    redaction percent-encoded the secret with quote(), which cannot encode a lone surrogate): the
    intended one line became two tracebacks, exit 1. MLOPS_LEDGER_URL and MLOPS_MODEL_NAME of such
    bytes were a traceback from SQLAlchemy or the ledger's query."""
    proc = _mlops(argv, env, tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.splitlines() == [line]
    assert proc.stdout == b""
    assert b"0123456789" not in proc.stderr


def test_a_secret_that_is_not_utf8_is_still_redacted_in_each_of_its_forms(monkeypatch):
    """The redaction of a secret of bytes that are not UTF-8 works, and covers the value as Python
    holds it, as a repr shows it, and percent-encoded as its bytes (``%E9``)."""
    from mlops_common import log, settings

    value = os.fsdecode(SECRET)                  # what os.environ holds: a lone surrogate for \xe9
    monkeypatch.setenv("MLOPS_WEBHOOK_SECRET", value)
    settings._secret_forms.cache_clear()
    for shown in (value, repr(value), "s3cr%E9t-value-0123456789", "s3cr\\udce9t-value-0123456789"):
        assert "0123456789" not in log.redact(f"secret is {shown}!"), shown


@pytest.mark.parametrize("var, rule, value", [("MLOPS_GATE_MIN_ACCURACY", "min_accuracy", "2"),
                                              ("MLOPS_GATE_MAX_ACCURACY_DROP", "max_accuracy_drop", "1.5"),
                                              ("MLOPS_GATE_MAX_CLASS_DROP", "max_class_drop", "50")])
def test_a_gate_rule_out_of_range_from_the_environment_names_its_variable(var, rule, value, monkeypatch, capsys):
    """``MLOPS_GATE_MIN_ACCURACY=2`` said "gate rule min_accuracy must be between 0 and 1, got 2.0":
    no variable of that name, nothing to say where the 2 came from."""
    from mlops.cli import main

    monkeypatch.setenv(var, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert main(["registry", "gate", "--version", "1"]) == 2
    assert capsys.readouterr().err == f"error: {var} must be between 0 and 1 (gate rule {rule}), got '{value}'\n"


@pytest.mark.parametrize("uri, reason", [("http://", "it has no host name"),
                                         ("https://:5000/", "it has no host name"),
                                         ("http://127.0.0.1:99999", "its port is not a number 1-65535"),
                                         ("http://mlflow.internal:50OO", "its port is not a number 1-65535"),
                                         ("http://[::1:5000", "an IPv6 address' [ ] is not closed")])
def test_a_malformed_tracking_uri_says_so_and_names_its_variable(uri, reason, monkeypatch, capsys):
    """``MLFLOW_TRACKING_URI=http://`` (an unset ``http://$HOST``) or a port of 99999 said only "the
    request to the MLflow server at http: failed (InvalidURL); check MLFLOW_TRACKING_URI and the
    MLFLOW_TRACKING_* credentials": nothing said the URI itself is malformed, and credentials were
    suspected. The URI is not echoed (the other checks refuse one that holds a password)."""
    from mlops.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["registry", "status"]) == 2
    assert capsys.readouterr().err == (f"error: MLFLOW_TRACKING_URI is a malformed URL ({reason}); set it to the "
                                       f"tracking server's address, e.g. http://mlflow.example.com:5000\n")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000/", "https://[::1]:443/mlflow", "HTTP://team", "file:///tmp/mlruns",
                                 "databricks"])
def test_a_well_formed_tracking_uri_is_taken_as_it_is(uri, monkeypatch):
    from mlops_common import settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert settings.tracking_uri() == uri


def test_a_sqlite_ledger_url_in_an_error_shows_its_path(tmp_path, monkeypatch, capsys):
    """A SQLite ``MLOPS_LEDGER_URL`` (nothing secret in a file's path) was redacted whole: "cannot
    open the ledger database *** (MLOPS_LEDGER_URL)" did not say which file. The path is shown; a
    password of another URL, or in a SQLite URL's query, is still redacted."""
    from mlops.cli import main
    from mlops_common import log

    (tmp_path / "ledger.db").mkdir()                   # a folder where the database file should be
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("MLOPS_LEDGER_URL", url)
    assert main(["registry", "history"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot open the ledger database {url} (MLOPS_LEDGER_URL): unable to open database file\n"

    for secret_url in ["postgresql://u:pw-0123456789@127.0.0.1:9/db", f"{url}?password=pw-0123456789",
                       "sqlite://u:pw-0123456789@/tmp/x.db"]:
        monkeypatch.setenv("MLOPS_LEDGER_URL", secret_url)
        assert log.redact(f"at {secret_url}!") == "at ***!"
        assert log.redact("pw-0123456789") == "***"
