"""The POSIX sh scripts serving_sync runs on an SSH host, and the parsing of their output.

Each script prints a marker first, so a missing marker means the account has no real shell
(e.g. sftp-only) and the transport falls back to SFTP. Every exec costs a process spawn on
the host (~0.1 s), so one script does as much as possible: check space, create the temporary
directory, extract the tar stream while hashing it, then list names and sizes — one round trip
per publish.
"""
from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from ..manifest import HostListing, parse_hash_lines
from .base import FLUSH_EACH_UP_TO

MARK = "@serving-sync"
# The marker on a line of its own even after a login shell's startup file printed text without a
# newline (``printf motd`` in ~/.bashrc): glued to it, the marker was not found, the account was
# taken for one with no shell, and the upload fell back to SFTP into the directory the script had
# already created.
MARK_LINE = f"printf '\\n%s\\n' {MARK}"
# sshd makes bash read ~/.bashrc before every command, and options set there carried into the
# scripts, which are written for the shell's defaults: `set -e` ended a pull at the `wait` on its
# killed watcher (exit 143, no output) and a failed fetch before its message. Every command starts
# by turning them off (pipefail only where the shell has it: dash refuses the option, and a
# special built-in's error would end the command).
# A restricted login shell (rbash: no redirection, no cd) cannot run them at all: it says so first.
# Aliases the startup file defines (with `shopt -s expand_aliases`: `alias df='df -h'` made the
# free-space check read "1.2G", so no check at all) are removed, and the line ends there: bash
# expands aliases a line at a time, so an `unalias` reaches only the lines after its own.
# zsh as the login shell does not split unquoted variables (`$H`, "openssl dgst -sha256 -r", was one
# command name: every listing failed, exit 94, and no upload's stream hash came back): `emulate -R
# sh` (zsh only; tried in a subshell first so bash and dash neither print nor stop) gives it sh's
# rules and options, whatever ~/.zshenv set. Functions the startup file defines (`mkdir() {
# command mkdir -p "$@"; }`) would still replace the scripts' commands: each name they run is
# unset as a function (a name with no function is no error in bash, dash or zsh). The host's
# messages are read for what they say (``oserrors.from_stderr``: "Permission denied", "No space
# left on device") and `sync --help` for its FILE: they run in the C locale (what a login with no
# locale at all has), not the deploy user's (German: "Keine Berechtigung" was a bare "cannot
# create"). tar keeps UTF-8 names in it as they are. IFS is unset (default splitting): a startup
# file's `IFS=$'\n'` left `$H` one word, and every hash listing failed. So are CDPATH (a relative
# `cd` went to a folder of that name elsewhere) and TAR_OPTIONS (`--strip-components=1` exported
# by the deploy user unpacked every upload one level up: verification failed). Special
# built-ins too (`exit`, `set`, `trap`, `exec`, `eval`, `break`, `:`): bash outside POSIX mode and
# zsh, even under `emulate sh`, run a function of that name instead (`exit() { ...; }`: every
# `exit 96` went on). tests/test_ssh_scripts_commands.py reads the scripts for every command name
# they run and fails when one is missing here.
RESTRICTED, RESTRICTED_EXIT = "@restricted", 90
SCRIPT_COMMANDS = (":", "[", "awk", "break", "cd", "command", "curl", "df", "dirname", "echo", "eval", "exec",
                   "exit", "find", "grep", "head", "kill", "mkdir", "mkfifo", "openssl", "printf", "python3",
                   "read", "rm", "set", "sha256sum", "shasum", "sleep", "sync", "tar", "tee", "test", "trap",
                   "umask", "wait", "wc", "wget")
SHELL_DEFAULTS = (f"case $- in *r*) echo {RESTRICTED}; exit {RESTRICTED_EXIT};; esac; "
                  "(emulate sh) 2>/dev/null && emulate -R sh; "
                  "set +e +u +x +C +f; (set +o pipefail) 2>/dev/null && set +o pipefail; "
                  "LC_ALL=C; export LC_ALL; unset IFS CDPATH TAR_OPTIONS; "
                  "unalias -a 2>/dev/null; "
                  f"unset -f {' '.join(shlex.quote(c) for c in SCRIPT_COMMANDS)} 2>/dev/null\n")


