#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need when absent,
# then runs every test and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the real peers the tests run against.
declare -A pkg_for=([docker-registry]=docker-registry [htpasswd]=apache2-utils [openssl]=openssl
  [skopeo]=skopeo [curl]=curl [nginx]=nginx-light [aria2c]=aria2 [tinyproxy]=tinyproxy
  [ssh-keygen]=openssh-client)
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${pkg_for[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2 && \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { echo "0 passed, 1 failed"; echo "apt-get install failed" >&2; exit 1; }
  # Debian starts packaged services; the tests start their own.
  $SUDO systemctl stop docker-registry nginx tinyproxy 2>/dev/null || true
  pkill -x docker-registry 2>/dev/null || true; pkill -x tinyproxy 2>/dev/null || true
fi
# Runtimes from the npm registry, pinned.
command -v deno >/dev/null 2>&1 || npm i -g deno@2.9 >&2 || { echo "0 passed, 1 failed"; exit 1; }
command -v bun >/dev/null 2>&1 || npm i -g bun@1 >&2 || { echo "0 passed, 1 failed"; exit 1; }

# Go peers (stock Ollama, distribution 3's registry, crane, oras, the OCI conformance suite),
# pinned, built once into a cache by go install.
peers_bin=$(bash scripts/go_peers.sh) || { echo "0 passed, 1 failed"; echo "go_peers.sh failed" >&2; exit 1; }
export HAUL_OLLAMA="$peers_bin/ollama" HAUL_REGISTRY3="$peers_bin/registry3"
export HAUL_CRANE="$peers_bin/crane" HAUL_ORAS="$peers_bin/oras" HAUL_REGCTL="$peers_bin/regctl"
export HAUL_OCI_CONFORMANCE="$peers_bin/oci-conformance"

log=$(mktemp)
export NO_COLOR=1 DENO_NO_UPDATE_CHECK=1
deno test -A --parallel "$@" tests/ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(sed -E 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -n 1)
rm -f "$log"
if [ -z "$summary" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
passed=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$summary")
failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$summary")
ignored=$(grep -oE '[0-9]+ ignored' <<<"$summary" | cut -d' ' -f1)
if [ -n "$ignored" ] && [ "$ignored" != 0 ]; then
  echo "$passed passed, $failed failed, $ignored skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$status" = 0 ] && [ "$failed" = 0 ]
