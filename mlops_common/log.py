"""Logging for every command: human lines on stderr, secrets redacted."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys

from .settings import secret_values

_CONFIGURED = False


class RedactingFormatter(logging.Formatter):
    """Every form of a secret's value replaced by ``***`` in the whole formatted record: the
    message, and the traceback that ``exc_info`` adds (``-v``, ``logger.exception``) — an
    exception's text can carry a token or a URL with a password, and a filter sees only the
    message (tracebacks are formatted after it). ``journal``: each line starts with the record's
    syslog priority (``journal_prefix``)."""

    def __init__(self, fmt: str | None = None, *, journal: bool = False):
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = printable(redact(super().format(record)))
        if not self.journal:
            return text
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (sd-daemon(3): 3 err, 4 warning, 6 info, 7 debug)."""
    for level, prio in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)):
        if levelno >= level:
            return prio
    return 7


def is_journal(stream) -> bool:
    """``stream`` is systemd's journal: ``JOURNAL_STREAM`` ("device:inode", set by systemd for a
    service whose output goes to the journal, systemd.exec(5)) names its file. Inherited by a
    process whose stderr goes elsewhere, it names another file: compared, as systemd says to."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(sep) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


_JOURNAL = {"stderr": False}


def journal_prefix(levelno: int = logging.ERROR) -> str:
    """``<N>`` when stderr is the journal (``setup`` found it so), else "": journald reads a line's
    leading ``<N>`` as its priority and drops it (``SyslogLevelPrefix=``, on by default). Without
    it every line of a service, an error too, was stored at priority info, and ``journalctl -p
    err`` (or an alert on it) never saw a failed deploy or an outage."""
    return f"<{priority(levelno)}>" if _JOURNAL["stderr"] else ""


class RedactingStream:
    """A text stream (stdout) that writes every form of a secret's value as ``***``: ``--json``
    documents and text tables carry messages built from exceptions (a psycopg host name holding
    part of a database password, botocore's endpoint URL), and stdout is what CI saves. One
    wrapper at the edge covers every ``print``; ``write`` and ``writelines``
    redact, every other attribute is the stream's."""

    def __init__(self, stream):
        self._stream = stream
        try:
            self._terminal = stream.isatty()
        except (OSError, ValueError, AttributeError):
            self._terminal = False

    def write(self, text: str) -> int:
        with _output_lost(self._stream, self._terminal):
            self._stream.write(printable(redact(text)))
        return len(text)

    def flush(self) -> None:
        with _output_lost(self._stream, self._terminal):
            self._stream.flush()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class OutputLost(OSError):
    """A command's output could not be written (a full disk where stdout is redirected): one
    line, not a traceback as for a bug. ``stream``: its name (``<stdout>``)."""

    stream = "<stdout>"


@contextlib.contextmanager
def _output_lost(stream, terminal: bool = False):
    try:
        yield
    except BrokenPipeError:
        raise           # a reader gone: the CLI's own case
    except OSError as exc:
        if terminal and exc.errno == errno.EIO and _hung_up(stream):
            return      # the terminal hung up (SIGHUP): what is written now is read by no one
        lost = OutputLost(exc.errno, exc.strerror)
        lost.stream = str(getattr(stream, "name", "") or "<stdout>")
        raise lost from exc


def _hung_up(stream) -> bool:
    """A terminal's write failed with EIO: it hung up (a closed window, a dropped SSH session;
    SIGHUP sent, or ignored under ``nohup``) or this is a background job of an orphaned process
    group: no one reads it, whether SIGHUP came or not (docs/architecture.md). The stream's
    descriptor is pointed at /dev/null, so that this write's buffered text, the next writes and the
    flush at exit go nowhere without an error (a logging handler on the same stream too); the
    command goes on as its signals say."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        stream.flush()
    except (OSError, ValueError, AttributeError):
        return False
    return True


def redact(text: str) -> str:
    for s in secret_values():
        text = text.replace(s, "***")
    return text


def printable(text: str) -> str:
    """``text`` with each byte that was not UTF-8 (a path from a Latin-1 shell's MLOPS_HOME, held by
    Python as a lone surrogate ``\\udce9``) shown as that byte, ``\\xe9``: every line a command writes
    spells such a path one way. Applied after ``redact``, which knows a secret's surrogate form."""
    return _ESCAPED.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


_ESCAPED = re.compile("[\udc80-\udcff]")


def setup(verbose: bool = False) -> None:
    global _CONFIGURED
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    _JOURNAL["stderr"] = is_journal(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(message)s", journal=_JOURNAL["stderr"]))
    root = logging.getLogger("mlops")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # Quieten chatty libraries unless asked.
    for name in ("paramiko", "urllib3", "botocore", "boto3", "s3transfer", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # paramiko's transport thread logs a failed SSH handshake (a port that accepts and closes) as
    # ERROR with two tracebacks; without a handler Python's last-resort one printed them around the
    # command's one line, which already says what failed. Shown (redacted) with -v only.
    logging.getLogger("paramiko").addHandler(handler if verbose else logging.NullHandler())
    _CONFIGURED = True


def get(name: str) -> logging.Logger:
    """A logger under the ``mlops`` hierarchy, e.g. ``get("sync.deploy")``."""
    return logging.getLogger(f"mlops.{name}")
