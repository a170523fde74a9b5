#!/usr/bin/env python3
"""Regenerate the option table in README.md, conf/sphincter.conf and conf/sphincter.env
(via packaging/gen_env.py) from sphincter_lib.relay.config.OPTIONS. packaging/manpage.py
reads the same table (and `sphincter connect`'s) through :func:`load_options`.

Run after adding an option: ``.venv/bin/python scripts/gen_options_docs.py``.
tests/unit/relay/test_config.py checks both stay in step with the code.
"""
import os
import re
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_options(root=ROOT):
    """(the relay's OPTIONS, `sphincter connect`'s OPTIONS) from the package under ``root``.

    The declarations need only the standard library, but sphincter_lib.options subclasses
    configargparse's parser when imported: where configargparse is missing (a bare python3
    building the man page) a stand-in serves for the import, and no parser is built."""
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        import configargparse  # noqa: F401
    except ImportError:
        import argparse
        import types
        stand_in = types.ModuleType("configargparse")
        stand_in.ArgParser = argparse.ArgumentParser
        sys.modules["configargparse"] = stand_in
    from sphincter_lib.agent.options import OPTIONS as connect_options
    from sphincter_lib.relay.config import OPTIONS as relay_options
    return relay_options, connect_options


OPTIONS = load_options()[0]

START, END = "<!-- options:start -->", "<!-- options:end -->"


def table():
    rows = ["| flag | env var | config key | default | meaning |", "|---|---|---|---|---|",
            "| `-c`, `--config` | `SPHINCTER_CONFIG` | — | none | config file: `key = value` lines |"]
    for o in OPTIONS:
        default = "`%s`" % o.default if o.default != "" else "empty"
        rows.append("| `%s` | `%s` | `%s` | %s | %s |" % (o.flag, o.env, o.name, default,
                                                       o.help.replace("|", "\\|")))
    return "\n".join(rows)


def conf():
    out = ["# Sphincter configuration: `python sphincter.py -c conf/sphincter.conf`.",
           "# One `key = value` per line; keys are the long option names. Every option is",
           "# shown with its default, commented out. Precedence: command line > environment",
           "# (SPHINCTER_*) > this file > default.", ""]
    for o in OPTIONS:
        out += ["# " + line for line in textwrap.wrap(o.help, 76, break_on_hyphens=False)]
        out.append("# (env var %s)" % o.env)
        out.append(("# %s = %s" % (o.name, o.default)).rstrip() + (" " if o.default == "" else ""))
        out.append("")
    return "\n".join(out)


def main():
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), START + "\n" + table() + "\n" + END,
                 text, flags=re.S)
    open(path, "w").write(new)
    open(os.path.join(ROOT, "conf", "sphincter.conf"), "w").write(conf())
    import subprocess
    subprocess.run([sys.executable, os.path.join(ROOT, "packaging", "gen_env.py")], check=True)


if __name__ == "__main__":
    main()
