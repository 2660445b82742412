#!/usr/bin/env bash
# Build one fleetmesh-envoy package, or publish a repository index. Run by the envoy_repo role
# on the controller; the role decides what needs building (by input stamps) and renders the
# metadata (DEBIAN/control, postinst, postrm; the .spec) into META_DIR.
#
#   check FORMAT...                          the tools for these formats are installed
#   deb META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP
#   rpm META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP
#   index-deb REPO_DIR STAMP                 Packages + Packages.gz (every version)
#   index-rpm REPO_DIR STAMP                 createrepo_c metadata
#
# A package is written next to OUT_FILE and renamed into place, then STAMP is written (and
# older stamps of the same file removed), so an interrupted build is redone on the next run.
set -euo pipefail
export LC_ALL=C

die() { echo "envoy_repo: $*" >&2; exit 2; }
need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "'$t' is missing; run 'make setup' (apt-get install dpkg-dev rpm createrepo-c)"
  done
}
stamp() { # STAMP: the new stamp replaces the stamps of older inputs of the same file
  local s="$1"
  mkdir -p "$(dirname "$s")"
  rm -f "${s%.*}".*
  date -u +%Y-%m-%dT%H:%M:%SZ > "$s"
}
check_binary() { # BINARY SHA256 VERSION
  local got said
  [ -f "$1" ] || die "$1 does not exist; fill the artifact cache (tools/fetch-envoy.sh)"
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$got" = "$2" ] || die "$1 has sha256 $got but SHA256SUMS says $2; nothing was packaged"
  said="$("$1" --version 2>&1 || true)"
  [[ "$said" == *"/$3/"* ]] || die "$1 does not report Envoy $3 (it says: ${said: -200})"
}

build_deb() {
  local meta="$1" version="$2" binary="$3" sha="$4" unit="$5" wrapper="$6" out="$7" st="$8" root libc size
  need dpkg-deb objdump
  check_binary "$binary" "$sha" "$version"
  root="$meta/deb-root"
  rm -rf "$root"
  install -d -m 0755 "$root/DEBIAN" "$root/opt/fleetmesh/envoy/$version" "$root/usr/libexec" "$root/usr/lib/systemd/system"
  cp --preserve=timestamps "$binary" "$root/opt/fleetmesh/envoy/$version/envoy"
  chmod 0755 "$root/opt/fleetmesh/envoy/$version/envoy"
  install -m 0644 "$wrapper" "$root/usr/libexec/fleetmesh-envoy-run"  # run by the unit as: python3 WRAPPER
  install -m 0644 "$unit" "$root/usr/lib/systemd/system/fleetmesh-envoy@.service"
  # The binary's newest glibc symbol version is the libc6 it needs (what dpkg-shlibdeps would say).
  libc="$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
  size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
  { sed "s/@LIBC6@/libc6 (>= ${libc:-2.17})/" "$meta/deb-control"; echo "Installed-Size: $size"; } > "$root/DEBIAN/control"
  install -m 0755 "$meta/deb-postinst" "$root/DEBIAN/postinst"
  install -m 0755 "$meta/deb-postrm" "$root/DEBIAN/postrm"
  (cd "$root" && find opt usr -type f -print0 | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
  mkdir -p "$(dirname "$out")"
  dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$out.tmp" >/dev/null
  mv -f "$out.tmp" "$out"
  rm -rf "$root"
  stamp "$st"
}

build_rpm() {
  local meta="$1" version="$2" binary="$3" sha="$4" unit="$5" wrapper="$6" out="$7" st="$8" top rpm digest
  need rpmbuild rpm
  check_binary "$binary" "$sha" "$version"
  top="$meta/rpmbuild"
  rm -rf "$top"
  if ! rpmbuild -bb --define "_topdir $top" --define "_fm_binary $binary" --define "_fm_unit $unit" \
      --define "_fm_wrapper $wrapper" "$meta/fleetmesh-envoy.spec" > "$meta/rpmbuild.log" 2>&1; then
    tail -n 40 "$meta/rpmbuild.log" >&2
    die "rpmbuild failed for $version (log: $meta/rpmbuild.log)"
  fi
  rpm="$(find "$top/RPMS" -name '*.rpm' -print -quit)"
  [ -n "$rpm" ] || die "rpmbuild produced no package for $version"
  # The payload must carry the binary unchanged (no strip, no debuginfo split).
  digest="$(rpm -qp --qf '[%{FILENAMES} %{FILEDIGESTS}\n]' "$rpm" | awk -v f="/opt/fleetmesh/envoy/$version/envoy" '$1 == f {print $2}')"
  [ "$digest" = "$sha" ] || die "the rpm's /opt/fleetmesh/envoy/$version/envoy has digest '$digest', expected $sha"
  mkdir -p "$(dirname "$out")"
  cp "$rpm" "$out.tmp"
  mv -f "$out.tmp" "$out"
  rm -rf "$top"
  stamp "$st"
}

index_deb() {
  local dir="$1" st="$2"
  need dpkg-scanpackages
  (cd "$dir" && dpkg-scanpackages --multiversion . /dev/null > Packages.tmp 2>/dev/null \
    && gzip -9nc Packages.tmp > Packages.gz.tmp && mv -f Packages.tmp Packages && mv -f Packages.gz.tmp Packages.gz)
  stamp "$st"
}

index_rpm() {
  local dir="$1" st="$2"
  need createrepo_c
  createrepo_c --quiet --update "$dir" >/dev/null
  stamp "$st"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  check)
    for f in "$@"; do
      case "$f" in
        deb) need dpkg-deb dpkg-scanpackages objdump ;;
        rpm) need rpmbuild rpm createrepo_c ;;
        *) die "format '$f' is not allowed; allowed: deb, rpm" ;;
      esac
    done ;;
  deb) [ $# -eq 8 ] || die "usage: $0 deb META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP"; build_deb "$@" ;;
  rpm) [ $# -eq 8 ] || die "usage: $0 rpm META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP"; build_rpm "$@" ;;
  index-deb) [ $# -eq 2 ] || die "usage: $0 index-deb REPO_DIR STAMP"; index_deb "$@" ;;
  index-rpm) [ $# -eq 2 ] || die "usage: $0 index-rpm REPO_DIR STAMP"; index_rpm "$@" ;;
  *) die "usage: $0 check|deb|rpm|index-deb|index-rpm ..." ;;
esac
