"""The Istio sidecar on the lab VMs against a real istiod: onboarding, the mesh, offboarding (issues 7 and 14).

One lab fixture for the whole sidecar path; the VMs are onboarded with the sidecar once, and the tests below run in
file order, as the sidecar's life does:

1. Bad input (``sidecar.yml``, every lab VM) fails with an error naming the variable, the value and what is allowed,
   before any host or the cluster changes; bad input on one host stops every host.
2. ``sidecar.yml --check --diff`` on the fresh hosts changes nothing.
3. ``onboard.yml -e fleetmesh_istio_sidecar=true`` onboards every lab VM with the sidecar (workload certificates,
   Envoy with its stats on 15091, the istio-sidecar package from a URL with its sha256 on the Debian VMs and the EL 9
   emulation, one TokenRequest for every VM of the service account, WorkloadEntries) and finds each sidecar ready
   (istio_sidecar_require_ready). Then:

   * istiod's ``/debug/syncz`` lists every VM's proxy with CDS and LDS sent and ACKed and no NACK,
     ``/debug/connections`` its xDS connection, and ``/debug/endpointz`` the VM's address from its WorkloadEntry;
   * on every VM the proxy's Envoy (admin ``/certs``) holds the certificate the agent wrote to /etc/certs
     (OUTPUT_CERTS of istio-start.sh): ``spiffe://cluster.local/ns/fleet-lab/sa/web``, issued by istiod (not the
     collection's certificate: another serial, istiod's 24 h lifetime) and chaining to the root istiod publishes;
   * a TokenReview of the istio-token on the VMs authenticates as system:serviceaccount:fleet-lab:web; a second
     ``sidecar.yml`` run changes nothing; a check/diff run that would refresh the token never shows it; a refresh
     changes the token of each VM and nothing else.

4. Mesh traffic between the VMs (capture on: ``istio_sidecar_intercept: true``, istio-start.sh runs
   ``pilot-agent istio-iptables``; the lab VMs have NET_ADMIN, NET_RAW and iptables). The registration writes the
   Service ``web`` and a WorkloadEntry per VM; the lab app listens on 127.0.0.1:8080, so the test applies a
   ``Sidecar`` whose ingress sends inbound 8080 there (docs/istio-mesh.md). VM A (the first lab VM) calls
   ``http://web.fleet-lab.svc.cluster.local:8080/`` by name (the agent's DNS proxy) and reaches the other VMs of
   ``web``; with PeerAuthentication STRICT plain-text clients that bypass the mesh (on the controller, and on A as
   istio-proxy, whose traffic capture leaves alone) are refused while A still gets through (mTLS); an
   AuthorizationPolicy that denies A's service account gets A a 403, and removing it lets A through again. istiod's
   /debug/syncz shows no NACK from the VMs' upstream Envoy. On every VM (one round each) names outside the mesh
   still resolve with DNS capture on: /etc/hosts (the role's block, a name the test adds) and the VM's resolver
   (the other lab VMs' names, which istiod's name table does not have; LabResolver answers them on the lab
   network's DNS address, standing in for podman's aardvark-dns).
   Identity beyond the token: the ServiceAccount is recreated (TokenReview rejects every VM's istio-token), the
   agents restart with 40 s certificates (SECRET_TTL), renew them with the certificate they hold past the end of the
   one they restarted with, a Debian VM and the EL 9 emulation reboot (``podman restart``, no play run) and
   rejoin, and the mesh still answers.
   Upgrade under traffic: while VM A calls the mesh name without pause, one ``sidecar.yml`` run upgrades the
   istio-sidecar package (1.31.0 -> 1.31.1, build.sh: same binaries, another package version) on the other VMs, a
   Debian VM and the EL 9 emulation, and ``rotate_certs.yml`` runs on every VM meanwhile: no call fails, each
   upgraded VM restarts its sidecar once, one after the other, keeps istiod's certificate and answers again.
   Auto-registration: one run of ``register.yml`` and ``sidecar.yml`` (``--skip-tags istio_sidecar_install``)
   switches every VM to a WorkloadGroup with a probe (httpGet 127.0.0.1:8080/ready) and
   ``istio_sidecar_auto_register``: the registration's WorkloadEntries go, istiod creates one per VM (Debian and the
   EL 9 emulation), health-checked and healthy; when the EL VM's app fails the probe istiod marks its entry
   unhealthy and VM A's calls (all 200) are served by the Debian VMs only, until it passes again. The VMs stay
   auto-registered.

5. ``sidecar_offboard.yml`` (check mode first: nothing changes) removes each VM's WorkloadEntry from the API server
   (the registration's, or the WorkloadGroup, after which istiod deletes its entries once the agents are gone)
   and the sidecar from the VM: istiod lists the VM nowhere any more (``/debug/syncz``, ``/debug/connections``,
   ``/debug/endpointz``), and no trace is left on the VM (files, hosts block, package, user); the command that
   looks for traces sees them while the VMs are onboarded, so the check is not vacuous. Offboarding again changes
   nothing.

istiod (tests/harness/istiod.py, built from the pilot-agent pin) runs on the controller against the harness API
server (Istio's own CRDs), with the collection's CA as its plug-in CA: the lab CA the workload_certs role signs with
is written as the ``cacerts`` Secret, so certificates from the collection and from istiod chain to one root.
Every istiod listener stays on loopback. The VMs reach istiod through an east-west gateway (issue 14, item 3;
tests/harness/eastwest.py): Envoy driven by the real pilot-agent in router mode (``pilot-agent proxy router``, the
pilot-agent and Envoy of the istio-sidecar package) on the controller, configured by istiod with Istio's own
``samples/multicluster`` Gateways, bound to the lab network's host-side address: 10.213.77.1:15012 passes the TLS
through to istiod (xDS and CA; ``istiod-gateway``/``istiod-vs``) and 10.213.77.1:15443 is the mesh port
(``cross-network-gateway``, AUTO_PASSTHROUGH). The VMs' ``/etc/hosts`` block (istio_sidecar_eastwest_address) points
``istiod.istio-system.svc`` at the gateway, as ``istioctl x workload entry configure`` does. Checked on the way:
istiod sees each VM's xDS connection arrive from the gateway (127.0.0.1), the gateway holds connections from every
VM's address and carried each VM's CA connection too; after offboarding it holds none. In section 4 a client on the
controller with a mesh certificate (the gateway's own, from istiod's CA) reaches every VM of ``web`` through 15443
with the SNI ``outbound_.8080_._.web.fleet-lab.svc.cluster.local``; the TLS ends at the VM's sidecar (its SPIFFE
certificate, STRICT mTLS).
"""

from __future__ import annotations

import base64
import datetime
import functools
import http.client
import http.server
import json
import os
import re
import shlex
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import eastwest as eastwest_harness  # tests/harness is put on sys.path by conftest.py
import istiod as istiod_harness
import kubeapi
import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib
from cryptography import x509
from kubeapi_pytest import require_istiod, require_kube_binaries

from tests.conftest import ROOT, need
from tests.integration.labutil import LAB_HOSTS, extra, get, lab_up, on_hosts, playbook
from tests.integration.labutil import env as labutil_env

pytestmark = [pytest.mark.lab, pytest.mark.kube]

HOSTS = sorted(LAB_HOSTS)    # two Debian VMs and the EL 9 emulation
NS, SA = "fleet-lab", "web"  # inventories/lab/group_vars/web.yml
SPIFFE = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"
PROXY_IDS = {f"{host}.{NS}" for host in HOSTS}  # POD_NAME (hostname -s) . ISTIO_NAMESPACE, as istio-start.sh sets
WORKLOAD_ENTRIES = {f"{SA}-{host}" for host in HOSTS}  # <service>-<host> (module_utils model.workload_entry_name)
GATEWAY = "10.213.77.1"      # the host's address on the lab network (tools/lab/lab.sh)
CERTS_SRC = "/etc/fleetmesh/workload-certs"  # onboard.yml's istio_sidecar_certs_src_dir default
CACERTS_KEYS = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
MARKER = "fleetmesh.envoy istio_sidecar"
# /etc/certs belongs to istio-proxy on a sidecar VM (roles/istio_sidecar/README.md, "one directory, one owner"):
# other tests' Envoy certificates there are set aside and put back afterwards.
SAVED_CERTS = "/etc/certs.saved-by-mesh-test"  # no "istio" in it: TRACES looks for such names
# The lab VMs' resolv.conf names the lab network's gateway (podman's DNS address on the network) and, after it, the
# machine's own resolver, outside the lab. The agent's DNS proxy spreads the queries it forwards over all of them
# (round robin), so while the sidecar runs the VMs keep only the lab's, where LabResolver answers.
SAVED_RESOLV = "/etc/resolv.conf.saved-by-mesh-test"
CERTS = "ls /etc/certs/root-cert.pem /etc/certs/cert-chain.pem /etc/certs/key.pem 2>/dev/null; true"
# Everything the sidecar may leave behind, looked for after offboarding. /etc/certs is checked on its own.
TRACES = ("ls -d /var/lib/istio /etc/istio /var/log/istio /run/secrets /var/cache/fleetmesh-istio-sidecar "
          "/usr/local/bin/envoy /usr/local/bin/pilot-agent /usr/local/bin/istio-start.sh "
          "/lib/systemd/system/istio.service "
          "/etc/tmpfiles.d/fleetmesh-istio-token.conf /etc/systemd/system/multi-user.target.wants/istio.service "
          "/etc/apt/sources.list.d/fleetmesh-istio-sidecar.list /etc/yum.repos.d/fleetmesh-istio-sidecar.repo "
          "2>/dev/null; "
          f"grep -c '{MARKER}' /etc/hosts; getent passwd istio-proxy; getent group istio-proxy; "
          "(dpkg-query -W istio-sidecar 2>/dev/null || rpm -q istio-sidecar 2>/dev/null) | grep -v 'not installed'; "
          "find / -xdev \\( -nouser -o -nogroup -o -iname '*istio*' \\) -not -path '/proc/*' 2>/dev/null | sort")


