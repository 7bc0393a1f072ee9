"""Faults of the security review, each through the surface that showed it.

F1 a token with whitespace or a control character (CR/LF, a leading space) is refused by name,
   never echoed: ``requests`` quotes a bad header value in its error, and a traceback would print it.
F2 the password of ``MLOPS_LEDGER_URL`` (also one holding ``@``) and ``PGPASSWORD`` are secrets of
   their own: redacted and refused by the guards even without the rest of the URL.
F3 a hosts-file target with a password is refused before any message echoes the value.
F4 ``--actor`` / ``--reason`` are one line without control characters, and every free-text field of
   a version's Markdown description is text, never markup (no forged table, link, image, HTML).
F5 ledger text printed to a terminal never carries control characters (ESC, CR, OSC, BEL).
"""
from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from tests.fixtures.faults import one_error_line
from tests.helpers import run_mlops

# ---------------------------------------------------------------------------------------------
# F1: tokens that would break an HTTP header
# ---------------------------------------------------------------------------------------------

TOKEN = "tok-SECRET-4f1c"
BAD_TOKENS = [TOKEN + "\n", " " + TOKEN, TOKEN + "\r\n", "tok-SECRET\r\nX-Injected: 1"]


def _forms(value: str) -> list[str]:
    """How a secret may show up in output: raw, stripped, escaped as in a repr."""
    return [f for f in {value, value.strip(), repr(value)[1:-1], "tok-SECRET"} if f]


