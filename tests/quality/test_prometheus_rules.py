"""The shipped Prometheus alerting rules pass `promtool check rules` and their unit tests (`promtool test rules`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / 'docs' / 'prometheus'
RULES = RULES_DIR / 'fleetmesh-envoy.rules.yml'
RULE_TESTS = RULES_DIR / 'fleetmesh-envoy.rules.test.yml'
ALERTS = {'FleetmeshEnvoyNotScraped', 'FleetmeshCertificateExpiringSoon', 'FleetmeshEnvoyVersionDrift',
          'FleetmeshEnvoyHotRestartChurn', 'FleetmeshUpstream5xxRatio', 'FleetmeshEnvoyNotLive'}


def promtool() -> str:
    path = shutil.which('promtool')
    if path:
        return path
    message = "promtool not found: it is in Debian's prometheus package (make setup installs it)"
    if os.environ.get('CI', '').lower() == 'true':
        pytest.fail(message)
    pytest.skip(message)


def test_promtool_check_rules():
    result = subprocess.run([promtool(), 'check', 'rules', str(RULES)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'SUCCESS: {len(ALERTS)} rules found' in result.stdout


def test_promtool_test_rules():
    result = subprocess.run([promtool(), 'test', 'rules', RULE_TESTS.name], capture_output=True, text=True, check=False,
                            timeout=120, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'SUCCESS' in result.stdout


def test_every_alert_has_a_unit_test():
    alerts = {rule['alert'] for group in yaml.safe_load(RULES.read_text())['groups'] for rule in group['rules']}
    assert alerts == ALERTS
    tested = {case['alertname'] for test in yaml.safe_load(RULE_TESTS.read_text())['tests']
              for case in test.get('alert_rule_test', []) if case.get('exp_alerts')}
    assert tested == ALERTS


def test_a_wrong_expectation_fails(tmp_path):
    # the rule tests can fail: change one expected value and promtool must say so
    (tmp_path / RULES.name).write_text(RULES.read_text())
    broken = RULE_TESTS.read_text().replace('expires in 13 days', 'expires in 12 days')
    assert broken != RULE_TESTS.read_text()
    (tmp_path / RULE_TESTS.name).write_text(broken)
    result = subprocess.run([promtool(), 'test', 'rules', RULE_TESTS.name], capture_output=True, text=True, check=False,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert 'FleetmeshCertificateExpiringSoon' in result.stdout + result.stderr