CALLER = HOSTS[0]
OTHERS = set(HOSTS) - {CALLER}
PORT = 8080  # inventories/lab/group_vars/web.yml
NAME = f"web.{NS}.svc.cluster.local"
URL = f"http://{NAME}:{PORT}/"
IPTABLES_SAVE = "(iptables-legacy-save -t nat; iptables-nft-save -t nat) 2>/dev/null"

SIDECAR = {  # inbound 8080 to the app on loopback (istiod's default is the VM's address, where nothing listens)
    "apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "web", "namespace": NS},
    "spec": {"workloadSelector": {"labels": {"app": "web"}},
             "ingress": [{"port": {"number": PORT, "protocol": "HTTP", "name": "http"},
                          "defaultEndpoint": f"127.0.0.1:{PORT}"}]},
}
STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": NS}, "spec": {"mtls": {"mode": "STRICT"}}}
DENY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-web-sa", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/{SA}"]}}]}]}}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab VMs before onboarding, istiod and its API server, the service account, the packages served from the
    lab gateway, and the variables of the onboarding. Offboards and puts the VMs back afterwards."""
    need("podman", "run 'make setup' (apt-get install podman runc)")
    require_kube_binaries()
    require_istiod()
    t0 = time.monotonic()
    lab_up(len(HOSTS))
    tmp = tmp_path_factory.mktemp("mesh")
    # The collection's CA (the lab CA layout workload_certs_source=lab_ca reads) is istiod's plug-in CA.
    ca_dir = tmp / "lab-ca"
    ca_dir.mkdir(mode=0o700)
    files = ca_lib.new_lab_ca_files("fleetmesh mesh test")
    for name, data in files.items():
        kubeapi._write_private(ca_dir / name, data)
    api = kubeapi.KubeAPI(tmp / "kube", istio_crds=istiod_harness.crds_file())
    api.start()
    # istiod on loopback only; the east-west gateway (tests/harness/eastwest.py) exposes it on GATEWAY:15012.
    pilot = istiod_harness.Istiod(api, tmp / "istiod", cacerts={k: files[k] for k in CACERTS_KEYS})
    gateway = eastwest_harness.EastWestGateway(pilot, tmp / "eastwest", GATEWAY)
    server = resolver = None
    state = {"offboarded": False}
    try:
        pilot.start()
        gateway.start()
        api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                   {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}}])
        build = subprocess.run([str(ROOT / "tools/pkg/istio-sidecar/build.sh"), "--print-dir"], capture_output=True,
                               text=True, check=False, timeout=1200)
        assert build.returncode == 0, build.stderr
        pkg_dir = Path(build.stdout.strip())
        sums = dict(reversed(line.split()) for line in (pkg_dir / "SHA256SUMS").read_text().splitlines())
        server = http.server.ThreadingHTTPServer((GATEWAY, 0), functools.partial(_Quiet, directory=str(pkg_dir)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for book in (str(ROOT / "molecule/sidecar-debian/el9_emulation_programs.yml"), "lab_app.yml"):
            run = playbook(book)
            assert run.rc == 0, run.out[-3000:]
        resolver = LabResolver(LAB_HOSTS).__enter__()
        on_hosts(f"if [ -e /etc/certs ] && [ ! -e {SAVED_CERTS} ]; then mv /etc/certs {SAVED_CERTS}; fi; "
                 f"[ -e {SAVED_RESOLV} ] || cp -p /etc/resolv.conf {SAVED_RESOLV}; "
                 f"printf 'search dns.podman\\nnameserver {GATEWAY}\\n' > /etc/resolv.conf")
        variables = {
            "fleetmesh_istio_sidecar": True,
            "fleetmesh_kubeconfig": str(api.registrar_kubeconfig),
            "workload_certs_source": "lab_ca",
            "workload_certs_lab_ca_dir": str(ca_dir),
            # The sidecar's Envoy serves its stats on 15090, as the collection's Envoy does by default: a VM that
            # runs both moves the collection's stats listener (the envoy role refuses 15090 next to the sidecar).
            "envoy_stats_port": 15091,
            "istio_sidecar_package_source": "url",
            "istio_sidecar_package_base_url": f"http://{GATEWAY}:{server.server_address[1]}",
            "istio_sidecar_package_sha256": {"deb": sums["deb/istio-sidecar.deb"],
                                             "rpm": sums["rpm/istio-sidecar.rpm"]},
            "istio_sidecar_intercept": True,  # traffic capture (istio-start.sh runs pilot-agent istio-iptables)
            "istio_sidecar_eastwest_address": GATEWAY,
            "istio_sidecar_certs_force": False,  # the agent rewrites /etc/certs with istiod's certificate
            "istio_sidecar_require_ready": True,
            "istio_sidecar_ready_timeout": 60,
        }
        before = on_hosts(TRACES)
        assert set(before) == set(HOSTS), before
        print(f"lab and istiod in {time.monotonic() - t0:.0f} s (east-west gateway ready in "
              f"{gateway.timings['ready']:.1f} s)")
        yield {"api": api, "pilot": pilot, "gateway": gateway, "vars": variables, "before": before, "state": state,
               "resolver": resolver, "root": files["root-cert.pem"].decode()}
    finally:
        if not state["offboarded"]:
            playbook("sidecar_offboard.yml", "-e", "target=web")
        # Envoy's certificates back in /etc/certs, its stats listener back on its default port.
        on_hosts(f"if [ -e {SAVED_CERTS} ]; then rm -rf /etc/certs && mv {SAVED_CERTS} /etc/certs; fi; "
                 f"if [ -e {SAVED_RESOLV} ]; then cat {SAVED_RESOLV} > /etc/resolv.conf && rm {SAVED_RESOLV}; fi")
        envoy = playbook("envoy.yml")
        print(f"teardown: envoy.yml rc={envoy.rc} in {envoy.seconds:.0f} s")
        on_hosts(f"rm -rf {CERTS_SRC}; rmdir /etc/fleetmesh 2>/dev/null; true")
        if server is not None:
            server.shutdown()
        if resolver is not None:
            resolver.__exit__()
        gateway.stop()
        pilot.stop()
        api.stop()


@pytest.fixture(scope="module")
def onboarded(lab):
    """``onboard.yml -e fleetmesh_istio_sidecar=true`` on every lab VM, once."""
    run = playbook("onboard.yml", *extra(**lab["vars"]))
    print(f"onboard.yml in {run.seconds:.0f} s")
    return run


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
    """playbooks/sidecar.yml (the istio_sidecar role alone) with the onboarding's variables."""
    run = playbook("sidecar.yml", "-e", "target=web", *extra(**{**lab["vars"], **overrides}), *args)
    print(f"sidecar.yml {' '.join(args)} in {run.seconds:.0f} s")
    return run


def offboard(lab, *args):
    run = playbook("sidecar_offboard.yml", "-e", "target=web",
                   *extra(fleetmesh_kubeconfig=lab["vars"]["fleetmesh_kubeconfig"]), *args)
    print(f"sidecar_offboard.yml {' '.join(args)} in {run.seconds:.0f} s")
    return run


def workload_entries(api) -> set[str]:
    """The WorkloadEntries in the API server."""
    for _attempt in range(50):  # 429 while a just-created CRD's storage warms up
        status, body = api.request("GET", f"/apis/networking.istio.io/v1/namespaces/{NS}/workloadentries")
        if status != 429:
            break
        time.sleep(0.2)
    assert status == 200, body
    return {item["metadata"]["name"] for item in body["items"]}


