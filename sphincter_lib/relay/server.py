"""Wiring and lifecycle: both listeners, signals, two-phase graceful stop.

``Relay(settings).start()`` binds both ports (raising BindError naming the
address) and returns; ``tcp_address``/``ws_address`` are then the bound
addresses (useful with port 0). ``serve_forever()`` runs until SIGTERM/SIGINT
or :meth:`request_stop`. The SIGTERM/SIGINT handlers only set an event;
the SIGHUP handler (:meth:`request_reload`) spawns a greenlet that re-reads
the rooms file, and returns.
"""

import logging
import os
import signal
import socket
import time

import gevent
from gevent.event import Event
from gevent.pywsgi import LoggingLogAdapter, WSGIServer
from gevent.server import StreamServer

from ..proto import frames, roomsfile
from . import security
from ..proto.addresses import format_peer
from ..closecodes import CloseCode
from ..errors import BindError, ConfigError, RoomError
from ..logformat import log_crash
from .ingest import SourceHandler
from ..rooms.registry import RoomRegistry
from ..rooms.stats import Stats
from .web import WebApp
from .ws import Handler

logger = logging.getLogger("sphincter.relay.server")

SHUTDOWN_REASON = "server shutting down"


def sd_notify(state, environ=os.environ):
    """Tell systemd (Type=notify) about ``state``, e.g. ``READY=1``; no-op without NOTIFY_SOCKET."""
    addr = environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify to %s failed: %s", addr, exc)
        return False
    return True


class _TLSWrapQuietly:
    """Server mixin: a TLS listener's client that breaks while its socket is being wrapped
    (reset right after connecting) is one line at INFO, not a traceback from the hub."""

    #: what its clients are called in the log line
    what = "client"

    def wrap_socket_and_handle(self, client_socket, address):
        try:
            tls_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError as exc:                  # the server closes client_socket
            logger.info("%s %s: connection broke before TLS: %s", self.what, format_peer(address),
                        exc.strerror or exc)
            return None
        return self.handle(tls_socket, address)


class SourceServer(_TLSWrapQuietly, StreamServer):
    what = "source"


class WebServer(_TLSWrapQuietly, WSGIServer):
    what = "http"


