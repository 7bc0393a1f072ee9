#!/usr/bin/env bash
# Pin the serving hosts' public keys (MLOPS_KNOWN_HOSTS, known_hosts lines from the context)
# so SSH verifies them; the sync never accepts an unknown key.
# The pins replace what ~/.ssh/known_hosts held for the hosts they name (appending kept an earlier
# key of a re-keyed host accepted on a runner whose home outlives a job); other hosts' lines and
# @revoked lines stay. A hashed name (|1|...) cannot be looked up, so its earlier lines stay too.
# MLOPS_KNOWN_HOSTS_BASE64 carries the same lines base64-encoded (`base64 -w 0 < lines`), the way
# CircleCI's docs advise for a multi-line value that does not survive the settings form.
# Every line is checked (ssh-keygen -l) before ~/.ssh/known_hosts is touched: a garbled pin failed
# only later, at the deploy, as "host key not trusted", while this step said "pinned".
set -euo pipefail
if [ -n "${MLOPS_KNOWN_HOSTS:-}" ] && [ -n "${MLOPS_KNOWN_HOSTS_BASE64:-}" ]; then
  echo "error: both MLOPS_KNOWN_HOSTS and MLOPS_KNOWN_HOSTS_BASE64 are set; keep one of them in the context" >&2
  exit 2
fi
pins="${MLOPS_KNOWN_HOSTS:-}"
source_name=MLOPS_KNOWN_HOSTS
if [ -n "${MLOPS_KNOWN_HOSTS_BASE64:-}" ]; then
  source_name=MLOPS_KNOWN_HOSTS_BASE64
  if ! pins="$(printf '%s' "$MLOPS_KNOWN_HOSTS_BASE64" | tr -d ' \t\r\n' | base64 -d 2>/dev/null)"; then
    echo "error: MLOPS_KNOWN_HOSTS_BASE64 is not base64; set it to the output of: base64 -w 0 < known_hosts_lines" >&2
    exit 2
  fi
fi
pins="$(printf '%s\n' "$pins" | tr -d '\r')"     # lines pasted from Windows end in CR
if [ -z "$(printf '%s' "$pins" | tr -d ' \t\n')" ]; then
  echo "MLOPS_KNOWN_HOSTS is not set; relying on the known_hosts files named in the hosts file"
  exit 0
fi
count=0
lineno=0
fingerprints=""
while IFS= read -r line; do
  lineno=$((lineno + 1))
  case "$line" in ''|'#'*) continue ;; esac
  read -r -a words <<< "$line"
  [ "${#words[@]}" -gt 0 ] || continue
  case "${words[0]}" in '#'*) continue ;; '@'*) words=("${words[@]:1}") ;; esac
  if [ "${#words[@]}" -lt 3 ] || ! fp="$(printf '%s %s\n' "${words[1]}" "${words[2]}" | ssh-keygen -l -f - 2>/dev/null)"; then
    echo "error: line $lineno of $source_name is not a known_hosts line (hosts key-type base64-key): copy it again from the host (install_server.sh prints it) and fix the context" >&2
    exit 2
  fi
  read -r -a fpw <<< "$fp"       # "256 SHA256:... no comment (ED25519)"
  fingerprints+="  ${words[0]} ${fpw[1]} ${fpw[${#fpw[@]}-1]}"$'\n'
  count=$((count + 1))
done <<< "$pins"
known="$HOME/.ssh/known_hosts"
mkdir -p "$HOME/.ssh"
chmod 700 "$HOME/.ssh"
if [ -f "$known" ]; then
  # the names the pins are for: plain names and [name]:port, not patterns, negations or hashes
  names="$(printf '%s\n' "$pins" | awk '
    $1 ~ /^#/ || NF < 3 || $1 ~ /^@/ { next }
    { n = split($1, a, ","); for (i = 1; i <= n; i++) if (a[i] !~ /^[|!]/ && a[i] !~ /[*?]/) print a[i] }' | sort -u)"
  while IFS= read -r name; do
    [ -n "$name" ] || continue
    if ! out="$(ssh-keygen -R "$name" -f "$known" 2>&1)"; then
      echo "error: cannot remove the earlier keys of $name from $known: $out" >&2
      exit 2
    fi
  done <<< "$names"
  rm -f "$known.old"
fi
# a file whose last line has no newline (written by printf or an editor) took the first pin into
# that line: the pin was lost (and that line broken) while this said "pinned"
if [ -s "$known" ] && [ -n "$(tail -c 1 "$known")" ]; then
  echo >> "$known"
fi
printf '%s\n' "$pins" >> "$known"
chmod 600 "$known"
echo "pinned $count host key(s) in ~/.ssh/known_hosts:"
printf '%s' "$fingerprints"
