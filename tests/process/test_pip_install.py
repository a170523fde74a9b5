"""`pip install .` into a fresh venv gives a working `sphincter` command (and `python -m
sphincter_lib`); every way to start Sphincter patches gevent before socket/ssl are imported.

Real processes and real sockets: the venv is built from a copy of the source tree (pip's own
network access is needed for the dependencies, as for `make venv`).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from release_helpers import ROOT, Server, package_modules, relay_line, require, run, unit
from sphincter_lib import __version__

pytestmark = pytest.mark.timeout(600)


def source_copy(dest):
    """The files git knows (tracked or not ignored), as `pip install .` from a checkout sees them."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               stdout=subprocess.PIPE, check=True).stdout.decode().splitlines()
    except (OSError, subprocess.CalledProcessError):    # not a git checkout: all but the caches
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
        return dest
    for name in files:
        if name.startswith(("bench/", "docs/")) or not os.path.isfile(os.path.join(ROOT, name)):
            continue
        os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv (this test run's CPython) with `pip install <copy of the tree>` done."""
    tmp = tmp_path_factory.mktemp("pip")
    src = source_copy(str(tmp / "src"))
    venv = str(tmp / "venv")
    run([sys.executable, "-m", "venv", venv], timeout=unit(120))
    run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", src], timeout=unit(400))
    return venv


def config_file(tmp_path):
    conf = tmp_path / "sphincter.conf"
    with open(os.path.join(ROOT, "conf", "sphincter.conf")) as f:
        conf.write_text(f.read() + "\ntcp-host = 127.0.0.1\ntcp-port = 0\n"
                        "ws-host = 127.0.0.1\nws-port = 0\n")
    return str(conf)


def test_installed_command_version_check_config_and_relay(installed, tmp_path):
    sphincter = os.path.join(installed, "bin", "sphincter")
    assert run([sphincter, "--version"]).stdout.strip() == "sphincter " + __version__
    conf = config_file(tmp_path)
    out = run([sphincter, "--check-config", "-c", conf]).stdout
    assert out.startswith("sphincter: configuration OK")
    with Server([sphincter, "-c", conf], tmp_path / "sphincter.log") as srv:
        _, got = relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port)
    assert got.startswith("hello from the source")
    assert srv.proc.returncode == 0, srv.log()


def test_python_m_sphincter_lib_relays(installed, tmp_path):
    python = os.path.join(installed, "bin", "python")
    # not from the source tree: the installed package (with its static files) is what runs
    out = run([python, "-c", "import sphincter_lib, sys; sys.stdout.write(sphincter_lib.__file__)"],
              cwd=str(tmp_path)).stdout
    assert out.startswith(installed), out
    # every module of every subpackage (a package setup.cfg does not name is silently left out)
    assert package_modules(os.path.dirname(os.path.dirname(out))) == package_modules()
    with Server([python, "-m", "sphincter_lib", "-c", config_file(tmp_path)],
                tmp_path / "sphincter.log") as srv:
        _, got = relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port)
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/" % srv.ws_port, timeout=unit(5)) as r:
            assert b"<html" in r.read()     # package data installed
    assert got.startswith("hello from the source")


def test_pipx_install_gives_the_command(tmp_path):
    try:
        import pipx  # noqa: F401  (requirements-dev.txt)
        have = True
    except ImportError:
        have = False
    require("pipx", have, "pip install -r requirements-dev.txt")
    src = source_copy(str(tmp_path / "src"))
    where = {"PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
             "PIPX_MAN_DIR": str(tmp_path / "man")}
    run([sys.executable, "-m", "pipx", "install", src], env=dict(os.environ, **where),
        timeout=unit(400))
    sphincter = str(tmp_path / "bin" / "sphincter")
    assert run([sphincter, "--version"]).stdout.strip() == "sphincter " + __version__
    out = run([sphincter, "--check-config", "-c", config_file(tmp_path)]).stdout
    assert out.startswith("sphincter: configuration OK")


def test_installed_metadata_repeats_requirements_txt():
    """setup.cfg's install_requires is requirements.txt, line for line (one list of pins)."""
    def pins(lines):
        return [re.sub(r"\s+", "", line) for line in lines
                if line.strip() and not line.strip().startswith("#")]

    with open(os.path.join(ROOT, "requirements.txt")) as f:
        wanted = pins(f)
    with open(os.path.join(ROOT, "setup.cfg")) as f:
        text = f.read()
    block = re.search(r"^install_requires =\n((?:[ \t]+\S.*\n)+)", text, re.M)
    assert block and pins(block.group(1).splitlines()) == wanted


def first_import(lines, name):
    for i, line in enumerate(lines):
        if line.rsplit("|", 1)[-1].strip() == name:
            return i
    return None


@pytest.mark.parametrize("how", ["sphincter", "python -m sphincter_lib", "python sphincter.py"])
def test_gevent_patches_before_socket_and_ssl_are_imported(installed, how, tmp_path):
    python = os.path.join(installed, "bin", "python")
    argv = {"sphincter": [python, "-X", "importtime", os.path.join(installed, "bin", "sphincter")],
            "python -m sphincter_lib": [python, "-X", "importtime", "-m", "sphincter_lib"],
            "python sphincter.py": [python, "-X", "importtime", os.path.join(ROOT, "sphincter.py")]}[how]
    # --check-config imports the whole program (cli imports the server) but binds nothing
    p = run(argv + ["--check-config", "--tcp-port", "0", "--ws-port", "0"], cwd=str(tmp_path))
    assert "configuration OK" in p.stdout
    lines = p.stderr.splitlines()
    assert "MonkeyPatchWarning" not in p.stderr and "monkey-patching" not in p.stderr.lower()
    monkey = first_import(lines, "gevent.monkey")
    assert monkey is not None, p.stderr[-2000:]
    for name in ("socket", "ssl", "select", "selectors", "subprocess"):
        i = first_import(lines, name)
        assert i is not None and i > monkey, "%s imported before gevent.monkey (%s)" % (name, how)
