#!/usr/bin/env bash
# Build the tampered copies of the fleetmesh-envoy repositories that the verify step tries to
# install from (molecule/shared/tests/test_tampered_repos.py). Runs on the controller.
#
#   tampered-repos.sh PACKAGE_SCRIPT REPO_DIR GNUPG_HOME OUT_DIR
#
# The "evil" packages are a differently-built fleetmesh-envoy 1.39.3-1 (.deb and .rpm) that ships
# /opt/fleetmesh-tampered instead of Envoy and carries no signature of the repository key.
#   deb-swapped   the signed indexes of REPO_DIR/deb, the 1.39.3 .deb swapped for the evil one
#   deb-resigned  the evil .deb with fresh indexes, InRelease/Release.gpg signed by another key
#   rpm-resigned  the evil .rpm with fresh repodata, repomd.xml.asc signed by another key
#   rpm-unsigned  the evil .rpm with fresh repodata signed by the REPOSITORY key (only the
#                 package's own signature is missing: dnf's gpgcheck must refuse it)
set -euo pipefail
export LC_ALL=C
[ $# -eq 4 ] || { echo "usage: $0 PACKAGE_SCRIPT REPO_DIR GNUPG_HOME OUT_DIR" >&2; exit 2; }
script="$1" repo="$2" home="$3" out="$4"
rm -rf "$out"
mkdir -p "$out/build"
atk="$out/build/attacker-gnupg"
install -d -m 0700 "$atk"
gpg --homedir "$atk" --batch --quiet --pinentry-mode loopback --passphrase '' \
  --quick-generate-key "not the fleetmesh key <attacker@fleetmesh.invalid>" ed25519 sign never 2>/dev/null
fpr_of() { gpg --homedir "$1" --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}'; }
atk_fpr="$(fpr_of "$atk")"
real_fpr="$(fpr_of "$home")"

# The evil .deb
root="$out/build/deb-root"
install -d "$root/DEBIAN" "$root/opt"
echo tampered > "$root/opt/fleetmesh-tampered"
printf 'Package: fleetmesh-envoy\nVersion: 1.39.3-1\nArchitecture: amd64\nMaintainer: nobody <nobody@fleetmesh.invalid>\nDescription: tampered\n' \
  > "$root/DEBIAN/control"
dpkg-deb --root-owner-group --build "$root" "$out/build/evil.deb" >/dev/null

# The evil .rpm (same name, version and arch as the real 1.39.3-1)
cat > "$out/build/evil.spec" <<'SPEC'
Name: fleetmesh-envoy
Version: 1.39.3
Release: 1
Summary: tampered
License: none
%description
tampered
%install
mkdir -p %{buildroot}/opt
echo tampered > %{buildroot}/opt/fleetmesh-tampered
%files
/opt/fleetmesh-tampered
SPEC
rpmbuild --quiet -bb --target x86_64 --define "_topdir $out/build/rpmbuild" "$out/build/evil.spec" >/dev/null 2>&1
evil_rpm="$(find "$out/build/rpmbuild/RPMS" -name '*.rpm' -print -quit)"

name_deb=fleetmesh-envoy_1.39.3-1_amd64.deb
name_rpm=fleetmesh-envoy-1.39.3-1.x86_64.rpm

mkdir -p "$out/deb-swapped"
cp "$repo"/deb/{Packages,Packages.gz,Release,InRelease,Release.gpg} "$out/deb-swapped/"
cp "$out/build/evil.deb" "$out/deb-swapped/$name_deb"

mkdir -p "$out/deb-resigned"
cp "$out/build/evil.deb" "$out/deb-resigned/$name_deb"
FM_SIGN_KEY="$atk_fpr" FM_GNUPGHOME="$atk" bash "$script" index-deb "$out/deb-resigned" "$out/build/stamps/deb-resigned.1"

mkdir -p "$out/rpm-resigned" "$out/rpm-unsigned"
cp "$evil_rpm" "$out/rpm-resigned/$name_rpm"
cp "$evil_rpm" "$out/rpm-unsigned/$name_rpm"
FM_SIGN_KEY="$atk_fpr" FM_GNUPGHOME="$atk" bash "$script" index-rpm "$out/rpm-resigned" "$out/build/stamps/rpm-resigned.1"
FM_SIGN_KEY="$real_fpr" FM_GNUPGHOME="$home" bash "$script" index-rpm "$out/rpm-unsigned" "$out/build/stamps/rpm-unsigned.1"
gpgconf --homedir "$atk" --kill gpg-agent >/dev/null 2>&1 || :
rm -rf "$out/build"
echo "tampered repositories in $out"
