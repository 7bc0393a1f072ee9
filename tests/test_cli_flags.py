"""The shared argparse converters (mlops/commands/flags.py): each bad value is one clear reason."""
from __future__ import annotations

import argparse

import pytest

from mlops.commands import flags


@pytest.mark.parametrize("convert, text, reason", [
    (flags.version_number, "zero", "'zero' is not a version number"),
    (flags.version_number, "0", "version numbers start at 1"),
    (flags.positive_int, "1.5", "'1.5' is not a whole number"),
    (flags.positive_int, "-3", "-3 must be at least 1"),
    (flags.non_negative_int, "x", "'x' is not a whole number"),
    (flags.non_negative_int, "-1", "-1 must be 0 or more"),
    (flags.number, "fast", "'fast' is not a number"),
    (flags.number, "nan", "'nan' is not a finite number"),          # passes no comparison
    (flags.number, "-inf", "'-inf' is not a finite number"),
    (flags.version_number, "9223372036854775808", "9223372036854775808 is larger than any version number "
                                                  "(at most 2**63 - 1)"),
    (flags.repeats, "0", "--repeats must be at least 1, got 0"),
    (flags.repeats, "101", "--repeats is at most 100 (each repeat is another copy of the pool), got 101"),
    (flags.fraction, "1.2", "1.2 is not between 0 and 1"),
    (flags.seconds, "-1", "-1.0 is not between 0 and 86400 seconds"),
    (flags.seed, "-1", "a seed is 0 or more, got -1"),
    (flags.seed, "4294967296", "a seed is at most 4294967295 (2**32 - 1), got 4294967296"),
    (flags.port, "70000", "a port is 0 to 65535 (0: any free port), got 70000"),
    (flags.port, "-1", "a port is 0 to 65535 (0: any free port), got -1"),
    (flags.row_limit, "9223372036854775808",
     "9223372036854775808 is more rows than a ledger holds (at most 2**63 - 1)"),
    # found by review (2026-12-05, third stop): `mlops up --port 0` started MLflow on 5000
    (flags.service_port, "0", "a port is 1 to 65535 (the one other commands will find it at), got 0"),
    (flags.timeout, "0", "0.0 is not between 1 and 86400 seconds"),
    (flags.timeout, "0.5", "0.5 is not between 1 and 86400 seconds"),
    (flags.timeout, "86401", "86401.0 is not between 1 and 86400 seconds"),
    (flags.interval, "0", "0.0 is not between 0.5 and 86400 seconds"),
    (flags.interval, "-1", "-1.0 is not between 0.5 and 86400 seconds"),
    (flags.ratio, "0", "0 is below 1 (a ratio of the canary's latency to the old version's; 1.5 = 50% slower)"),
    (flags.ratio, "inf", "'inf' is not a finite number"),
    (flags.model_name, "", "is empty: name the registered model, or leave --model-name out to use MLOPS_MODEL_NAME"),
    (flags.actor, " ", "is empty: name who acts, or leave --actor out"),
    (flags.actor, "a\nb", "must be one line of text without control characters (newlines, escape sequences)"),
    # the ledger's actor column is VARCHAR(256): PostgreSQL refused a longer one mid-promotion
    (flags.actor, "a" * 257, "is 257 characters long; name who acts in at most 256"),
    # found by review (2026-12-06, fourteenth stop): a 100,000-character --reason failed the rollback's
    # tag write after the hosts had switched
    (flags.reason, "x" * 1001, "is 1001 characters long; say why in at most 1000"),
    (flags.reason, "ok\x1b[2K", "must be one line of text without control characters (newlines, escape sequences)"),
    (flags.output_path, "", "is empty: name the output .npz file, an existing folder or s3://bucket/key.npz"),
    (flags.bind_address, "", "is empty: name an address of this machine (e.g. 127.0.0.1, or 0.0.0.0 to "
                             "listen on every interface on purpose)"),
    # found by a sweep (2026-12-04): int() read "0_3" as 3 (a promotion moved production to v3),
    # a full-width "３" as 3, "1_0" as 10; --hosts "" fell back to another fleet
    (flags.version_number, "0_3", "'0_3' is not a version number"),
    (flags.version_number, "\uff13", "'\uff13' is not a version number"),
    (flags.positive_int, "1_0", "'1_0' is not a whole number"),
    (flags.hosts_file, "", "is empty: name the hosts file, or leave --hosts out to use MLOPS_SYNC_TARGET / "
                           "MLOPS_HOSTS_FILE"),
    # found by review (2026-12-05, fifth stop): int() refuses more than 4300 digits with a ValueError,
    # which argparse printed as "invalid convert value: '<every digit>'"
    (flags.version_number, "1" * 5000, "1111111111... (5000 digits) is larger than any version number "
                                       "(at most 2**63 - 1)"),
    (flags.positive_int, "-" + "9" * 4301, "-9999999999... (4301 digits) must be at least 1"),
    (flags.non_negative_int, "7" * 4400, "7777777777... (4400 digits) is too large"),
])
def test_bad_values_say_why(convert, text, reason):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        convert(text)
    assert str(e.value) == reason


