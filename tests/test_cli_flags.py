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
    (flags.fraction, "1.2", "1.2 is not between 0 and 1"),
    (flags.seconds, "-1", "-1.0 is not between 0 and 86400 seconds"),
])
def test_bad_values_say_why(convert, text, reason):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        convert(text)
    assert str(e.value) == reason


def test_good_values_convert():
    assert flags.version_number("7") == 7 and flags.positive_int("3") == 3 and flags.non_negative_int("0") == 0
    assert flags.fraction("0.25") == 0.25 and flags.seconds("86400") == 86400.0 and flags.number("-2") == -2.0
