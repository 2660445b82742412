"""roles/istio_sidecar: defaults/main.yml and meta/argument_specs.yml describe the same variables with the same
defaults; every role variable the validate task checks exists; playbooks use FQCNs only."""

from __future__ import annotations

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "istio_sidecar"


def load(rel: str):
    return yaml.safe_load((ROLE / rel).read_text())


def test_defaults_and_argument_specs_match_exactly():
    defaults = load("defaults/main.yml")
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, spec in options.items():
        assert spec["default"] == defaults[name], name
        assert spec.get("description"), name


def test_every_variable_is_checked_before_a_change():
    tasks = load("tasks/main.yml")
    checked = next(t for t in tasks if "fleetmesh.envoy.validate" in t)["fleetmesh.envoy.validate"]["vars"]
    defaults = load("defaults/main.yml")
    unchecked = {name for name in defaults if name not in checked}
    # Free-form or controller-side values with no rule of their own (types come from argument_specs).
    assert unchecked == {"istio_sidecar_package_dir",
                         "istio_sidecar_proxy_config_extra", "istio_sidecar_certs_force", "istio_sidecar_token",
                         "istio_sidecar_kube_context"}


def test_no_short_module_names():
    for path in sorted((ROLE / "tasks").glob("*.yml")) + [ROLE / "handlers" / "main.yml"]:
        for task in yaml.safe_load(path.read_text()):
            for item in [task] + task.get("block", []):
                actions = [k for k in item if "." in k and not k.startswith("__")]
                assert actions or "block" in item, (path.name, item.get("name"))
