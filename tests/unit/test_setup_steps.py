"""The set-up keeps up with the scripts (issue 12, section 3: "a fresh machine really works").

* Every command that the project's shell scripts, the Makefile and the tests call is in the table of
  tools/doctor.sh, with what provides it: a Debian package that is in tools/setup.sh's APT_PACKAGES or is always
  there on Debian 12 (Essential or Priority required), the virtualenv (requirements.lock), or Go in /usr/local/go.
* The table tells the truth: each installed command comes from the package it names (dpkg -L).
* `make setup` runs every step of tools/setup.sh that a test relies on (the `sanity` step was missing), and
  `make demo` / `make test` run the doctor first.
* The checks can fail: the parser finds commands in a script written to break them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT

# The scripts whose commands run on the controller (the machine that runs `make`).
SCRIPT_GLOBS = ("tools/*.sh", "tools/lab/*.sh", "tools/pkg/**/*.sh", "tests/harness/*.sh", ".ci/run")

BUILTINS = set("""
    . : [ [[ ]] alias bg break builtin cd command continue declare dirs disown echo eval exec exit export false fg
    getopts hash jobs kill let local mapfile popd printf pushd pwd read readarray return set shift shopt source test
    time times trap true type typeset ulimit umask unalias unset wait
""".split())
KEYWORDS = set("if then else elif fi for in do done while until case esac function select ! { } (( ))".split())
# Commands that run another command: the one they run is a call too.
WRAPPERS = {"command", "exec", "nice", "nohup", "setsid", "xargs", "env", "time", "timeout", "flock", "sudo"}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]*$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def _strip_comment(line: str) -> str:
    quote, prev = "", " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and (quote == "'" or line[i - 1] != "\\"):
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (prev.isspace() or prev in ";|&(") and line[i - 1:i] != "$":
            return line[:i]
        prev = ch
    return line


def _substitutions(text: str) -> list[str]:
    """The bodies of $( ... ) in text (outermost first; nested ones are found when the body is parsed)."""
    found, i = [], 0
    while (start := text.find("$(", i)) != -1:
        if text.startswith("$((", start):
            i = start + 3
            continue
        depth, j = 1, start + 2
        while j < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
        found.append(text[start + 2:j - 1])
        i = j
    return found


def _simple_commands(text: str) -> list[str]:
    """Split a logical line into simple commands at unquoted | || && ; & ( ) { }."""
    parts, cur, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            cur.append(ch)
            if ch == quote and (quote == "'" or text[i - 1] != "\\"):
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == "$" and text[i + 1:i + 2] in "({":  # a substitution or expansion stays one word
            close = {"(": ")", "{": "}"}[text[i + 1]]
            depth, j = 0, i + 1
            while j < len(text):
                depth += (text[j] == text[i + 1]) - (text[j] == close)
                j += 1
                if depth == 0:
                    break
            cur.append(text[i:j])
            i = j
            continue
        elif ch in "|&;(){}" and not (ch in "{}" and cur and not cur[-1].isspace()):
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _command_of(simple: str) -> list[str]:
    try:
        words = shlex.split(simple, posix=True)
    except ValueError:
        words = simple.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("for", "select"):  # "for NAME in WORDS": no command until the next ';'
            return out
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=", w) or w in KEYWORDS:
            i += 1
            continue
        if re.match(r"^\d*(<<?|>>?)&?$", w):  # a redirection and its target
            i += 2
            continue
        if re.match(r"^\d*[<>]", w):
            i += 1
            continue
        if w in WRAPPERS:
            if w != "time":
                out.append(w)
            i += 1
            # skip the wrapper's options and their values: flock -n 9, nice -n 19, timeout 10, command -v
            while i < len(words) and (words[i].startswith("-") or words[i].isdigit() or "=" in words[i]):
                i += 2 if words[i] in ("-n", "-w", "-s", "-k") else 1
            continue
        out.append(w)
        break
    return out


def commands_in_shell(text: str) -> set[str]:
    """Command names a shell script calls (heuristic: command position of each simple command)."""
    text = re.sub(r"\\\n", " ", text)
    text = re.sub(r"\(\(.*?\)\)", " ", text)  # arithmetic
    text = re.sub(r"\b[A-Za-z_][A-Za-z0-9_]*\+?=\([^)]*\)", " ", text, flags=re.S)  # array assignments
    text = re.sub(r"(\bin|;;)\s+\(?[^\s();]+\)", r"\1 ;", text)  # case patterns after 'in' or ';;'
    lines, skip_until, in_case = [], None, 0
    for line in text.splitlines():
        if skip_until is not None:  # heredoc bodies are data (control files, specs), not commands
            if line.strip() == skip_until:
                skip_until = None
            continue
        if m := HEREDOC.search(line):
            skip_until = m.group(2)
        lines.append(_strip_comment(line))
    functions = {m.group(1) for m in re.finditer(r"^\s*(?:function\s+)?([A-Za-z_][A-Za-z0-9_-]*)\s*\(\)", text, re.M)}
    found: set[str] = set()
    todo = []
    for line in lines:
        if re.search(r"\bcase\b.*\bin\s*$", line):
            in_case += 1
        if in_case:
            line = re.sub(r"^\s*\(?[^\s()]+\)", "", line)
        if re.search(r"\besac\b", line):
            in_case = max(0, in_case - 1)
        todo.append(line)
    while todo:
        chunk = todo.pop()
        todo.extend(_substitutions(chunk))
        for simple in _simple_commands(chunk):
            for cmd in _command_of(simple):
                if NAME.match(cmd) and cmd not in BUILTINS and cmd not in functions:
                    found.add(cmd)
    return found


def commands_in_makefile(text: str) -> set[str]:
    shell = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        shell.extend(re.findall(r"\$\(shell ([^)]*)\)", line))
        if line.startswith("\t"):
            shell.append(re.sub(r"\$\([A-Za-z_]+\)", "X", line.strip().lstrip("@-")).replace("$$", "$"))
    return commands_in_shell("\n".join(shell))


def commands_in_tests() -> set[str]:
    found: set[str] = set()
    for f in (ROOT / "tests").rglob("*.py"):
        found |= set(re.findall(r"""\b(?:need|shutil\.which)\(\s*["']([A-Za-z0-9_.+-]+)["']""", f.read_text()))
    return found


def script_files() -> list[Path]:
    files = {p for g in SCRIPT_GLOBS for p in ROOT.glob(g) if p.is_file()}
    return sorted(files)


def called_commands() -> dict[str, set[str]]:
    """command -> the files that call it."""
    where: dict[str, set[str]] = {}
    sources = [(str(p.relative_to(ROOT)), commands_in_shell(p.read_text())) for p in script_files()]
    sources.append(("Makefile", commands_in_makefile((ROOT / "Makefile").read_text())))
    sources.append(("tests/**/*.py", commands_in_tests()))
    for name, cmds in sources:
        for c in cmds:
            where.setdefault(c, set()).add(name)
    return where


def doctor_table() -> dict[str, str]:
    text = (ROOT / "tools" / "doctor.sh").read_text()
    block = re.search(r"^COMMANDS=\($(.*?)^\)", text, re.S | re.M)
    assert block, "tools/doctor.sh has no COMMANDS=( ... ) table"
    table = {}
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            cmd, provider = line.strip('"').split()
            table[cmd] = provider
    return table


def apt_packages() -> list[str]:
    text = (ROOT / "tools" / "setup.sh").read_text()
    block = re.search(r"^APT_PACKAGES=\((.*?)\)", text, re.S | re.M)
    assert block, "tools/setup.sh has no APT_PACKAGES=( ... )"
    return block.group(1).split()


@cache
def _dpkg(*args: str) -> str:
    proc = subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def always_on_debian(pkg: str) -> bool:
    """Essential or Priority required: debootstrap's minbase has it on every Debian 12."""
    return _dpkg("-W", "-f=${Essential} ${Priority}", pkg).split()[:2] in (["yes", "required"], ["no", "required"]) \
        or _dpkg("-W", "-f=${Essential}", pkg).strip() == "yes"


def need_dpkg() -> None:
    if shutil.which("dpkg-query") is None:
        msg = "dpkg-query is missing: these checks run on Debian 12 (the machine 'make setup' supports)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


# --- the parser finds what it must (so the checks below can fail) -------------------------------------------


def test_parser_finds_commands_in_every_position():
    script = """#!/usr/bin/env bash
set -euo pipefail
helper() { grep -q x /dev/null; }
x="$(sha256sum "$0" | cut -c1-12)"   # a comment naming notacommand
[ -f y ] || die "no"; podman run --rm img true && ssh-keygen -q -f k
for f in a b; do rpmbuild -bb "$f" >/dev/null 2>&1; done
case "$1" in
  up) mmdebstrap --quiet bookworm out ;;
  -h|--help) sed -n 2,5p "$0" ;;
esac
exec 9>lock; flock -n 9 createrepo_c -q dir
FOO=1 BAR=2 unzip -q w.whl
cat <<CTL
Package: not-a-command
fleetmesh data line
CTL
command -v go >/dev/null
helper
"""
    found = commands_in_shell(script)
    assert {"grep", "sha256sum", "cut", "podman", "ssh-keygen", "rpmbuild", "mmdebstrap", "sed", "flock",
            "createrepo_c", "unzip", "cat", "go", "die"} <= found, found
    assert not found & {"notacommand", "helper", "up", "fleetmesh", "Package", "x", "FOO", "set", "true"}, found


def test_parser_reads_makefile_recipes():
    found = commands_in_makefile("A := $(shell sha256sum f | cut -c1-12)\nt:\n\t@tools/x.sh a\n\t-@python3 y.py\n"
                                 "\tpytest -q; rc=$$?; podman ps; exit $$rc\n")
    assert {"sha256sum", "cut", "python3", "pytest", "podman"} <= found, found


def test_a_command_missing_from_the_table_is_reported(tmp_path):
    script = tmp_path / "new.sh"
    script.write_text("#!/bin/bash\nskopeo copy a b\npodman ps\n")
    missing = commands_in_shell(script.read_text()) - set(doctor_table())
    assert missing == {"skopeo"}, missing


# --- the table, the apt list and the scripts agree ------------------------------------------------------------


def test_every_called_command_is_in_the_doctor_table():
    table = doctor_table()
    missing = {c: sorted(w) for c, w in called_commands().items() if c not in table}
    assert not missing, ("commands called but not in tools/doctor.sh's COMMANDS table (add 'command provider', "
                         f"and the package to tools/setup.sh APT_PACKAGES): {missing}")


def test_every_debian_package_in_the_table_is_installed_by_setup():
    need_dpkg()
    apt = set(apt_packages())
    wrong = {c: p for c, p in doctor_table().items()
             if p not in ("venv", "go") and p not in apt and not always_on_debian(p)}
    assert not wrong, (f"commands whose Debian package is neither in tools/setup.sh APT_PACKAGES nor always on "
                       f"Debian 12 (setup installs with --no-install-recommends): {wrong}")


def test_the_table_names_the_package_that_ships_each_command():
    need_dpkg()
    wrong = {}
    for cmd, pkg in doctor_table().items():
        if pkg in ("venv", "go"):
            continue
        files = _dpkg("-L", pkg)
        assert files, f"Debian package {pkg} (for {cmd}) is not installed; run 'make setup'"
        # awk and iptables are alternatives (/etc/alternatives): the package ships the file they point to.
        path = shutil.which(cmd, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        names = {cmd} | ({Path(os.path.realpath(path)).name} if path else set())
        if not any(re.search(rf"/s?bin/{re.escape(n)}$", files, re.M) for n in names):
            wrong[cmd] = pkg
    assert not wrong, f"these packages do not ship the command the doctor table says: {wrong}"


def test_venv_and_go_commands_are_where_the_table_says():
    venv = ROOT / ".venv" / "bin"
    missing = [c for c, p in doctor_table().items() if p == "venv" and not (venv / c).exists()]
    assert not missing, f"not in {venv} (requirements.lock; run 'make setup'): {missing}"
    go = [c for c, p in doctor_table().items() if p == "go"]
    assert go == ["go"], go
    assert shutil.which("go", path=f"{os.environ.get('PATH', '')}:/usr/local/go/bin"), \
        "Go is missing: it is not an apt package here; unpack a go1.26+ tarball into /usr/local/go"


def test_packages_the_scripts_need_without_calling_them_are_listed():
    # Called by other programs, not by the scripts: netavark runs iptables (without it `podman run --network X`
    # fails with "netavark: No such file or directory"), podman runs runc (containers.conf selects it).
    apt = set(apt_packages())
    for pkg in ("iptables", "runc", "netavark", "python3-venv", "ca-certificates", "openssh-client", "shellcheck"):
        assert pkg in apt, f"{pkg} missing from tools/setup.sh APT_PACKAGES"
    assert doctor_table().get("iptables") == "iptables"


# --- the make targets prepare what the tests assert -------------------------------------------------------------


def make_recipe(target: str) -> tuple[list[str], str]:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:([^\n=]*)\n((?:\t[^\n]*\n)*)", text, re.M)
    assert m, f"Makefile has no target {target}"
    return m.group(1).split(), m.group(2)


def setup_steps_run_by(target: str) -> set[str]:
    recipe = make_recipe(target)[1]
    run = re.search(r"tools/setup\.sh([^\n;&|]*)", recipe)
    assert run, f"make {target} does not run tools/setup.sh:\n{recipe}"
    return set(run.group(1).split())


def test_make_setup_and_kube_build_run_every_setup_step():
    steps = set(re.findall(r"^step_([a-z]+)\(\)", (ROOT / "tools" / "setup.sh").read_text(), re.M))
    # make kube-build: cold builds of minutes, for the harness tests and the demo
    go_builds = {"kube", "contour", "istiod"}
    assert go_builds <= steps
    setup, kube = setup_steps_run_by("setup"), setup_steps_run_by("kube-build")
    assert steps - go_builds <= setup, f"make setup does not run setup.sh steps {sorted(steps - go_builds - setup)}"
    assert go_builds <= kube, f"make kube-build does not run setup.sh steps {sorted(go_builds - kube)}"
    for target in ("test", "integration", "molecule", "demo", "bench"):
        assert "kube-build" in make_recipe(target)[0], f"make {target} does not prepare the Go builds (kube-build)"


def test_demo_and_test_run_the_doctor_first():
    for target in ("demo", "test"):
        prereqs = make_recipe(target)[0]
        assert prereqs[:2] == ["setup", "doctor"], f"make {target}: prerequisites {prereqs}; want setup, doctor first"
    prereqs, recipe = make_recipe("doctor")
    assert "setup" in prereqs and "tools/doctor.sh" in recipe


def test_make_test_leaves_no_lab_running():
    recipe = make_recipe("test")[1]
    lines = [line.strip() for line in recipe.splitlines()]
    pytest_line = next(i for i, line in enumerate(lines) if "pytest" in line)
    after = " ".join(lines[pytest_line:])
    assert "lab.sh down" in after and "exit $$rc" in after, recipe


def test_doctor_names_a_missing_command_and_its_package(tmp_path):
    # A PATH with every command of the table but rpmbuild and mmdebstrap: the doctor names both and the packages.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for cmd, provider in doctor_table().items():
        path = shutil.which(cmd)
        if provider not in ("venv", "go") and cmd not in ("rpmbuild", "mmdebstrap") and path:
            (bindir / cmd).symlink_to(path)
    proc = subprocess.run([str(bindir / "bash"), str(ROOT / "tools" / "doctor.sh"), "commands"],
                          env={"PATH": str(bindir)}, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rpmbuild (Debian package rpm)" in proc.stderr and "mmdebstrap (Debian package mmdebstrap)" in proc.stderr
    fix = re.search(r"apt-get install --no-install-recommends ([a-z0-9 .+-]+)", proc.stderr)
    assert fix and set(fix.group(1).split()) == {"rpm", "mmdebstrap"}, proc.stderr
    assert "make setup" in proc.stderr
