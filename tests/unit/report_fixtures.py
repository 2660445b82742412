"""What status.yml reads on a fleet of seven hosts with every problem the report knows, and helpers to check the
page it writes (also used by the 7-VM lab test)."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / 'docs' / 'fleet-report.schema.json').read_text())


def envoy(version: str = '1.40.0', state: str = 'LIVE') -> dict:
    return {'changed': False, 'server_info': {'version': version, 'state': state, 'uptime_seconds': 120,
                                              'hot_restart_epoch': 0}}


def cert(days: float | None = 29.5) -> dict:
    if days is None:
        return {'changed': False, 'exists': False, 'path': '/etc/certs/cert-chain.pem'}
    return {'changed': False, 'exists': True, 'days_left': days, 'not_after': '2027-01-04T10:00:00Z'}


def read(host: str, address: str, **kw) -> dict:
    out = {'host': host, 'address': address, 'service': 'web', 'namespace': 'fleet-lab', 'unreachable': False,
           'distribution': 'Debian', 'distribution_version': '12', 'envoy': envoy(), 'cert': cert(),
           'health': {'status': 200}}
    out.update(kw)
    return out


SKIPPED = {'changed': False, 'skipped': True, 'skip_reason': 'Conditional result was False'}

# fm-deb-1..5 and fm-el-1..2, as lab.sh names seven VMs; one of each problem
READS = [
    read('fm-deb-1', '10.213.77.11'),
    read('fm-deb-2', '10.213.77.12', envoy=envoy('1.39.3')),                          # version drift (a canary)
    read('fm-deb-3', '10.213.77.13', cert=cert(0.08)),                                # certificate near expiry
    read('fm-deb-4', '10.213.77.14', unreachable=True, distribution='', distribution_version='',
         envoy=SKIPPED, cert=SKIPPED, health=SKIPPED),                                # unreachable (stopped)
    read('fm-deb-5', '10.213.77.15', envoy={'changed': False, 'failed': False, 'msg': 'connection refused'},
         health={'status': -1}),                                                      # Envoy down
    read('fm-el-1', '10.213.77.51', distribution='AlmaLinux', distribution_version='9.4'),
    read('fm-el-2', '10.213.77.52', distribution='AlmaLinux', distribution_version='9.4'),  # not registered
]


def slice_of(*addresses: str, not_ready: tuple[str, ...] = ()) -> dict:
    return {'kind': 'EndpointSlice', 'metadata': {'namespace': 'fleet-lab', 'name': 'web-vms'},
            'endpoints': [{'addresses': [a], 'conditions': {'ready': a not in not_ready}} for a in addresses]}


OBJECTS = [slice_of('10.213.77.11', '10.213.77.12', '10.213.77.13', '10.213.77.14', '10.213.77.15', '10.213.77.51')]
EXPECTED_PROBLEMS = {'fm-deb-4': 'unreachable', 'fm-deb-5': 'envoy_down', 'fm-el-2': 'not_registered',
                     'fm-deb-3': 'cert_expiring', 'fm-deb-2': 'version_drift'}


class PageParser(HTMLParser):
    """The hosts table's rows (in order), the summary cards' counts, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.rows: dict[str, list[tuple[str, str]]] = {}
        self.counts: dict[str, int] = {}
        self.card: str | None = None
        self.external: list[str] = []
        self.scripts = 0
        self.svgs: list[str] = []
        self._in_b = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'table':
            self.table = a.get('id')
        if tag == 'tr' and self.table and 'data-host' in a:
            self.rows.setdefault(self.table, []).append((a['data-host'], a.get('data-problems', '')))
        if tag == 'div' and 'data-count' in a:
            self.card = a['data-count']
        self._in_b = tag == 'b' and self.card is not None
        if tag == 'script':
            self.scripts += 1
        if tag == 'svg':
            self.svgs.append(a.get('id', ''))
        for key in ('src', 'href', 'action', 'srcset'):
            if key in a and a[key] and not a[key].startswith(('#', 'data:')):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == 'table':
            self.table = None
        if tag == 'div':
            self.card = None

    def handle_data(self, data):
        if self._in_b and self.card is not None and data.strip():
            self.counts[self.card] = int(data.strip())
            self._in_b = False


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def chromium(binary: str, page: Path, screenshot: Path) -> str:
    """Open the page in headless Chromium, offline: take a screenshot and return the DOM it built."""
    common = [binary, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-extensions',
              '--disable-background-networking', '--disable-sync', '--disable-component-update',
              '--disable-default-apps', f'--user-data-dir={screenshot.parent / "chromium-profile"}',
              '--proxy-server=127.0.0.1:9', '--hide-scrollbars']
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = subprocess.run([*common, '--window-size=1280,1800', f'--screenshot={screenshot}', page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-3000:]
    dom = subprocess.run([*common, '--dump-dom', page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert dom.returncode == 0 and '<html' in dom.stdout, dom.stderr[-3000:]
    return dom.stdout


def check_page_against_json(dom: str, report: dict) -> PageParser:
    """Problem hosts first in every table, and the page's counts are the JSON's."""
    page = parse_page(dom)
    order = [h for h, _p in page.rows['hosts']]
    assert order == [r['host'] for r in report['hosts']], (order, report['hosts'])
    flags = [bool(p) for _h, p in page.rows['hosts']]
    assert flags == sorted(flags, reverse=True), ('problem hosts must come first', page.rows['hosts'])
    problem_hosts = [r['host'] for r in report['hosts'] if r['problems']]
    if problem_hosts:
        assert [h for h, _p in page.rows['problems']] == problem_hosts
    summary = report['summary']
    expected = {'hosts': summary['hosts'], 'problem_hosts': summary['problem_hosts'], **summary['problems']}
    assert page.counts == expected, (page.counts, expected)
    for host, kinds in page.rows['hosts']:
        row = next(r for r in report['hosts'] if r['host'] == host)
        assert kinds.split() == [p['kind'] for p in row['problems']], (host, kinds, row['problems'])
    assert page.scripts == 0 and page.external == [], (page.scripts, page.external)
    assert page.svgs == ['version-chart', 'cert-timeline'], page.svgs
    assert not re.search(r'(?i)\b(?:https?:)?//[a-z0-9.-]+/', dom.replace('http://www.w3.org/2000/svg', '')), \
        'the page must not reference the network'
    return page
