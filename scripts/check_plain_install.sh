#!/usr/bin/env bash
# A plain `pip install .` (no extras, as action.yml does in users' workflows) must run every command.
# Builds a throwaway venv outside the repo and exercises each subcommand's --help, `validate examples/`
# and `schema` from a folder where the source tree is not importable, so a runtime dependency that
# only the dev extras bring in fails here instead of in a user's CI.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3.11}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tidegate-plain.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$repo"
cd "$work"
"$work/venv/bin/python" "$repo/scripts/plain_install_smoke.py" "$work/venv/bin/tidegate" "$repo/examples"
