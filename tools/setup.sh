#!/usr/bin/env bash
# One-command set-up for a fresh Debian 12 machine (run as root). Idempotent: when everything
# is in place it only checks, in a few seconds.
#
#   tools/setup.sh [apt] [venv] [envoy] [images] [sanity] [link] [kube] [contour] [istiod]
#                  (default: all but the Go builds kube, contour, istiod)
#
# `make setup` runs every step but the Go builds, kube, contour and istiod (make kube-build runs those, several
# minutes cold): between them everything a test asserts is prepared (tests/unit/test_setup_steps.py checks
# that the Makefile names every step).
#
# Caches live outside the work tree, under FLEETMESH_CACHE (default /var/cache/fleetmesh), so
# a fresh clone on the same machine reuses them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/tools/lab/containers.conf}"
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(apt venv envoy images sanity link)
say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 2; }

# apt runs with --no-install-recommends, so every package a script relies on is named here, also when another
# program calls it (netavark runs iptables). tools/doctor.sh's COMMANDS table says which command comes from
# which package; tests/unit/test_setup_steps.py keeps the two and the scripts in step. Go is not an apt
# package here (Debian's is too old): it is expected in /usr/local/go, and the doctor says so when it is not.
# python3-grpcio: the gRPC client of the tests and the demo (tools/lab/grpc_hello.py, run by /usr/bin/python3; the
# lab images carry the same package for the gRPC app on the VMs).
APT_PACKAGES=(podman runc netavark iptables mmdebstrap rpm createrepo-c dpkg-dev fakeroot openssh-client gpg gpg-agent
  iproute2 curl ca-certificates openssl gzip unzip git make python3 python3-minimal python3-venv shellcheck prometheus
  python3-grpcio chromium-headless-shell)

step_apt() {
  [ -r /etc/debian_version ] || die "this set-up needs Debian 12 (no /etc/debian_version found)"
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { say "apt packages present"; return; }
  [ "$(id -u)" -eq 0 ] || die "apt packages missing (${missing[*]}); run 'make setup' as root or: sudo apt-get install ${missing[*]}"
  say "installing apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step_venv() {
  local py="${FLEETMESH_PYTHON:-python3}" key dir
  command -v "$py" >/dev/null || die "python3 is missing; install Python 3.11 (apt-get install python3 python3-venv)"
  "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "the lock file is for Python 3.11; '$py' is $("$py" -V 2>&1). Set FLEETMESH_PYTHON to a 3.11 interpreter"
  key="$( (cat "$root/requirements.lock"; "$py" -V) | sha256sum | cut -c1-16)"
  dir="$cache/venv/$key"
  if [ ! -f "$dir/.complete" ]; then
    say "creating virtualenv $dir from requirements.lock (about 1-2 min)"
    rm -rf "$dir"; mkdir -p "$cache/venv"
    "$py" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip
    "$dir/bin/pip" install -q -r "$root/requirements.lock"
    touch "$dir/.complete"
  else
    say "virtualenv up to date ($dir)"
  fi
  ln -sfn "$dir" "$root/.venv"
}

step_envoy() { "$root/tools/fetch-envoy.sh"; }
step_images() { "$root/tools/lab/build-images.sh"; }
step_kube() { "$root/tests/harness/build-kube.sh"; }
step_contour() { "$root/tests/harness/build-contour.sh"; }
# The real pilot-agent and the istio-sidecar test package (tools/pkg/istio-sidecar/build.sh), then istiod
# (pilot-discovery) from the same istio.io/istio module, and Istio's CRDs, for the mesh tests (tests/harness/istiod.py,
# eastwest.py; the east-west gateway and test_istiod.py run pilot-agent before any test builds a package): about
# 3.5 min for each cold, istiod on the build cache pilot-agent warmed; a second each when cached.
step_istiod() { "$root/tools/pkg/istio-sidecar/build.sh" && "$root/tools/pkg/istio-sidecar/build-istiod.sh"; }
# ansible-test sanity gets a HOME of its own, holding its per-test virtualenvs and a local
# stand-in for its pip bootstrap download (see tools/ansible-test-get-pip.py).
step_sanity() {
  local home="$cache/ansible-test-home" pipv
  pipv="$("$root/.venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g; print(g(type("P", (), {"version": "3.11"})())["pip"])')"
  local dir="$home/.ansible/test/cache"
  mkdir -p "$dir"
  ls "$dir"/pip-"$pipv"-*.whl >/dev/null 2>&1 || "$root/.venv/bin/pip" download -q --no-deps -d "$dir" "pip==$pipv"
  cp "$root/tools/ansible-test-get-pip.py" "$dir/get_pip_${pipv//./_}.py"
}

step_link() {
  mkdir -p "$root/.build/collections/ansible_collections/fleetmesh"
  ln -sfn ../../../.. "$root/.build/collections/ansible_collections/fleetmesh/envoy"
}

for s in "${steps[@]}"; do "step_$s"; done
