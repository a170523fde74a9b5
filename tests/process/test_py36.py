"""CPython 3.6 is the oldest supported Python: the code keeps to its syntax.

The runtime side (library calls 3.6 lacks fail only when they run) is covered by the 3.6 tier
(`make test-py36`, run by `make test`: the relay contract tests under 3.6) and by
tests/release/test_release.py::test_single_file_mode_on_cpython (a venv per CPython 3.6 to 3.13 from
requirements.txt, relaying through `pythonX.Y sphincter.py`). This test is the quick guard in
the main suite: every module of the program, and every test module the 3.6 tier runs, compiles
with the real CPython 3.6.
"""
import glob
import os
import re
import subprocess

from testkit import require, unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMPILE_ALL = r"""
import sys
bad = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        source = f.read()
    try:
        compile(source, path, "exec")
    except SyntaxError as exc:
        bad.append("%s:%s: %s" % (path, exc.lineno, exc.msg))
print("\n".join(bad))
sys.exit(1 if bad else 0)
"""


def python36():
    """CPython 3.6 as the Makefile finds it (PY36=, pyenv's versions, /usr[/local]/bin)."""
    if os.environ.get("PY36"):
        return os.environ["PY36"]
    roots = [os.environ.get("PYENV_ROOT", ""), "/root/.pyenv", os.path.expanduser("~/.pyenv")]
    found = [p for r in roots if r for p in sorted(glob.glob(os.path.join(r, "versions", "3.6*",
                                                                         "bin", "python3.6")))]
    found += [p for p in ("/usr/bin/python3.6", "/usr/local/bin/python3.6") if os.path.exists(p)]
    require("CPython 3.6", bool(found), "pyenv install 3.6.15, or set PY36=")
    return found[0]


def tier_tests():
    """The test files of the 3.6 tier, as mk/py36.mk lists them (PY36_TESTS)."""
    with open(os.path.join(ROOT, "mk", "py36.mk")) as f:
        text = f.read()
    block = re.search(r"^PY36_TESTS \?=((?:.*\\\n)*.*)$", text, re.M).group(1)
    return re.findall(r"tests/\S+\.py", block)


def package_files():
    """Every module of the package, in every subpackage."""
    files = sorted(glob.glob(os.path.join(ROOT, "sphincter_lib", "**", "*.py"), recursive=True))
    assert len(files) >= 30
    return files


def test_program_and_tier_tests_compile_on_cpython_36():
    files = [os.path.join(ROOT, "sphincter.py")]
    files += package_files()
    files += [os.path.join(ROOT, "tests", n) for n in ("conftest.py", "testkit.py",
                                                      "hardening_util.py", "release_helpers.py")]
    files += [os.path.join(ROOT, t) for t in tier_tests()]
    assert len(tier_tests()) >= 10 and all(os.path.exists(f) for f in files)
    p = subprocess.run([python36(), "-c", COMPILE_ALL] + files, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=unit(60))
    assert p.returncode == 0, "syntax CPython 3.6 lacks:\n" + p.stdout.decode()


def test_package_avoids_library_calls_cpython_36_lacks():
    """A cheap net for the usual 3.7+ calls (they fail only at run time, which the 3.6 tier
    catches where it covers the code): none of them in the program."""
    banned = [r"^\s*(from|import) dataclasses", r"\.removeprefix\(", r"\.removesuffix\(",
              r"\bnullcontext\b", r"\bmonotonic_ns\(", r"\btime_ns\(", r"\basyncio\.run\(",
              r"from __future__ import annotations", r"\.isascii\(\)", r"\bcapture_output=",
              r":=", r"\bcached_property\b"]
    hits = []
    for path in [os.path.join(ROOT, "sphincter.py")] + package_files():
        with open(path) as f:
            for n, line in enumerate(f, 1):
                code = line.split("#", 1)[0]
                hits += ["%s:%d: %s" % (os.path.relpath(path, ROOT), n, line.strip())
                         for pattern in banned if re.search(pattern, code)]
    assert not hits, "3.7+ only (see README, Python versions):\n" + "\n".join(hits)