def host_command(script: str) -> str:
    """What the host's login shell is given to run ``script``: ``SHELL_DEFAULTS``, then the script
    through ``eval``. zsh parses the whole ``-c`` text before it runs any of it, so aliases its
    ~/.zshenv defines (`alias mkdir='mkdir -pv'`) were expanded in every line, `unalias -a` or not;
    an ``eval``'s text is parsed only when the ``eval`` runs (bash and dash too)."""
    return f"{SHELL_DEFAULTS}eval {q(script)}\n"

# A name with a line break (never ours: ``check_relpath``; someone's file on the host) reads as
# two in the line-based output below: the listing stops at it (``@linebreak``, exit 93).
_LINE_BREAK = """nl='
'
if [ -n "$(find . -name "*$nl*")" ]; then echo @linebreak; exit 93; fi
"""
_HASH_SECTION = _LINE_BREAK + """\
echo @dirs; find . -mindepth 1 -type d
echo @other; find . -mindepth 1 ! -type d ! -type f
if command -v openssl >/dev/null 2>&1 && openssl dgst -sha256 -r /dev/null >/dev/null 2>&1; then
  H="openssl dgst -sha256 -r"
elif command -v sha256sum >/dev/null 2>&1; then H=sha256sum
elif command -v shasum >/dev/null 2>&1; then H="shasum -a 256"
else echo @nohash; exit 0; fi
echo @files
find . -type f -exec $H {} + || { echo @hashfailed; exit 94; }
echo @end
"""


def q(path: str) -> str:
    return shlex.quote(path)


# Durability: run in the extracted (or downloaded) temporary directory before it is listed and
# renamed into place, so that after a power loss the published folder never holds an empty or
# short file. Every file and directory of the version is flushed, and the folders in ``"$@"``
# (``_make_dest``: the base, holding the model folder ``mkdir -p`` may have just made, and the
# folders it made above a new base with the first existing one), best effort, with the same tool.
# When ``sync --help`` offers FILE (coreutils >= 8.24, busybox >= 1.26): ``sync FILE...`` (fsync
# each) for a version of up to ``FLUSH_EACH_UP_TO`` files, ``sync -f`` for more, one syncfs of
# the file system that holds them, as OSTree commits (``base.FLUSH_EACH_UP_TO`` says why); else the
# host's python3 (fsync each); else a plain ``sync`` (Linux waits for the whole flush). A host
# without any publishes unflushed, as before, and says so (``@synced none``): never a failed
# publish only for that. The rename's own entry is flushed after it over SFTP
# (``SshTransport.rename``).
_SYNC_PY = ("import os, sys\n"
            "for p in sys.argv[1:]:\n"
            "    fd = os.open(p, os.O_RDONLY)\n"
            "    try:\n"
            "        os.fsync(fd)\n"
            "    finally:\n"
            "        os.close(fd)\n")


def _sync_section() -> str:
    """Flush the current directory's tree (and the folders in ``"$@"``, best effort: see
    ``_make_dest``) to disk; prints ``@synced fs|files|python|all|none`` (how)."""
    each = r"find . \( -type f -o -type d \) -exec"
    py = f'"$SP" -I -S -c {q(_SYNC_PY)}'
    few = f'[ "$(find . -type f | head -n {FLUSH_EACH_UP_TO + 1} | wc -l)" -le {FLUSH_EACH_UP_TO} ]'
    return f"""if sync --help 2>&1 | grep -q FILE; then SF=1; else SF=; fi
if [ -n "$SF" ] && {few} && {each} sync -- {{}} +; then
  sync -- "$@" 2>/dev/null; echo @synced files
elif [ -n "$SF" ] && sync -f -- .; then
  sync -f -- "$@" 2>/dev/null; echo @synced fs
elif [ -n "$SF" ] && {each} sync -- {{}} +; then
  sync -- "$@" 2>/dev/null; echo @synced files
else
  SP=
  for c in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3 2>/dev/null)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then SP=$c; break; fi
  done
  if [ -n "$SP" ] && {each} {py} {{}} + 2>/dev/null; then
    {py} "$@" 2>/dev/null; echo @synced python
  elif command -v sync >/dev/null 2>&1 && sync; then echo @synced all
  else echo @synced none; fi
fi
"""


def listing_script(path: str) -> str:
    """Hash every file under ``path`` on the host (exit 3 when it does not exist)."""
    return f"{MARK_LINE}\ncd -- {q(path)} || exit 3\n{_HASH_SECTION}"


