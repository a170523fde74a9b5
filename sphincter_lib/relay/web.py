"""The HTTP side: a WSGI app with ``/ws`` (subscribers), ``/healthz``, and a route table.

``/ws`` admits a subscriber (origin, rate, caps, room) and runs its
:class:`~sphincter_lib.relay.session.Session` (see ``relay/session.py``).
"""

import hmac
import json
import logging
import time
from urllib.parse import parse_qs

from gevent.pool import Group

from .. import __version__
from . import api, metrics, presence, tunnel, viewer, wssource
from ..proto.addresses import client_address, is_local_client, is_trusted, peer_name
from ..closecodes import CloseCode
from ..errors import RelayUnavailable, RoomFullError, RoomNotFound, ShuttingDown
from ..logformat import log_crash
from .security import ConnectionCaps, OriginPolicy, RateLimiter
from .session import Keepalive, Session
from .wsconn import close_blocking
from ..proto.wssession import ServerSession

logger = logging.getLogger("sphincter.relay.web")


class WebApp:
    """WSGI application: routes by exact path; ``routes`` may be extended by other modules."""

    def __init__(self, registry, settings, clock=time.time):
        self.registry = registry
        self.stats = registry.stats
        self.settings = settings
        self.clock = clock
        self.keepalive = Keepalive(settings.ping_interval, settings.ping_timeout)
        self.connections = 0          # upgraded connections still open
        self.sessions = Group()       # session-room clients detached from their HTTP handler
        #: session rooms (``tunnel.TunnelHub``), None with ``--sessions off``
        self.tunnels = None
        #: ``ingest.SourceHandler`` for source links over WebSocket (``/ws?source=1``, ``wssource``)
        self.source_handler = None
        self.routes = {"/ws": self.ws, "/healthz": self.healthz}
        self.routes.update(viewer.routes())
        self.routes.update(metrics.routes(registry, connections=lambda: self.connections,
                                          tunnels=lambda: self.tunnels))
        self.routes.update(api.routes(registry, settings.admin_token, client=self.client,
                                      tunnels=lambda: self.tunnels))
        self.routes.update(presence.routes(registry, self.precheck, self._unknown_room,
                                           settings.max_presence_waits))
        self.origins = OriginPolicy(settings.allowed_origins)
        self.ip_caps = ConnectionCaps(settings.max_subscribers_per_ip)
        self.unknown_rooms = RateLimiter(settings.unknown_room_rate, settings.unknown_room_burst)
        self._warned_unforwarded = False
        self._noted_local = False

    def client(self, environ):
        """The client's address (see ``addresses.client_address``): a loopback peer that sends
        no forwarding header is its own client; None when another trusted proxy did not say
        who its client is: then no per-address limit applies (it would hold every viewer
        behind the proxy to one budget), and a warning says so, once."""
        ip = client_address(environ, self.settings.trusted_proxies)
        if ip is None and not self._warned_unforwarded:
            self._warned_unforwarded = True
            logger.warning("trusted proxy %s forwarded no usable X-Forwarded-For or X-Real-IP: "
                           "per-address limits are off for its clients; make it forward the client "
                           "address (nginx: proxy_set_header X-Real-IP $remote_addr;)",
                           environ.get("REMOTE_ADDR"))
        return ip

    def _note_local_refused(self, environ, ip):
        """Once, when a per-address limit first refuses a trusted loopback peer counted as its
        own client: if it is in fact a proxy that forwards nothing, every viewer shares its budget.
        INFO, not WARNING: it may as well be a browser on this host that reached the limit."""
        remote = environ.get("REMOTE_ADDR", "")
        if self._noted_local or not is_local_client(environ) \
                or not is_trusted(remote, self.settings.trusted_proxies):
            return
        self._noted_local = True
        logger.info("per-address limit reached by %s, a local client (no X-Forwarded-For or "
                    "X-Real-IP): if a proxy on this host serves your viewers, they all count as "
                    "this one address; make it forward the client address "
                    "(nginx: proxy_set_header X-Real-IP $remote_addr;)", ip)

    def precheck(self, environ):
        """Called by ``ws.Handler`` before upgrading: (status, body, headers) to refuse, else None.

        An address that used up its unknown-room budget is refused for *every*
        room until it earns a token back, so a 429 says nothing about whether a
        code exists."""
        ip = self.client(environ)
        if self.ip_caps.full(ip):
            self.stats.rejected["subscriber", "too_many_connections"] += 1
            refusal = ("429 Too Many Requests", "too many connections from your address\n",
                       [("Retry-After", "10")])
        elif self.unknown_rooms.blocked(ip):
            self.stats.rejected["subscriber", "rate_limited"] += 1
            wait = max(1, int(round(1.0 / self.unknown_rooms.rate)))
            refusal = ("429 Too Many Requests", "too many unknown-room attempts, slow down\n",
                       [("Retry-After", str(wait))])
        else:
            return None
        self._note_local_refused(environ, ip)
        return refusal

    def _unknown_room(self, environ):
        """Count an unknown-room attempt against the client's address."""
        self.unknown_rooms.allow(self.client(environ))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        handler = self.routes.get(path) or self.routes.get(path.rsplit("/", 1)[0] + "/*")
        if handler is None:
            return text_response(start_response, "404 Not Found", "not found\n")
        return handler(environ, start_response)

    def healthz(self, environ, start_response):
        registry = self.registry
        info = {
            "status": "ok" if not registry.shutting_down else "stopping",
            "version": __version__,
            "rooms": len(registry),
            "subscribers": registry.subscriber_count,
            "uptime_seconds": round(self.clock() - self.stats.started_at, 3),
        }
        status = "200 OK"
        if registry.node is not None:           # Redis mode: which node answered, and Redis
            info["node"] = registry.node
            info["redis"] = registry.redis_state
            if registry.redis_state != "ok" and not registry.shutting_down:
                info["status"] = "degraded"
                status = "503 Service Unavailable"
        body = json.dumps(info).encode()
        start_response(status, [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    def ws(self, environ, start_response):
        conn = environ.get("wsgi.websocket")
        if conn is None:
            return text_response(start_response, "400 Bad Request",
                                 "this endpoint speaks WebSocket: GET /ws?room=CODE with an Upgrade\n")
        ip = self.client(environ)
        if wssource.is_source_link(environ):
            wssource.serve(self.source_handler, conn, environ, ip, self.settings, self.origins)
            return []
        self.connections += 1
        slot = self.ip_caps.acquire(ip, force=True)     # per-IP count (checked in precheck)
        session = None
        try:
            session = self._subscriber(environ, conn, ip)
        finally:
            if session is None:
                self.connections -= 1
                self.ip_caps.release(slot)
        if session is None:
            return []
        if isinstance(session, Session):
            session.slot = slot                 # handed back by session_done
            if conn.detach(bare=True):
                session.start()                 # no greenlet: the handler's goes, the session stays
            else:
                session.run()                   # TLS: the session keeps this greenlet
            return []
        if conn.detach():
            # the session no longer needs the HTTP handler: run it in a fresh greenlet with a
            # shallow stack, and let the handler (its greenlet, its request state) go
            self.sessions.spawn(self._run, session, slot).link_exception(log_crash(logger, "session"))
        else:
            self._run(session, slot)
        return []

    def _subscriber(self, environ, conn, ip):
        """A Session for this connection, or None after refusing it with a close code."""
        peer = peer_name(environ, ip)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        code = (query.get("room") or [""])[0]
        if not self.origins.allowed(environ.get("HTTP_ORIGIN")):
            return self._refuse(conn, peer, CloseCode.FORBIDDEN, "origin not allowed", "origin")
        tunnel = self.tunnels.find(code) if self.tunnels is not None else None
        if tunnel is not None:
            return self._session_client(environ, conn, ip, peer, tunnel, query)
        try:
            sub = self.registry.subscribe(code, peer)
        except RoomNotFound:
            self.unknown_rooms.allow(ip)
            return self._refuse(conn, peer, CloseCode.ROOM_NOT_FOUND, "unknown room", "unknown_room")
        except RoomFullError:
            return self._refuse(conn, peer, CloseCode.ROOM_FULL, "room full", "room_full")
        except ShuttingDown:
            return self._refuse(conn, peer, CloseCode.GOING_AWAY, "server shutting down", "shutting_down")
        except RelayUnavailable:
            return self._refuse(conn, peer, CloseCode.TRY_AGAIN_LATER, "relay unavailable", "relay_unavailable")
        key = (query.get("key") or [""])[0]
        if key:
            expected = sub.room.write_key
            if not expected or not hmac.compare_digest(key.encode("utf-8"), expected.encode()):
                sub.leave()
                why = "wrong write key" if expected else "write-back is off"
                return self._refuse(conn, peer, CloseCode.FORBIDDEN, why, "write_key")
        logger.debug("subscriber %s joined room %s%s", peer, sub.room.code, " as a writer" if key else "")
        return Session(self, conn, sub, peer, writer=bool(key))

    def _session_client(self, environ, conn, ip, peer, sroom, query):
        """A client of a session room: its key, then its own session (``tunnel.py``)."""
        key = (query.get("key") or [""])[0]
        if not sroom.key_ok(key):
            return self._refuse(conn, peer, CloseCode.FORBIDDEN, "wrong key" if key else "key required",
                                "session_key")
        return _TunnelClient(self.tunnels, self.settings, self._refuse, conn, sroom, peer, ip)

    def _run(self, session, slot=None):
        try:
            session.run()
        finally:
            self.ip_caps.release(slot)
            self.connections -= 1

    def session_done(self, session):
        """A subscriber's :class:`Session` ended."""
        self.ip_caps.release(session.slot)
        self.connections -= 1
        logger.debug("subscriber %s left room %s (close %s)", session.peer, session.sub.room.code,
                     session.sub.close_code)

    def abort_sessions(self):
        """Shutdown's deadline: end the subscribers' sessions still open, without a handshake."""
        for session in list(self.keepalive.sessions):
            session.abort()

    def _refuse(self, conn, peer, code, reason, key):
        self.stats.rejected["subscriber", key] += 1
        self.stats.close_codes[code] += 1
        logger.debug("subscriber %s refused: %d %s", peer, code, reason)
        ws = ServerSession(max_message_bytes=self.settings.client_message_limit(False), keep_data=False)
        ws.send_close(code, reason)
        close_blocking(conn, ws, self.settings.close_timeout)     # and wait for the client's close


class _TunnelClient:
    """A session room's client, run like a subscriber's session (``WebApp._run``)."""

    def __init__(self, hub, settings, refuse, conn, sroom, peer, ip):
        self.hub, self.settings, self.refuse = hub, settings, refuse
        self.conn, self.sroom, self.peer, self.ip = conn, sroom, peer, ip

    def run(self):
        try:
            tunnel.serve_client(self.hub, self.sroom, self.conn, self.peer, self.ip, self.settings,
                                self.refuse)
        finally:
            self.conn.close()


def text_response(start_response, status, text):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]
