"""Options of ``sphincter connect``: one declaration each (flag, env var, type, default, help).

Precedence: command line > environment > config file (``-c FILE``, ``key = value``
lines) > default. Env vars are ``SPHINCTER_CONNECT_<NAME>`` except the OBS
password, ``SPHINCTER_OBS_PASSWORD``. :func:`parse` returns an
``argparse.Namespace`` (with ``spec`` and ``relay`` parsed) or raises
:class:`~sphincter_lib.errors.ConfigError` with one line naming the option.
"""

import argparse
import collections
import os


from .. import __version__, options
from ..errors import ConfigError
from ..proto.obsws import EVENTS_ALL
from .pipe_options import proxy, resolve_proxy

ENV_PREFIX = "SPHINCTER_CONNECT_"

Opt = collections.namedtuple("Opt", "name default type help metavar env")


class ConnectSpec:
    """What ``--from`` names: ``kind`` (tcp, ws, obs, stdio), ``host``/``port`` or ``url``."""

    def __init__(self, text, kind, host=None, port=None, url=None):
        self.text, self.kind, self.host, self.port, self.url = text, kind, host, port, url

    def __repr__(self):
        return "ConnectSpec(%r)" % self.text


def _hostport(text, default_port=None):
    text = text.strip().rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text and default_port is not None:
        port_text = str(default_port)
    if not host or not port_text:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    port = options.port(port_text)
    if port == 0:
        raise argparse.ArgumentTypeError("invalid port 0 in %r" % text)
    return options.host(host), port


class RelayTarget(tuple):
    """``(host, port)`` of the relay; ``url``: the WebSocket URL of a source link over the relay's
    HTTP port (``--relay ws://...`` / ``wss://...``), None for its TCP source port."""

    def __new__(cls, host, port, url=None):
        target = tuple.__new__(cls, (host, port))
        target.url = url
        return target


#: the query parameter that marks a source link on the relay's ``/ws`` (``relay/wssource.py``)
SOURCE_QUERY = "source=1"


def source_url(text):
    """The source-link URL for ``--relay ws[s]://HOST[:PORT][/PATH][?QUERY]``: the path ``/ws``
    when none is given (``PATH/ws`` for a path that ends in ``/``), and ``source=1`` in the query.
    ValueError if it is not a ws:// or wss:// URL."""
    from .wsclient import parse_url
    text = text.strip()
    parse_url(text)                                   # ValueError if malformed
    scheme, _, rest = text.partition("://")
    if "#" in rest:
        raise ValueError("no fragment allowed in %r" % text)
    authority, slash, path = rest.partition("/")
    if "?" in authority:
        authority, _, query = authority.partition("?")
        path = "?" + query
    path, _, query = ("/" + path if slash or path.startswith("?") else "/").partition("?")
    path = path.replace("//", "/")
    if path.endswith("/"):
        path += "ws"
    params = [p for p in query.split("&") if p]
    if not any(p.split("=", 1)[0] == "source" for p in params):
        params.append(SOURCE_QUERY)
    return "%s://%s%s?%s" % (scheme.lower(), authority, path, "&".join(params))


def relay_address(text):
    """``HOST:PORT`` of the relay's source port, or a ``ws://``/``wss://`` URL of its HTTP
    (WebSocket) port: a :class:`RelayTarget`."""
    text = str(text).strip()
    if text.lower().startswith(("ws://", "wss://")):
        from .wsclient import parse_url
        try:
            url = source_url(text)
            _tls, host, port, _resource = parse_url(url)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
        return RelayTarget(host, port, url)
    if "://" in text:
        raise argparse.ArgumentTypeError("expected HOST:PORT, ws://HOST[:PORT][/PATH] or "
                                         "wss://HOST[:PORT][/PATH], got %r" % text)
    return RelayTarget(*_hostport(text))


def spec(text):
    """``tcp:HOST:PORT``, ``ws://...``, ``wss://...``, ``obs://HOST[:PORT]`` or ``-``."""
    text = str(text).strip()
    lower = text.lower()
    if text == "-":
        return ConnectSpec(text, "stdio")
    if lower.startswith("tcp:"):
        host, port = _hostport(text[4:].lstrip("/"))
        return ConnectSpec(text, "tcp", host, port)
    if lower.startswith(("ws://", "wss://")):
        from .wsclient import parse_url
        try:
            parse_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
        return ConnectSpec(text, "ws", url=text)
    if lower.startswith("obs://"):
        host, port = _hostport(text[6:], default_port=4455)
        hostpart = ("[%s]" % host) if ":" in host else host
        return ConnectSpec(text, "obs", host, port, url="ws://%s:%d/" % (hostpart, port))
    raise argparse.ArgumentTypeError(
        "invalid source %r (expected tcp:HOST:PORT, ws://..., wss://..., obs://HOST:PORT or -)" % text)


