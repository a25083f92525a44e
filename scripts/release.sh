#!/usr/bin/env bash
# Builds haul for every supported platform into dist/release/ with a SHA256SUMS file
# (deno task release). Bun fetches each target's runtime from the npm registry once and
# caches it. Prints a size table; set RELEASE_TARGETS to build a subset.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a targets <<<"${RELEASE_TARGETS:-linux-x64 linux-arm64 linux-x64-musl linux-arm64-musl darwin-x64 darwin-arm64 windows-x64}"
out=dist/release
rm -rf "$out"
mkdir -p "$out"
for t in "${targets[@]}"; do
  name="haul-$t"
  bash scripts/compile.sh --target "bun-$t" --outfile "$out/$name" >/dev/null
done

cd "$out"
# Checksums of the file names as shipped, verifiable with `sha256sum -c SHA256SUMS`.
files=(haul-*)
sha256sum "${files[@]}" >SHA256SUMS
printf '%-28s %12s\n' file bytes
for f in "${files[@]}"; do printf '%-28s %12s\n' "$f" "$(stat -c %s "$f")"; done
echo "dist/release/SHA256SUMS: ${#files[@]} files"