# -- 1. bad input, 2. check mode: before any change ---------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "errors", "allowed"), [
    # The role's checks (the model is valid): both errors in one run.
    ({"istio_sidecar_service_cidr": "10.96.0.0/33", "istio_sidecar_inbound_ports": [8080, "ssh"]},
     ['istio_sidecar_service_cidr[0]: "10.96.0.0/33" is not a CIDR',
      'istio_sidecar_inbound_ports[1]: "ssh" is not a valid port'],
     ["allowed: IPv4 or IPv6 networks", "allowed: integer 1-65535"]),
    # The model's checks: both errors in one run.
    ({"fleetmesh_ports": {"http": 70000}, "fleetmesh_service_account": None},
     ["fleetmesh_ports.http: 70000 is not a valid port", "fleetmesh_service_account: is not set"],
     ["allowed: integer 1-65535", "allowed: DNS-1123"]),
], ids=["role", "model"])
def test_bad_input_fails_before_any_change(lab, overrides, errors, allowed):
    run = sidecar(lab, **overrides)
    assert run.rc != 0
    for word in [f"host {host}: {error}" for host in HOSTS for error in errors] + allowed:
        assert word in run.out, (word, run.out[-3000:])
    assert run.changed() == 0, run.recap
    assert on_hosts(TRACES) == lab["before"]
    assert all("ISTIO_" not in rules for rules in on_hosts(IPTABLES_SAVE).values()), "capture rules left behind"
    assert workload_entries(lab["api"]) == set()


def test_bad_input_on_one_host_stops_every_host(lab):
    run = sidecar(lab, istio_sidecar_service_cidr="{{ '10.96.0.1/12' if inventory_hostname == 'fm-el-1' else '*' }}")
    assert run.rc != 0
    # The runbook's first task (fleetmesh.envoy.preflight) checks every host of the play at once.
    assert ('host fm-el-1: istio_sidecar_service_cidr[0]: "10.96.0.1/12" has host bits set (did you mean 10.96.0.0/12?)'
            in run.out), run.out[-3000:]
    assert "nothing was changed on any host or in the cluster" in run.out, run.out[-3000:]
    assert "host fm-deb-1:" not in run.out and "host fm-deb-2:" not in run.out and run.changed() == 0, run.recap
    assert on_hosts(TRACES) == lab["before"]


def test_capture_without_iptables_on_one_host_stops_every_host(lab):
    """fm-el-1 looks for iptables where it has none (the role's search path, set for that host only): every host
    stops before any change, and the message names the host, the variable and what is allowed."""
    paths = "{{ ['/nonexistent/iptables'] if inventory_hostname == 'fm-el-1' else ['/usr/sbin/iptables', " \
            "'/sbin/iptables', '/usr/sbin/iptables-nft', '/usr/sbin/iptables-legacy'] }}"
    run = sidecar(lab, __istio_sidecar_iptables_paths=paths)
    assert run.rc != 0
    flat = " ".join(run.out.split())
    assert "istio_sidecar_intercept: true on fm-el-1, but none of /nonexistent/iptables exists" in flat, run.out[-3000:]
    assert "Allowed: install iptables first, or istio_sidecar_intercept: false" in flat
    assert "fm-el-1: no iptables for istio_sidecar_intercept" in flat and "no host was changed" in flat
    assert run.changed() == 0, run.recap
    assert on_hosts(TRACES) == lab["before"]


def test_check_mode_on_fresh_hosts_changes_nothing(lab):
    run = sidecar(lab, "--check", "--diff")
    assert run.rc == 0, run.out[-3000:]
    assert "would be installed first" in run.out
    assert on_hosts(TRACES) == lab["before"]


# -- 3. onboarded: istiod, certificates, token ---------------------------------------------------------------------


def test_onboard_waits_for_a_ready_sidecar(onboarded):
    run = onboarded
    assert run.rc == 0, run.out[-5000:]
    for host in HOSTS:
        assert run.recap[host]["failed"] == 0, run.recap
    assert run.out.count("istio.service is ready (:15021/healthz/ready returned 200)") == len(HOSTS), run.out[-5000:]
    assert "does not answer from this host" not in run.out
    # One TokenRequest for every VM of the service account.
    assert f"istio-tokens from TokenRequest for {NS}/{SA} ({', '.join(HOSTS)})" in run.out, run.out[-5000:]


def _synced(pilot):
    status, body = pilot.debug("/debug/syncz")
    proxies = {p.get("proxy"): p for p in json.loads(body or "[]")} if status == 200 else {}
    done = PROXY_IDS <= set(proxies) and all(
        proxies[i].get(f"{t}_sent") and proxies[i].get(f"{t}_acked") == proxies[i].get(f"{t}_sent")
        for i in PROXY_IDS for t in ("cluster", "listener"))
    return proxies if done else None


def _connections(pilot) -> dict[str, str]:
    """proxy id -> the address its xDS connection comes from (/debug/connections: {"clients": [...]})."""
    status, body = pilot.debug("/debug/connections")
    assert status == 200, body[:2000]
    return {c["connectionId"].rsplit("-", 1)[0]: c["address"].rsplit(":", 1)[0]
            for c in json.loads(body).get("clients") or []}


def test_istiod_lists_every_vm_connected_and_synced(lab, onboarded):
    pilot = lab["pilot"]
    try:
        proxies = kubeapi._wait("every VM's proxy synced with istiod (/debug/syncz)", lambda: _synced(pilot), 30)
    except Exception as exc:  # say what istiod sees
        raise AssertionError(f"{exc}; /debug/syncz: {pilot.debug('/debug/syncz')[1][:3000]}") from exc
    errors = {i: r.get("lastError") for i in PROXY_IDS for r in (proxies[i].get("resources") or {}).values()
              if r.get("lastError")}
    assert not errors, errors  # nothing NACKed by the VMs' upstream Envoy
    # Each VM's own xDS connection, through the east-west gateway: istiod listens on loopback only and sees each
    # VM's connection come from there (the gateway's Envoy); the gateway holds the VMs' connections on the lab
    # network's GATEWAY:15012, one from each VM's address at least.
    gateway = lab["gateway"]
    assert pilot.secure_grpc_host == "127.0.0.1", pilot.secure_grpc_host
    connections = _connections(pilot)
    assert {i: connections.get(i) for i in PROXY_IDS} == {i: "127.0.0.1" for i in PROXY_IDS}, connections
    assert set(gateway.peers(15012)) >= set(LAB_HOSTS.values()), gateway.peers(15012)
    stats = gateway.cluster_stats(f"outbound|15012||{eastwest_harness.ISTIOD_HOST}")
    print(f"east-west gateway to istiod: {stats.get('upstream_cx_active')} connections active, "
          f"{stats.get('upstream_cx_total')} in all")
    assert stats.get("upstream_cx_active", 0) >= len(HOSTS), stats
    # Each VM's WorkloadEntry, and its address among istiod's service endpoints.
    assert workload_entries(lab["api"]) == WORKLOAD_ENTRIES
    try:
        kubeapi._wait("every VM's address in istiod's /debug/endpointz",
                      lambda: all(LAB_HOSTS[h] in pilot.debug("/debug/endpointz")[1] for h in HOSTS), 30)
    except Exception as exc:
        raise AssertionError(f"{exc}; /debug/endpointz: {pilot.debug('/debug/endpointz')[1][:3000]}") from exc


_ADMIN_CERTS = ("python3 -c \"import json, urllib.request; "
                "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:15000/certs', timeout=5))))\"")


def _leaf(b64: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def test_every_proxy_holds_an_istiod_certificate_for_its_spiffe_id(lab, onboarded):
    root = lab["pilot"].root_cert(NS)
    assert root.strip() == lab["root"].strip()  # istiod serves the collection's root (plug-in CA)
    found = on_hosts(f"base64 -w0 /etc/certs/cert-chain.pem; echo; base64 -w0 {CERTS_SRC}/cert-chain.pem; echo; "
                     f"{_ADMIN_CERTS}")
    assert set(found) == set(HOSTS), found
    for host in HOSTS:
        agent_b64, collection_b64, admin = found[host].split("\n", 2)
        chain = base64.b64decode(agent_b64).decode()
        assert ca_lib.verify_chain(chain, root) == [], (host, chain)
        leaf, collections = _leaf(agent_b64), _leaf(collection_b64)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE], host
        # istiod issued it: not the collection's certificate (workload_certs, 30 d), istiod's 24 h lifetime.
        assert leaf.serial_number != collections.serial_number, host
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(hours=25), host
        # The proxy's Envoy holds that certificate (SDS from the agent), with the SPIFFE ID.
        held = [c for entry in json.loads(admin)["certificates"] for c in entry.get("cert_chain") or []]
        serials = {int(c["serial_number"], 16) for c in held}
        assert leaf.serial_number in serials, (host, held)
        uris = {s.get("uri") for c in held for s in c.get("subject_alt_names") or []}
        assert SPIFFE in uris, (host, held)
    metrics = re.findall(r"^citadel_server_success_cert_issuance_count\S* (\d+)", _metrics(lab["pilot"]), re.M)
    assert metrics and sum(map(int, metrics)) >= len(HOSTS), metrics
    # The CSRs went through the east-west gateway (istiod listens on loopback only): besides its xDS stream, each
    # VM's agent opened a connection to istiod's CA through the gateway's cluster to istiod.
    stats = lab["gateway"].cluster_stats(f"outbound|15012||{eastwest_harness.ISTIOD_HOST}")
    assert stats.get("upstream_cx_total", 0) >= 2 * len(HOSTS), stats


