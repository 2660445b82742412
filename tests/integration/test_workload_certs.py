"""fleetmesh.envoy.workload_certs on the lab VMs, through ansible-playbook and the runbooks.

File checks (chain verifies to the root, key matches cert, URI SAN is exactly the SPIFFE ID, key 0600
and owned by the service user), no key material or token in -vvv --diff output, rotation (new serial,
services reloaded not restarted, then changed=0), check/diff mode, every CA source (lab CA, files with
intermediates, Kubernetes cacerts, the legacy Secret) and bad input failing before any host changes.

The private keys are never read off the hosts: key checks compare the public key `openssl pkey -pubout`
prints on the host with the certificate.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import COLLECTIONS, need

REPO = Path(__file__).resolve().parents[2]
LAB_KEY = REPO / ".lab" / "ssh" / "id_ed25519"
HOSTS = {"fm-deb-1": "10.213.77.11", "fm-deb-2": "10.213.77.12", "fm-el-1": "10.213.77.51"}
SPIFFE = "spiffe://cluster.local/ns/fleet-lab/sa/web"
CERTS = "/etc/certs"
SIGN_TASK = "Sign the CSRs of all hosts of the play"
FAKE_UNIT = "fleetmesh-envoy@wcfake.service"
PLAYBOOK_TIMEOUT = 600

pytestmark = [pytest.mark.lab]


# ---------------------------------------------------------------------------------------------
# the lab, playbook runs, remote commands
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lab() -> dict[str, str]:
    """The 3-VM lab, brought up (idempotently) by tools/lab/lab.sh up."""
    need("podman", "run 'make setup' (apt-get install podman runc)")
    env = dict(os.environ, CONTAINERS_CONF=str(REPO / "tools" / "lab" / "containers.conf"))
    env.pop("FLEETMESH_LAB_VMS", None)
    proc = subprocess.run([str(REPO / "tools" / "lab" / "lab.sh"), "up", "3"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900, check=False)
    assert proc.returncode == 0, f"lab.sh up failed:\n{proc.stdout}\n{proc.stderr}"
    return dict(HOSTS)


@pytest.fixture(autouse=True)
def certs_dir_of_this_role(lab):
    """Start from a /etc/certs this role made (root-owned), or none: other roles' tests on the lab (istio_sidecar
    re-owns the directory for istio-proxy) may have left theirs."""
    for host in lab:
        sh(host, f'[ ! -e {CERTS} ] || [ "$(stat -c %U {CERTS})" = root ] || rm -rf {CERTS}')


@pytest.fixture(scope="session")
def lab_ca_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lab-ca") / "ca"


@dataclass
class Run:
    rc: int
    out: str
    recap: dict[str, dict[str, int]]

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]

    def task_results(self, task: str) -> list[str]:
        """The per-host result lines of one task (ok:/changed:/failed:/skipping:)."""
        match = re.search(r"TASK \[[^\]]*" + re.escape(task) + r"\] \*+\n(.*?)(?=\n(?:TASK|RUNNING HANDLER|PLAY) )",
                          self.out, re.S)
        if not match:
            return []
        return re.findall(r"^(?:ok|changed|failed|fatal|skipping): \[[^\]]+\]", match.group(1), re.M)


def ansible_env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="0",
                CONTAINERS_CONF=str(REPO / "tools" / "lab" / "containers.conf"))


def playbook(path: str | Path, tmp_path: Path, extra_vars: dict | None = None, *, check: bool = False,
             diff: bool = False, verbose: bool = False, limit: str | None = None) -> Run:
    args = ["ansible-playbook", "-i", str(REPO / "inventories" / "lab"), str(path)]
    if extra_vars:
        vars_file = tmp_path / f"vars-{len(list(tmp_path.glob('vars-*.json')))}.json"
        vars_file.write_text(json.dumps(extra_vars))
        args += ["-e", f"@{vars_file}"]
    args += ["--check"] if check else []
    args += ["--diff"] if diff else []
    args += ["-vvv"] if verbose else []
    args += ["--limit", limit] if limit else []
    proc = subprocess.run(args, cwd=REPO, env=ansible_env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=PLAYBOOK_TIMEOUT, check=False)
    recap = {}
    for host, ok, changed, unreachable, failed in re.findall(
            r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout, re.M):
        recap[host] = {"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}
    return Run(proc.returncode, proc.stdout, recap)


def rotate(tmp_path: Path, lab_ca_dir: Path, extra: dict | None = None, **kw) -> Run:
    """playbooks/rotate_certs.yml on the lab. Only this module's stand-in service is reloaded (listed by its name
    without .service); auto-detection would also hot-restart Envoy instances other tests run on the shared lab
    (test_workload_certs_mtls.py covers it with a real Envoy)."""
    extra_vars = {"rotate_certs_hosts": "lab", "workload_certs_lab_ca_dir": str(lab_ca_dir),
                  "workload_certs_sans": ["{{ inventory_hostname }}", "{{ ansible_host }}"],
                  "workload_certs_reload_detect": False,
                  "workload_certs_reload_services": [FAKE_UNIT.removesuffix(".service")]}
    extra_vars.update(extra or {})
    return playbook(REPO / "playbooks" / "rotate_certs.yml", tmp_path, extra_vars, **kw)


def ok(run: Run) -> Run:
    assert run.rc == 0, run.out[-8000:]
    return run


def sh(host: str, command: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["ssh", "-q", "-i", str(LAB_KEY), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", f"fleetadmin@{HOSTS[host]}",
         "sudo sh -c " + shlex.quote(command)], text=True, capture_output=True, timeout=120, check=False)
    if check:
        assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def wipe(*hosts: str, certs: str = CERTS) -> None:
    for host in hosts:
        sh(host, f"rm -rf {certs}")


def snapshot(host: str) -> str:
    """Everything about the certificate directory and the service user, to compare before/after."""
    return sh(host, f"find {CERTS} -printf '%p %m %u %g %s %T@\\n' 2>/dev/null | sort; "
                    f"sha256sum {CERTS}/* 2>/dev/null | sort; getent passwd envoy; true")


def installed(host: str, certs: str = CERTS) -> tuple[str, str]:
    return sh(host, f"cat {certs}/cert-chain.pem"), sh(host, f"cat {certs}/root-cert.pem")


def serial(host: str, certs: str = CERTS) -> str:
    return pki.load_certs(installed(host, certs)[0])[0].serial


def assert_no_secrets(output: str, *tokens: str) -> None:
    assert output.count("PRIVATE KEY") == 0, "a PEM private key marker is in the output"
    for token in tokens:
        assert token and token not in output, "a token is in the output"


def assert_files_ok(host: str, owner: str = "envoy", key_type: str = "EC", chain_length: int = 2,
                    sans: list[str] | None = None, certs: str = CERTS) -> pki.Cert:
    chain_pem, root_pem = installed(host, certs)
    # the chain verifies to the root, here and on the host with openssl
    assert ca_lib.verify_chain(chain_pem, root_pem) == []
    out = sh(host, f"openssl verify -CAfile {certs}/root-cert.pem -untrusted {certs}/cert-chain.pem "
                   f"{certs}/cert-chain.pem")
    assert out.strip().endswith(": OK"), out
    chain = pki.load_certs(chain_pem)
    assert len(chain) == chain_length and not any(cert.self_signed for cert in chain)
    # the URI SAN is exactly the SPIFFE ID
    leaf = chain[0]
    assert leaf.uris == [SPIFFE]
    if sans is not None:
        assert leaf.sans == sans
    # the key matches the certificate (public half printed on the host; the key stays there)
    public = sh(host, f"openssl pkey -in {certs}/key.pem -pubout")
    assert "PRIVATE" not in public
    assert pki.pem_blocks(public, "PUBLIC KEY")[0] == leaf.spki
    assert leaf.key_info()["type"] == key_type.lower()
    # modes and owners
    modes = dict(line.split(" ", 1) for line in sh(
        host, f"cd {certs} && stat -c '%n %a %U %G' key.pem cert-chain.pem root-cert.pem").splitlines())
    assert modes == {"key.pem": f"600 {owner} {owner}", "cert-chain.pem": f"644 {owner} {owner}",
                     "root-cert.pem": f"644 {owner} {owner}"}
    return leaf


def host_sans(host: str) -> list[str]:
    return [f"URI:{SPIFFE}", f"DNS:{host}", f"IP:{HOSTS[host]}"]


# ---------------------------------------------------------------------------------------------
# issue, install, idempotence, check mode
# ---------------------------------------------------------------------------------------------

def test_issue_install_and_file_checks(lab, lab_ca_dir, tmp_path):
    wipe(*lab)
    run = ok(rotate(tmp_path, lab_ca_dir))
    # signing is one controller task for all hosts: one result line, on the first host
    assert run.task_results(SIGN_TASK) == ["changed: [fm-deb-1]"]
    for host in lab:
        leaf = assert_files_ok(host, sans=host_sans(host))
        assert leaf.subject == f"CN={host},O=cluster.local"
        assert leaf.issuer == "CN=fleetmesh lab intermediate CA,O=fleetmesh lab"
    assert (lab_ca_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_second_run_changes_nothing(lab, lab_ca_dir, tmp_path):
    ok(rotate(tmp_path, lab_ca_dir))
    run = ok(rotate(tmp_path, lab_ca_dir))
    assert {host: run.changed(host) for host in lab} == {host: 0 for host in lab}, run.out[-4000:]
    assert run.task_results(SIGN_TASK) == ["ok: [fm-deb-1]"]


def test_check_and_diff_mode_change_nothing(lab, lab_ca_dir, tmp_path):
    ok(rotate(tmp_path, lab_ca_dir))
    wipe("fm-deb-2")
    before = {host: snapshot(host) for host in lab}
    run = ok(rotate(tmp_path, lab_ca_dir, check=True, diff=True))
    assert {host: snapshot(host) for host in lab} == before
    assert run.changed("fm-deb-2") > 0 and run.changed("fm-el-1") == 0
    assert "(a new key, made in a real run)" in run.out and "missing: cert-chain.pem" in run.out
    assert_no_secrets(run.out)
    real = ok(rotate(tmp_path, lab_ca_dir))
    assert_files_ok("fm-deb-2", sans=host_sans("fm-deb-2"))
    # The one signing task runs as fm-deb-1, whose certificate did not change: not changed (fm-deb-2's install is).
    assert real.task_results(SIGN_TASK) == ["ok: [fm-deb-1]"], real.out[-4000:]
    assert real.changed("fm-deb-2") > 0 and real.changed("fm-deb-1") == 0


# ---------------------------------------------------------------------------------------------
# rotation: new serial, reload (hot restart) not restart, then nothing
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def fake_envoy(lab):
    """An active fleetmesh-envoy@wcfake.service on fm-deb-1 whose reload only counts, to see reload vs restart."""
    unit = ("[Unit]\nDescription=workload_certs test stand-in for an Envoy instance\n"
            "[Service]\nExecStart=/bin/sleep infinity\n"
            "ExecReload=/bin/sh -c 'echo reload >> /run/fleetmesh-wcfake.reloads'\n")
    sh("fm-deb-1", f"printf %s {shlex.quote(unit)} > /etc/systemd/system/{FAKE_UNIT}"
                   " && rm -f /run/fleetmesh-wcfake.reloads && systemctl daemon-reload"
                   f" && systemctl restart {FAKE_UNIT}")
    try:
        yield "fm-deb-1"
    finally:
        sh("fm-deb-1", f"systemctl stop {FAKE_UNIT}; rm -f /etc/systemd/system/{FAKE_UNIT}"
                       " /run/fleetmesh-wcfake.reloads; systemctl daemon-reload", check=False)


def fake_state(host: str) -> tuple[str, int]:
    pid = sh(host, f"systemctl show -p MainPID --value {FAKE_UNIT}").strip()
    reloads = sh(host, "cat /run/fleetmesh-wcfake.reloads 2>/dev/null | wc -l").strip()
    return pid, int(reloads)


def test_rotation_new_serial_reload_not_restart(lab, lab_ca_dir, tmp_path, fake_envoy):
    ok(rotate(tmp_path, lab_ca_dir))
    serials = {host: serial(host) for host in lab}
    pid, reloads = fake_state(fake_envoy)
    # shorten the lifetime: every certificate outlives it, so each is re-issued
    run = ok(rotate(tmp_path, lab_ca_dir, {"workload_certs_lifetime": "1h"}))
    assert all(run.changed(host) > 0 for host in lab)
    for host in lab:
        assert serial(host) != serials[host]
        leaf = assert_files_ok(host, sans=host_sans(host))
        assert datetime.timedelta(minutes=59) < leaf.not_after - datetime.datetime.now(datetime.UTC) \
            <= datetime.timedelta(hours=1)
    # the running service was reloaded (same main process), not restarted
    new_pid, new_reloads = fake_state(fake_envoy)
    assert (new_pid, new_reloads) == (pid, reloads + 1)
    assert f"changed: [{fake_envoy}] => (item={FAKE_UNIT})" in run.out
    # no change: nothing happens, nothing is reloaded
    again = ok(rotate(tmp_path, lab_ca_dir, {"workload_certs_lifetime": "1h"}))
    assert {host: again.changed(host) for host in lab} == {host: 0 for host in lab}, again.out[-4000:]
    assert fake_state(fake_envoy) == (pid, reloads + 1)
    # renew_before above what is left: re-issued again
    serials = {host: serial(host) for host in lab}
    renewed = ok(rotate(tmp_path, lab_ca_dir, {"workload_certs_lifetime": "1h",
                                               "workload_certs_renew_before": "59m59s"}, verbose=True))
    assert "expiring: 59m" in renewed.out
    assert all(renewed.changed(host) > 0 and serial(host) != serials[host] for host in lab)
    ok(rotate(tmp_path, lab_ca_dir))  # back to the default lifetime


def test_key_type_change_makes_a_new_rsa_key(lab, lab_ca_dir, tmp_path):
    ok(rotate(tmp_path, lab_ca_dir))
    run = ok(rotate(tmp_path, lab_ca_dir, {"rotate_certs_hosts": "fm-el-1", "workload_certs_key_type": "rsa",
                                           "workload_certs_rsa_key_size": 3072}))
    assert run.changed("fm-el-1") > 0
    leaf = assert_files_ok("fm-el-1", key_type="RSA")
    assert leaf.key_info()["size"] == 3072
    ok(rotate(tmp_path, lab_ca_dir, {"rotate_certs_hosts": "fm-el-1"}))
    assert_files_ok("fm-el-1")


# ---------------------------------------------------------------------------------------------
# bad input fails before any host changes
# ---------------------------------------------------------------------------------------------

def _ca_files(tmp_path: Path, *, expired: bool = False, mismatch: bool = False, depth: int = 1) -> dict:
    """A root and `depth` intermediates as files; the last intermediate signs."""
    now = datetime.datetime.now(datetime.UTC)

    def ca_cert(name, key, issuer_name, issuer_key, start, days):
        return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start)
                .not_valid_after(start + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                               critical=False)
                .sign(issuer_key, hashes.SHA256()))

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "files CA"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert(name("files root"), root_key, name("files root"), root_key, now - datetime.timedelta(days=1), 3650)
    parent, parent_key, chain = root, root_key, [root]
    for level in range(depth):
        key = ec.generate_private_key(ec.SECP256R1())
        last = level == depth - 1
        start = now - datetime.timedelta(days=40 if expired and last else 1)
        cert = ca_cert(name(f"files int{level + 1}"), key, parent.subject, parent_key, start, 30 if last else 3000)
        chain.insert(0, cert)
        parent, parent_key = cert, key
    signing, signing_key = chain[0], parent_key
    if mismatch:
        signing_key = ec.generate_private_key(ec.SECP256R1())

    def write(file_name, data):
        path = tmp_path / file_name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    return {
        "workload_certs_source": "files",
        "workload_certs_ca_cert": write("ca-cert.pem", signing.public_bytes(serialization.Encoding.PEM)),
        "workload_certs_ca_key": write("ca-key.pem", signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
        "workload_certs_ca_chain": write("ca-chain.pem", b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])),
        "__root": root.public_bytes(serialization.Encoding.PEM).decode(),
    }


BAD_INPUTS = {
    "invalid trust domain": ({"fleetmesh_trust_domain": "Not_Valid"},
                             'fleetmesh_trust_domain: "Not_Valid" is not a valid trust domain'),
    "namespace not DNS-1123": ({"fleetmesh_namespace": "Fleet_Lab"},
                               'fleetmesh_namespace: "Fleet_Lab" is not a valid DNS-1123 label'),
    "CA cert and key mismatch": ("mismatch", "and the CA private key do not match"),
    "expired CA": ("expired", "expired on"),
    "SAN outside the allowed pattern": (
        {"workload_certs_sans": ["evil.example.com"]},
        'workload_certs_sans[0]: "evil.example.com" is outside the allowed SAN pattern'),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_any_host_change(lab, lab_ca_dir, tmp_path, case):
    ok(rotate(tmp_path, lab_ca_dir))
    wipe("fm-deb-2")  # a run that went on would create files here
    before = {host: snapshot(host) for host in lab}
    extra, message = BAD_INPUTS[case]
    if isinstance(extra, str):
        extra = {k: v for k, v in _ca_files(tmp_path, **{extra: True}).items() if not k.startswith("__")}
    run = rotate(tmp_path, lab_ca_dir, extra, diff=True)
    assert run.rc != 0
    assert message in run.out, run.out[-6000:]
    assert {host: snapshot(host) for host in lab} == before, f"{case}: a host changed"
    assert all(r["changed"] == 0 for r in run.recap.values()), run.recap
    ok(rotate(tmp_path, lab_ca_dir))


def test_signer_refuses_a_forged_csr(lab, tmp_path, lab_ca_dir):
    """A host that sends a CSR for another identity or a name outside its inventory gets nothing signed."""
    key = ec.generate_private_key(ec.SECP256R1())

    def csr(*names):
        return (x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
                .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
                .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())

    forged = {
        "fm-deb-1": csr(x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin")),
        "fm-deb-2": csr(x509.UniformResourceIdentifier(SPIFFE), x509.DNSName("fm-deb-1")),
        "fm-el-1": csr(x509.UniformResourceIdentifier(SPIFFE), x509.IPAddress(__import__("ipaddress").ip_address(
            "10.213.77.11"))),
    }
    play = tmp_path / "forged.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Forged CSRs", "hosts": "lab", "gather_facts": False,
        "tasks": [
            {"name": "Pretend workload_csr ran", "ansible.builtin.set_fact": {
                "forged_csr": {"needs_issue": True, "csr": "{{ forged[inventory_hostname] }}"}}},
            {"name": "Sign", "fleetmesh.envoy.workload_sign": {"csr_var": "forged_csr",
                                                               "lab_ca_dir": str(lab_ca_dir)},
             "run_once": True},
        ]}]))
    before = {host: snapshot(host) for host in lab}
    run = playbook(play, tmp_path, {"forged": forged})
    assert run.rc != 0
    assert "refused to sign for 3 host(s); nothing was signed" in run.out
    assert ("fm-deb-1: the CSR asks for URI SAN spiffe://cluster.local/ns/kube-system/sa/admin; "
            f"allowed: exactly {SPIFFE}") in run.out
    assert "fm-deb-2: the CSR asks for DNS SAN fm-deb-1 outside the allowed pattern" in run.out
    assert "fm-el-1: the CSR asks for IP SAN 10.213.77.11 outside the allowed pattern; allowed: 10.213.77.51" in run.out
    assert {host: snapshot(host) for host in lab} == before


# ---------------------------------------------------------------------------------------------
# CA sources
# ---------------------------------------------------------------------------------------------

def test_files_source_with_two_intermediates(lab, lab_ca_dir, tmp_path):
    files = _ca_files(tmp_path, depth=2)
    root = files.pop("__root")
    run = ok(rotate(tmp_path, lab_ca_dir, files, diff=True, verbose=True))
    assert_no_secrets(run.out)
    for host in lab:
        assert "ca_changed" in run.out
        assert_files_ok(host, chain_length=3)
        assert installed(host)[1] == root
        assert pki.load_certs(installed(host)[0])[0].issuer == "CN=files int2,O=files CA"
    again = ok(rotate(tmp_path, lab_ca_dir, files))
    assert {host: again.changed(host) for host in lab} == {host: 0 for host in lab}
    ok(rotate(tmp_path, lab_ca_dir))


def _istio_cacerts(tmp_path: Path) -> tuple[dict, str]:
    files = _ca_files(tmp_path, depth=1)
    ca_cert = Path(files["workload_certs_ca_cert"]).read_text()
    chain = Path(files["workload_certs_ca_chain"]).read_text()
    data = {"ca-cert.pem": ca_cert, "ca-key.pem": Path(files["workload_certs_ca_key"]).read_text(),
            "root-cert.pem": files["__root"], "cert-chain.pem": ca_cert + chain}
    return data, files["__root"]


def _secret(namespace: str, name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _reader_kubeconfig(kube_api, namespace: str, secret: str) -> tuple[Path, str]:
    """A kubeconfig with a bounded token of a ServiceAccount that may only get one Secret."""
    path = kube_api.kubeconfig_for_service_account(namespace, "wc-reader", create=True)
    kube_api.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "wc-reader", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "wc-reader", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wc-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "wc-reader", "namespace": namespace}]},
    ])
    token = yaml.safe_load(path.read_text())["users"][0]["user"]["token"]
    return path, token


@pytest.mark.kube
def test_kubernetes_cacerts_source(lab, lab_ca_dir, tmp_path, kube_api):
    data, root = _istio_cacerts(tmp_path)
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
                    _secret("istio-system", "cacerts", data)])
    kubeconfig, token = _reader_kubeconfig(kube_api, "istio-system", "cacerts")
    extra = {"workload_certs_source": "kubernetes", "fleetmesh_kubeconfig": str(kubeconfig)}
    run = ok(rotate(tmp_path, lab_ca_dir, extra, diff=True, verbose=True))
    assert_no_secrets(run.out, token)
    for host in lab:
        assert_files_ok(host, chain_length=2)
        assert installed(host)[1] == root
    again = ok(rotate(tmp_path, lab_ca_dir, extra, diff=True, verbose=True))
    assert {host: again.changed(host) for host in lab} == {host: 0 for host in lab}
    assert_no_secrets(again.out, token)
    # a Secret the token may not read: a clear error, before any host changes
    before = {host: snapshot(host) for host in lab}
    denied = rotate(tmp_path, lab_ca_dir, dict(extra, workload_certs_ca_secret_name="other"), verbose=True)
    assert denied.rc != 0 and ("cannot read Secret istio-system/other: forbidden: the kubeconfig's identity cannot "
                               "'get' 'secrets' in namespace istio-system") in denied.out, denied.out[-3000:]
    assert_no_secrets(denied.out, token)
    assert {host: snapshot(host) for host in lab} == before
    ok(rotate(tmp_path, lab_ca_dir))


@pytest.mark.kube
def test_legacy_secret_source_is_opt_in_and_warns(lab, lab_ca_dir, tmp_path, kube_api):
    files = _ca_files(tmp_path, depth=1)
    ca = ca_lib.CA(Path(files["workload_certs_ca_cert"]).read_bytes(),
                   Path(files["workload_certs_ca_key"]).read_bytes(),
                   Path(files["workload_certs_ca_chain"]).read_bytes(), None, "test")
    key = ec.generate_private_key(ec.SECP256R1())
    key_text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE)]), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    issued = ca.sign(csr, SPIFFE, [], [], 7 * 86400)
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fleet-lab"}},
                    _secret("fleet-lab", "istio.default", {"root-cert.pem": issued["root_cert"],
                                                           "cert-chain.pem": issued["cert_chain"],
                                                           "key.pem": key_text})])
    kubeconfig, token = _reader_kubeconfig(kube_api, "fleet-lab", "istio.default")
    extra = {"workload_certs_source": "legacy_secret", "fleetmesh_kubeconfig": str(kubeconfig)}
    run = ok(rotate(tmp_path, lab_ca_dir, extra, diff=True, verbose=True))
    assert "passes through the controller" in run.out
    assert_no_secrets(run.out, token)
    marker = "".join(key_text.splitlines()[1:3])  # base64 of the key itself
    assert marker not in run.out
    for host in lab:
        leaf = assert_files_ok(host, chain_length=2)
        assert leaf.serial == issued["serial"]
    again = ok(rotate(tmp_path, lab_ca_dir, extra, verbose=True))
    assert {host: again.changed(host) for host in lab} == {host: 0 for host in lab}, \
        re.findall(r"^changed: .*$", again.out, re.M)
    assert_no_secrets(again.out, token)
    # back to a host-side source: the CA changed, so the certificate is re-issued (for the key in place; remove
    # key.pem to have each host make its own again, as done here)
    ok(rotate(tmp_path, lab_ca_dir))
    for host in lab:
        assert_files_ok(host, sans=host_sans(host))
    wipe(*lab)
    ok(rotate(tmp_path, lab_ca_dir))


# ---------------------------------------------------------------------------------------------
# the report, and no key material in any output
# ---------------------------------------------------------------------------------------------

def test_cert_report_table_and_json(lab, lab_ca_dir, tmp_path):
    ok(rotate(tmp_path, lab_ca_dir))
    report = tmp_path / "report.json"
    run = ok(playbook(REPO / "playbooks" / "cert_report.yml", tmp_path,
                      {"cert_report_hosts": "lab", "cert_report_json": str(report)}, diff=True, verbose=True))
    assert_no_secrets(run.out)
    rows = json.loads(report.read_text())
    assert [row["host"] for row in rows] == sorted(lab)
    table = run.out[run.out.index("HOST "):]
    for row in rows:
        leaf = pki.load_certs(installed(row["host"])[0])[0]
        assert row["status"] == "ok" and row["serial"] == leaf.serial and row["spiffe_id"] == SPIFFE
        assert row["sans"] == leaf.sans and row["subject"] == leaf.subject and row["issuer"] == leaf.issuer
        assert row["not_after"] == pki.iso(leaf.not_after) and 29 < row["days_left"] <= 30
        line = next(line for line in table.splitlines() if line.strip().startswith(row["host"] + " "))
        assert row["serial"] in line and row["not_after"] in line and "ok" in line
    wipe("fm-el-1")
    ok(playbook(REPO / "playbooks" / "cert_report.yml", tmp_path,
                {"cert_report_hosts": "lab", "cert_report_json": str(report)}))
    assert {row["host"]: row["status"] for row in json.loads(report.read_text())}["fm-el-1"] == "missing"
    ok(rotate(tmp_path, lab_ca_dir))


def test_no_key_material_in_any_output(lab, lab_ca_dir, tmp_path):
    """Every runbook with -vvv --diff: first issue, check mode, rotation, no-op, report."""
    wipe("fm-deb-1")
    outputs = [
        ok(rotate(tmp_path, lab_ca_dir, diff=True, verbose=True)).out,
        ok(rotate(tmp_path, lab_ca_dir, {"workload_certs_lifetime": "2h"}, check=True, diff=True, verbose=True)).out,
        ok(rotate(tmp_path, lab_ca_dir, {"workload_certs_lifetime": "2h"}, diff=True, verbose=True)).out,
        ok(rotate(tmp_path, lab_ca_dir, {"workload_certs_lifetime": "2h"}, diff=True, verbose=True)).out,
        ok(playbook(REPO / "playbooks" / "cert_report.yml", tmp_path,
                    {"cert_report_hosts": "lab", "cert_report_json": str(tmp_path / "r.json")},
                    diff=True, verbose=True)).out,
    ]
    everything = "\n".join(outputs)
    assert "BEGIN CERTIFICATE REQUEST" in everything  # -vvv shows module results in full
    assert_no_secrets(everything)
    ca_key = (lab_ca_dir / "ca-key.pem").read_text()
    assert "".join(ca_key.splitlines()[1:3]) not in everything
    ok(rotate(tmp_path, lab_ca_dir))
