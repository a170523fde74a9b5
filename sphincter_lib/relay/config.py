"""The relay's options: one declaration each (flag, env var, config key, type, default, help).

Precedence: command line > environment (``SPHINCTER_*``) > config file
(``key = value`` lines, keys are the long option names) > default.
:func:`parse` returns a frozen :class:`Settings`; any bad value raises
:class:`~sphincter_lib.errors.ConfigError` with one line naming the option. The value types
and the parser are shared with ``sphincter connect`` (:mod:`sphincter_lib.options`); the
relay's own value types are in :mod:`sphincter_lib.relay.values`.
"""

import argparse

from .. import __version__
from ..errors import ConfigError
from ..options import (LOG_LEVELS, boolean, choice, count, host, limit, new_parser, parse_args, path_or_empty,
                       port, positive_seconds, seconds, size, size_or_auto)
from .values import (networks, node_address, node_name, origins, password, rate, redis_url, secret, sentinels,
                     tokens)

ENV_PREFIX = "SPHINCTER_"


# --- the options ----------------------------------------------------------------

class _ReadOnly(object):
    """Attributes set once in ``__init__``; assigning later raises (plain class: CPython 3.6
    has no ``dataclasses``)."""

    def _set(self, **values):
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value=None):
        raise AttributeError("%s is read-only (attribute %r)" % (type(self).__name__, name))

    __delattr__ = __setattr__

    def __eq__(self, other):
        return type(other) is type(self) and vars(other) == vars(self)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(tuple(sorted(vars(self))))

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % kv for kv in sorted(vars(self).items())))


class Option(_ReadOnly):
    """One option: ``name`` (long flag without dashes; also the config-file key), ``default``
    (as a user would write it, parsed by ``type``), ``type``, ``help``, ``metavar``, ``short``
    flags, ``hidden`` (testing aids: accepted everywhere, not shown by --help)."""

    def __init__(self, name, default, type, help, metavar=None, short=(), hidden=False):
        self._set(name=name, default=default, type=type, help=help, metavar=metavar,
                  short=tuple(short), hidden=hidden)

    @property
    def flag(self):
        return "--" + self.name

    @property
    def env(self):
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def attr(self):
        return self.name.replace("-", "_")


