"""The POSIX sh scripts serving_sync runs on an SSH host, and the parsing of their output.

Each script prints a marker first, so a missing marker means the account has no real shell
(e.g. sftp-only) and the transport falls back to SFTP. Every exec costs a process spawn on
the host (~0.1 s), so one script does as much as possible: check space, create the temporary
directory, extract the tar stream, then hash every file — one round trip per publish.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..manifest import HostListing, parse_hash_lines

MARK = "@serving-sync"

_HASH_SECTION = """\
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


def listing_script(path: str) -> str:
    """Hash every file under ``path`` on the host (exit 3 when it does not exist)."""
    return f"echo {MARK}\ncd -- {q(path)} || exit 3\n{_HASH_SECTION}"


_PICK_HASH = """\
if command -v openssl >/dev/null 2>&1 && openssl dgst -sha256 -r /dev/null >/dev/null 2>&1; then
  H="openssl dgst -sha256 -r"
elif command -v sha256sum >/dev/null 2>&1; then H=sha256sum
elif command -v shasum >/dev/null 2>&1; then H="shasum -a 256"
else H=; fi
"""

# After a stream-hashed extraction: names, kinds and sizes only (no second read of the bytes).
_SIZE_SECTION = """\
echo @dirs; find . -mindepth 1 -type d
echo @other; find . -mindepth 1 ! -type d ! -type f
echo @sizes; find . -type f -exec wc -c {} + || { echo @hashfailed; exit 94; }
echo @end
"""


def _make_dest(parent: str, dest: str, need_bytes: int | None) -> str:
    """Shell lines both publish scripts start with: refuse when the disk lacks ``need_bytes``
    (``@nospace <KB free>``), then create ``dest``, which must not exist yet (exit 96)."""
    need_kb = -1 if need_bytes is None else (need_bytes + 1023) // 1024
    return f"""need_kb={need_kb}
if [ "$need_kb" -ge 0 ]; then
  d={q(parent)}; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
  avail=$(df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {{print $4}}')
  case "$avail" in ''|*[!0-9]*) avail='' ;; esac
  if [ -n "$avail" ] && [ "$avail" -lt "$need_kb" ]; then echo "@nospace $avail"; exit 0; fi
fi
umask 022
{{ [ -d {q(parent)} ] || mkdir -p -- {q(parent)}; }} && mkdir -- {q(dest)} || exit 96
"""


def upload_script(parent: str, dest: str, need_bytes: int | None) -> str:
    """Check free space, create ``dest`` (must not exist), extract tar from stdin while hashing it.

    One pass over the bytes: ``tee`` feeds ``tar`` and, through a FIFO, the hash tool, which
    prints ``@stream <sha256>`` of the stream; then names and sizes are listed. Hosts without a
    hash tool or ``mkfifo`` extract, then hash every file afterwards (the older two-pass way).
    """
    fifo = q(dest + ".stream")
    return f"""echo {MARK}
command -v tar >/dev/null 2>&1 || {{ echo @notar; exit 0; }}
{_make_dest(parent, dest, need_bytes)}{_PICK_HASH}if [ -n "$H" ] && mkfifo -m 600 -- {fifo} 2>/dev/null; then
  trap 'rm -f -- {fifo}' EXIT
  echo @hashing stream
  echo @ready
  ( s=$($H < {fifo}) && echo "@stream $s" ) & hp=$!
  tee -- {fifo} | tar -x -o -f - -C {q(dest)}
  rc=$?
  wait $hp
  rm -f -- {fifo}
  [ "$rc" -eq 0 ] || {{ echo "@tarfailed $rc"; exit 95; }}
  cd -- {q(dest)} || exit 3
{_SIZE_SECTION}  exit 0
fi
echo @ready
tar -x -o -f - -C {q(dest)} || {{ rc=$?; echo "@tarfailed $rc"; exit 95; }}
cd -- {q(dest)} || exit 3
{_HASH_SECTION}"""


def fetch_script(parent: str, dest: str, need_bytes: int | None) -> str:
    """Check free space, create ``dest`` (must not exist), download the files named on stdin, hash.

    stdin: ``d<TAB>dir`` and ``f<TAB>path<TAB>url`` lines (``store.Pull``). URLs are secrets:
    they reach curl (``-K -``) or wget (``-i -``) through a pipe from the shell's builtin
    ``printf``, never a process's argv. A download that stalls (under 1 KB/s for 30 s) fails.
    Prints ``@nofetch`` when the host has neither curl nor wget (the caller streams instead).
    """
    return f"""echo {MARK}
if command -v curl >/dev/null 2>&1; then F=curl
elif command -v wget >/dev/null 2>&1; then F=wget
else echo @nofetch; exit 0; fi
{_make_dest(parent, dest, need_bytes)}echo @ready
dest={q(dest)}
tab=$(printf '\t')
while IFS="$tab" read -r kind p u; do
  case "$kind" in
    d) mkdir -p -- "$dest/$p" || exit 96 ;;
    f) mkdir -p -- "$(dirname -- "$dest/$p")" || exit 96
       if [ "$F" = curl ]; then
         printf 'url = "%s"\n' "$u" | curl -q --fail --silent --show-error --proto =http,https \
           --connect-timeout 10 --speed-limit 1024 --speed-time 30 --retry 2 -K - -o "$dest/$p"
       else
         printf '%s\n' "$u" | wget -q --timeout=30 --tries=3 -O "$dest/$p" -i -
       fi || {{ echo "@fetchfailed $p"; exit 97; }}
       [ -f "$dest/$p" ] || : > "$dest/$p" || exit 96
       echo "@got $p" ;;
    *) echo "@badinput"; exit 98 ;;
  esac
done
cd -- "$dest" || exit 3
{_HASH_SECTION}"""


@dataclass
class ScriptOutput:
    shell: bool                      # the marker was printed: a real shell ran the script
    flags: dict[str, str]            # marker lines such as @notar, @nospace 123, @tarfailed 2
    listing: HostListing | None      # when a complete hash section was printed
    sizes: dict[str, int] | None = None   # after a stream-hashed extraction: rel path -> size
    stream_sha256: str | None = None      # the host's sha256 of the tar stream it extracted


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
                                        "@hashfailed", "@end", "@hashing", "@stream", "@nofetch",
                                        "@fetchfailed", "@got", "@badinput")):
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
    return ScriptOutput(True, flags, listing, sizes, stream)


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