_PICK_HASH = """\
if command -v openssl >/dev/null 2>&1 && openssl dgst -sha256 -r /dev/null >/dev/null 2>&1; then
  H="openssl dgst -sha256 -r"
elif command -v sha256sum >/dev/null 2>&1; then H=sha256sum
elif command -v shasum >/dev/null 2>&1; then H="shasum -a 256"
else H=; fi
"""

# After a stream-hashed extraction: names, kinds and sizes only (no second read of the bytes).
_SIZE_SECTION = _LINE_BREAK + """\
echo @dirs; find . -mindepth 1 -type d
echo @other; find . -mindepth 1 ! -type d ! -type f
echo @sizes; find . -type f -exec wc -c {} + || { echo @hashfailed; exit 94; }
echo @end
"""


def _make_dest(parent: str, dest: str, need_bytes: int | None) -> str:
    """Shell lines both publish scripts start with: refuse when the disk lacks ``need_bytes``
    (``@nospace <KB free>``), then create ``dest``, which must not exist yet (exit 96).

    Leaves in ``"$@"`` the folders ``_sync_section`` flushes besides the version: the base (the
    model folder's entry) and, when ``mkdir -p`` made folders above the model folder (a new
    base), each of them and the first existing one above them (their entries): else a power
    loss could take the whole new base away after the deploy reported it published."""
    base = posixpath.dirname(parent)
    need_kb = -1 if need_bytes is None else (need_bytes + 1023) // 1024
    return f"""need_kb={need_kb}
if [ "$need_kb" -ge 0 ]; then
  d={q(parent)}; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
  avail=$(df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {{print $4}}')
  case "$avail" in ''|*[!0-9]*) avail='' ;; esac
  if [ -n "$avail" ] && [ "$avail" -lt "$need_kb" ]; then echo "@nospace $avail"; exit 0; fi
fi
umask 022
set -- {q(base)}
if [ ! -d {q(parent)} ]; then
  top={q(parent)}; while [ ! -d "$(dirname -- "$top")" ]; do top=$(dirname -- "$top"); done
  mkdir -p -- {q(parent)} || exit 96
  up=$(dirname -- "$top"); d={q(base)}
  while [ "$d" != "$up" ] && [ "$d" != / ] && [ "$d" != . ]; do d=$(dirname -- "$d"); set -- "$@" "$d"; done
fi
mkdir -- {q(dest)} || exit 96
"""