def event_mask(text):
    """obs-websocket ``eventSubscriptions``: ``all`` or a number (bitmask)."""
    word = str(text).strip().lower()
    if word == "all":
        return EVENTS_ALL
    try:
        value = int(word, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid event mask %r (all, or a number like 0x7ff)" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("invalid event mask %r (must be >= 0)" % text)
    return value


def _token(text):
    value = str(text).strip()
    if any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError("invalid token (no white space)")
    return value


def _names(text):
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    for n in names:
        if not n.isalnum():
            raise argparse.ArgumentTypeError("invalid request type %r (letters and digits)" % n)
    return names


def _opt(name, default, type, help, metavar=None, env=None):
    return Opt(name, default, type, help, metavar, env or ENV_PREFIX + name.upper().replace("-", "_"))


OPTIONS = (
    _opt("relay", None, relay_address, "the relay: HOST:PORT of its source port (its --tcp-port), "
         "or ws://HOST[:PORT][/PATH] / wss://... of its WebSocket port (through nginx on 443, an "
         "HTTP proxy: the relay's --ws-sources on; the path defaults to /ws)", "HOST:PORT|URL"),
    _opt("from", None, spec, "the local service: tcp:HOST:PORT, ws://... or wss://... (a WebSocket "
         "service), obs://HOST:PORT (obs-websocket 5), or - (stdin to the room, write-back to stdout)",
         "SPEC"),
    _opt("token", "", _token, "sent as 'AUTH <TOKEN>' first: a named room's token or one of the "
         "relay's --source-tokens; prefer the env var to the command line", "TOKEN"),
    _opt("tls", "off", options.boolean, "connect to the relay with TLS (its --source-tls-cert); "
         "for --relay wss://... TLS is on anyway", "on|off"),
    _opt("tls-ca", "", options.path_or_empty, "CA file to verify the relay's certificate "
         "(default: the system's CAs)", "FILE"),
    _opt("proxy", "", proxy, "HTTP proxy to reach a --relay ws://... or wss://... through "
         "(CONNECT): http://[USER:PASS@]HOST:PORT; 'direct': none; '' (default): https_proxy/"
         "HTTPS_PROXY for wss://, http_proxy/HTTP_PROXY for ws://, unless no_proxy/NO_PROXY names "
         "the host", "URL"),
    _opt("tls-server-name", "", options.path_or_empty, "name to ask for (SNI) and to verify in the "
         "relay's certificate (default: the --relay host)", "NAME"),
    _opt("local-connect", "start", options.choice("start", "on-write"), "when to connect to the "
         "local service: 'start' (at once, and again whenever it drops) or 'on-write' (when write-"
         "back data arrives, and again after it closed: for tunnels whose client speaks first, as "
         "a room drops what its source sends before anyone joined)", "WHEN"),
    _opt("sessions", "off", options.boolean, "open a session room (the relay's --sessions on): each "
         "WebSocket client with the room's key gets its own connection to the --from service "
         "(tcp:HOST:PORT only), made when its session opens: SSH, VNC, anything TCP", "on|off"),
    _opt("framing", "lines", options.choice("lines", "raw"), "the relay's --framing: with 'lines', "
         "each WebSocket message of a ws:// service becomes one line and write-back lines become "
         "messages; with 'raw', chunks", "MODE"),
    _opt("max-message-bytes", "16MiB", options.size, "largest WebSocket message to or from a ws:// "
         "or obs:// service (longer write-back lines are sent in pieces)", "SIZE"),
    _opt("keepalive", "0", options.seconds, "send a bare newline to the relay after this many quiet "
         "seconds, only between lines (--framing lines: never published), so a relay with "
         "--source-idle-timeout keeps a quiet source; 0: never", "SECONDS"),
    _opt("retry-min", "0.5", options.positive_seconds, "first reconnect delay (seconds); doubles on "
         "each failure, with jitter", "SECONDS"),
    _opt("retry-max", "30", options.positive_seconds, "longest reconnect delay (seconds)", "SECONDS"),
    _opt("connect-timeout", "10", options.positive_seconds, "seconds allowed to connect and get "
         "the relay's banner (or OBS's Identified)", "SECONDS"),
    _opt("session-dial-timeout", "5", options.positive_seconds, "with --sessions: seconds allowed to "
         "reach the --from service for one session; under the relay's --session-open-timeout (10 s) "
         "a client whose service cannot be reached hears 4502, not 4504", "SECONDS"),
    _opt("stats-interval", "60", options.seconds, "seconds between status lines in the log "
         "(state, bytes relayed); 0: none", "SECONDS"),
    _opt("obs-password", "", str, "obs-websocket password (Tools > WebSocket Server Settings); "
         "prefer the env var", "PASSWORD", env="SPHINCTER_OBS_PASSWORD"),
    _opt("obs-events", "all", event_mask, "obs-websocket eventSubscriptions bitmask ('all': every "
         "non-high-volume event)", "MASK"),
    _opt("obs-allow-requests", "off", options.boolean, "forward writers' obs-websocket requests "
         "(op 6/8) to OBS; off: they are dropped and logged", "on|off"),
    _opt("obs-initial-requests", "GetCurrentProgramScene", _names, "obs-websocket requests (comma-"
         "separated types, no data) sent after each connection to OBS; their responses go to the room "
         "so it knows the current state at once; '' for none", "TYPES"),
    _opt("log-level", "info", options.choice(*options.LOG_LEVELS), "log level: debug, info, warning, "
         "error", "LEVEL"),
    _opt("log-format", "text", options.choice("text", "json"), "log line format: text or json", "FORMAT"),
)
_FLAGS = ("tls", "obs-allow-requests", "sessions")     # also accepted bare: --tls means --tls on


def build_parser():
    parser = options.new_parser(
        "sphincter connect",
        "Bridge one local service into one Sphincter room, both ways, and keep "
        "doing so (reconnecting, resuming the room). Prints 'ROOM <CODE>' (and "
        "'WRITE <KEY>') on stdout, on stderr with --from -.",
        env_prefix=ENV_PREFIX)
    for opt in OPTIONS:
        kwargs = dict(env_var=opt.env, type=opt.type, metavar=opt.metavar, help=opt.help,
                      dest=opt.name.replace("-", "_"))
        if opt.default is None:
            kwargs["required"] = True
        else:
            kwargs["default"] = opt.default
        if opt.name in _FLAGS:
            kwargs.update(nargs="?", const="on")
        parser.add_argument("--" + opt.name, **kwargs)
    parser.add_argument("--version", action="version", version="sphincter " + __version__)
    return parser


def parse(argv=None, env=None):
    env = os.environ if env is None else env
    ns = options.parse_args(build_parser(), argv, env)
    ns.spec = getattr(ns, "from")
    ns.relay_url = ns.relay.url
    ns.proxy_source = ""
    if ns.relay_url is None:
        if ns.proxy not in ("", "direct"):
            raise ConfigError("argument --proxy: only with --relay ws://... or wss://...")
        ns.proxy = None
    else:
        if ns.tls and not ns.relay_url.startswith("wss://"):
            raise ConfigError("argument --tls: with a WebSocket relay, use --relay wss://...")
        if ns.tls_server_name:
            raise ConfigError("argument --tls-server-name: not with --relay ws://... or wss://... "
                              "(the URL's host is the name checked)")
        ns.proxy, ns.proxy_source = resolve_proxy(ns.relay_url, ns.proxy, env)
    if ns.retry_max < ns.retry_min:
        raise ConfigError("argument --retry-max: must be at least --retry-min")
    if ns.tls_ca and not os.path.isfile(ns.tls_ca):
        raise ConfigError("argument --tls-ca: no such file %r" % ns.tls_ca)
    if ns.keepalive and ns.framing != "lines":
        raise ConfigError("argument --keepalive: only with --framing lines (a newline is data in raw)")
    if ns.local_connect == "on-write" and ns.spec.kind not in ("tcp", "ws"):
        raise ConfigError("argument --local-connect: on-write only with --from tcp:... or ws://...")
    if ns.sessions and ns.spec.kind != "tcp":
        raise ConfigError("argument --sessions: only with --from tcp:HOST:PORT")
    if ns.obs_allow_requests and ns.spec.kind != "obs":
        raise ConfigError("argument --obs-allow-requests: only with --from obs://...")
    return ns