def _metrics(pilot) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", pilot.ports["monitoring"], timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()


def test_token_review_second_run_and_token_refresh(lab, onboarded):
    assert onboarded.rc == 0, onboarded.out[-3000:]
    tokens = on_hosts("cat /var/run/secrets/tokens/istio-token")
    assert set(tokens) == set(HOSTS) and len(set(tokens.values())) == 1  # one TokenRequest, every VM
    token = tokens[HOSTS[0]].strip()
    assert token.split(".")[0] not in onboarded.out and token not in onboarded.out
    status, review = lab["api"].request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["istio-ca"]}})
    assert status == 201 and review["status"].get("authenticated") is True, review["status"].get("error")
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{NS}:{SA}"
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] == 86400
    state = on_hosts("stat -c '%U %a' /var/lib/istio/token/istio-token; systemctl is-enabled istio; "
                     "systemctl is-active istio")
    for host in HOSTS:
        assert state[host].split("\n") == ["istio-proxy 400", "enabled", "active"], (host, state[host])

    second = sidecar(lab)
    assert second.rc == 0 and second.changed() == 0, changed_tasks(second.out)
    assert "no TokenRequest made" in second.out

    checked = sidecar(lab, "--check", "--diff", istio_sidecar_token_refresh_before=86399)
    assert checked.rc == 0 and "would request istio-tokens" in checked.out, checked.out[-3000:]
    assert token.split(".")[0] not in checked.out
    assert on_hosts("cat /var/run/secrets/tokens/istio-token") == tokens  # check mode changed nothing

    refreshed = sidecar(lab, istio_sidecar_token_refresh_before=86399)
    assert refreshed.rc == 0 and sorted(changed_tasks(refreshed.out)) == [  # the token of each VM, nothing else
        f"fleetmesh.envoy.istio_sidecar : Write the new istio-token (owner istio-proxy, mode 0400): {host}"
        for host in HOSTS], changed_tasks(refreshed.out)
    assert on_hosts("cat /var/run/secrets/tokens/istio-token") != tokens


def test_traces_command_sees_an_onboarded_host(lab, onboarded):
    """The no-trace check below is not vacuous: while onboarded, it sees the sidecar."""
    seen = on_hosts(TRACES)
    for host in HOSTS:
        assert "/var/lib/istio" in seen[host] and "istio-proxy" in seen[host], shlex.quote(seen[host])


# -- 4. mesh traffic ------------------------------------------------------------------------------------------------


def _calls(n: int) -> list[tuple[str, str]]:
    """n calls of URL from CALLER as root (captured): [(status, first line of the body)]; status 000 = no answer."""
    host = CALLER
    out = on_hosts(f"for i in $(seq {n}); do code=$(curl -s -m 5 -o /tmp/mesh-call -w '%{{http_code}}' {URL}); "
                   f"echo \"$code $(head -n1 /tmp/mesh-call 2>/dev/null)\"; rm -f /tmp/mesh-call; done", host)
    return [tuple((line.split(" ", 1) + [""])[:2]) for line in out.get(host, "").splitlines() if line.strip()]


def _wait_calls(expected: str, timeout: float = 60.0, in_a_row: int = 6) -> list[tuple[str, str]]:
    """Call until ``in_a_row`` calls in a row answer ``expected``: pooled connections keep the listener configuration
    they were accepted with until it drains (docs/istio-mesh.md, timing)."""
    deadline, seen = time.monotonic() + timeout, []
    while True:
        seen = _calls(in_a_row)
        if len(seen) == in_a_row and all(code == expected for code, _body in seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{CALLER} -> {URL}: not {in_a_row} x {expected} within {timeout} s; last: {seen}")
        time.sleep(1)


def _no_nack(pilot) -> None:
    status, body = pilot.debug("/debug/syncz")
    assert status == 200, body[:2000]
    proxies = {p["proxy"]: p for p in json.loads(body or "[]")}
    assert {f"{h}.{NS}" for h in HOSTS} <= set(proxies), list(proxies)
    errors = {name: {t: r.get("lastError") for t, r in (p.get("resources") or {}).items() if r.get("lastError")}
              for name, p in proxies.items()}
    assert not any(errors.values()), errors


@pytest.fixture(scope="module")
def traffic(lab, onboarded):
    """The onboarded mesh with the Sidecar that sends inbound 8080 to the app on loopback."""
    lab["api"].apply([SIDECAR])
    return onboarded


def test_capture_rules_on_every_vm(lab, traffic):
    found = on_hosts(IPTABLES_SAVE)
    assert set(found) == set(HOSTS), found
    for host, rules in found.items():
        assert f"-A ISTIO_INBOUND -p tcp -m tcp --dport {PORT} -j ISTIO_IN_REDIRECT" in rules, (host, rules)
        assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in rules, (host, rules)
        assert "-j ISTIO_REDIRECT" in rules and "REDIRECT --to-ports 15001" in rules, (host, rules)


EXTRA_NAME, EXTRA_ADDRESS = "fm-mesh-test-extra.lab.internal", "10.213.77.250"  # added to /etc/hosts by the test
# One round per VM: the mesh name, istiod's name (the role's hosts block), a name the test adds to /etc/hosts (and
# takes out again, in place), and the other lab VMs' names, which
# only the VM's resolver (the first nameserver of resolv.conf, on the lab network's gateway) answers.
_RESOLVE = (f"echo '{EXTRA_ADDRESS} {EXTRA_NAME} # mesh-test' >> /etc/hosts; "
            f"echo mesh $(getent hosts {NAME} | cut -d' ' -f1); "
            "echo istiod $(getent hosts istiod.istio-system.svc | cut -d' ' -f1); "
            f"echo extra $(getent hosts {EXTRA_NAME} | cut -d' ' -f1); "
            "grep -v ' # mesh-test$' /etc/hosts > /tmp/hosts.mesh-test && cat /tmp/hosts.mesh-test > /etc/hosts; "
            "rm -f /tmp/hosts.mesh-test; echo left $(grep -c ' # mesh-test$' /etc/hosts); "
            f"for vm in {' '.join(HOSTS)}; do [ \"$vm\" = \"$(hostname -s)\" ] && continue; "
            "echo \"vm $vm $(getent hosts $vm | cut -d' ' -f1) $(grep -cw $vm /etc/hosts)\"; done; "
            "echo resolver $(awk '$1 == \"nameserver\" {print $2}' /etc/resolv.conf); "
            "echo dnat $( (iptables-legacy-save; iptables-nft-save) 2>/dev/null | grep -c 'dport 53 .*15053')")


class LabResolver:
    """The lab VMs' names on the lab network's DNS address (GATEWAY:53, the first nameserver of their resolv.conf,
    search ``dns.podman``), as podman's aardvark-dns answers them where it runs. This machine's podman has no
    aardvark-dns (nothing answers on GATEWAY:53), so the test answers there itself while it runs: A records for
    ``<vm>`` and ``<vm>.dns.podman``, an empty NOERROR for their other types, REFUSED for anything else. It records
    who asked what, to show the VMs' queries reached it."""

    def __init__(self, names: dict[str, str]):
        self.names = {f"{n}{suffix}".lower(): ip for n, ip in names.items() for suffix in ("", ".dns.podman")}
        self.asked: list[tuple[str, str]] = []  # (client address, name)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((GATEWAY, 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _answer(self, query: bytes) -> tuple[bytes, str]:
        qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
        labels, i = [], 12
        while query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode(errors="replace"))
            i += 1 + query[i]
        question = query[12:i + 5]
        qtype = struct.unpack("!H", query[i + 1:i + 3])[0]
        name = ".".join(labels).lower()
        ip = self.names.get(name)
        rcode = 0 if ip else 3  # NXDOMAIN for anything else: no resolver after this one is asked
        answers = b""
        if ip and qtype == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(ip)
        flags = 0x8580 | rcode  # response, authoritative, recursion desired and available
        return struct.pack("!HHHHHH", qid, flags, min(qdcount, 1), 1 if answers else 0, 0, 0) + question + answers, name

    def _serve(self):
        while not self._stop.is_set():
            try:
                query, client = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            try:
                reply, name = self._answer(query)
                self.asked.append((client[0], name))
            except (IndexError, struct.error):
                continue
            self.sock.sendto(reply, client)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_names_in_and_outside_the_mesh_resolve_on_the_vms(lab, traffic):
    """The agent's DNS proxy with DNS capture (ISTIO_META_DNS_CAPTURE) answers the mesh name with the Service's
    ClusterIP and leaves names outside the mesh to the VM: /etc/hosts (the role's block, and a name added by the
    test) and the VM's resolver (istio#29224), on the Debian VMs and the EL 9 emulation."""
    status, svc = lab["api"].request("GET", f"/api/v1/namespaces/{NS}/services/web")
    assert status == 200, svc
    resolver = lab["resolver"]
    first = len(resolver.asked)
    found = on_hosts(_RESOLVE)
    assert set(found) == set(HOSTS), found
    asked = {client for client, name in resolver.asked[first:] if name.split(".")[0] in LAB_HOSTS}
    assert asked >= set(LAB_HOSTS.values()), resolver.asked  # each VM's lookups reached the VM's resolver
    for host, out in found.items():
        seen: dict[str, list[str]] = {}
        for line in out.splitlines():
            key, *values = line.split()
            seen[key if key != "vm" else f"vm {values.pop(0)}"] = values
        assert seen["mesh"] == [svc["spec"]["clusterIP"]], (host, out)  # the agent's DNS proxy (istiod's names)
        assert seen["istiod"] == [GATEWAY], (host, out)                  # the role's /etc/hosts block
        assert seen["extra"] == [EXTRA_ADDRESS], (host, out)             # a name the VM's /etc/hosts has
        for other in set(HOSTS) - {host}:                                # the VM's resolver, not in /etc/hosts
            assert seen[f"vm {other}"] == [LAB_HOSTS[other], "0"], (host, other, out)
        assert seen["resolver"] == [GATEWAY], (host, out)  # the lab network's resolver (LabResolver) only
        assert int(seen["dnat"][0]) >= 1, (host, out)      # DNS to it is captured (sent to the agent's :15053)
        # The other VMs' names are not mesh names: istiod's name table for this proxy (NDS) has the Service only.
        status, nds = lab["pilot"].debug(f"/debug/ndsz?proxyID={host}.{NS}")
        assert status == 200 and NAME in nds, (host, nds[:2000])
        assert not any(other in nds for other in HOSTS), (host, nds[:2000])
        assert seen["left"] == ["0"], (host, out)  # the test's name is out of /etc/hosts again


