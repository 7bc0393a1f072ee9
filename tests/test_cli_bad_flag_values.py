"""Bad command-line values (found by a sweep of every command): one line, a non-zero exit,
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



@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_report_dir_is_refused_not_a_gate_that_writes_no_report(value, capsys):
    """``registry gate --report-dir "$REPORTS"`` with the variable unset: the gate ran, recorded its
    verdict and wrote no report (``if report_dir:``), exit 0; CI's artifact step then stored nothing."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["registry", "gate", "--version", "1", "--report-dir", value])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: argument --report-dir: is empty: name the folder for report.md, report.json and report.html, "
        "or leave --report-dir out (usage: `mlops registry gate --help`)\n")


@pytest.mark.parametrize("argv", [["sync", "watch", "--webhook-port", "0", "--secret-env", ""],
                                  ["sync", "watch", "--secret-env", " "]])
def test_an_empty_secret_env_is_refused_not_the_default_variable(argv, capsys):
    """``sync watch --webhook-port 0 --secret-env "$VAR_NAME"`` with the variable unset verified the
    webhooks with MLOPS_WEBHOOK_SECRET instead (``registry webhook create`` refuses an empty name);
    without --webhook-port an empty one passed unremarked, where a named one is refused."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: argument --secret-env: is empty: name the environment variable holding the webhook's HMAC "
        "secret, or leave --secret-env out to use MLOPS_WEBHOOK_SECRET (usage: `mlops sync watch --help`)\n")


@pytest.mark.parametrize("argv", [["registry", "promote", "--pipeline-id", "pipe-\udcff"],
                                  ["registry", "webhook", "create", "--url", "http://127.0.0.1:9/hook-\udcff"]])
def test_a_flag_sent_to_mlflow_that_is_not_utf8_is_one_usage_line_not_a_traceback(argv, capsys):
    """Bytes of another encoding (a Latin-1 terminal's ``é`` reaches Python as a lone surrogate) in
    ``--pipeline-id`` or the webhook's ``--url`` were a UnicodeEncodeError traceback from requests
    or MLflow's protobuf, exit 1; they are refused as the other text flags are."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: argument {argv[-2]}: is not UTF-8 text"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["data", "validate", "s3://bucket/new-\udcff"],
                                  ["retrain", "--incoming", "s3://bucket/new-\udcff"],
                                  ["data", "make-batch", "--kind", "good", "--out", "s3://bucket/b-\udcff.npz"]])
def test_an_s3_location_that_is_not_utf8_is_one_usage_line_not_a_botocore_traceback(argv, capsys):
    """A lone surrogate (bytes of another encoding) in an ``s3://`` key was a UnicodeEncodeError
    traceback from botocore's URL encoding, exit 1. A local path keeps any bytes it may have."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and len(err.splitlines()) == 1, err
    local = [a.replace("s3://bucket/", "/tmp/") for a in argv]
    assert build_parser().parse_args(local) is not None      # a file name of any bytes is still a path


@pytest.mark.parametrize("argv", [["sync", "status", "-v"], ["registry", "history", "--verbose", "--limit", "3"]])
def test_verbose_after_the_command_says_where_it_goes(argv, capsys):
    """``mlops sync status -v`` said "unrecognized arguments: -v (usage: `mlops sync status --help`)",
    a usage that does not list -v: the flag belongs to ``mlops`` itself, before the command."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    cmd = " ".join(argv[:2])
    assert capsys.readouterr().err == f"error: -v/--verbose goes before the command: `mlops -v {cmd} ...` " \
                                      f"(usage: `mlops --help`)\n"
