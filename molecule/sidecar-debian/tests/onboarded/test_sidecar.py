"""Testinfra checks of fleetmesh.envoy.istio_sidecar, shared by the sidecar-debian and sidecar-rhel scenarios.

They run after converge (fleetmesh.envoy.workload_certs, then this role), idempotence (both again: changed=0, so
the roles do not undo each other's certificate owners) and a simulated reboot (side_effect: podman restart), so
every check is also a check that the state survives a reboot. One remote call (../snapshot.py) gathers what the
checks need. tests/offboarded/ runs after offboarding.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from playbook import ansible_playbook  # noqa: E402

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
VARS = yaml.safe_load((TESTS.parent / "group_vars" / "all.yml").read_text())
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", TESTS.parents[2]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
NS, SA = VARS["fleetmesh_namespace"], VARS["fleetmesh_service_account"]
TOKEN = "/var/lib/istio/token/istio-token"
TOKEN_LINK = "/var/run/secrets/tokens/istio-token"
MARKER = "fleetmesh.envoy istio_sidecar: istiod via the east-west gateway"

METADATA = {
    "CANONICAL_SERVICE": "reviews",
    "CANONICAL_REVISION": "v1",
    "ISTIO_META_CLUSTER_ID": "Kubernetes",
    "ISTIO_META_MESH_ID": "mesh1",
    "ISTIO_META_NETWORK": "vm-network",
    "ISTIO_META_WORKLOAD_NAME": "reviews",
    "ISTIO_META_DNS_CAPTURE": "true",
    "ISTIO_META_AUTO_REGISTER_GROUP": "reviews",
    "ISTIO_METAJSON_LABELS": '{"app":"reviews","version":"v1"}',
    "POD_NAMESPACE": "bookinfo",
    "SERVICE_ACCOUNT": "reviews",
    "TRUST_DOMAIN": "cluster.local",
}
CLUSTER_ENV = dict(
    METADATA,
    ISTIO_INBOUND_PORTS="9080,9090",
    ISTIO_LOCAL_EXCLUDE_PORTS="15090,15021,15020",
    ISTIO_NAMESPACE="bookinfo",
    ISTIO_SERVICE="reviews.bookinfo",
    ISTIO_SERVICE_CIDR="10.96.0.0/12,10.244.0.0/16",
    ISTIO_CUSTOM_IP_TABLES="true",
    **VARS["istio_sidecar_cluster_env_extra"],
)
FILES = {  # path: (kind, user, group, mode or None for "executable")
    "/usr/local/bin/envoy": ("file", "root", "root", None),
    "/usr/local/bin/pilot-agent": ("file", "root", "root", None),
    "/usr/local/bin/istio-start.sh": ("file", "root", "root", 0o755),
    "/lib/systemd/system/istio.service": ("file", "root", "root", 0o644),
    "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json": ("file", "root", "root", 0o644),
    "/var/lib/istio/envoy/sidecar.env": ("file", "root", "root", 0o644),
    "/var/lib/istio/envoy/cluster.env": ("file", "istio-proxy", "istio-proxy", 0o644),
    "/var/lib/istio/config/mesh": ("file", "istio-proxy", "istio-proxy", 0o644),
    "/etc/certs": ("dir", "istio-proxy", "istio-proxy", 0o750),
    "/etc/certs/root-cert.pem": ("file", "istio-proxy", "istio-proxy", 0o644),
    "/etc/certs/cert-chain.pem": ("file", "istio-proxy", "istio-proxy", 0o644),
    "/etc/certs/key.pem": ("file", "istio-proxy", "istio-proxy", 0o600),
    "/var/lib/istio/token": ("dir", "istio-proxy", "istio-proxy", 0o700),
    TOKEN: ("file", "istio-proxy", "istio-proxy", 0o400),
    "/etc/tmpfiles.d/fleetmesh-istio-token.conf": ("file", "root", "root", 0o644),
}


@pytest.fixture(scope="module")
def snap(host):
    script = (TESTS / "snapshot.py").read_text()
    with host.sudo():
        result = host.run("CERTS_SRC=%s python3 -c %s", VARS["workload_certs_dir"], script)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", sorted(FILES))
def test_file_owner_and_mode(snap, path):
    kind, user, group, mode = FILES[path]
    got = snap["files"][path]
    assert got is not None, f"{path} is missing"
    assert (got["kind"], got["user"], got["group"]) == (kind, user, group), path
    if mode is None:
        assert got["mode"] & 0o111, (path, oct(got["mode"]))
    else:
        assert got["mode"] == mode, (path, oct(got["mode"]))


def test_package_is_pinned(snap):
    assert snap["package"].startswith(VARS.get("istio_sidecar_version", "1.31.0")), snap["package"]


def test_etc_istio_is_the_package_link(snap):
    link = snap["files"]["/etc/istio"]
    assert link["kind"] == "link" and link["target"] == "/var/lib/istio", link


def test_certificates_are_the_source_files(snap):
    for name, digest in snap["src_sha256"].items():
        assert snap["files"][f"/etc/certs/{name}"]["sha256"] == digest, name


def test_workload_certs_keeps_its_own_directory(snap):
    """One owner per directory: the sidecar copies from workload_certs' directory and never changes it."""
    owner = VARS.get("workload_certs_owner", "envoy")
    for name, item in snap["src_files"].items():
        assert (item["user"], item["group"]) == (owner, VARS.get("workload_certs_group", owner)), (name, item)
    assert snap["src_files"]["key.pem"]["mode"] == 0o600


