# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fleet report rendering (documented in fleet_report.yml beside this file)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import html

from ansible.errors import AnsibleFilterError

FORMATS = ('text', 'markdown', 'html')


def _cell(value):
    if value is None or value == '':
        return '-'
    return str(value)


def fleet_report(rows, columns, fmt='text'):
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

    def line(vals):
        return '  '.join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(row) for row in cells]) + '\n'


class FilterModule(object):
    def filters(self):
        return {'fleet_report': fleet_report}
