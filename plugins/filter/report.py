# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The fleet report: rows from what status.yml and cert_report.yml read, the report data (problems first, per
service), and its renderings (a terminal table that fits 100 columns, a self-contained HTML page with inline SVG,
Markdown). Documented in fleet_status.yml, fleet_render.yml, cert_report.yml and fleet_report.yml beside this file;
the JSON schema of the report is docs/fleet-report.schema.json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import html
import re
from collections import Counter
from typing import Any

from ansible.errors import AnsibleFilterError

FORMATS = ('text', 'markdown', 'html')
RENDERINGS = ('table', 'html', 'markdown')
SCHEMA = 'fleetmesh.envoy/fleet-report/v1'
# Problem kinds, most severe first: the order of the report's problem list and of its hosts.
PROBLEM_KINDS = ('unreachable', 'envoy_down', 'not_registered', 'cert_expiring', 'version_drift')
PROBLEM_TITLES = {'unreachable': 'unreachable', 'envoy_down': 'Envoy down', 'not_registered': 'not registered',
                  'cert_expiring': 'certificate near expiry', 'version_drift': 'version drift'}
# The terminal table: Ansible's debug output indents each line by 8, so 92 characters fit a 100-column terminal.
TABLE_WIDTH = 92
Row = dict[str, Any]


def _fail(name: str, value: Any, allowed: str) -> None:
    raise AnsibleFilterError('%s: %r is not allowed; allowed: %s' % (name, value, allowed))


def _cell(value: Any) -> str:
    if value is None or value == '':
        return '-'
    return str(value)


def fleet_report(rows: list[Row], columns: list[str], fmt: str = 'text') -> str:
    """Render a list of dicts as a text table, a Markdown table or an HTML table."""
    if fmt not in FORMATS:
        raise AnsibleFilterError('fleet_report: format %r is not allowed; allowed: %s' % (fmt, ', '.join(FORMATS)))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AnsibleFilterError('fleet_report: rows must be a list of dicts')
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    if fmt == 'markdown':
        out = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _column in columns) + '|']
        out += ['| ' + ' | '.join(c.replace('|', '\\|') for c in row) + ' |' for row in cells]
        return '\n'.join(out) + '\n'
    if fmt == 'html':
        head = ''.join('<th>%s</th>' % html.escape(c) for c in columns)
        body = ''.join('<tr>%s</tr>' % ''.join('<td>%s</td>' % html.escape(c) for c in row) for row in cells)
        return ('<!doctype html><html><head><meta charset="utf-8"><title>fleetmesh fleet report</title>'
                '<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}</style></head>'
                '<body><table><thead><tr>%s</tr></thead><tbody>%s</tbody></table></body></html>\n' % (head, body))
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    return '\n'.join([_line(columns, widths), _line(['-' * w for w in widths], widths)]
                     + [_line(row, widths) for row in cells]) + '\n'


def _line(values: list[str], widths: list[int]) -> str:
    return '  '.join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


# --------------------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------------------

def _result(value: Any) -> dict:
    """A registered task result, or {} for a skipped/absent one."""
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return int(str(value))
        except (TypeError, ValueError):
            return None
    return value


def _registration(host: str, address: str, objects: list[dict] | None) -> str:
    if objects is None:
        return 'n/a'
    state = 'not registered'
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        meta = obj.get('metadata') or {}
        if obj.get('kind') == 'WorkloadEntry':
            if (meta.get('annotations') or {}).get('fleetmesh.envoy/host') == host \
                    or (address and (obj.get('spec') or {}).get('address') == address):
                state = 'WorkloadEntry %s/%s' % (meta.get('namespace', ''), meta.get('name', ''))
    for obj in objects:
        if isinstance(obj, dict) and obj.get('kind') == 'EndpointSlice':
            for endpoint in obj.get('endpoints') or []:
                if address and address in (endpoint.get('addresses') or []):
                    ready = (endpoint.get('conditions') or {}).get('ready', True)
                    state = 'EndpointSlice ready' if ready is not False else 'EndpointSlice not ready'
    return state