def _assert_clean(r, secret: str) -> str:
    out = r.stdout + r.stderr
    for form in _forms(secret):
        assert form not in out, f"{form!r} leaked:\n{out}"
    assert r.returncode != 0
    return one_error_line(r.stderr)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """An environment for the CLI where nothing needs a server: MLflow on a closed port."""
    for k in ("CIRCLE_TOKEN", "CIRCLECI_TOKEN", "CIRCLE_WORKFLOW_ID", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLOPS_LEDGER_URL", "PGPASSWORD"):
        monkeypatch.delenv(k, raising=False)
    return {"MLOPS_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
            "MLOPS_MODEL_NAME": "review-fixes", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


@pytest.mark.parametrize("token", BAD_TOKENS, ids=["trailing-lf", "leading-space", "crlf", "header-injection"])
def test_promote_with_a_bad_circle_token_is_one_line_naming_the_variable_never_the_token(cli_env, token):
    r = run_mlops("registry", "promote", "--version", "1",
                  env={**cli_env, "CIRCLE_WORKFLOW_ID": "wf1", "CIRCLE_TOKEN": token}, timeout=120)
    line = _assert_clean(r, token)
    assert "CIRCLE_TOKEN" in line and "Traceback" not in r.stderr


@pytest.mark.parametrize("token", BAD_TOKENS, ids=["trailing-lf", "leading-space", "crlf", "header-injection"])
def test_a_bad_mlflow_tracking_token_is_one_line_naming_the_variable_never_the_token(cli_env, token):
    r = run_mlops("registry", "promote", "--version", "1", "--actor", "alice",
                  env={**cli_env, "MLFLOW_TRACKING_TOKEN": token}, timeout=120)
    line = _assert_clean(r, token)
    assert "MLFLOW_TRACKING_TOKEN" in line


def test_the_circleci_client_reports_a_refused_header_by_type_only(monkeypatch):
    """Past the check at read time (a token given in code), a request ``requests`` refuses is still
    one line that holds the exception's type and not its message."""
    from mlops_common.errors import UserError
    from registry import approver

    monkeypatch.setenv("CIRCLECI_API_URL", "http://127.0.0.1:9")
    with pytest.raises(UserError) as info:
        approver._get("/workflow/wf1/job", TOKEN + "\n")
    assert "InvalidHeader" in info.value.message and "tok-SECRET" not in info.value.message


def test_the_mlflow_rest_client_reports_a_refused_header_by_type_only(monkeypatch):
    from mlops_common.errors import UserError
    from registry.rest import MlflowRest

    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    client = MlflowRest("http://127.0.0.1:9")
    client.session.headers["Authorization"] = f"Bearer {TOKEN}\n"
    client.retries = 0
    with pytest.raises(UserError) as info:
        client.get("registered-models/get", {"name": "m"}, what="reading m")
    assert "InvalidHeader" in info.value.message and "tok-SECRET" not in info.value.message


def test_the_last_resort_handler_prints_a_traceback_without_any_form_of_a_secret(monkeypatch, capsys):
    """A bug (an exception that is not a UserError) still shows its traceback, with the secret
    taken out raw, stripped and as a repr shows it (``tok\\n``)."""
    import mlops.commands.registry as registry_commands
    from mlops.cli import main

    secret = TOKEN + "\n"
    monkeypatch.setenv("CIRCLE_TOKEN", secret)

    def boom(args):
        raise ValueError(f"Invalid header value {secret!r} / raw {secret} / in {secret.strip()}x")

    monkeypatch.setattr(registry_commands, "cmd_history", boom)
    assert main(["registry", "history"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError" in err
    assert "tok-SECRET" not in err and "***" in err


# ---------------------------------------------------------------------------------------------
# F2: database passwords
# ---------------------------------------------------------------------------------------------

def test_the_ledger_url_password_alone_and_pgpassword_are_secrets(monkeypatch):
    from mlops_common import log, settings

    monkeypatch.setenv("MLOPS_LEDGER_URL", "postgresql://u:Pw@SECRET-1@127.0.0.1:9/db")
    monkeypatch.setenv("PGPASSWORD", "Pg-Pass-888")
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:Backend-Pw-7%2F@db:5432/mlflow")
    values = settings.secret_values()
    for v in ("Pw@SECRET-1", "SECRET-1", "Pg-Pass-888", "Backend-Pw-7%2F", "Backend-Pw-7/"):
        assert v in values, v
    said = log.redact('host "SECRET-1@127.0.0.1"; password Pw@SECRET-1; Pg-Pass-888; Backend-Pw-7/')
    assert "SECRET" not in said and "Pg-Pass" not in said and "Backend-Pw" not in said


def test_a_registry_database_url_password_is_a_secret(monkeypatch):
    """MLflow's client (MLFLOW_REGISTRY_URI) and server (MLFLOW_REGISTRY_STORE_URI) read a registry
    database from these as from the backend store's URI; only the latter's password was redacted."""
    from mlops_common import log, settings

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "postgresql://reg:Registry-Pw-9%40x@db:5432/reg")
    monkeypatch.setenv("MLFLOW_REGISTRY_STORE_URI", "mysql://reg:Store-Pw-31@db:3306/reg")
    said = log.redact("Registry-Pw-9@x / Registry-Pw-9%40x / Store-Pw-31")
    assert "Registry-Pw" not in said and "Store-Pw" not in said, said
    assert "Store-Pw-31" in settings.secret_values()


def test_ledger_rows_holding_pgpassword_are_refused(tmp_path, monkeypatch):
    from mlops_common.errors import RefusedError
    from registry.ledger import Ledger

    monkeypatch.setenv("PGPASSWORD", "Pg-Pass-888")
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with pytest.raises(RefusedError, match="secret"):
        led.record("promote", "m", outcome="ok", reason="psql password Pg-Pass-888")
    assert led.entries("m") == []


@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:Pw@SECRET-1@127.0.0.1:9/db", "postgresql://u:***@127.0.0.1:9/db"),
    ("postgresql://u:a/b?c@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
    ("postgresql://u:p%40w@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
    ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),
])
def test_url_masking_is_safe_for_passwords_holding_at_signs(url, masked):
    from mlops_common import settings

    assert settings.mask_url_password(url) == masked


def test_history_with_an_at_sign_in_the_ledger_password_prints_no_part_of_it(cli_env):
    r = run_mlops("registry", "history",
                  env={**cli_env, "MLOPS_LEDGER_URL": "postgresql://u:Pw@SECRET-1@127.0.0.1:9/db"}, timeout=120)
    assert "SECRET" not in r.stdout + r.stderr and "Pw@" not in r.stderr
    assert r.returncode != 0
    one_error_line(r.stderr)


def test_the_ledger_url_message_masks_a_password_holding_at_signs():
    from registry.ledger_db import safe_url

    assert safe_url("postgresql://u:Pw@SECRET-1@127.0.0.1:9/db") == "postgresql://u:***@127.0.0.1:9/db"


def test_a_sqlite_ledger_url_with_a_user_is_one_line(cli_env):
    r = run_mlops("registry", "history", env={**cli_env, "MLOPS_LEDGER_URL": "sqlite://u:Pw-SECRET@/tmp/x.db"},
                  timeout=120)
    assert r.returncode != 0 and "Pw-SECRET" not in r.stdout + r.stderr
    assert one_error_line(r.stderr).endswith("a SQLite URL has no user, password or host)")


# ---------------------------------------------------------------------------------------------
# F3: hosts-file targets with credentials
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "ssh://deploy:Hunter2-SECRET@serving-1:22/var/../models",
    "ssh://deploy:Hunter2-SECRET@serving-1:70000/var/models",
    "ssh://deploy:Hunter2-SECRET@serving-1:22/",
    "ssh://deploy:Hunter2-SECRET@serving-1:22/var/models?x=1",
    "ssh://deploy:Hunter2/SECRET@serving-1:22/var/models",
    "s3://AKIAEXAMPLE:Aws-SECRET-KEY@bucket/prefix",
    "file://u:Hunter2-SECRET@localhost/var/models",
])
def test_a_target_with_a_password_is_refused_without_echoing_it(target):
    from mlops_common.errors import ConfigError
    from serving_sync.hosts import parse_hosts_toml

    with pytest.raises(ConfigError) as info:
        parse_hosts_toml(f'[[hosts]]\nname = "a"\ntarget = "{target}"\nrest_url = "http://127.0.0.1:8501"\n',
                         "hosts.toml")
    message = info.value.message
    assert "Hunter2" not in message and "SECRET-KEY" not in message and "Aws-" not in message, message
    # refused for the password itself, before any other check could echo the target masked
    assert ("must not contain credentials" if target.startswith("s3:") else "must not contain a password") \
        in message, message


