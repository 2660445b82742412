#!/usr/bin/env bash
# Build the fleetmesh-smoke package as .deb and .rpm and publish both as local repositories:
#   OUT/deb  (flat apt repository: Packages + Packages.gz)
#   OUT/rpm  (yum repository: createrepo_c metadata)
set -euo pipefail
out="$1"; work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$out/deb" "$out/rpm"
# .deb
mkdir -p "$work/deb/DEBIAN" "$work/deb/usr/share/fleetmesh-smoke"
echo "fleetmesh smoke package" > "$work/deb/usr/share/fleetmesh-smoke/README"
cat > "$work/deb/DEBIAN/control" <<CTL
Package: fleetmesh-smoke
Version: 1.0.0-1
Architecture: all
Maintainer: fleetmesh <maintainers@fleetmesh.invalid>
Description: fleetmesh molecule smoke package
CTL
dpkg-deb --root-owner-group -Zgzip --build "$work/deb" "$out/deb/fleetmesh-smoke_1.0.0-1_all.deb" >/dev/null
(cd "$out/deb" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null && gzip -9nkf Packages)
# .rpm
cat > "$work/smoke.spec" <<SPEC
Name: fleetmesh-smoke
Version: 1.0.0
Release: 1
Summary: fleetmesh molecule smoke package
License: Apache-2.0
BuildArch: noarch
%description
fleetmesh molecule smoke package
%install
mkdir -p %{buildroot}/usr/share/fleetmesh-smoke
echo "fleetmesh smoke package" > %{buildroot}/usr/share/fleetmesh-smoke/README
%files
/usr/share/fleetmesh-smoke/README
SPEC
rpmbuild --quiet -bb --define "_topdir $work/rpmbuild" "$work/smoke.spec" >/dev/null 2>&1
cp "$work"/rpmbuild/RPMS/noarch/*.rpm "$out/rpm/"
createrepo_c -q "$out/rpm" >/dev/null
touch "$out/.done"
