"""AWX survey specs (awx/surveys/*.json): committed files equal what tools/gen_surveys.py makes from the
argument specs and playbooks, every survey is valid by AWX's rules, and the generator maps types,
defaults, choices, required flags and secrets as documented."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gen_surveys", REPO / "tools" / "gen_surveys.py")
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_surveys"] = gen
_spec.loader.exec_module(gen)

SURVEYS = {p: REPO / "awx" / "surveys" / f"{p}.json" for p in gen.PLAYBOOKS}

# ---------------------------------------------------------------------------------------------
# AWX's rules, as awx/api/views (JobTemplateSurveySpec._validate_spec_data) applies them when a survey
# is saved, and awx/main/models/mixins.py (_survey_element_validation) when a job is launched: a default
# that fails the launch check is silently not sent, so every default must pass it too.
# ---------------------------------------------------------------------------------------------

AWX_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": str,
             "integer": int, "float": float}
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def choice_list(item: dict[str, Any]) -> list[str]:
    choices = item.get("choices")
    if isinstance(choices, str):
        return [c for c in choices.splitlines() if c.strip()]
    return list(choices or [])


def awx_element_errors(item: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The launch-time check of one answer (or default) against its question."""
    var, kind = item["variable"], item["type"]
    if var not in data:
        return [f"'{var}' value missing"] if item["required"] else []
    value = data[var]
    errors = []
    if kind in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return [f"Value {value} for '{var}' expected to be a string."]
        if item.get("min") not in ("", None) and len(value) < int(item["min"]):
            errors.append(f"'{var}' value {value} is too small")
        if item.get("max") not in ("", None) and len(value) > int(item["max"]):
            errors.append(f"'{var}' value {value} is too large")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"Value {value} for '{var}' expected to be an integer."]
        if item.get("min") not in ("", None) and value < int(item["min"]):
            errors.append(f"'{var}' value {value} is too small")
        if item.get("max") not in ("", None) and value > int(item["max"]):
            errors.append(f"'{var}' value {value} is too large")
    elif kind == "float":
        if not isinstance(value, (float, int)) or isinstance(value, bool):
            return [f"Value {value} for '{var}' expected to be a numeric type."]
    elif kind == "multiselect":
        if not isinstance(value, list):
            return [f"'{var}' value is expected to be a list."]
        errors += [f"Value {v} for '{var}' expected to be one of {choice_list(item)}." for v in value
                   if v not in choice_list(item)]
    elif kind == "multiplechoice" and value not in choice_list(item):
        errors.append(f"Value {value} for '{var}' expected to be one of {choice_list(item)}.")
    return errors