# ---------------------------------------------------------------------------------------------
# F4: free text in the version description and on the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["registry", "promote", "--version", "1", "--actor", "mallory\n\n#### Production history"],
    ["registry", "promote", "--version", "1", "--reason", "ok\x1b]0;owned\x07"],
    ["registry", "rollback", "--reason", "x\rforged"],
    ["registry", "rollback", "--actor", "a\u2028b"],
    ["registry", "reconcile", "--actor", "a\x1b[2Kb"],
    ["sync", "rollback", "--reason", "x\rforged"],
    ["sync", "rollback", "--actor", "a\nb"],
    ["sync", "deploy", "--reason", "ok\x1b[2K"],
])
def test_actor_and_reason_with_control_characters_are_a_usage_error(argv, capsys):
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "control characters" in capsys.readouterr().err


def test_actor_and_reason_of_one_plain_line_are_accepted():
    from mlops.cli import build_parser

    args = build_parser().parse_args(["registry", "promote", "--version", "1", "--actor", "carol-approver",
                                      "--reason", "hotfix INC-42 (see #ops), 50% traffic"])
    assert args.actor == "carol-approver" and args.reason == "hotfix INC-42 (see #ops), 50% traffic"


FORGED_ACTOR = ("mallory\n\n#### Production history\n\n| ledger | when (UTC) | move | from → to | by | reason |\n"
                "| --- | --- | --- | --- | --- | --- |\n| #1 | 2020-01-01 | promote | none → v2 | release-manager "
                "| approved in CAB |\n\n<!--")
FORGED_REASON = ("wrong labels ![x](https://attacker.example/pixel.png) [approve here](https://attacker.example/login)"
                 " <img src=x onerror=alert(1)> `code` www.attacker.example")


