#!/usr/bin/env bash
# Build one fleetmesh-envoy package, or publish a repository index. Run by the envoy_repo role
# on the controller; the role decides what needs building (by input stamps) and renders the
# metadata (DEBIAN/control, postinst, postrm; the .spec) into META_DIR.
#
#   check FORMAT...                          the tools for these formats are installed
#   deb META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP
#   rpm META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP
#   index-deb REPO_DIR STAMP                 Packages + Packages.gz (every version); signed: Release,
#                                            InRelease (clear-signed) and Release.gpg (detached)
#   index-rpm REPO_DIR STAMP                 createrepo_c metadata; signed: repodata/repomd.xml.asc
#   key HOME KEY_FILE KEY_ID PUB_FILE CHECK  the signing key: import KEY_FILE, or pick KEY_ID, or use
#                                            the one secret key of HOME, or generate one (RSA 3072,
#                                            no expiry); write its public key to PUB_FILE (armored);
#                                            print fingerprint=FPR and changed=yes|no. CHECK=true
#                                            changes nothing and reports what would change.
#
# Signing: with FM_SIGN_KEY (a fingerprint) and FM_GNUPGHOME set, rpm signs each package
# (rpmsign --addsign; its macros come with --define, ~/.rpmmacros is not touched) and the
# indexes are signed with gpg. The private key stays in FM_GNUPGHOME (mode 0700, keys 0600).
#
# A package is written next to OUT_FILE and renamed into place, then STAMP is written (and
# older stamps of the same file removed), so an interrupted build is redone on the next run.
set -euo pipefail
export LC_ALL=C

die() { echo "envoy_repo: $*" >&2; exit 2; }
need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "'$t' is missing; run 'make setup' (apt-get install dpkg-dev rpm createrepo-c gpg gpg-agent)"
  done
}
# gpg talks to its agent over sockets in the home directory (S.gpg-agent.browser, ...), and a socket path has at
# most 107 bytes: with a longer home gpg says "No agent running". Such a home is used through a short alias, a
# symlink in a directory of its own under /tmp that goes when the command ends (gpg keeps the path it is given).
gpg_alias() { # HOME: sets __gh to HOME, or to a short alias of it
  __gh="$1"
  [ "${#1}" -gt 80 ] || return 0
  [ -n "${__gpg_alias_dir:-}" ] || __gpg_alias_dir="$(mktemp -d /tmp/fm-gpg.XXXXXX)"
  ln -sfn "$1" "$__gpg_alias_dir/h"
  __gh="$__gpg_alias_dir/h"
}
# The agent gpg starts for HOME goes when the command ends.
gpg_done() {
  if [ -n "${__gpg_home:-}" ]; then gpg_alias "$__gpg_home"; gpgconf --homedir "$__gh" --kill gpg-agent >/dev/null 2>&1 || :; fi
  [ -z "${__gpg_alias_dir:-}" ] || rm -rf "$__gpg_alias_dir"
}
trap gpg_done EXIT
gpgh() { # HOME ARGS...: gpg on that keyring, never asking
  gpg_alias "$1"; shift
  gpg --homedir "$__gh" --batch --no-tty --quiet --pinentry-mode loopback --passphrase '' "$@"
}
signing() { [ -n "${FM_SIGN_KEY:-}" ]; }
sign_file() { # MODE IN OUT: MODE is clearsign or detach (armored)
  local how=--clearsign
  [ "$1" = detach ] && how="--detach-sign --armor"
  # shellcheck disable=SC2086
  gpgh "$FM_GNUPGHOME" --yes --local-user "$FM_SIGN_KEY" --digest-algo SHA256 $how -o "$3" "$2" \
    || die "gpg could not sign $2 with $FM_SIGN_KEY (a key with a passphrase is not supported)"
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
  if signing; then
    need rpmsign gpg
    gpg_alias "$FM_GNUPGHOME"
    rpmsign --addsign --define "_gpg_name $FM_SIGN_KEY" --define "_gpg_path $__gh" \
      --define "__gpg $(command -v gpg)" --define "_gpg_digest_algo sha256" \
      --define "_gpg_sign_cmd_extra_args --batch --no-tty --pinentry-mode loopback --passphrase ''" \
      "$rpm" > "$meta/rpmsign.log" 2>&1 || { cat "$meta/rpmsign.log" >&2; die "rpmsign failed for $version"; }
  fi
  mkdir -p "$(dirname "$out")"
  cp "$rpm" "$out.tmp"
  mv -f "$out.tmp" "$out"
  rm -rf "$top"
  stamp "$st"
}

