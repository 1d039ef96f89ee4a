#!/usr/bin/env bash
# Local replicas run in a bubblewrap sandbox (SECURITY.md). `make up` and `make test` call this:
# as root on Debian/Ubuntu it installs the `bubblewrap` package when `bwrap` is missing; otherwise
# it says plainly what is missing and carries on (trusted services then run unsandboxed with a
# warning, PR previews are refused).
set -euo pipefail
if command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "tidegate: installing the replica sandbox (Debian package bubblewrap)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap util-linux >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap util-linux >/dev/null; }
    command -v bwrap >/dev/null 2>&1 && exit 0
fi
cat >&2 <<'MSG'
tidegate: WARNING: bubblewrap (`bwrap`) is not installed, so local replicas cannot be sandboxed.
  Install the package `bubblewrap` (Debian/Ubuntu: sudo apt-get install -y bubblewrap) and run
  tidegate as root. Until then PR previews are refused and trusted services run unsandboxed.
MSG