# The host's one-pass hasher for big uploads. It copies stdin to tar in 1 MiB reads through
# 1 MiB pipes and, reading the tar headers as they pass (ustar sizes, base-256 sizes and pax
# ``size`` records), hashes each regular file's bytes (hashlib: OpenSSL, SHA-NI where the CPU
# has it); at the end it prints ``@filesha <sha256 over the files' digests in stream order>``
# on fd 3 (the script's stdout), or nothing when the archive ended early. ``tee`` into
# ``openssl dgst`` moves the same bytes in 8 KiB reads and writes, which cost a 1 GB publish
# 2 s more here; and per-file digests spare the client a second hash of every byte (it hashes
# each file for the manifest anyway). If tar stops reading, the rest is still read, so tar's
# exit status alone says whether the extraction worked.
#
# Writeback starts during the transfer: every ``KICK`` bytes of a file that pass, a thread asks
# the kernel to start writing what tar has written of it so far (``sync_file_range`` with
# SYNC_FILE_RANGE_WRITE, which does not wait), so the flush before the rename waits for the
# tail only. Without it a 1 GB version sat in the page cache until that flush (the kernel starts
# on its own only past ``dirty_background_ratio``, 2.4 GB of this VM's memory) and the publish
# ended 0.3 s after ``scp -r``'s. A hint only: a host without ctypes or the call, or a name the
# thread cannot open, just flushes it all at the end.
PY_TEE = """import fcntl, hashlib, os, sys, threading
for fd in (0, 1):
    try:
        fcntl.fcntl(fd, 1031, 1048576)
    except OSError:
        pass
KICK = 32 * 1048576
kicks = []
wake = threading.Condition()
try:
    import ctypes
    sfr = ctypes.CDLL(None, use_errno=True).sync_file_range
    sfr.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    dfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
except Exception:
    sfr = None


def writeback():
    while True:
        with wake:
            while not kicks:
                wake.wait()
            name = kicks.pop(0)
        if name is None:
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except OSError:
            continue
        try:
            sfr(fd, 0, 0, 2)
        finally:
            os.close(fd)


def kick(name):
    with wake:
        if name not in kicks:
            kicks.append(name)
            wake.notify()


if sfr is not None:
    writer = threading.Thread(target=writeback, daemon=True)
    writer.start()
src = os.fdopen(0, "rb", 0)
buf = memoryview(bytearray(1048576))
have = buf[:0]
out = True


def pull(limit):
    global have, out
    if not have:
        n = src.readinto(buf)
        if not n:
            return buf[:0]
        have = buf[:n]
    c, have = have[:limit], have[limit:]
    w = c
    while out and w:
        try:
            w = w[os.write(1, w):]
        except BrokenPipeError:
            out = False
    return c


def exact(n):
    got = b""
    while len(got) < n:
        c = pull(n - len(got))
        if not c:
            return None
        got += bytes(c)
    return got


def skip(n, h=None, name=None):
    passed = 0
    while n:
        c = pull(min(n, 1048576))
        if not c:
            return False
        if h is not None:
            h.update(c)
        n -= len(c)
        passed += len(c)
        if name and passed >= KICK:
            kick(name)
            passed = 0
    return True


files = hashlib.sha256()
ok, size_next, path_next = False, None, None
while True:
    hdr = exact(512)
    if hdr is None:
        break
    if not hdr.strip(b"\\0"):
        ok = True
        break
    kind, field = hdr[156:157], hdr[124:136]
    size = int.from_bytes(field[1:], "big") if field[0] & 128 else int(field.strip(b"\\0 ") or b"0", 8)
    if kind in (b"x", b"g"):
        data = exact(size)
        if data is None or not skip(-size % 512):
            break
        for rec in data.split(b"\\n"):
            key, _, value = rec.partition(b" ")[2].partition(b"=")
            if kind == b"x" and key == b"size":
                size_next = int(value)
            elif kind == b"x" and key == b"path":
                path_next = value
        continue
    if size_next is not None:
        size, size_next = size_next, None
    name = hdr[:100].split(b"\\0")[0]
    if hdr[257:262] == b"ustar" and hdr[345] != 0:
        name = hdr[345:500].split(b"\\0")[0] + b"/" + name
    name, path_next = path_next or name, None
    if kind in (b"0", b"\\0", b"7"):
        h = hashlib.sha256()
        if not skip(size, h, name if sfr is not None else None):
            break
        files.update(h.digest())
        if not skip(-size % 512):
            break
    elif not skip(size + -size % 512):
        break
while pull(1048576):
    pass
if ok:
    os.write(3, ("@filesha " + files.hexdigest() + chr(10)).encode())
if sfr is not None:
    kick(None)
    writer.join(5)
"""
PY_TEE_MIN_BYTES = 16 * 1024 * 1024   # below: the shell's tee costs less than starting Python


def host_python_hashes(stream_bytes: int) -> bool:
    """Whether the upload script tries the host's python3 (``PY_TEE``) for a stream this big."""
    return stream_bytes >= PY_TEE_MIN_BYTES


_PICK_PYTHON = """P=
for c in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3 2>/dev/null)"; do
  if [ -n "$c" ] && [ -x "$c" ] && "$c" -I -S -c 'import fcntl, hashlib, os' 2>/dev/null; then P=$c; break; fi
done
"""


def upload_script(parent: str, dest: str, need_bytes: int | None, *, stream_bytes: int = 0) -> str:
    """Check free space, create ``dest`` (must not exist), extract tar from stdin while hashing it.

    One pass over the bytes, then names and sizes: a stream of at least ``PY_TEE_MIN_BYTES``
    goes through the host's ``python3`` (``PY_TEE``: ``@filesha``, per-file digests) when it has
    a working one; otherwise ``tee`` feeds ``tar`` and, through a FIFO, the hash tool
    (``@stream``, the sha256 of the whole stream). Hosts without a hash tool or ``mkfifo``
    extract, then hash every file afterwards (the older two-pass way).
    """
    fifo = q(dest + ".stream")
    extract = f"tar -x -o -f - -C {q(dest)}"
    flush = _sync_section()
    sizes = f"""  [ "$rc" -eq 0 ] || {{ echo "@tarfailed $rc"; exit 95; }}
  cd -- {q(dest)} || exit 3
{flush}{_SIZE_SECTION}  exit 0
fi
"""
    python = ""
    if host_python_hashes(stream_bytes):
        python = f"""{_PICK_PYTHON}if [ -n "$P" ]; then
  echo @hashing python
  echo @ready
  exec 3>&1
  "$P" -I -S -c {q(PY_TEE)} {q(dest)} | {extract}
  rc=$?
{sizes}"""
    return f"""{MARK_LINE}
command -v tar >/dev/null 2>&1 || {{ echo @notar; exit 0; }}
{_make_dest(parent, dest, need_bytes)}{python}{_PICK_HASH}if [ -n "$H" ] && mkfifo -m 600 -- {fifo} 2>/dev/null; then
  trap {q('rm -f -- ' + fifo)} EXIT
  echo @hashing stream
  echo @ready
  ( s=$($H < {fifo}) && echo "@stream $s" ) & hp=$!
  tee -- {fifo} | {extract}
  rc=$?
  wait $hp
  rm -f -- {fifo}
{sizes}echo @ready
{extract} || {{ rc=$?; echo "@tarfailed $rc"; exit 95; }}
cd -- {q(dest)} || exit 3
{flush}{_HASH_SECTION}"""