def _render_forged():
    from registry.description import render
    from registry.ledger import Entry

    now = datetime.now(timezone.utc)
    entries = [
        Entry("register", "m", "ok", to_version=2, id=5, at=now,
              details={"ci": {"ci.build_url": "javascript:alert(1)"}}),
        Entry("promote", "m", "ok", from_version=1, to_version=2, actor=FORGED_ACTOR, reason=FORGED_REASON,
              id=7, at=now),
        Entry("deploy", "m", "failed", to_version=2, host="web-1|<b>x</b>", reason=FORGED_REASON, id=8, at=now),
    ]
    tags = {"validation_status": "passed", "approved_by": FORGED_ACTOR, "dataset": "[d](https://evil.example)",
            "dataset_fingerprint": "abc`<img>`def", "deploy_status": "failed", "deploy_reason": "<script>x</script>"}
    return render(version=2, tags=tags, aliases=("production",), entries=entries,
                  run_url="http://mlflow:5000/#/experiments/1/runs/r1")


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_the_description_renders_free_text_as_text_never_as_markup():
    text = _render_forged()
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("#")] == ["#### Production history", "#### Deploys per host"]
    history = lines[lines.index("#### Production history"):lines.index("#### Deploys per host")]
    rows = [ln for ln in history if ln.startswith("| #")]
    assert len(rows) == 1 and _unescaped_pipes(rows[0]) == 7, rows
    deploy_rows = [ln for ln in lines[lines.index("#### Deploys per host"):] if ln.startswith("| #")]
    assert len(deploy_rows) == 1 and _unescaped_pipes(deploy_rows[0]) == 7, deploy_rows
    for markup in ("![", "](https://attacker", "](https://evil", "https://attacker", "<img", "<script", "<b>",
                   "<!--", "javascript:", "`<img>`"):
        assert markup not in text, markup
    assert "**Links:** [run](http://mlflow:5000/#/experiments/1/runs/r1)" in text
    assert not any(unicodedata.category(c) == "Cc" for c in text.replace("\n", ""))


def test_plain_free_text_reads_as_before():
    from registry.description import render
    from registry.ledger import Entry

    now = datetime.now(timezone.utc)
    e = Entry("promote", "m", "ok", from_version=None, to_version=1, actor="alice", reason="first release",
              details={"approved_by": "carol-approver"}, id=3, at=now)    # as a CircleCI approval records it
    text = render(version=1, tags={"approved_by": "carol-approver"}, aliases=("production",),
                  entries=[e])
    assert "**Approved by:** carol-approver (promote none → v1 by alice" in text
    assert "| promote | none → v1 | alice | first release |" in text


# ---------------------------------------------------------------------------------------------
# F5: terminal output of ledger text
# ---------------------------------------------------------------------------------------------

HOSTILE = "x\x1b[2K\r9   2026-01-01 00:00:00  promote  m  v2->v3  release-mgr  ok \x1b]0;owned\x07\u202e"


