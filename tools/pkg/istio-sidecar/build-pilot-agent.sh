#!/usr/bin/env bash
# Build the REAL pilot-agent from the istio.io/istio Go module at a pinned module version.
# The Go module proxy does not serve Istio's release tags (they are not semver "vX.Y.Z"), so the
# module is pinned by pseudo-version (commit) in ISTIO_GO_MODULE_VERSION below.
# Caches: GOMODCACHE/GOCACHE under $FLEETMESH_CACHE/go; binary under
# $FLEETMESH_CACHE/istio-sidecar/pilot-agent/<module version>/pilot-agent (+ .version, .log).
# The build runs inside the module's own source tree so Istio's go.mod (with its replace lines)
# applies.  Exit 0 with the binary in place, non-zero on failure (log kept next to it).
set -euo pipefail
ISTIO_GO_MODULE_VERSION="${ISTIO_GO_MODULE_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}"
cache="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"
out="$cache/istio-sidecar/pilot-agent/$ISTIO_GO_MODULE_VERSION"
[ "${1:-}" = "--force" ] && rm -f "$out/pilot-agent"
[ -x "$out/pilot-agent" ] && { echo "build-pilot-agent: cached $out/pilot-agent"; exit 0; }
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
mkdir -p "$out" "$GOMODCACHE" "$GOCACHE"
dir="$(go mod download -json "istio.io/istio@$ISTIO_GO_MODULE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
src="$(mktemp -d "$cache/istio-sidecar/.src.XXXX")"; trap 'chmod -R u+w "$src"; rm -rf "$src"' EXIT
cp -a "$dir/." "$src/"; chmod -R u+w "$src"
ver="$(cat "$src/VERSION" 2>/dev/null || true)-dev"   # Istio's own dev-build stamp: <VERSION file>-dev
echo "build-pilot-agent: istio.io/istio@$ISTIO_GO_MODULE_VERSION (version stamp ${ver}) -> $out"
(cd "$src" && go build -trimpath -o "$out/pilot-agent.tmp" \
   -ldflags "-s -w -X istio.io/istio/pkg/version.buildVersion=${ver} -X istio.io/istio/pkg/version.buildGitRevision=${ISTIO_GO_MODULE_VERSION##*-} -X istio.io/istio/pkg/version.buildStatus=Clean" \
   ./pilot/cmd/pilot-agent)
mv "$out/pilot-agent.tmp" "$out/pilot-agent"
echo "${ver} $ISTIO_GO_MODULE_VERSION" > "$out/.version"
"$out/pilot-agent" version --short 2>/dev/null || true
