#!/usr/bin/env bash
# Builds haul with `deno compile` (the alternative to scripts/compile.sh's bun build).
#
#   scripts/compile_deno.sh [--target x86_64-unknown-linux-gnu] [--outfile dist/haul-deno]
#
# deno compile needs `denort`, the runtime it copies the program into: Deno downloads it
# from dl.deno.land unless DENORT_BIN names a local denort of the same Deno version.
# Without either this fails (exit 3) with a message saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target=""
outfile="dist/haul-deno"
while [ $# -gt 0 ]; do
  case "$1" in
  --target) target="$2"; shift 2 ;;
  --target=*) target="${1#*=}"; shift ;;
  --outfile) outfile="$2"; shift 2 ;;
  --outfile=*) outfile="${1#*=}"; shift ;;
  *) echo "compile_deno.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$outfile" in /*) ;; *) outfile="$root/$outfile" ;; esac

if [ -n "${DENORT_BIN:-}" ] && [ ! -x "$DENORT_BIN" ]; then
  echo "compile_deno.sh: DENORT_BIN=$DENORT_BIN is not an executable file" >&2
  exit 3
fi

commit=${HAUL_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
if [ -z "${HAUL_COMMIT:-}" ] && [ "$commit" != unknown ] &&
  [ -n "$(git status --porcelain -- main.ts cli lib 2>/dev/null)" ]; then
  commit="$commit-dirty"
fi

# Stamp the commit into a staged copy of the sources; the checkout stays untouched.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -R main.ts cli lib "$stage/"
sed -i -E "s|^export const COMMIT: string = .*$|export const COMMIT: string = \"$commit\";|" \
  "$stage/lib/version.ts"
if ! grep -q "^export const COMMIT: string = \"$commit\";" "$stage/lib/version.ts"; then
  echo "compile_deno.sh: could not stamp the commit into lib/version.ts" >&2
  exit 1
fi

mkdir -p "$(dirname "$outfile")"
args=(compile -A --no-config --quiet --output "$outfile"
  # Worker modules are not in the static graph: include the hash worker explicitly.
  --include "$stage/lib/disk/hash_worker.ts" --include "$stage/lib/disk/write_worker.ts")
[ -n "$target" ] && args+=(--target "$target")
if ! deno "${args[@]}" "$stage/main.ts" >&2; then
  if [ -z "${DENORT_BIN:-}" ]; then
    echo "compile_deno.sh: deno compile failed; if denort could not be downloaded, set" \
      "DENORT_BIN to a local denort of Deno $(deno --version | head -n 1 | cut -d' ' -f2)" >&2
    exit 3
  fi
  exit 1
fi
echo "$outfile (haul, $commit${target:+, $target}, deno compile)"