release_file() { # DIR: the Release of a flat repository, with the hashes of its indexes
  local f algo sum
  echo "Origin: fleetmesh.envoy"
  echo "Label: fleetmesh-envoy"
  echo "Date: $(date -u -R)"
  echo "Architectures: amd64"
  echo "Description: fleetmesh-envoy packages (fleetmesh.envoy role envoy_repo)"
  for algo in MD5Sum:md5sum SHA256:sha256sum SHA512:sha512sum; do
    echo "${algo%%:*}:"
    for f in Packages Packages.gz; do
      sum="$("${algo#*:}" "$1/$f" | cut -d' ' -f1)"
      printf ' %s %s %s\n' "$sum" "$(stat -c %s "$1/$f")" "$f"
    done
  done
}

index_deb() {
  local dir="$1" st="$2"
  need dpkg-scanpackages
  (cd "$dir" && dpkg-scanpackages --multiversion . /dev/null > Packages.tmp 2>/dev/null \
    && gzip -9nc Packages.tmp > Packages.gz.tmp && mv -f Packages.tmp Packages && mv -f Packages.gz.tmp Packages.gz)
  if signing; then
    need gpg
    release_file "$dir" > "$dir/Release.tmp"
    sign_file clearsign "$dir/Release.tmp" "$dir/InRelease.tmp"
    sign_file detach "$dir/Release.tmp" "$dir/Release.gpg.tmp"
    mv -f "$dir/Release.tmp" "$dir/Release"
    mv -f "$dir/Release.gpg.tmp" "$dir/Release.gpg"
    mv -f "$dir/InRelease.tmp" "$dir/InRelease"
  else
    rm -f "$dir/Release" "$dir/InRelease" "$dir/Release.gpg"  # no stale signature over other indexes
  fi
  stamp "$st"
}

index_rpm() {
  local dir="$1" st="$2"
  need createrepo_c
  createrepo_c --quiet --update "$dir" >/dev/null
  if signing; then
    need gpg
    sign_file detach "$dir/repodata/repomd.xml" "$dir/repodata/repomd.xml.asc.tmp"
    mv -f "$dir/repodata/repomd.xml.asc.tmp" "$dir/repodata/repomd.xml.asc"
  else
    rm -f "$dir/repodata/repomd.xml.asc"
  fi
  stamp "$st"
}

key() { # HOME KEY_FILE KEY_ID PUB_FILE CHECK
  local home="$1" file="$2" id="$3" pub="$4" check="$5" fpr="" changed=no secrets listing scratch
  need gpg gpgconf
  umask 077
  __gpg_home="$home"
  if [ -n "$file" ]; then
    { [ -f "$file" ] && [ -r "$file" ]; } || die "envoy_repo_signing_key_file=$file is not a readable file"
    scratch="$(mktemp -d)"  # show-only still wants a keyring: not the user's ~/.gnupg
    listing="$(gpg --homedir "$scratch" --batch --no-tty --with-colons --import-options show-only --import "$file" 2>/dev/null || :)"
    gpgconf --homedir "$scratch" --kill gpg-agent >/dev/null 2>&1 || :
    rm -rf "$scratch"
    fpr="$(awk -F: '$1 == "sec" {want = 1; next} want && $1 == "fpr" {print $10; exit}' <<< "$listing")"
    [ -n "$fpr" ] || die "envoy_repo_signing_key_file=$file holds no OpenPGP secret key (export it with gpg --export-secret-keys --armor FINGERPRINT)"
    if [ -n "$id" ] && [[ "${fpr^^}" != *"${id^^}" ]]; then
      die "envoy_repo_signing_key_id=$id is not the key in envoy_repo_signing_key_file=$file ($fpr)"
    fi
    if ! { [ -d "$home" ] && gpgh "$home" --list-secret-keys "$fpr" >/dev/null 2>&1; }; then
      changed=yes
      if [ "$check" != true ]; then
        install -d -m 0700 "$home"
        gpgh "$home" --import "$file" 2>/dev/null || die "gpg could not import envoy_repo_signing_key_file=$file"
      fi
    fi
  elif [ -n "$id" ]; then
    [ -d "$home" ] || die "envoy_repo_signing_key_id=$id: envoy_repo_gnupg_home=$home does not exist"
    fpr="$(gpgh "$home" --with-colons --list-secret-keys "$id" 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}')"
    [ -n "$fpr" ] || die "envoy_repo_signing_key_id=$id has no secret key in envoy_repo_gnupg_home=$home"
  else
    secrets=""
    [ -d "$home" ] && secrets="$(gpgh "$home" --with-colons --list-secret-keys 2>/dev/null \
      | awk -F: '$1 == "sec" {want = 1; next} want && $1 == "fpr" {print $10; want = 0}')"
    case "$(grep -c . <<< "$secrets" || :)" in
      0)
        changed=yes
        if [ "$check" = true ]; then
          fpr="(new key)"
        else
          install -d -m 0700 "$home"
          gpgh "$home" --quick-generate-key \
            "fleetmesh.envoy repository signing key (generated on $(hostname)) <envoy-repo@fleetmesh.invalid>" \
            rsa3072 sign never 2>/dev/null || die "gpg could not generate a signing key in envoy_repo_gnupg_home=$home"
          fpr="$(gpgh "$home" --with-colons --list-secret-keys | awk -F: '$1 == "fpr" {print $10; exit}')"
        fi ;;
      1) fpr="$secrets" ;;
      *) die "envoy_repo_gnupg_home=$home holds several secret keys ($(tr '\n' ' ' <<< "$secrets")); set envoy_repo_signing_key_id to one" ;;
    esac
  fi
  if [ "$check" = true ]; then
    [ "$changed" = yes ] || gpgh "$home" --armor --export "$fpr" | cmp -s - "$pub" || changed=yes
  else
    chmod 0700 "$home"
    install -d -m 0755 "$(dirname "$pub")"
    gpgh "$home" --armor --export "$fpr" > "$pub.tmp"
    grep -q 'BEGIN PGP PUBLIC KEY BLOCK' "$pub.tmp" || die "gpg exported no public key for $fpr"
    if cmp -s "$pub.tmp" "$pub"; then
      rm -f "$pub.tmp"
    else
      chmod 0644 "$pub.tmp"
      mv -f "$pub.tmp" "$pub"
      changed=yes
    fi
  fi
  echo "fingerprint=$fpr"
  echo "changed=$changed"
}

