#!/usr/bin/env bash
# Build Contour (cmd/contour) from its pinned Go module, for the ingress in the test harness and the demo,
# and extract Contour's own CRDs from the same module source.
#
#   tests/harness/build-contour.sh            build if needed (no-op in well under 1 s when up to date)
#   tests/harness/build-contour.sh --check    exit 0 if the cached binary and CRDs match the pin, 1 otherwise
#   tests/harness/build-contour.sh --force    rebuild even if the stamp matches
#   tests/harness/build-contour.sh --print-dir
#
# The pin lives in tests/harness/contour/go.{mod,sum} (github.com/projectcontour/contour).
# Output: ${FLEETMESH_CACHE:-/var/cache/fleetmesh}/contour/<version>/{contour,01-crds.yaml,.stamp}
# Go caches: ${FLEETMESH_CACHE}/go/{mod,build} (shared with build-kube.sh).
# About 2 minutes cold on 2 cores; run it in the background next to other work:
#   nohup nice -n 19 tests/harness/build-contour.sh > /tmp/contour-build.log 2>&1 &
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD_DIR="${HERE}/contour"
CACHE="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"
MODULE=github.com/projectcontour/contour

VERSION="$(sed -nE "s#^[[:space:]]*(require[[:space:]]+)?github\.com/projectcontour/contour[[:space:]]+(v[^[:space:]]+).*#\\2#p" "${MOD_DIR}/go.mod" | head -n1)"
if [[ -z "${VERSION}" ]]; then
    echo "build-contour: cannot read the pinned version from ${MOD_DIR}/go.mod" >&2
    exit 2
fi
OUT="${CACHE}/contour/${VERSION}"
STAMP="${OUT}/.stamp"
LDFLAGS="-s -w -X ${MODULE}/internal/build.Version=${VERSION} -X ${MODULE}/internal/build.Branch=release-${VERSION%.*}"
PARALLEL="${FLEETMESH_GO_PARALLEL:-2}"

compute_stamp() {
    {
        echo "contour=${VERSION}"
        echo "ldflags=${LDFLAGS}"
        echo "flags=-trimpath CGO_ENABLED=0"
        cat "${MOD_DIR}/go.mod" "${MOD_DIR}/go.sum"
    } | sha256sum | cut -d' ' -f1
}

up_to_date() {
    [[ -x "${OUT}/contour" && -s "${OUT}/01-crds.yaml" && -f "${STAMP}" ]] || return 1
    [[ "$(head -n1 "${STAMP}")" == "$(compute_stamp)" ]]
}

mode=build
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    --force) mode=force ;;
    --print-dir) echo "${OUT}"; exit 0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build-contour: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

if [[ "${mode}" != force ]] && up_to_date; then
    echo "build-contour: up to date: contour ${VERSION} in ${OUT}"
    exit 0
fi
if [[ "${mode}" == check ]]; then
    echo "build-contour: missing or stale: ${OUT}/{contour,01-crds.yaml} (run: tests/harness/build-contour.sh)" >&2
    exit 1
fi

GO="${GO:-}"
if [[ -z "${GO}" ]]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
    fi
fi
need_go="$(sed -nE 's/^go[[:space:]]+([0-9.]+).*/\1/p' "${MOD_DIR}/go.mod")"
if [[ -z "${GO}" || ! -x "${GO}" ]]; then
    echo "build-contour: Go toolchain not found (looked for \$GO, 'go' on PATH and /usr/local/go/bin/go);" \
         "contour ${VERSION} needs Go >= ${need_go}: install it from https://go.dev/dl/ or set GO=." >&2
    exit 3
fi
have_go="$("${GO}" env GOVERSION)"; have_go="${have_go#go}"
if [[ "$(printf '%s\n%s\n' "${need_go}" "${have_go}" | sort -V | head -n1)" != "${need_go}" ]]; then
    echo "build-contour: ${GO} is Go ${have_go}; contour ${VERSION} needs Go >= ${need_go} (https://go.dev/dl/, or set GO=)." >&2
    exit 3
fi

mkdir -p "${OUT}" "${CACHE}/go/mod" "${CACHE}/go/build"
exec 9>"${OUT}/.lock"
if ! flock -n 9; then
    echo "build-contour: another build holds ${OUT}/.lock; waiting for it ..."
    flock 9
    if [[ "${mode}" != force ]] && up_to_date; then
        echo "build-contour: up to date after concurrent build: ${OUT}"
        exit 0
    fi
fi

export GOMODCACHE="${CACHE}/go/mod" GOCACHE="${CACHE}/go/build"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly -modcacherw -buildvcs=false"
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export GOMAXPROCS="${GOMAXPROCS:-${PARALLEL}}"

t0=${SECONDS}
echo "build-contour: Go ${have_go} (${GO}); cache ${CACHE}; parallelism -p ${PARALLEL}"
rm -f "${STAMP}"
(cd "${MOD_DIR}" && "${GO}" mod download "${MODULE}")
(cd "${MOD_DIR}" && "${GO}" mod download)
echo "build-contour: modules ready after $((SECONDS - t0)) s"
SRC="$(cd "${MOD_DIR}" && "${GO}" list -m -f '{{.Dir}}' "${MODULE}")"
(cd "${MOD_DIR}" && "${GO}" build -p "${PARALLEL}" -ldflags="${LDFLAGS}" -o "${OUT}/.contour.tmp" "${MODULE}/cmd/contour")
mv -f "${OUT}/.contour.tmp" "${OUT}/contour"
# Contour's own CRDs, from the same module source (HTTPProxy, TLSCertificateDelegation, ExtensionService,
# ContourConfiguration, ContourDeployment).
install -m 0644 "${SRC}/examples/contour/01-crds.yaml" "${OUT}/01-crds.yaml"
"${OUT}/contour" version 2>&1 | head -n3 | sed 's/^/build-contour: /' || true
{
    compute_stamp
    echo "contour ${VERSION}, go ${have_go}, built $(date -u +%FT%TZ)"
    echo "build seconds: $((SECONDS - t0))"
} > "${STAMP}.tmp"
mv -f "${STAMP}.tmp" "${STAMP}"
echo "build-contour: done in $((SECONDS - t0)) s: ${OUT}/{contour,01-crds.yaml}"
