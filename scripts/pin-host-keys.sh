#!/usr/bin/env bash
# Pin the serving hosts' public keys (MLOPS_KNOWN_HOSTS, known_hosts lines from the context)
# so SSH verifies them; the sync never accepts an unknown key.
set -euo pipefail
if [ -z "${MLOPS_KNOWN_HOSTS:-}" ]; then
  echo "MLOPS_KNOWN_HOSTS is not set; relying on the known_hosts files named in the hosts file"
  exit 0
fi
mkdir -p "$HOME/.ssh"
chmod 700 "$HOME/.ssh"
printf '%s\n' "$MLOPS_KNOWN_HOSTS" >> "$HOME/.ssh/known_hosts"
chmod 600 "$HOME/.ssh/known_hosts"
echo "pinned $(printf '%s\n' "$MLOPS_KNOWN_HOSTS" | grep -c .) host key(s) in ~/.ssh/known_hosts"
