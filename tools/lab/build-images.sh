#!/usr/bin/env bash
# shellcheck disable=SC2016 # hooks are single-quoted on purpose: mmdebstrap expands $1 (the rootfs)
# Build the lab VM images once, from Debian packages, and import them into podman.
#
#   localhost/fleetmesh-lab-debian12:<hash>      Debian 12 with systemd + sshd
#   localhost/fleetmesh-lab-el9-emulated:<hash>  an EMULATION of an EL 9 host: a Debian-built
#       rootfs carrying rpm + dnf, AlmaLinux 9 os-release/redhat-release, no debian_version,
#       and a generated RPM that Provides: the image's shared libraries so real RPM
#       dependency resolution works. It is not RHEL. Set FLEETMESH_EL9_IMAGE to use a real
#       EL 9 init image instead (it must run systemd and sshd).
#
# <hash> covers this script, so a changed recipe builds a new image and an unchanged one is
# reused (the script exits at once when both images exist).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
cache="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"
mirror="${FLEETMESH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tag="$(sha256sum "$0" | cut -c1-12)"
deb_image="localhost/fleetmesh-lab-debian12:$tag"
el_image="localhost/fleetmesh-lab-el9-emulated:$tag"

for tool in podman mmdebstrap rpmbuild; do
  command -v "$tool" >/dev/null || { echo "build-images: '$tool' is missing; run 'make setup' (apt-get install podman mmdebstrap rpm)" >&2; exit 2; }
done

# python3-grpcio: the lab's gRPC app (tools/lab/grpc_hello.py, started by playbooks/lab_app.yml).
# iptables: the Istio sidecar's traffic capture (pilot-agent istio-iptables; lab.sh gives the VMs NET_ADMIN and
# NET_RAW), as the upstream istio-sidecar package depends on it (docs/istio-mesh.md, traffic capture).
common_pkgs="systemd,systemd-sysv,dbus,python3,python3-apt,python3-grpcio,openssh-server,sudo,iproute2,iptables,procps,ca-certificates,curl,gzip,xz-utils,tar,less"
# A lab VM: an admin user reached over SSH with the per-lab key (mounted at run time),
# passwordless sudo like a cloud image, and no units that make no sense in a container.
customize_common=(
  --customize-hook='chroot "$1" useradd -m -s /bin/bash -G sudo fleetadmin'
  --customize-hook='echo "fleetadmin ALL=(ALL) NOPASSWD:ALL" > "$1/etc/sudoers.d/fleetadmin"; chmod 0440 "$1/etc/sudoers.d/fleetadmin"'
  --customize-hook='mkdir -p "$1/home/fleetadmin/.ssh"; chmod 0700 "$1/home/fleetadmin/.ssh"; chroot "$1" chown fleetadmin:fleetadmin /home/fleetadmin/.ssh'
  --customize-hook='printf "PasswordAuthentication no\nUseDNS no\nAuthorizedKeysFile /etc/ssh/lab_authorized_keys/%%u .ssh/authorized_keys\n" > "$1/etc/ssh/sshd_config.d/fleetmesh-lab.conf"'
  --customize-hook='chroot "$1" systemctl enable ssh.service'
  --customize-hook='for u in getty@tty1 systemd-logind apt-daily.timer apt-daily-upgrade.timer e2scrub_reap systemd-timesyncd; do chroot "$1" systemctl mask $u >/dev/null 2>&1 || true; done'
  --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"'
  --customize-hook='printf "%s\n" "# fleetmesh lab VM: no package source outside the lab; the lab serves its own (fm-repo, local files)." > "$1/etc/apt/sources.list"'
)

build_debian() {
  local tar="$cache/images/debian12-$tag.tar"
  mkdir -p "$cache/images"
  echo "build-images: building $deb_image (mmdebstrap, about 30-60 s)"
  mmdebstrap --quiet --variant=minbase --include="$common_pkgs" "${customize_common[@]}" \
    bookworm "$tar" "$mirror"
  podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' "$tar" "$deb_image" >/dev/null
  rm -f "$tar"
}

# Generate and install the RPM that makes the rpm database know the image's shared libraries.
el_provides_hook() {
  cat <<'HOOK'
set -e
root="$1"; work="$(mktemp -d)"
find "$root/usr/lib" "$root/lib" -xdev \( -name '*.so*' -o -name 'ld-linux*' \) \( -type f -o -type l \) 2>/dev/null \
  | /usr/lib/rpm/rpmdeps --provides | sort -u > "$work/provides"
echo 'rtld(GNU_HASH)' >> "$work/provides"
{
  echo "Name: fleetmesh-el9-emulation-base"
  echo "Version: 1"
  echo "Release: 1"
  echo "Summary: Provides the shared libraries of the fleetmesh EL 9 emulation image"
  echo "License: Apache-2.0"
  echo "BuildArch: x86_64"
  sed 's/^/Provides: /' "$work/provides"
  echo "%description"
  echo "Generated: the image is Debian-built, so its libraries are not in the rpm database."
  echo "%files"
} > "$work/base.spec"
rpmbuild --quiet -bb --define "_topdir $work/rpmbuild" "$work/base.spec" >/dev/null
cp "$work"/rpmbuild/RPMS/x86_64/*.rpm "$root/tmp/base.rpm"
chroot "$root" rpm -i --nodeps /tmp/base.rpm
rm -rf "$work" "$root/tmp/base.rpm"
HOOK
}

build_el() {
  local tar="$cache/images/el9-emulated-$tag.tar"
  mkdir -p "$cache/images"
  echo "build-images: building $el_image (an EL 9 emulation, not RHEL)"
  mmdebstrap --quiet --variant=minbase --include="$common_pkgs,rpm,dnf,python3-dnf,python3-rpm" "${customize_common[@]}" \
    --customize-hook='rm -f "$1/etc/debian_version"; mkdir -p "$1/etc/yum.repos.d"' \
    --customize-hook='printf "%s\n" "NAME=\"AlmaLinux\"" "VERSION=\"9.4 (Seafoam Ocelot)\"" "ID=\"almalinux\"" "ID_LIKE=\"rhel centos fedora\"" "VERSION_ID=\"9.4\"" "PLATFORM_ID=\"platform:el9\"" "PRETTY_NAME=\"AlmaLinux 9.4 (fleetmesh emulation on a Debian rootfs)\"" > "$1/etc/os-release"' \
    --customize-hook='echo "AlmaLinux release 9.4 (Seafoam Ocelot)" | tee "$1/etc/redhat-release" > "$1/etc/almalinux-release"; echo "fleetmesh-el9-emulation" > "$1/etc/fleetmesh-emulation"' \
    --customize-hook="$(el_provides_hook)" \
    bookworm "$tar" "$mirror"
  podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' "$tar" "$el_image" >/dev/null
  rm -f "$tar"
}

podman image exists "$deb_image" || build_debian
if [ -z "${FLEETMESH_EL9_IMAGE:-}" ]; then
  podman image exists "$el_image" || build_el
fi
echo "build-images: ready: $deb_image ${FLEETMESH_EL9_IMAGE:-$el_image}"