def test_a_vm_reaches_the_other_vms_by_name(lab, traffic):
    _wait_calls("200")
    pages = _calls(30)
    assert all(code == "200" for code, _body in pages), pages
    reached = {body.removeprefix("hello from ").strip() for _code, body in pages}
    assert OTHERS <= reached, pages  # round robin over every VM of web, through their sidecars
    _no_nack(lab["pilot"])


def _plain_from_caller(targets: list[str]) -> list[int]:
    """Plain-text calls from CALLER as istio-proxy, whose traffic the capture rules leave alone (bypassing the mesh)."""
    out = on_hosts("; ".join(f"runuser -u istio-proxy -- curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' {u}"
                             for u in targets), CALLER)
    return [int(code) for code in out.get(CALLER, "").split()]


def test_strict_mtls_refuses_plain_text_and_lets_the_mesh_through(lab, traffic):
    targets = [f"http://{LAB_HOSTS[h]}:{PORT}/" for h in sorted(OTHERS)]
    # Before STRICT (PERMISSIVE), plain text reaches the app through the inbound capture: from the controller, and
    # from A's istio-proxy user.
    assert [get(u, timeout=5)[0] for u in targets] == [200] * len(targets)
    assert _plain_from_caller(targets) == [200] * len(targets)
    lab["api"].apply([STRICT])
    deadline = time.monotonic() + 60
    while any(get(u, timeout=5)[0] == 200 for u in targets):
        assert time.monotonic() < deadline, "plain text still answered 60 s after PeerAuthentication STRICT"
        time.sleep(1)
    assert [get(u, timeout=5)[0] for u in targets] == [0] * len(targets)  # reset: no TLS, no answer
    assert _plain_from_caller(targets) == [0] * len(targets)  # curl's 000
    _wait_calls("200")  # the sidecars' mTLS
    _no_nack(lab["pilot"])


def test_authorization_policy_denies_and_then_allows_the_caller(lab, traffic):
    api = lab["api"]
    api.apply([DENY])
    try:
        denied = _wait_calls("403")
        assert all(body.startswith("RBAC: access denied") for _code, body in denied), denied
        _no_nack(lab["pilot"])
    finally:
        status, body = api.request("DELETE", f"/apis/security.istio.io/v1/namespaces/{NS}/authorizationpolicies/"
                                   f"{DENY['metadata']['name']}")
        assert status in (200, 202, 404), body
    _wait_calls("200")


# -- the east-west gateway's mesh port, 15443 (issue 14, item 3) ------------------------------------------------

SNI = f"outbound_.{PORT}_._.{NAME}"  # the SNI-DNAT cluster istiod builds for the gateway's AUTO_PASSTHROUGH server


def test_eastwest_gateway_passes_mesh_traffic_on_15443_to_every_vm(lab, traffic):
    """A mesh client that is not a lab VM (the controller, with the gateway's own certificate from istiod's CA)
    reaches every VM of ``web`` through the east-west gateway's GATEWAY:15443 (AUTO_PASSTHROUGH, Istio's
    ``cross-network-gateway``): the SNI names the service and port, the gateway forwards the TLS untouched to a VM,
    and it ends at that VM's sidecar (its SPIFFE certificate; mTLS, as STRICT PeerAuthentication requires), which
    hands the request to the app."""
    gateway = lab["gateway"]
    before = gateway.cluster_stats(SNI).get("upstream_cx_total", 0)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # a workload certificate has a SPIFFE ID and no DNS name: checked below
    ctx.load_verify_locations(cadata=lab["root"])
    ctx.load_cert_chain(gateway.certs_dir / "cert-chain.pem", gateway.certs_dir / "key.pem")
    ctx.set_alpn_protocols(["istio-http/1.1"])  # Istio's mTLS ALPN: the filter chains of both Envoys match it
    reached, calls = set(), 3 * len(HOSTS)
    for _call in range(calls):  # one connection per call: the gateway picks a VM per connection (round robin)
        with ctx.wrap_socket(socket.create_connection((GATEWAY, 15443), timeout=5), server_hostname=SNI) as tls:
            sans = dict(tls.getpeercert().get("subjectAltName") or ())
            assert sans.get("URI") == SPIFFE, tls.getpeercert()  # the VM's sidecar, not the gateway, ends the TLS
            conn = http.client.HTTPConnection(NAME, PORT, timeout=5)
            conn.sock = tls
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            assert resp.status == 200, (resp.status, body[:500])
            reached.add(body.splitlines()[0].removeprefix("hello from ").strip())
    assert reached == set(HOSTS), reached
    after = gateway.cluster_stats(SNI).get("upstream_cx_total", 0)
    assert after - before >= calls, (before, after)  # through the gateway's SNI-DNAT cluster of web:8080
    _no_nack(lab["pilot"])  # the gateway's Envoy included


# -- identity beyond the token (issue 14, item 5) -----------------------------------------------------------------

SECRET_TTL = 40  # seconds: the agent renews at half of it (SECRET_GRACE_PERIOD_RATIO 0.5)
REBOOTED = sorted(OTHERS)  # a Debian VM and the EL 9 emulation reboot after their renewals, the token still rejected
_BOOT_MARK = "/run/fleetmesh-mesh-test-boot"  # /run is a tmpfs on the lab VMs: a reboot empties it
_CLUSTER_ENV = "/var/lib/istio/envoy/cluster.env"
_READY = ("for i in $(seq 120); do [ \"$(curl -s -o /dev/null -w '%{http_code}' "
          "http://127.0.0.1:15021/healthz/ready)\" = 200 ] && break; sleep 0.5; done")
# Restart the sidecar (as a reboot does) and wait until it is ready with another certificate in /etc/certs.
_RESTART = ("old=$(sha256sum < /etc/certs/cert-chain.pem); systemctl restart istio; " + _READY + "; "
            "for i in $(seq 60); do [ \"$(sha256sum < /etc/certs/cert-chain.pem)\" != \"$old\" ] && break; "
            "sleep 0.5; done")
_CERT_NOW = (f"echo at $(date +%s); echo cert $(base64 -w0 /etc/certs/cert-chain.pem); "
             f"echo admin $({_ADMIN_CERTS} | base64 -w0)")


