#!/usr/bin/env python3
"""Write the man page sphincter(1) (uncompressed roff) from the option tables, the same ones the
README's table is generated from (scripts/gen_options_docs.py load_options): the relay's
options and `sphincter connect`'s, each with its environment variable, config key and default.

Usage: python3 packaging/manpage.py OUT
Any python3 >= 3.6 will do (only the standard library is needed). The date in the header is
SOURCE_DATE_EPOCH's (default: the last commit's time), so the same sources give the same bytes.
The .deb ships it gzip -9n'd; tests/unit/test_manpage.py checks it lists every option and
renders without a groff warning.
"""
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from gen_options_docs import load_options  # noqa: E402

#: options of the command line that are not in the tables: (flags, metavar, help)
RELAY_EXTRA_FIRST = [
    (("-c", "--config"), "FILE", "config file: one `key = value` per line, the keys being the long "
     "option names below (env var SPHINCTER_CONFIG)"),
]
RELAY_EXTRA_LAST = [
    (("--check-config",), None, "only check the configuration (options, config file, TLS "
     "certificates and keys, token files, host names), like nginx -t: print 'sphincter: "
     "configuration OK' and exit 0, or the error and exit 2; binds no port"),
    (("--version",), None, "print the version and exit"),
    (("-h", "--help"), None, "print every option with its environment variable and default, "
     "and exit"),
]


def roff(text):
    """Plain text as roff: backslashes escaped, option-like dashes as minus signs, and no line
    that starts with a control character."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"(?<![\w-])--(?=[a-z])", r"\\-\\-", text)
    text = re.sub(r"(?<![\w-])-(?=[a-zA-Z]\b)", r"\\-", text)
    text = text.replace("`", "")
    return "\\&" + text if text[:1] in (".", "'") else text


def bold(text):
    return "\\fB\\%%%s\\fR" % text.replace("-", "\\-")


def item(flags, metavar, helptext, env=None, key=None, default=None):
    """One .TP entry: the flags (and metavar), then the help and where else it can be set."""
    head = ", ".join(bold(f) for f in flags)
    if metavar:
        head += " \\fI%s\\fR" % roff(metavar)
    where = []
    if env:
        where.append("environment %s" % bold(env))
    if key:
        where.append("config key %s" % bold(key))
    if default is not None:
        where.append("default %s" % (bold(default) if default != "" else "empty"))
    body = roff(helptext) + (" (%s)." % "; ".join(where) if where else ".")
    return [".TP", head, body]


def page(version, date):
    relay, connect = load_options()
    out = [
        '.TH SPHINCTER 1 "%s" "sphincter %s" "User Commands"' % (date, version),
        ".SH NAME",
        "sphincter \\- relay TCP sources to WebSocket subscribers, one room per source",
        ".SH SYNOPSIS",
        ".B sphincter",
        ".RI [ OPTION ]...",
        ".br",
        ".B sphincter connect",
        ".BI \\-\\-relay \" HOST:PORT \" \\-\\-from \" SPEC\"",
        ".RI [ OPTION ]...",
        ".SH DESCRIPTION",
        "A TCP source connects to the source port and reads \\fBROOM\\fR \\fICODE\\fR; "
        "WebSocket clients that open \\fB/ws?room=\\fR\\fICODE\\fR on the WebSocket port "
        "receive what it sends, one message per line (or per chunk read, with "
        "\\fB\\-\\-framing raw\\fR).",
        ".PP",
        "Every option can be given on the command line, in the environment (SPHINCTER_*) or in "
        "the config file (\\fB\\-c\\fR), in that order of precedence, before the default. "
        "Installed as a service, the settings are KEY=VALUE lines in \\fI/etc/default/sphincter\\fR.",
        ".PP",
        "\\fBsphincter connect\\fR bridges one local service into one room, both ways, and "
        "keeps doing so (reconnecting, resuming the room).",
        ".SH OPTIONS",
    ]
    for flags, metavar, helptext in RELAY_EXTRA_FIRST:
        out += item(flags, metavar, helptext)
    for o in relay:
        if not o.hidden:
            out += item(o.short + (o.flag,), o.metavar, o.help, o.env, o.name, o.default)
    for flags, metavar, helptext in RELAY_EXTRA_LAST:
        out += item(flags, metavar, helptext)
    out += [".SH CONNECT OPTIONS", "Options of \\fBsphincter connect\\fR (\\fB\\-\\-relay\\fR "
            "and \\fB\\-\\-from\\fR are required):"]
    for o in connect:
        out += item(("--" + o.name,), o.metavar, o.help, o.env, None, o.default)
    out += [
        ".SH EXIT STATUS",
        "0 after a clean stop (SIGTERM, SIGINT) or a passed \\fB\\-\\-check\\-config\\fR; "
        "1 when a port cannot be bound or the server fails; 2 for a configuration error, "
        "with one line on standard error naming the option.",
        ".SH FILES",
        ".TP", "\\fI/etc/default/sphincter\\fR",
        "the service's settings, every option listed with its default (read by the unit's "
        "EnvironmentFile=).",
        ".TP", "\\fIsphincter.service\\fR",
        "the hardened systemd unit (in the system's unit directory); \\fIsphincter@.service\\fR "
        "runs several nodes sharing rooms through Redis, one per "
        "\\fI/etc/sphincter/instances/NAME.env\\fR.",
        ".TP", "\\fI/usr/share/doc/sphincter/examples/\\fR",
        "nginx configuration: TLS (wss://) in front of one relay, and in front of several nodes.",
        ".SH SEE ALSO",
        ".BR systemctl (1),",
        ".BR journalctl (1),",
        ".BR nginx (8)",
    ]
    return "\n".join(out) + "\n"


def source_date():
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        epoch = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True).stdout.strip() or "315532800"
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))


def main(argv):
    if len(argv) != 1:
        print("usage: manpage.py OUT", file=sys.stderr)
        return 2
    from sphincter_lib import __version__
    text = page(__version__, source_date())
    with open(argv[0] + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(argv[0] + ".tmp", argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
