"""Every way of shipping Sphincter holds every module of the package tree (fast checks).

A subpackage left out of a release is the worst kind of bug: the binary starts, and fails only
when the missing code runs. tests/release/test_release.py checks the built binary itself and
tests/process/test_pip_install.py an installed copy; these run in the main suite, in a second.
"""
import configparser
import os
import subprocess

from release_helpers import ROOT, package_modules, unit


def test_release_staging_copies_every_module_and_the_static_files(tmp_path):
    dest = tmp_path / "src"
    subprocess.run(["sh", os.path.join(ROOT, "packaging", "stage_src.sh"), ROOT, str(dest)],
                   check=True, timeout=unit(60))
    assert (dest / "sphincter.py").is_file()
    assert package_modules(str(dest)) == package_modules()
    static = os.path.join(ROOT, "sphincter_lib", "static")
    assert sorted(os.listdir(str(dest / "sphincter_lib" / "static"))) == sorted(os.listdir(static))
    assert not list(dest.rglob("__pycache__"))


def test_every_folder_of_the_package_is_a_package():
    """setup.cfg's ``find:`` (and PyInstaller) see only folders with an ``__init__.py``."""
    base = os.path.join(ROOT, "sphincter_lib")
    for folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "static")]
        if any(f.endswith(".py") for f in files):
            assert "__init__.py" in files, os.path.relpath(folder, ROOT)


def test_setup_cfg_finds_every_subpackage():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg.get("options", "packages").strip() == "find:"
    include = [p.strip() for p in cfg.get("options.packages.find", "include").replace(",", "\n").split()]
    assert set(include) == {"sphincter_lib", "sphincter_lib.*"}