def _reboot(hosts: list[str]) -> dict[str, str]:
    """Reboot lab VMs as the lab can (``podman restart``, tools/lab/lab.sh: systemd stops every service, /run and
    /tmp are emptied, the network namespace is new, systemd boots the VM with its enabled units) and wait, without
    any play run, until each VM's sidecar is ready with another certificate in /etc/certs; ``_CERT_NOW`` of each
    VM after its boot. podman writes the VM's resolv.conf anew at the start: the test's is put back (see
    SAVED_RESOLV; the agent read podman's when it started, and nothing on these VMs asks it for a name outside the
    mesh from here on)."""
    targets = ",".join(hosts)
    before = on_hosts(f"sha256sum < /etc/certs/cert-chain.pem > /var/tmp/mesh-test-cert.sum; touch {_BOOT_MARK}; "
                      "echo marked", targets)
    assert before == {h: "marked" for h in hosts}, before
    t0 = time.monotonic()
    restart = subprocess.run(["podman", "restart", "--time", "10", *hosts], env=labutil_env(), capture_output=True,
                             text=True, check=False, timeout=120)
    assert restart.returncode == 0, restart.stderr
    after: dict[str, str] = {}
    while time.monotonic() - t0 < 90 and set(after) != set(hosts):
        time.sleep(1)
        up = on_hosts(f"[ -e {_BOOT_MARK} ] && echo not rebooted; "
                      f"printf 'search dns.podman\\nnameserver {GATEWAY}\\n' > /etc/resolv.conf; "
                      f"systemctl is-system-running --wait >/dev/null; {_READY}; "
                      "for i in $(seq 60); do [ \"$(sha256sum < /etc/certs/cert-chain.pem)\" != "
                      "\"$(cat /var/tmp/mesh-test-cert.sum)\" ] && break; sleep 0.5; done; "
                      "rm -f /var/tmp/mesh-test-cert.sum; "
                      f"echo istio $(systemctl is-active istio); {_CERT_NOW}",
                      ",".join(sorted(set(hosts) - set(after))))
        after.update({h: out for h, out in up.items() if "\nistio " in f"\n{out}"})
    assert set(after) == set(hosts), (after, f"not back with a ready sidecar {time.monotonic() - t0:.0f} s after "
                                             "podman restart")
    for host, out in after.items():
        assert "not rebooted" not in out and "istio active" in out, (host, out)
    print(f"rebooted {', '.join(hosts)}: sidecars ready with new certificates {time.monotonic() - t0:.1f} s after "
          "podman restart")
    return after


def _issued(pilot) -> int:
    """Certificates istiod's CA has issued so far (its monitoring port)."""
    return sum(map(int, re.findall(r"^citadel_server_success_cert_issuance_count\S* (\d+)", _metrics(pilot), re.M)))


def _review(api, token: str) -> dict:
    status, review = api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["istio-ca"]}})
    assert status == 201, review
    return review["status"]


def _held(out: str, host: str, root: str, lifetime: int | None = None) -> x509.Certificate:
    """The workload certificate in /etc/certs from one ``_CERT_NOW`` output: istiod's (chains to the mesh root,
    the SPIFFE ID of the service account), valid when it was read, and held by the proxy's Envoy."""
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("at ", "cert ", "admin ")))
    chain = base64.b64decode(lines["cert"]).decode()
    leaf = _leaf(lines["cert"])
    assert ca_lib.verify_chain(chain, root) == [], (host, chain)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE], host
    at = datetime.datetime.fromtimestamp(int(lines["at"]), datetime.UTC)
    assert leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc, (host, at, leaf.not_valid_after_utc)
    if lifetime is not None:  # istiod honours the agent's SECRET_TTL (its NotBefore is 2 min back for clock skew);
        # the collection's certificates live 30 days
        assert leaf.not_valid_after_utc - at <= datetime.timedelta(seconds=lifetime + 5), (host, at, leaf)
    admin = json.loads(base64.b64decode(lines["admin"]))
    serials = {int(c["serial_number"], 16) for e in admin["certificates"] for c in e.get("cert_chain") or []}
    assert leaf.serial_number in serials, (host, serials)
    return leaf


def test_certificates_renew_without_the_token_and_after_a_reboot(lab, traffic):
    """After the first bootstrap the agent authenticates its CSRs with the certificate it holds (PROV_CERT and
    OUTPUT_CERTS are both /etc/certs; istiod's ClientCertAuthenticator comes before the token), so a rejected
    istio-token cuts no VM off: the ServiceAccount is deleted and recreated (TokenReview now rejects every VM's
    token), the agents run with short certificates (SECRET_TTL), restart, and keep renewing past the lifetime of the
    certificate they restarted with; a reboot of a Debian VM and of the EL 9 emulation after that (podman restart,
    no play run) still rejoins; the mesh still answers."""
    api, pilot = lab["api"], lab["pilot"]
    root = pilot.root_cert(NS)
    tokens = {h: t.strip() for h, t in on_hosts("cat /var/run/secrets/tokens/istio-token").items()}
    assert set(tokens) == set(HOSTS) and all(_review(api, t).get("authenticated") is True for t in tokens.values())
    t0 = time.monotonic()
    status, body = api.request("DELETE", f"/api/v1/namespaces/{NS}/serviceaccounts/{SA}")
    assert status == 200, body
    api.apply([{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}}])
    # The API server's service account cache follows the deletion within moments: wait for the rejection.
    kubeapi._wait("TokenReview rejects every VM's istio-token",
                  lambda: not any(_review(api, t).get("authenticated") for t in tokens.values()), 30, interval=0.5)
    rejected = [_review(api, t) for t in tokens.values()]
    assert all(r.get("error") for r in rejected), rejected  # e.g. "service account UID ... does not match"
    issued = _issued(pilot)

    # Short certificates (SECRET_TTL in cluster.env) and a restart, as after a reboot: the token is rejected, the
    # certificate in /etc/certs (istiod's, from the onboarding) gets the new one.
    restarted = on_hosts(
        f"sed -i '/^SECRET_TTL=/d' {_CLUSTER_ENV}; echo \"SECRET_TTL='{SECRET_TTL}s'\" >> {_CLUSTER_ENV}; "
        f"{_RESTART}; {_CERT_NOW}")
    assert set(restarted) == set(HOSTS), restarted
    first = {h: _held(out, h, root, SECRET_TTL) for h, out in restarted.items()}
    print(f"token rejected, agents restarted with {SECRET_TTL} s certificates in {time.monotonic() - t0:.0f} s")

    # Renewal without a restart and without the token, past the end of the certificate each agent restarted with.
    wait_until = max(c.not_valid_after_utc for c in first.values()).timestamp() + 2
    renewed = on_hosts(f"while [ $(date +%s) -lt {int(wait_until)} ]; do sleep 1; done; {_CERT_NOW}")
    assert set(renewed) == set(HOSTS), renewed
    leaves = {}
    for host, out in renewed.items():
        # valid when read, which is after the end of the certificate the agent restarted with
        leaves[host] = _held(out, host, root, SECRET_TTL)
        assert leaves[host].serial_number != first[host].serial_number, host  # renewed by the running agent
    # A reboot, without a play run, with the renewed certificate and the rejected token: rejoined with a new one.
    rebooted = _reboot(REBOOTED)
    for host, out in rebooted.items():
        second = _held(out, host, root, SECRET_TTL)
        assert second.serial_number != leaves[host].serial_number, host
    assert not any(_review(api, t).get("authenticated") for t in tokens.values())  # the tokens are still rejected
    assert _issued(pilot) - issued >= 2 * len(HOSTS) + len(REBOOTED), (issued, _issued(pilot))  # all by istiod's CA
    # The mesh still answers, the rebooted VMs included.
    _wait_calls("200")
    pages = _calls(12)
    assert all(code == "200" for code, _body in pages), pages
    assert OTHERS <= {body.removeprefix("hello from ").strip() for _code, body in pages}, pages
    _no_nack(pilot)
    print(f"identity beyond the token checked in {time.monotonic() - t0:.0f} s")


# -- upgrade of the sidecar package and rotate_certs.yml under mesh traffic (issue 14) ---------------------------

UPGRADE_TO = "1.31.1"  # tools/pkg/istio-sidecar/build.sh with ISTIO_SIDECAR_PACKAGE_VERSION: same binaries, new version
_LOAD_STOP = "/tmp/mesh-load.stop"
# Mesh calls from the caller as fast as one at a time goes, each on a new connection (the name resolved by the
# agent's DNS proxy every time), until the stop file appears (at most 300 s): "<epoch> <status> <first body line>".
_LOAD = f"""
import http.client, os, time
t0 = time.time()
while not os.path.exists({_LOAD_STOP!r}) and time.time() - t0 < 300:
    at = time.time()
    try:
        conn = http.client.HTTPConnection({NAME!r}, {PORT}, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        line = "%d %s" % (resp.status, (resp.read().decode(errors="replace").splitlines() or [""])[0])
        conn.close()
    except Exception as exc:
        line = "000 %s: %s" % (type(exc).__name__, exc)
    print("%.3f %s" % (at, line), flush=True)
    time.sleep(0.01)
"""


def _package_dir(version: str) -> Path:
    build = subprocess.run([str(ROOT / "tools/pkg/istio-sidecar/build.sh"), "--print-dir"], capture_output=True,
                           text=True, check=False, timeout=1200,
                           env={**os.environ, "ISTIO_SIDECAR_PACKAGE_VERSION": version})
    assert build.returncode == 0, build.stderr
    return Path(build.stdout.strip())