OPTIONS = (
    Option("tcp-host", "0.0.0.0", host, "address sources (TCP) connect to", "HOST"),
    Option("tcp-port", "9000", port, "TCP port for sources (0: any free port)", "PORT"),
    Option("ws-host", "0.0.0.0", host, "address of the WebSocket/HTTP server", "HOST"),
    Option("ws-port", "8080", port, "WebSocket/HTTP port (0: any free port)", "PORT"),
    Option("framing", "lines", choice("lines", "raw"),
           "how a source's bytes become messages: 'lines' (one message per line) "
           "or 'raw' (each chunk read is a binary message)", "MODE"),
    Option("max-message-bytes", "1MiB", size,
           "largest message; longer lines go out as several messages", "SIZE"),
    Option("max-rooms", "1000", count, "most rooms open at once; more sources get 'ERROR too many rooms'", "N"),
    Option("max-subscribers-per-room", "10000", count,
           "most subscribers in one room; more are closed with 4429", "N"),
    Option("subscriber-buffer-bytes", "4MiB", size,
           "how far (bytes) a subscriber may fall behind before it is cut off with 4408; "
           "also bounds each room's backlog; must be >= --max-message-bytes", "SIZE"),
    Option("max-client-message-bytes", "auto", size_or_auto,
           "largest message a subscriber may send; bigger: close 1009. 'auto': --max-message-bytes "
           "for writers with --framing raw (a tunnel's clients send binary messages of any size), "
           "4KiB otherwise (writers with lines framing; other subscribers, whose messages are read "
           "and discarded); a size set here applies to every subscriber", "SIZE"),
    Option("ping-interval", "20", seconds, "seconds between pings to each subscriber (0: never)", "SECONDS"),
    Option("ping-timeout", "20", positive_seconds,
           "seconds a subscriber has to answer a ping before it is dropped", "SECONDS"),
    Option("close-timeout", "5", positive_seconds,
           "seconds to wait for a peer's close frame before dropping the connection", "SECONDS"),
    Option("banner", "on", boolean,
           "send 'ROOM <CODE>' to each source (off: sources receive nothing; the code is logged)", "on|off"),
    Option("trusted-proxies", "127.0.0.1,::1", networks,
           "comma-separated proxy addresses/networks believed about the client address: "
           "X-Forwarded-For, or X-Real-IP without it ('' for none); a loopback peer that "
           "sends neither is the client itself; with --source-proxy-protocol, the peers whose "
           "PROXY header the source port reads", "NETS"),
    Option("log-level", "info", choice(*LOG_LEVELS), "log level: " + ", ".join(LOG_LEVELS), "LEVEL"),
    Option("log-format", "text", choice("text", "json"),
           "log line format: 'text', or 'json' (one object per line, for log shippers)", "FORMAT"),
    Option("admin-token", "", secret,
           "bearer token for the admin API /api/rooms (empty: API off, 404); "
           "set it in the environment or the config file rather than on the command line", "TOKEN"),
    Option("shutdown-timeout", "10", positive_seconds,
           "on SIGTERM/SIGINT, seconds to let subscribers drain before exiting", "SECONDS"),
    # -- security (see sphincter_lib/relay/security.py) --
    Option("tls-cert", "", path_or_empty,
           "PEM certificate (chain) for the WebSocket/HTTP listener: serve wss:// and https://", "FILE"),
    Option("tls-key", "", path_or_empty, "PEM private key for --tls-cert", "FILE"),
    Option("source-tls-cert", "", path_or_empty,
           "PEM certificate (chain) for the source listener: sources connect with TLS", "FILE"),
    Option("source-tls-key", "", path_or_empty, "PEM private key for --source-tls-cert", "FILE"),
    Option("source-tokens", "", tokens,
           "source authentication: comma-separated tokens and/or @FILE (one per line); when set, "
           "a source must send 'AUTH <token>' as its first line or gets 'ERROR unauthorized'", "TOKENS"),
    Option("allowed-origins", "", origins,
           "comma-separated Origin allowlist for subscribers (https://example.com, "
           "https://*.example.com); others are closed with 4403; '' allows any", "ORIGINS"),
    Option("max-sources-per-ip", "32", limit,
           "most concurrent sources from one address (IPv6: one /64), so one address cannot "
           "take every room; 0: no limit", "N"),
    Option("max-subscribers-per-ip", "0", limit,
           "most concurrent WebSocket/HTTP connections from one address (IPv6: one /64); "
           "more get HTTP 429; 0: no limit", "N"),
    Option("handshake-timeout", "10", positive_seconds,
           "seconds a connection has to finish its TLS handshake and HTTP request head "
           "(sources: the PROXY header, TLS and the AUTH line)", "SECONDS"),
    Option("source-proxy-protocol", "off", boolean,
           "the source port reads a PROXY protocol header (v1 or v2; nginx 'proxy_protocol on;', "
           "HAProxy 'send-proxy') from peers in --trusted-proxies, which must send one, and counts, "
           "logs and lists each source by the client address in it; other peers connect directly and "
           "may not send one; not with --source-tls-cert (terminate TLS at the proxy)", "on|off"),
    Option("source-idle-timeout", "0", seconds,
           "close a source that sends nothing for this many seconds ('ERROR idle timeout'); 0: never",
           "SECONDS"),
    Option("unknown-room-rate", "0.5", rate,
           "unknown-room attempts allowed per second per address (IPv6: per /64), "
           "beyond the burst; more get HTTP 429; 0: no limit", "PER_SECOND"),
    Option("unknown-room-burst", "10", count,
           "unknown-room attempts an address may make at once before the rate applies", "N"),
    # -- flow control (see sphincter_lib/rooms/pace.py) --
    Option("flow-control", "on", boolean,
           "read a source only while its room's fastest subscriber is less than "
           "--source-high-water behind (off: the source never waits; slow subscribers are cut)", "on|off"),
    Option("source-high-water", "auto", size_or_auto,
           "how far (bytes) a room's fastest subscriber may fall behind before the source's reader "
           "waits; 'auto': half of --subscriber-buffer-bytes; must be below it", "SIZE"),
    Option("slow-policy", "cut", choice("cut", "skip"),
           "a subscriber more than --subscriber-buffer-bytes behind: 'cut' (close 4408, no gaps ever) or "
           "'skip' (jump to the newest whole message and go on: gaps, for state streams)", "POLICY"),
    Option("subscriber-send-buffer", "auto", size_or_auto,
           "kernel send buffer (SO_SNDBUF) of each subscriber's socket; 'auto': the kernel sizes it "
           "(on a fast link several MB, which the relay counts as delivered). A small one (64KiB) keeps "
           "what a slow subscriber has not read in the relay, where --slow-policy sees it, at the cost "
           "of about SIZE per round trip per subscriber", "SIZE"),
    Option("stall-timeout", "30", seconds,
           "cut (4408) a subscriber that has data waiting and makes no progress for this many seconds; "
           "0: never", "SECONDS"),
    # -- room lifecycle (see sphincter_lib/rooms/interface.py, rooms/registry.py, proto/roomsfile.py) --
    Option("rooms-file", "", path_or_empty,
           "named rooms, one per line: 'NAME TOKEN [replay=N] [max-subscribers=N] [slow-policy=cut|skip] "
           "[write=KEY]'; "
           "a source claims one with 'AUTH <TOKEN>'; they exist from start-up and never close; "
           "re-read on SIGHUP", "FILE"),
    Option("room-grace", "0", seconds,
           "seconds a room waits for its source to come back ('RESUME <CODE> <KEY>') after it left; "
           "subscribers stay connected meanwhile; 0: the room closes at once (4410)", "SECONDS"),
    Option("max-presence-waits", "1000", limit,
           "most GET /status long-polls waiting at once (each holds a connection); more are "
           "answered at once and their clients poll again later; 0: no long-polls", "N"),
    Option("write-back", "off", boolean,
           "let subscribers that present the room's write key (/ws?room=CODE&key=KEY) send messages to "
           "the source; sources get a 'WRITE <KEY>' line with their banner", "on|off"),
    Option("write-queue-bytes", "1MiB", size,
           "write-back bytes queued toward one source (also while it is away) before writers are "
           "paused (TCP backpressure); each writer may add one message beyond it", "SIZE"),
    Option("replay", "0", limit,
           "a subscriber that joins first receives the room's last N messages (at most "
           "--subscriber-buffer-bytes of them); 1: a 'last value' room; 0: none", "N"),
    # -- several processes sharing rooms (see sphincter_lib/cluster/, docs/REDIS.md) --
    Option("redis-url", "", redis_url,
           "share rooms with every process given the same URL (a node of one relay): "
           "redis://[USER:PASSWORD@]HOST:PORT/DB or rediss:// (TLS); empty: rooms live in this "
           "process only", "URL"),
    Option("node-name", "", node_name,
           "this process's name among the nodes (in /healthz, /metrics, /api/rooms and Redis); "
           "empty: HOSTNAME-PID", "NAME"),
    Option("redis-prefix", "sph", node_name,
           "prefix of every Redis key and channel (relays sharing one Redis need different ones)",
           "PREFIX"),
    Option("redis-sentinels", "", sentinels,
           "find the Redis primary through these Redis Sentinels (HOST:PORT[,HOST:PORT...]) and follow "
           "its failovers; --redis-url then gives only the scheme, credentials and DB (its host is not "
           "used); needs --redis-sentinel-master", "HOST:PORT,..."),
    Option("redis-sentinel-master", "", node_name,
           "the name the sentinels monitor the primary under (their 'sentinel monitor NAME ...')", "NAME"),
    Option("redis-sentinel-password", "", password,
           "password of the sentinels (their 'requirepass'); empty: they require none", "PASSWORD"),
    Option("redis-lease", "5", positive_seconds,
           "seconds a node's rooms outlive it in Redis: a killed node's rooms end (or wait for their "
           "source, with --room-grace) on the other nodes within this plus a third of it", "SECONDS"),
    # -- session rooms: per-client reverse tunnels (see sphincter_lib/relay/tunnel.py, issue 20) --
    Option("sessions", "off", boolean,
           "let 'sphincter connect --sessions' open session rooms: each WebSocket client with the "
           "room's key gets its own TCP connection to the agent's local service (the relay then "
           "tunnels arbitrary TCP); a named room may set sessions=on in the rooms file", "on|off"),
    Option("node-address", "", node_address,
           "with session rooms and --redis-url: where the other nodes reach this node's source port "
           "(a session's data link that reached another node is forwarded here); default: --tcp-host "
           "and the source port, which needs a --tcp-host other than 0.0.0.0 or ::", "HOST:PORT"),
    Option("session-open-timeout", "10", positive_seconds,
           "seconds the agent has to answer a session's OPEN line with a data connection; "
           "then the client is closed with 4504", "SECONDS"),
    Option("max-sessions-per-room", "256", limit,
           "most sessions open at once in one session room; more clients are closed with 4429; "
           "0: no limit", "N"),
    Option("max-sessions", "4096", limit,
           "most sessions open at once on the relay; more clients are closed with 4503; 0: no limit",
           "N"),
    Option("session-open-rate", "2", rate,
           "session opens allowed per second per client address (IPv6: per /64), beyond the "
           "burst; more are closed with 4429; 0: no limit", "PER_SECOND"),
    Option("session-open-burst", "20", count,
           "session opens an address may make at once before --session-open-rate applies", "N"),
    Option("ws-sources", "off", boolean,
           "accept source links (sphincter connect with a wss:// relay URL) on the WebSocket port at "
           "/ws?source=1, for agents that can only get out through HTTPS or a proxy; every source "
           "rule applies (tokens, --max-sources-per-ip with the X-Forwarded-For address); off: "
           "they are closed with 4403, and room creation stays on the TCP source port only", "on|off"),
)