def _controls(text: str) -> list[str]:
    return [c for c in text.replace("\n", "") if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def test_history_shows_control_characters_as_question_marks():
    from registry.history import history_table
    from registry.ledger import Entry

    e = Entry("rollback", "m", "ok", from_version=3, to_version=2, actor="al\x1b[31mice", host="web\r1",
              id=9, at=datetime.now(timezone.utc), reason=HOSTILE)
    out = history_table([e])
    assert _controls(out) == [] and len(out.splitlines()) == 3
    assert "al?[31mice" in out and "x?[2K?9" in out


def test_reconcile_prints_reasons_without_control_characters(monkeypatch, capsys):
    import registry.approver as approver
    import registry.reconciliation as reconciliation
    from mlops.cli import build_parser

    row = SimpleNamespace(id=4, action="promote", outcome="ok", reason=HOSTILE)
    monkeypatch.setattr(approver, "provenance", lambda explicit=None: SimpleNamespace(actor="alice"))
    monkeypatch.setattr(reconciliation, "reconcile",
                        lambda model, provenance: SimpleNamespace(production=2, rows=[row], retagged=False,
                                                                    to_dict=dict))
    args = build_parser().parse_args(["registry", "reconcile", "--model-name", "m"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("ledger #4: promote ok: x?[2K?9") and _controls(out) == []


# ---------------------------------------------------------------------------------------------
# what the guards above must not catch
# ---------------------------------------------------------------------------------------------

def test_parts_of_secrets_too_short_to_be_secret_are_left_in_ordinary_output(monkeypatch):
    """A piece of a password ("2026" of Winter@2026) or a stripped value (" mlops ") is a word of
    ordinary output: redacting it garbled dates and commands ('***-03-01', 'run***registry')."""
    from mlops_common import log, settings

    monkeypatch.setenv("MLOPS_LEDGER_URL", "postgresql://mlops:Winter@2026@db/ledger")
    monkeypatch.setenv("PGPASSWORD", " mlops ")
    values = settings.secret_values()
    assert "Winter@2026" in values and "2026" not in values and "Winter" not in values
    assert "mlops" not in values and " mlops " in values
    assert log.redact("2026-03-01 12:00 promoted v3 by mlops") == \
        "2026-03-01 12:00 promoted v3 by mlops"


def test_a_stale_token_beside_basic_auth_does_not_stop_commands(monkeypatch):
    """Basic auth wins when a username and password are set (MLflow's client and ours): the
    token is never sent, so a bad one is no reason to refuse."""
    from mlops_common import settings
    from mlops_common.errors import ConfigError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "stale\n")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pppp")
    assert settings.tracking_uri() == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_TOKEN"):
        settings.tracking_uri()


@pytest.mark.parametrize("text", ["می\u200cخواهم rollback", "Müller\u00adSchmidt", "ops \U0001F469\u200d\U0001F4BB"])
def test_ordinary_writing_with_format_characters_is_accepted(text):
    from mlops.commands import flags
    from mlops_common.text import printable

    assert flags.free_text(text) == text and printable(text) == text


@pytest.mark.parametrize("text", ["a\u202eb", "x\u2066y", "\u200fz"])
def test_bidi_controls_that_reorder_a_line_are_refused(text):
    import argparse

    from mlops.commands import flags

    with pytest.raises(argparse.ArgumentTypeError):
        flags.free_text(text)


def test_log_lines_and_the_tracebacks_they_carry_show_no_form_of_a_secret():
    """``-v`` logs a bug's traceback (``exc_info``) and the watcher logs a failed delivery's
    (``logger.exception``): the exception text there was printed as it was, with the token in
    it; only the message went through the redaction."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "from mlops_common import log\n"
        "import os\n"
        "log.setup(verbose=True)\n"
        "lg = log.get('sync.test')\n"
        "secret = os.environ['CIRCLE_TOKEN']\n"
        "lg.info('message %s', secret)\n"
        "try:\n"
        "    raise RuntimeError(f'header {secret!r} rejected, raw {secret}')\n"
        "except RuntimeError as exc:\n"
        "    lg.debug('unexpected error in the deploy', exc_info=exc)\n"
        "    lg.exception('webhook: error while handling a delivery')\n"
    )
    env = {**os.environ, "CIRCLE_TOKEN": TOKEN + "\n", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Traceback") == 2 and "RuntimeError: header" in r.stderr
    assert "tok-SECRET" not in r.stderr, r.stderr
    assert r.stderr.count("***") >= 5


def test_stdout_of_every_command_shows_no_form_of_a_secret(deploy_env):
    """`sync watch --once` printed psycopg's host-name error, which holds what follows the `@` in
    a ledger password, in its `--json` document and its text lines: only stderr was redacted,
    and stdout is what CI saves (`--json > report.json`)."""
    env = deploy_env
    env.add_host("file")
    env.write_hosts_file()
    env.release("a")
    env.promote(env.register("b"))        # production v2, the host serves v1: the watch deploys
    bad = {"MLOPS_LEDGER_URL": "postgresql://u:Pw@SECRET-fragment-1@127.0.0.1:9/db"}
    for flags in (("--json",), ()):
        r = env.cli("sync", "watch", "--once", *flags, extra_env=bad)
        assert "ledger" in r.stdout, r.stdout          # the error is there...
        assert "SECRET-fragment" not in r.stdout + r.stderr, r.stdout   # ...without the secret
        if flags:
            assert json.loads(r.stdout)["passes"]


def test_the_stdout_wrapper_and_junit_files_redact_every_form(monkeypatch, capsys, tmp_path):
    """A command's printed lines and `--json` document (still valid JSON, the escaped form is
    replaced too) and the JUnit file CI keeps as an artifact."""
    import mlops.commands.registry as registry_commands
    from mlops.cli import main
    from mlops.commands.output import emit
    from mlops_common import junit

    secret = 'tok"SECRET\\4f1c'
    monkeypatch.setenv("CIRCLE_TOKEN", secret)

    def show(args):
        print(f"error: header {secret} rejected")
        emit({"error": f"header {secret} rejected"})

    monkeypatch.setattr(registry_commands, "cmd_history", show)
    assert main(["registry", "history"]) == 0
    out = capsys.readouterr().out
    assert "SECRET" not in out and out.count("***") == 2, out
    assert json.loads(out.splitlines()[1]) == {"error": "header *** rejected"}
    path = junit.write(tmp_path / "j.xml", "smoke", [junit.Case("golden", False, f"bad {secret}", 0.1)])
    assert "SECRET" not in path.read_text() and "***" in path.read_text()


def test_an_unreachable_s3_endpoint_is_named_without_its_password():
    """The `s3://` transport quoted botocore's endpoint URL as it was, password and all."""
    from botocore.exceptions import EndpointConnectionError

    from serving_sync.transports.s3 import S3Transport

    err = S3Transport("bucket", "p", client=object())._error(
        EndpointConnectionError(endpoint_url="http://minio:S3EndpointPassw0rd@127.0.0.1:1/bucket/p"), "reading")
    assert "S3EndpointPassw0rd" not in err.message and "http://minio:***@127.0.0.1:1/bucket/p" in err.message


def test_stderr_text_no_mlops_logger_formats_is_redacted_too():
    """A `warnings` message and a worker thread's traceback (threading.excepthook) go to stderr
    without passing an mlops log handler."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "import os, sys, threading, warnings\n"
        "import mlops.commands.registry as r\n"
        "from mlops.cli import main\n"
        "secret = os.environ['CIRCLE_TOKEN']\n"
        "def noisy(args):\n"
        "    warnings.warn(f'retrying https://x/?token={secret}', RuntimeWarning, stacklevel=1)\n"
        "    def fail():\n"
        "        raise RuntimeError(f'header {secret}')\n"
        "    t = threading.Thread(target=fail)\n"
        "    t.start()\n"
        "    t.join()\n"
        "r.cmd_history = noisy\n"
        "sys.exit(main(['registry', 'history']))\n"
    )
    env = {**os.environ, "CIRCLE_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "retrying https://x/?token=***" in r.stderr and "RuntimeError: header ***" in r.stderr, r.stderr
    assert "SECRET" not in r.stderr


def test_a_closed_stderr_keeps_a_user_errors_exit_code(tmp_path):
    """Found by review: with stderr closed (`2>&-`) Python's sys.stderr is None, and wrapping it
    for redaction turned the error line into an AttributeError: exit 1 instead of 2."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           "MLOPS_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "mlops", "registry", "status"], env=env, timeout=120,
                       stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert r.returncode == 2


