"""Options of ``sphincter pipe``: one declaration each (flag, env var, type, default, help).

Precedence: command line > environment (``SPHINCTER_PIPE_<NAME>``) > config file
(``-c FILE``) > default. ``URL`` is the one positional argument. :func:`parse` returns an
``argparse.Namespace`` with ``proxy`` resolved (a :class:`~..proto.httpconnect.Proxy` or None,
``proxy_source`` naming where it came from), or raises
:class:`~sphincter_lib.errors.ConfigError` with one line naming the option.
"""

import argparse
import collections
import os

from .. import __version__, options
from ..errors import ConfigError
from ..proto.httpconnect import parse_proxy_url, proxy_from_env
from .wsclient import parse_url

ENV_PREFIX = "SPHINCTER_PIPE_"

Opt = collections.namedtuple("Opt", "name default type help metavar")

#: request headers the WebSocket handshake writes itself
RESERVED_HEADERS = ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                    "sec-websocket-protocol", "sec-websocket-extensions", "content-length",
                    "transfer-encoding")
#: largest --read-size: each read is one message, and a relay takes 1 MiB by default
MAX_READ_SIZE = 1 << 20
_TOKEN = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ws_url(text):
    """``ws://HOST[:PORT]/PATH?QUERY`` or ``wss://...``."""
    text = str(text).strip()
    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def listen_address(text):
    """``HOST:PORT`` (``[v6]:PORT``) to accept local connections on; port 0: any free port."""
    text = str(text).strip()
    if not text:
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return options.host(host), options.port(port_text)


def header(text):
    """``Name: value``: a request header for the WebSocket handshake."""
    name, sep, value = str(text).partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c not in _TOKEN for c in name):
        raise argparse.ArgumentTypeError("invalid header %r (expected 'Name: value')" % text)
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError("invalid header %r (no line breaks in a value)" % name)
    if name.lower() in RESERVED_HEADERS:
        raise argparse.ArgumentTypeError("header %r is the handshake's own" % name)
    return name, value


def proxy(text):
    """``http://[USER:PASS@]HOST:PORT``, ``direct`` (none, whatever the environment says), or
    '' (from the environment)."""
    text = str(text).strip()
    if text.lower() in ("", "direct"):
        return text.lower()
    try:
        parse_proxy_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


OPTIONS = (
    Opt("listen", "", listen_address, "accept local TCP connections on HOST:PORT, each its own "
        "WebSocket session, instead of joining stdin/stdout to one (port 0: any free port; the "
        "address is printed as 'LISTENING HOST:PORT')", "HOST:PORT"),
    Opt("header", None, header, "an HTTP header for the WebSocket handshake (Authorization, "
        "Cookie ... for a relay behind authentication); repeat for more", "'NAME: VALUE'"),
    Opt("tls-ca", "", options.path_or_empty, "CA file (PEM) to verify a wss:// server's "
        "certificate with (default: the system's CAs); the host name is always checked", "FILE"),
    Opt("proxy", "", proxy, "HTTP proxy to tunnel through (CONNECT): http://[USER:PASS@]HOST:PORT; "
        "'direct': none; '' (default): https_proxy/HTTPS_PROXY for wss://, http_proxy/HTTP_PROXY "
        "for ws://, unless no_proxy/NO_PROXY names the host", "URL"),
    Opt("connect-timeout", "10", options.positive_seconds, "seconds allowed for each step of "
        "opening a session (name lookup and TCP, the proxy, TLS, the WebSocket upgrade)", "SECONDS"),
    Opt("close-timeout", "10", options.positive_seconds, "after our close frame (the input "
        "ended), seconds to wait for the relay's, while what it still sends is written out",
        "SECONDS"),
    Opt("read-size", "64KiB", options.size, "most bytes read from the input at a time; each read "
        "is sent as one binary message", "SIZE"),
    Opt("max-message-bytes", "16MiB", options.size, "largest message accepted from the relay "
        "(bigger: the session ends with 1009)", "SIZE"),
    Opt("log-level", "warning", options.choice(*options.LOG_LEVELS), "log level: debug, info, "
        "warning, error (stderr; with stdin/stdout, a failure is one line whatever the level)",
        "LEVEL"),
    Opt("log-format", "text", options.choice("text", "json"), "log line format: text or json",
        "FORMAT"),
)


def build_parser():
    parser = options.new_parser(
        "sphincter pipe",
        "Join stdin/stdout (or, with --listen, each local TCP connection) to one WebSocket "
        "session with a relay room, as binary messages both ways: "
        "ssh -o ProxyCommand='sphincter pipe \"wss://relay.example.org/ws?room=ssh&key=KEY\"'. "
        "Exit status: 0 when either side ends (the input, or the relay's close 1000); 1 with one "
        "line naming the close code and reason otherwise, or why the connection failed; 2 for a "
        "bad option.",
        env_prefix=ENV_PREFIX)
    parser.add_argument("url", type=ws_url, metavar="URL",
                        help="the session's WebSocket URL: ws://... or wss://HOST/ws?room=CODE&key=KEY")
    for opt in OPTIONS:
        kwargs = dict(env_var=ENV_PREFIX + opt.name.upper().replace("-", "_"), type=opt.type,
                      metavar=opt.metavar, help=opt.help, dest=opt.name.replace("-", "_"))
        if opt.name == "header":
            kwargs.update(action="append", default=[])
        else:
            kwargs["default"] = opt.default
        parser.add_argument("--" + opt.name, **kwargs)
    parser.add_argument("--version", action="version", version="sphincter " + __version__)
    return parser


def resolve_proxy(url, text, env):
    """``(Proxy or None, where it came from)`` for ``url`` given ``--proxy`` ``text``."""
    if text == "direct":
        return None, "--proxy direct"
    if text:
        return parse_proxy_url(text), "--proxy"
    tls, host, port, _ = parse_url(url)
    try:
        found = proxy_from_env(tls, host, port, env)
    except ValueError as exc:
        raise ConfigError("environment variable %s" % exc)
    if found is None:
        return None, ""
    return found[1], found[0]


def parse(argv=None, env=None):
    env = os.environ if env is None else env
    ns = options.parse_args(build_parser(), argv, env)
    if ns.tls_ca and not os.path.isfile(ns.tls_ca):
        raise ConfigError("argument --tls-ca: no such file %r" % ns.tls_ca)
    if ns.tls_ca and not ns.url.lower().startswith("wss://"):
        raise ConfigError("argument --tls-ca: only with a wss:// URL")
    if ns.read_size > MAX_READ_SIZE:
        raise ConfigError("argument --read-size: at most %d bytes (a relay's default limit for "
                          "a writer's message is 1 MiB)" % MAX_READ_SIZE)
    ns.headers = tuple(ns.header)
    ns.proxy, ns.proxy_source = resolve_proxy(ns.url, ns.proxy, env)
    return ns
