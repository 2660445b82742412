"""Role craft: every public role has meta/argument_specs.yml whose options match defaults/main.yml
exactly (same names, same defaults), and every task uses a fully qualified collection name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir() and not p.name.startswith("_"))


def test_there_are_roles():
    assert ROLES


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_match_defaults(role: Path):
    spec_file = role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role.name} has no meta/argument_specs.yml"
    options = yaml.safe_load(spec_file.read_text())["argument_specs"]["main"].get("options", {})
    defaults_file = role / "defaults" / "main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.is_file() else {}
    optional = {k: v for k, v in options.items() if not v.get("required")}
    extra = sorted(set(defaults) - set(options))
    assert not extra, f"{role.name}: defaults without a spec: {extra}"
    for name, spec in optional.items():
        if name not in defaults:
            # Inventory-model variables (fleetmesh_*) are read, not defaulted, by roles.
            assert name.startswith("fleetmesh_"), f"{role.name}: option {name} has no default in defaults/main.yml"
            continue
        if "default" in spec:
            assert spec["default"] == defaults[name], (
                f"{role.name}: {name} defaults to {defaults[name]!r} but the spec says {spec['default']!r}")


TASK_FILES = sorted((ROOT / "roles").glob("*/tasks/*.yml")) + sorted((ROOT / "playbooks").glob("*.yml"))


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tasks_use_fqcn(path: Path):
    keywords = {"name", "when", "block", "rescue", "always", "vars", "register", "loop", "loop_control", "tags",
                "notify", "become", "delegate_to", "run_once", "changed_when", "failed_when", "until", "retries",
                "delay", "no_log", "check_mode", "diff", "environment", "args", "ignore_errors", "listen",
                "hosts", "gather_facts", "gather_subset", "tasks", "roles", "pre_tasks", "post_tasks", "handlers",
                "serial", "max_fail_percentage", "any_errors_fatal", "ignore_unreachable", "collections",
                "module_defaults", "become_user", "connection", "strategy", "vars_files", "import_playbook",
                "throttle", "order",
                "delegate_facts", "local_action", "timeout", "remote_user", "force_handlers"}
    data = yaml.safe_load(path.read_text()) or []

    def walk(items):
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
                walk(item.get(key))
            actions = [k for k in item if k not in keywords]
            for action in actions:
                where = f"{path.relative_to(ROOT)}: task {item.get('name')!r}"
                assert "." in action, f"{where} uses {action!r} without FQCN"

    walk(data)
