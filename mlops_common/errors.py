"""Errors a user can cause, reported as one actionable line (tracebacks are for bugs)."""
from __future__ import annotations

from mlops_common.text import has_control, is_control


def _escaped(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text: str) -> str:
    """``text`` with every control character shown as ``\\xNN`` (newlines and tabs too), and
    line/paragraph separators and bidi controls as ``\\uNNNN``: what hosts, servers and users
    sent (a host's stderr, TF Serving's error text, a file name) must not repaint the terminal
    or a CI log that shows it, nor reorder the line. The characters are ``text.is_control``'s,
    the one rule of what may not reach a terminal; ``text.printable`` replaces them instead."""
    s = str(text)
    return "".join(_escaped(c) if is_control(c) else c for c in s) if has_control(s) else s


def one_line(text: str) -> str:
    """``text`` as one printable line: whitespace runs become one space, any other control
    character is shown as ``\\xNN`` (``printable``)."""
    return printable(" ".join(str(text).split()))


def exc_text(exc: BaseException, limit: int) -> str:
    """An exception's text on one line (whitespace runs as one space; its class name when it has
    none), cut to ``limit`` characters ending in ``...``: the cause inside a longer message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class UserError(Exception):
    """Something the person running the command can fix.

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
    The message should say what is wrong *and* what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None):
        # Keep it to one line: the CLI contract is "one clear line".
        super().__init__(one_line(message))
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


def reworded(exc: UserError, message: str) -> UserError:
    """``exc`` saying ``message`` instead: the same class (what callers catch), its exit code and
    its attributes (``DamagedModel.problem`` stays the problem without the advice,
    ``ProductionMoved.now``, ``DiskFull.free``...). Its constructor is not called: rebuilt from the
    message, a problem became the whole line, and a class whose constructor takes other arguments
    (``ProductionMoved``, ``CanaryFailed``) became a plain ``UserError`` with none of them."""
    again = type(exc).__new__(type(exc))
    again.__dict__.update(vars(exc))
    UserError.__init__(again, message)
    return again


class ConfigError(UserError):
    """A missing or malformed setting, variable, flag or file."""


class _ModelProblem(ConfigError):
    """A model that cannot serve its role. ``problem`` says what is wrong without the advice,
    which depends on the model's role (a candidate is registered again; production is moved)."""

    def __init__(self, message: str, *, problem: str = "", exit_code: int | None = None):
        super().__init__(message, exit_code=exit_code)
        self.problem = problem or message


class DamagedModel(_ModelProblem):
    """A logged model that cannot be loaded, or a version's files changed in the artifact store
    since registration (``bundle_hashes``)."""


class UnfitModel(_ModelProblem):
    """A logged model that loads but is not one of this project's classifiers for the data set: it
    takes images of another shape, or does not answer one probability per class."""


class NotFoundError(UserError):
    """A model, version, run, host or file that does not exist."""


class ConnectionFailure(UserError):
    """A service (MLflow, an SSH host, TF Serving, S3) could not be reached."""


class RefusedError(UserError):
    """A request that is understood but refused by policy (gate, host key, lock...)."""


class DeployFailed(UserError):
    """A deploy failed and was rolled back; the message says why and what to do."""

    exit_code = 3


class GateFailed(UserError):
    """The quality gate rejected a version."""

    exit_code = 4