class Relay:
    """The whole server: a source listener, a WebSocket/HTTP listener, the rooms between."""

    #: seconds between checks while waiting for connections to drain at shutdown
    drain_poll = 0.05
    #: listen backlog of both servers
    backlog = 1024
    #: connections accepted per event-loop turn (gevent's default is 100): each new
    #: connection's greenlet runs before established connections get their I/O, so a
    #: storm of connects would otherwise stall everyone for ~100 handshakes at a time
    max_accept = 10

    def __init__(self, settings, stats=None, handle_signals=False):
        self.settings = settings
        #: install SIGTERM/SIGINT handlers in start(), before announcing readiness
        self.handle_signals = handle_signals
        self._signal_handlers = []
        self.stats = stats if stats is not None else Stats()
        model, extra = RoomRegistry, {}
        named = roomsfile.load(settings.rooms_file) if settings.rooms_file else ()
        if settings.redis_url or settings.redis_sentinels:
            from ..cluster.model import RedisRoomModel
            model = RedisRoomModel
            extra = dict(redis_url=settings.redis_url, node=settings.node_name,
                         prefix=settings.redis_prefix, lease=settings.redis_lease,
                         sentinels=settings.redis_sentinels, sentinel_master=settings.redis_sentinel_master,
                         sentinel_password=settings.redis_sentinel_password)
        self.registry = model(
            encode=frames.encode_message,
            max_rooms=settings.max_rooms,
            max_subscribers_per_room=settings.max_subscribers_per_room,
            buffer_bytes=settings.subscriber_buffer_bytes,
            stats=self.stats,
            flow_control=settings.flow_control,
            high_water=settings.source_high_water or None,
            slow_policy=settings.slow_policy,
            stall_timeout=settings.stall_timeout,
            grace=settings.room_grace,
            replay=settings.replay,
            named=_broadcast(named),
            write_back=settings.write_back,
            write_queue_bytes=settings.write_queue_bytes,
            **extra
        )
        self._sweeper = None
        self.sources = SourceHandler(self.registry, framing=settings.framing,
                                     max_message_bytes=settings.max_message_bytes,
                                     banner=settings.banner, tokens=settings.source_tokens,
                                     max_per_ip=settings.max_sources_per_ip,
                                     handshake_timeout=settings.handshake_timeout,
                                     idle_timeout=settings.source_idle_timeout,
                                     tls=bool(settings.source_tls_cert),
                                     proxy_protocol=settings.source_proxy_protocol,
                                     trusted_proxies=settings.trusted_proxies)
        self.app = WebApp(self.registry, settings)
        if settings.sessions or any(spec.sessions for spec in named):
            self.tunnels = _tunnels(self.registry, settings, named)
            self.sources.tunnels = self.app.tunnels = self.tunnels
        ws_paths = {"/ws"}
        self.app.source_handler = self.sources          # source links over WebSocket (wssource)
        if settings.test_echo_endpoint:
            from .echo import ECHO_PATH, EchoEndpoint
            self.app.routes[ECHO_PATH] = EchoEndpoint(settings.close_timeout)
            ws_paths.add(ECHO_PATH)
            logger.warning("TESTING ONLY: echo endpoint enabled at %s", ECHO_PATH)
        self.handler_class = Handler.configured(ws_paths=frozenset(ws_paths),
                                                handshake_timeout=settings.handshake_timeout,
                                                send_buffer=settings.subscriber_send_buffer or None)
        self.tcp_server = None
        self.ws_server = None
        if self.sources.tunnels is None:
            self.tunnels = None
        self._stop_requested = Event()
        self._stopped = Event()

    @property
    def tcp_address(self):
        return self.tcp_server.address

    @property
    def ws_address(self):
        return self.ws_server.address

    def start(self):
        s = self.settings
        self.tcp_server = SourceServer((s.tcp_host, s.tcp_port), self.sources, backlog=self.backlog,
                                       **_tls_args(s.source_tls_cert, s.source_tls_key))
        self.ws_server = WebServer(
            (s.ws_host, s.ws_port), self.app, handler_class=self.handler_class, backlog=self.backlog,
            log=LoggingLogAdapter(logging.getLogger("sphincter.relay.access"), logging.DEBUG),
            error_log=LoggingLogAdapter(logging.getLogger("sphincter.relay.http"), logging.ERROR),
            **_tls_args(s.tls_cert, s.tls_key))
        self.tcp_server.max_accept = self.ws_server.max_accept = self.max_accept
        _start(self.tcp_server, "sources", s.tcp_host, s.tcp_port)
        try:
            _start(self.ws_server, "WebSocket", s.ws_host, s.ws_port)
        except BindError:
            self.tcp_server.stop()
            raise
        self.app.keepalive.start()
        self.registry.start()
        if self.tunnels is not None:
            self.tunnels.start(_node_address(s, self.tcp_address))
        if self.registry.sweep_interval:
            self._sweeper = gevent.spawn(self._sweep, self.registry.sweep_interval)
            self._sweeper.link_exception(log_crash(logger, "stall sweeper"))
        if self.handle_signals:         # before the 'listening' line: a signal right after it is handled
            self._signal_handlers = [gevent.signal_handler(sig, self.request_stop, sig)
                                     for sig in (signal.SIGTERM, signal.SIGINT)]
            self._signal_handlers.append(gevent.signal_handler(signal.SIGHUP, self.request_reload))
        logger.info("listening tcp=%s ws=%s framing=%s%s%s%s", format_peer(self.tcp_address),
                    format_peer(self.ws_address), s.framing,
                    " tls=ws" if s.tls_cert else "", " tls=sources" if s.source_tls_cert else "",
                    " proxy-protocol=sources" if s.source_proxy_protocol else "")
        sd_notify("READY=1\nSTATUS=listening tcp=%s ws=%s" % (
            format_peer(self.tcp_address), format_peer(self.ws_address)))
        return self

    def _sweep(self, interval):
        """Cut stalled subscribers (see ``--stall-timeout``), every ``interval`` seconds."""
        while True:
            gevent.sleep(interval)
            self.registry.sweep()

    def serve_forever(self):
        """Run until a signal or :meth:`request_stop`, then stop gracefully."""
        try:
            self._stop_requested.wait()
            self.stop()
        finally:
            for h in self._signal_handlers:
                h.cancel()
            self._signal_handlers = []

    def request_reload(self):
        """Schedule a re-read of the rooms file (safe from a signal handler)."""
        gevent.spawn(self.reload_rooms).link_exception(log_crash(logger, "rooms reload"))

    def reload_rooms(self):
        """Re-read ``--rooms-file``: added rooms appear, removed ones close (4410) after draining,
        changed ones take their new token and options. A bad file is logged; the old set stays."""
        path = self.settings.rooms_file
        if not path:
            logger.info("SIGHUP: no --rooms-file to reload")
            return None
        try:
            specs = roomsfile.load(path)
        except ConfigError as exc:
            logger.error("rooms file not reloaded, keeping the %d rooms in use: %s",
                         self.registry.named_count, exc)
            return None
        added, changed, removed = self.registry.reload(_broadcast(specs))
        logger.info("rooms file %s reloaded: %d rooms; added %s; changed %s; removed %s", path,
                    len(specs), ",".join(added) or "-", ",".join(changed) or "-", ",".join(removed) or "-")
        return added, changed, removed

    def request_stop(self, signum=None):
        """Schedule a graceful stop (safe from a signal handler)."""
        if signum is not None and not self._stop_requested.is_set():
            logger.info("received %s, stopping", signal.Signals(signum).name)
        self._stop_requested.set()

    def stop(self):
        """Stop accepting; close subscribers with 1001 after they drain; ERROR to sources; exit."""
        if self._stopped.is_set():
            return
        sd_notify("STOPPING=1")
        started = time.monotonic()
        self.tcp_server.close()
        self.ws_server.close()
        self.registry.close_all(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        self.sources.shutdown(SHUTDOWN_REASON)
        if self.tunnels is not None:
            self.tunnels.close_all(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        deadline = started + self.settings.shutdown_timeout
        while (self.app.connections or self.sources.active) and time.monotonic() < deadline:
            gevent.sleep(self.drain_poll)
        left = self.app.connections + self.sources.active
        self.app.keepalive.stop()
        self.app.abort_sessions()              # subscribers still open: no greenlet to kill
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        self.app.sessions.kill(block=False)
        if self.tunnels is not None:
            self.tunnels.stop()
        self.tcp_server.stop(timeout=0)
        self.ws_server.stop(timeout=0)
        self.registry.stop()
        logger.info("stopped in %.2fs (%d connections cut at the deadline); messages in=%d deliveries=%d",
                    time.monotonic() - started, left, self.stats.messages_in, self.stats.messages_out)
        self._stopped.set()


def _broadcast(specs):
    """The rooms file's broadcast rooms (its ``sessions=on`` rooms belong to the tunnel hub)."""
    return [spec for spec in specs if not spec.sessions]


def _tunnels(registry, settings, named=()):
    """The session rooms' hub (``--sessions on``); their codes never equal a broadcast room's."""
    from ..rooms.sessions import SessionRooms
    from .tunnel import TunnelHub

    def taken(code):
        try:
            registry.get(code)
            return True
        except RoomError:
            return False

    rooms = SessionRooms(settings.max_sessions_per_room, settings.max_sessions, taken=taken)
    cluster, key = None, None
    if getattr(registry, "link", None) is not None:     # Redis mode: session rooms across nodes
        from ..cluster.sessions import ClusterSessions
        from ..proto.sessionsignal import named_key
        cluster = ClusterSessions(registry, proxy=settings.source_proxy_protocol)
        key = lambda spec: named_key(spec.token, spec.key)       # noqa: E731  (every node's the same)
    rooms.add_named(named, key)     # (read at start-up; SIGHUP does not change them yet)
    return TunnelHub(rooms, registry.stats, settings.session_open_timeout,
                     settings.session_open_rate, settings.session_open_burst,
                     ephemeral=settings.sessions, cluster=cluster)


def _node_address(settings, bound):
    """Where other nodes reach this node's source port: ``--node-address`` (port 0: the bound
    one), else ``--tcp-host`` and the bound port."""
    host, port = settings.node_address or (settings.tcp_host, 0)
    return host, port or bound[1]


def _tls_args(cert, key):
    """Keyword arguments giving a gevent server TLS (none without a cert).

    The TLS handshake is not done on accept (gevent would do it with no
    deadline); it happens on the first read, under the handshake timeout."""
    if not cert:
        return {}
    return {"ssl_context": security.server_ssl_context(cert, key), "do_handshake_on_connect": False}


def _start(server, what, host, port):
    try:
        server.start()
    except OSError as exc:
        raise BindError("cannot listen for %s on %s: %s" % (what, format_peer((host, port)),
                                                           exc.strerror or exc))
