"""Command line: parse options, set up logging, run; map errors to exit codes.

Exit status: 0 after a clean stop, 2 for a configuration error (one line on
stderr naming the option), 1 when a port cannot be bound or the server fails.
``--check-config`` stops after validation: 0 with one line on stdout, or 2.
``--help`` and ``--version`` read no environment and no config file: they print and exit 0.
"""

import sys

from . import logformat
from .errors import BindError, ConfigError
from .relay import config
from .relay.server import Relay


def check_only(settings):
    """``--check-config``: what parsing did not cover (host names), then one line."""
    config.check_hosts(settings)
    print("sphincter: configuration OK (sources on %s:%d, WebSockets on %s:%d, config file: %s)"
          % (settings.tcp_host, settings.tcp_port, settings.ws_host, settings.ws_port,
             settings.config or "none"))


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["connect"]:          # the source-side companion: `sphincter connect ...`
        from .agent.connect import main as connect_main
        return connect_main(args[1:])
    if args[:1] == ["pipe"]:             # the client side of a tunnel: `sphincter pipe URL`
        from .agent.pipe import main as pipe_main
        return pipe_main(args[1:])
    try:
        settings = config.parse(argv)
        if settings.check_config:
            check_only(settings)
            return 0
    except ConfigError as exc:
        print("sphincter: error: %s" % exc, file=sys.stderr)
        return 2
    logformat.setup_logging(settings.log_level, settings.log_format)
    try:
        relay = Relay(settings, handle_signals=True).start()
    except BindError as exc:
        print("sphincter: error: %s" % exc, file=sys.stderr)
        return 1
    relay.serve_forever()
    return 0