#: Testing aids: parsed like the others (flag, env var, config key) but not shown by
#: --help nor in the generated docs; never needed in production.
HIDDEN_OPTIONS = (
    Option("test-echo-endpoint", "off", boolean,
           "TESTING ONLY: serve an echo WebSocket at /_test/echo (Autobahn conformance runs)",
           "on|off", hidden=True),
)

#: Settings attributes that are not options: the config file read, and --check-config.
EXTRA_FIELDS = {"config": None, "check_config": False}


#: --max-client-message-bytes 'auto' for subscribers that are not writers, and for writers
#: with lines framing
DEFAULT_CLIENT_MESSAGE_BYTES = 4 << 10


class Settings(_ReadOnly):
    """The parsed, validated options (attribute names use underscores); read-only."""

    FIELDS = tuple(opt.attr for opt in OPTIONS + HIDDEN_OPTIONS)

    def __init__(self, **values):
        missing = [name for name in self.FIELDS if name not in values]
        unknown = [name for name in values if name not in self.FIELDS and name not in EXTRA_FIELDS]
        if missing or unknown:
            raise TypeError("Settings: missing %s, unknown %s" % (missing, unknown))
        extra = dict(EXTRA_FIELDS)
        extra.update(values)
        self._set(**extra)

    def client_message_limit(self, writer):
        """The largest message a subscriber may send (bigger: close 1009): the size set with
        --max-client-message-bytes; with 'auto', --max-message-bytes for a ``writer`` (it
        presented the room's write key) in raw framing, where each message is a tunnel's chunk
        of bytes, else :data:`DEFAULT_CLIENT_MESSAGE_BYTES`."""
        if self.max_client_message_bytes:
            return self.max_client_message_bytes
        if writer and self.framing == "raw":
            return self.max_message_bytes
        return DEFAULT_CLIENT_MESSAGE_BYTES


