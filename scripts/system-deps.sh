#!/usr/bin/env bash
# Install the system tools the tests use when they are missing (Debian/Ubuntu).
# Root installs with apt-get; anyone else is told exactly what to install.
set -euo pipefail

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# A deploy user whose login shell is zsh (tests/test_sync_ssh.py runs the host scripts through it).
command -v zsh >/dev/null 2>&1 || need+=(zsh)
# BusyBox's wget as a host's only downloader (tests/test_sync_store.py: it cannot read URLs from stdin).
command -v busybox >/dev/null 2>&1 || need+=(busybox)
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  need+=(postgresql)
fi
# Headless browser for tests/test_ui_browser.py (Selenium drives /usr/bin/chromedriver; no driver download).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 2
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