def test_good_values_convert():
    assert flags.version_number("7") == 7 and flags.positive_int("3") == 3 and flags.non_negative_int("0") == 0
    assert flags.fraction("0.25") == 0.25 and flags.seconds("86400") == 86400.0 and flags.number("-2") == -2.0
    assert flags.seed("0") == 0 and flags.seed("4294967295") == 2**32 - 1
    assert flags.port("8080") == 8080 and flags.port("0") == 0
    assert flags.actor("é" * 256) == "é" * 256      # 256 characters fit the ledger column (not bytes)
    # the bounds themselves, and spellings the patterns take (found by hand mutation, 2026-12-05)
    assert flags.fraction("0") == 0.0 and flags.seconds("0") == 0.0 and flags.ratio("1") == 1.0
    assert flags.timeout("86400") == 86400.0 and flags.timeout("1") == 1.0 and flags.interval("0.5") == 0.5
    assert flags.positive_int("+3") == 3 and flags.number(".5") == 0.5 and flags.number("1e-3") == 0.001
    assert flags.bind_address(" 127.0.0.1 ") == "127.0.0.1"


def test_the_commands_use_these_converters():
    from mlops.cli import build_parser

    parser = build_parser()
    for argv in (["train", "--seed", "4294967296"], ["data", "make-batch", "--kind", "good", "--seed", "-1"],
                 ["sync", "watch", "--webhook-port", "70000"], ["data", "make-batch", "--kind", "good", "--out", ""],
                 ["registry", "status", "--model-name", ""], ["registry", "promote", "--version", "1", "--actor", ""],
                 ["sync", "rollback", "--actor", " "], ["sync", "infra-validate", "--version", "1", "--timeout", "0"],
                 ["sync", "deploy", "--timeout", "0"], ["sync", "watch", "--interval", "0"],
                 # found by review (2026-12-05, ninth stop): a wait of 0.01 s failed a good version
                 ["sync", "deploy", "--timeout", "0.5"],
                 ["sync", "infra-validate", "--version", "1", "--timeout", "0.9"],
                 ["registry", "promote", "--version", "0_3"], ["sync", "status", "--hosts", ""],
                 ["sync", "rollback", "--hosts", " "], ["registry", "history", "--model", ""], ["up", "--port", "0"],
                 # found by review (2026-12-05, third stop): int() read "0_1" as 1, "３２" as 32
                 ["evaluate", "--version", "0_1"], ["evaluate", "--version", "\uff11"], ["train", "--epochs", "0_2"],
                 ["retrain", "--incoming", "b.npz", "--batch-size", "\uff13\uff12"], ["demo", "--epochs", "1_0"],
                 ["registry", "history", "--limit", str(2**63)],      # an OverflowError traceback from SQLite
                 # float() read "0_01" as 1.0 and full-width digits as digits
                 ["train", "--learning-rate", "0_01"], ["retrain", "--incoming", "b.npz", "--learning-rate", "\uff11"],
                 ["sync", "deploy", "--bake", "3_0"], ["registry", "gate", "--version", "1", "--min-accuracy", "0_9"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2, argv


@pytest.mark.parametrize("argv", [["retrain", "--incoming", ""], ["retrain", "--incoming", "  "],
                                  ["data", "validate", ""]])
def test_an_empty_batch_location_is_refused_not_a_retrain_on_no_new_data(argv, capsys):
    """CircleCI's ``--incoming "${INCOMING:-$MLOPS_INCOMING}"`` is empty when neither is set: that
    registered a version trained on nothing new, which then went to the gate and the approval."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "is empty: name a .npz batch, a folder of them or s3://bucket/prefix" in capsys.readouterr().err


def test_limits_refuse_a_latency_ratio_that_is_not_a_finite_number():
    from mlops_common.errors import ConfigError
    from serving_sync.bake import Limits

    for bad in (float("nan"), float("inf"), 0.5):
        with pytest.raises(ConfigError, match="--max-latency-ratio"):
            Limits(max_latency_ratio=bad)
    with pytest.raises(ConfigError, match="--max-error-rate"):
        Limits(max_error_rate=float("nan"))


def test_an_empty_webhook_host_is_refused_not_every_interface(monkeypatch):
    """``--webhook-host "$HOST"`` with HOST unset bound the receiver on 0.0.0.0; a deploy trigger
    then listened on every network the machine is on."""
    from mlops.cli import build_parser

    parser = build_parser()
    for value in ("", "  "):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["sync", "watch", "--webhook-port", "0", "--webhook-host", value])
        assert e.value.code == 2
    assert parser.parse_args(["sync", "watch", "--webhook-host", "0.0.0.0"]).webhook_host == "0.0.0.0"
    # not given: None (so that a --webhook-host without --webhook-port is refused); the receiver
    # then binds 127.0.0.1
    args = parser.parse_args(["sync", "watch", "--webhook-port", "0"])
    assert args.webhook_host is None
    from types import SimpleNamespace

    from mlops.commands import sync

    monkeypatch.setenv("MLOPS_WEBHOOK_SECRET", "whsec-0123456789abcdef-for-test")
    receiver = sync._start_receiver(args, "digits", SimpleNamespace(production_moved=lambda e: None),
                                    SimpleNamespace(trigger=lambda reason: None))
    try:
        assert receiver.url.startswith("http://127.0.0.1:")
    finally:
        receiver.stop()


def test_a_zero_timeout_is_refused_with_a_message_that_does_not_contradict_itself():
    from mlops_common.errors import ConfigError
    from serving_sync.options import DeployOptions

    with pytest.raises(ConfigError) as e:
        DeployOptions(timeout=0)
    assert str(e.value) == "--timeout must be between 1 and 86400 seconds, got 0"


def test_a_bake_variable_out_of_range_names_the_variable_not_a_flag(monkeypatch):
    """MLOPS_BAKE_MAX_LATENCY_RATIO=0 said "--max-latency-ratio must be ...", a flag nobody gave."""
    from mlops.cli import build_parser
    from mlops.commands.sync import _rollout_setting
    from mlops_common.errors import ConfigError

    args = build_parser().parse_args(["sync", "plan"])
    monkeypatch.setenv("MLOPS_BAKE_MAX_LATENCY_RATIO", "0")
    with pytest.raises(ConfigError) as e:
        _rollout_setting(args, "max_latency_ratio")
    assert str(e.value).startswith("MLOPS_BAKE_MAX_LATENCY_RATIO='0': 0 is below 1")
    monkeypatch.setenv("MLOPS_BAKE_MAX_LATENCY_RATIO", "2")
    assert _rollout_setting(args, "max_latency_ratio") == 2.0


@pytest.mark.parametrize("argv, prog", [(["registry", "status", "--bogus"], "mlops registry status"),
                                        (["sync", "deploy", "--bogus", "x"], "mlops sync deploy"),
                                        (["data", "validate", "a.npz", "--nope"], "mlops data validate")])
def test_an_unknown_flag_points_at_its_own_commands_usage(argv, prog, capsys):
    """It pointed at `mlops --help` (the top parser finds unknown flags after the command's)."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: ") and err.rstrip().endswith(f"(usage: `{prog} --help`)")


@pytest.mark.parametrize("argv", [["train", "--epoch", "2"], ["train", "--data", "digits"],
                                  ["sync", "deploy", "--canar", "0"]])
def test_an_abbreviated_flag_is_an_error_not_a_guess(argv, capsys):
    """`mlflow run -P epoch=2` appends `--epoch 2`: argparse took it for --epochs and trained 2
    epochs while the run's parameters said 10."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    flag = next(a for a in argv if a.startswith("--"))
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_min_traffic_ratio_flows_from_flag_or_setting_into_the_bake_limits(monkeypatch):
    """``--min-traffic-ratio`` / ``MLOPS_BAKE_MIN_TRAFFIC_RATIO`` reach ``bake.Limits`` as the other
    bake limits do (flag, else setting, else 0.25); out of [0, 1] names the variable."""
    from mlops.cli import build_parser
    from mlops.commands.sync import _deploy_options
    from mlops_common.errors import ConfigError

    parser = build_parser()
    monkeypatch.delenv("MLOPS_BAKE_MIN_TRAFFIC_RATIO", raising=False)
    assert _deploy_options(parser.parse_args(["sync", "deploy"])).limits.min_traffic_ratio == 0.25
    monkeypatch.setenv("MLOPS_BAKE_MIN_TRAFFIC_RATIO", "0.4")
    assert _deploy_options(parser.parse_args(["sync", "deploy"])).limits.min_traffic_ratio == 0.4
    args = parser.parse_args(["sync", "deploy", "--min-traffic-ratio", "0.1"])
    assert _deploy_options(args).limits.min_traffic_ratio == 0.1
    monkeypatch.setenv("MLOPS_BAKE_MIN_TRAFFIC_RATIO", "2")
    with pytest.raises(ConfigError, match="MLOPS_BAKE_MIN_TRAFFIC_RATIO='2'"):
        _deploy_options(parser.parse_args(["sync", "deploy"]))


@pytest.mark.parametrize("argv", [["sync", "rollback"], ["sync", "deploy"], ["registry", "rollback"],
                                  ["registry", "promote", "--version", "1"]])
def test_every_reason_flag_is_bounded_before_anything_runs(argv, capsys):
    """Each command's --reason goes through the same bound (a rollback's used to be written to a
    tag only after its hosts had switched, and a too-long one failed there)."""
    from mlops.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*argv, "--reason", "x" * 1001])
    assert info.value.code == 2
    assert "is 1001 characters long; say why in at most 1000" in capsys.readouterr().err
