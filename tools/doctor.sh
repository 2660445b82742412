#!/usr/bin/env bash
# Check that this machine can run the project, in a few seconds: `make demo` and `make test` run it first
# (after `make setup`, whose apt step it checks). It names what is missing and how to get it.
#
#   tools/doctor.sh             every check below
#   tools/doctor.sh commands    only the commands
#
# 1. Every command the scripts, the Makefile and the tests call is there (COMMANDS below, kept in step with the
#    scripts and with tools/setup.sh APT_PACKAGES by tests/unit/test_setup_steps.py).
# 2. podman reads the project's containers.conf (CONTAINERS_CONF): runtime runc, cgroup manager cgroupfs.
# 3. A throwaway systemd container from the lab image starts on the lab network (fleetmesh-lab), at
#    10.213.77.254 (outside the VMs' addresses), with the ulimits of containers.conf; it is removed again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/tools/lab/containers.conf}"
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"  # where Go and apt's admin commands are, whoever runs this
net=fleetmesh-lab
subnet=10.213.77.0/24
probe_ip=10.213.77.254
image="${FLEETMESH_DEBIAN_IMAGE:-localhost/fleetmesh-lab-debian12:$(sha256sum "$root/tools/lab/build-images.sh" | cut -c1-12)}"

# command provider: a Debian package (in tools/setup.sh APT_PACKAGES, or Essential/required on Debian 12),
# "venv" (the virtualenv from requirements.lock, .venv/bin) or "go" (preinstalled in /usr/local/go, not apt).
COMMANDS=(
  "podman podman"
  "runc runc"
  "iptables iptables"  # not called by the scripts: netavark runs it for every container on a podman network
  "mmdebstrap mmdebstrap"
  "rpm rpm"
  "rpmbuild rpm"
  "createrepo_c createrepo-c"
  "dpkg dpkg"
  "dpkg-deb dpkg"
  "dpkg-query dpkg"
  "dpkg-scanpackages dpkg-dev"
  "apt-get apt"
  "ssh openssh-client"
  "ssh-keygen openssh-client"
  "ssh-agent openssh-client"
  "curl curl"
  "openssl openssl"
  "unzip unzip"
  "gzip gzip"
  "git git"
  "make make"
  "ip iproute2"
  "python3 python3-minimal"
  "shellcheck shellcheck"
  "promtool prometheus"
  "prometheus prometheus"
  "chromium-headless-shell chromium-headless-shell"  # tests/unit/test_report.py opens the fleet report page
  "bash bash"
  "awk mawk"
  "find findutils"
  "grep grep"
  "sed sed"
  "flock util-linux"
  "setsid util-linux"
  "cat coreutils"
  "chmod coreutils"
  "cp coreutils"
  "cut coreutils"
  "date coreutils"
  "dirname coreutils"
  "head coreutils"
  "id coreutils"
  "install coreutils"
  "ln coreutils"
  "ls coreutils"
  "mkdir coreutils"
  "mktemp coreutils"
  "mv coreutils"
  "nice coreutils"  # tools/pkg/istio-sidecar/build-istiod.sh: the Go build yields the 2 shared CPUs
  "rm coreutils"
  "rmdir coreutils"
  "sha256sum coreutils"
  "sleep coreutils"
  "sort coreutils"
  "tail coreutils"
  "touch coreutils"
  "go go"
  "python venv"
  "pytest venv"
  "ruff venv"
  "yamllint venv"
  "ansible-playbook venv"
  "ansible-galaxy venv"
  "ansible-doc venv"
  "ansible-lint venv"
  "ansible-test venv"
  "ansible-runner venv"
  "ansible-builder venv"
  "bindep venv"
  "molecule venv"
  "antsibull-changelog venv"
)

say() { echo "doctor: $*"; }
problems=()
problem() { problems+=("$*"); echo "doctor: PROBLEM: $*" >&2; }