def awx_spec_errors(survey: Any) -> list[str]:
    """What AWX answers with HTTP 400 when this survey is POSTed to .../survey_spec/."""
    errors = []
    if not isinstance(survey, dict):
        return ["the survey is not a JSON object"]
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if field not in survey:
            errors.append(f"Field '{field}' is missing from survey spec.")
        elif not isinstance(survey[field], kind):
            errors.append(f"Expected {kind.__name__} for field '{field}'.")
    if errors:
        return errors
    if not survey["spec"]:
        return ["'spec' doesn't contain any items."]
    variables = set()
    for idx, item in enumerate(survey["spec"]):
        if not isinstance(item, dict):
            errors.append(f"Survey question {idx} is not a json object.")
            continue
        for field in ("type", "question_name", "variable", "required"):
            if field not in item:
                errors.append(f"'{field}' missing from survey question {idx}")
            elif not isinstance(item[field], bool if field == "required" else str):
                errors.append(f"'{field}' in survey question {idx} has the wrong type")
        if any(f not in item for f in ("type", "variable", "required")):
            continue
        var, kind = item["variable"], item["type"]
        if var in variables:
            errors.append(f"'variable' '{var}' duplicated in survey question {idx}.")
        variables.add(var)
        if not IDENTIFIER.match(var):
            errors.append(f"'variable' '{var}' in survey question {idx} is not a valid variable name")
        if kind not in AWX_TYPES:
            errors.append(f"'{kind}' in survey question {idx} is not one of {', '.join(AWX_TYPES)}")
            continue
        default = item.get("default")
        if "default" in item and default != "" and not (
                isinstance(default, AWX_TYPES[kind]) and not isinstance(default, bool)):
            errors.append(f"Default value {default} in survey question {idx} expected to be {kind}.")
        for key in ("min", "max"):
            if item.get(key) is not None and (not isinstance(item[key], int) or isinstance(item[key], bool)):
                errors.append(f"The {key} limit in survey question {idx} expected to be integer.")
        if kind in ("multiplechoice", "multiselect"):
            if "choices" not in item or not choice_list(item):
                errors.append(f"Survey question {idx} of type {kind} must specify choices.")
                continue
            if "default" in item:
                defaults = default.splitlines() if isinstance(default, str) else list(default)
                defaults = [d for d in defaults if d.strip()]
                if kind == "multiplechoice" and len(defaults) > 1:
                    errors.append("Multiple Choice (Single Select) can only have one default value.")
                if any(d not in choice_list(item) for d in defaults):
                    errors.append(f"Default choice of question {idx} must be answered from the choices listed.")
        if isinstance(default, str) and default.startswith("$encrypted$"):
            errors.append(f"$encrypted$ is a reserved keyword, may not be used for new default in position {idx}.")
        # A default AWX would not send (it fails the launch check) is a survey bug too.
        if "default" in item and kind != "multiselect":
            errors += [f"question {idx} default: {e}" for e in awx_element_errors(item, {var: default})]
    return errors


# ---------------------------------------------------------------------------------------------
# The committed files
# ---------------------------------------------------------------------------------------------

def load(playbook: str) -> dict[str, Any]:
    return json.loads(SURVEYS[playbook].read_text(encoding="utf-8"))


def test_committed_surveys_do_not_drift_from_the_argument_specs():
    generated = gen.generate(REPO)
    assert set(generated) == {p.relative_to(REPO) for p in SURVEYS.values()}
    stale = []
    for rel, content in generated.items():
        path = REPO / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(str(rel))
    assert not stale, (f"{', '.join(stale)} differ from what tools/gen_surveys.py generates from the roles' "
                       "meta/argument_specs.yml and the playbooks; run: python tools/gen_surveys.py")


@pytest.mark.parametrize("playbook", gen.PLAYBOOKS)
def test_survey_is_valid_by_awx_rules(playbook):
    assert awx_spec_errors(load(playbook)) == []


def _role_options_by_variable() -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for path in sorted((REPO / "roles").glob("*/meta/argument_specs.yml")):
        role = path.parts[-3]
        options = ((yaml.safe_load(path.read_text()) or {}).get("argument_specs") or {}).get("main", {})
        for name, spec in (options.get("options") or {}).items():
            out[name] = (role, spec)
    return out


