#!/usr/bin/env bash
# Builds haul as one executable with `bun build --compile` (deno task compile).
#
#   scripts/compile.sh [--target bun-linux-x64-musl] [--outfile dist/haul] [--if-stale] [--no-worker]
#
# Default: this machine's target, dist/haul. Installs bun from npm when absent.
# --if-stale: do nothing when the output exists, is newer than every source and carries
#   the current commit (tests call this; concurrent callers are serialised by flock).
# --no-worker: leave the hash worker out (a test build: hashing must fall back inline).
# HAUL_COMMIT overrides the stamped commit (e.g. a Docker build without .git).
#
# The hash Worker (lib/disk/hash_worker.ts) is a second entrypoint, so the binary embeds it.
# `--root lib/disk` puts it at /$bunfs/root/hash_worker.ts, which is where lib/disk/hasher.ts's
# `new URL("./hash_worker.ts", import.meta.url)` points once bundled (import.meta.url
# is then /$bunfs/root/<name>); with the default root it would be .../root/lib/….
set -euo pipefail
cd "$(dirname "$0")/.."

target=""
outfile="dist/haul"
worker=1
if_stale=0
while [ $# -gt 0 ]; do
  case "$1" in
  --target) target="$2"; shift 2 ;;
  --target=*) target="${1#*=}"; shift ;;
  --outfile) outfile="$2"; shift 2 ;;
  --outfile=*) outfile="${1#*=}"; shift ;;
  --no-worker) worker=0; shift ;;
  --if-stale) if_stale=1; shift ;;
  *) echo "compile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if ! command -v bun >/dev/null 2>&1; then
  echo "compile.sh: installing bun from npm" >&2
  npm i -g bun@1 >&2
fi

# One version: deno.json's must equal lib/version.ts's.
json_version=$(sed -nE 's/^ *"version": *"([^"]+)".*/\1/p' deno.json | head -n 1)
version=$(sed -nE 's/^export const VERSION = "([^"]+)".*/\1/p' lib/version.ts)
if [ "$json_version" != "$version" ]; then
  echo "compile.sh: deno.json version $json_version differs from lib/version.ts $version" >&2
  exit 1
fi

# The commit, marked -dirty when the sources that go into the binary differ from it.
commit=${HAUL_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
if [ -z "${HAUL_COMMIT:-}" ] && [ "$commit" != unknown ] &&
  [ -n "$(git status --porcelain -- main.ts cli lib 2>/dev/null)" ]; then
  commit="$commit-dirty"
fi

mkdir -p "$(dirname "$outfile")"
if [ "$if_stale" = 1 ]; then
  exec 9>"$outfile.lock"
  flock 9
  if [ -x "$outfile" ] &&
    [ -z "$(find main.ts cli lib deno.json scripts/compile.sh -newer "$outfile" -print -quit)" ] &&
    [ "$("$outfile" --version 2>/dev/null)" = "haul $version ($commit)" ]; then
    echo "$outfile (up to date)"
    exit 0
  fi
fi

# npm packages the sources import as `npm:NAME@VERSION` (Deno's form; Bun reads no such
# specifier): installed once into dist/npm and mapped by a tsconfig "paths" override, so
# the bundle embeds the very version Deno resolves.
npm_dir="$(dirname "$outfile")/npm"
mapfile -t npm_specs < <(grep -rhoE '"npm:[a-z0-9@/._-]+@[0-9][0-9A-Za-z.-]*"' main.ts cli lib | tr -d '"' | sort -u)
if [ ${#npm_specs[@]} -gt 0 ]; then
  mkdir -p "$npm_dir"
  paths=""
  for spec in "${npm_specs[@]}"; do
    pkg=${spec#npm:}
    name=${pkg%@*}
    if [ "$(sed -nE 's/^ *"version": *"([^"]+)".*/\1/p' "$npm_dir/node_modules/$name/package.json" 2>/dev/null | head -n 1)" != "${pkg##*@}" ]; then
      npm install --silent --no-save --no-package-lock --prefix "$npm_dir" "$pkg" >&2
    fi
    paths+="${paths:+,}\"$spec\":[\"./node_modules/$name\"]"
  done
  printf '{"compilerOptions":{"paths":{%s}}}\n' "$paths" >"$npm_dir/tsconfig.json"
fi

entries=(./main.ts)
[ "$worker" = 1 ] && entries+=(./lib/disk/hash_worker.ts ./lib/disk/write_worker.ts)
tmp="$outfile.tmp.$$"
args=(
  build --compile
  # Precompiled bytecode: `haul --help` starts in about a third of the time.
  --bytecode --format=esm
  --root ./lib/disk
  --define "HAUL_BUILD_COMMIT=\"$commit\""
  # Trust the OS certificate store (e.g. /etc/ssl/certs/ca-certificates.crt, which the
  # container image ships) besides Bun's bundled roots, as Go-built tools like Ollama do.
  --compile-exec-argv=--use-system-ca
  # A CLI must not pick up .env or bunfig.toml from wherever it is run.
  --no-compile-autoload-dotenv
  --no-compile-autoload-bunfig
  --outfile "$tmp"
)
[ ${#npm_specs[@]} -gt 0 ] && args+=(--tsconfig-override "$npm_dir/tsconfig.json")
[ -n "$target" ] && args+=("--target=$target")
trap 'rm -f "$tmp" "$tmp.exe"' EXIT
bun "${args[@]}" "${entries[@]}" >&2
# Windows targets get .exe appended by bun.
if [ -f "$tmp.exe" ]; then
  mv -f "$tmp.exe" "$outfile.exe"
  outfile="$outfile.exe"
else
  mv -f "$tmp" "$outfile"
fi
echo "$outfile (haul $version, $commit${target:+, $target})"
