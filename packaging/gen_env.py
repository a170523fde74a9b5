"""Generate (or --check) conf/sphincter.env from `sphincter --help`.

The env file is /etc/default/sphincter: KEY=VALUE lines read by the unit's EnvironmentFile=
and by sphincter's own SPHINCTER_* environment options. Every option of --help is listed,
commented out, with its default, so the file documents itself and stays in step with the
program: tests/release/test_release.py runs --check.

Usage: python packaging/gen_env.py [--check] [--help-cmd "python sphincter.py"] [OUT]
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(HERE, "conf", "sphincter.env")
# Options that make no sense in the environment file of the service.
SKIP = {"help", "version", "config", "check-config"}

HEADER = """\
# /etc/default/sphincter: settings of sphincter.service, one KEY=VALUE per line.
# Read by systemd (EnvironmentFile=) and by sphincter itself (SPHINCTER_* variables);
# the command line beats these, and these beat the program's defaults.
# Every option is listed below, commented out, with its default value.
# Uncomment a line to change it, then: systemctl restart sphincter
# (a bad value makes the restart fail; see: journalctl -u sphincter).
# Behind nginx (wss://), set SPHINCTER_WS_HOST=127.0.0.1.
# Generated from `sphincter --help` by packaging/gen_env.py.
"""


def help_text(cmd):
    out = subprocess.run(cmd + ["--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=dict(os.environ, COLUMNS="1000"), check=True)
    return out.stdout.decode()


def parse_options(text):
    """Yield (long_option, env_var, default, help) for each option entry of --help."""
    entries, cur = [], None
    for line in text.splitlines():
        if re.match(r"^\s{1,6}-", line):
            cur = [line.strip()]
            entries.append(cur)
        elif cur is not None and line.startswith("   ") and line.strip():
            cur.append(line.strip())
        else:
            cur = None
    for parts in entries:
        entry = " ".join(parts)
        m = re.search(r"--([a-z0-9][a-z0-9-]*)", entry)
        if not m:
            continue
        name = m.group(1)
        env = re.search(r"\[env var: (\w+)\]", entry)
        env = env.group(1) if env else "SPHINCTER_" + name.upper().replace("-", "_")
        default = re.search(r"[(\[]default: (.*?)[)\]](?:\s|$)", entry)
        default = default.group(1).strip() if default else ""
        if default in ("None", "none"):
            default = ""
        # help: after the option spelling and its metavar (two spaces apart, or next line).
        first = re.split(r"\s{2,}", parts[0], maxsplit=1)
        helpmsg = " ".join(first[1:] + parts[1:])
        helpmsg = re.sub(r"\s*[(\[](env var|default): .*?[)\]]", "", helpmsg).strip()
        yield name, env, default, helpmsg


def render(options):
    out = [HEADER.rstrip("\n")]
    for name, env, default, helpmsg in options:
        if name in SKIP:
            continue
        out.append("")
        for line in textwrap.wrap("--%s: %s" % (name, helpmsg) if helpmsg else "--" + name, 88,
                                  break_on_hyphens=False):
            out.append("# " + line)
        out.append("#%s=%s" % (env, default))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if OUT is not up to date")
    ap.add_argument("--help-cmd", default="%s %s" % (shlex.quote(sys.executable),
                                                     shlex.quote(os.path.join(HERE, "sphincter.py"))))
    ap.add_argument("out", nargs="?", default=DEFAULT_OUT)
    args = ap.parse_args()
    text = render(parse_options(help_text(shlex.split(args.help_cmd))))
    if args.check:
        with open(args.out) as f:
            if f.read() != text:
                print("%s is out of date: run python packaging/gen_env.py" % args.out)
                return 1
        return 0
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
