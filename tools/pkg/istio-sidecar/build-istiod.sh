#!/usr/bin/env bash
# Build the REAL istiod (pilot/cmd/pilot-discovery) from the same pinned istio.io/istio Go module as
# pilot-agent (build-pilot-agent.sh: ISTIO_GO_MODULE_VERSION), for the controller side of the mesh (issue 14),
# and take Istio's own CRDs from the same module source (manifests/charts/base/files/crd-all.gen.yaml).
#
#   tools/pkg/istio-sidecar/build-istiod.sh            build if needed (no-op in well under 1 s when up to date)
#   tools/pkg/istio-sidecar/build-istiod.sh --check    exit 0 if the cached binary and CRDs match the pin, 1 otherwise
#   tools/pkg/istio-sidecar/build-istiod.sh --force    rebuild even if the stamp matches
#   tools/pkg/istio-sidecar/build-istiod.sh --print-dir
#
# Output: ${FLEETMESH_CACHE:-/var/cache/fleetmesh}/istio-sidecar/istiod/<module version>/
#         {pilot-discovery,crd-all.gen.yaml,.stamp}
# Go caches: ${FLEETMESH_CACHE}/go/{mod,build} (shared with pilot-agent, kube and contour). It builds in about
# 4.5 minutes on a build cache warmed by pilot-agent; it runs under `nice -n 10` (2 shared CPUs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# One pin for pilot-agent and istiod: read it from build-pilot-agent.sh unless set in the environment.
PIN="$(sed -nE 's/^ISTIO_GO_MODULE_VERSION="\$\{ISTIO_GO_MODULE_VERSION:-([^}]+)\}".*/\1/p' "${HERE}/build-pilot-agent.sh")"
VERSION="${ISTIO_GO_MODULE_VERSION:-${PIN}}"
if [[ -z "${VERSION}" ]]; then
    echo "build-istiod: cannot read the pinned istio.io/istio version from ${HERE}/build-pilot-agent.sh" >&2
    exit 2
fi
CACHE="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"
OUT="${CACHE}/istio-sidecar/istiod/${VERSION}"
STAMP="${OUT}/.stamp"
PARALLEL="${FLEETMESH_GO_PARALLEL:-2}"
LDX="-X istio.io/istio/pkg/version.buildGitRevision=${VERSION##*-} -X istio.io/istio/pkg/version.buildStatus=Clean"

compute_stamp() {
    { echo "istio.io/istio=${VERSION}"; echo "ldx=${LDX}"; echo "flags=-trimpath CGO_ENABLED=0 -s -w"; } \
        | sha256sum | cut -d' ' -f1
}

up_to_date() {
    [[ -x "${OUT}/pilot-discovery" && -s "${OUT}/crd-all.gen.yaml" && -f "${STAMP}" ]] || return 1
    [[ "$(head -n1 "${STAMP}")" == "$(compute_stamp)" ]]
}

mode=build
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    --force) mode=force ;;
    --print-dir) echo "${OUT}"; exit 0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build-istiod: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

if [[ "${mode}" != force ]] && up_to_date; then
    echo "build-istiod: up to date: istiod ${VERSION} in ${OUT}"
    exit 0
fi
if [[ "${mode}" == check ]]; then
    echo "build-istiod: missing or stale: ${OUT}/{pilot-discovery,crd-all.gen.yaml} (run: $0)" >&2
    exit 1
fi

GO="${GO:-}"
if [[ -z "${GO}" ]]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
    fi
fi
if [[ -z "${GO}" || ! -x "${GO}" ]]; then
    echo "build-istiod: Go toolchain not found (looked for \$GO, 'go' on PATH and /usr/local/go/bin/go);" \
         "install it from https://go.dev/dl/ or set GO=." >&2
    exit 3
fi
have_go="$("${GO}" env GOVERSION)"; have_go="${have_go#go}"

mkdir -p "${OUT}" "${CACHE}/go/mod" "${CACHE}/go/build"
exec 9>"${OUT}/.lock"
if ! flock -n 9; then
    echo "build-istiod: another build holds ${OUT}/.lock; waiting for it ..."
    flock 9
    if [[ "${mode}" != force ]] && up_to_date; then
        echo "build-istiod: up to date after concurrent build: ${OUT}"
        exit 0
    fi
fi

# The same environment as build-pilot-agent.sh, so the build cache it warmed is reused.
export GOMODCACHE="${CACHE}/go/mod" GOCACHE="${CACHE}/go/build" GOFLAGS="-mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
export GOMAXPROCS="${GOMAXPROCS:-${PARALLEL}}"
t0=${SECONDS}
rm -f "${STAMP}"
dir="$("${GO}" mod download -json "istio.io/istio@${VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
# Istio's go.mod (with its replace lines) must apply: build inside a writable copy of the module's source.
src="$(mktemp -d "${CACHE}/istio-sidecar/.src-istiod.XXXX")"; trap 'chmod -R u+w "${src}"; rm -rf "${src}"' EXIT
cp -a "${dir}/." "${src}/"; chmod -R u+w "${src}"
ver="$(cat "${src}/VERSION" 2>/dev/null || true)-dev"   # Istio's own dev-build stamp: <VERSION file>-dev
echo "build-istiod: istio.io/istio@${VERSION} (version stamp ${ver}), Go ${have_go}, -p ${PARALLEL} -> ${OUT}"
(cd "${src}" && nice -n 10 "${GO}" build -p "${PARALLEL}" -trimpath -o "${OUT}/.pilot-discovery.tmp" \
    -ldflags "-s -w -X istio.io/istio/pkg/version.buildVersion=${ver} ${LDX}" ./pilot/cmd/pilot-discovery)
mv -f "${OUT}/.pilot-discovery.tmp" "${OUT}/pilot-discovery"
install -m 0644 "${src}/manifests/charts/base/files/crd-all.gen.yaml" "${OUT}/crd-all.gen.yaml"
"${OUT}/pilot-discovery" version --short 2>/dev/null | sed 's/^/build-istiod: version /' || true
{
    compute_stamp
    echo "istiod ${ver} istio.io/istio@${VERSION}, go ${have_go}, built $(date -u +%FT%TZ)"
    echo "build seconds: $((SECONDS - t0))"
} > "${STAMP}.tmp"
mv -f "${STAMP}.tmp" "${STAMP}"
echo "build-istiod: done in $((SECONDS - t0)) s: ${OUT}/{pilot-discovery,crd-all.gen.yaml}"