def _stopped_started(hosts) -> dict[str, tuple[float, float]]:
    """When istio.service last stopped and last started on each host (epoch seconds; the lab VMs share the
    machine's clock), (0, start) when it never stopped."""
    out = on_hosts("for p in InactiveEnterTimestamp ActiveEnterTimestamp; do "
                   "t=$(systemctl show --timestamp=us istio -p $p --value); "
                   "if [ -n \"$t\" ]; then date -d \"$t\" +%s.%N; else echo 0; fi; done", ",".join(hosts))
    return {h: tuple(float(v) for v in out[h].split()) for h in out}


def test_sidecar_upgrade_and_rotate_certs_under_mesh_traffic_fail_no_request(lab, traffic):
    """The role's upgrade path on both package formats while VM A calls the mesh name without pause: istio-sidecar
    1.31.0 -> 1.31.1 on the other VMs (a Debian VM and the EL 9 emulation, one ``sidecar.yml`` run), then
    ``rotate_certs.yml`` on every VM. The 1.31.1 package carries the same pilot-agent and Envoy as 1.31.0 (build.sh
    changes the package version only): what is proven is the role's path, not a change of Istio: the package is
    replaced, istio.service restarts once, one VM at a time (pilot-agent drains its Envoy), the certificates in
    /etc/certs are kept and the VM rejoins the mesh; the caller sees no failed request."""
    pilot = lab["pilot"]
    root = pilot.root_cert(NS)
    upgraded = sorted(OTHERS)  # fm-deb-2 (.deb) and fm-el-1 (.rpm)
    pkg_dir = _package_dir(UPGRADE_TO)
    sums = dict(reversed(line.split()) for line in (pkg_dir / "SHA256SUMS").read_text().splitlines())
    server = http.server.ThreadingHTTPServer((GATEWAY, 0), functools.partial(_Quiet, directory=str(pkg_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _wait_calls("200")
    before = _stopped_started(HOSTS)
    calls: dict[str, str] = {}
    load = threading.Thread(target=lambda: calls.update(on_hosts(
        f"rm -f {_LOAD_STOP}; echo {base64.b64encode(_LOAD.encode()).decode()} | base64 -d > /tmp/mesh-load.py; "
        f"python3 /tmp/mesh-load.py; rm -f /tmp/mesh-load.py {_LOAD_STOP}", CALLER)), daemon=True)
    t0 = time.time()
    load.start()
    runs = {}
    # rotate_certs.yml on every VM meanwhile (it changes nothing the upgrade does: the collection's certificates in
    # their own directory, and the collection's Envoy)
    rotate = threading.Thread(target=lambda: runs.update(rotated=playbook(
        "rotate_certs.yml", *extra(**lab["vars"], rotate_certs_hosts="web", workload_certs_lifetime="7d"))))
    try:
        rotate.start()
        up = sidecar(lab, "--limit", ",".join(upgraded), istio_sidecar_version=UPGRADE_TO,
                     istio_sidecar_package_base_url=f"http://{GATEWAY}:{server.server_address[1]}",
                     istio_sidecar_package_sha256={"deb": sums["deb/istio-sidecar.deb"],
                                                   "rpm": sums["rpm/istio-sidecar.rpm"]})
        rotate.join(300)
        rotated = runs["rotated"]
        print(f"rotate_certs.yml in {rotated.seconds:.0f} s")
        t_end = time.time()
    finally:
        on_hosts(f"touch {_LOAD_STOP}", CALLER)
        load.join(60)
        server.shutdown()
    after = _stopped_started(HOSTS)
    lines = [line.split(" ", 2) for line in calls.get(CALLER, "").splitlines() if line[:1].isdigit()]
    assert len(lines) > 100, calls
    failed = [line for line in lines if line[1] != "200"]
    answered = {h: [float(at) for at, _code, body in lines if body.strip() == f"hello from {h}"] for h in upgraded}
    print(f"mesh calls during the upgrade and rotate_certs.yml: {len(lines)} in "
          f"{float(lines[-1][0]) - float(lines[0][0]):.0f} s, failed {len(failed)}: {failed[:20]}; "
          f"istio.service stopped/started {after}")
    assert up.rc == 0, up.out[-5000:]
    changed = changed_tasks(up.out)
    assert f"fleetmesh.envoy.istio_sidecar : Install the package file with apt: {upgraded[0]}" in changed, changed
    assert f"fleetmesh.envoy.istio_sidecar : Install the package file with dnf: {upgraded[1]}" in changed, changed
    assert sorted(t for t in changed if t.startswith("fleetmesh.envoy.istio_sidecar : Restart istio.service")) == [
        f"fleetmesh.envoy.istio_sidecar : Restart istio.service: {h}" for h in upgraded], changed
    assert up.out.count("istio.service is ready (:15021/healthz/ready returned 200)") == len(upgraded), up.out[-3000:]
    assert rotated.rc == 0, rotated.out[-5000:]
    for host in upgraded:  # restarted once by the upgrade: stopped, then started, both during the run
        assert t0 < after[host][0] < after[host][1] < t_end, (host, before[host], after[host])
    first, second = sorted(upgraded, key=lambda h: after[h][0])  # one at a time: the second stops after the first
    assert after[second][0] > after[first][1], after              # has started again (and was ready: the handler)
    assert after[second][0] - after[first][1] < 30, after  # the handler saw the first one ready, not its timeout
    assert after[CALLER] == before[CALLER]  # rotate_certs.yml does not restart the sidecar
    # The caller's view: no failed request, before, during and after both changes; the upgraded VMs answered
    # before their restart and again after it.
    assert not failed, failed[:20]
    assert float(lines[0][0]) < min(after[h][0] for h in upgraded) and float(lines[-1][0]) > t_end - 5, (
        lines[0], lines[-1], after, t_end)  # the calls span both runs
    for host in upgraded:
        stopped, started = after[host]
        assert any(at < stopped for at in answered[host]), (host, stopped, answered[host][:5])
        assert any(at > started for at in answered[host]), (host, started, answered[host][-5:])
    # Upgraded on both package formats; the caller keeps 1.31.0.
    versions = on_hosts("dpkg-query -W -f '${Version}' istio-sidecar 2>/dev/null || "
                        "rpm -q --queryformat '%{VERSION}-%{RELEASE}' istio-sidecar")
    assert versions[CALLER].startswith("1.31.0-"), versions
    assert all(versions[h].startswith(f"{UPGRADE_TO}-") for h in upgraded), versions
    # The certificates were kept: /etc/certs holds istiod's certificate (not the collection's copy), held by Envoy.
    # rotate_certs.yml wrote the collection's new certificate beside it, in the directory the sidecar copies from.
    found = on_hosts(f"{_CERT_NOW}; echo src $(base64 -w0 {CERTS_SRC}/cert-chain.pem); "
                     "stat -c 'owner %U' /etc/certs/cert-chain.pem")
    for host in HOSTS:
        leaf = _held(found[host], host, root)
        source = dict(line.split(" ", 1) for line in found[host].splitlines() if line.startswith(("src ", "owner ")))
        collection = _leaf(source["src"])
        assert collection.not_valid_after_utc - collection.not_valid_before_utc <= datetime.timedelta(days=7, hours=1)
        assert leaf.serial_number != collection.serial_number, host
        assert source["owner"] == "istio-proxy", (host, source["owner"])
    kubeapi._wait("every VM's proxy synced with istiod after the upgrade", lambda: _synced(pilot), 30)
    _no_nack(pilot)
    print(f"upgrade and rotate_certs.yml under traffic checked in {time.time() - t0:.0f} s")


# -- WorkloadGroup auto-registration by istiod, with its health checks (issue 14, item 7) ---------------------------

AUTO_GROUP = "istio.io/autoRegistrationGroup"       # istiod's annotation on the entries it creates from a group
HEALTH_CHECKED = "proxy.istio.io/health-checks-enabled"  # ... when the agent's proxy config has a readinessProbe
READY_FILE = "/srv/lab-app/ready"  # the lab app (python3 -m http.server) answers /ready 200 while it is there, else 404
AUTO_PROBE = {"httpGet": {"path": "/ready", "port": PORT, "host": "127.0.0.1"},  # the app listens on loopback
              "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 1}
UNREADY = "fm-el-1"  # the EL 9 emulation's app fails its readiness probe for a while
LAB_NETWORK = "lab-network"  # fleetmesh_network (inventories/lab/group_vars/all.yml), ISTIO_META_NETWORK on the VMs
# istiod names an auto-registered entry <group>-<address>[-<network>] (pilot/pkg/autoregistration/controller.go).
AUTO_ENTRIES = {f"{SA}-{LAB_HOSTS[host]}-{LAB_NETWORK}" for host in HOSTS}


def _auto_entries(api) -> dict[str, dict]:
    """address -> the WorkloadEntry istiod auto-registered for it."""
    status, body = api.request("GET", f"/apis/networking.istio.io/v1/namespaces/{NS}/workloadentries")
    assert status == 200, body
    return {item["spec"].get("address"): item for item in body["items"]
            if (item["metadata"].get("annotations") or {}).get(AUTO_GROUP)}


def _health(entry: dict) -> str | None:
    """The status ("True"/"False") of the Healthy condition istiod keeps on an entry, None before the first report."""
    for condition in (entry.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Healthy":
            return condition.get("status")
    return None


def test_workload_group_auto_registration_and_health_checks(lab, traffic):
    """The VMs switch to auto-registration on the running lab, in one ansible-playbook run of ``register.yml`` and
    ``sidecar.yml`` (``--skip-tags istio_sidecar_install``: the package stays as the upgrade left it) with
    mesh_registration_workload_group, the WorkloadGroup's probe, istio_sidecar_auto_register and the same probe as
    the VMs' readinessProbe. The registration writes the WorkloadGroup and removes its own WorkloadEntries; istiod
    creates one per VM (Debian and the EL 9 emulation) from the group when its sidecar reconnects, health-checked,
    and marks each healthy from its agent's probe (httpGet 127.0.0.1:8080/ready). When the EL VM's app fails the
    probe, istiod sets that entry's Healthy condition False and VM A's calls by name keep succeeding, served by the
    healthy VMs only; when the app answers again the entry is healthy and gets calls again. The VMs stay
    auto-registered: offboarding removes the group, and istiod the entries once the agents have gone."""
    api = lab["api"]
    assert UNREADY in OTHERS
    t0 = time.monotonic()
    on_hosts(f"echo ready > {READY_FILE} && chmod 0644 {READY_FILE}")
    switch = {"mesh_registration_workload_group": True, "mesh_registration_workload_group_probe": AUTO_PROBE,
              "istio_sidecar_auto_register": True, "istio_sidecar_readiness_probe": AUTO_PROBE,
              # The restart handler restarts one host at a time and waits up to this for :15021 on each; in the
              # whole-module run it waited the full 60 s on every VM (219 s for this run, 22 s in a -k run) while
              # the agents logged readiness within 1 s. istiod's Healthy condition below is the readiness check.
              "istio_sidecar_ready_timeout": 10}
    run = playbook("register.yml", "playbooks/sidecar.yml", "-e", "target=web", "--skip-tags", "istio_sidecar_install",
                   *extra(**{**lab["vars"], **switch}))
    assert run.rc == 0, run.out[-3000:]
    lab["state"]["auto_registered"] = True
    print(f"register.yml + sidecar.yml (auto-registration) in {run.seconds:.0f} s")
    assert not workload_entries(api) & WORKLOAD_ENTRIES  # the registration's own entries are gone
    status, group = api.request("GET", f"/apis/networking.istio.io/v1/namespaces/{NS}/workloadgroups/{SA}")
    assert status == 200, group
    assert group["spec"]["probe"] == AUTO_PROBE and group["spec"]["template"]["serviceAccount"] == SA
    assert on_hosts("grep -c '^ISTIO_META_AUTO_REGISTER_GROUP=.*web' /var/lib/istio/envoy/cluster.env") == {
        host: "1" for host in HOSTS}

    host_of = {LAB_HOSTS[host]: host for host in HOSTS}
    try:
        kubeapi._wait("istiod auto-registers every VM and marks it healthy", lambda: (
            set(entries := _auto_entries(api)) == set(host_of)
            and all(_health(e) == "True" for e in entries.values())), 60)
    except Exception as exc:
        raise AssertionError(f"{exc}; {json.dumps(_auto_entries(api), indent=1)[:3000]}") from exc
    for address, entry in _auto_entries(api).items():
        meta = entry["metadata"]
        assert meta["name"] == f"{SA}-{address}-{LAB_NETWORK}", (host_of[address], meta["name"])
        assert entry["spec"]["network"] == LAB_NETWORK, entry["spec"]
        assert meta["annotations"][AUTO_GROUP] == SA and meta["annotations"].get(HEALTH_CHECKED) == "true", meta
        assert meta["ownerReferences"][0]["kind"] == "WorkloadGroup", meta
        assert entry["spec"]["serviceAccount"] == SA and entry["spec"]["labels"]["app"] == "web", entry["spec"]

    calls: list[tuple[str, str]] = []

    def served_by(wanted: set[str], timeout: float = 45.0) -> None:
        """Call until one round of 12 calls is served by exactly ``wanted`` (each call answers with its VM's name)."""
        deadline = time.monotonic() + timeout
        while True:
            batch = _calls(12)
            calls.extend(batch)
            if {body.removeprefix("hello from ").strip() for _code, body in batch} == wanted:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{CALLER} -> {URL}: not served by {sorted(wanted)} within {timeout} s; "
                                     f"last: {batch}")
            time.sleep(0.5)

    served_by(set(HOSTS))
    on_hosts(f"mv {READY_FILE} {READY_FILE}.off", UNREADY)
    try:
        t1 = time.monotonic()
        kubeapi._wait(f"istiod marks {UNREADY} unhealthy", lambda: _health(
            _auto_entries(api)[LAB_HOSTS[UNREADY]]) == "False", 30)
        print(f"{UNREADY} unhealthy {time.monotonic() - t1:.1f} s after its app failed the probe")
        assert {_health(e) for a, e in _auto_entries(api).items() if host_of[a] != UNREADY} == {"True"}
        served_by(set(HOSTS) - {UNREADY})
        rounds = _calls(12)  # and it stays out
        calls.extend(rounds)
        assert all(not body.endswith(UNREADY) for _code, body in rounds), rounds
    finally:
        on_hosts(f"mv {READY_FILE}.off {READY_FILE}", UNREADY)
    kubeapi._wait(f"istiod marks {UNREADY} healthy again", lambda: _health(
        _auto_entries(api)[LAB_HOSTS[UNREADY]]) == "True", 30)
    served_by(set(HOSTS))
    assert all(code == "200" for code, _body in calls), [c for c in calls if c[0] != "200"]
    _no_nack(lab["pilot"])
    print(f"auto-registration and health checks checked in {time.monotonic() - t0:.0f} s ({len(calls)} calls)")


# -- 5. offboarded ---------------------------------------------------------------------------------------------------


def test_offboard_removes_the_workload_entries_istiod_forgets_the_vms_and_no_trace_is_left(lab, onboarded):
    api, pilot = lab["api"], lab["pilot"]
    # The registration's entries, or istiod's after test_workload_group_auto_registration_and_health_checks.
    entries = AUTO_ENTRIES if lab["state"].get("auto_registered") else WORKLOAD_ENTRIES
    assert workload_entries(api) == entries

    checked = offboard(lab, "--check", "--diff")
    assert checked.rc == 0, checked.out[-3000:]
    # What the registration would delete (counts of "absent run of registration set all: {...}").
    assert re.search(r'deleted\W{1,4}[1-9]', checked.out), checked.out[-3000:]
    assert workload_entries(api) == entries  # check mode: a dry run in the cluster
    assert on_hosts("systemctl is-active istio") == {host: "active" for host in HOSTS}

    run = offboard(lab)
    assert run.rc == 0, run.out[-3000:]
    lab["state"]["offboarded"] = True
    # The registration deletes its own entries; istiod deletes those it auto-registered once their agents have been
    # gone for its grace period (PILOT_WORKLOAD_ENTRY_GRACE_PERIOD, 10 s).
    kubeapi._wait("no WorkloadEntry left", lambda: workload_entries(api) == set(), 30)
    on_hosts(f"rm -f {READY_FILE}")

    def forgotten():
        status, body = pilot.debug("/debug/syncz")
        listed = {p.get("proxy") for p in json.loads(body or "[]")} if status == 200 else PROXY_IDS
        endpoints = pilot.debug("/debug/endpointz")[1]
        return (not listed & PROXY_IDS and not PROXY_IDS & set(_connections(pilot))
                and not any(LAB_HOSTS[h] in endpoints for h in HOSTS)
                and not set(LAB_HOSTS.values()) & set(lab["gateway"].peers(15012)))  # nor does the gateway

    t0 = time.monotonic()
    try:
        kubeapi._wait("istiod lists none of the VMs (/debug/syncz, /debug/connections, /debug/endpointz) and "
                      "the east-west gateway holds no connection from them", forgotten, 30)
        print(f"istiod forgot the VMs {time.monotonic() - t0:.1f} s after the offboarding")
    except Exception as exc:
        raise AssertionError(f"{exc}; /debug/syncz: {pilot.debug('/debug/syncz')[1][:2000]}; /debug/connections: "
                             f"{pilot.debug('/debug/connections')[1][:2000]}; east-west gateway peers on 15012: "
                             f"{lab['gateway'].peers(15012)}") from exc

    assert on_hosts(TRACES) == lab["before"]
    assert on_hosts(CERTS) == {host: "" for host in HOSTS}
    assert all(MARKER not in text for text in on_hosts("cat /etc/hosts").values())
    again = offboard(lab)
    assert again.rc == 0 and again.changed() == 0, changed_tasks(again.out)
