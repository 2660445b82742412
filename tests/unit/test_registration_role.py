"""roles/mesh_registration: defaults/main.yml and meta/argument_specs.yml describe the same options."""

from __future__ import annotations

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "mesh_registration"
TYPES = {"str": str, "bool": bool, "int": int, "list": list, "dict": dict, "raw": object}


def test_defaults_and_argument_specs_match_exactly():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert list(defaults) == list(options)
    for name, spec in options.items():
        assert name.startswith("mesh_registration_"), name
        assert "default" in spec, name
        assert spec["default"] == defaults[name], name
        assert isinstance(defaults[name], TYPES[spec["type"]]), name
        if "choices" in spec:
            values = defaults[name] if spec["type"] == "list" else [defaults[name]]
            assert set(values) <= set(spec["choices"]), name


def test_module_choices_match_the_role():
    from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg

    options = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert tuple(options["mesh_registration_shapes"]["choices"]) == reg.SHAPES
    assert tuple(options["mesh_registration_state"]["choices"]) == reg.STATES
