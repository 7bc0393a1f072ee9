"""Free text (reasons, actors, host names read back from the ledger or MLflow) made safe to show.

``has_control`` / ``printable`` for a terminal: control characters (ESC, CR, BEL, OSC...), line
and paragraph separators and bidi controls could move the cursor, rewrite a line already printed,
retitle the window or reorder what a line says. ``markdown_text`` for MLflow's Markdown
descriptions: free text is shown as text, never as markup (links, images, HTML, table cells).
"""
from __future__ import annotations

import unicodedata

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


def markdown_text(text: object) -> str:
    """``text`` as literal text inside one line of Markdown (a paragraph or a table cell): control
    characters and newlines as spaces, Markdown punctuation backslash-escaped, HTML's ``< > &`` as
    entities."""
    s = printable(text, " ")
    return "".join(_HTML.get(c) or (f"\\{c}" if c in _MD_ESCAPED else c) for c in s)