def fleet_status_rows(reads: list[dict], objects: list[dict] | None = None) -> list[Row]:
    """One row per host from what status.yml read on it (see fleet_status.yml), in the order given."""
    if not isinstance(reads, list) or not all(isinstance(r, dict) and r.get('host') for r in reads):
        _fail('fleet_status', reads, 'a list of dicts, one per host, each with at least host')
    if objects is not None and not isinstance(objects, list):
        _fail('fleet_status: objects', objects, 'a list of Kubernetes objects (WorkloadEntry, EndpointSlice) or none')
    rows = []
    for read in reads:
        host = str(read['host'])
        gone = bool(read.get('unreachable'))
        info = _result(read.get('envoy')).get('server_info') or {}
        cert = _result(read.get('cert'))
        status = _result(read.get('health')).get('status')
        address = str(read.get('address') or '')
        if gone or 'exists' not in cert:
            days = None
        else:
            days = cert.get('days_left') if cert['exists'] else 'no cert'
        os_name = ('%s %s' % (read.get('distribution') or '', read.get('distribution_version') or '')).strip()
        rows.append({
            'host': host,
            'address': address,
            'service': str(read.get('service') or ''),
            'namespace': str(read.get('namespace') or ''),
            'os': os_name or ('?' if not gone else ''),
            'envoy_version': str(info.get('version') or ''),
            'state': 'unreachable' if gone else str(info.get('state') or 'Envoy down'),
            'uptime_s': _number(info.get('uptime_seconds')),
            'epoch': _number(info.get('hot_restart_epoch')),
            'cert_days_left': days,
            'cert_not_after': cert.get('not_after') if cert.get('exists') and not gone else None,
            'registration': _registration(host, address, objects),
            'health': 'unreachable' if gone else {200: 'healthy', 503: 'draining'}.get(status, 'down'),
        })
    return rows


def _semver_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r'[.-]', version))


def fleet_report_data(rows: list[Row], cert_warn_days: int | float = 14, generated_at: str | None = None,
                      registration_error: str | None = None) -> dict:
    """The report (schema docs/fleet-report.schema.json): problems per host, per service, the summary."""
    try:
        warn = float(cert_warn_days)
    except (TypeError, ValueError):
        warn = -1.0
    if isinstance(cert_warn_days, bool) or not 0 <= warn < 100000:
        _fail('status_cert_warn_days', cert_warn_days, 'a number of days >= 0')
    cert_warn_days = int(warn) if warn == int(warn) else warn
    rows = [dict(r) for r in rows]
    services: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        services.setdefault((row.get('service') or '', row.get('namespace') or ''), []).append(row)
    # the version most hosts of a service run (ties: the newest) is the service's; the others drift
    majority = {}
    for key, members in services.items():
        counts = Counter(r['envoy_version'] for r in members if r.get('envoy_version'))
        if len(counts) > 1:
            majority[key] = max(counts, key=lambda v: (counts[v], _semver_key(v)))
    problems = []
    for row in rows:
        found = []
        key = (row.get('service') or '', row.get('namespace') or '')
        if row['state'] == 'unreachable':
            found.append(('unreachable', 'the host does not answer over SSH'))
        elif row['state'] != 'LIVE' or row['health'] == 'down':
            found.append(('envoy_down', 'Envoy state %s, listener health %s' % (row['state'], row['health'])))
        if row['registration'] == 'not registered':
            found.append(('not_registered', 'no WorkloadEntry or EndpointSlice endpoint in Kubernetes'))
        elif row['registration'] == 'EndpointSlice not ready':
            found.append(('not_registered', 'registered, but its EndpointSlice endpoint is not ready'))
        days = row.get('cert_days_left')
        if isinstance(days, (int, float)) and not isinstance(days, bool) and days < cert_warn_days:
            found.append(('cert_expiring', ('expired %s days ago' % round(-days, 2)) if days < 0 else
                          'expires in %s days (%s)' % (days, row.get('cert_not_after') or '?')))
        if key in majority and row.get('envoy_version') and row['envoy_version'] != majority[key]:
            found.append(('version_drift', 'runs %s; %s mostly runs %s'
                          % (row['envoy_version'], _service_name(*key), majority[key])))
        row['problems'] = [{'kind': k, 'detail': d} for k, d in found]
        problems += [{'host': row['host'], 'kind': k, 'detail': d} for k, d in found]

    def severity(row: Row) -> tuple:
        kinds = [PROBLEM_KINDS.index(p['kind']) for p in row['problems']]
        return (0, min(kinds), row['host']) if kinds else (1, row.get('service') or '', row['host'])

    rows.sort(key=severity)
    problems.sort(key=lambda p: (PROBLEM_KINDS.index(p['kind']), p['host']))
    service_list = []
    for (service, namespace), members in sorted(services.items()):
        names = [r['host'] for r in rows if (r.get('service') or '', r.get('namespace') or '') == (service, namespace)]
        service_list.append({
            'service': service, 'namespace': namespace, 'hosts': names,
            'versions': dict(sorted(Counter(r['envoy_version'] or 'unknown' for r in members).items())),
            'health': dict(sorted(Counter(r['health'] for r in members).items())),
            'problem_hosts': len([r for r in members if r['problems']]),
            'version_drift': (service, namespace) in majority,
        })
    counts = {kind: len({p['host'] for p in problems if p['kind'] == kind}) for kind in PROBLEM_KINDS}
    return {
        'schema': SCHEMA,
        'generated_at': generated_at or datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'cert_warn_days': cert_warn_days,
        'registration_error': registration_error or None,
        'summary': {
            'hosts': len(rows),
            'problem_hosts': len([r for r in rows if r['problems']]),
            'healthy_hosts': len([r for r in rows if not r['problems']]),
            'problems': counts,
            'versions': dict(sorted(Counter(r['envoy_version'] or 'unknown' for r in rows).items())),
            'services': len(service_list),
        },
        'problems': problems,
        'services': service_list,
        'hosts': rows,
    }