def test_redacting_every_line_works_the_secret_forms_out_once(monkeypatch):
    """Found by review: the secret forms were worked out again for every write (100,000 lines of a
    long listing took 13 s); they are cached per set of values, and a changed value is seen."""
    import io

    from mlops_common import log, settings

    calls = []
    real = settings._forms
    monkeypatch.setattr(settings, "_forms", lambda v: calls.append(v) or real(v))
    settings._secret_forms.cache_clear()
    monkeypatch.setenv("CIRCLE_TOKEN", TOKEN)
    out = io.StringIO()
    stream = log.RedactingStream(out)
    for i in range(1000):
        stream.write(f"row {i} {TOKEN}\n")
    assert out.getvalue().count("***") == 1000 and TOKEN not in out.getvalue()
    assert calls.count(TOKEN) == 1, len(calls)
    monkeypatch.setenv("CIRCLE_TOKEN", TOKEN + "-rotated")
    stream.write(f"{TOKEN}-rotated\n")
    assert out.getvalue().endswith("***\n")


@pytest.mark.parametrize("text, shown", [("web-1\u202e2-bew", "web-1\\u202e2-bew"),
                                         ("a\u2028b", "a b"), ("x\u2066y\x1b[2J", "x\\u2066y\\x1b[2J")])
def test_an_error_line_shows_bidi_controls_and_separators_escaped(text, shown):
    """A host's stderr or file name reaches an error line through ``one_line``: a right-to-left
    override there would reorder the line the person reads (it was printed as it was)."""
    from mlops_common.errors import UserError, one_line

    assert one_line(text) == shown and str(UserError(f"host said {text}")) == f"host said {shown}"
