"""A real Prometheus (Debian's prometheus package) on the controller scrapes the lab VMs' Envoys.

Issue 16 §1-3: every VM's Envoy serves /stats/prometheus (and nothing else) on its stats listener;
playbooks/prometheus_targets.yml writes the file_sd targets from the inventory; a Prometheus server on loopback,
with the shipped scrape config and alerting rules, sees every VM up with the inventory's labels, and the
version-drift alert fires while one VM of the service runs another Envoy version (a canary) and clears after, and
the certificate-expiry alert fires after rotate_certs.yml issues certificates with a short lifetime (Envoy serves
them on a TLS listener) and clears after a rotation with the default lifetime."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import need
from tests.integration.labutil import LAB_HOSTS, ROOT, extra, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab]

RULES = ROOT / 'docs' / 'prometheus' / 'fleetmesh-envoy.rules.yml'
SCRAPE = ROOT / 'docs' / 'prometheus' / 'scrape.yml'
OS_FAMILY = {'fm-deb-1': 'Debian', 'fm-deb-2': 'Debian', 'fm-el-1': 'RedHat'}
CANARY = 'fm-deb-1'
# The lab's listener and a TLS one with the workload certificates, so that Envoy loads them (its
# envoy_server_days_until_first_cert_expiring gauge is what the certificate-expiry alert watches).
TLS_LISTENERS = {'envoy_listeners': [
    {'name': 'ingress', 'address': '0.0.0.0', 'port': 10000, 'routes': [{'prefix': '/', 'cluster': 'local_app'}]},
    {'name': 'mtls_in', 'address': '0.0.0.0', 'port': 15443, 'tls': {'cert_dir': '/etc/certs'},
     'routes': [{'prefix': '/', 'direct_response': {'status': 200, 'body': 'ok'}}]}]}
SHORT_FOR = ('FleetmeshEnvoyVersionDrift', 'FleetmeshCertificateExpiringSoon')


def _open(url: str, timeout: float = 5.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Prometheus:
    """The prometheus server binary on 127.0.0.1 with a temp config and data dir."""

    def __init__(self, binary: str, workdir: Path, targets: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        # the shipped scrape config, with the test's paths and short intervals
        config = yaml.safe_load(SCRAPE.read_text())
        job = config['scrape_configs'][0]
        job['file_sd_configs'][0]['files'] = [str(targets)]
        job['file_sd_configs'][0]['refresh_interval'] = '2s'
        job['scrape_interval'] = '2s'
        job['scrape_timeout'] = '2s'
        # the shipped rules, with the version-drift alert's 30 minutes (certificate expiry: 5) shortened so the test
        # can watch them
        rules = yaml.safe_load(RULES.read_text())
        for group in rules['groups']:
            group['interval'] = '2s'
            for rule in group['rules']:
                if rule['alert'] in SHORT_FOR:
                    rule['for'] = '4s'
        (workdir / 'rules.yml').write_text(yaml.safe_dump(rules))
        config['rule_files'] = [str(workdir / 'rules.yml')]
        config['global'] = {'scrape_interval': '2s', 'evaluation_interval': '2s'}
        (workdir / 'prometheus.yml').write_text(yaml.safe_dump(config))
        self.log_path = workdir / 'prometheus.log'
        self.process: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                [self.binary, f'--config.file={self.workdir / "prometheus.yml"}',
                 f'--storage.tsdb.path={self.workdir / "data"}', f'--web.listen-address=127.0.0.1:{self.port}',
                 '--storage.tsdb.retention.time=1h', '--log.level=warn'],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f'prometheus exited: {self.log()}'
            if _open(f'http://127.0.0.1:{self.port}/-/ready', timeout=2)[0] == 200:
                return self
            time.sleep(0.5)
        raise AssertionError(f'prometheus not ready after 60s: {self.log()}')

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')[-4000:]

    def query(self, expr: str) -> list[dict]:
        status, body = _open(f'http://127.0.0.1:{self.port}/api/v1/query?' + urllib.parse.urlencode({'query': expr}))
        assert status == 200, (status, body)
        data = json.loads(body)
        assert data['status'] == 'success', data
        return data['data']['result']

    def wait_for(self, expr: str, check, seconds: float = 90) -> list[dict]:
        deadline = time.monotonic() + seconds
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(1)
        raise AssertionError(f'{expr}: not as expected after {seconds}s: {result}\n{self.log()}')

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def rotate(ca: Path, **kw) -> None:
    """rotate_certs.yml on the lab with a lab CA; Envoy instances that use the certificates are hot-restarted."""
    run = playbook('rotate_certs.yml', *extra(rotate_certs_hosts='lab', workload_certs_lab_ca_dir=str(ca),
                                              workload_certs_sans=['{{ inventory_hostname }}'], **TLS_LISTENERS,
                                              **kw))
    assert run.rc == 0, run.out[-5000:]


@pytest.fixture(scope='module')
def envoy_lab(tmp_path_factory):
    need('podman', "run 'make setup' (apt-get install podman runc)")
    lab_up(3)
    app = playbook('lab_app.yml')
    assert app.rc == 0, app.out[-3000:]
    ca = tmp_path_factory.mktemp('lab-ca') / 'ca'
    rotate(ca)  # certificates of the default lifetime (30 days) first: the TLS listener needs them
    run = playbook('envoy.yml', *extra(**TLS_LISTENERS))
    assert run.rc == 0, run.out[-5000:]
    yield ca
    playbook('envoy.yml')  # the lab's own listeners again


@pytest.fixture(scope='module')
def targets(envoy_lab, tmp_path_factory):
    directory = tmp_path_factory.mktemp('file_sd')
    run = playbook('prometheus_targets.yml', *extra(prometheus_targets_dir=str(directory)))
    assert run.rc == 0, run.out[-4000:]
    return directory, run


@pytest.fixture(scope='module')
def prometheus(targets, tmp_path_factory):
    binary = need('prometheus', "run 'make setup' (apt-get install prometheus)")
    server = Prometheus(binary, tmp_path_factory.mktemp('prometheus'), targets[0] / 'fleetmesh_envoy.yml')
    server.start()
    yield server
    server.stop()


def test_stats_listener_serves_only_prometheus_metrics(envoy_lab):
    for host, ip in LAB_HOSTS.items():
        status, body = _open(f'http://{ip}:15090/stats/prometheus')
        assert status == 200, (host, status, body[:300])
        assert '# TYPE envoy_server_live gauge' in body and 'envoy_server_live{} 1' in body, host
        for path in ('/config_dump', '/quitquitquit', '/stats', '/server_info', '/healthcheck/fail'):
            assert _open(f'http://{ip}:15090{path}')[0] == 404, (host, path)
        # the admin interface itself is not reachable from outside the VM
        assert _open(f'http://{ip}:9901/server_info', timeout=2)[0] == 0, host
    out = on_hosts("ss -Hltn '( sport = :9901 or sport = :15090 )' | awk '{print $4}' | sort -u | tr '\\n' ' '")
    for host in LAB_HOSTS:
        assert out[host].split() == ['0.0.0.0:15090', '127.0.0.1:9901'], (host, out[host])


def test_file_sd_targets_from_the_inventory(targets):
    directory, run = targets
    groups = yaml.safe_load((directory / 'fleetmesh_envoy.yml').read_text())
    assert groups == [{'targets': [f'{LAB_HOSTS[host]}:15090'],
                       'labels': {'instance': host, 'service': 'web', 'namespace': 'fleet-lab',
                                  'envoy_version': '1.40.0', 'os_family': OS_FAMILY[host]}}
                      for host in sorted(LAB_HOSTS)]
    assert run.recap['localhost']['changed'] >= 1, run.out[-3000:]  # the file, on the controller
    assert all(run.recap[host]['changed'] == 0 for host in LAB_HOSTS)


def test_file_sd_targets_second_run_and_check_mode_change_nothing(targets):
    directory, _run = targets
    before = (directory / 'fleetmesh_envoy.yml').read_text()
    for args in ((), ('--check', '--diff')):
        again = playbook('prometheus_targets.yml', *extra(prometheus_targets_dir=str(directory)), *args)
        assert again.rc == 0, again.out[-3000:]
        assert again.changed() == 0, again.out[-3000:]
    assert (directory / 'fleetmesh_envoy.yml').read_text() == before


def test_file_sd_targets_refuse_a_stats_port_clash_before_writing(tmp_path, envoy_lab):
    run = playbook('prometheus_targets.yml', *extra(prometheus_targets_dir=str(tmp_path), envoy_stats_port=10000))
    assert run.rc != 0
    assert 'envoy_stats_port: 10000 is the port of envoy_listeners[0] (ingress on 0.0.0.0)' in run.out, run.out[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_prometheus_scrapes_every_vm(prometheus):
    result = prometheus.wait_for('up{job="fleetmesh-envoy"}',
                                 lambda r: len(r) == len(LAB_HOSTS) and all(s['value'][1] == '1' for s in r))
    seen = {s['metric']['instance']: s['metric'] for s in result}
    assert set(seen) == set(LAB_HOSTS)
    for host, labels in seen.items():
        assert labels['service'] == 'web' and labels['namespace'] == 'fleet-lab', labels
        assert labels['os_family'] == OS_FAMILY[host] and labels['envoy_version'] == '1.40.0', labels
    # Envoy's own metrics arrive with the inventory's labels
    live = prometheus.wait_for('envoy_server_live{job="fleetmesh-envoy"}', lambda r: len(r) == len(LAB_HOSTS))
    assert {s['metric']['instance'] for s in live} == set(LAB_HOSTS)
    assert prometheus.query('ALERTS{alertname="FleetmeshEnvoyNotScraped"}') == []


def _drift_alert(prometheus: Prometheus) -> list[dict]:
    return prometheus.query('ALERTS{alertname="FleetmeshEnvoyVersionDrift", alertstate="firing"}')


def test_version_drift_alert_fires_during_a_canary_and_clears_after(prometheus):
    prometheus.wait_for('count(count_values("v", envoy_server_version{job="fleetmesh-envoy"}))',
                        lambda r: r and r[0]['value'][1] == '1')
    time.sleep(8)
    assert _drift_alert(prometheus) == [], 'drift alert fires with one version'
    try:
        canary = playbook('envoy.yml', *extra(target=CANARY, envoy_version='1.39.3', **TLS_LISTENERS))
        assert canary.rc == 0, canary.out[-4000:]
        firing = prometheus.wait_for('ALERTS{alertname="FleetmeshEnvoyVersionDrift", alertstate="firing"}',
                                     lambda r: len(r) == 1, seconds=120)
        assert firing[0]['metric']['service'] == 'web' and firing[0]['metric']['namespace'] == 'fleet-lab'
        versions = prometheus.query('count by (service) (count_values by (service) ("v", envoy_server_version))')
        assert versions[0]['value'][1] == '2'
    finally:
        rollout = playbook('envoy.yml', *extra(target=CANARY, envoy_version='1.40.0', **TLS_LISTENERS))
    assert rollout.rc == 0, rollout.out[-4000:]
    prometheus.wait_for('ALERTS{alertname="FleetmeshEnvoyVersionDrift"}', lambda r: r == [], seconds=120)
    # every VM still scraped after the restarts
    prometheus.wait_for('up{job="fleetmesh-envoy"} == 1', lambda r: len(r) == len(LAB_HOSTS))


def test_certificate_expiry_alert_fires_after_a_short_lifetime_and_clears_after_rotation(prometheus, envoy_lab):
    days = 'envoy_server_days_until_first_cert_expiring{job="fleetmesh-envoy"}'
    prometheus.wait_for(days, lambda r: len(r) == len(LAB_HOSTS) and all(float(s['value'][1]) >= 29 for s in r))
    assert prometheus.query('ALERTS{alertname="FleetmeshCertificateExpiringSoon"}') == []
    try:
        rotate(envoy_lab, workload_certs_lifetime='2h')  # re-issued (they outlive 2 h), Envoy hot-restarted
        firing = prometheus.wait_for('ALERTS{alertname="FleetmeshCertificateExpiringSoon", alertstate="firing"}',
                                     lambda r: len(r) == len(LAB_HOSTS), seconds=120)
        assert {s['metric']['instance'] for s in firing} == set(LAB_HOSTS)
        assert all(s['metric']['service'] == 'web' for s in firing)
    finally:
        rotate(envoy_lab)  # the default lifetime: 2 h left is near expiry, so re-issued
    prometheus.wait_for('ALERTS{alertname="FleetmeshCertificateExpiringSoon"}', lambda r: r == [], seconds=120)
    prometheus.wait_for(days, lambda r: len(r) == len(LAB_HOSTS) and all(float(s['value'][1]) >= 29 for s in r))