def fleet_status(reads: list[dict], objects: list[dict] | None = None, cert_warn_days: int | float = 14,
                 generated_at: str | None = None, registration_error: str | None = None) -> dict:
    """Rows from what status.yml read, then the report data."""
    return fleet_report_data(fleet_status_rows(reads, objects), cert_warn_days, generated_at, registration_error)


def _service_name(service: str, namespace: str) -> str:
    if service and namespace:
        return '%s.%s' % (service, namespace)
    return service or namespace or '(no service)'


# --------------------------------------------------------------------------------------------------------------
# the terminal table
# --------------------------------------------------------------------------------------------------------------

_SHORT_PROBLEM = {'unreachable': 'unreachable', 'envoy_down': 'Envoy down', 'not_registered': 'unregistered',
                  'cert_expiring': 'cert', 'version_drift': 'drift'}


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + '\u2026'


def _short_registration(value: str) -> str:
    if value.startswith('WorkloadEntry '):
        return 'WE ' + value[len('WorkloadEntry '):]
    return {'EndpointSlice ready': 'ES ready', 'EndpointSlice not ready': 'ES not ready',
            'not registered': 'none'}.get(value, value)


def _fit(header: list[str], cells: list[list[str]], width: int, minimum: list[int]) -> list[int]:
    """Column widths of the natural table, the widest shrunk first until the line fits width."""
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        candidates = [i for i, w in enumerate(widths) if w > minimum[i]]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i] - minimum[i])
        widths[widest] -= 1
    return widths


def fleet_table(report: dict, width: int = TABLE_WIDTH) -> str:
    """A summary line and one line per host (problem hosts first), at most width characters each."""
    summary = report['summary']
    lines = ['%d hosts in %d service(s): %d with problems, %d ok' % (
        summary['hosts'], summary['services'], summary['problem_hosts'], summary['healthy_hosts'])]
    if summary['problem_hosts']:
        lines.append('problems: ' + ', '.join('%s %d' % ('cert expiring' if k == 'cert_expiring' else _SHORT_PROBLEM[k], n)
                                              for k, n in summary['problems'].items() if n))
    if report.get('registration_error'):
        lines.append('registration not read: ' + report['registration_error'])
    header = ['HOST', 'SERVICE', 'ENVOY', 'STATE', 'HEALTH', 'CERT', 'REG', 'PROBLEMS']
    minimum = [8, 7, 7, 5, 6, 4, 3, 8]
    cells = []
    for row in report['hosts']:
        days = row.get('cert_days_left')
        cert = ('%dd' % int(days) if days >= 0 else 'expired') if isinstance(days, (int, float)) else _cell(days)
        kinds = []
        for p in row['problems']:
            if p['kind'] == 'cert_expiring':
                kinds.append('cert %s' % cert)
            elif _SHORT_PROBLEM[p['kind']] not in kinds:
                kinds.append(_SHORT_PROBLEM[p['kind']])
        cells.append([row['host'], _service_name(row.get('service') or '', row.get('namespace') or ''),
                      _cell(row['envoy_version']), row['state'], row['health'], cert,
                      _short_registration(row['registration']), ', '.join(kinds) or 'ok'])
    widths = _fit(header, cells, width, minimum)
    out = [_line([_shorten(h, w) for h, w in zip(header, widths, strict=True)], widths)]
    out += [_line([_shorten(c, w) for c, w in zip(cell, widths, strict=True)], widths) for cell in cells]
    lines += out
    return '\n'.join(_shorten(line, width) for line in lines) + '\n'