def test_cluster_env_sourced_by_bash_gives_every_value(snap):
    assert snap["sourced_err"] == ""
    assert snap["cluster_env"] == {k: str(v) for k, v in CLUSTER_ENV.items()}


@pytest.mark.parametrize("name", sorted(VARS["istio_sidecar_cluster_env_extra"]))
def test_cluster_env_values_with_spaces_quotes_and_dollar(snap, name):
    assert snap["cluster_env"][name] == VARS["istio_sidecar_cluster_env_extra"][name]


def test_cluster_env_is_single_quoted_like_istioctl(snap):
    for line in snap["cluster_env_text"].splitlines():
        name, value = line.split("=", 1)
        assert value.startswith("'") and value.endswith("'"), line
        assert shlex.split(value) == [str(CLUSTER_ENV[name])]


def test_mesh_config(snap):
    config = yaml.safe_load(snap["mesh"])["defaultConfig"]
    assert config["discoveryAddress"] == "istiod.istio-system.svc:15012"
    assert config["meshId"] == "mesh1"
    assert config["proxyMetadata"] == METADATA
    assert config["readinessProbe"] == VARS["istio_sidecar_readiness_probe"]


def test_hosts_block_survives_the_reboot(snap):
    lines = snap["hosts"].splitlines()
    begin, end = f"# BEGIN {MARKER}", f"# END {MARKER}"
    assert lines.count(begin) == 1 and lines.count(end) == 1, snap["hosts"]
    assert lines[lines.index(begin) + 1 : lines.index(end)] == [
        "127.0.0.2 istiod.istio-system.svc istiod.istio-system.svc.cluster.local"
    ]
    assert snap["getent"].split()[0] == "127.0.0.2"


def test_service_enabled_and_active_after_the_reboot(snap):
    assert snap["files"]["/run/fleetmesh-molecule-boot-marker"] is None, "side_effect did not restart the instance"
    assert (snap["enabled"], snap["active"]) == ("enabled", "active")
    assert snap["agent_users"] and set(snap["agent_users"]) == {"istio-proxy"}, snap["agent_users"]


def test_token_and_link_survive_the_reboot(snap):
    link = snap["files"][TOKEN_LINK]
    assert link is not None and link["kind"] == "link" and link["target"] == TOKEN, link
    assert snap["files"][TOKEN]["size"] > 100
    assert snap["token_read_by_istio_proxy"] and not snap["token_read_by_nobody"]


def test_tokenreview_authenticates_the_service_account(host):
    sys.path.insert(0, str(PROJECT / "tests" / "harness"))
    import kubeapi  # the harness directory is not a package

    api = kubeapi.KubeAPI.attach(EPHEMERAL / "kube")
    assert api is not None, f"no kube-apiserver harness state in {EPHEMERAL / 'kube'}"
    with host.sudo():
        token = host.file(TOKEN).content_string.strip()
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["istio-ca"]}}
    status, review = api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
    assert status == 201, status
    result = review["status"]
    assert result.get("authenticated") is True, result.get("error")
    assert result["user"]["username"] == f"system:serviceaccount:{NS}:{SA}"
    assert "istio-ca" in result["audiences"]
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert 600 <= claims["exp"] - claims["iat"] <= 7 * 24 * 3600


def test_the_no_trace_check_sees_the_onboarded_sidecar(host):
    """tests/offboarded compares tests/traces.py with the host before onboarding; here it must see the sidecar."""
    with host.sudo():
        result = host.run("python3 -c %s", (TESTS / "traces.py").read_text())
    assert result.rc == 0, result.stderr
    now = json.loads(result.stdout)
    assert {"/usr/local/bin/pilot-agent", "/var/lib/istio", "/etc/certs", "/run/secrets"} <= set(now["paths"]), now
    assert now["user"].startswith("istio-proxy:") and now["hosts_marker_lines"], now
    assert now["dpkg"].startswith("install ok installed") or now["rpm"], now


def test_no_token_in_verbose_diff_output(host):
    """A run that replaces the token (refresh window = lifetime - 1 s), with -vvv and --diff: neither the old nor
    the new token, nor their payloads, appear anywhere in the output. Runs last: it leaves a new, valid token."""
    with host.sudo():
        old = host.file(TOKEN).content_string.strip()
    run = ansible_playbook(TESTS.parent / "converge.yml", {"istio_sidecar_token_refresh_before": 86399},
                           "-vvv", "--diff")
    assert run.rc == 0, run.out[-3000:]
    assert "Write the new istio-token" in run.out and "changed: [" in run.out
    with host.sudo():
        new = host.file(TOKEN).content_string.strip()
    assert new != old
    for token in (old, new):  # the header is the same for every token of the API server, so not checked alone
        for part in [token, *token.split(".")[1:]]:
            assert part not in run.out
