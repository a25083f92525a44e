#!/usr/bin/env bash
# haul's main job on a fresh machine: install Deno from npm when it is absent,
# then run the demo (serve a generated model, pull it with haul, verify it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v deno >/dev/null 2>&1; then
  echo "deno not found: installing it from npm (npm i -g deno@2.9)" >&2
  npm i -g deno@2.9 >&2
fi
exec deno task demo "$@"
