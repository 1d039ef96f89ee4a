#!/usr/bin/env bash
# Debian packages the test suite needs, named on the command line (the Makefile's SYSTEM_PACKAGES):
# installed with apt-get when missing and running as root; otherwise a message naming them.
#   openssh-server  /usr/sbin/sshd, the stand-in for a cloud instance's sshd in the tunnel tests
#   bubblewrap      /usr/bin/bwrap, the local replica sandbox (tests/security; `make up` has its own
#                   scripts/ensure_sandbox.sh, which never fails the command)
#   chromium        /usr/bin/chromium, the headless browser of the dashboard tests (Playwright drives it)
#   pebble          /usr/bin/pebble and pebble-challtestsrv, the ACME CA and DNS of the HTTPS tests
#   curl            the HTTPS tests' command-line client
set -euo pipefail

missing=()
for pkg in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: please install ${missing[*]} (Debian package names; no apt-get here)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-packages: missing Debian packages: ${missing[*]}" >&2
  echo "  install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "system-packages: installing ${missing[*]}"
apt-get install -y -q "${missing[@]}" || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }
