"""The option machinery shared by the relay's options (:mod:`sphincter_lib.relay.config`) and
``sphincter connect``'s (:mod:`sphincter_lib.agent.options`): value types and the parser.

A value type takes the text a user wrote and returns the value, or raises
``argparse.ArgumentTypeError`` with a short reason; :func:`new_parser` makes a parser whose
errors raise :class:`~sphincter_lib.errors.ConfigError` (one line naming the option), with
``-c/--config``; :func:`parse_args` reads the command line, the environment and the config file.
"""

import argparse
import os
import re
import sys

import configargparse

from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")


# --- value types: each raises ArgumentTypeError with a short reason ---------------

def port(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid port %r (expected 0-65535)" % text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("invalid port %r (expected 0-65535)" % text)
    return value


def host(text):
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError("invalid host %r" % text)
    return text


_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30}


def size(text, _examples="65536, 64KiB, 1MiB"):
    """Bytes: ``65536``, ``64KiB``, ``1MiB``, ``1M`` (binary), ``1MB`` (decimal); at least 1."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise argparse.ArgumentTypeError("invalid size %r (e.g. %s)" % (text, _examples))
        value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError("invalid size %r (must be at least 1 byte)" % text)
    return value


def size_or_auto(text):
    """A size, or ``auto`` (0) for a default derived from other options."""
    if str(text).strip().lower() == "auto":
        return 0
    return size(text, "65536, 64KiB, 1MiB or auto")


def _integer(minimum, hint):
    def parse(text):
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError("invalid number %r" % text)
        if value < minimum:
            raise argparse.ArgumentTypeError("invalid number %r (%s)" % (text, hint))
        return value
    return parse


#: a count of at least 1
count = _integer(1, "must be at least 1")
#: a count where 0 means 'no limit'
limit = _integer(0, "must be >= 0; 0: no limit")


def seconds(text):
    """A duration in seconds, ``0`` allowed where it means 'off'."""
    try:
        value = float(str(text).rstrip("s"))
    except ValueError:
        raise argparse.ArgumentTypeError("invalid duration %r (seconds, e.g. 20 or 0.5)" % text)
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("invalid duration %r (must be >= 0)" % text)
    return value


def positive_seconds(text):
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("invalid duration %r (must be > 0)" % text)
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(text):
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError("invalid boolean %r (use on/off, true/false, yes/no)" % text)


def path_or_empty(text):
    """A file path, or '' for none (the file is read when the server starts)."""
    return str(text).strip()


def choice(*choices):
    def parse(text):
        word = str(text).strip().lower()
        if word not in choices:
            raise argparse.ArgumentTypeError(
                "invalid choice %r (choose from %s)" % (text, ", ".join(choices)))
        return word
    parse.__name__ = "choice"
    return parse


# --- the parser -----------------------------------------------------------------

class _Parser(configargparse.ArgParser):
    def error(self, message):
        raise ConfigError(message)


def new_parser(prog, description, env_prefix):
    """A configargparse parser whose errors raise ConfigError (one line), with ``-c/--config``
    (also read from ``<env_prefix>CONFIG``): shared by the relay's and connect's options."""
    parser = _Parser(
        prog=prog,
        description=description,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="config file (key = value lines, keys are the long option names)",
        config_file_parser_class=configargparse.DefaultConfigFileParser,
        formatter_class=configargparse.ArgumentDefaultsRawHelpFormatter,
        add_env_var_help=True,
        ignore_unknown_config_file_keys=False,
    )
    # configargparse reads the config path from the environment only if declared so:
    for action in parser._actions:
        if "--config" in action.option_strings:
            action.env_var = env_prefix + "CONFIG"
    return parser


def parse_args(parser, argv=None, env=None):
    """``parser.parse_args`` with ``env`` (default os.environ); an unreadable config file is a
    ConfigError like any other bad value. ``--help`` and ``--version`` print and exit 0 without
    reading the environment or a config file (see :func:`_answer_help_or_version`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    _answer_help_or_version(parser, args)
    try:
        return parser.parse_args(args=args, env_vars=os.environ if env is None else env)
    except OSError as exc:
        raise ConfigError("cannot read config file: %s" % exc)


def _answer_help_or_version(parser, args):
    """Parse the command line alone first: its ``--help``/``--version`` (abbreviations and a
    ``--`` included, as argparse reads them) print and exit 0 there, so a bad ``SPHINCTER_*``
    value or an unreadable config file cannot stop them. Without either, nothing happens: an
    error of the command line itself is left to the full parse, which reports it in order."""
    try:
        parser.parse_known_args(args=args, env_vars={}, config_file_contents="")
    except ConfigError:
        pass
