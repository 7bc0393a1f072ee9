"""``ssh_scripts.SCRIPT_COMMANDS`` names every command the host scripts run.

The tuple is what the scripts unset as shell functions before they run (a deploy user's ~/.bashrc
or ~/.zshenv that defines ``mkdir() { command mkdir -p "$@"; }`` would replace the scripts' own
commands). It is kept by hand: a command added to a script and not to the tuple is reached by such
a function again. The scripts are read here by a small scanner of the shell grammar they use
(quotes, ``$(...)``, pipelines, lists, subshells, ``if``/``while``/``for``/``case``, redirections,
assignments, and the commands ``eval`` and ``trap`` carry in their arguments); a construct it does
not know (a here-document, backquotes) fails the test instead of being skipped.
"""
from __future__ import annotations

import re

import pytest

from serving_sync.hosts import Target
from serving_sync.transports import ssh_scripts
from serving_sync.transports.ssh import SshTransport
from serving_sync.transports.ssh_scripts import (
    PY_TEE_MIN_BYTES,
    SCRIPT_COMMANDS,
    fetch_script,
    host_command,
    listing_script,
    upload_script,
)

_OPS = ("&&", "||", ";;", "|", ";", "&", "(", ")", "\n")
_START = {"if", "then", "elif", "else", "do", "while", "until", "!", "{"}
_END = {"fi", "done", "esac", "}"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REDIR = re.compile(r"[0-9]*(>>|>&|<&|>|<)")


def _subst_end(text: str, i: int) -> int:
    """``text[i:]`` starts inside ``$(``: the index just past its ``)``."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            i = text.index("'", i + 1) + 1
            continue
        if c == '"':
            i = _dquote_end(text, i + 1)
            continue
        if text.startswith("$(", i):
            i = _subst_end(text, i + 2)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise AssertionError(f"unterminated $( in {text!r}")


def _dquote_end(text: str, i: int) -> int:
    """``text[i:]`` starts inside a double-quoted string: the index just past its closing quote."""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        elif text.startswith("$(", i):
            i = _subst_end(text, i + 2)
        elif c == "`":
            raise AssertionError("backquotes: the scanner does not read them; use $(...)")
        else:
            i += 1
    raise AssertionError(f"unterminated double quote in {text!r}")


def _tokens(text: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(kind, raw, value) tokens: kind "op", "redir" or "word"; value is the word without its quotes. Also
    the texts of every ``$(...)`` (scanned as scripts of their own)."""
    tokens: list[tuple[str, str, str]] = []
    substs: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if text.startswith("\\\n", i):
            i += 2
            continue
        if c == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        if text.startswith("<<", i) and not text.startswith("<<<", i):
            raise AssertionError("here-document: the scanner does not read them")
        m = _REDIR.match(text, i)
        if m:
            tokens.append(("redir", m.group(), m.group()))   # its target is the next word
            i = m.end()
            continue
        op = next((o for o in _OPS if text.startswith(o, i)), None)
        if op is not None:
            tokens.append(("op", op, op))
            i += len(op)
            continue
        start, value = i, ""
        while i < len(text) and text[i] not in " \t\n;&|()<>":
            c = text[i]
            if c == "\\":
                value += text[i + 1:i + 2]
                i += 2
            elif c == "'":
                j = text.index("'", i + 1)
                value += text[i + 1:j]
                i = j + 1
            elif c == '"':
                j = _dquote_end(text, i + 1)
                inner = text[i + 1:j - 1]
                for m in re.finditer(r"\$\(", inner):
                    if not inner.startswith("$((", m.start()):
                        end = _subst_end(inner, m.end())
                        substs.append(inner[m.end():end - 1])
                value += inner
                i = j
            elif text.startswith("$((", i):
                j = text.index("))", i) + 2
                value += text[i:j]
                i = j
            elif text.startswith("$(", i):
                j = _subst_end(text, i + 2)
                substs.append(text[i + 2:j - 1])
                value += text[i:j]
                i = j
            elif c == "`":
                raise AssertionError("backquotes: the scanner does not read them; use $(...)")
            else:
                value += c
                i += 1
        tokens.append(("word", text[start:i], value))
    return tokens, substs


def commands_of(script: str, variables: dict[str, set[str]] | None = None) -> set[str]:
    """The command names ``script`` runs: literal command words, the values a variable used as a
    command word is given in the script (``H=sha256sum`` ... ``$H``), and the commands in the
    scripts ``eval`` and ``trap`` are given and in every ``$(...)``."""
    variables = {} if variables is None else variables
    found: set[str] = set()
    used_vars: set[str] = set()
    nested: list[str] = []

    def scan(text: str) -> None:
        tokens, substs = _tokens(text)
        nested.extend(substs)
        state = "start"           # start | args | redir | for | case-word | case-in | pattern
        cmd = None
        args: list[str] = []
        for kind, raw, value in tokens:
            if state == "redir":
                state = "args" if cmd is not None else "start"
                continue
            if kind == "redir":
                state = "redir"
                continue
            if state == "for":
                if kind == "op" and raw in (";", "\n"):
                    state = "for-do"
                continue
            if state == "for-do":
                if value == "do":
                    state = "start"
                continue
            if state == "case-word":
                state = "case-in"
                continue
            if state == "case-in":
                assert value == "in", f"case without in: {text!r}"
                state = "pattern"
                continue
            if state == "pattern":
                if value == "esac":
                    state = "args"
                elif raw == ")":
                    state = "start"
                continue
            if kind == "op":
                if cmd in ("eval", "trap") and args:
                    nested.append(args[0])
                cmd, args = None, []
                state = "pattern" if raw == ";;" else "start"
                continue
            if state == "start":
                if value in _START:
                    continue
                if value in _END:
                    state = "args"
                    continue
                if value == "for":
                    state = "for"
                    continue
                if value == "case":
                    state = "case-word"
                    continue
                name, eq, _ = value.partition("=")
                if eq and _NAME.fullmatch(name):          # an assignment before (or instead of) a command
                    val = value.partition("=")[2].split()
                    if val:
                        variables.setdefault(name, set()).add(val[0])
                    continue
                cmd, args, state = value, [], "args"
                if value.startswith("$"):
                    used_vars.add(value.strip("${}"))
                else:
                    found.add(value)
                continue
            args.append(value)
        if cmd in ("eval", "trap") and args:
            nested.append(args[0])

    nested.append(script)
    for _ in range(1000):       # bounded: every nested script is shorter than the one it came from
        if not nested:
            break
        scan(nested.pop())
    for name in used_vars:
        values = variables.get(name, set())
        assert values, f"the variable {name} is run as a command and never given a command name"
        found |= {v for v in values if not v.startswith("$")}
    return found


def _inline_scripts() -> list[str]:
    """The commands ``SshTransport`` builds itself (free space, a tree's removal)."""
    ran: list[str] = []

    class FakeT:
        def is_active(self):
            return True

    t = SshTransport(Target("ssh", "/srv/models base", host="h", port=22, user="u"), FakeT())

    def record(command):
        ran.append(command)
        return 0, b"@serving-sync\n@df 1\n", b""
    t._exec = record
    t.disk_free()
    t.remove_tree("digits/1")
    assert len(ran) == 2
    return ran


def all_scripts() -> dict[str, str]:
    nonce = "0123456789abcdef0123"
    return {
        "listing": listing_script("/srv/models base/digits/1"),
        "upload-small": upload_script("/srv/m/digits", "/srv/m/digits/.incoming-1", 1000),
        "upload-unknown-size": upload_script("/srv/m/digits", "/srv/m/digits/.incoming-1", None),
        "upload-big": upload_script("/srv/m/digits", "/srv/m/digits/.incoming-1", 1000,
                                    stream_bytes=PY_TEE_MIN_BYTES),
        "fetch": fetch_script("/srv/m/digits", "/srv/m/digits/.incoming-1", 1000, nonce=nonce),
        **{f"inline-{i}": s for i, s in enumerate(_inline_scripts())},
    }


# Variables the scripts run as commands whose values are paths found at run time: the host's
# python3 (``_PICK_PYTHON``, ``_sync_section``), tried by its absolute path.
PATH_VARIABLES = {"P": {"python3"}, "SP": {"python3"}, "c": {"python3"}}


def missing_commands(scripts: dict[str, str], names) -> dict[str, set[str]]:
    out = {}
    for what, script in scripts.items():
        variables = {k: set(v) for k, v in PATH_VARIABLES.items()}
        # what the host's login shell is given: the defaults, then the script through eval
        tail = host_command(script)[len(ssh_scripts.SHELL_DEFAULTS):]
        missing = commands_of(tail, variables) - set(names)
        if missing:
            out[what] = missing
    return out


def test_every_command_the_host_scripts_run_is_in_script_commands():
    """Found by review (2026-12-06, fifteenth stop): nothing checked the hand-kept tuple, and it
    lacked the special built-ins the scripts call (``exit``, ``set``, ``trap``, ``exec``, ``eval``,
    ``:``), which bash — outside POSIX mode — lets a startup file's function replace (an
    ``exit() { ...; }`` in ~/.bashrc ran instead of the scripts' every ``exit 96``)."""
    assert missing_commands(all_scripts(), SCRIPT_COMMANDS) == {}


@pytest.mark.parametrize("name", sorted({n for s in all_scripts().values()
                                         for n in commands_of(host_command(s)[len(ssh_scripts.SHELL_DEFAULTS):],
                                                              {k: set(v) for k, v in PATH_VARIABLES.items()})}))
def test_a_command_left_out_of_script_commands_is_found(name):
    """The check fails for any one command dropped from the tuple."""
    left = tuple(n for n in SCRIPT_COMMANDS if n != name)
    assert any(name in m for m in missing_commands(all_scripts(), left).values())


def test_the_scanner_finds_commands_wherever_the_grammar_puts_them():
    script = """a=1 b=$(alpha -x "$(beta "q")") gamma 2>/dev/null >&2 arg | delta
if ! epsilon; then zeta; elif [ -n "$x" ]; then eta & fi
while theta; do ( iota; kappa ) && { lambda; } || mu; done
for c in nu xi; do omicron "$c"; done
case "$v" in ''|*[!0-9]*) pi ;; x) rho;; esac
trap 'sigma -f -- x' EXIT; eval 'tau; upsilon'
s=$(phi < file) && echo "@x $s"
X="chi -a"; $X y; Y=psi; "$Y"
exec 3>&1
printf '%s' "not_a_command" | omega \\
  --flag
"""
    assert commands_of(script) == {
        "gamma", "alpha", "beta", "delta", "epsilon", "zeta", "[", "eta", "theta", "iota", "kappa", "lambda",
        "mu", "omicron", "pi", "rho", "trap", "sigma", "eval", "tau", "upsilon", "phi", "echo", "chi",
        "psi", "exec", "printf", "omega"}


def test_the_scanner_refuses_what_it_cannot_read():
    with pytest.raises(AssertionError, match="here-document"):
        commands_of("cat <<EOF\nx\nEOF\n")
    with pytest.raises(AssertionError, match="backquotes"):
        commands_of("a=`date`\n")
