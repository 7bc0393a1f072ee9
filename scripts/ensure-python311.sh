#!/usr/bin/env bash
# Make Python 3.11 available to `make venv` (CircleCI machine images carry several via pyenv).
# Exports MLOPS_PYTHON through $BASH_ENV for the following steps; a no-op when python3.11 exists.
set -euo pipefail
if python3.11 -c 'import sys' >/dev/null 2>&1; then   # runs: a pyenv shim of an unselected version does not
  exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
  # a 3.11 the image already carries (CircleCI's machine images do): building one from source
  # takes minutes each time the cache key changes
  version=$(pyenv versions --bare | sed -n 's/^\(3\.11\.[0-9]*\)$/\1/p' | sort -t. -k3,3n | tail -n 1)
  if [ -z "$version" ]; then
    version=$(pyenv install --list | sed -n 's/^ *\(3\.11\.[0-9]*\)$/\1/p' | tail -n 1)
    pyenv install -s "$version"
  fi
  echo "export MLOPS_PYTHON=$(pyenv root)/versions/$version/bin/python3.11" >> "${BASH_ENV:?}"
  exit 0
fi
echo "error: Python 3.11 is not installed and pyenv is not available; use an image with Python 3.11" >&2
exit 2