def go_line(nonce: str) -> bytes:
    """The line ``fetch_script`` prints when it is ready to read the URLs (without its newline)."""
    return f"@ready {nonce}".encode()


def fetch_script(parent: str, dest: str, need_bytes: int | None, *, nonce: str) -> str:
    """Check free space, create ``dest`` (must not exist), download the files named on stdin, hash.

    stdin: ``d<TAB>dir`` and ``f<TAB>path<TAB>url<TAB>size`` lines (``store.Pull``). URLs are secrets:
    they reach curl (``-K -``) or wget (``-i -``) through a pipe from the shell's builtin
    ``printf``, never a process's argv. A download that stalls (under 1 KB/s for 30 s) fails.
    The deploying machine writes them only once the script has printed ``go_line(nonce)``
    (``nonce``: random, per call): no other program behind the account (a forced command, an
    sftp-only "shell") can print that line, not even one that prints the command it was asked to
    run, since the line is put together from two halves and never appears whole in this text.
    Prints ``@nofetch`` when the host has neither curl nor a wget that reads URLs from stdin (the
    caller streams instead; BusyBox's wget has no ``-i`` nor ``--tries``: each download failed). A
    failed download prints ``@fetchrc <curl|wget> <exit code>`` and ``@fetchfailed <path>`` (exit
    97): curl's 23 and wget's 3 are a failed write on the host (a full disk), not the store.
    ``wget -q`` says nothing, and a quieter ``-nv`` still prints a line with the URL per file: on
    wget's 8 (the store answered with an HTTP error) the script asks once more for one byte with
    ``-nv``, so stderr holds the store's status (``ERROR 403: Forbidden.``: an expired URL; 404:
    the object is gone) as curl's ``--show-error`` does. A file whose size is not the manifest's
    stops the pull at once (``@fetchsize <bytes> <path>``, exit 99): a redirect or an error page
    that curl's ``--fail`` lets through (a 3xx), saved in place of the object. ``@proxy``: the
    host's environment names a proxy curl or wget may use for the store (never its value, which may
    hold a password), for the message of a failed download.

    A channel closed by the deploying machine (an interrupt, a timeout) ends the download: sshd
    signals nothing to a command without a terminal, so while a file downloads a watcher writes
    an empty line to stderr every second, and the first write that fails (the channel is gone)
    stops the downloader and this script — instead of a download running on into a directory the
    deploy has already removed, holding the disk space until it ends.
    """
    if len(nonce) < 16:
        raise ValueError("the fetch script's nonce must be random and at least 16 characters")
    return f"""{MARK_LINE}
F=
if command -v curl >/dev/null 2>&1; then F=curl
elif command -v wget >/dev/null 2>&1; then
  case "$(wget --help 2>&1)" in *--input-file*) F=wget ;; esac
fi
[ -n "$F" ] || {{ echo @nofetch; exit 0; }}
case "$http_proxy$https_proxy$HTTPS_PROXY$ALL_PROXY$all_proxy" in ?*) echo @proxy ;; esac
{_make_dest(parent, dest, need_bytes)}printf '@ready %s%s\n' {q(nonce[:len(nonce) // 2])} {q(nonce[len(nonce) // 2:])}
dest={q(dest)}
tab=$(printf '\t')
while IFS="$tab" read -r kind p u n; do
  case "$kind" in
    d) mkdir -p -- "$dest/$p" || exit 96 ;;
    f) mkdir -p -- "$(dirname -- "$dest/$p")" || exit 96
       if [ "$F" = curl ]; then
         printf 'url = "%s"\n' "$u" | curl -q --fail --silent --show-error --proto =http,https \
           --connect-timeout 10 --speed-limit 1024 --speed-time 30 --retry 2 -K - -o "$dest/$p" &
       else
         printf '%s\n' "$u" | wget -q --timeout=30 --tries=3 -O "$dest/$p" -i - &
       fi
       c=$!
       ( trap '' PIPE; while sleep 1; do printf '\n' >&2 || {{ kill -TERM "$c" $$; exit 0; }}; done ) &
       w=$!
       wait "$c"; frc=$?
       kill "$w" 2>/dev/null; wait "$w" 2>/dev/null
       if [ "$frc" -eq 8 ] && [ "$F" = wget ]; then
         printf '%s\n' "$u" | wget -nv --timeout=10 --tries=1 --header='Range: bytes=0-0' -O /dev/null -i -
       fi
       [ "$frc" -eq 0 ] || {{ echo "@fetchrc $F $frc"; echo "@fetchfailed $p"; exit 97; }}
       [ -f "$dest/$p" ] || : > "$dest/$p" || exit 96
       if s=$(wc -c < "$dest/$p" 2>/dev/null) && [ "$((s + 0))" -ne "$((n + 0))" ]; then
         echo "@fetchsize $((s + 0)) $p"; exit 99
       fi
       echo "@got $p" ;;
    *) echo "@badinput"; exit 98 ;;
  esac
done
cd -- "$dest" || exit 3
{_sync_section()}{_HASH_SECTION}"""


