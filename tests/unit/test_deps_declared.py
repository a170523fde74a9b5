"""Every program, file and Debian package a test requires is declared in scripts/apt-deps.d/
(issue 18: the bench smoke test needed nchan, which only an earlier `make bench` had installed,
so `make test` failed on a fresh machine).

Fast, no server. An ast scan of tests/ finds the programs the tests name: ``shutil.which("x")``,
``require_program("x")``, ``require_tools("x", ...)``, ``require_file("/path", ...)`` and the
first word of a subprocess call's literal argv (``run(["openssl", ...])``). Each must be in
testkit.PROGRAMS or testkit.FILES, whose Debian packages must be listed in apt-deps.d (what
`make test` installs) or be Essential. The bench smoke run is covered the same way: bench/run.py
runs no target its command line does not name, tests/relay/test_bench_smoke.py names every scenario's,
and the Debian packages of those targets and of the load generator's build must be listed.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import ESSENTIAL, FILES, PROGRAMS, require_program

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "relay"))  # test_bench_smoke's tier
from test_bench_smoke import TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
APT_DEPS = ROOT / "scripts" / "apt-deps.d"

pytestmark = pytest.mark.timeout(60)

#: calls whose string arguments name programs
NAMING = {"which", "require_program", "require_tools"}
#: calls whose first argument, a literal list, is an argv
SPAWNING = {"run", "Popen", "call", "check_call", "check_output"}


def declared():
    """Package -> the apt-deps.d files listing it (parsed as scripts/system-deps.sh does)."""
    out = {}
    for path in sorted(APT_DEPS.glob("*.txt")):
        for line in path.read_text().splitlines():
            for package in line.split("#", 1)[0].split():
                out.setdefault(package, []).append(path.name)
    return out


def _name(func):
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _text(node):
    """The str of a string literal node, else None (ast.Str before 3.8, ast.Constant since)."""
    if type(node).__name__ not in ("Constant", "Str"):
        return None
    value = getattr(node, "value", getattr(node, "s", None))
    return value if isinstance(value, str) else None


def named_in(tree):
    """(programs, files) a module names, each as {name: [line, ...]}."""
    programs, files = {}, {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name, words = _name(node.func), []
        if name in NAMING:
            words = [_text(a) for a in node.args]
        elif name == "require_file" and node.args and _text(node.args[0]):
            files.setdefault(_text(node.args[0]), []).append(node.lineno)
        elif name in SPAWNING and node.args and isinstance(node.args[0], (ast.List, ast.Tuple)):
            words = [_text(node.args[0].elts[0])] if node.args[0].elts else []
        for word in filter(None, words):
            programs.setdefault(os.path.basename(word), []).append(node.lineno)
    return programs, files


def scan():
    programs, files = {}, {}
    for path in sorted(TESTS.rglob("*.py")):
        p, f = named_in(ast.parse(path.read_text(), str(path)))
        for found, into in ((p, programs), (f, files)):
            for name, lines in found.items():
                into.setdefault(name, []).extend("%s:%d" % (path.name, n) for n in lines)
    return programs, files


def test_every_program_a_test_names_is_declared():
    programs, files = scan()
    assert {"gcc", "redis-server", "openssl", "nginx"} <= set(programs)   # the scan sees them
    assert files
    undeclared = {p: where for p, where in programs.items() if p not in PROGRAMS}
    assert not undeclared, "add them and their Debian packages to testkit.PROGRAMS: %s" % undeclared
    undeclared = {f: where for f, where in files.items() if f not in FILES}
    assert not undeclared, "add these files and their packages to testkit.FILES: %s" % undeclared


def test_every_declared_package_is_in_apt_deps():
    listed = declared()
    needed = {pkg: "program " + prog for prog, pkg in PROGRAMS.items()}
    needed.update({pkg: "file " + path for path, pkg in FILES.items()})
    missing = {pkg: why for pkg, why in needed.items()
               if pkg not in listed and pkg not in ESSENTIAL}
    assert not missing, "list these Debian packages in scripts/apt-deps.d/*.txt: %s" % missing


def smoke_plan():
    """What bench/run.py would run with test_bench_smoke's targets, asked of bench/ in a child
    process (bench/ on sys.path would shadow the stdlib's `profile` here)."""
    code = """if 1:
        import json, sys
        sys.path.insert(0, "bench")
        import run, targets as T
        argv = json.loads(sys.argv[1])
        groups = run.scenario_targets(run.parser().parse_args(argv))
        get = {"relay": T.relay, "tunnel": T.tunnel, "blast": T.relay, "big": T.relay}
        print(json.dumps({
            "options": sorted(o for a in run.parser()._actions for o in a.option_strings
                              if o.endswith("-targets")),
            "groups": groups,
            "packages": {g: {n: list(get[g](n).packages) for n in names.split(",") if n}
                         for g, names in groups.items()},
            "build": list(run.WSBENCH_PACKAGES)}))
    """
    argv = [arg for option in TARGETS.items() for arg in option]
    p = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=str(ROOT),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_bench_smoke_names_every_scenario_targets_and_their_packages_are_listed():
    plan = smoke_plan()
    assert sorted(TARGETS) == plan["options"], "test_bench_smoke.TARGETS must name every one"
    for group, option in (("relay", "--targets"), ("tunnel", "--tunnel-targets"),
                          ("blast", "--blast-targets"), ("big", "--big-targets")):
        assert plan["groups"][group] == TARGETS[option], group
    listed = declared()
    needed = {pkg: "wsbench's build" for pkg in plan["build"]}
    for group, targets in plan["packages"].items():
        needed.update({pkg: "%s target %s" % (group, t)
                       for t, pkgs in targets.items() for pkg in pkgs})
    missing = {pkg: why for pkg, why in needed.items() if pkg not in listed}
    assert not missing, "list in scripts/apt-deps.d/bench.txt: %s" % missing


def test_the_package_map_is_true_here():
    """Where a program is installed from a package, dpkg says which: the map must agree; and
    ESSENTIAL names only Essential packages."""
    dpkg_query = require_program("dpkg-query")
    essential = subprocess.run([dpkg_query, "-W", "-f=${Package} ${Essential}\n"] + list(ESSENTIAL),
                               stdout=subprocess.PIPE, universal_newlines=True).stdout.split("\n")
    assert sorted(essential[:-1]) == sorted(p + " yes" for p in ESSENTIAL)
    found = {prog: shutil.which(prog) for prog in PROGRAMS}
    candidates = {prog: [path, "/bin/" + prog, "/sbin/" + prog]     # dpkg knows /bin/tar, not
                  for prog, path in found.items() if path}          # /usr/bin/tar (merged /usr)
    p = subprocess.run([dpkg_query, "-S"] + sorted({c for cs in candidates.values() for c in cs}),
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    owners = {}
    for line in p.stdout.splitlines():
        if line.startswith("diversion by ") or ": " not in line:
            continue
        packages, path = line.split(": ", 1)
        owners.setdefault(path, set()).update(x.strip().split(":")[0] for x in packages.split(","))
    shipped = {prog: set().union(*(owners.get(c, set()) for c in cs))
               for prog, cs in candidates.items()}
    assert {"gcc", "sh"} <= set(p for p, by in shipped.items() if by)     # the query worked
    wrong = {prog: sorted(by) for prog, by in shipped.items() if by and PROGRAMS[prog] not in by}
    assert not wrong, "testkit.PROGRAMS names the wrong package for: %s" % wrong
