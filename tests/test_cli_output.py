"""``--json`` output is strict JSON: one line, NaN and infinities as null (a diverged training's
loss is NaN; JSON.parse, Go and most parsers refuse the bare token Python writes by default)."""
from __future__ import annotations

import json

import pytest

from mlops.commands import output


def _refuse(token):
    raise ValueError(f"not strict JSON: {token}")


def test_non_finite_numbers_are_null_and_the_rest_is_unchanged(capsys):
    doc = {"loss": float("nan"), "nested": [{"lr": float("inf")}, (1, -float("inf"))], "ok": 0.5,
           "n": 3, "name": "digits", "none": None}
    output.emit(doc)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    back = json.loads(out, parse_constant=_refuse)
    assert back == {"loss": None, "nested": [{"lr": None}, [1, None]], "ok": 0.5, "n": 3, "name": "digits",
                    "none": None}



def test_the_gate_report_file_is_strict_json_too(tmp_path):
    """The gate's report.json (CircleCI artifact, MLflow artifact) is read by other programs: a
    report holding a NaN (a standard error over no examples) is written with null, as --json."""
    from registry import gate

    gate.write_report_files(tmp_path / "rep", "# r", {"se": float("nan"), "rows": [float("inf"), 0.25]}, "<p>")
    text = (tmp_path / "rep" / "report.json").read_text()
    assert json.loads(text, parse_constant=_refuse) == {"se": None, "rows": [None, 0.25]}
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["report.html", "report.json", "report.md"]


def test_a_reader_that_goes_away_ends_the_command_quietly_with_sigpipes_code(tmp_path):
    """`mlops registry status | head -1` ended in a BrokenPipeError traceback (found by a sweep,
    2026-12-04). Now: nothing on stderr but the command's own lines, exit 141 (128 + SIGPIPE) as a
    command killed by SIGPIPE, which `set -o pipefail` still sees."""
    import os
    import subprocess
    import sys

    import numpy as np

    from tests.helpers import REPO

    batch = tmp_path / "batch.npz"
    np.savez(batch, images=np.zeros((4, 8, 8, 1), np.float32), labels=np.array([0, 1, 2, 3]))
    read_end, write_end = os.pipe()
    os.close(read_end)                              # the reader is gone before the command writes
    try:
        r = subprocess.run([sys.executable, "-m", "mlops", "data", "validate", str(batch)], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    with_reader = subprocess.run([sys.executable, "-m", "mlops", "data", "validate", str(batch)],
                                 capture_output=True, text=True, cwd=REPO, timeout=120)
    assert with_reader.returncode == 0 and with_reader.stdout.strip(), with_reader.stderr


def test_no_command_help_names_a_flag_the_command_does_not_take():
    """`sync infra-validate --help` told people to pass `--hosts FILE`, a flag it does not have."""
    import argparse
    import re

    from mlops.cli import build_parser

    def commands(parser, prog=""):      # the commands themselves, not their groups
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in groups:
            for name, sub in action.choices.items():
                yield from commands(sub, f"{prog} {name}".strip())
        if not groups:
            yield prog, parser

    checked = 0
    for prog, parser in commands(build_parser()):
        text = " ".join(filter(None, (parser.description, parser.epilog)))
        taken = {s for a in parser._actions for s in a.option_strings}
        for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text)):
            checked += 1
            assert flag in taken, f"`mlops {prog} --help` names {flag}, which it does not take"
    assert checked > 10


def test_an_error_line_shows_control_characters_instead_of_sending_them_to_the_terminal(tmp_path):
    """Error lines quote what hosts, servers and users sent (a host's stderr, TF Serving's error
    text, a file name, an argument). ESC sequences in them reached the terminal or the CI log
    as they were (found by the security review, 2026-12-05, fourth stop): now every control
    character is shown as ``\\xNN``, through a refusal and through a usage error alike."""
    import subprocess
    import sys

    from mlops_common.errors import UserError
    from tests.helpers import REPO

    assert UserError("host said:\x1b[2J\x1b]0;pwned\x07 done\r\n\x9b").message == \
        "host said:\\x1b[2J\\x1b]0;pwned\\x07 done \\x9b"
    hosts = tmp_path / "no\x1b[2Jsuch.toml"
    for argv in (["sync", "plan", "--hosts", str(hosts)], ["registry", "promote", "--model", "m\x1b[31mred"]):
        r = subprocess.run([sys.executable, "-m", "mlops", *argv], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert "\x1b" not in r.stderr and "\\x1b[" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr


@pytest.mark.parametrize("raised, code, line", [
    ("gate", 4, "error: the gate rejected v3"),
    ("deploy", 3, "error: the deploy failed and was rolled back"),
    ("interrupt", 130, "interrupted"),
])
def test_each_failure_is_its_own_exit_code_and_one_line(monkeypatch, capsys, raised, code, line):
    """Found by hand mutation (2026-12-05, fifth stop): only exit 1, 2 and 141 were checked, so a
    gate failure (4, what CI branches on) or a deploy rolled back (3) could have exited 2."""
    import mlops.commands.registry as registry_commands
    from mlops.cli import main
    from mlops_common.errors import DeployFailed, GateFailed

    exc = {"gate": GateFailed("the gate rejected v3"), "deploy": DeployFailed("the deploy failed and was rolled back"),
           "interrupt": KeyboardInterrupt()}[raised]

    def fail(args):
        raise exc

    monkeypatch.setattr(registry_commands, "cmd_history", fail)
    assert main(["registry", "history"]) == code
    assert capsys.readouterr().err.splitlines()[-1:] == [line]


def test_output_to_a_full_disk_is_one_line_not_a_traceback(tmp_path):
    """`mlops ... --json > result.json` where that disk is full: the write (or the flush at the
    end) raised OSError ENOSPC, printed as a bug's traceback with exit 1. Now one line saying the
    output could not be written and is incomplete, exit 2. (/dev/full answers every write with
    ENOSPC, as a full disk does.)"""
    import os
    import subprocess
    import sys

    from registry.ledger import Entry, Ledger
    from tests.helpers import REPO

    url = f"sqlite:///{tmp_path}/ledger.db"
    Ledger(url).append(Entry(action="register", model="m", to_version=1, outcome="ok"))
    env = {**os.environ, "MLOPS_HOME": str(tmp_path), "MLOPS_LEDGER_URL": url}
    for args in (["--json"], []):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "mlops", "registry", "history", "--model", "m", *args],
                               stdout=full, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines() == ["error: cannot write this command's output to <stdout> (No space left on "
                                         "device); free space where it goes (or send it elsewhere) and rerun: what "
                                         "was written there is incomplete"], r.stderr