@pytest.mark.parametrize("playbook", gen.PLAYBOOKS)
def test_questions_keep_the_argument_specs(playbook):
    """Type, default, choices, required flag and secrecy of every role option asked."""
    options = _role_options_by_variable()
    survey = load(playbook)
    asked = 0
    for q in survey["spec"]:
        if q["variable"] not in options:
            continue
        asked += 1
        role, spec = options[q["variable"]]
        where = f"{playbook}: {q['variable']} ({role})"
        assert q["required"] == bool(spec.get("required", False)), where
        secret = bool(spec.get("no_log")) or re.search(r"(^|_)(token|password|passphrase|secret|key)$", q["variable"])
        assert (q["type"] == "password") == bool(secret), where
        kind, choices, default = spec.get("type", "str"), spec.get("choices"), spec.get("default")
        if secret:
            pass
        elif kind == "bool":
            assert q["type"] == "multiplechoice" and choice_list(q) == ["true", "false"], where
        elif kind == "list":
            assert q["type"] == ("multiselect" if choices else "textarea"), where
        elif choices:
            assert q["type"] == "multiplechoice", where
        else:
            assert q["type"] == {"int": "integer", "float": "float"}.get(kind, "text"), where
        if choices:
            assert choice_list(q) == [str(c) for c in choices], where
        # Defaults: kept when AWX hands them back in the option's type, else named in the description
        # (AWX sends every default as an extra var: "false" is not false, "a\nb" is not [a, b]).
        stringly = kind == "bool" or (kind == "list" and not choices) or (choices and kind not in ("str", "list"))
        if default is None:
            assert "default" not in q, where
        elif stringly or (kind == "raw" and not isinstance(default, str)):
            assert "default" not in q and "Default (left empty): " in q["question_description"], where
        elif kind == "list":
            assert q["default"].splitlines() == [str(v) for v in default], where
        else:
            assert q["default"] == (default if kind in ("int", "float") else str(default)), where
    if playbook != "status":
        assert asked > 5, f"{playbook}: too few role options asked ({asked})"


_PYTHON_TYPES = {"str": str, "path": str, "raw": object, "int": int, "float": (int, float), "bool": bool,
                 "list": list}


@pytest.mark.parametrize("playbook", gen.PLAYBOOKS)
def test_every_default_awx_sends_has_the_options_type(playbook):
    """What a launch that leaves the survey alone gives the roles: AWX adds each default that passes its own
    answer check as an extra var (a multiselect default arrives as the list the form sends)."""
    options = _role_options_by_variable()
    for q in load(playbook)["spec"]:
        if "default" not in q or q["variable"] not in options:
            continue
        kind = options[q["variable"]][1].get("type", "str")
        value = q["default"]
        if q["type"] == "multiselect":
            value = [v for v in value.splitlines() if v.strip()]
        elif awx_element_errors(q, {q["variable"]: value}):
            continue  # not sent
        assert isinstance(value, _PYTHON_TYPES[kind]) and not (kind != "bool" and isinstance(value, bool)), \
            f"{playbook}: {q['variable']} default {value!r} reaches the role as {type(value).__name__}, not {kind}"


def test_upgrade_survey_leaves_out_what_the_playbook_sets():
    variables = {q["variable"] for q in load("upgrade")["spec"]}
    # upgrade.yml includes envoy with envoy_version: upgrade_to (switch and rollback) and sets
    # mesh_registration_healthy itself; a survey answer (an extra var) would override both.
    assert "upgrade_to" in variables and "envoy_version" not in variables
    assert "mesh_registration_healthy" not in variables
    upgrade_to = next(q for q in load("upgrade")["spec"] if q["variable"] == "upgrade_to")
    assert upgrade_to["required"] is True and "default" not in upgrade_to and upgrade_to["min"] == 1


def test_decommission_has_no_default_target_and_no_state_questions():
    spec = {q["variable"]: q for q in load("decommission")["spec"]}
    assert spec["target"]["required"] is True and "default" not in spec["target"]
    assert not {"envoy_state", "mesh_registration_state"} & set(spec)


def test_awx_rules_reject_what_awx_rejects():
    good = {"name": "", "description": "", "spec": [
        {"question_name": "a", "variable": "a", "type": "multiplechoice", "required": False, "choices": "x\ny",
         "default": "x"}]}
    assert awx_spec_errors(good) == []
    for broken in (
        {"type": "boolean"},                                   # not an AWX type
        {"choices": ""},                                       # no choices
        {"default": "z"},                                      # default not a choice
        {"default": "x\ny"},                                   # two defaults for a single choice
        {"required": "false"},                                 # required must be a boolean
    ):
        item = dict(good["spec"][0], **broken)
        assert awx_spec_errors(dict(good, spec=[item])), broken
    twice = dict(good, spec=[good["spec"][0], dict(good["spec"][0])])
    assert any("duplicated" in e for e in awx_spec_errors(twice))
    assert awx_spec_errors(dict(good, spec=[{"question_name": "n", "variable": "n", "type": "integer",
                                             "required": False, "default": "5"}]))
    assert awx_spec_errors(dict(good, spec=[])) == ["'spec' doesn't contain any items."]


