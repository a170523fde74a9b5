"""The man page sphincter(1) (packaging/manpage.py, shipped in the .deb and the .rpm) lists every
option of both option tables, and renders without a groff warning (lintian checks that too).

Fast: the generator runs under a bare python3 (no configargparse needed, as in a build root).
"""
import os
import re
import subprocess
import sys

import pytest

from release_helpers import ROOT, require_tools, run, unit

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from gen_options_docs import load_options  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def manpage(tmp_path_factory):
    out = tmp_path_factory.mktemp("man") / "sphincter.1"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    run([sys.executable, os.path.join(ROOT, "packaging", "manpage.py"), str(out)], env=env,
        timeout=unit(30))
    return out.read_text()


def unroff(text):
    return text.replace("\\-", "-").replace("\\%", "").replace("\\fB", "").replace("\\fR", "")


def test_every_option_is_listed_with_its_env_var_and_default(manpage):
    relay, connect = load_options()
    text = unroff(manpage)
    for o in relay:
        if o.hidden:
            assert o.flag not in text, o.flag
            continue
        entry = re.search(r"^\.TP\n(?:-\w, )?%s(?![\w-]).*\n(.*)$" % re.escape(o.flag), text, re.M)
        assert entry, "%s missing from the man page" % o.flag
        assert "environment %s; config key %s;" % (o.env, o.name) in entry.group(1), o.flag
        default = "default %s)" % o.default if o.default != "" else "default empty)"
        assert entry.group(1).endswith(default + "."), (o.flag, entry.group(1))
    section = text.split(".SH CONNECT OPTIONS", 1)[1]
    for o in connect:
        assert re.search(r"^--%s(?![\w-])" % re.escape(o.name), section, re.M), "connect --" + o.name
        assert "environment %s" % o.env in section, o.env
    for flag in ("--config", "--check-config", "--version", "--help"):
        assert re.search(r"^(-\w, )?%s(?![\w-])" % flag, text, re.M), flag


def test_the_date_is_source_date_epoch_and_the_version_the_package_s(manpage):
    from sphincter_lib import __version__
    assert manpage.startswith('.TH SPHINCTER 1 "2023-11-14" "sphincter %s"' % __version__)


def test_no_line_starts_with_a_stray_control_character(manpage):
    for line in manpage.splitlines():
        assert not line.startswith("'"), line
        assert not line.startswith(".") or re.match(r"^\.(TH|SH|TP|PP|B|BI|BR|RI|br)\b", line), line


def test_it_renders_without_warnings(manpage, tmp_path):
    require_tools("groff")
    path = tmp_path / "sphincter.1"
    path.write_text(manpage)
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=unit(30))
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    # lintian's own check: man --warnings, line length 80
    out = subprocess.run(["groff", "-man", "-Tutf8", "-rLL=80n", str(path)], stdout=subprocess.PIPE,
                         universal_newlines=True, timeout=unit(30)).stdout
    assert "--tcp-host" in re.sub(r".\x08", "", out)


def test_it_runs_under_a_bare_python3_without_configargparse(tmp_path):
    """The rpm and deb builds call `python3 packaging/manpage.py OUT` outside any venv."""
    out = tmp_path / "sphincter.1"
    code = ("import sys, runpy; sys.modules['configargparse'] = None; "
            "sys.argv = ['manpage.py', %r]; runpy.run_path(%r, run_name='__main__')"
            % (str(out), os.path.join(ROOT, "packaging", "manpage.py")))
    p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=unit(30),
                       env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"))
    assert p.returncode == 0, p.stderr
    assert "\\-\\-tcp\\-host" in out.read_text()