check_commands() {
  local entry cmd provider missing_pkgs=() missing_cmds=() venv=() go=0
  for entry in "${COMMANDS[@]}"; do
    read -r cmd provider <<<"$entry"
    case "$provider" in
      venv) [ -x "$root/.venv/bin/$cmd" ] || venv+=("$cmd") ;;
      go) command -v go >/dev/null || go=1 ;;
      *)
        if ! command -v "$cmd" >/dev/null; then
          missing_cmds+=("$cmd (Debian package $provider)")
          [[ " ${missing_pkgs[*]} " == *" $provider "* ]] || missing_pkgs+=("$provider")
        fi ;;
    esac
  done
  if [ ${#missing_cmds[@]} -gt 0 ]; then
    problem "missing commands: ${missing_cmds[*]}; run 'make setup' as root, or: apt-get install --no-install-recommends ${missing_pkgs[*]}"
  fi
  if [ ${#venv[@]} -gt 0 ]; then
    problem "not in the virtualenv $root/.venv/bin: ${venv[*]}; run 'make setup' (it builds the virtualenv from requirements.lock)"
  fi
  if [ "$go" = 1 ]; then
    problem "Go is missing: it is not installed by apt here (Debian's golang is too old) but expected preinstalled in /usr/local/go; unpack go1.26 or newer from https://go.dev/dl/ into /usr/local, or put 'go' on PATH"
  fi
  [ "$go" = 1 ] || [ ${#missing_cmds[@]} -gt 0 ] || [ ${#venv[@]} -gt 0 ] || say "commands: all ${#COMMANDS[@]} present"
}

check_containers_conf() {
  [ -f "$CONTAINERS_CONF" ] || { problem "CONTAINERS_CONF=$CONTAINERS_CONF does not exist; use the project's tools/lab/containers.conf"; return 1; }
  local got setting
  for setting in 'default_ulimits = \["nofile=1024:1024"' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"'; do
    grep -Eq "^[[:space:]]*$setting" "$CONTAINERS_CONF" || {
      problem "CONTAINERS_CONF=$CONTAINERS_CONF lacks ${setting//\\/} (systemd containers fail with setrlimit or cgroup errors without it); use the project's tools/lab/containers.conf"
      return 1
    }
  done
  got="$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' 2>&1)" \
    || { problem "podman info failed: $got"; return 1; }
  if [ "$got" != "runc cgroupfs" ]; then
    problem "podman does not use $CONTAINERS_CONF (runtime and cgroup manager are '$got', want 'runc cgroupfs'): run through make, or export CONTAINERS_CONF=$root/tools/lab/containers.conf"
    return 1
  fi
  say "podman reads $CONTAINERS_CONF (runtime runc, cgroup manager cgroupfs)"
}

check_lab_container() {
  if ! podman image exists "$image"; then
    problem "the lab image $image is missing; run 'make setup' (tools/lab/build-images.sh builds it)"
    return 1
  fi
  local name="fleetmesh-doctor-$$" made_net=0 out ids
  # A doctor that was killed leaves its container holding the probe address: remove it.
  ids="$(podman ps -aq --filter label=fleetmesh-doctor)"
  # shellcheck disable=SC2086 # one container id per word
  [ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null 2>&1 || true
  if ! podman network exists "$net"; then
    out="$(podman network create --subnet "$subnet" "$net" 2>&1)" || { problem "cannot create the lab network $net: $out"; return 1; }
    made_net=1
  fi
  # shellcheck disable=SC2064 # expand now: the names are fixed
  trap "podman rm -f -t 0 $name >/dev/null 2>&1 || true; [ $made_net = 0 ] || podman network rm $net >/dev/null 2>&1 || true" EXIT
  if ! out="$(podman run -d --name "$name" --label fleetmesh-doctor=1 --network "$net" --ip "$probe_ip" \
      --systemd=always --tmpfs /tmp --tmpfs /run "$image" /sbin/init 2>&1 | grep -v 'level=warning')"; then
    local hint="see podman's error"
    case "$out" in
      *netavark*"No such file"*|*iptables*) hint="netavark needs iptables: apt-get install --no-install-recommends iptables (make setup does)" ;;
      *rlimit*|*cgroup*) hint="podman is not using the settings of the project's tools/lab/containers.conf (runc, cgroupfs, default_ulimits): check CONTAINERS_CONF=$CONTAINERS_CONF" ;;
    esac
    problem "a container from $image does not start on the lab network $net: $out; $hint"
    return 1
  fi
  local pid1 nofile addr
  pid1="$(podman exec "$name" cat /proc/1/comm 2>&1)" || true
  nofile="$(podman exec "$name" sh -c 'ulimit -n' 2>&1)" || true
  addr="$(podman exec "$name" ip -4 -o addr show 2>&1)" || true
  [ "$pid1" = systemd ] || problem "the lab container's PID 1 is '$pid1', not systemd"
  [ "$nofile" = 1024 ] || problem "the lab container's open-files limit is '$nofile', not containers.conf's 1024: podman does not read $CONTAINERS_CONF"
  [[ "$addr" == *"$probe_ip/"* ]] || problem "the lab container has no address $probe_ip on $net: $addr"
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  if [ "$made_net" = 1 ]; then podman network rm "$net" >/dev/null 2>&1 || true; fi
  trap - EXIT
  [ "$pid1" != systemd ] || [ "$nofile" != 1024 ] || [[ "$addr" != *"$probe_ip/"* ]] \
    || say "a systemd container from $image started on $net ($probe_ip) and was removed"
}

mode="${1:-all}"
case "$mode" in
  commands) check_commands ;;
  all)
    check_commands
    if command -v podman >/dev/null; then
      if check_containers_conf; then check_lab_container || true; fi
    fi ;;
  *) echo "usage: $0 [commands]" >&2; exit 2 ;;
esac
if [ ${#problems[@]} -gt 0 ]; then
  echo "doctor: ${#problems[@]} problem(s); fix them and run 'make doctor' again" >&2
  exit 1
fi
say "all checks passed"
