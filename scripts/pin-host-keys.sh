#!/usr/bin/env bash
# Pin the serving hosts' public keys (MLOPS_KNOWN_HOSTS, known_hosts lines from the context)
# so SSH verifies them; the sync never accepts an unknown key.
# The pins replace what ~/.ssh/known_hosts held for the hosts they name (appending kept an earlier
# key of a re-keyed host accepted on a runner whose home outlives a job); other hosts' lines and
# @revoked lines stay. A hashed name (|1|...) cannot be looked up, so its earlier lines stay too.
set -euo pipefail
if [ -z "${MLOPS_KNOWN_HOSTS:-}" ]; then
  echo "MLOPS_KNOWN_HOSTS is not set; relying on the known_hosts files named in the hosts file"
  exit 0
fi
known="$HOME/.ssh/known_hosts"
mkdir -p "$HOME/.ssh"
chmod 700 "$HOME/.ssh"
if [ -f "$known" ]; then
  # the names the pins are for: plain names and [name]:port, not patterns, negations or hashes
  names="$(printf '%s\n' "$MLOPS_KNOWN_HOSTS" | awk '
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
printf '%s\n' "$MLOPS_KNOWN_HOSTS" >> "$known"
chmod 600 "$known"
echo "pinned $(printf '%s\n' "$MLOPS_KNOWN_HOSTS" | grep -c .) host key(s) in ~/.ssh/known_hosts"
