#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from pinned Go modules, for the test harness and the demo.
#
#   tests/harness/build-kube.sh            build if needed (no-op in well under 1 s when up to date)
#   tests/harness/build-kube.sh --check    exit 0 if the cached binaries match the pins, 1 otherwise
#   tests/harness/build-kube.sh --force    rebuild even if the stamp matches
#   tests/harness/build-kube.sh --print-dir
#
# The pins live in tests/harness/kube-apiserver/go.{mod,sum} (k8s.io/kubernetes + every staging module
# replaced by the matching v0.X.Y) and tests/harness/etcd/go.{mod,sum} (go.etcd.io/etcd/server/v3).
# Binaries: ${FLEETMESH_CACHE:-/var/cache/fleetmesh}/kube/<k8s-version>/{kube-apiserver,etcd}
# Go caches: ${FLEETMESH_CACHE}/go/{mod,build}  (outside the work tree, reused between runs).
# A cold build takes many minutes on 2 cores: run it in the background, e.g.
#   nohup tests/harness/build-kube.sh > /tmp/kube-build.log 2>&1 &
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_MOD_DIR="${HERE}/kube-apiserver"
ETCD_MOD_DIR="${HERE}/etcd"
CACHE="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"

# Single source of truth for the versions: the committed go.mod files.
mod_version() { # FILE MODULE
    sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+(v[^[:space:]]+).*#\\2#p" "$1" | head -n1
}
KUBE_VERSION="$(mod_version "${KUBE_MOD_DIR}/go.mod" 'k8s\.io/kubernetes')"
ETCD_VERSION="$(mod_version "${ETCD_MOD_DIR}/go.mod" 'go\.etcd\.io/etcd/server/v3')"
if [[ -z "${KUBE_VERSION}" || -z "${ETCD_VERSION}" ]]; then
    echo "build-kube: cannot read the pinned versions from ${KUBE_MOD_DIR}/go.mod and ${ETCD_MOD_DIR}/go.mod" >&2
    exit 2
fi
# Release date of the pinned tag (proxy.golang.org .info), embedded for reproducible version output.
KUBE_BUILD_DATE="2026-07-22T18:07:38Z"

OUT="${CACHE}/kube/${KUBE_VERSION}"
STAMP="${OUT}/.stamp"
LDFLAGS_COMMON="-s -w"
KUBE_MAJOR="${KUBE_VERSION#v}"; KUBE_MAJOR="${KUBE_MAJOR%%.*}"
KUBE_MINOR="${KUBE_VERSION#v*.}"; KUBE_MINOR="${KUBE_MINOR%%.*}"
KUBE_LDFLAGS="${LDFLAGS_COMMON}"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    KUBE_LDFLAGS+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=${KUBE_MAJOR}"
    KUBE_LDFLAGS+=" -X ${pkg}.gitMinor=${KUBE_MINOR} -X ${pkg}.gitTreeState=clean"
    KUBE_LDFLAGS+=" -X ${pkg}.buildDate=${KUBE_BUILD_DATE}"
done
ETCD_LDFLAGS="${LDFLAGS_COMMON} -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
PARALLEL="${FLEETMESH_GO_PARALLEL:-2}"

# The stamp covers everything that determines the binaries except the Go toolchain patch level.
compute_stamp() {
    {
        echo "kube=${KUBE_VERSION} etcd=${ETCD_VERSION}"
        echo "kube-ldflags=${KUBE_LDFLAGS}"
        echo "etcd-ldflags=${ETCD_LDFLAGS}"
        echo "flags=-trimpath CGO_ENABLED=0"
        cat "${KUBE_MOD_DIR}/go.mod" "${KUBE_MOD_DIR}/go.sum" "${ETCD_MOD_DIR}/go.mod" "${ETCD_MOD_DIR}/go.sum"
    } | sha256sum | cut -d' ' -f1
}

up_to_date() {
    [[ -x "${OUT}/kube-apiserver" && -x "${OUT}/etcd" && -f "${STAMP}" ]] || return 1
    [[ "$(head -n1 "${STAMP}")" == "$(compute_stamp)" ]]
}

mode=build
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    --force) mode=force ;;
    --print-dir) echo "${OUT}"; exit 0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-kube: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

if [[ "${mode}" != force ]] && up_to_date; then
    echo "build-kube: up to date: kube-apiserver ${KUBE_VERSION}, etcd ${ETCD_VERSION} in ${OUT}"
    exit 0