def build_parser():
    parser = new_parser("sphincter",
                        "Sphincter: relay TCP sources to WebSocket subscribers, one room per source.",
                        env_prefix=ENV_PREFIX)
    for opt in OPTIONS + HIDDEN_OPTIONS:
        parser.add_argument(*opt.short, opt.flag, env_var=opt.env, type=opt.type,
                            default=opt.default, metavar=opt.metavar,
                            help=argparse.SUPPRESS if opt.hidden else opt.help)
    parser.add_argument("--check-config", action="store_true",
                        help="only check the configuration (options, config file, TLS certificates "
                             "and keys, token files, host names), like nginx -t: print "
                             "'sphincter: configuration OK' and exit 0, or the error and exit 2; "
                             "binds no port")
    parser.add_argument("--version", action="version", version="sphincter " + __version__)
    return parser


def parse(argv=None, env=None):
    """Parse ``argv`` (default sys.argv[1:]) and ``env`` (default os.environ) into Settings."""
    ns = parse_args(build_parser(), argv, env)
    values = {opt.attr: getattr(ns, opt.attr) for opt in OPTIONS + HIDDEN_OPTIONS}
    settings = Settings(config=getattr(ns, "config_file", None), check_config=ns.check_config,
                        **values)
    check(settings)
    return settings


