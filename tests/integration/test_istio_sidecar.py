"""fleetmesh.envoy.istio_sidecar on the embedded lab with the real kube-apiserver (tests/harness).

Issue 7's lab acceptance: bad input fails before any host changes; onboarding with the package from a URL
(sha256 checked) on a Debian VM and the EL 9 emulation, one TokenRequest for both (same service account),
and a TokenReview of the token written on the VMs authenticates as system:serviceaccount:<ns>:<sa>; a second
run changes nothing and check/diff mode never shows the token; offboarding leaves no trace (files, hosts block,
package, user).

The VMs keep their traffic: interception is off (istio_sidecar_intercept=false; the lab has no iptables), and
the east-west address is loopback, so the control plane is (knowingly) unreachable.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, need
from tests.integration.labutil import extra, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab, pytest.mark.kube]

HOSTS = ["fm-deb-2", "fm-el-1"]  # one per OS family
LIMIT = ",".join(HOSTS)
NS, SA = "fleet-lab", "web"      # inventories/lab/group_vars/web.yml
CERTS_SRC = "/etc/fleetmesh/istio-sidecar-test-certs"
GATEWAY = "10.213.77.1"          # the host's address on the lab network (podman network fleetmesh-lab)
MARKER = "fleetmesh.envoy istio_sidecar"
# Everything the sidecar may leave behind, looked for after offboarding. /etc/certs is checked on its own.
# fleetmesh.envoy.workload_certs writes /etc/certs for Envoy on the lab VMs (other tests); the sidecar needs that
# directory for istio-proxy alone and refuses certificates of another owner there (roles/istio_sidecar/README.md,
# "one directory, one owner"), so the fixture sets it aside and puts it back afterwards.
SAVED_CERTS = "/etc/certs.saved-by-sidecar-test"  # no "istio" in it: TRACES looks for such names
CERTS = "ls /etc/certs/root-cert.pem /etc/certs/cert-chain.pem /etc/certs/key.pem 2>/dev/null; true"
TRACES = ("ls -d /var/lib/istio /etc/istio /var/log/istio /run/secrets /var/cache/fleetmesh-istio-sidecar "
          "/usr/local/bin/envoy /usr/local/bin/pilot-agent /usr/local/bin/istio-start.sh "
          "/lib/systemd/system/istio.service "
          "/etc/tmpfiles.d/fleetmesh-istio-token.conf /etc/systemd/system/multi-user.target.wants/istio.service "
          "/etc/apt/sources.list.d/fleetmesh-istio-sidecar.list /etc/yum.repos.d/fleetmesh-istio-sidecar.repo "
          "2>/dev/null; "
          f"grep -c '{MARKER}' /etc/hosts; getent passwd istio-proxy; getent group istio-proxy; "
          "(dpkg-query -W istio-sidecar 2>/dev/null || rpm -q istio-sidecar 2>/dev/null) | grep -v 'not installed'; "
          "find / -xdev \\( -nouser -o -nogroup -o -iname '*istio*' \\) -not -path '/proc/*' 2>/dev/null | sort")


def _certs(tmp: Path) -> Path:
    """A test CA and a workload certificate for the SPIFFE ID, as fleetmesh.envoy.workload_certs would give."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    spiffe = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
            .sign(ca_key, hashes.SHA256()))
    out = tmp / "certs"
    out.mkdir()
    (out / "root-cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "cert-chain.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def lab(kube_api, tmp_path_factory):
    """The lab VMs, the service account, packages served from the lab gateway, and certificates on the VMs."""
    need("podman", "run 'make setup' (apt-get install podman runc)")
    lab_up(3)
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}}])
    build = subprocess.run([str(ROOT / "tools/pkg/istio-sidecar/build.sh"), "--print-dir"], capture_output=True,
                           text=True, check=False, timeout=1200)
    assert build.returncode == 0, build.stderr
    pkg_dir = Path(build.stdout.strip())
    sums = dict(reversed(line.split()) for line in (pkg_dir / "SHA256SUMS").read_text().splitlines())
    server = http.server.ThreadingHTTPServer((GATEWAY, 0), functools.partial(_Quiet, directory=str(pkg_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The sidecar's Envoy serves its stats on 15090, as the collection's Envoy does by default: a VM that runs both
    # moves the collection's stats listener (the envoy role refuses 15090 next to the sidecar and suggests 15091).
    run = playbook("envoy.yml", "--limit", LIMIT, *extra(envoy_stats_port=15091))
    assert run.rc == 0, run.out[-3000:]
    tmp = tmp_path_factory.mktemp("sidecar")
    certs = _certs(tmp)
    push = tmp / "push-certs.yml"
    push.write_text(json.dumps([{
        "name": "Test certificates where workload_certs would put them", "hosts": LIMIT, "gather_facts": False,
        "become": True, "tasks": [
            {"ansible.builtin.file": {"path": CERTS_SRC, "state": "directory", "mode": "0700"}},
            {"ansible.builtin.copy": {"src": f"{certs}/{{{{ item }}}}", "dest": f"{CERTS_SRC}/{{{{ item }}}}",
                                      "mode": "0600"},
             "loop": ["root-cert.pem", "cert-chain.pem", "key.pem"]}]}]))
    run = playbook(str(push))
    assert run.rc == 0, run.out[-3000:]
    run = playbook(str(ROOT / "molecule/sidecar-debian/el9_emulation_programs.yml"), "--limit", LIMIT)
    assert run.rc == 0, run.out[-3000:]
    variables = {
        "fleetmesh_kubeconfig": str(kube_api.registrar_kubeconfig),
        "istio_sidecar_package_source": "url",
        "istio_sidecar_package_base_url": f"http://{GATEWAY}:{server.server_address[1]}",
        "istio_sidecar_package_sha256": {"deb": sums["deb/istio-sidecar.deb"], "rpm": sums["rpm/istio-sidecar.rpm"]},
        "istio_sidecar_certs_src_dir": CERTS_SRC,
        "istio_sidecar_intercept": False,
        "istio_sidecar_eastwest_address": "127.0.0.2",
        "istio_sidecar_ready_timeout": 10,
    }
    on_hosts(f"if [ -e /etc/certs ] && [ ! -e {SAVED_CERTS} ]; then mv /etc/certs {SAVED_CERTS}; fi; true", LIMIT)
    before = on_hosts(TRACES, LIMIT)
    yield {"vars": variables, "before": before}
    playbook("sidecar_offboard.yml", "-e", "target=web", "--limit", LIMIT)
    playbook("envoy.yml", "--limit", LIMIT)  # the stats listener back on its default port
    on_hosts(f"rm -rf {CERTS_SRC}; rmdir /etc/fleetmesh 2>/dev/null; "
             f"if [ -e {SAVED_CERTS} ]; then rm -rf /etc/certs && mv {SAVED_CERTS} /etc/certs; fi; true", LIMIT)
    server.shutdown()


def changed_tasks(out: str) -> list[str]:
    """'TASK name: host' for every changed result in an ansible-playbook output, to say why a run was not a no-op."""
    found, task = [], ""
    for line in out.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            found.append(f"{task}: {line.split('[', 1)[1].split(']', 1)[0]}")
    return found


def sidecar(lab, *args, **overrides):
    return playbook("sidecar.yml", "-e", "target=web", "--limit", LIMIT, *extra(**{**lab["vars"], **overrides}), *args)


@pytest.mark.parametrize(("overrides", "words"), [
    ({"istio_sidecar_service_cidr": "10.96.0.0/33"},
     ['istio_sidecar_service_cidr[0]: "10.96.0.0/33" is not a CIDR', "allowed: IPv4 or IPv6 networks"]),
    ({"fleetmesh_ports": {"http": 70000}},
     ["fleetmesh_ports.http: 70000 is not a valid port", "allowed: integer 1-65535"]),
    ({"istio_sidecar_inbound_ports": [8080, "ssh"]},
     ['istio_sidecar_inbound_ports[1]: "ssh" is not a valid port', "allowed: integer 1-65535"]),
    ({"fleetmesh_service_account": None}, ["fleetmesh_service_account: is not set", "allowed: DNS-1123"]),
])
def test_bad_input_fails_before_any_change(lab, overrides, words):
    run = sidecar(lab, **overrides)
    assert run.rc != 0
    for word in words:
        assert word in run.out, run.out[-3000:]
    assert run.changed() == 0, run.recap
    assert on_hosts(TRACES, LIMIT) == lab["before"]


def test_bad_input_on_one_host_stops_every_host(lab):
    run = sidecar(lab, istio_sidecar_service_cidr="{{ '10.96.0.1/12' if inventory_hostname == 'fm-el-1' else '*' }}")
    assert run.rc != 0
    # The runbook's first task (fleetmesh.envoy.preflight) checks every host of the play at once.
    assert ('host fm-el-1: istio_sidecar_service_cidr[0]: "10.96.0.1/12" has host bits set (did you mean 10.96.0.0/12?)'
            in run.out), run.out[-3000:]
    assert "nothing was changed on any host or in the cluster" in run.out, run.out[-3000:]
    assert "host fm-deb-2:" not in run.out and run.changed() == 0, run.recap
    assert on_hosts(TRACES, LIMIT) == lab["before"]


def test_check_mode_on_fresh_hosts_changes_nothing(lab):
    run = sidecar(lab, "--check", "--diff")
    assert run.rc == 0, run.out[-3000:]
    assert "would be installed first" in run.out
    assert on_hosts(TRACES, LIMIT) == lab["before"]


def test_onboard_token_review_and_idempotence(lab, kube_api):
    first = sidecar(lab)
    assert first.rc == 0, first.out[-4000:]
    assert f"istio-tokens from TokenRequest for {NS}/{SA} (fm-deb-2, fm-el-1)" in first.out  # one request, both VMs
    assert "does not answer from this host" in first.out
    tokens = on_hosts("cat /var/run/secrets/tokens/istio-token", LIMIT)
    assert set(tokens) == set(HOSTS) and len(set(tokens.values())) == 1
    token = tokens[HOSTS[0]].strip()
    assert token.split(".")[0] not in first.out and token not in first.out
    status, review = kube_api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["istio-ca"]}})
    assert status == 201 and review["status"].get("authenticated") is True, review["status"].get("error")
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{NS}:{SA}"
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] == 86400
    state = on_hosts("stat -c '%U %a' /var/lib/istio/token/istio-token; systemctl is-enabled istio; "
                     "systemctl is-active istio", LIMIT)
    for host in HOSTS:
        assert state[host].split("\n") == ["istio-proxy 400", "enabled", "active"], (host, state[host])

    second = sidecar(lab)
    assert second.rc == 0 and second.changed() == 0, changed_tasks(second.out)
    assert "no TokenRequest made" in second.out

    checked = sidecar(lab, "--check", "--diff", istio_sidecar_token_refresh_before=86399)
    assert checked.rc == 0 and "would request istio-tokens" in checked.out, checked.out[-3000:]
    assert token.split(".")[0] not in checked.out
    assert on_hosts("cat /var/run/secrets/tokens/istio-token", LIMIT) == tokens  # check mode changed nothing

    refreshed = sidecar(lab, istio_sidecar_token_refresh_before=86399)
    assert refreshed.rc == 0 and sorted(changed_tasks(refreshed.out)) == [  # the token of each VM, nothing else
        f"fleetmesh.envoy.istio_sidecar : Write the new istio-token (owner istio-proxy, mode 0400): {host}"
        for host in sorted(HOSTS)], changed_tasks(refreshed.out)
    assert on_hosts("cat /var/run/secrets/tokens/istio-token", LIMIT) != tokens


def test_offboard_leaves_no_trace(lab):
    run = playbook("sidecar_offboard.yml", "-e", "target=web", "--limit", LIMIT,
                   *extra(istio_sidecar_certs_src_dir=CERTS_SRC))
    assert run.rc == 0, run.out[-3000:]
    assert on_hosts(TRACES, LIMIT) == lab["before"]
    assert on_hosts(CERTS, LIMIT) == {host: "" for host in HOSTS}
    assert all(MARKER not in text for text in on_hosts("cat /etc/hosts", LIMIT).values())
    again = playbook("sidecar_offboard.yml", "-e", "target=web", "--limit", LIMIT)
    assert again.rc == 0 and again.changed() == 0, changed_tasks(again.out)


def test_traces_command_sees_an_onboarded_host(lab):
    """The no-trace check is not vacuous: while onboarded, it sees the sidecar."""
    run = sidecar(lab)
    assert run.rc == 0, run.out[-3000:]
    seen = on_hosts(TRACES, LIMIT)
    for host in HOSTS:
        assert "/var/lib/istio" in seen[host] and "istio-proxy" in seen[host], shlex.quote(seen[host])
