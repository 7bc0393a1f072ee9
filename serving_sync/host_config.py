"""Read and write a host's ``models.config`` through its transport (the I/O edge of models_config).

Reading a malformed file fails with one line naming the host and file (it is never overwritten
blindly); writing is atomic (temp file + rename, or one PUT on S3) and skipped when unchanged.
"""
from __future__ import annotations

from . import models_config as mc
from .layout import MODELS_CONFIG
from .transports.base import Transport


def read(transport: Transport) -> mc.ServingConfig:
    """The host's current config (empty when the file does not exist yet)."""
    text = read_text(transport)
    return mc.ServingConfig() if text is None else mc.parse(text, f"{transport.url}/{MODELS_CONFIG}")


def read_text(transport: Transport) -> str | None:
    """The exact models.config text (None: the file does not exist yet); not UTF-8 is one line."""
    try:
        data = transport.read_file(MODELS_CONFIG)
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        from mlops_common.errors import ConfigError

        raise ConfigError(f"{transport.url}/{MODELS_CONFIG} is not UTF-8 text; fix it by hand") from None


def write(transport: Transport, config: mc.ServingConfig, *,
          known: mc.ServingConfig | None = None) -> tuple[str, bool]:
    """Write ``config``; returns (text, changed). Unchanged content is not rewritten.
    ``known``: what the caller last applied there (see ``write_text``)."""
    text = mc.render(config)
    return text, write_text(transport, text, known=None if known is None else mc.render(known))


def write_text(transport: Transport, text: str, *, known: str | None = None) -> bool:
    """The one writer of models.config: this exact text, atomically, unless it is already there.

    ``known`` is the text the caller believes is there (it wrote or read it under the host lock).
    When it differs from ``text`` the file is written without reading it first — over SSH that is
    four SFTP round trips fewer per config step, and a deploy has four steps per host. A wrong
    belief costs at most an identical rewrite and reload; a write is only ever skipped after
    reading the very same text from the host."""
    if known is None or known == text:
        try:
            if transport.read_file(MODELS_CONFIG).decode("utf-8", errors="replace") == text:
                return False
        except FileNotFoundError:
            pass
    transport.write_file_atomic(MODELS_CONFIG, text.encode("utf-8"))
    return True