def check(s):
    """Rules that involve more than one option."""
    if s.subscriber_buffer_bytes < s.max_message_bytes:
        raise ConfigError(
            "argument --subscriber-buffer-bytes: must be at least --max-message-bytes (%d < %d)"
            % (s.subscriber_buffer_bytes, s.max_message_bytes))
    if s.rooms_file:
        from ..proto.roomsfile import load
        try:
            specs = load(s.rooms_file)
        except ConfigError as exc:
            raise ConfigError("argument --rooms-file: %s" % exc)
    else:
        specs = ()
    if (s.sessions or any(spec.sessions for spec in specs)) and (s.redis_url or s.redis_sentinels):
        if s.source_tls_cert:
            raise ConfigError("argument --sessions: not with --redis-url and --source-tls-cert (a "
                              "data link forwarded between nodes is plain TCP)")
        if not s.node_address and s.tcp_host in ("0.0.0.0", "::", "*"):
            raise ConfigError("argument --node-address: needed with session rooms and --redis-url when "
                              "--tcp-host is %s (how the other nodes reach this node's source port)"
                              % s.tcp_host)
    if not s.redis_prefix:
        raise ConfigError("argument --redis-prefix: must not be empty")
    if bool(s.redis_sentinels) != bool(s.redis_sentinel_master):
        raise ConfigError("argument --%s: needs --%s too" % (
            ("redis-sentinels", "redis-sentinel-master") if s.redis_sentinels
            else ("redis-sentinel-master", "redis-sentinels")))
    if s.source_high_water and s.source_high_water >= s.subscriber_buffer_bytes:
        raise ConfigError(
            "argument --source-high-water: must be below --subscriber-buffer-bytes (%d >= %d)"
            % (s.source_high_water, s.subscriber_buffer_bytes))
    if s.source_proxy_protocol and s.source_tls_cert:
        raise ConfigError("argument --source-proxy-protocol: not with --source-tls-cert "
                          "(the header comes before TLS: terminate TLS at the proxy)")
    if s.source_proxy_protocol and not s.trusted_proxies:
        raise ConfigError("argument --source-proxy-protocol: needs --trusted-proxies "
                          "(the addresses of the proxies that send the header)")
    for cert, key in (("tls-cert", "tls-key"), ("source-tls-cert", "source-tls-key")):
        c, k = getattr(s, cert.replace("-", "_")), getattr(s, key.replace("-", "_"))
        if bool(c) != bool(k):
            raise ConfigError("argument --%s: needs --%s too" % ((cert, key) if c else (key, cert)))
        if c:
            from .security import server_ssl_context
            try:
                server_ssl_context(c, k)
            except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
                raise ConfigError("argument --%s: cannot load certificate/key: %s"
                                  % (cert, getattr(exc, "strerror", None) or exc))


def check_hosts(s, resolve=None):
    """--check-config: the listening host names resolve (nothing is bound)."""
    import socket
    resolve = resolve or socket.getaddrinfo
    for name in ("tcp-host", "ws-host"):
        text = getattr(s, name.replace("-", "_"))
        try:
            resolve(text, None, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        except (OSError, UnicodeError) as exc:   # socket.gaierror is an OSError
            raise ConfigError("argument --%s: cannot resolve %r: %s"
                              % (name, text, getattr(exc, "strerror", None) or exc))


def defaults():
    """Settings with every default (for tests and embedding)."""
    return parse([], env={})


def with_overrides(settings, **changes):
    """A copy of ``settings`` with some attributes replaced, checked again."""
    values = vars(settings).copy()
    values.update(changes)
    s = Settings(**values)
    check(s)
    return s
