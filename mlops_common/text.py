"""Free text (reasons, actors, host names read back from the ledger or MLflow) made safe to show.

``has_control`` / ``printable`` for a terminal: control characters (ESC, CR, BEL, OSC...), line
and paragraph separators and bidi controls could move the cursor, rewrite a line already printed,
retitle the window or reorder what a line says. ``markdown_text`` for MLflow's Markdown
descriptions: free text is shown as text, never as markup (links, images, HTML, table cells).
"""
from __future__ import annotations

import re
import unicodedata

# a decimal number as written in ASCII: float() also takes "0_1" (1.0) and full-width digits
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def is_decimal(text: str) -> bool:
    """Whether ``text`` (spaces around it aside) is a plain ASCII decimal (``1``, ``-0.5``,
    ``1e-3``): what a flag or a setting takes as a number, where ``float()`` would read more."""
    return _DECIMAL.fullmatch(text.strip()) is not None


_CONTROL_CATEGORIES = frozenset(("Cc", "Zl", "Zp"))
# The format characters (category Cf) that reorder or hide text: bidi marks, embeddings, overrides
# and isolates. Other Cf characters are parts of ordinary writing (the zero-width non-joiner of
# Persian, the joiner of emoji sequences, the soft hyphen) and stay.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u061c" + "".join(map(chr, range(0x202A, 0x202F)))
                           + "".join(map(chr, range(0x2066, 0x206A))))


def is_control(c: str) -> bool:
    """Whether the character ``c`` is a control character, a line/paragraph separator, or a bidi
    control that could make a line read other than it is."""
    return c in _BIDI_CONTROLS or unicodedata.category(c) in _CONTROL_CATEGORIES


def has_control(text: str) -> bool:
    return any(is_control(c) for c in text)


def printable(text: object, replacement: str = "?") -> str:
    """``text`` for one terminal line: newlines and tabs as spaces, any other control character
    as ``replacement``."""
    s = "" if text is None else str(text)
    if not has_control(s):
        return s
    return "".join(" " if c in "\n\t" else replacement if is_control(c) else c for c in s)


# Backslash escapes both CommonMark and showdown (MLflow's renderer) honour; ':' and '.' so that a
# bare URL or e-mail address is not turned into a link (showdown's simplifiedAutoLink).
_MD_ESCAPED = frozenset("\\`*[]()!|~:.")
_HTML = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
CUT = "…"


def _ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _markdown_char(s: str, i: int) -> str:
    """``s[i]`` as literal Markdown. ``_`` between two ASCII letters or digits stays: neither
    CommonMark nor showdown's github flavour (literalMidWordUnderscores) makes it emphasis, and
    host names and statuses (``gpu_host_a``, ``rolled_back``) stay readable in the raw text.
    ``@`` only where showdown's ghMentions would make a GitHub link of it (at the start or after
    a space, before a letter or digit): showdown drops the backslash there, and only there."""
    c = s[i]
    if c in _HTML:
        return _HTML[c]
    if c in _MD_ESCAPED:
        return "\\" + c
    if c == "_" and not (0 < i < len(s) - 1 and _ascii_alnum(s[i - 1]) and _ascii_alnum(s[i + 1])):
        return "\\_"
    if c == "@" and (i == 0 or s[i - 1].isspace()) and i + 1 < len(s) and _ascii_alnum(s[i + 1]):
        return "\\@"
    return c


def markdown_text(text: object, limit: int | None = None) -> str:
    """``text`` as literal text inside one line of Markdown (a paragraph or a table cell): control
    characters and newlines as spaces, Markdown punctuation backslash-escaped, HTML's ``< > &`` as
    entities. ``limit``: at most that many characters of the result, cut between two escapes
    (never inside ``\\|`` or ``&amp;``) and ending in ``…`` when cut."""
    s = printable(text, " ")
    pieces = [_markdown_char(s, i) for i in range(len(s))]
    if limit is None or sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    out, used = [], len(CUT)
    for piece in pieces:
        if used + len(piece) > limit:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + CUT
