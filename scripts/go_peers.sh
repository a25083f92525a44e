#!/usr/bin/env bash
# Builds the pinned Go peers the tests run against (stock Ollama, distribution 3's registry,
# crane, oras, the OCI distribution-spec conformance suite) with `go install` into a cached
# folder, once; prints that folder's bin/ on stdout. Fails, never skips, when a peer cannot be
# built: a test that needs it must not pass without it. Cold (empty module and build caches,
# 2 cores): Ollama about 80 s; registry3, crane and oras together 79 s (registry3 67 s, then
# 6 s each); oci-conformance 17 s (22-32 s while other tests load the machine), 2 s of it
# the module download.
#
#   scripts/go_peers.sh            build what is missing, print the bin folder
#   HAUL_PEERS_DIR=DIR             the cache (default ~/.cache/haul/peers)
set -euo pipefail
dir=${HAUL_PEERS_DIR:-$HOME/.cache/haul/peers}
mkdir -p "$dir/bin"
# name (the file in bin/)  package@version (pinned)  [extra go install flags]
peers=(
  # go install does not stamp Ollama's version (it would report 0.0.0): set it as its Makefile does.
  "ollama github.com/ollama/ollama@v0.32.15 -ldflags=-X=github.com/ollama/ollama/version.Version=0.32.15"
  # distribution 3's registry (beside Debian's docker-registry 2.8), named registry3 here.
  "registry3 github.com/distribution/distribution/v3/cmd/registry@v3.1.2"
  # Independent clients the interop tests read haul's pushes back with.
  "crane github.com/google/go-containerregistry/cmd/crane@v0.22.1"
  "oras oras.land/oras/cmd/oras@v1.3.6"
  # regclient's regctl, a bench peer (issue 17; Replicate's pget is not served by the proxy:
  # 403 on github.com/replicate/pget). Built in 6 s.
  "regctl github.com/regclient/regclient/cmd/regctl@v0.11.7"
  # The distribution-spec conformance suite (its own module; the proxy does not serve the
  # parent github.com/opencontainers/distribution-spec), run against `haul serve`
  # (tests/server/conformance_test.ts). Built as the command its README names (`go build`;
  # `go test -c` is its deprecated form), the report stamped with the pinned version.
  "oci-conformance github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111 -ldflags=-X=main.Version=v0.0.0-20260831232431-97274622c111"
)
PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null 2>&1; then
  # Debian's Go is older than the peers need; GOTOOLCHAIN=auto then fetches the toolchain
  # their go.mod names from the Go module proxy.
  echo "go_peers.sh: installing golang-go" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends golang-go; } >&2 || { echo "go_peers.sh: cannot install Go" >&2; exit 1; }
fi
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
exec 9>"$dir/.lock"
flock 9
for p in "${peers[@]}"; do
  read -r name mod flags <<<"$p"
  stamp="$dir/bin/.$name.version"
  if [ -x "$dir/bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$mod $flags" ]; then continue; fi
  echo "go_peers.sh: building $mod (once; cached in $dir)" >&2
  start=$(date +%s)
  # Into a private folder first, then renamed: bin/ never holds a half-written binary, and
  # the file can be named other than the package (cmd/registry -> registry3).
  tmp="$dir/bin/.build-$name"
  rm -rf "$tmp"
  if ! GOBIN="$tmp" CGO_ENABLED=1 go install $flags "$mod" >&2; then
    echo "go_peers.sh: go install $mod failed" >&2
    rm -rf "$tmp"
    exit 1
  fi
  pkg=${mod%@*}
  # go install names the file after the package's last path element.
  mv -f "$tmp/${pkg##*/}" "$dir/bin/$name"
  rm -rf "$tmp"
  echo "$mod $flags" >"$stamp"
  echo "go_peers.sh: built $name in $(($(date +%s) - start)) s" >&2
done
echo "$dir/bin"
