"""Generate the AWX survey specs of the runbooks from the roles' meta/argument_specs.yml.

    python tools/gen_surveys.py            # (re)write awx/surveys/<playbook>.json
    python tools/gen_surveys.py --check    # exit 1 naming every file that differs from its sources

One survey per runbook (onboard, upgrade, rotate_certs, decommission, status). Its questions are:

* the playbook-level variables declared in PLAYBOOK_VARS below (``upgrade_to``, ``target``, ...);
* every option of every role the playbook includes (found by reading the playbook), in playbook order,
  with the type, default, choices and required flag of the argument spec.

Left out, because AWX hands every survey default to the job as an extra var, and extra vars beat every
other variable (a question would silently override them):

* variables the playbook sets itself (``vars:`` of an include_role, ``set_fact``, play ``vars``), such as
  ``envoy_version`` in upgrade.yml, which the play sets from ``upgrade_to`` for the switch and the rollback;
* a role's ``<role>_state`` option: the runbook is the choice (onboard installs, decommission removes);
* structured options (``dict``, lists of dicts) and per-host options (INVENTORY_OWNED): they belong in
  group_vars/host_vars, as docs/inventories.md describes. The survey's description names them.

Type mapping (AWX survey types): str/path/raw -> text, int -> integer, float -> float,
bool -> multiplechoice true/false, list -> textarea (one item per line) or multiselect when it has
choices, anything with choices -> multiplechoice. Defaults are kept where AWX hands them back in the
option's type; the others are named in the description (see PRESELECT_STRING_DEFAULTS). Secrets (no_log,
or a name ending in token, password, passphrase, secret or key) are ``password`` questions.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path("awx") / "surveys"
PLAYBOOKS = ("onboard", "upgrade", "rotate_certs", "decommission", "status")
COLLECTION = "fleetmesh.envoy"

TEXT_MAX = 1024
TEXTAREA_MAX = 4096

# AWX sends every survey default to the job as an extra var, also when nobody touched the question. A
# multiple choice answer is a string and a textarea answer is one string, so the defaults of booleans,
# of non-string choices and of lists without choices would reach the roles as "false", "2048" or
# "a\nb" instead of false, 2048 or [a, b], and override the inventory. Those questions are therefore not
# preselected (the description names the role's default, which applies when the question is left empty);
# set this to True once every role coerces such strings (| bool, splitlines).
PRESELECT_STRING_DEFAULTS = False

# Role options that are per host or per service by nature: they stay in the inventory.
INVENTORY_OWNED = frozenset({"mesh_registration_healthy"})

_SECRET_RE = re.compile(r"(^|_)(token|password|passphrase|secret|key)$")
_MARKUP_RE = re.compile(r"\b(?:[A-Z]|RV)\(([^()]*)\)")

# Playbook-level variables, asked first. Either a spec like an argument spec option, or
# {"from": "<role>"} to take the option of that name from the role's argument spec (status.yml
# reads some role variables without including the role).
PLAYBOOK_VARS: dict[str, dict[str, dict[str, Any]]] = {
    "onboard": {
        "target": {"type": "str", "default": "all",
                   "description": "Inventory group or pattern of the hosts to onboard."},
        "fleetmesh_workload_certs": {"type": "bool", "default": True,
                                     "description": "Issue and install the workload certificates (workload_certs)."},
        "fleetmesh_envoy": {"type": "bool", "default": True, "description": "Install and run Envoy (envoy)."},
        "fleetmesh_istio_sidecar": {"type": "bool", "default": False,
                                    "description": "Install and start the Istio sidecar (istio_sidecar). The workload "
                                                   "certificates then go to istio_sidecar_certs_src_dir, and the "
                                                   "sidecar copies them to /etc/certs for istio-proxy."},
    },
    "upgrade": {
        "upgrade_to": {"type": "str", "required": True, "description": "Envoy version to roll out, X.Y.Z."},
        "target": {"type": "str", "default": "all",
                   "description": "Inventory group or pattern of the hosts to upgrade."},
        "upgrade_serial": {"type": "str",
                           "description": "Batch size of the rollout, a number or a percentage (25%). Empty: the "
                                          "playbook's canary first, then 34%, then the rest."},
        "upgrade_max_fail_percentage": {"type": "int", "default": 0,
                                        "description": "Failed hosts (percent of a batch) tolerated before the rollout "
                                                       "stops."},
        "upgrade_register": {"type": "bool",
                             "description": "Mark hosts not ready/ready in Kubernetes around the switch. Empty: when a "
                                            "kubeconfig credential is attached (fleetmesh_kubeconfig is set)."},
        "upgrade_drain_seconds": {"type": "int", "default": 10,
                                  "description": "Seconds to wait for in-flight requests to drain before the switch."},
        "upgrade_probe_path": {"type": "str", "default": "/",
                               "description": "Path of the request sent through the listener by the health gate."},
        "upgrade_health_url": {"type": "str",
                               "description": "Optional extra URL the health gate must get a 200 from, per host."},
    },
    "rotate_certs": {
        "rotate_certs_hosts": {"type": "str", "default": "all",
                               "description": "Inventory group or pattern of the hosts whose certificates to rotate."},
        "rotate_certs_serial": {"type": "str", "default": "100%",
                                "description": "Batch size, a number or a percentage; each batch is signed in one "
                                               "controller task."},
    },
    "decommission": {
        "target": {"type": "str", "required": True,
                   "description": "Inventory group or pattern of the hosts to decommission (no default: say which)."},
        "decommission_drain_seconds": {"type": "int", "default": 5,
                                       "description": "Seconds to drain the listeners before Envoy is removed."},
        "fleetmesh_istio_sidecar": {"type": "bool", "default": False,
                                    "description": "Also remove the Istio sidecar (istio_sidecar)."},
    },
    "status": {
        "target": {"type": "str", "default": "all",
                   "description": "Inventory group or pattern of the hosts to report on."},
        "status_report_dir": {"type": "str",
                              "description": "Controller directory for report.json, status.json/.html/.md. Empty: "
                                             "./fleetmesh-status in the job's working directory."},
        "status_cert_warn_days": {"type": "int", "default": 14,
                                  "description": "A certificate with fewer days left counts as a problem."},
        "envoy_admin_address": {"from": "envoy"},
        "envoy_admin_port": {"from": "envoy"},
        "envoy_health_path": {"from": "envoy"},
        "workload_certs_dir": {"from": "workload_certs"},
    },
}


class SurveyError(Exception):
    """A source the generator cannot turn into a valid survey (the message says which and why)."""


# ---------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------

def load_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise SurveyError(f"cannot read {path}: {exc}") from None


def role_options(root: Path, role: str) -> dict[str, dict[str, Any]] | None:
    """The options of the role's main entry point, or None when it has no argument spec (yet)."""
    path = root / "roles" / role / "meta" / "argument_specs.yml"
    if not path.is_file():
        return None
    data = load_yaml(path) or {}
    main = (data.get("argument_specs") or {}).get("main") or {}
    return dict(main.get("options") or {})