__gpg_home="${FM_GNUPGHOME:-}"
cmd="${1:-}"; shift || true
case "$cmd" in
  check)
    for f in "$@"; do
      case "$f" in
        deb) need dpkg-deb dpkg-scanpackages objdump ;;
        rpm) need rpmbuild rpm createrepo_c ;;
        sign) need gpg gpgconf gpg-agent rpmsign ;;
        *) die "format '$f' is not allowed; allowed: deb, rpm, sign" ;;
      esac
    done ;;
  deb) [ $# -eq 8 ] || die "usage: $0 deb META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP"; build_deb "$@" ;;
  rpm) [ $# -eq 8 ] || die "usage: $0 rpm META_DIR VERSION BINARY SHA256 UNIT WRAPPER OUT_FILE STAMP"; build_rpm "$@" ;;
  index-deb) [ $# -eq 2 ] || die "usage: $0 index-deb REPO_DIR STAMP"; index_deb "$@" ;;
  index-rpm) [ $# -eq 2 ] || die "usage: $0 index-rpm REPO_DIR STAMP"; index_rpm "$@" ;;
  key) [ $# -eq 5 ] || die "usage: $0 key HOME KEY_FILE KEY_ID PUB_FILE CHECK"; key "$@" ;;
  *) die "usage: $0 check|deb|rpm|index-deb|index-rpm|key ..." ;;
esac