# ---------------------------------------------------------------------------------------------
# The generator on a synthetic collection
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "roles" / "demo" / "meta").mkdir(parents=True)
    for role in ("envoy", "workload_certs"):  # status.yml's survey asks some of their options
        (tmp_path / "roles" / role / "meta").mkdir(parents=True)
        shutil.copy(REPO / "roles" / role / "meta" / "argument_specs.yml", tmp_path / "roles" / role / "meta")
    for playbook in gen.PLAYBOOKS:
        (tmp_path / "playbooks" / f"{playbook}.yml").write_text(yaml.safe_dump([{
            "hosts": "all",
            "vars": {"play_level": 1},
            "tasks": [{"block": [{"ansible.builtin.include_role": {"name": "fleetmesh.envoy.demo"},
                                  "vars": {"demo_pinned": "x"}}],
                       "rescue": [{"ansible.builtin.set_fact": {"demo_fact": True}}]},
                      {"ansible.builtin.include_role": {"name": "fleetmesh.envoy.missing"}}],
        }]))
    (tmp_path / "roles" / "demo" / "meta" / "argument_specs.yml").write_text(yaml.safe_dump({"argument_specs": {
        "main": {"options": {
            "demo_name": {"type": "str", "required": True, "description": "Name C(of) O(demo_level=x)."},
            "demo_token": {"type": "str", "no_log": True, "default": ""},
            "demo_passphrase": {"type": "str"},
            "demo_level": {"type": "str", "choices": ["low", "high"], "default": "low"},
            "demo_ratio": {"type": "float", "default": 0.5},
            "demo_count": {"type": "int", "default": 3},
            "demo_size": {"type": "int", "choices": [1, 2], "default": 2},
            "demo_flag": {"type": "bool", "default": False},
            "demo_items": {"type": "list", "elements": "str", "default": ["a", "b"]},
            "demo_extra": {"type": "list", "elements": "str", "default": []},
            "demo_kinds": {"type": "list", "elements": "str", "choices": ["x", "y", "z"], "default": ["x", "z"]},
            "demo_map": {"type": "dict", "default": {}},
            "demo_rules": {"type": "list", "elements": "dict", "default": []},
            "demo_pinned": {"type": "str", "default": "p"},
            "demo_fact": {"type": "bool", "default": True},
            "demo_state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        }}}}))
    return tmp_path


def test_generator_maps_types_defaults_choices_required_and_secrets(tree):
    survey = gen.build_survey("rotate_certs", tree)
    assert awx_spec_errors(survey) == []
    q = {item["variable"]: item for item in survey["spec"]}
    assert list(q)[:2] == ["rotate_certs_hosts", "rotate_certs_serial"]
    assert q["demo_name"]["type"] == "text" and q["demo_name"]["required"] is True and q["demo_name"]["min"] == 1
    assert "default" not in q["demo_name"]
    assert q["demo_name"]["question_description"] == "[demo] Name of demo_level=x."
    assert q["demo_token"]["type"] == "password" and q["demo_passphrase"]["type"] == "password"
    assert (q["demo_level"]["type"], q["demo_level"]["choices"], q["demo_level"]["default"]) == \
        ("multiplechoice", "low\nhigh", "low")
    assert (q["demo_ratio"]["type"], q["demo_ratio"]["default"]) == ("float", 0.5)
    assert (q["demo_count"]["type"], q["demo_count"]["default"]) == ("integer", 3)
    # Not preselected where AWX would send a string for a number, a boolean or a list; named instead.
    assert (q["demo_size"]["type"], q["demo_size"]["choices"]) == ("multiplechoice", "1\n2")
    assert (q["demo_flag"]["type"], q["demo_flag"]["choices"]) == ("multiplechoice", "true\nfalse")
    assert q["demo_items"]["type"] == "textarea" and q["demo_extra"]["type"] == "textarea"
    for name, text in (("demo_size", "2"), ("demo_flag", "false"), ("demo_items", "a, b"), ("demo_extra", "none")):
        assert "default" not in q[name] and q[name]["question_description"].endswith(f"Default (left empty): {text}.")
    assert (q["demo_kinds"]["type"], q["demo_kinds"]["default"]) == ("multiselect", "x\nz")
    # Structured, set by the playbook (include_role vars, set_fact in a rescue), or the runbook's state: not asked.
    assert not {"demo_map", "demo_rules", "demo_pinned", "demo_fact", "demo_state", "play_level"} & set(q)
    for name in ("demo_map", "demo_rules", "demo_pinned", "demo_fact", "demo_state"):
        assert name in survey["description"]
    assert "No argument spec yet: missing." in survey["description"]


def test_generator_check_mode_reports_drift(tree, capsys):
    assert gen.main(["--root", str(tree)]) == 0
    assert gen.main(["--root", str(tree), "--check"]) == 0
    spec_file = tree / "roles" / "demo" / "meta" / "argument_specs.yml"
    spec_file.write_text(spec_file.read_text().replace("default: 3", "default: 4"))
    assert gen.main(["--root", str(tree), "--check"]) == 1
    out = capsys.readouterr()
    assert '-      "default": 3' in out.out and '+      "default": 4' in out.out
    assert "run python tools/gen_surveys.py" in out.err


def test_generator_refuses_what_awx_cannot_ask(tree):
    spec_file = tree / "roles" / "demo" / "meta" / "argument_specs.yml"
    data = yaml.safe_load(spec_file.read_text())
    data["argument_specs"]["main"]["options"]["demo_blob"] = {"type": "bytes"}
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(gen.SurveyError, match="demo_blob has type 'bytes'"):
        gen.build_survey("onboard", tree)
    spec_file.write_text("argument_specs: {main: {options: {x: [}}}")
    assert gen.main(["--root", str(tree)]) == 2


def test_generator_reads_the_real_playbooks():
    roles, sets = gen.playbook_roles(REPO / "playbooks" / "upgrade.yml")
    assert roles[:2] == ["mesh_registration", "envoy"]
    assert {"envoy_version", "mesh_registration_healthy"} <= sets
    roles, sets = gen.playbook_roles(REPO / "playbooks" / "rotate_certs.yml")
    assert roles == ["workload_certs"]


def test_generated_tree_copy_is_stable(tmp_path):
    """Generating twice gives byte-identical files (no ordering or timestamp noise)."""
    root = tmp_path / "c"
    shutil.copytree(REPO / "playbooks", root / "playbooks")
    shutil.copytree(REPO / "roles", root / "roles", ignore=shutil.ignore_patterns("files", "templates"))
    try:
        first = gen.generate(root)
    except gen.SurveyError as exc:
        pytest.fail(str(exc))
    assert first == gen.generate(root)


def test_string_defaults_can_be_preselected_once_roles_coerce_them(tree, monkeypatch):
    monkeypatch.setattr(gen, "PRESELECT_STRING_DEFAULTS", True)
    survey = gen.build_survey("rotate_certs", tree)
    assert awx_spec_errors(survey) == []
    q = {item["variable"]: item for item in survey["spec"]}
    assert (q["demo_flag"]["default"], q["demo_size"]["default"], q["demo_items"]["default"]) == ("false", "2", "a\nb")
    assert "default" not in q["demo_extra"]  # an empty list stays an empty field: AWX would send ""