def _short_role(name: str) -> str:
    return name[len(COLLECTION) + 1:] if name.startswith(COLLECTION + ".") else name


def _walk_tasks(tasks: Iterable[Any]) -> Iterator[Mapping[str, Any]]:
    for task in tasks or []:
        if not isinstance(task, Mapping):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from _walk_tasks(task.get(key) or [])


def playbook_roles(path: Path) -> tuple[list[str], set[str]]:
    """(roles the playbook includes, in order; variables the playbook sets itself)."""
    plays = load_yaml(path) or []
    roles: list[str] = []
    sets: set[str] = set()

    def add(name: Any) -> None:
        if isinstance(name, str) and "{{" not in name:
            short = _short_role(name)
            if short not in roles:
                roles.append(short)

    for play in plays:
        if not isinstance(play, Mapping):
            continue
        sets.update((play.get("vars") or {}).keys())
        for entry in play.get("roles") or []:
            if isinstance(entry, Mapping):
                add(entry.get("role") or entry.get("name"))
                sets.update((entry.get("vars") or {}).keys())
            else:
                add(entry)
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            for task in _walk_tasks(play.get(section) or []):
                for action in ("ansible.builtin.include_role", "include_role", "ansible.builtin.import_role",
                               "import_role"):
                    if action in task:
                        add((task[action] or {}).get("name"))
                        sets.update((task.get("vars") or {}).keys())
                for action in ("ansible.builtin.set_fact", "set_fact"):
                    if isinstance(task.get(action), Mapping):
                        sets.update(k for k in task[action] if k != "cacheable")
    return roles, sets