# --------------------------------------------------------------------------------------------------------------
# the HTML page (self-contained: inline CSS and SVG, no script, no fetch)
# --------------------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1f2933}
header{background:#1f2933;color:#fff;padding:16px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd2d9;font-size:13px}main{padding:16px 24px;max-width:1200px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:12px 16px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:12px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 16px}
.card{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:8px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#52606d}
.card.bad b{color:#c62828}.card.good b{color:#2e7d32}
table{border-collapse:collapse;width:100%;font-size:13px}th{text-align:left;background:#eef1f4}
td,th{padding:4px 8px;border-bottom:1px solid #e4e7eb;vertical-align:top}
tr.problem td:first-child{border-left:4px solid #c62828}tr.ok td:first-child{border-left:4px solid #2e7d32}
.tag{display:inline-block;border-radius:3px;padding:0 6px;margin:1px 2px 1px 0;font-size:12px;color:#fff}
.k-unreachable{background:#7b1fa2}.k-envoy_down{background:#c62828}.k-not_registered{background:#ef6c00}
.k-cert_expiring{background:#b8860b}.k-version_drift{background:#1565c0}
.muted{color:#7b8794}.charts{display:flex;flex-wrap:wrap;gap:16px}.charts section{flex:1 1 480px}
"""
_PALETTE = ('#1565c0', '#2e7d32', '#ef6c00', '#7b1fa2', '#00838f', '#6d4c41', '#ad1457', '#546e7a')


def _e(value: Any) -> str:
    return html.escape(_cell(value), quote=True)


def _tags(row: Row) -> str:
    if not row['problems']:
        return '<span class="muted">ok</span>'
    return ''.join('<span class="tag k-%s" title="%s">%s</span>' % (p['kind'], _e(p['detail']),
                                                                    _e(PROBLEM_TITLES[p['kind']]))
                   for p in row['problems'])


def _host_rows(rows: list[Row]) -> str:
    out = []
    for r in rows:
        days = r.get('cert_days_left')
        out.append('<tr class="%s" data-host="%s" data-problems="%s"><td>%s</td><td>%s</td><td>%s</td><td>%s</td>'
                   '<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                   % ('problem' if r['problems'] else 'ok', _e(r['host']),
                      html.escape(' '.join(p['kind'] for p in r['problems']), quote=True), _e(r['host']),
                      _e(_service_name(r.get('service') or '', r.get('namespace') or '')), _e(r['envoy_version']),
                      _e(r['state']), _e(r['health']),
                      _e(round(days, 1) if isinstance(days, (int, float)) else days),
                      _e(r['registration']), _e(r['os']), _tags(r)))
    return ''.join(out)


_HOST_HEAD = ('<thead><tr><th>host</th><th>service</th><th>Envoy</th><th>state</th><th>health</th>'
              '<th>cert days</th><th>registration</th><th>OS</th><th>problems</th></tr></thead>')


def _version_chart(report: dict) -> str:
    """Stacked horizontal bars: per service, how many hosts run each Envoy version."""
    versions = sorted({v for s in report['services'] for v in s['versions'] if v != 'unknown'}, key=_semver_key)
    versions += ['unknown'] if any('unknown' in s['versions'] for s in report['services']) else []
    color = {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(versions)}
    color['unknown'] = '#9aa5b1'  # not read (unreachable, Envoy down)
    services = report['services']
    most = max([sum(s['versions'].values()) for s in services] + [1])
    left, bar_w, row_h = 150, 400, 28
    height = 30 + row_h * len(services) + 30
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" id="version-chart" width="%d" height="%d" '
             'viewBox="0 0 %d %d"><title>Envoy versions per service</title>'
             % (left + bar_w + 60, height, left + bar_w + 60, height)]
    for i, s in enumerate(services):
        y = 20 + i * row_h
        parts.append('<text x="%d" y="%d" text-anchor="end" font-size="12">%s</text>'
                     % (left - 8, y + 15, _e(_service_name(s['service'], s['namespace']))))
        x = float(left)
        for v in sorted(s['versions'], key=_semver_key):
            n = s['versions'][v]
            w = bar_w * n / most
            parts.append('<rect x="%.1f" y="%d" width="%.1f" height="20" fill="%s" data-version="%s" data-count="%d">'
                         '<title>%s: %d host(s)</title></rect>' % (x, y, w, color[v], _e(v), n, _e(v), n))
            if w > 18:
                parts.append('<text x="%.1f" y="%d" font-size="11" fill="#fff" text-anchor="middle">%d</text>'
                             % (x + w / 2, y + 14, n))
            x += w
        if s['version_drift']:
            parts.append('<text x="%.1f" y="%d" font-size="11" fill="#c62828">drift</text>' % (x + 6, y + 14))
    y = height - 14
    x = left
    for v in versions:
        parts.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" font-size="11">%s</text>'
                     % (x, y - 9, color[v], x + 14, y, _e(v)))
        x += 24 + 7 * len(v)
    parts.append('</svg>')
    return ''.join(parts)


def _cert_timeline(report: dict) -> str:
    """One dot per host on a days-left axis, the warning threshold as a line; expired hosts left of zero."""
    warn = report['cert_warn_days']
    hosts = [(r['host'], r['cert_days_left']) for r in report['hosts']
             if isinstance(r.get('cert_days_left'), (int, float)) and not isinstance(r.get('cert_days_left'), bool)]
    hosts.sort(key=lambda h: h[1])
    span = max([warn * 2, 30] + [d for _h, d in hosts])
    low = min([0] + [d for _h, d in hosts])
    left, axis_w, row_h = 120, 440, 18
    height = 40 + row_h * max(len(hosts), 1) + 24

    def x_of(days: float) -> float:
        return left + axis_w * (days - low) / ((span - low) or 1)

    parts = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" id="cert-timeline" width="%d" height="%d" '
             'viewBox="0 0 %d %d"><title>Certificate expiry: days left per host</title>'
             % (left + axis_w + 40, height, left + axis_w + 40, height)]
    parts.append('<rect x="%.1f" y="16" width="%.1f" height="%d" fill="#fdecea"/>'
                 % (x_of(low), x_of(warn) - x_of(low), row_h * max(len(hosts), 1) + 8))
    parts.append('<line x1="%.1f" y1="12" x2="%.1f" y2="%d" stroke="#c62828" stroke-dasharray="4 3"/>'
                 '<text x="%.1f" y="10" font-size="11" fill="#c62828" text-anchor="middle">%s days</text>'
                 % (x_of(warn), x_of(warn), height - 22, x_of(warn), _e(warn)))
    for i, (host, days) in enumerate(hosts):
        y = 30 + i * row_h
        near = days < warn
        parts.append('<text x="%d" y="%d" text-anchor="end" font-size="11">%s</text>' % (left - 8, y + 4, _e(host)))
        parts.append('<circle cx="%.1f" cy="%d" r="5" fill="%s" data-host="%s" data-days="%s"><title>%s: %s days'
                     '</title></circle>' % (x_of(days), y, '#c62828' if near else '#2e7d32', _e(host), _e(days),
                                            _e(host), _e(days)))
    if not hosts:
        parts.append('<text x="%d" y="34" font-size="12" fill="#7b8794">no certificate was read</text>' % left)
    axis_y = height - 22
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#52606d"/>' % (left, axis_y, left + axis_w, axis_y))
    step = max(1, int(round((span - low) / 6)))
    tick = int(low)
    while tick <= span:
        parts.append('<text x="%.1f" y="%d" font-size="10" text-anchor="middle" fill="#52606d">%d</text>'
                     % (x_of(tick), axis_y + 14, tick))
        tick += step
    parts.append('</svg>')
    return ''.join(parts)


def fleet_html(report: dict) -> str:
    """One self-contained page: summary, problems first, charts, then per service."""
    summary = report['summary']
    cards = ['<div class="card %s" data-count="hosts"><b>%d</b><span>hosts</span></div>'
             % ('good' if summary['hosts'] else '', summary['hosts']),
             '<div class="card %s" data-count="problem_hosts"><b>%d</b><span>with problems</span></div>'
             % ('bad' if summary['problem_hosts'] else 'good', summary['problem_hosts'])]
    cards += ['<div class="card %s" data-count="%s"><b>%d</b><span>%s</span></div>'
              % ('bad' if n else 'good', k, n, _e(PROBLEM_TITLES[k])) for k, n in summary['problems'].items()]
    problem_rows = [r for r in report['hosts'] if r['problems']]
    if problem_rows:
        problems = '<table id="problems">%s<tbody>%s</tbody></table>' % (_HOST_HEAD, _host_rows(problem_rows))
        problems += '<ul>%s</ul>' % ''.join('<li><b>%s</b>: %s - %s</li>' % (_e(p['host']),
                                                                             _e(PROBLEM_TITLES[p['kind']]),
                                                                             _e(p['detail']))
                                            for p in report['problems'])
    else:
        problems = '<p id="problems" class="muted">No problems: every host answers, runs Envoy LIVE, is registered, ' \
                   'has a certificate that is not near expiry and runs its service\'s Envoy version.</p>'
    services = []
    for s in report['services']:
        members = [r for r in report['hosts'] if r['host'] in s['hosts']]
        services.append(
            '<h3 data-service="%s">%s <span class="muted">%d host(s); versions: %s; health: %s</span></h3>'
            '<table>%s<tbody>%s</tbody></table>'
            % (_e(_service_name(s['service'], s['namespace'])), _e(_service_name(s['service'], s['namespace'])),
               len(s['hosts']), _e(', '.join('%s x%d' % kv for kv in s['versions'].items())),
               _e(', '.join('%s %d' % kv for kv in s['health'].items())), _HOST_HEAD, _host_rows(members)))
    registration = ('<p class="tag k-not_registered">registration not read: %s</p>' % _e(report['registration_error'])
                    if report.get('registration_error') else '')
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
        'img-src data:">'
        '<title>fleetmesh fleet report</title><style>%s</style></head><body>'
        '<header><h1>Fleet report</h1><p>%d hosts in %d service(s), generated %s by fleetmesh.envoy status.yml '
        '(schema %s)</p></header><main>'
        '<div class="cards" id="summary">%s</div>%s'
        '<section><h2>Problems</h2>%s</section>'
        '<div class="charts"><section><h2>Envoy versions</h2>%s</section>'
        '<section><h2>Certificate expiry</h2>%s</section></div>'
        '<section><h2>Services</h2>%s</section>'
        '<section><h2>All hosts</h2><table id="hosts">%s<tbody>%s</tbody></table></section>'
        '</main></body></html>\n'
        % (_CSS.strip(), summary['hosts'], summary['services'], _e(report['generated_at']), _e(report['schema']),
           ''.join(cards), registration, problems, _version_chart(report), _cert_timeline(report),
           ''.join(services), _HOST_HEAD, _host_rows(report['hosts'])))


_COLUMNS = ['host', 'service', 'namespace', 'os', 'envoy_version', 'state', 'uptime_s', 'epoch', 'cert_days_left',
            'registration', 'health', 'problems']


def fleet_render(report: dict, fmt: str = 'table') -> str:
    """The report as the terminal table, the HTML page or Markdown."""
    if fmt not in RENDERINGS:
        _fail('fleet_render: format', fmt, ', '.join(RENDERINGS))
    if not isinstance(report, dict) or report.get('schema') != SCHEMA:
        _fail('fleet_render: report', type(report).__name__, 'the output of fleetmesh.envoy.fleet_status')
    if fmt == 'table':
        return fleet_table(report)
    if fmt == 'html':
        return fleet_html(report)
    rows = [dict(r, problems=', '.join(PROBLEM_TITLES[p['kind']] for p in r['problems'])) for r in report['hosts']]
    return fleet_report(rows, _COLUMNS, 'markdown')


# --------------------------------------------------------------------------------------------------------------
# cert_report.yml
# --------------------------------------------------------------------------------------------------------------

_CERT_HEADER = ['HOST', 'STATUS', 'SUBJECT', 'ISSUER', 'SANS', 'SERIAL', 'NOT_AFTER', 'DAYS_LEFT']


def cert_report(results: dict) -> dict:
    """{host: cert_info result} -> {'rows': one per host, sorted, 'table': the printed table}."""
    if not isinstance(results, dict):
        _fail('cert_report', type(results).__name__, 'a dict of host -> fleetmesh.envoy.cert_info result')
    rows = []
    for host in sorted(results):
        cert = _result(results[host]) or {'unreachable': True}
        if cert.get('unreachable'):
            status = 'unreachable'
        elif cert.get('failed') or 'exists' not in cert:
            status = 'error: %s' % cert.get('msg', '?')
        elif not cert['exists']:
            status = 'missing'
        elif cert.get('days_left', 0) < 0:
            status = 'expired'
        else:
            status = 'ok'
        read = status in ('ok', 'expired')
        rows.append({'host': host, 'status': status,
                     'subject': cert.get('subject') if read else None,
                     'sans': list(cert.get('sans') or []) if read else [],
                     'spiffe_id': cert.get('spiffe_id') if read else None,
                     'issuer': cert.get('issuer') if read else None,
                     'serial': cert.get('serial') if read else None,
                     'not_after': cert.get('not_after') if read else None,
                     'days_left': cert.get('days_left') if read else None})
    cells = [[r['host'], r['status'], _cell(r['subject']), _cell(r['issuer']), ','.join(r['sans']) or '-',
              _cell(r['serial']), _cell(r['not_after']), _cell(r['days_left'])] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(_CERT_HEADER)]
    table = '\n'.join([_line(_CERT_HEADER, widths)] + [_line(c, widths) for c in cells])
    return {'rows': rows, 'table': table}


# --------------------------------------------------------------------------------------------------------------
# upgrade.yml: one progress line per batch
# --------------------------------------------------------------------------------------------------------------

def rollout_batches(serial: Any, total: int) -> list[int]:
    """Batch sizes as Ansible's serial makes them (a number, a percentage or a list of them; the last repeats)."""
    items = serial if isinstance(serial, list) else [serial]
    if not items or total < 0:
        _fail('upgrade_serial', serial, 'a number, a percentage or a list of them')
    sizes: list[int] = []
    left, i = total, 0
    while left > 0:
        item = items[min(i, len(items) - 1)]
        text = str(item).strip()
        try:
            size = int(int(text[:-1]) / 100.0 * total) if text.endswith('%') else int(text)
        except ValueError:
            _fail('upgrade_serial', serial, 'a number, a percentage or a list of them')
        size = max(size, 1) if size > 0 or text.endswith('%') else total
        sizes.append(min(size, left))
        left -= sizes[-1]
        i += 1
    return sizes


def rollout_progress(previous: dict | None, batch: list[str], ready: list[str], failed: list[str], total: int,
                     serial: Any, now: float, target_version: str = '') -> dict:
    """The progress after one more batch: batch k of n, hosts done/total, failed, elapsed, and the line to print."""
    previous = previous if isinstance(previous, dict) else {}
    started = float(previous.get('started', now))
    number = int(previous.get('batch', 0)) + 1
    bad = sorted(set(previous.get('failed_hosts', [])) | set(failed))
    done = sorted((set(previous.get('done_hosts', [])) | set(ready)) - set(bad))
    progress = {
        'target_version': target_version,
        'batch': number,
        'batches': len(rollout_batches(serial, int(total))),
        'batch_hosts': sorted(batch),
        'hosts_total': int(total),
        'hosts_done': len(done),
        'hosts_failed': len(bad),
        'done_hosts': done,
        'failed_hosts': bad,
        'elapsed_s': int(round(now - started)),
        'started': started,
    }
    progress['line'] = ('Rollout to %s: batch %d of %d done (%s): %d/%d hosts done, %d failed, %ds elapsed'
                        % (target_version or '?', number, progress['batches'], ', '.join(sorted(batch)) or '-',
                           progress['hosts_done'], progress['hosts_total'], progress['hosts_failed'],
                           progress['elapsed_s']))
    return progress


class FilterModule(object):
    def filters(self):
        return {'fleet_report': fleet_report, 'fleet_status': fleet_status, 'fleet_render': fleet_render,
                'cert_report': cert_report, 'rollout_progress': rollout_progress}