@dataclass
class ScriptOutput:
    shell: bool                      # the marker was printed: a real shell ran the script
    flags: dict[str, str]            # marker lines such as @notar, @nospace 123, @tarfailed 2
    listing: HostListing | None      # when a complete hash section was printed
    sizes: dict[str, int] | None = None   # after a stream-hashed extraction: rel path -> size
    stream_sha256: str | None = None      # the host's sha256 of the tar stream it extracted
    files_sha256: str | None = None       # or (PY_TEE) of its files' digests in stream order


def parse_output(stdout: bytes) -> ScriptOutput:
    """Split a script's stdout into marker flags and the hashed listing."""
    text = stdout.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")   # not splitlines(): "\r" in a file name is not a line end
    if MARK not in lines:
        return ScriptOutput(False, {}, None)
    flags: dict[str, str] = {}
    sections: dict[str, list[str]] = {"@dirs": [], "@other": [], "@files": [], "@sizes": []}
    current = None
    for line in lines[lines.index(MARK) + 1:]:
        if line in sections:
            current = line
        elif line.startswith("@") and (line.split(" ", 1)[0] in
                                       ("@notar", "@nospace", "@ready", "@tarfailed", "@nohash",
                                        "@hashfailed", "@end", "@hashing", "@stream", "@filesha", "@nofetch",
                                        "@fetchfailed", "@fetchrc", "@fetchsize", "@got", "@badinput", "@synced",
                                        "@proxy",
                                        "@linebreak")):
            key, _, value = line.partition(" ")
            flags[key] = value
            current = None
        elif current and line:
            sections[current].append(line)
    listing, sizes = None, None
    if "@end" in flags:
        strip = lambda p: p[2:] if p.startswith("./") else p  # noqa: E731
        files = parse_hash_lines("\n".join(sections["@files"]))
        if "@sizes" in lines:
            sizes = parse_size_lines(sections["@sizes"])
            files = {p: "" for p in sizes}   # hashes come from the stream check (ssh.py)
        listing = HostListing(files, frozenset(strip(p) for p in sections["@dirs"]),
                              tuple(sorted(strip(p) for p in sections["@other"])))
    stream = flags.get("@stream", "").split(" ")[0].lower() or None
    return ScriptOutput(True, flags, listing, sizes, stream, flags.get("@filesha", "").lower() or None)


def parse_size_lines(lines: list[str]) -> dict[str, int]:
    """``wc -c`` lines (``  123 ./rel``) for ``./`` paths; its ``total`` line is skipped."""
    out: dict[str, int] = {}
    for line in lines:
        count, _, path = line.lstrip(" ").partition(" ")
        if not path.startswith("./"):
            continue   # "N total"
        if not count.isdigit():
            raise ValueError(f"unexpected size output line {line[:120]!r}")
        out[path[2:]] = int(count)
    return out