# ---------------------------------------------------------------------------------------------
# Building questions
# ---------------------------------------------------------------------------------------------

def plain(text: Any) -> str:
    """Argument spec description (string or list) as plain text: no C()/V()/O() markup."""
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    text = " ".join(str(text or "").split())

    def repl(m: re.Match[str]) -> str:
        inner = m.group(1)
        if "#" in inner and ":" in inner:  # O(fleetmesh.envoy.mesh_registration#module:shapes)
            inner = inner.rsplit(":", 1)[1]
        return inner

    prev = None
    while prev != text:
        prev, text = text, _MARKUP_RE.sub(repl, text)
    return text


def is_secret(name: str, spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("no_log")) or bool(_SECRET_RE.search(name))


def is_structured(spec: Mapping[str, Any]) -> bool:
    kind = spec.get("type", "str")
    return kind == "dict" or (kind == "list" and spec.get("elements", "str") in ("dict", "list"))


def _choice_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _default_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_choice_text(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "none"
    return _choice_text(value)


def question(name: str, spec: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One AWX survey question for one argument-spec option."""
    kind = spec.get("type", "str")
    choices = spec.get("choices")
    required = bool(spec.get("required", False))
    has_default = "default" in spec and spec["default"] is not None
    default = spec.get("default")
    description = plain(spec.get("description"))
    q: dict[str, Any] = {
        "question_name": name,
        "question_description": f"[{source}] {description}".strip(),
        "variable": name,
        "required": required,
    }
    # The survey default to preselect, or None when AWX would hand it back in another type than the option's.
    survey_default: Any = None
    if is_structured(spec):
        raise SurveyError(f"{source}: {name} is a {kind} of {spec.get('elements', 'values')}; it belongs in inventory")
    if is_secret(name, spec):
        if kind not in ("str", "path", "raw"):
            raise SurveyError(f"{source}: secret {name} has type {kind}; allowed: str, path or raw")
        q.update(type="password", min=0, max=TEXT_MAX)
        if isinstance(default, str):
            survey_default = default
    elif kind == "list":
        if has_default and not isinstance(default, list):
            raise SurveyError(f"{source}: {name} is a list but its default {default!r} is not")
        if choices:
            # The form sends a multiselect answer as a list: the option's type.
            q.update(type="multiselect", choices="\n".join(_choice_text(c) for c in choices))
            if has_default:
                survey_default = "\n".join(_choice_text(v) for v in default)
        else:
            q.update(type="textarea", min=0, max=TEXTAREA_MAX)
            q["question_description"] += " One item per line."
            if has_default and default and PRESELECT_STRING_DEFAULTS:
                survey_default = "\n".join(_choice_text(v) for v in default)
    elif kind == "bool":
        q.update(type="multiplechoice", choices="true\nfalse")
        if has_default and PRESELECT_STRING_DEFAULTS:
            survey_default = _choice_text(bool(default))
    elif choices:
        q.update(type="multiplechoice", choices="\n".join(_choice_text(c) for c in choices))
        if has_default and (isinstance(default, str) or PRESELECT_STRING_DEFAULTS):
            survey_default = _choice_text(default)
    elif kind == "int":
        q["type"] = "integer"
        if has_default:
            survey_default = int(default)
    elif kind == "float":
        q["type"] = "float"
        if has_default:
            survey_default = float(default)
    elif kind in ("str", "path", "raw"):
        # A required text must not be empty; AWX checks the length against min.
        q.update(type="text", min=1 if required else 0, max=TEXT_MAX)
        if has_default and (isinstance(default, str) or kind != "raw"):
            survey_default = str(default)
    else:
        raise SurveyError(f"{source}: {name} has type {kind!r}, which has no AWX survey type")
    if survey_default is not None:
        q["default"] = survey_default
    elif has_default:
        q["question_description"] += f" Default (left empty): {_default_text(default)}."
    if required and has_default:
        raise SurveyError(f"{source}: {name} is required and has a default; an argument spec allows only one")
    return q


def build_survey(playbook: str, root: Path = ROOT) -> dict[str, Any]:
    path = root / "playbooks" / f"{playbook}.yml"
    roles, playbook_sets = playbook_roles(path)
    specs: dict[str, dict[str, Any] | None] = {}

    def options_of(role: str) -> dict[str, dict[str, Any]] | None:
        if role not in specs:
            specs[role] = role_options(root, role)
        return specs[role]

    questions: list[dict[str, Any]] = []
    seen: set[str] = set()
    not_asked: list[str] = []

    def add(name: str, spec: Mapping[str, Any], source: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in playbook_sets or name in INVENTORY_OWNED or name == f"{source}_state" or is_structured(spec):
            not_asked.append(name)
            return
        questions.append(question(name, spec, source))

    for name, spec in PLAYBOOK_VARS.get(playbook, {}).items():
        if "from" in spec:
            options = options_of(spec["from"]) or {}
            if name not in options:
                raise SurveyError(f"{playbook}: {name} is not an option of role {spec['from']}")
            add(name, options[name], spec["from"])
        else:
            add(name, spec, playbook)
    used, pending = [], []
    for role in roles:
        options = options_of(role)
        if options is None:
            pending.append(role)
            continue
        used.append(role)
        for name, spec in options.items():
            add(name, spec, role)

    description = f"Generated by tools/gen_surveys.py from playbooks/{playbook}.yml"
    if used:
        description += " and the argument specs of " + ", ".join(used)
    description += "."
    if not_asked:
        description += (" Not asked (set by the playbook, or per service/host in inventory): "
                        + ", ".join(not_asked) + ".")
    if pending:
        description += " No argument spec yet: " + ", ".join(pending) + "."
    return {"name": f"{COLLECTION} {playbook}", "description": description, "spec": questions}


def render(survey: Mapping[str, Any]) -> str:
    return json.dumps(survey, indent=2, ensure_ascii=False) + "\n"


def generate(root: Path = ROOT) -> dict[Path, str]:
    """Relative output path -> file content, for every runbook."""
    return {OUT_DIR / f"{playbook}.json": render(build_survey(playbook, root)) for playbook in PLAYBOOKS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    parser.add_argument("--root", type=Path, default=ROOT, help="collection root (default: this tree)")
    args = parser.parse_args(argv)
    try:
        files = generate(args.root)
    except SurveyError as exc:
        print(f"gen_surveys: {exc}", file=sys.stderr)
        return 2
    drift = []
    for rel, content in files.items():
        target = args.root / rel
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current == content:
            continue
        if args.check:
            drift.append(rel)
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), content.splitlines(True),
                                                       str(rel), f"{rel} (generated)"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
            print(f"gen_surveys: wrote {rel}")
    if drift:
        print("gen_surveys: out of date: " + ", ".join(map(str, drift)) + "; run python tools/gen_surveys.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
