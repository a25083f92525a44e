#!/usr/bin/env bash
# Assembles in DIR the files the Dockerfile's final stage (FROM scratch) copies, from
# this machine instead of the build stage, so that the set can be tried without Docker:
#
#   scripts/rootfs.sh DIR [BINARY]      (BINARY default dist/haul, built if stale)
#
# The set: the binary as /haul, the shared objects it loads (found with ldd, copied with
# symlinks resolved, as COPY does) and the CA bundle. tests/cli/container_test.ts checks that
# this list equals the Dockerfile's COPY --from=build lines, then runs /haul in a chroot.
# Prints the files, one per line, as paths inside DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:?usage: scripts/rootfs.sh DIR [BINARY]}
bin=${2:-dist/haul}
if [ -z "${2:-}" ]; then
  bash scripts/compile.sh --if-stale >/dev/null
fi
[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }

ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -f "$ca" ]; then
  echo "rootfs.sh: $ca is missing (apt-get install ca-certificates)" >&2
  exit 1
fi

# The dynamic loader and libraries, as ldd prints them:
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)   and   /lib64/ld-linux-x86-64.so.2 (0x…)
mapfile -t libs < <(ldd "$bin" | sed -nE 's#^\s*(\S+ => )?(/\S+) \(0x[0-9a-f]+\)$#\2#p' | sort -u)
if [ ${#libs[@]} -eq 0 ]; then
  echo "rootfs.sh: ldd found no libraries for $bin (static or foreign binary?)" >&2
  exit 1
fi

mkdir -p "$dir"
copy() { # SRC DEST-inside-DIR
  mkdir -p "$dir$(dirname "$2")"
  cp -L "$1" "$dir$2"
  echo "$2"
}
copy "$bin" /haul
for lib in "${libs[@]}"; do copy "$lib" "$lib"; done
copy "$ca" /etc/ssl/certs/ca-certificates.crt