fi
if [[ "${mode}" == check ]]; then
    echo "build-kube: missing or stale: ${OUT}/{kube-apiserver,etcd} (run: make kube-build)" >&2
    exit 1
fi

# --- find Go -----------------------------------------------------------------------------------
GO="${GO:-}"
if [[ -z "${GO}" ]]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
    fi
fi
need_go="$(sed -nE 's/^go[[:space:]]+([0-9.]+).*/\1/p' "${KUBE_MOD_DIR}/go.mod")"
if [[ -z "${GO}" || ! -x "${GO}" ]]; then
    cat >&2 <<EOF
build-kube: Go toolchain not found (looked for \$GO${GO:+=${GO}}, 'go' on PATH and /usr/local/go/bin/go).
build-kube: kube-apiserver ${KUBE_VERSION} needs Go >= ${need_go}. Install it from https://go.dev/dl/
build-kube: (e.g. unpack go${need_go}.linux-amd64.tar.gz into /usr/local) or set GO=/path/to/go, then rerun.
EOF
    exit 3
fi
have_go="$("${GO}" env GOVERSION)"; have_go="${have_go#go}"
if [[ "$(printf '%s\n%s\n' "${need_go}" "${have_go}" | sort -V | head -n1)" != "${need_go}" ]]; then
    echo "build-kube: ${GO} is Go ${have_go}; kube-apiserver ${KUBE_VERSION} needs Go >= ${need_go}." >&2
    echo "build-kube: install Go ${need_go}+ from https://go.dev/dl/ (Debian's golang package is too old) or set GO=." >&2
    exit 3
fi

# --- build ---------------------------------------------------------------------------------------
mkdir -p "${OUT}" "${CACHE}/go/mod" "${CACHE}/go/build"
exec 9>"${OUT}/.lock"
if ! flock -n 9; then
    echo "build-kube: another build holds ${OUT}/.lock; waiting for it ..."
    flock 9
    if [[ "${mode}" != force ]] && up_to_date; then
        echo "build-kube: up to date after concurrent build: ${OUT}"
        exit 0
    fi
fi

export GOMODCACHE="${CACHE}/go/mod" GOCACHE="${CACHE}/go/build"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly -modcacherw -buildvcs=false"
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
# Two cores: at most PARALLEL packages compiled at once, and no more Go threads than that per process.
export GOMAXPROCS="${GOMAXPROCS:-${PARALLEL}}"

start_all=${SECONDS}
echo "build-kube: Go ${have_go} (${GO}); cache ${CACHE}; parallelism -p ${PARALLEL}"

build_one() { # NAME MODDIR PACKAGE LDFLAGS
    local name="$1" dir="$2" pkg="$3" ldflags="$4" t0=${SECONDS}
    echo "build-kube: downloading modules for ${name} (cached in ${GOMODCACHE}) ..."
    (cd "${dir}" && "${GO}" mod download)
    echo "build-kube: modules for ${name} ready after $((SECONDS - t0)) s"
    echo "build-kube: building ${name} (${pkg}) ..."
    (cd "${dir}" && "${GO}" build -p "${PARALLEL}" -ldflags="${ldflags}" -o "${OUT}/.${name}.tmp" "${pkg}")
    mv -f "${OUT}/.${name}.tmp" "${OUT}/${name}"
    echo "build-kube: built ${OUT}/${name} in $((SECONDS - t0)) s"
}

rm -f "${STAMP}"
build_one etcd "${ETCD_MOD_DIR}" go.etcd.io/etcd/server/v3 "${ETCD_LDFLAGS}"
build_one kube-apiserver "${KUBE_MOD_DIR}" k8s.io/kubernetes/cmd/kube-apiserver "${KUBE_LDFLAGS}"

"${OUT}/etcd" --version | head -n1 | sed 's/^/build-kube: /'
"${OUT}/kube-apiserver" --version | sed 's/^/build-kube: /'
{
    compute_stamp
    echo "kube-apiserver ${KUBE_VERSION}, etcd ${ETCD_VERSION}, go ${have_go}, built $(date -u +%FT%TZ)"
    echo "build seconds: $((SECONDS - start_all))"
} > "${STAMP}.tmp"
mv -f "${STAMP}.tmp" "${STAMP}"
echo "build-kube: done in $((SECONDS - start_all)) s: ${OUT}/{kube-apiserver,etcd}"
