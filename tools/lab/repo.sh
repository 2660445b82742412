#!/usr/bin/env bash
# Serve the fleetmesh-envoy package repositories (built by playbooks/envoy_repo.yml) to the lab
# over HTTP: a container fm-repo on the lab network at 10.213.77.5, running
# `python3 -m http.server 8081` on the repository directory mounted read-only.
#
#   tools/lab/repo.sh up       start (or keep) fm-repo; prints the URL to use as envoy_package_repo_url
#   tools/lab/repo.sh down     remove fm-repo
#   tools/lab/repo.sh status   show fm-repo
#   tools/lab/repo.sh url      print the URL
#
# URL/deb is a flat apt repository (deb [signed-by=KEY] URL/deb ./ with a signed InRelease), URL/rpm a
# yum repository (signed packages, repodata/repomd.xml.asc). KEY is the public key the envoy_repo role
# published as <repo>/fleetmesh-envoy.asc; give its controller path to the envoy role as
# envoy_package_signing_key (hosts never fetch the key from this server).
# `tools/lab/lab.sh down` removes fm-repo with the VMs: its `podman network rm -f fleetmesh-lab`
# removes every container on the lab network. fm-repo is labelled fleetmesh-lab-repo=1, NOT
# fleetmesh-lab=1: `lab.sh up` removes every fleetmesh-lab container that is not one of its VMs.
# The directory is FLEETMESH_REPO_DIR, default $FLEETMESH_CACHE/repo (the role's envoy_repo_dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
net=fleetmesh-lab
subnet=10.213.77.0/24
name=fm-repo
ip=10.213.77.5
port=8081
url="http://$ip:$port"
repo_dir="${FLEETMESH_REPO_DIR:-${FLEETMESH_CACHE:-/var/cache/fleetmesh}/repo}"
tag="$(sha256sum "$here/build-images.sh" | cut -c1-12)"
image="${FLEETMESH_DEBIAN_IMAGE:-localhost/fleetmesh-lab-debian12:$tag}"

die() { echo "repo: $*" >&2; exit 2; }

wait_http() { # the index must answer before anyone is told the URL
  local deadline=$((SECONDS + 30)) probe
  probe="$url/rpm/repodata/repomd.xml"
  [ -f "$repo_dir/deb/Packages" ] && probe="$url/deb/Packages"
  until curl -fsS -o /dev/null --max-time 2 "$probe" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$name does not answer at $probe within 30 s; see 'podman logs $name'"
    sleep 0.3
  done
}

up() {
  command -v podman >/dev/null || die "podman is missing; run 'make setup' (apt-get install podman runc)"
  command -v curl >/dev/null || die "curl is missing; run 'make setup' (apt-get install curl)"
  [ -f "$repo_dir/deb/Packages" ] || [ -d "$repo_dir/rpm/repodata" ] \
    || die "no repository in $repo_dir; build it first: ansible-playbook playbooks/envoy_repo.yml"
  repo_dir="$(cd "$repo_dir" && pwd -P)"
  podman image exists "$image" || "$here/build-images.sh" >/dev/null
  podman network exists "$net" || podman network create --subnet "$subnet" "$net" >/dev/null
  if podman container exists "$name"; then
    # Keep a running fm-repo that serves this directory from this image; replace any other.
    local have
    have="$(podman inspect -f '{{.State.Running}} {{.ImageName}} {{range .Mounts}}{{if eq .Destination "/srv/repo"}}{{.Source}}{{end}}{{end}}' "$name")"
    if [ "$have" != "true $image $repo_dir" ]; then
      podman rm -f -t 0 "$name" >/dev/null
    fi
  fi
  local state=kept
  if ! podman container exists "$name"; then
    state=started
    local err
    if ! err="$(podman run -d --name "$name" --hostname "$name" --label fleetmesh-lab-repo=1 \
        --network "$net" --ip "$ip" --read-only --tmpfs /tmp \
        -v "$repo_dir:/srv/repo:ro" --workdir /srv/repo \
        "$image" python3 -m http.server "$port" --bind 0.0.0.0 --directory /srv/repo 2>&1 >/dev/null)"; then
      podman rm -f -t 0 "$name" >/dev/null 2>&1 || :
      # Seen once: a podman killed while it set a container up keeps that container's address in its IPAM
      # database (/run/containers/networks/ipam.db) after the container and the network are gone.
      case "$err" in
        *"already allocated to container ID"*)
          die "$ip is held in podman's IPAM database by a container that no longer exists ($err). With no container on a podman network, move /run/containers/networks/ipam.db aside (it is rebuilt; a reboot clears it too)" ;;
        *) die "podman run $name failed: $err" ;;
      esac
    fi
  fi
  wait_http
  local key="$repo_dir/fleetmesh-envoy.asc" signed="signed by $repo_dir/fleetmesh-envoy.asc (envoy_package_signing_key)"
  [ -f "$key" ] || signed="UNSIGNED (hosts need envoy_package_allow_unsigned=true)"
  echo "repo: $name $state, serving $repo_dir at $url (apt: $url/deb ./  yum: baseurl=$url/rpm), $signed"
  echo "$url"
}

down() {
  if podman container exists "$name" 2>/dev/null; then
    podman rm -f -t 0 "$name" >/dev/null
  fi
  echo "repo: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) podman ps -a --filter "name=^$name\$" --format '{{.Names}}\t{{.Status}}\t{{.Image}}' ;;
  url) echo "$url" ;;
  *) echo "usage: $0 up | down | status | url" >&2; exit 2 ;;
esac
